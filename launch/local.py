"""Run N processes of launch/launch.py on this machine, as one multi-process jax job.

    python launch/local.py --num_processes=2 -- --fdl_config=experiments.tiny --workdir=/tmp/tiny2

Everything after `--` goes to every copy of launch.py, which also gets --coordinator_address
(127.0.0.1 and a free port), --num_processes and --process_id. Process 0's output streams here;
the others' goes to process_<i>.log in a temporary directory (printed at the start), moved into
WORKDIR when the run has one at the end, so a launch the run refuses leaves nothing in WORKDIR.
If any process fails, the rest are stopped and this exits with that process's status, after
printing the end of its log. --cpu_devices_per_process=K fakes K CPU devices in each process (for trying
meshes on a laptop); on GPUs leave it unset. Gloo's `[Gloo] Rank i is connected to ...` lines
(CPU collectives, printed once per process) are left out of process 0's stream unless
LLAMA_FDL_VERBOSE=1; the other processes' logs keep them.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

_LAUNCH = pathlib.Path(__file__).resolve().with_name("launch.py")
_REPO = _LAUNCH.parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from llama_fdl import console  # noqa: E402  (stdlib only, as run_lock)
from llama_fdl.run_lock import LOCK_NAME  # noqa: E402  (stdlib only: keeps this launcher light)

GLOO_CHATTER = "[Gloo] "
"""How Gloo's connection lines start; process 0's stream leaves them out (see the docstring)."""


def free_port() -> int:
    """A port nothing listens on now (the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(num_processes: int, port: int, launch_args: list[str]) -> list[list[str]]:
    """One launch.py command line per process."""
    common = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}"]
    return [
        [sys.executable, str(_LAUNCH), *launch_args, *common, f"--process_id={i}"]
        for i in range(num_processes)
    ]


def _workdir(launch_args: list[str]) -> pathlib.Path | None:
    for arg in launch_args:
        if arg.startswith("--workdir="):
            return pathlib.Path(arg.split("=", 1)[1])
    return None


def _copy_lines(source, sink, drop: str | None) -> None:
    """Copies a child's stream to ours line by line, leaving out lines that start with `drop`."""
    for line in source:
        if drop is None or not line.startswith(drop):
            sink.write(line)
            sink.flush()


def _start_streamed(
    command: list[str], env: dict[str, str]
) -> tuple[subprocess.Popen, list[threading.Thread]]:
    """Process 0, its stdout and stderr copied to ours (without Gloo's chatter unless verbose)."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    drop = None if console.verbose() else GLOO_CHATTER
    threads = [
        threading.Thread(target=_copy_lines, args=(proc.stdout, sys.stdout, drop), daemon=True),
        threading.Thread(target=_copy_lines, args=(proc.stderr, sys.stderr, drop), daemon=True),
    ]
    for t in threads:
        t.start()
    return proc, threads


def run(num_processes: int, launch_args: list[str], cpu_devices_per_process: int | None = None) -> int:
    """Starts the processes, waits for all of them; returns 0 or the first failure's status."""
    env = dict(os.environ)
    if cpu_devices_per_process:
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={cpu_devices_per_process}"
        ).strip()
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="llama_fdl_local_"))
    procs, logs, copiers = [], {}, []
    for i, command in enumerate(commands(num_processes, free_port(), launch_args)):
        if i == 0:
            proc, copiers = _start_streamed(command, env)
            procs.append(proc)
        else:
            logs[i] = log_dir / f"process_{i}.log"
            with open(logs[i], "w") as log:
                procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    if logs:
        print(f"output of processes 1..{num_processes - 1}: {log_dir}/process_<i>.log", flush=True)
    status = _wait(procs, logs)
    for t in copiers:
        t.join()  # process 0 has exited: its last lines are on their way
    _keep_logs(logs, _workdir(launch_args))
    return status


def _keep_logs(logs: dict[int, pathlib.Path], workdir: pathlib.Path | None) -> None:
    """Moves the logs into the run directory if the run made one and no other run holds it now."""
    if (
        not logs
        or workdir is None
        or not (workdir / "config.json").exists()
        or (workdir / LOCK_NAME).exists()
    ):
        return
    for path in logs.values():
        shutil.move(path, workdir / path.name)
    shutil.rmtree(next(iter(logs.values())).parent, ignore_errors=True)
    print(f"output of processes 1..{len(logs)}: {workdir}/process_<i>.log", flush=True)


def _wait(procs: list[subprocess.Popen], logs: dict[int, pathlib.Path]) -> int:
    """Waits for every process; returns 0 or the first failure's status, stopping the rest."""
    status = 0
    while any(p.poll() is None for p in procs) and not status:
        time.sleep(0.2)
        failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
        if failed:
            index, status = failed[0]
            # The others would wait for the dead one in their next collective until timing out.
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                p.wait()
            if index in logs:
                tail = logs[index].read_text().splitlines()[-20:]
                print(f"process {index} failed ({status}); end of {logs[index]}:", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)
            else:
                print(f"process {index} failed ({status}).", file=sys.stderr)
    if not status:
        status = next((p.returncode for p in procs if p.returncode), 0)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_processes", type=int, default=2, help="How many processes to start.")
    parser.add_argument(
        "--cpu_devices_per_process", type=int, default=None, help="Fake this many CPU devices per process."
    )
    args, rest = parser.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.num_processes < 1:
        parser.error(f"--num_processes={args.num_processes} must be at least 1.")
    sys.exit(run(args.num_processes, rest, args.cpu_devices_per_process))


if __name__ == "__main__":
    main()
