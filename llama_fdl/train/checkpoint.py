"""Orbax checkpoints of a run: train state, data-iterator state and metadata, under RUN/checkpoints.

Each step is one Orbax composite checkpoint with three items:
  state     the TrainState (params, optimizer state, step, rng), restored straight into its shardings;
  data      the seqio/tf.data iterator of every process (see llama_fdl.data.iterator_state);
  metadata  JSON: the experiment's Fiddle JSON, package versions and the git commit.
Orbax writes each step into a temporary directory and renames it when complete, so a save that is
interrupted is never listed as a step to restore from.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import pathlib
import subprocess

import orbax.checkpoint as ocp

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "fiddle", "seqio", "tensorflow")


@dataclasses.dataclass
class CheckpointConfig:
    """When checkpoints are written and which are kept."""

    every_steps: int = 500
    """Save every this many steps (and always at the end of the run)."""
    keep_last: int = 3
    """Keep the most recent this many checkpoints."""
    keep_every: int | None = None
    """Also keep forever every checkpoint whose step is a multiple of this."""
    async_save: bool = True
    """Write checkpoints in the background while training continues."""

    def __post_init__(self) -> None:
        if self.every_steps < 1 or self.keep_last < 1:
            raise ValueError("checkpoint.every_steps and checkpoint.keep_last must be positive.")


def make_manager(directory: pathlib.Path, config: CheckpointConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_last,
        keep_period=config.keep_every,
        create=True,
        enable_async_checkpointing=config.async_save,
    )
    return ocp.CheckpointManager(
        directory.absolute(), options=options, item_names=("state", "data", "metadata")
    )


def metadata(config_json: str) -> dict:
    """What a checkpoint records about how it was made."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"config_json": config_json, "versions": versions, "git_commit": _git_commit()}


def _git_commit() -> str | None:
    repo = pathlib.Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def save(manager: ocp.CheckpointManager, step: int, state, iterator, meta: dict, force: bool = False):
    from llama_fdl.data.iterator_state import TFIteratorSave

    return manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=TFIteratorSave(iterator),
            metadata=ocp.args.JsonSave(meta),
        ),
        force=force,
    )


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, iterator):
    """Restores step `step` into `abstract_state`'s shardings and `iterator` in place."""
    from llama_fdl.data.iterator_state import TFIteratorRestore

    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=TFIteratorRestore(iterator),
        ),
    )
    return restored["state"]
