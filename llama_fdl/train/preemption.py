"""SIGTERM/SIGINT become a request to checkpoint and stop, instead of an abrupt death.

Cluster schedulers send SIGTERM before they reclaim a machine; a person presses Ctrl-C. Either
way the loop finishes the step in flight, saves, and exits cleanly, and the same command resumes.
"""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """Records the first SIGTERM/SIGINT while installed; a second SIGINT interrupts as usual."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        # Signal handlers can only be installed from the main thread (not in a notebook worker).
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None
