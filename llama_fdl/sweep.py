"""Sweeps: named variations of one experiment, each run into its own directory WORKDIR/<point>.

A sweep is a function of the experiment library (experiments/sweeps.py) returning `Point`s:

    def lr_small() -> list[Point]:
        return [Point(f"lr_{lr:g}", {"optimizer.peak_learning_rate": lr}) for lr in (1e-3, 3e-3, 1e-2)]

A point's fiddlers and values join the command line's overrides in their documented order: its
fiddlers after the command line's fiddlers, its values after the command line's values (so a
point's value wins over a sweep-wide one). Every point is applied, type-checked, built and
initialised by shape (`runner.check`) before the first one starts, so a sweep over something that
is not a setting, two points with one name, or two points that are the same experiment are refused
in one line with nothing run. A point is finished when its directory holds `result.json` next to
the point's own config.json; running the sweep again skips finished points and resumes the others
from their checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import pathlib
import re
import statistics
import time
import types
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import fiddle as fdl
from fiddle.experimental import serialization

from llama_fdl import runner
from llama_fdl.cli import ConfigError, diff, flatten, library, overrides
from llama_fdl.train.config import Experiment

if TYPE_CHECKING:
    from llama_fdl.train import loop
    from llama_fdl.train.preemption import StopRequest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")
RESULT = "result.json"
"""Written into a point's run directory when the point has trained to its last step."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One point of a sweep: its name and what it changes."""

    name: str
    """Names the point's run directory (WORKDIR/<name>) and its row in summary.md."""
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """PATH -> value, set like --fdl.PATH=VALUE but given as a Python value (a config is allowed)."""
    fiddlers: Sequence[Callable] = ()
    """Applied like --fiddler: each changes the graph in place or returns a new one."""

    def describe(self) -> str:
        """`fiddler bf16, optimizer.peak_learning_rate=0.001`: the point's overrides, one line."""
        parts = [f"fiddler {_callable_name(f)}" for f in self.fiddlers]
        parts += [f"{path}={flatten.format_value(v)}" for path, v in self.values.items()]
        return ", ".join(parts) or "(no changes)"

    def overrides(self) -> list[overrides.Override]:
        label = f"sweep point {self.name}"
        fiddlers = [overrides.Override("fiddler", _callable_name(f), label, f) for f in self.fiddlers]
        return fiddlers + [overrides.Override("set", p, label, v) for p, v in self.values.items()]


@dataclasses.dataclass
class Planned:
    """A point after its overrides, checked and built, with the files its run directory gets."""

    point: Point
    cfg: fdl.Buildable
    experiment: Experiment
    config_json: str
    config_diff: str
    config_code: str
    hparams: dict[str, bool | int | float | str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Result:
    """How a finished point ended; saved as WORKDIR/<point>/result.json."""

    eval_loss: float
    """The eval loss at the last step (nats per token, on the fixed validation batches)."""
    tokens_per_sec: float | None
    """Median of the logged training windows' perf/tokens_per_sec."""
    wall_time_s: float
    """Seconds from the start of the attempt that finished the point to its end."""
    resumed_from_step: int | None = None
    """The checkpoint that attempt started from, if it resumed."""


def points(expression: str, sweeps: types.ModuleType) -> list[Point]:
    """The points of the sweep `expression` names (`lr_small`, `experiments.sweeps.lr_small`, ...)."""
    name, args, kwargs = library.parse_call(expression, "sweep")
    fn = library.lookup(name, sweeps, sweeps.SWEEPS, "sweep")
    library.bind(fn, args, kwargs, f"--sweep={expression}")
    found = fn(*args, **kwargs)
    if not isinstance(found, (list, tuple)) or not all(isinstance(p, Point) for p in found):
        raise ConfigError(
            f"--sweep={expression} returned {type(found).__name__}; a sweep returns a list of "
            "llama_fdl.sweep.Point."
        )
    if not found:
        raise ConfigError(f"--sweep={expression} has no points; a sweep returns at least one Point.")
    seen: set[str] = set()
    for point in found:
        if not _NAME.fullmatch(point.name):
            raise ConfigError(
                f"--sweep={expression}: the point name {point.name!r} cannot name a directory; use "
                "letters, digits and _ . = + - (starting with a letter or digit)."
            )
        if point.name in seen:
            raise ConfigError(
                f"--sweep={expression} has two points named {point.name!r}; each point needs its own "
                "name, which names its run directory."
            )
        seen.add(point.name)
    return list(found)


def plan(
    base: fdl.Buildable,
    todo: Sequence[overrides.Override],
    sweep_points: Sequence[Point],
    lib: types.ModuleType,
    against: str,
    base_flag: str,
) -> list[Planned]:
    """Applies the command line's overrides and each point's to copies of `base`; checks each.

    Args:
      base: the base graph (--fdl_config or --fdl_config_file); not changed.
      todo: the command line's overrides, applied to every point.
      sweep_points: the sweep's points.
      lib: the experiment library, for fiddlers named on the command line.
      against: what config_diff.txt says the points changed against.
      base_flag: the flag naming the base, for config_diff.py's docstring.
    """
    planned = []
    for point in sweep_points:
        applied = overrides.apply(copy.deepcopy(base), [*todo, *point.overrides()], lib)
        try:
            experiment = runner.check(applied.cfg)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"sweep point {point.name}: {runner.one_line(e)}") from e
        planned.append(
            Planned(
                point,
                applied.cfg,
                experiment,
                serialization.dump_json(applied.cfg, indent=2),
                diff.as_text(applied.base, applied.cfg, applied.sources, against=against),
                diff.as_code(applied.base, applied.cfg, base_flag),
            )
        )
    by_json: dict[str, str] = {}
    for p in planned:
        if p.config_json in by_json:
            raise ConfigError(
                f"Sweep points {by_json[p.config_json]} and {p.point.name} give the same experiment "
                "(a command-line value may override what they vary); make each point differ."
            )
        by_json[p.config_json] = p.point.name
    _add_hparams(planned)
    return planned


def _add_hparams(planned: list[Planned]) -> None:
    """The HParams tab's extra columns: the point's name and every value that differs between points."""
    values = [flatten.values(p.cfg) for p in planned]
    varied = [path for path in values[0] if any(v.get(path) != values[0][path] for v in values[1:])]
    for p, flat in zip(planned, values, strict=True):
        p.hparams = {"sweep/point": p.point.name}
        for path in varied:
            value = flat.get(path)
            scalar = isinstance(value, (bool, int, float, str))
            p.hparams[path] = value if scalar else flatten.format_value(value)


def check_workdirs(planned: Sequence[Planned], workdir: pathlib.Path) -> None:
    """Refuses, before anything runs, a point directory that holds a different experiment.

    A point saved with another layout only (mesh sizes, remat, microbatches) is the same
    experiment: it resumes in place, as a single run does (llama_fdl.cli.identity).
    """
    for p in planned:
        saved = workdir / p.point.name / "config.json"
        if runner.layout_changes(saved, p.cfg, p.config_json) is None:
            raise runner.RunError(
                f"{saved.parent} holds a different experiment than sweep point {p.point.name} (its "
                "config.json differs in more than the layout, perhaps from other command-line "
                "values); pass another --workdir."
            )


def finished(p: Planned, workdir: pathlib.Path) -> Result | None:
    """The saved result of a point that trained to its end in `workdir`, else None."""
    run_dir = workdir / p.point.name
    result, saved = run_dir / RESULT, run_dir / "config.json"
    if not (result.exists() and saved.exists()):
        return None
    if runner.layout_changes(saved, p.cfg, p.config_json) is None:
        return None
    return Result(**json.loads(result.read_text()))


def run_point(
    p: Planned, workdir: pathlib.Path, options: loop.RunOptions, stop: StopRequest | None = None
) -> Result | None:
    """Trains (or resumes) one point in this process; returns its result, or None if it stopped early.

    Like any run, the point locks its directory while it trains (llama_fdl.runner.claim_workdir).

    Args:
      p: the planned point.
      workdir: the sweep's directory; the point runs in WORKDIR/<point>.
      options: the loop's RunOptions; the point's HParams columns are added to them.
      stop: where the command records SIGTERM/SIGINT for the whole sweep (see llama_fdl.train.loop).
    """
    run_dir = workdir / p.point.name
    resumed = last_checkpoint(run_dir)
    options = dataclasses.replace(options, hparams={**options.hparams, **p.hparams})
    start = time.perf_counter()
    final = runner.run(
        p.cfg,
        run_dir,
        options,
        config_diff=p.config_diff,
        config_code=p.config_code,
        experiment=p.experiment,
        stop=stop,
    )
    wall = time.perf_counter() - start
    if "eval/loss" not in final or last_checkpoint(run_dir) != p.experiment.trainer.num_train_steps:
        return None  # stopped by a signal: the checkpoint it saved is resumed next time
    result = Result(final["eval/loss"], median_tokens_per_sec(run_dir), wall, resumed)
    (run_dir / RESULT).write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    return result


def last_checkpoint(run_dir: pathlib.Path) -> int | None:
    """The newest complete checkpoint's step (Orbax renames a step's directory when it is done)."""
    steps = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps, default=None)


def median_tokens_per_sec(run_dir: pathlib.Path) -> float | None:
    """The median of perf/tokens_per_sec over the run's logged windows, read back from TensorBoard."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    if "perf/tokens_per_sec" not in acc.Tags()["scalars"]:
        return None
    return statistics.median(e.value for e in acc.Scalars("perf/tokens_per_sec"))


def _callable_name(fn: Callable) -> str:
    if isinstance(fn, functools.partial):
        args = [repr(a) for a in fn.args] + [f"{k}={v!r}" for k, v in fn.keywords.items()]
        return f"{_callable_name(fn.func)}({', '.join(args)})"
    return getattr(fn, "__name__", repr(fn))


def summary(
    planned: Sequence[Planned], outcomes: Mapping[str, Result | str], title: str, command: str
) -> str:
    """summary.md: one row per point, the best (lowest final eval loss) in bold.

    Args:
      planned: the points, in the sweep's order.
      outcomes: point name -> its Result, or why it has none (failed, stopped).
      title: what the sweep is (`experiments.sweeps.lr_small over --fdl_config=experiments.small`).
      command: the command line that ran it.
    """
    done = {n: r for n, r in outcomes.items() if isinstance(r, Result)}
    best = min(done, key=lambda n: done[n].eval_loss) if done else None
    lines = [
        f"# Sweep {title}",
        "",
        f"`{command}`",
        "",
        "| point | overrides | final eval loss | tokens/s | wall time |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for p in planned:
        name, outcome = p.point.name, outcomes.get(p.point.name, "not run")
        cells = [f"**{name}** (best)" if name == best else name, f"`{p.point.describe()}`"]
        if isinstance(outcome, Result):
            loss = f"{outcome.eval_loss:.4f}"
            speed = f"{outcome.tokens_per_sec:,.0f}" if outcome.tokens_per_sec is not None else "-"
            wall = _duration(outcome.wall_time_s)
            if outcome.resumed_from_step is not None:
                wall += f" (resumed at step {outcome.resumed_from_step})"
            cells += [f"**{loss}**" if name == best else loss, speed, wall]
        else:
            cells += [outcome, "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Final eval loss: nats per token on the fixed validation batches at the last step (lower is "
        "better; the best in bold). tokens/s: median of the logged training windows. Wall time: the "
        "attempt that finished the point, start-up, compilation and evaluations included.",
    ]
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
