"""The override language's gaps, closed: index paths, fiddlers that return a graph, auto_config."""

from __future__ import annotations

import copy
import dataclasses
import functools

import fiddle as fdl
import pytest
from fiddle.experimental import auto_config

import experiments
from llama_fdl import optim
from llama_fdl.cli import ConfigError, flatten, library, overrides, paths
from llama_fdl.data.config import DataConfig
from llama_fdl.data.sources import StdlibCorpus
from llama_fdl.data.vocabulary import Vocabulary, vocabulary_size
from llama_fdl.model import LlamaConfig, LlamaTransformer, ParallelConfig
from llama_fdl.sharding import build_mesh
from llama_fdl.train.checkpoint import CheckpointConfig
from llama_fdl.train.config import Experiment, TrainerConfig


@dataclasses.dataclass
class Source:
    name: str
    rate: float = 1.0


@dataclasses.dataclass
class Mixture:
    sources: list[Source]
    weights: dict[str, float]
    named: dict[str, Source]
    sizes: tuple[int, ...] = (1, 2)


def _mixture() -> fdl.Config:
    return fdl.Config(
        Mixture,
        sources=[fdl.Config(Source, "a"), fdl.Config(Source, "b", rate=0.5)],
        weights={"a": 0.5, "b": 0.5},
        named={"web": fdl.Config(Source, "web")},
        sizes=(1, 2),
    )


def _set(cfg, *texts):
    todo = [overrides.Override("set", t, f"--fdl.{t}") for t in texts]
    return overrides.apply(cfg, todo, experiments).cfg


def test_paths_index_into_lists_and_dicts():
    cfg = _set(
        _mixture(), "sources[1].rate=0.25", "weights['a']=0.75", "named['web'].rate=2", "sources[-1].name=c"
    )
    assert cfg.sources[1].rate == 0.25 and cfg.sources[1].name == "c"
    assert cfg.weights == {"a": 0.75, "b": 0.5} and cfg.named["web"].rate == 2
    assert cfg.sources[0].rate == 1.0  # control: only the indexed item changed


def test_every_path_the_flattened_config_prints_resolves_to_its_value():
    """--fdl_help and config.txt print these paths; each must be a valid --fdl.PATH."""
    for cfg in (_mixture(), experiments.tiny()):
        for setting in flatten.settings(cfg):
            if isinstance(setting.value, (flatten.SameAs, flatten.Unset)):
                continue
            value = paths.resolve(cfg, setting.path).get()
            shown = flatten.node_of(value) if isinstance(value, fdl.Buildable) else value
            assert shown == setting.value, setting.path
    assert "named['web'].rate = 1.0  # default" in flatten.as_text(_mixture()).splitlines()


@pytest.mark.parametrize(
    "text, message",
    [
        ("sources[2].rate=1", "`sources` has 2 items, so [2] is out of range; use 0 .. 1."),
        ("sources['a'].rate=1", "`sources` is a list; index it with a number, as in [0]."),
        ("weights['c']=1", "`weights` has no key 'c'; it has: 'a', 'b'."),
        ("named['wbe'].rate=1", "`named` has no key 'wbe'; did you mean ['web']?"),
        ("sources[0].rte=1", "`sources[0]` (Source) has no parameter `rte`; did you mean `rate`?"),
        ("weights['a']=high", "`high` is not a float, which this setting takes (it is 0.5 now)"),
        ("weights['a']='high'", "Mixture.weights['a'] takes a float, not a str."),
        ("sources[0]=3", "Mixture.sources[0] takes Source, not an int."),
        ("sizes[0]=3", "`sizes` is a tuple, which cannot be changed in place; set all of it"),
        ("sources[0]rate=1", "is not a dotted path of names"),
        ("sources[0.5].rate=1", "is not a dotted path of names"),
        ("[0].rate=1", "is not a dotted path of names"),
    ],
)
def test_a_bad_index_path_is_named_with_the_fix(text, message):
    with pytest.raises(ConfigError) as e:
        _set(_mixture(), text)
    assert message in str(e.value) and str(e.value).startswith(f"--fdl.{text}: "), str(e.value)


def test_a_fiddler_may_return_a_new_graph_instead_of_changing_it(monkeypatch):
    def widened(cfg):
        new = copy.deepcopy(cfg)
        new.model.config.embedding_dim = 64
        return new

    def broken(cfg):
        return 3

    monkeypatch.setattr(experiments, "widened", widened, raising=False)
    monkeypatch.setattr(experiments, "broken", broken, raising=False)
    monkeypatch.setattr(experiments, "FIDDLERS", (*experiments.FIDDLERS, "widened", "broken"))
    given = experiments.tiny()
    todo = [overrides.Override("fiddler", "widened", "--fiddler=widened")]
    applied = overrides.apply(given, todo, experiments)
    assert applied.cfg.model.config.embedding_dim == 64
    assert applied.sources["model.config.embedding_dim"] == ["--fiddler=widened"]
    # Control: the fiddler left the graph it was given alone, so only its return value carries the change.
    assert given.model.config.embedding_dim == 32
    todo = [overrides.Override("fiddler", "broken", "--fiddler=broken")]
    with pytest.raises(ConfigError, match="--fiddler=broken returned a int; a fiddler changes the graph"):
        overrides.apply(experiments.tiny(), todo, experiments)


@auto_config.auto_config
def auto_tiny() -> Experiment:
    """experiments.tiny written as plain Python calls; auto_config turns each call into a config."""
    parallel = ParallelConfig()
    vocabulary = Vocabulary()  # one node: the data's, and the model's vocab_size is derived from it
    model = LlamaTransformer(
        config=LlamaConfig(
            vocab_size=vocabulary_size(vocabulary),
            embedding_dim=32,
            num_blocks=2,
            head_dim=16,
            parallel=parallel,
        )
    )
    return Experiment(
        model=model,
        mesh=build_mesh(parallel=parallel),
        optimizer=functools.partial(optim.adamw, warmup_steps=5),
        data=DataConfig(
            sequence_length=64,
            batch_size=8,
            num_eval_batches=2,
            source=StdlibCorpus(),
            vocabulary=vocabulary,
        ),
        trainer=TrainerConfig(
            num_train_steps=20, eval_every=10, log_every=5, checkpoint=CheckpointConfig(every_steps=10)
        ),
    )


def test_an_auto_config_experiment_works_with_fdl_config():
    cfg = library.experiment(f"{__name__}.auto_tiny", experiments)
    assert isinstance(cfg, fdl.Config)
    # The same graph as the hand-written experiments.tiny, shared ParallelConfig included.
    assert flatten.values(cfg) == flatten.values(experiments.tiny())
    assert cfg.mesh.parallel is cfg.model.config.parallel
    # Overrides apply to it as to any experiment.
    applied = overrides.apply(cfg, [overrides.Override("set", "model.config.num_blocks=3", "x")], experiments)
    assert applied.cfg.model.config.num_blocks == 3
    # Control: called as plain Python it builds the objects themselves, which --fdl_config refuses.
    with pytest.raises(ConfigError, match="returned a Experiment, not a fdl.Config"):
        library.experiment(f"{__name__}.auto_tiny_plain", experiments)


def auto_tiny_plain():
    return auto_tiny()
