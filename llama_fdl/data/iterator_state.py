"""An Orbax handler that checkpoints tf.data iterators with `tf.train.Checkpoint`.

Each process writes its own iterator (its own shard of the data) into the step's `data/` item, as
`process_<index>`. Going through `tf.train.Checkpoint` (not `as_numpy_iterator()`) is what makes
the restored iterator continue exactly where the saved one stood, prefetch buffer included.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from llama_fdl.data.quiet_import import tf


def _prefix(directory: epath.Path) -> str:
    return str(directory / f"process_{jax.process_index()}")


class TFIteratorHandler(ocp.CheckpointHandler):
    """Saves and restores a tf.data iterator in place."""

    def save(self, directory: epath.Path, args: TFIteratorSave) -> None:
        tf.train.Checkpoint(iterator=args.iterator).write(_prefix(directory))

    def restore(self, directory: epath.Path, args: TFIteratorRestore) -> Any:
        prefix = _prefix(directory)
        if not tf.io.gfile.exists(prefix + ".index"):
            raise FileNotFoundError(
                f"The checkpoint at {directory} holds no data-iterator state for process "
                f"{jax.process_index()}; it was written by a run with fewer processes."
            )
        tf.train.Checkpoint(iterator=args.iterator).read(prefix).assert_consumed()
        return args.iterator


@ocp.args.register_with_handler(TFIteratorHandler, for_save=True)
@dataclasses.dataclass
class TFIteratorSave(ocp.args.CheckpointArgs):
    iterator: Any


@ocp.args.register_with_handler(TFIteratorHandler, for_restore=True)
@dataclasses.dataclass
class TFIteratorRestore(ocp.args.CheckpointArgs):
    iterator: Any
