"""Orbax checkpoints of a run: train state, data-iterator state and metadata, under RUN/checkpoints.

Each step is one Orbax composite checkpoint with three items:
  state     the TrainState (params, optimizer state, step, rng), restored straight into its shardings;
  data      the seqio/tf.data iterator of every process (see llama_fdl.data.iterator_state);
  metadata  JSON: the experiment's Fiddle JSON, package versions and the git commit.
Orbax writes each step into a temporary directory and renames it when complete, so a save that is
interrupted is never listed as a step to restore from. A complete step that cannot be read back
(files cut short later) is named, moved to RUN/unreadable_checkpoints/ and skipped for the one
before it (`restore_newest`). `check_compatible` reads only metadata and writes nothing, so a run
of another model is refused before the run directory changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import pathlib
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

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
    return ocp.CheckpointManager(directory.absolute(), options=options, item_handlers=_handlers())


def _handlers() -> dict[str, ocp.CheckpointHandler]:
    # Imported here: the handler needs TensorFlow, and this module's config class must not.
    from llama_fdl.data.iterator_state import TFIteratorHandler

    return {
        "state": ocp.StandardCheckpointHandler(),
        "data": TFIteratorHandler(),
        "metadata": ocp.JsonCheckpointHandler(),
    }


class IncompatibleCheckpoint(ValueError):
    """A checkpoint whose parameters do not fit the model being built."""


class UnreadableCheckpoints(RuntimeError):
    """No checkpoint of a run directory can be read back."""


def _leaf_name(path) -> str:
    """`params/block_stack/blocks/attention/query/kernel`, the same for saved and live trees."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def check_compatible(directory: pathlib.Path, target) -> None:
    """Raises IncompatibleCheckpoint naming the first parameter whose shape or presence differs.

    Reads only the newest checkpoint whose metadata reads (a damaged one is `restore_newest`'s
    business) and writes nothing, so a refused run leaves the directory as it was.
    """
    if not directory.is_dir():
        return
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    with ocp.CheckpointManager(directory.absolute(), options=options) as manager:
        steps = list(reversed(manager.all_steps()))
    for step in steps:
        try:
            # The state item's own metadata: no TensorFlow (the data item's handler needs it),
            # so a refused launch stays quick and quiet.
            saved = ocp.StandardCheckpointHandler().metadata(directory / str(step) / "state")
        except Exception:  # noqa: BLE001, S112 -- unreadable: restore_newest deals with it
            continue
        _compare(saved, target, directory / str(step))
        return


def _compare(saved, target, where: pathlib.Path) -> None:
    saved_shapes = {
        _leaf_name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]
    }
    # Parameters first, so the message names a weight rather than an optimizer moment.
    leaves = jax.tree_util.tree_flatten_with_path(target)[0]
    leaves.sort(key=lambda item: not _leaf_name(item[0]).startswith("params/"))
    for path, leaf in leaves:
        name = _leaf_name(path)
        if name not in saved_shapes:
            raise IncompatibleCheckpoint(
                f"The checkpoint {where} has no {name}, which this config needs: it was written "
                f"by a different model; use a new --workdir."
            )
        if saved_shapes[name] != tuple(leaf.shape):
            raise IncompatibleCheckpoint(
                f"The checkpoint {where} holds {name} of shape {saved_shapes[name]}, but this "
                f"config needs {tuple(leaf.shape)}: it was written by a different model; use a "
                f"new --workdir."
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


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, directory gone, ...)."""


def save(manager: ocp.CheckpointManager, step: int, state, iterator, meta: dict, force: bool = False):
    """Starts saving `step` (the write finishes in the background when async)."""
    from llama_fdl.data.iterator_state import TFIteratorSave

    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=TFIteratorSave(iterator),
        metadata=ocp.args.JsonSave(meta),
    )
    with _write_errors(manager, step):
        return manager.save(step, args=args, force=force)


def wait(manager: ocp.CheckpointManager) -> None:
    """Blocks until background saves are on disk; their write errors surface here."""
    with _write_errors(manager, None):
        manager.wait_until_finished()


@contextlib.contextmanager
def _write_errors(manager: ocp.CheckpointManager, step: int | None):
    try:
        yield
    except Exception as e:  # noqa: BLE001 -- Orbax and TensorFlow raise their own error types
        what = f"the checkpoint at step {step}" if step is not None else "a checkpoint"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = reason.rsplit("; ", 1)[-1] if "No space left" in reason else reason
        raise CheckpointWriteError(
            f"Could not write {what} under {manager.directory} ({reason}); free space or choose "
            f"another --workdir, then rerun: the last complete checkpoint is kept."
        ) from e


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


UNREADABLE_DIR = "unreadable_checkpoints"
"""Where, next to checkpoints/, a checkpoint that cannot be read is moved (never deleted)."""


def restore_newest(
    manager: ocp.CheckpointManager, abstract_state, new_iterator: Callable[[], Iterator], say
) -> tuple[Any, Iterator, int] | None:
    """Restores the newest checkpoint that reads back; None when there is no checkpoint.

    A newer checkpoint that fails to restore (truncated files, a bad copy) is named with the
    reason in one line through `say`, and moved to RUN/unreadable_checkpoints/ so that training
    can write that step again; it is never deleted. Every process must succeed for a step to
    count, so all of them resume from the same one. If no checkpoint restores, raises
    UnreadableCheckpoints and moves nothing.
    """
    steps = list(reversed(manager.all_steps()))
    failures: list[tuple[int, str]] = []
    for step in steps:
        iterator = new_iterator()  # a failed restore may have moved the previous one
        try:
            restored, reason = restore(manager, step, abstract_state, iterator), ""
        except Exception as e:  # noqa: BLE001 -- TensorStore, Orbax and TF each raise their own
            restored, reason = None, _reason(e)
        if _everywhere(not reason):
            for bad, why in failures:
                _move_aside(manager, bad, say, why, step)
            return restored, iterator, step
        failures.append((step, reason or "unreadable on another process"))
    if not failures:
        return None
    newest, why = failures[0]
    raise UnreadableCheckpoints(
        f"None of the {len(failures)} checkpoints under {manager.directory} can be read back "
        f"(the newest, step {newest}: {why}); move them away to start this run directory from "
        f"scratch, or restore them from a good copy."
    )


def _move_aside(manager: ocp.CheckpointManager, step: int, say, why: str, resumed: int) -> None:
    if jax.process_index() == 0:  # one mover; the run directory is shared
        directory = pathlib.Path(manager.directory)
        target, n = directory.parent / UNREADABLE_DIR / str(step), 1
        while target.exists():  # the same step may have been damaged before
            n += 1
            target = directory.parent / UNREADABLE_DIR / f"{step}-{n}"
        target.parent.mkdir(exist_ok=True)
        (directory / str(step)).rename(target)
        say(
            f"The checkpoint at step {step} cannot be read ({why}); resuming from step {resumed}, "
            f"the newest that restores. Step {step} was moved to {target}, not deleted."
        )
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"llama_fdl: moved checkpoint {step} aside")
    manager.reload()


def _reason(error: BaseException) -> str:
    """The root cause's first line: TensorStore's outer message is a repr of its whole spec."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= 300 else text[:297] + "..."


def _everywhere(ok: bool) -> bool:
    """Whether `ok` holds on every process (each process's own answer when there is one)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


# --- Reading another run's parameters ----------------------------------------------------


class NoSuchCheckpoint(ValueError):
    """A run directory without checkpoints, or without the step asked for."""


def saved_steps(directory: pathlib.Path) -> list[int]:
    """Complete checkpoints under `directory` (Orbax renames a step to its number when done)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def choose_step(directory: pathlib.Path, step: int | None) -> int:
    """`step`, or the latest, after checking that it is there; raises NoSuchCheckpoint naming
    what is there."""
    steps = saved_steps(directory)
    if not steps:
        raise NoSuchCheckpoint(
            f"{directory} holds no complete checkpoint; train the run first (or wait for its "
            f"first save, every trainer.checkpoint.every_steps steps)."
        )
    if step is None:
        return steps[-1]
    if step not in steps:
        raise NoSuchCheckpoint(
            f"{directory} has no checkpoint at step {step}; it has steps {', '.join(map(str, steps))}."
        )
    return step


def saved_params(directory: pathlib.Path, step: int):
    """ShapeDtypeStructs of the parameters saved at `step`, in the layout they were saved in."""
    metadata = ocp.PyTreeCheckpointHandler().metadata(directory.absolute() / str(step) / "state")
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), dict(metadata.tree)["params"])


def restore_params(directory: pathlib.Path, step: int, abstract_params):
    """Only the parameters of checkpoint `step`, into `abstract_params`' shapes and shardings
    (ShapeDtypeStructs); the optimizer state and the data iterators stay on disk."""
    target = {"params": abstract_params}
    args = ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
    )
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
        return checkpointer.restore(directory.absolute() / str(step) / "state", args=args)["params"]
