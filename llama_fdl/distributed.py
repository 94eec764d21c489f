"""Multi-process start-up: `jax.distributed.initialize` from flags, the environment, or SLURM.

`initialize()` must run before anything touches a jax backend. Where it finds its settings, first
match wins:
  1. flags --coordinator_address, --num_processes, --process_id;
  2. the environment JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID;
  3. an srun step with more than one task (SLURM_STEP_NUM_TASKS > 1): jax reads SLURM's variables;
  4. --distributed=on with none of the above: jax detects the cluster (Cloud TPU pods, Open MPI).
Anything else is a single-process run and nothing is initialised. On CPU, several processes need
a collectives backend, so --cpu_collectives (gloo by default) is set before initialising.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax
from absl import flags

_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "auto: initialise jax.distributed when flags, JAX_* variables or SLURM ask for several "
    "processes; on: always (lets jax detect TPU pods); off: never.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator, the same for every process."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes the run has.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
_CPU_COLLECTIVES = flags.DEFINE_enum(
    "cpu_collectives", "gloo", ["gloo", "mpi"], "Collectives backend for several CPU processes."
)

SHUTDOWN_TIMEOUT_S = 60
"""How long an exiting process waits for the others at jax.distributed's shutdown barrier. When
one process fails, the others are stuck in collectives and never arrive; after this wait the
coordination service aborts them all, so a failed run ends in a minute instead of jax's five."""

_ENV = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `initialize` will do: `kwargs` for jax.distributed.initialize, or None for one process."""

    kwargs: dict | None
    source: str


def plan(
    mode: str,
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    env: Mapping[str, str],
) -> Plan:
    """Decides, without side effects, whether and how to initialise jax.distributed."""
    if mode == "off":
        return Plan(None, "--distributed=off")
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    source = "flags"
    if all(v is None for v in given.values()):
        given = {k: env.get(var) for k, var in _ENV.items()}
        source = "JAX_* environment variables"
    if any(v is not None for v in given.values()):
        return Plan(_explicit(given, source), source)
    # The tasks of this srun step, not of the job: the batch script itself is a one-task step.
    slurm_tasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    if slurm_tasks > 1 and "SLURM_PROCID" in env:
        return Plan({}, f"SLURM ({slurm_tasks} tasks)")
    if mode == "on":
        return Plan({}, "jax's cluster detection (--distributed=on)")
    return Plan(None, "single process")


def _explicit(given: dict, source: str) -> dict | None:
    """Checks a complete, consistent coordinator/num_processes/process_id triple."""
    missing = [k for k, v in given.items() if v is None]
    if missing:
        names = ", ".join(f"--{k}" if source == "flags" else _ENV[k] for k in missing)
        raise ValueError(f"A multi-process run from {source} also needs {names}; set all three or none.")
    num, index = int(given["num_processes"]), int(given["process_id"])
    if num < 1 or not 0 <= index < num:
        raise ValueError(f"process_id={index} must be in 0 .. num_processes - 1 = {num - 1}.")
    if num == 1:
        return None
    address = str(given["coordinator_address"])
    if ":" not in address:
        raise ValueError(f"coordinator_address={address!r} must be host:port, for example 127.0.0.1:12355.")
    return {"coordinator_address": address, "num_processes": num, "process_id": index}


def initialize() -> Plan:
    """Initialises jax.distributed as the flags and environment say; returns what it did."""
    decided = plan(
        _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, os.environ
    )
    if decided.kwargs is not None:
        # Harmless off CPU; on CPU, without it, collectives across processes fail at run time.
        jax.config.update("jax_cpu_collectives_implementation", _CPU_COLLECTIVES.value)
        jax.distributed.initialize(**decided.kwargs, shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    return decided
