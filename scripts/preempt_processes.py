"""Preempt a multi-process run as a scheduler does, and say how each process ended.

    .venv/bin/python scripts/preempt_processes.py --num_processes=2 --gap_s=1

Starts `experiments.tiny` as N processes on 127.0.0.1 (the command lines of launch/local.py),
waits until process 0 trains, sends SIGTERM to the last process and, --gap_s seconds later, to
the others, and prints for each process its exit status and the seconds from the first SIGTERM to
its exit, the checkpoints in the run directory, and what each process said about the stop. Exits
1 unless every process exited 0 having saved one checkpoint, at one step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "launch"))

import local  # noqa: E402  (launch/local.py: its command lines, so both start processes alike)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--gap_s", type=float, default=1.0, help="Seconds between the SIGTERMs.")
    parser.add_argument("--workdir", type=pathlib.Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="preempt_")) / "tiny"
    launch_args = [
        "--fdl_config=experiments.tiny",
        f"--workdir={workdir}",
        "--fdl.trainer.num_train_steps=100000",
        "--fdl.trainer.checkpoint.every_steps=100000",
        "--fdl.trainer.log_every=1",
    ]
    workdir.parent.mkdir(parents=True, exist_ok=True)
    logs = [open(workdir.parent / f"process_{i}.out", "w+") for i in range(args.num_processes)]
    procs = [
        subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        for command, log in zip(
            local.commands(args.num_processes, local.free_port(), launch_args), logs, strict=True
        )
    ]
    while not re.search(r"step +\d+/", _read(logs[0])) and procs[0].poll() is None:
        time.sleep(0.1)
    first = time.monotonic()
    order = list(reversed(range(args.num_processes)))
    sent = {}
    for n, i in enumerate(order):
        if n:
            time.sleep(args.gap_s)
        with contextlib.suppress(ProcessLookupError):
            os.kill(procs[i].pid, signal.SIGTERM)
            sent[i] = time.monotonic() - first
    exited = {}
    while len(exited) < len(procs) and time.monotonic() - first < 600:
        for i, p in enumerate(procs):
            if i not in exited and p.poll() is not None:
                exited[i] = time.monotonic() - first
        time.sleep(0.05)
    for p in procs:  # still running after 10 minutes: stuck in a collective
        if p.poll() is None:
            p.kill()
            p.wait()
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    print(f"run directory: {workdir}")
    for i, p in enumerate(procs):
        said = [line for line in _read(logs[i]).splitlines() if "saved the checkpoint" in line]
        signal_at = f"SIGTERM at +{sent[i]:.1f} s" if i in sent else "no SIGTERM (it had exited)"
        wrote = [
            s for s in steps if (workdir / "checkpoints" / str(s) / "data" / f"process_{i}.index").exists()
        ]
        print(
            f"process {i}: {signal_at}, exit status {p.returncode}, gone at "
            f"+{exited.get(i, float('nan')):.1f} s; its data-iterator state is in checkpoints {wrote}"
            + (f"; it printed: {said[-1]}" if said else "")
        )
    print(f"checkpoints in {workdir / 'checkpoints'}: {steps}")
    ok = all(p.returncode == 0 for p in procs) and len(steps) == 1
    sys.exit(0 if ok else 1)


def _read(log) -> str:
    log.flush()
    return pathlib.Path(log.name).read_text()


if __name__ == "__main__":
    main()
