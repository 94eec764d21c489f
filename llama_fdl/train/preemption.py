"""SIGTERM/SIGINT become a request to checkpoint and stop, agreed on by every process.

Cluster schedulers send SIGTERM before they reclaim a machine; a person presses Ctrl-C. Either
way the loop finishes the step in flight, saves, and exits cleanly, and the same command resumes.

A signal reaches each process on its own, possibly a moment apart, and a process that stops to
save while another dispatches one more step leaves both waiting in different collectives. So
no process acts on its own signal: each feeds the signal it has seen (0 for none) into every
train step as one number per device (`StopRequest.flags`), the step returns their maximum as a
metric, and every process reads that metric for step N at the same point of the loop. All of
them therefore learn of the stop at the same step and save that step together, once.

Why not JAX's preemption sync point (`multihost_utils.reached_preemption_sync_point`, which
Orbax's `CheckpointManager.reached_preemption` wraps): it exists only after
`jax.distributed.initialize`, so a single-process run would need a second mechanism; it reacts
only to the SIGTERM its own C++ handler catches, not to Ctrl-C; and Python's handler for SIGTERM,
needed for the single-process case, replaces that C++ handler. The maximum inside the step is one
mechanism for all cases, and costs one scalar reduction in a step that already reduces every
gradient (`benchmarks/stop_agreement.py` measures it against a step without it).
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class StopRequest:
    """Records the first SIGTERM/SIGINT while installed; a second SIGINT interrupts as usual."""

    def __init__(self):
        self.signal_number = 0
        """The first stop signal this process received, 0 for none."""
        self._previous: dict[int, object] = {}
        self._flags: dict[tuple[int, jax.sharding.Sharding], jax.Array] = {}

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
        if self.signal_number and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = self.signal_number or signum

    def flags(self, sharding: jax.sharding.NamedSharding) -> jax.Array:
        """This process's signal number once per device of the mesh: an int32 [devices] array.

        `sharding` splits a [devices] array one element per device (see `flag_sharding`). Built
        once per signal value and reused, so a step without a signal moves nothing new.
        """
        key = (self.signal_number, sharding)
        if key not in self._flags:
            local = np.full(len(sharding.addressable_devices), self.signal_number, np.int32)
            self._flags[key] = jax.make_array_from_process_local_data(sharding, local)
        return self._flags[key]


def flag_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """One element per device: a [devices] array split over every axis of the mesh."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))


def signal_name(number: int) -> str:
    return signal.Signals(number).name
