"""Config files: safe loading, the round trip, and the checks that run before a run directory exists."""

import json
import sys

import fiddle as fdl
import pytest
from fiddle.experimental import serialization

import experiments
from llama_fdl import runner
from llama_fdl.cli import ConfigError, render, safe_load


def _saved(tmp_path, cfg=None, edit=None):
    """`cfg` (default tiny) as a config file, optionally with its JSON text edited."""
    text = serialization.dump_json(cfg or experiments.tiny())
    if edit:
        old, new = edit
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "config.json"
    path.write_text(text)
    return path


ADAMW = '"module": "llama_fdl.optim", "name": "adamw"'


def test_every_experiment_references_only_allowed_modules():
    for name in experiments.EXPERIMENTS:
        cfg = getattr(experiments, name)()
        document = json.loads(serialization.dump_json(cfg))
        refused = [ref for ref in safe_load.references(document) if not safe_load.allowed(*ref)]
        assert not refused, f"experiments.{name} references {refused}, which loading would refuse"


def test_a_file_round_trips_through_safe_load(tmp_path):
    cfg = experiments.tiny()
    cfg.model.config.dtype = "bfloat16"
    loaded = safe_load.load(_saved(tmp_path, cfg))
    assert loaded == cfg
    assert serialization.dump_json(loaded, indent=2) == serialization.dump_json(cfg, indent=2)
    # The one ParallelConfig is still shared, not two equal copies.
    assert loaded.model.config.parallel is loaded.mesh.parallel


def test_a_reference_outside_the_allowlist_is_refused_before_it_is_imported(tmp_path):
    # `this` prints the Zen of Python when imported: a harmless stand-in for os.system.
    assert "this" not in sys.modules
    path = _saved(tmp_path, edit=(ADAMW, '"module": "this", "name": "s"'))
    with pytest.raises(ConfigError, match=r"refers to this.s, outside what a config file may use"):
        safe_load.load(path)
    assert "this" not in sys.modules
    path = _saved(tmp_path, edit=(ADAMW, '"module": "os", "name": "system"'))
    with pytest.raises(ConfigError, match=r"refers to os.system"):
        safe_load.load(path)


def test_reaching_through_an_allowed_module_is_refused(tmp_path):
    # llama_fdl.train.checkpoint imports subprocess; naming it through that module is still refused.
    through = '"module": "llama_fdl.train.checkpoint", "name": "subprocess.run"'
    with pytest.raises(ConfigError, match="subprocess.run, outside what"):
        safe_load.load(_saved(tmp_path, edit=(ADAMW, through)))
    module = '"module": "llama_fdl.train.checkpoint", "name": "subprocess"'
    with pytest.raises(ConfigError, match="not defined in an allowed package"):
        safe_load.load(_saved(tmp_path, edit=(ADAMW, module)))


def test_fiddle_is_limited_to_its_config_types_and_private_helpers_are_refused(tmp_path):
    # fiddle's own flag helpers import any dotted name; a file must not be able to reach them.
    helper = '"module": "fiddle._src.absl_flags.utils", "name": "_import_dotted_name"'
    with pytest.raises(ConfigError, match="_import_dotted_name, outside what"):
        safe_load.load(_saved(tmp_path, edit=(ADAMW, helper)))
    private = '"module": "llama_fdl.optim", "name": "_decay_mask"'
    with pytest.raises(ConfigError, match="_decay_mask, outside what"):
        safe_load.load(_saved(tmp_path, edit=(ADAMW, private)))


def test_builtins_are_limited_to_containers(tmp_path):
    evil = '"module": "builtins", "name": "eval"'
    with pytest.raises(ConfigError, match="builtins.eval"):
        safe_load.load(_saved(tmp_path, edit=(ADAMW, evil)))


def test_files_that_are_not_configs_get_one_line(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        safe_load.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="No such file"):
        safe_load.load(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a Fiddle config"):
        safe_load.load(tmp_path / "list.json")


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("model.config.head_dim", 12, "not divisible by head_dim=12"),
        ("model.config.parallel.data_axis_size", 2, "multiply to 2, but there is 1 device"),
        ("optimizer.warmup_steps", 50, "lower optimizer.warmup_steps below trainer.num_train_steps"),
        ("data.sequence_length", 1_000_000, "lower data.sequence_length or data.batch_size"),
        ("data.num_eval_batches", 10_000, "lower data.num_eval_batches to at most"),
        ("model.config.attention_backend", "cudnn", "needs a GPU"),
        ("model.config.vocab_size", 100, "vocab_size=100 but data.vocabulary has 259 ids"),
        ("model.config.num_blocks", "eight", "takes an int"),
    ],
)
def test_contradictions_fail_in_check_before_the_run_directory_exists(tmp_path, path, value, message):
    cfg = experiments.tiny()
    *parents, name = path.split(".")
    node = cfg
    for parent in parents:
        node = getattr(node, parent)
    setattr(node, name, value)
    with pytest.raises((ValueError, TypeError), match=message):
        runner.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    runner.check(experiments.tiny())  # control: the unchanged experiment passes every check


def test_the_picture_is_svg_of_the_graph():
    assert render.have_dot(), (
        "graphviz's dot is missing: run scripts/setup.sh (as root) or apt-get install graphviz"
    )
    picture = render.svg(experiments.tiny())
    assert picture.lstrip().startswith("<?xml") and "<svg" in picture
    assert "LlamaConfig" in picture and "ParallelConfig" in picture


def test_build_of_a_loaded_file_equals_build_of_the_experiment(tmp_path):
    loaded = safe_load.load(_saved(tmp_path))
    assert fdl.build(loaded).model.config == fdl.build(experiments.tiny()).model.config
