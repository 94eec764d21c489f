"""One launch at a time per run directory: RUN/lock, held with flock and naming its holder.

Two launches of the same command on one run directory would interleave their checkpoints and
TensorBoard events. The first takes an exclusive `fcntl.flock` on RUN/lock and writes who it is
(pid, host, start time) into it; a second one finds the lock taken and is refused, naming that
holder. The kernel drops a flock when its process dies, however it dies, so a killed run never
leaves the directory stuck: the next launch gets the lock, finds the dead holder's name still in
the file, and says that it took over. A run that ends cleanly removes the file.

In a multi-process run only process 0 takes the lock (the others share its directory).
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import os
import pathlib
import socket
import time

LOCK_NAME = "lock"


class RunDirectoryBusy(RuntimeError):
    """Another live process holds the run directory."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run directory."""

    pid: int
    host: str
    started: str
    """Local time the holder took the lock, `2026-11-28 10:02:03`."""

    def __str__(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started}"

    @classmethod
    def this_process(cls) -> Holder:
        started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        return cls(os.getpid(), socket.gethostname(), started)


class RunLock:
    """The lock on one run directory; `acquire` it before writing there, `release` when done."""

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.path = workdir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> Holder | None:
        """Takes the lock; returns the dead holder it took over from, if any.

        Raises RunDirectoryBusy, naming the holder, when a live process holds it.
        """
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = read_holder(self.path, wait_s=2.0)
                who = str(holder) if holder else "another process"
                raise RunDirectoryBusy(
                    f"{self.workdir} is in use by {who} (it holds {self.path}); wait for that run "
                    f"to end or stop it, or pass another --workdir."
                ) from None
            # A holder that ended cleanly unlinks the file; if that happened between our open and
            # our flock, we hold a lock on a name nobody sees: start again on a fresh file.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        previous = read_holder(self.path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dataclasses.asdict(Holder.this_process())).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return previous

    def release(self) -> None:
        """Removes the lock file and lets go of the lock (unlink first: see `acquire`)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def read_holder(path: pathlib.Path, wait_s: float = 0.0) -> Holder | None:
    """The holder written in a lock file; waits up to `wait_s` for one being written right now."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return Holder(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


def _same_file(fd: int, path: pathlib.Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
