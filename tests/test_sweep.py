"""Sweeps: bad sweeps refused before anything runs; a real sweep killed, resumed in parallel, summarized."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest
from launcher import REPO, accumulator, scalars
from tensorboard.plugins.hparams import plugin_data_pb2

import experiments
from llama_fdl import runner, sweep
from llama_fdl.cli import ConfigError
from llama_fdl.run_lock import RunLock
from llama_fdl.sweep import Point


def _library(**sweeps) -> types.ModuleType:
    module = types.ModuleType("my_sweeps")
    for name, fn in sweeps.items():
        setattr(module, name, fn)
    module.SWEEPS = tuple(sweeps)
    return module


def _plan(points, cfg=None):
    base = cfg or experiments.tiny()
    return sweep.plan(base, [], points, experiments, "experiments.tiny", "--fdl_config=experiments.tiny")


BAD_POINTS = {
    "not a setting": (
        [Point("a", {"optimizer.peak_learning_rat": 1e-3})],
        "sweep point a: `optimizer` (adamw) has no parameter `peak_learning_rat`; did you mean "
        "`peak_learning_rate`?",
    ),
    "wrong type": ([Point("a", {"model.config.num_blocks": "two"})], "LlamaConfig.num_blocks takes an int"),
    "fails a check": (
        [Point("a", {"model.config.head_dim": 12})],
        "sweep point a: LlamaConfig.embedding_dim",
    ),
    "same experiment": (
        [Point("a", {"data.seed": 1}), Point("b", {"data.seed": 1})],
        "Sweep points a and b give the same experiment",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_POINTS))
def test_a_bad_point_is_refused_in_one_line_before_anything_runs(case):
    points, message = BAD_POINTS[case]
    with pytest.raises(ConfigError) as e:
        _plan(points)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


BAD_SWEEPS = {
    "two points with one name": (
        lambda: [Point("a", {"data.seed": 1}), Point("a", {"data.seed": 2})],
        "two points named 'a'",
    ),
    "a name that is no directory": (lambda: [Point("a/b", {"data.seed": 1})], "cannot name a directory"),
    "not points": (
        lambda: {"a": {"data.seed": 1}},
        "returned dict; a sweep returns a list of llama_fdl.sweep.Point",
    ),
    "no points": (lambda: [], "has no points"),
}


@pytest.mark.parametrize("case", sorted(BAD_SWEEPS))
def test_a_bad_sweep_is_refused_in_one_line(case):
    fn, message = BAD_SWEEPS[case]
    with pytest.raises(ConfigError, match=message):
        sweep.points("s", _library(s=fn))
    with pytest.raises(ConfigError, match="Unknown sweep 'lr_smal'; available: lr_small, "):
        sweep.points("lr_smal", experiments.sweeps)


def test_points_join_the_command_lines_overrides_and_record_what_they_vary():
    points = [Point("a", {"optimizer.peak_learning_rate": 1e-3}), Point("b", fiddlers=[experiments.bf16])]
    a, b = _plan(points)
    assert a.cfg.optimizer.peak_learning_rate == 1e-3 and b.cfg.model.config.dtype == "bfloat16"
    assert "optimizer.peak_learning_rate: 0.003 -> 0.001   (sweep point a)" in a.config_diff
    assert "model.config.dtype: 'float32' -> 'bfloat16'   (sweep point b)" in b.config_diff
    assert b.hparams == {
        "sweep/point": "b",
        "model.config.dtype": "bfloat16",
        "optimizer.peak_learning_rate": 0.003,
    }
    assert b.point.describe() == "fiddler bf16"


@pytest.mark.parametrize("name", experiments.sweeps.SWEEPS)
def test_every_sweep_of_the_library_plans_over_small(name):
    """Each point applied to experiments.small passes every check a single run does."""
    fn = getattr(experiments.sweeps, name)
    assert "llama-fdl sweep --fdl_config=experiments.small" in fn.__doc__
    planned = sweep.plan(
        experiments.small(), [], sweep.points(name, experiments.sweeps), experiments, "s", "s"
    )
    assert len(planned) >= 3


def test_a_point_saved_with_another_layout_is_the_same_point_and_another_experiment_is_not(tmp_path):
    """Layout (mesh sizes, remat, microbatches) is not a point's identity, as for a single run."""
    (point,) = _plan([Point("a", {"data.seed": 1})])
    (relaid,) = _plan([Point("a", {"data.seed": 1, "trainer.num_microbatches": 2})])
    (other,) = _plan([Point("a", {"data.seed": 2})])
    saved = tmp_path / "a"
    saved.mkdir()
    result = sweep.Result(eval_loss=2.5, tokens_per_sec=None, wall_time_s=1.0)
    (saved / sweep.RESULT).write_text(json.dumps(dataclasses.asdict(result)))
    (saved / "config.json").write_text(relaid.config_json)
    sweep.check_workdirs([point], tmp_path)
    assert sweep.finished(point, tmp_path) == result
    # Control: a saved point that computes something else is refused, and not taken as finished.
    (saved / "config.json").write_text(other.config_json)
    with pytest.raises(runner.RunError, match="holds a different experiment than sweep point a"):
        sweep.check_workdirs([point], tmp_path)
    assert sweep.finished(point, tmp_path) is None


def test_a_point_whose_directory_another_launch_holds_is_refused_naming_it(tmp_path):
    from llama_fdl.train import loop

    (point,) = _plan([Point("a", {"data.seed": 1})])
    held = RunLock(tmp_path / "a")
    (tmp_path / "a").mkdir()
    held.acquire()
    try:
        with pytest.raises(runner.RunError, match=f"is in use by pid {os.getpid()} on host"):
            sweep.run_point(point, tmp_path, loop.RunOptions())
    finally:
        held.release()
    assert list((tmp_path / "a").iterdir()) == []  # nothing written by the refused point


STEPS = 12
# A sweep of three tiny points, 12 steps each, checkpointed every 4 steps: the killed point has
# checkpoints to resume from and steps left to train; more steps would prove nothing more.
SWEEP = [
    "--fdl_config=experiments.tiny",
    "--sweep=width_depth(widths=(32,), depths=(1, 2, 3))",
    f"--fdl.trainer.num_train_steps={STEPS}",
    "--fdl.trainer.checkpoint.every_steps=4",
    f"--fdl.trainer.eval_every={STEPS}",
    "--fdl.trainer.log_every=4",
]
POINTS = ["d32_blocks1", "d32_blocks2", "d32_blocks3"]


def _sweep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "llama_fdl", "sweep", *SWEEP, *args]


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory):
    """Runs the sweep one point after another, SIGKILLs it once the second point has a checkpoint,
    then runs the same command with --parallel=2 and another layout (2 microbatches), which
    resumes in place. Returns the sweep directory and both outputs."""
    workdir = tmp_path_factory.mktemp("sweep") / "wd"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        _sweep_command(f"--workdir={workdir}"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    second_checkpoint = workdir / POINTS[1] / "checkpoints" / "4"
    deadline = time.time() + 400
    while not second_checkpoint.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    killed_output = first.communicate(timeout=60)[0].decode()
    assert second_checkpoint.exists(), killed_output[-3000:]
    state = {
        "first_result": (workdir / POINTS[0] / sweep.RESULT).read_bytes(),
        "second_finished": (workdir / POINTS[1] / sweep.RESULT).exists(),
        "third_started": (workdir / POINTS[2]).exists(),
    }
    resumed = subprocess.run(
        _sweep_command(f"--workdir={workdir}", "--parallel=2", "--fdl.trainer.num_microbatches=2"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return workdir, state, resumed


def test_a_killed_sweep_skips_finished_points_and_resumes_the_killed_one(killed_then_resumed):
    workdir, state, resumed = killed_then_resumed
    assert not state["second_finished"] and not state["third_started"]
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"{POINTS[0]}: finished before" in resumed.stdout
    assert (workdir / POINTS[0] / sweep.RESULT).read_bytes() == state["first_result"]  # not rerun
    second = json.loads((workdir / POINTS[1] / sweep.RESULT).read_text())
    assert 4 <= second["resumed_from_step"] < STEPS
    log = (workdir / POINTS[1] / "log.txt").read_text()
    assert f"from the checkpoint at step {second['resumed_from_step']}" in log
    assert "with another layout; resuming it with trainer.num_microbatches 1 -> 2" in log
    assert "from scratch" in (workdir / POINTS[2] / "log.txt").read_text()


def test_parallel_points_run_at_once_in_their_own_processes(killed_then_resumed):
    _, _, resumed = killed_then_resumed
    lines = resumed.stdout.splitlines()
    started = [i for i, line in enumerate(lines) if ": started (" in line]
    ended = [i for i, line in enumerate(lines) if "finished, eval loss" in line]
    assert len(started) == 2 and len(ended) == 2 and max(started) < min(ended), resumed.stdout


def test_the_summary_marks_the_best_point_and_tensorboard_compares_them(killed_then_resumed):
    workdir, _, resumed = killed_then_resumed
    summary = (workdir / "summary.md").read_text()
    assert summary in resumed.stdout
    rows = [line for line in summary.splitlines() if line.startswith("| d32_") or line.startswith("| **d32_")]
    assert len(rows) == 3 and sum("(best)" in row for row in rows) == 1
    losses = {}
    for point in POINTS:
        result = json.loads((workdir / point / sweep.RESULT).read_text())
        assert result["eval_loss"] == pytest.approx(scalars(workdir / point)["eval/loss"][STEPS], rel=1e-6)
        losses[point] = result["eval_loss"]
        assert f"{result['eval_loss']:.4f}" in next(row for row in rows if f"{point}" in row)
        assert f"`model.config.embedding_dim=32, model.config.num_blocks={point[-1]}`" in summary
    best = min(losses, key=losses.get)
    assert f"| **{best}** (best) |" in summary
    # HParams: each point's session names the point and the value the sweep varies.
    hparams = accumulator(workdir / POINTS[2])
    content = hparams.summary_metadata["_hparams_/session_start_info"].plugin_data.content
    session = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert session["sweep/point"].string_value == POINTS[2]
    assert session["model.config.num_blocks"].number_value == 3
