"""A run's identity is what it computes: layout settings may change on resume, nothing else may.

In-process, on the graphs and the run directory's config.json; the resume itself under a new
mesh, with its losses, is in tests/test_train.py.
"""

import pytest
from fiddle.experimental import serialization

import experiments
from llama_fdl import runner
from llama_fdl.cli import identity

LAYOUT_CHANGES = {
    "model.config.parallel.data_axis_size": 1,
    "model.config.parallel.fsdp_axis_size": 2,
    "model.config.parallel.tensor_axis_size": 2,
    "model.config.parallel.fsdp_min_weight_size": 0,
    "model.config.parallel.remat": "full",
    "trainer.num_microbatches": 2,
}
WHAT_CHANGES = {
    "model.config.num_blocks": 3,
    "model.config.dtype": "bfloat16",
    "model.config.parallel.fsdp_axis_name": "shards",
    "optimizer.peak_learning_rate": 1e-3,
    "data.batch_size": 16,
    "trainer.seed": 1,
    "trainer.num_train_steps": 30,
}


def _changed(path: str, value):
    cfg = experiments.tiny()
    *parents, name = path.split(".")
    node = cfg
    for parent in parents:
        node = getattr(node, parent)
    setattr(node, name, value)
    return cfg


@pytest.mark.parametrize("path", sorted(LAYOUT_CHANGES))
def test_a_layout_setting_is_a_layout_change(path):
    what, layout = identity.split_changes(experiments.tiny(), _changed(path, LAYOUT_CHANGES[path]))
    assert what == [] and [c.path for c in layout] == [path]


@pytest.mark.parametrize("path", sorted(WHAT_CHANGES))
def test_anything_else_changes_the_experiment(path):
    what, layout = identity.split_changes(experiments.tiny(), _changed(path, WHAT_CHANGES[path]))
    assert [c.path for c in what] == [path] and layout == []


def test_the_shared_parallel_config_is_one_setting_under_either_path():
    cfg = experiments.tiny()
    cfg.mesh.parallel.fsdp_axis_size = 2  # the same node as model.config.parallel
    what, layout = identity.split_changes(experiments.tiny(), cfg)
    assert what == [] and [c.path for c in layout] == ["model.config.parallel.fsdp_axis_size"]


def _saved_run(tmp_path, cfg):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(serialization.dump_json(cfg, indent=2))
    return workdir


def test_a_run_directory_takes_a_new_layout_and_refuses_a_new_experiment(tmp_path):
    workdir = _saved_run(tmp_path, experiments.tiny())
    relaid = _changed("model.config.parallel.fsdp_axis_size", 2)
    relaid.trainer.num_microbatches = 2
    claim = runner.claim_workdir(workdir, relaid, serialization.dump_json(relaid, indent=2), False)
    try:
        assert claim.workdir == workdir
        assert identity.describe(claim.layout_changes) == (
            "model.config.parallel.fsdp_axis_size 1 -> 2, trainer.num_microbatches 1 -> 2"
        )
    finally:
        claim.release()
    other = _changed("optimizer.peak_learning_rate", 1e-3)
    with pytest.raises(runner.RunError, match="holds a run of a different experiment"):
        runner.claim_workdir(workdir, other, serialization.dump_json(other, indent=2), False)
    assert sorted(p.name for p in workdir.iterdir()) == ["config.json"]  # the lock is gone again
