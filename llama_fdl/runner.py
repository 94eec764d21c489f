"""Runs a Fiddle experiment graph in a run directory: checks, saves the experiment, builds, trains.

This is where the graph meets the run directory, so it is one of the places Fiddle lives. Every
check that can fail runs in `check`, before the run directory is touched and before anything is
compiled, so a bad config leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import TYPE_CHECKING

import fiddle as fdl
import jax
import numpy as np
from fiddle.experimental import serialization
from flax import linen as nn
from jax.experimental import multihost_utils

from llama_fdl import saved_run
from llama_fdl.cli import ConfigError, diff, flatten, identity, render, safe_load, typecheck
from llama_fdl.run_lock import RunDirectoryBusy, RunLock
from llama_fdl.train import aot
from llama_fdl.train import checkpoint as ckpt
from llama_fdl.train import state as state_lib
from llama_fdl.train.config import Experiment
from llama_fdl.train.preemption import StopRequest

if TYPE_CHECKING:
    from llama_fdl.train import loop


class RunError(Exception):
    """A problem with the run directory or its contents, stated for a person."""


def experiment_name(fdl_config: str | None, fdl_config_file: str | None) -> str:
    """`experiments.small(...)` -> `small`; a config file -> the name of its run directory."""
    if fdl_config:
        return fdl_config.split("(")[0].rsplit(".", 1)[-1]
    if fdl_config_file:
        return pathlib.Path(fdl_config_file).resolve().parent.name
    return "run"


def one_line(error: BaseException) -> str:
    """The first line of an error's message; the full text is for --traceback."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def check(cfg: fdl.Buildable) -> Experiment:
    """Builds the graph and runs every check that needs no compile; returns the build.

    In order: value types against annotations; each part's own checks as it is built (LlamaConfig,
    the vocabulary file, the mesh against the devices, ...); the model config against this platform
    (cuDNN needs a GPU); cross-part checks (Experiment.validate); trainer.init_from's source against
    the model's architecture; the optimizer's schedule against the run length; the model
    initialised by shape (a trace, not a compile), which catches what only the model code knows;
    and the data layer's own check (`llama_fdl.data.pipeline.check`: modules, sources, the eval
    sets against the validation splits), which brings in TensorFlow.
    """
    typecheck.check_graph(cfg)
    experiment = fdl.build(cfg)
    if not isinstance(experiment, Experiment):
        raise ConfigError(f"The graph builds a {type(experiment).__name__}, not an Experiment.")
    experiment.model.config.check_platform(jax.default_backend())
    experiment.validate()
    if experiment.trainer.init_from:
        saved_run.check_init_from(experiment.trainer.init_from, experiment.model.config)
    tx, _ = experiment.optimizer(experiment.trainer.num_train_steps)
    state_lib.abstract_state(experiment.model, tx, experiment.data.sequence_length, experiment.trainer.seed)
    from llama_fdl.data import pipeline  # TensorFlow: seconds that a config failing above never pays

    pipeline.check(experiment.data)
    return experiment


def dry_run(experiment: Experiment) -> aot.DryRunReport:
    """Compiles the experiment's train step for the current devices; trains nothing, writes nothing."""
    tx, schedule = experiment.optimizer(experiment.trainer.num_train_steps)
    return aot.dry_run(
        experiment.model,
        tx,
        schedule,
        experiment.mesh,
        batch_size=experiment.data.batch_size,
        sequence_length=experiment.data.sequence_length,
        seed=experiment.trainer.seed,
        num_microbatches=experiment.trainer.num_microbatches,
        skip_nonfinite=experiment.trainer.skip_nonfinite_steps,
    )


@dataclasses.dataclass
class Claim:
    """A run directory this launch may use: locked (by process 0), new or holding this experiment."""

    workdir: pathlib.Path
    lock: RunLock | None
    """Held by process 0; None on the other processes."""
    created: bool
    """Whether this launch made the directory (it is removed again if it stays empty)."""
    layout_changes: list[diff.Change]
    """How the saved experiment's layout differs from this one's (empty when it does not)."""

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            if self.created and not any(self.workdir.iterdir()):
                self.workdir.rmdir()


def claim_workdir(
    workdir: pathlib.Path, cfg: fdl.Buildable, config_json: str, start_elsewhere: bool
) -> Claim:
    """Locks `workdir` if it is new or holds this experiment, perhaps with another layout (see
    llama_fdl.cli.identity); if it holds another experiment, refuses, or with `start_elsewhere`
    takes the first free `WORKDIR-2`, `WORKDIR-3`, ... Refuses a directory another live launch
    holds, naming it."""
    candidate, n = workdir, 1
    while True:
        claim = _lock(candidate)
        try:
            layout = layout_changes(candidate / "config.json", cfg, config_json)
        except BaseException:
            claim.release()
            raise
        if layout is not None:
            break
        claim.release()
        if not start_elsewhere:
            raise RunError(
                f"{workdir} holds a run of a different experiment (its config.json differs in "
                f"more than the layout); pass --workdir=NEW_DIR, or --start_elsewhere to use the "
                f"next free {workdir.name}-N."
            )
        n += 1
        candidate = workdir.with_name(f"{workdir.name}-{n}")
    if candidate != workdir:
        _say(f"{workdir} holds a different experiment; starting in {candidate} instead.")
    claim.layout_changes = layout
    if layout:
        changes = identity.describe(layout)
        _say(f"{candidate} holds this experiment with another layout; resuming it with {changes}.")
    return claim


def _lock(workdir: pathlib.Path) -> Claim:
    """Process 0 takes the directory's lock; every process learns whether it got it."""
    lock, created, error = None, False, None
    if jax.process_index() == 0:
        try:
            created = not workdir.exists()
            workdir.mkdir(parents=True, exist_ok=True)
            lock = RunLock(workdir)
            previous = lock.acquire()
        except RunDirectoryBusy as e:
            error = RunError(str(e))
        except OSError as e:
            error = RunError(
                f"Cannot write the run directory {workdir}: {e.strerror}; choose another --workdir."
            )
        else:
            if previous is not None:
                _say(f"Took over {lock.path} from {previous}, which ended without releasing it.")
    if jax.process_count() > 1:
        ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not ok and error is None:
            error = RunError(f"Process 0 could not claim the run directory {workdir}; its error says why.")
    if error is not None:
        raise error
    return Claim(workdir, lock, created, [])


def layout_changes(
    saved_path: pathlib.Path, cfg: fdl.Buildable, config_json: str
) -> list[diff.Change] | None:
    """[] if there is no saved experiment or it is this one; its layout changes if only the layout
    differs; None if it is another experiment."""
    if not saved_path.exists() or saved_path.read_text() == config_json:
        return []
    try:
        saved = safe_load.load(saved_path)
    except ConfigError:
        return None  # a file this code cannot load is not this experiment
    what, layout = identity.split_changes(saved, cfg)
    return None if what else layout


def _check_checkpoints(experiment: Experiment, workdir: pathlib.Path) -> None:
    """Refuses checkpoints of another model before anything is written (config.json may be gone)."""
    directory = workdir / "checkpoints"
    if directory.is_dir():
        tx, _ = experiment.optimizer(experiment.trainer.num_train_steps)
        data, seed = experiment.data, experiment.trainer.seed
        boxed = state_lib.abstract_state(experiment.model, tx, data.sequence_length, seed)
        ckpt.check_compatible(directory, nn.meta.unbox(boxed))


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def finished(cfg: fdl.Buildable, workdir: pathlib.Path) -> int | None:
    """The last step of a run in `workdir` that holds this very experiment and has a checkpoint at
    or past its last step; None when there is anything left to do (or another experiment there).

    A finished run's rerun is answered from the directory alone (`config.json`, the checkpoints'
    names, the last one's parameters read back), in a second or two: no data, no sharding table,
    no compile.
    """
    saved = workdir / "config.json"
    if not saved.exists() or saved.read_text() != serialization.dump_json(cfg, indent=2):
        return None
    directory = workdir / "checkpoints"
    steps = ckpt.saved_steps(directory)
    if not steps or steps[-1] < cfg.trainer.num_train_steps:
        return None
    try:  # its parameters must read back; a damaged step takes the full path, which sets it aside
        ckpt.restore_params(directory, steps[-1], ckpt.saved_params(directory, steps[-1]))
    except Exception:  # noqa: BLE001 -- TensorStore and Orbax each raise their own
        return None
    return steps[-1]


def save_config(
    cfg: fdl.Buildable,
    workdir: pathlib.Path,
    config_json: str,
    config_text: str,
    config_diff: str,
    config_code: str | None = None,
    layout_changed: bool = False,
) -> None:
    """Writes the run's experiment files into a run directory that is new or holds this experiment.

    config.txt is rewritten on every start, and config.json when the layout changed (it is the
    graph the run now continues with); config_diff.txt, config_diff.py and config.svg only when
    the run directory is new, so resuming (perhaps from --fdl_config_file=RUN/config.json, which changes
    nothing against itself) keeps the diff of the command that started the run.
    """
    path = workdir / "config.json"
    if jax.process_index() != 0:
        return  # one writer: processes share the run directory and its temp names
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _write_atomically(workdir / "config_diff.txt", config_diff + "\n")
            if config_code is not None:
                _write_atomically(workdir / "config_diff.py", config_code)
            picture = render.svg(cfg)
            if picture is None:
                print(f"warning: {render.MISSING_DOT}", file=sys.stderr)
            else:
                _write_atomically(workdir / "config.svg", picture)
            _write_atomically(path, config_json)  # last: its presence means the set is complete
        elif layout_changed:
            _write_atomically(path, config_json)
        _write_atomically(workdir / "config.txt", config_text + "\n")
    except OSError as e:
        raise RunError(
            f"Cannot write the run directory {workdir}: {e.strerror}; choose another --workdir."
        ) from e


def _write_atomically(path: pathlib.Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run(
    cfg: fdl.Buildable,
    workdir: pathlib.Path,
    options: loop.RunOptions | None = None,
    start_elsewhere: bool = False,
    *,
    config_diff: str = "(no base experiment given)",
    config_code: str | None = None,
    experiment: Experiment | None = None,
    stop: StopRequest | None = None,
) -> dict[str, float]:
    """Checks the graph, saves it in the run directory, builds it and trains; returns the final eval.

    Args:
      cfg: the experiment graph.
      workdir: the run directory; a checkpoint there is resumed from.
      options: runtime-only settings of the loop (profiling, MFU).
      start_elsewhere: if `workdir` holds another experiment, use the next free `WORKDIR-N`.
      config_diff: what this run changed against its base experiment (see llama_fdl.cli.diff),
        saved as config_diff.txt and shown in TensorBoard's text tab.
      config_code: the same as a fiddler (llama_fdl.cli.diff.as_code), saved as config_diff.py.
      experiment: `check(cfg)`, when the caller has already run it.
      stop: where the launcher records SIGTERM/SIGINT (see llama_fdl.train.loop.train).
    """
    experiment = experiment if experiment is not None else check(cfg)
    config_text = flatten.as_text(cfg)
    config_json = serialization.dump_json(cfg, indent=2)
    claim = claim_workdir(workdir, cfg, config_json, start_elsewhere)
    try:
        _check_checkpoints(experiment, claim.workdir)
        save_config(
            cfg,
            claim.workdir,
            config_json,
            config_text,
            config_diff,
            config_code,
            layout_changed=bool(claim.layout_changes),
        )
        # Imported here: the loop pulls in TensorFlow (seqio), seconds that a bad config never pays.
        from llama_fdl.train import loop

        texts = {"config": config_text, "config_diff": config_diff}
        return loop.train(experiment, claim.workdir, config_json, texts, options, stop)
    finally:
        claim.release()
