"""Runs a Fiddle experiment graph in a run directory: checks, saves the experiment, builds, trains.

This is where the graph meets the run directory, so it is one of the places Fiddle lives. Every
check that can fail runs in `check`, before the run directory is touched and before any data is
loaded or anything compiled, so a bad config leaves nothing behind.
"""

from __future__ import annotations

import pathlib
import sys
from typing import TYPE_CHECKING

import fiddle as fdl
import jax
from fiddle.experimental import serialization

from llama_fdl import saved_run
from llama_fdl.cli import ConfigError, flatten, render, typecheck
from llama_fdl.data import corpus
from llama_fdl.data.config import DataConfig
from llama_fdl.train import aot
from llama_fdl.train import checkpoint as ckpt
from llama_fdl.train import state as state_lib
from llama_fdl.train.config import Experiment

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
    """Builds the graph and runs every check that needs no data and no compile; returns the build.

    In order: value types against annotations; each part's own checks as it is built (LlamaConfig,
    the mesh against the devices, ...); cross-part checks (Experiment.validate); trainer.init_from's
    source against the model's architecture; the optimizer's schedule against the run length; the
    evaluation set against the validation split's size; and the model initialised by shape (a
    trace, not a compile), which catches what only the model code knows, such as an attention
    backend this platform lacks.
    """
    typecheck.check_graph(cfg)
    experiment = fdl.build(cfg)
    if not isinstance(experiment, Experiment):
        raise ConfigError(f"The graph builds a {type(experiment).__name__}, not an Experiment.")
    experiment.validate()
    if experiment.trainer.init_from:
        saved_run.check_init_from(experiment.trainer.init_from, experiment.model.config)
    tx, _ = experiment.optimizer(experiment.trainer.num_train_steps)
    _check_eval_fits(experiment.data)
    state_lib.abstract_state(experiment.model, tx, experiment.data.sequence_length, experiment.trainer.seed)
    return experiment


def _check_eval_fits(data: DataConfig) -> None:
    """The fixed eval batches must fit in the validation split; counted from file sizes, no TF.

    A packed sequence holds at most sequence_length tokens, and the split holds one token per byte
    plus one EOS per chunk, so this bound is necessary; packing loses a little more, which
    `pipeline.eval_batches` still catches exactly once the data is loaded.
    """
    files = corpus.list_files(data.root, "validation")
    chunk = data.sequence_length - 1
    available = sum(size + -(-size // chunk) for size in (f.stat().st_size for f in files))
    per_batch = data.batch_size * data.sequence_length
    needed = data.num_eval_batches * per_batch
    if needed > available:
        fits = available // per_batch
        fix = (
            f"lower data.num_eval_batches to at most {fits}"
            if fits
            else "lower data.sequence_length or data.batch_size"
        )
        raise ConfigError(
            f"data.num_eval_batches={data.num_eval_batches} batches of {data.batch_size}x"
            f"{data.sequence_length} tokens need {needed:,} validation tokens, but the validation "
            f"split of {data.root} has at most {available:,}; {fix}."
        )


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


def claim_workdir(workdir: pathlib.Path, config_json: str, start_elsewhere: bool) -> pathlib.Path:
    """`workdir` if it is new or holds this experiment; if it holds another one, refuse, or with
    `start_elsewhere` take the first free `WORKDIR-2`, `WORKDIR-3`, ..."""
    candidate, n = workdir, 1
    while (candidate / "config.json").exists() and (candidate / "config.json").read_text() != config_json:
        if not start_elsewhere:
            raise RunError(
                f"{workdir} holds a run of a different experiment (its config.json differs); pass "
                f"--workdir=NEW_DIR, or --start_elsewhere to use the next free {workdir.name}-N."
            )
        n += 1
        candidate = workdir.with_name(f"{workdir.name}-{n}")
    if candidate != workdir:
        print(f"{workdir} holds a different experiment; starting in {candidate} instead.", flush=True)
    return candidate


def finished(cfg: fdl.Buildable, workdir: pathlib.Path) -> int | None:
    """The last step of a run in `workdir` that holds this very experiment and has a checkpoint at
    or past its last step; None when there is anything left to do (or another experiment there).

    A finished run's rerun is answered from the directory alone (`config.json` and the names of
    the checkpoints), in a second or two: no data, no sharding table, no compile.
    """
    saved = workdir / "config.json"
    if not saved.exists() or saved.read_text() != serialization.dump_json(cfg, indent=2):
        return None
    steps = ckpt.saved_steps(workdir / "checkpoints")
    return steps[-1] if steps and steps[-1] >= cfg.trainer.num_train_steps else None


def save_config(
    cfg: fdl.Buildable,
    workdir: pathlib.Path,
    config_json: str,
    config_text: str,
    config_diff: str,
    config_code: str | None = None,
) -> None:
    """Writes the run's experiment files into a run directory that is new or holds this experiment.

    config.txt is rewritten on every start; config_diff.txt, config_diff.py and config.svg only
    when the run directory is new, so resuming (perhaps from --fdl_config_file=RUN/config.json, which changes
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
    """
    experiment = experiment if experiment is not None else check(cfg)
    config_text = flatten.as_text(cfg)
    config_json = serialization.dump_json(cfg, indent=2)
    workdir = claim_workdir(workdir, config_json, start_elsewhere)
    save_config(cfg, workdir, config_json, config_text, config_diff, config_code)
    # Imported here: the loop pulls in TensorFlow (seqio), seconds that a bad config never pays.
    from llama_fdl.train import loop

    texts = {"config": config_text, "config_diff": config_diff}
    return loop.train(experiment, workdir, config_json, texts, options)
