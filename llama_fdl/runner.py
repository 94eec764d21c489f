"""Runs a Fiddle experiment graph in a run directory: checks, saves the config, builds, trains.

This is where the graph meets the run directory, so it is one of the places Fiddle lives.
"""

from __future__ import annotations

import difflib
import pathlib

import fiddle as fdl
import jax
from fiddle import printing
from fiddle.experimental import serialization

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


def check_names(fdl_config: str | None, fiddlers: list[str], library) -> None:
    """Refuses an unknown experiment or fiddler of `library`, listing the known ones nearest first."""
    prefix = library.__name__ + "."

    def check(expression: str, known: tuple[str, ...], kind: str) -> None:
        name = expression.split("(")[0]
        if "." in name and not name.startswith(prefix):
            return  # a fully qualified name from another module; Fiddle imports it
        short = name.removeprefix(prefix)
        if short not in known:
            ranked = sorted(known, key=lambda k: -difflib.SequenceMatcher(None, short, k).ratio())
            raise RunError(f"Unknown {kind} {name!r}; available: {', '.join(ranked)}.")

    if fdl_config:
        check(fdl_config, library.EXPERIMENTS, "experiment")
    for fiddler in fiddlers:
        check(fiddler, library.FIDDLERS, "fiddler")


def one_line(error: BaseException) -> str:
    """The first line of an error's message; the full text is for --traceback."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def flatten(cfg: fdl.Buildable) -> str:
    """One `path = value` line per setting; unset fields show their defaults."""
    return printing.as_str_flattened(cfg, include_types=False)


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


def save_config(workdir: pathlib.Path, config_json: str, config_text: str) -> None:
    """Writes config.json (once) and config.txt into the run directory."""
    path = workdir / "config.json"
    if jax.process_index() != 0:
        return  # one writer: processes share the run directory and its temp names
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
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
) -> dict[str, float]:
    """Saves the graph, builds it and trains; returns the final eval metrics."""
    # Build and validate before touching the run directory, so a bad config leaves nothing behind.
    experiment = fdl.build(cfg)
    experiment.validate()
    config_text = flatten(cfg)
    config_json = serialization.dump_json(cfg, indent=2)
    workdir = claim_workdir(workdir, config_json, start_elsewhere)
    save_config(workdir, config_json, config_text)
    return loop.train(experiment, workdir, config_json, {"config": config_text}, options)
