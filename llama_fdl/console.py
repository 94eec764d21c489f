"""What a launch prints: the run's own lines, not its libraries' start-up chatter.

A normal run prints its phases, its steps and its evaluations. The libraries under it say much
more: absl and Orbax log every step of their set-up at INFO, TensorFlow's shared libraries write a
C++ banner (with a `failed call to cuInit` that reads like a failure on a CPU machine) straight
to file descriptor 2, tensorboardX warns about every NaN it is given, and TensorBoard's event
loader announces the events it purges after a resume. All of it stays available: absl's
`--verbosity=0` (or any `--verbosity`) or the environment variable `LLAMA_FDL_VERBOSE=1` keeps
every library's output as it is.

Start-up phases that take more than a second print one line each (`startup.phase`), and the
first step prints how long the launch took to reach it, counted from when the process started
(the same process through the launcher's huge-page re-exec, which keeps its start time).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Iterator

VERBOSE_ENV = "LLAMA_FDL_VERBOSE"
"""Set to 1 to keep every library's console output (as absl's --verbosity does)."""

SLOW_PHASE_S = 1.0
"""A start-up phase that takes longer than this gets a line of its own."""

# Python loggers whose warnings a normal run does not need: tensorboardX's "NaN or Inf found in
# input tensor" (a NaN is already reported by the loop, once, in words) and TensorBoard's
# "Purging expired events" (a resumed run asks for exactly that purge).
_CHATTY_LOGGERS = ("tensorboardX.x2num", "tensorboard")

_IMPORTED_AT = time.monotonic()


def verbose() -> bool:
    """True when the user asked for every library's output (--verbosity or LLAMA_FDL_VERBOSE)."""
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return True
    from absl import flags

    return flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present


def quiet_libraries() -> None:
    """Libraries log warnings and errors only; nothing changes under `verbose()`."""
    if verbose():
        return
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # A failed background save (a full disk) leaves one "Task exception was never retrieved"
    # traceback per array in Orbax's event loop, logged by asyncio as the futures are collected,
    # often after the one-line error that already says what failed (llama_fdl.train.checkpoint).
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def silence_stderr_from_here() -> None:
    """For a process about to exit on a one-line error: drop what exiting writes to stderr, so
    that the error stays its last line (a failed background save, on a full disk, leaves Orbax's
    writer threads running, and the interpreter's shutdown cuts them off with "Exception ignored
    ... sys.meta_path is None" tracebacks). It redirects the process's file descriptor 2, so only
    a command's entry point (`llama_fdl.commands.run`) calls it. Nothing is dropped under
    `verbose()`."""
    if verbose():
        return
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 in a temporary file for the block: for C++ libraries that write there
    directly (TensorFlow's and Gloo's start-up lines, tensorflow_text's SentencePiece notices),
    before or outside any logging a setting reaches.

    What was captured is dropped, unless the block raises something other than a ValueError: then
    it is written out, since it may say what went wrong (a ValueError is a one-line error for a
    person, which stands alone). With --verbosity or LLAMA_FDL_VERBOSE nothing is captured.
    """
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    captured = tempfile.TemporaryFile()
    os.dup2(captured.fileno(), 2)
    replay = False
    try:
        yield
    except ValueError:
        raise
    except BaseException:
        replay = True
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if replay:
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            sys.stderr.flush()
        captured.close()


def seconds_since_launch() -> float:
    """Seconds since this process started (Linux: from /proc, which an exec does not reset)."""
    try:
        fields = pathlib.Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22 of proc(5), counted from the ")" ending field 2
        uptime_s = float(pathlib.Path("/proc/uptime").read_text().split()[0])
        return uptime_s - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED_AT


class Startup:
    """One line for each slow start-up phase, and one when the first step is done."""

    def __init__(self, say=print):
        self._say = say
        self._first_step_told = False

    @contextlib.contextmanager
    def phase(self, what: str) -> Iterator[None]:
        """Prints `what: 2.3 s` after the block, if it took longer than SLOW_PHASE_S."""
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        if seconds > SLOW_PHASE_S:
            self._say(f"{what}: {seconds:.1f} s")

    def first_step_done(self) -> None:
        """Prints the time from the launch to the end of the first step, once."""
        if not self._first_step_told:
            self._first_step_told = True
            self._say(f"First step done {seconds_since_launch():.1f} s after the launch.")
