"""Every experiment and fiddler builds, round-trips through Fiddle JSON, and initialises by shape.

Golden files pin each experiment's flattened config (tests/golden/<experiment>.txt) and what each
fiddler changes (tests/golden/fiddlers.txt), so a change to a builder or a parent that silently
changes a child shows up here. After an intended change, regenerate them and review the diff:
    python tests/test_experiments.py --write-golden
"""

import copy
import inspect
import pathlib
import sys

import fiddle as fdl
import jax
import jax.numpy as jnp
import pytest
from fiddle.experimental import serialization
from flax import linen as nn

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # so that `python tests/test_experiments.py --write-golden` works
    sys.path.insert(0, str(REPO))

import experiments  # noqa: E402
from llama_fdl import runner  # noqa: E402
from llama_fdl.cli import diff, flatten  # noqa: E402
from llama_fdl.model import num_params  # noqa: E402
from llama_fdl.train import state as state_lib  # noqa: E402
from llama_fdl.train.config import Experiment  # noqa: E402

GOLDEN = REPO / "tests" / "golden"
REGENERATE = "python tests/test_experiments.py --write-golden"
FIDDLER_ARGS = {
    "long_context": {"sequence_length": 256},
    "text_files": {"files": "corpus/*.txt"},
    "jsonl": {"files": "data/*.jsonl"},
    "seqio_task": {"name": "my_task"},
}
"""Arguments for the fiddlers that need some (data sources: the graphs are built here, never
read), or whose defaults do not fit tiny (long_context: 512 tokens per batch, not 1024)."""


def golden_texts() -> dict[str, str]:
    """File name under tests/golden -> what it should hold."""
    texts = {
        f"{name}.txt": flatten.as_text(getattr(experiments, name)()) + "\n"
        for name in experiments.EXPERIMENTS
    }
    sections = []
    for name in experiments.FIDDLERS:
        cfg = experiments.tiny()
        kwargs = FIDDLER_ARGS.get(name, {})
        getattr(experiments, name)(cfg, **kwargs)
        call = f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})" if kwargs else name
        sections.append(f"## --fiddler={call} on experiments.tiny\n{diff.as_text(experiments.tiny(), cfg)}\n")
    texts["fiddlers.txt"] = "\n".join(sections)
    return texts


@pytest.mark.parametrize("name", experiments.EXPERIMENTS)
def test_experiment_builds_serializes_and_initialises_by_shape(name):
    cfg = getattr(experiments, name)()
    restored = serialization.load_json(serialization.dump_json(cfg))
    assert restored == cfg
    built = runner.check(restored)  # every pre-run check: types, validate, schedule, data size
    assert isinstance(built, Experiment)
    tx, _ = built.optimizer(built.trainer.num_train_steps)
    abstract = state_lib.abstract_state(built.model, tx, built.data.sequence_length, seed=0)
    params = jax.tree.leaves(nn.meta.unbox(abstract.params))
    assert sum(p.size for p in params) == num_params(built.model.config)


@pytest.mark.parametrize("name", experiments.EXPERIMENTS)
def test_experiment_says_what_it_is_for_how_to_run_it_and_derives_from_a_parent(name):
    fn = getattr(experiments, name)
    doc = inspect.getdoc(fn) or ""
    assert len(doc.splitlines()) > 2, f"experiments.{name} needs a docstring saying what it is for"
    assert f"launch/launch.py --fdl_config=experiments.{name}" in doc, f"experiments.{name}: add the command"
    if name == "base":
        return
    earlier = experiments.EXPERIMENTS[: experiments.EXPERIMENTS.index(name)]
    source = inspect.getsource(fn)
    assert any(f"{parent}()" in source for parent in earlier), f"experiments.{name} calls no parent"


def test_the_library_tuples_list_every_experiment_and_fiddler():
    """Tests iterate EXPERIMENTS and FIDDLERS, so a function missing from them would go untested."""
    functions = set()
    for path in (REPO / "experiments").glob("*.py"):
        module = __import__(f"experiments.{path.stem}", fromlist=["_"])
        functions |= {
            n
            for n, f in vars(module).items()
            if inspect.isfunction(f) and f.__module__ == module.__name__ and not n.startswith("_")
        }
    listed = experiments.EXPERIMENTS + experiments.FIDDLERS + experiments.sweeps.SWEEPS
    assert functions == set(listed)
    assert len(set(listed)) == len(listed)


@pytest.mark.parametrize("fiddler", experiments.FIDDLERS)
def test_fiddler_changes_the_graph_and_still_builds(fiddler):
    cfg = experiments.tiny()
    before = copy.deepcopy(cfg)
    getattr(experiments, fiddler)(cfg, **FIDDLER_ARGS.get(fiddler, {}))
    assert cfg != before, f"fiddler {fiddler} changed nothing"
    assert getattr(experiments, fiddler).__doc__, f"fiddler {fiddler} needs a docstring"
    built = fdl.build(serialization.load_json(serialization.dump_json(cfg)))
    tokens = jnp.zeros((1, built.data.sequence_length), jnp.int32)
    jax.eval_shape(built.model.init, jax.random.key(0), tokens)


@pytest.mark.parametrize("file_name", sorted(golden_texts()))
def test_golden_flattened_configs(file_name):
    expected = golden_texts()[file_name]
    path = GOLDEN / file_name
    assert path.exists(), f"{path} is missing; run {REGENERATE}"
    assert path.read_text() == expected, f"{file_name} changed; if intended, run {REGENERATE} and review"


def test_golden_check_notices_a_change():
    """Control: one changed hyperparameter makes the flattened text differ from the golden file."""
    cfg = experiments.small()
    cfg.model.config.num_blocks += 1
    assert flatten.as_text(cfg) + "\n" != (GOLDEN / "small.txt").read_text()


def test_small_is_base_plus_its_changes():
    small, base = experiments.small(), experiments.base()
    assert small.model.config.embedding_dim != base.model.config.embedding_dim
    assert small.data == base.data and small.mesh == base.mesh


def test_parallel_config_is_shared_by_model_and_mesh():
    cfg = experiments.tiny()
    cfg.model.config.parallel.data_axis_size = 1
    assert cfg.mesh.parallel.data_axis_size == 1
    assert fdl.build(cfg).mesh.shape["data"] == 1


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-golden"]:
        sys.exit(f"usage: {REGENERATE}")
    GOLDEN.mkdir(exist_ok=True)
    for stale in GOLDEN.glob("*.txt"):
        stale.unlink()
    for file_name, text in golden_texts().items():
        (GOLDEN / file_name).write_text(text)
    print(f"wrote {len(golden_texts())} files under {GOLDEN.relative_to(REPO)}")
