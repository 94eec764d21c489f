"""Where metrics go: TensorBoard event files (tensorboardX) and a console line.

Only process 0 writes; the others get a writer that drops everything.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

import jax
import numpy as np


class MetricWriter:
    """Scalars and text to TensorBoard under the run directory."""

    def __init__(self, logdir: str, purge_step: int | None = None):
        """`purge_step`: where a resumed run restarts; TensorBoard then drops every event the
        killed run logged at that step or later (tensorboardX writes the marker it reads)."""
        self._writer = None
        if jax.process_index() == 0:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=logdir, flush_secs=10, purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            self._writer.add_scalar(name, float(value), global_step=step)

    def text(self, step: int, name: str, body: str) -> None:
        if self._writer is not None:
            # Markdown code block keeps the config's alignment in TensorBoard's text tab.
            self._writer.add_text(name, "```\n" + body + "\n```", global_step=step)

    def markdown(self, step: int, name: str, body: str) -> None:
        """Text that TensorBoard renders as markdown (headings, code blocks)."""
        if self._writer is not None:
            self._writer.add_text(name, body, global_step=step)

    def hparams(self, hparams: dict[str, object], final_metrics: dict[str, float], step: int) -> None:
        """One row of TensorBoard's HParams tab: the settings and how the run ended (at `step`).

        Written into the run's own event file, as TensorBoard's hparams API does, rather than
        by tensorboardX's `add_hparams`, whose sub-directory TensorBoard lists as a second run.
        """
        if self._writer is not None:
            from tensorboardX.summary import hparams as hparams_summaries

            self.scalars(step, final_metrics)  # first: it opens the event file if nothing else has
            for summary in hparams_summaries(hparams, final_metrics):
                self._writer.file_writer.add_summary(summary)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    @contextlib.contextmanager
    def closed_on_exit(self) -> Iterator[MetricWriter]:
        """This writer, closed (flushed) when the block ends, however it ends. When the block
        raises, a failure to close (the event file's last events not written: a full disk) is
        a warning, not an error raised over the one that ended the block, which says what went
        wrong in the first place."""
        try:
            yield self
        except BaseException:
            try:
                self.close()
            except OSError as e:
                logging.getLogger(__name__).warning("TensorBoard's event file was not closed cleanly: %s", e)
            raise
        self.close()


class Averager:
    """Means of per-step scalars since the last `take()`."""

    def __init__(self):
        self._sums: dict[str, float] = {}
        self._count = 0

    def add(self, values: dict[str, np.ndarray]) -> None:
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._count += 1

    def take(self) -> dict[str, float]:
        means = {k: v / max(self._count, 1) for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        return means


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def console(
    step: int, total: int, loss: float, tokens_per_sec: float | None, seconds_left: float | None
) -> None:
    """`step 100/2000 | loss 2.3108 | 13,379 tok/s | left 9m51s | 10:07:43`; - where unknown."""
    if jax.process_index() != 0:
        return
    speed = f"{tokens_per_sec:,.0f} tok/s" if tokens_per_sec is not None else "- tok/s"
    left = format_duration(seconds_left) if seconds_left is not None else "-"
    print(
        f"step {step:>6}/{total} | loss {loss:.4f} | {speed} | left {left} | {time.strftime('%H:%M:%S')}",
        file=sys.stdout,
        flush=True,
    )
