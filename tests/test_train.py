"""The whole path through the launcher: train, TensorBoard scalars, checkpoints, resume after a
kill (of a run on the stdlib corpus, on JSONL files and on a mixture), resume in place on another
mesh.

The run that is killed, and the one on 2 devices (jax fixes the device count when a process
starts), are processes of their own; the others run the launcher's code in this process
(tests/launcher.py's launch_here)."""

import os
import shutil
import signal
import time

import numpy as np
import pytest
from data_corpora import write_jsonl_corpus, write_mixture_corpus
from launcher import accumulator, checkpoint_steps, launch, launch_here, scalars, start

from llama_fdl.cli import safe_load


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "tiny"
    result = launch_here("--fdl_config=experiments.tiny", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_run_writes_config_scalars_and_checkpoints(tiny_run):
    workdir, result = tiny_run
    assert (workdir / "config.json").exists() and (workdir / "config.txt").exists()
    assert "model.config.embedding_dim = 32" in (workdir / "config.txt").read_text()
    series = scalars(workdir)
    for tag in ("train/loss", "eval/loss", "opt/learning_rate", "opt/grad_norm", "perf/tokens_per_sec"):
        assert tag in series, f"{tag} missing from {sorted(series)}"
    assert sorted(series["eval/loss"]) == [10, 20]
    assert sorted(series["train/loss"]) == [5, 10, 15, 20]
    # It learns: the last train window is well below the first, and below a uniform guess.
    losses = series["train/loss"]
    assert losses[20] < losses[5] - 0.3 and losses[20] < np.log(259)
    assert checkpoint_steps(workdir) == [10, 20]
    assert "step     20/20" in result.stdout and "eval at step 20" in result.stdout


def test_rerunning_a_finished_run_trains_nothing(tiny_run):
    workdir, _ = tiny_run
    again = launch_here("--fdl_config=experiments.tiny", f"--workdir={workdir}")
    assert again.returncode == 0, again.stderr[-3000:]
    # Answered from the run directory: nothing restored, no sharding table, no compile.
    assert again.stdout.startswith(f"Nothing to do: {workdir} already reached step 20")
    assert "Resuming" not in again.stdout and "mesh:" not in again.stdout and "Train step" not in again.stdout
    assert "step " not in again.stdout.replace("step 20", "")


def _experiment(root, source: str) -> str:
    """--fdl_config for tiny on the stdlib corpus, a JSONL corpus or a 2-component mixture."""
    if source == "stdlib":
        return "--fdl_config=experiments.tiny"
    if source == "jsonl":
        write_jsonl_corpus(root)
    else:
        write_mixture_corpus(root)
    return f"--fdl_config=tests.data_corpora.tiny_{source}('{root}')"


@pytest.mark.parametrize("source", ["stdlib", "jsonl", "mixture"])
def test_killed_run_resumes_where_it_stopped_and_matches_an_uninterrupted_one(tmp_path, source):
    args = [
        _experiment(tmp_path / "corpus", source),
        "--fdl.trainer.num_train_steps=150",
        "--fdl.trainer.eval_every=150",
        "--fdl.trainer.log_every=1",
        "--fdl.trainer.checkpoint.every_steps=10",
    ]
    straight = launch_here(*args, f"--workdir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-3000:]

    workdir = tmp_path / "killed"
    proc = start(*args, f"--workdir={workdir}")
    deadline = time.time() + 240
    while not checkpoint_steps(workdir) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint_steps(workdir)
    assert killed_at and killed_at[-1] < 150, f"the run was not killed mid-way: {killed_at}"

    resumed = launch_here(*args, f"--workdir={workdir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"from the checkpoint at step {killed_at[-1]}" in resumed.stdout
    assert checkpoint_steps(workdir)[-1] == 150
    # Same data, same state: from the checkpoint on, every step's loss is bitwise the same.
    expected, got = scalars(tmp_path / "straight"), scalars(workdir)
    # One clean curve, read with TensorBoard's own loader as a list: each step once, although
    # the killed run may have logged steps after its checkpoint that the resumed run logs again.
    assert [e.step for e in accumulator(workdir).Scalars("train/loss")] == list(range(1, 151))
    for step in range(killed_at[-1] + 1, 151):
        assert got["train/loss"][step] == expected["train/loss"][step], f"step {step} differs"
    evals = sorted(tag for tag in expected if tag.startswith("eval/"))
    assert all(got[tag][150] == expected[tag][150] for tag in evals), evals
    if source == "mixture":  # each component is evaluated on its own validation split too
        assert {"eval/jsonl/loss", "eval/text/loss", "eval/jsonl/bits_per_byte"} <= set(evals)


RELAYOUT_RTOL = 1e-4
"""Losses on another mesh, fixed in advance: 10 float32 steps whose sums run in another order
(one step on 8 devices agrees within 1e-5, tests/test_sharding_equivalence.py)."""


def test_a_new_mesh_resumes_in_place_saying_what_changed(tiny_run, tmp_path):
    source, _ = tiny_run
    workdir = tmp_path / "relaid"
    shutil.copytree(source, workdir)
    shutil.rmtree(workdir / "checkpoints" / "20")  # continue from step 10
    layout = [
        "--fdl.model.config.parallel.fsdp_axis_size=2",
        "--fdl.model.config.parallel.fsdp_min_weight_size=0",  # so the weights really are split
        "--fdl.model.config.parallel.remat=full",
        "--fdl.trainer.num_microbatches=2",
    ]
    two_devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = launch("--fdl_config=experiments.tiny", *layout, f"--workdir={workdir}", env=two_devices)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        f"{workdir} holds this experiment with another layout; resuming it with "
        "model.config.parallel.fsdp_axis_size 1 -> 2, model.config.parallel.fsdp_min_weight_size "
        "262144 -> 0, model.config.parallel.remat 'minimal' -> 'full', trainer.num_microbatches 1 -> 2."
    ) in result.stdout
    assert "from the checkpoint at step 10" in result.stdout
    assert "mesh: data=1 x fsdp=2 x tensor=1 (2 devices, 1 process)" in result.stdout
    saved = safe_load.load(workdir / "config.json")  # the graph the run now continues with
    assert saved.model.config.parallel.fsdp_axis_size == 2 and saved.trainer.num_microbatches == 2
    expected, got = scalars(source), scalars(workdir)
    for tag, step in (("train/loss", 15), ("train/loss", 20), ("eval/loss", 20)):
        assert got[tag][step] == pytest.approx(expected[tag][step], rel=RELAYOUT_RTOL), (tag, step)
    # Control: a window apart the loss moves by far more, so a resume from the wrong step (or
    # from scratch) would not pass the check above.
    assert abs(expected["train/loss"][15] / expected["train/loss"][10] - 1) > 100 * RELAYOUT_RTOL


def _claim(workdir, *settings, start_elsewhere=False):
    """In-process: which run directory the runner takes for tiny with `settings` (PATH=VALUE)."""
    from fiddle.experimental import serialization

    import experiments
    from llama_fdl import runner
    from llama_fdl.cli import overrides

    todo = [overrides.Override("set", s, f"--fdl.{s}") for s in settings]
    cfg = overrides.apply(experiments.tiny(), todo, experiments).cfg
    claim = runner.claim_workdir(workdir, cfg, serialization.dump_json(cfg, indent=2), start_elsewhere)
    claim.release()
    return claim


def test_a_different_experiment_in_the_same_workdir_is_refused(tiny_run):
    from llama_fdl import runner

    workdir, _ = tiny_run
    before = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
    with pytest.raises(runner.RunError, match="holds a run of a different experiment.*--workdir=NEW_DIR"):
        _claim(workdir, "model.config.num_blocks=3")
    assert {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()} == before
    assert _claim(workdir).workdir == workdir  # control: the same experiment is let in


def test_start_elsewhere_puts_a_different_experiment_next_door(tiny_run, capsys):
    workdir, _ = tiny_run
    claim = _claim(workdir, "trainer.num_train_steps=6", start_elsewhere=True)
    other = workdir.with_name(workdir.name + "-2")
    assert claim.workdir == other and f"starting in {other} instead" in capsys.readouterr().out
    assert checkpoint_steps(workdir) == [10, 20]


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("model.config.head_dim", 7, "head_dim"),
        ("data.batch_size", 0, "batch_size"),
        ("trainer.num_train_steps", 3, "warmup_steps"),
    ],
)
def test_bad_input_is_refused_before_the_run_directory_exists(tmp_path, path, value, expected):
    """In-process: the launcher's way of printing these is tested once, in tests/test_cli.py."""
    import experiments
    from llama_fdl import runner

    cfg = experiments.tiny()
    *parents, name = path.split(".")
    node = cfg
    for parent in parents:
        node = getattr(node, parent)
    setattr(node, name, value)
    with pytest.raises(ValueError) as error:
        runner.run(cfg, tmp_path / "run")
    assert expected in runner.one_line(error.value)
    assert not (tmp_path / "run").exists()
