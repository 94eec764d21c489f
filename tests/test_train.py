"""The whole path through the launcher: train, TensorBoard scalars, checkpoints, resume after a kill
(of a run on the stdlib corpus, on JSONL files and on a mixture)."""

import os
import signal
import time

import numpy as np
import pytest
from data_corpora import write_jsonl_corpus, write_mixture_corpus
from launcher import checkpoint_steps, last_line, launch, scalars, start


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "tiny"
    result = launch("--fdl_config=experiments.tiny", f"--workdir={workdir}")
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
    again = launch("--fdl_config=experiments.tiny", f"--workdir={workdir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming" in again.stdout and "already reached step 20" in again.stdout
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
    straight = launch(*args, f"--workdir={tmp_path / 'straight'}")
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

    resumed = launch(*args, f"--workdir={workdir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"from the checkpoint at step {killed_at[-1]}" in resumed.stdout
    assert checkpoint_steps(workdir)[-1] == 150
    # Same data, same state: from the checkpoint on, every step's loss is bitwise the same.
    expected, got = scalars(tmp_path / "straight"), scalars(workdir)
    assert sorted(got["train/loss"]) == list(range(1, 151))
    for step in range(killed_at[-1] + 1, 151):
        assert got["train/loss"][step] == expected["train/loss"][step], f"step {step} differs"
    evals = sorted(tag for tag in expected if tag.startswith("eval/"))
    assert all(got[tag][150] == expected[tag][150] for tag in evals), evals
    if source == "mixture":  # each component is evaluated on its own validation split too
        assert {"eval/jsonl/loss", "eval/text/loss", "eval/jsonl/bits_per_byte"} <= set(evals)


def test_a_different_experiment_in_the_same_workdir_is_refused(tiny_run):
    workdir, _ = tiny_run
    before = (workdir / "config.json").read_text()
    result = launch(
        "--fdl_config=experiments.tiny", "--fdl.model.config.num_blocks=3", f"--workdir={workdir}"
    )
    assert result.returncode == 1
    assert "different experiment" in result.stderr and "--workdir" in result.stderr
    assert "Traceback" not in result.stderr
    assert (workdir / "config.json").read_text() == before


def test_start_elsewhere_puts_a_different_experiment_next_door(tiny_run):
    workdir, _ = tiny_run
    args = ["--fdl_config=experiments.tiny", "--fdl.trainer.num_train_steps=6", f"--workdir={workdir}"]
    result = launch(*args, "--start_elsewhere")
    assert result.returncode == 0, result.stderr[-3000:]
    other = workdir.with_name(workdir.name + "-2")
    assert f"starting in {other} instead" in result.stdout
    assert checkpoint_steps(other) == [6] and checkpoint_steps(workdir) == [10, 20]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--fdl_config=experiments.nope"], "nope"),
        (["--fdl_config=experiments.tiny", "--fdl.model.config.head_dim=7"], "head_dim"),
        (["--fdl_config=experiments.tiny", "--fdl.data.batch_size=0"], "batch_size"),
        (["--fdl_config=experiments.tiny", "--fdl.trainer.num_train_steps=3"], "warmup_steps"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, expected):
    result = launch(*args, f"--workdir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert expected in last_line(result.stderr)
    assert not (tmp_path / "run" / "config.json").exists()
