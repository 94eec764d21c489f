"""The command line end to end: bad input, --fdl_help, the run directory's files, and replay.

Bad input and --traceback run the launcher in a process of its own: that its stderr is one line
and its exit status non-zero is a property of the whole process (start-up logs included). The
rest run the launcher's code in this process (tests/launcher.py's launch_here)."""

import pathlib

import pytest
from launcher import launch, launch_here
from tensorboard.backend.event_processing import event_accumulator

import experiments

# A short tiny run: two logged train windows (steps 5 and 10) and one eval.
SHORT = ["--fdl.trainer.num_train_steps=10", "--fdl.trainer.eval_every=10"]


def _events(workdir: pathlib.Path) -> event_accumulator.EventAccumulator:
    guidance = {event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    acc = event_accumulator.EventAccumulator(str(workdir), size_guidance=guidance)
    acc.Reload()
    return acc


def _scalars(workdir: pathlib.Path, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in _events(workdir).Scalars(tag)}


def _text(workdir: pathlib.Path, name: str) -> str:
    (event,) = _events(workdir).Tensors(f"{name}/text_summary")
    return event.tensor_proto.string_val[0].decode()


@pytest.fixture(scope="module")
def evil_config(tmp_path_factory) -> pathlib.Path:
    """A config file whose optimizer is os.system."""
    from fiddle.experimental import serialization

    text = serialization.dump_json(experiments.tiny())
    adamw = '"module": "llama_fdl.optim", "name": "adamw"'
    assert adamw in text
    path = tmp_path_factory.mktemp("evil") / "config.json"
    path.write_text(text.replace(adamw, '"module": "os", "name": "system"'))
    return path


TINY = "--fdl_config=experiments.tiny"
# One case per way the launcher reports an error: absl's flag parsing, the launcher's own flag
# logic, an override the config tooling refuses, and a check of the built experiment. The
# messages of every other bad input are tested in-process (tests/test_config_overrides.py,
# tests/test_config_files.py), which is where they are made; a launcher process per message
# would test the same four paths again at seconds each.
BAD_INPUT = {
    "flag typo": (["--fdl_confg=experiments.tiny"], "Unknown command line flag 'fdl_confg'"),
    "no experiment": ([], "Name an experiment: --fdl_config=experiments.NAME"),
    "path typo": ([TINY, "--fdl.model.config.num_block=8"], "did you mean `num_blocks`"),
    "mesh vs devices": ([TINY, "--fdl.model.config.parallel.tensor_axis_size=2"], "but there is 1 device."),
    "sequence too long": ([TINY, "--fdl.data.sequence_length=100000"], "do not fit in the validation split"),
    "glob matches nothing": ([TINY, "--fiddler=text_files('/no/such/dir/*.txt')"], "matches no files"),
    "vocabulary file missing": (
        [TINY, "--fdl.data.vocabulary.sentencepiece_model=/no/such.model"],
        "does not exist; train one with",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_a_nonzero_exit_and_no_run_directory(tmp_path, case):
    args, expected = BAD_INPUT[case]
    result = launch(*args, f"--workdir={tmp_path / 'run'}")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_a_batch_the_data_parallel_axis_cannot_split_fails_before_anything_runs(tmp_path):
    two_devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = launch(TINY, "--fdl.data.batch_size=7", f"--workdir={tmp_path / 'run'}", env=two_devices)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "data.batch_size=7 is not divisible by the 2 devices" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_config_file_naming_os_system_is_refused(tmp_path, evil_config):
    result = launch(f"--fdl_config_file={evil_config}", f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {evil_config} refers to os.system, outside what a config file may use (llama_fdl, "
        "experiments, jax, jaxlib, flax, optax, numpy, seqio, orbax, Fiddle's config types and container "
        "builtins); refusing to load it. (--traceback shows where)"
    ]
    assert not (tmp_path / "run").exists()


def test_traceback_shows_where_an_error_came_from(tmp_path):
    """Control for the one-line tests: the traceback is hidden by choice, not missing."""
    result = launch(TINY, "--fdl.model.config.num_block=8", "--traceback", f"--workdir={tmp_path}/run")
    assert result.returncode != 0 and "Traceback" in result.stderr and "paths.py" in result.stderr


def test_fdl_help_lists_the_library_tags_and_settings():
    result = launch_here("--fdl_help")
    assert result.returncode == 0, result.stderr
    library = [(experiments, n) for n in experiments.EXPERIMENTS + experiments.FIDDLERS]
    for module, name in library + [(experiments.sweeps, n) for n in experiments.sweeps.SWEEPS]:
        doc = getattr(module, name).__doc__.strip().splitlines()[0]
        assert doc in result.stdout, f"{name}'s one-line doc is missing from --fdl_help"
    with_config = launch_here(TINY, "--fiddler=bf16", "--fdl_help")
    assert with_config.returncode == 0, with_config.stderr
    assert "DType" in with_config.stdout
    assert "  model.config.dtype = 'bfloat16'  # tags: DType" in with_config.stdout


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "original"
    args = [TINY, "--fiddler=bf16", "--fdl.model.config.num_blocks=3", *SHORT]
    result = launch_here(*args, f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_a_run_saves_its_experiment_and_what_the_command_line_changed(original):
    for name in ("config.json", "config.txt", "config.svg", "config_diff.txt", "config_diff.py"):
        assert (original / name).exists(), f"{name} missing from the run directory"
    assert "<svg" in (original / "config.svg").read_text()
    assert "model.config.num_blocks = 3" in (original / "config.txt").read_text()
    assert (original / "config_diff.txt").read_text().splitlines() == [
        "# What this run changed against experiments.tiny.",
        "model.config.num_blocks: 2 -> 3   (--fdl.model.config.num_blocks=3)",
        "model.config.dtype: 'float32' -> 'bfloat16'   (--fiddler=bf16)",
        "trainer.num_train_steps: 20 -> 10   (--fdl.trainer.num_train_steps=10)",
    ]
    assert "model.config.num_blocks: 2 -> 3" in _text(original, "config_diff")
    assert "model.config.num_blocks = 3" in _text(original, "config")


def test_config_diff_py_turns_the_command_line_into_a_fiddler(original):
    """--fiddler=RUN/config_diff.py on the base experiment rebuilds the run's config.json."""
    from fiddle.experimental import serialization

    from llama_fdl.cli import overrides

    fiddler = overrides.Override("fiddler", str(original / "config_diff.py"), "--fiddler=config_diff.py")
    replayed = overrides.apply(experiments.tiny(), [fiddler], experiments).cfg
    assert serialization.dump_json(replayed, indent=2) == (original / "config.json").read_text()
    assert serialization.dump_json(experiments.tiny(), indent=2) != (original / "config.json").read_text()


def test_replaying_config_json_rebuilds_the_graph_and_the_losses(original, tmp_path):
    replay = tmp_path / "replay"
    result = launch_here(f"--fdl_config_file={original / 'config.json'}", f"--workdir={replay}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (replay / "config.json").read_text() == (original / "config.json").read_text()
    assert (replay / "config_diff.txt").read_text().splitlines()[1:] == ["(no changes)"]
    losses = _scalars(original, "train/loss")
    assert sorted(losses) == [5, 10]
    assert _scalars(replay, "train/loss") == losses
    assert _scalars(replay, "eval/loss") == _scalars(original, "eval/loss")

    # Control: the same file with another seed trains differently, so equality above is not vacuous.
    reseeded = tmp_path / "reseeded"
    result = launch_here(
        f"--fdl_config_file={original / 'config.json'}", "--fdl.trainer.seed=1", f"--workdir={reseeded}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _scalars(reseeded, "train/loss")[5] != losses[5]
    assert "trainer.seed: 0 -> 1   (--fdl.trainer.seed=1)" in (reseeded / "config_diff.txt").read_text()
