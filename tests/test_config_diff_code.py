"""RUN/config_diff.py: fiddle's codegen turns a command line into a fiddler that rebuilds the graph."""

from __future__ import annotations

import copy

import fiddle as fdl
import pytest
from fiddle.experimental import serialization
from test_override_gaps import _mixture

import experiments
from llama_fdl.cli import ConfigError, diff, overrides
from llama_fdl.data.config import DataConfig


def _fresh_data(cfg):
    """A fiddler that returns a new graph whose data is a new node (codegen must import DataConfig)."""
    new = copy.deepcopy(cfg)
    new.data = fdl.Config(DataConfig, sequence_length=32, batch_size=4, num_eval_batches=1)
    return new


COMMAND_LINES = {
    "fiddler and value": ("small", ["--fiddler=bf16", "--fdl.model.config.num_blocks=8"]),
    "fiddlers with arguments, a tag, values": (
        "tiny",
        [
            "--fiddler=long_context(128)",
            "--fiddler=fsdp(size=1)",
            "--fdl_tag.DType=float16",
            "--fdl.optimizer.peak_learning_rate=1e-3",
            "--fdl.trainer.checkpoint.keep_every=5",
        ],
    ),
    "a fiddler returning a new graph": ("tiny", ["--fiddler=_fresh_data", "--fdl.data.seed=3"]),
    "the shared parallel config": ("tiny", ["--fdl.mesh.parallel.remat=full"]),
    "nothing": ("tiny", []),
    "index paths": ("mixture", ["--fdl.sources[1].rate=0.25", "--fdl.weights['a']=0.75"]),
}


def _base(name: str) -> fdl.Buildable:
    return _mixture() if name == "mixture" else getattr(experiments, name)()


def _overrides(argv: list[str]) -> list[overrides.Override]:
    """What the launcher makes of `argv`, labelled as typed."""
    typed = overrides.rewrite_shorthands(argv)

    def given(flag: str) -> list[str]:
        return [a.removeprefix(flag) for a in typed if a.startswith(flag)]

    return overrides.from_flags(given("--fiddler="), given("--fdl_tags_set="), given("--fdl_set="), argv)


@pytest.fixture
def library(monkeypatch):
    monkeypatch.setattr(experiments, "_fresh_data", _fresh_data, raising=False)
    monkeypatch.setattr(experiments, "FIDDLERS", (*experiments.FIDDLERS, "_fresh_data"))
    return experiments


def _code(base: str, argv: list[str], lib) -> tuple[str, fdl.Buildable]:
    applied = overrides.apply(_base(base), _overrides(argv), lib)
    return diff.as_code(applied.base, applied.cfg, base_flag=f"--fdl_config={base}"), applied.cfg


@pytest.mark.parametrize("case", sorted(COMMAND_LINES))
def test_config_diff_py_as_a_fiddler_rebuilds_the_same_graph(case, tmp_path, library):
    base, argv = COMMAND_LINES[case]
    code, expected = _code(base, argv, library)
    assert "could not reproduce" not in code
    path = tmp_path / "config_diff.py"
    path.write_text(code)
    replayed = overrides.apply(_base(base), [overrides.Override("fiddler", str(path), "x")], library).cfg
    assert serialization.dump_json(replayed) == serialization.dump_json(expected)


def test_a_different_command_lines_code_gives_a_different_graph(tmp_path, library):
    """Control: the comparison above notices when the code does not match the command line."""
    code, three = _code("tiny", ["--fdl.model.config.num_blocks=3"], library)
    _, expected = _code("tiny", ["--fdl.model.config.num_blocks=4"], library)
    # The check as_code runs before it saves a file tells the two apart too.
    assert diff.reproduces(code, "config_diff", experiments.tiny(), three)
    assert not diff.reproduces(code, "config_diff", experiments.tiny(), expected)
    path = tmp_path / "config_diff.py"
    path.write_text(code)
    replayed = overrides.apply(
        experiments.tiny(), [overrides.Override("fiddler", str(path), "x")], library
    ).cfg
    assert serialization.dump_json(replayed) != serialization.dump_json(expected)
    assert "cfg.model.config.num_blocks = 3" in code


def test_the_file_says_how_to_use_it_and_reads_like_an_experiment(library):
    code, _ = _code("small", COMMAND_LINES["fiddler and value"][1], library)
    assert code.startswith('"""What this run changed against --fdl_config=small, as a fiddler')
    assert "--fiddler=RUN/config_diff.py" in code
    assert (
        "def config_diff(cfg):\n    cfg.model.config.num_blocks = 8\n    cfg.model.config.dtype = 'bfloat16'"
        in code
    )


def test_a_fiddler_file_without_its_function_is_refused_in_one_line(tmp_path):
    path = tmp_path / "my_fiddler.py"
    path.write_text("def other(cfg):\n    pass\n")
    todo = [overrides.Override("fiddler", str(path), f"--fiddler={path}")]
    with pytest.raises(ConfigError, match="defines no function `my_fiddler` .*; it has: other"):
        overrides.apply(experiments.tiny(), todo, experiments)


def test_a_change_codegen_cannot_write_leaves_a_note_not_wrong_code():
    """An object with no source form (here a bare object()) cannot be written as code."""
    cfg = experiments.tiny()
    cfg.data.source.root = object()
    code = diff.as_code(experiments.tiny(), cfg, base_flag="--fdl_config=experiments.tiny")
    assert "could not reproduce" in code and "def config_diff" not in code
