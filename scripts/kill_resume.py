"""Kill a run with SIGKILL at random moments, resume it each time, and compare with a clean run.

    .venv/bin/python scripts/kill_resume.py --kills=10

Trains `experiments.tiny` (longer, logging every step) once without interruption, then again in
another directory while killing it N times at random moments and restarting it with the same
command. Prints where each kill landed and whether every step's train loss and the final eval
loss equal the uninterrupted run's, bit for bit. Exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

from tensorboard.backend.event_processing import event_accumulator

REPO = pathlib.Path(__file__).resolve().parents[1]


def _command(workdir: pathlib.Path, steps: int) -> list[str]:
    return [
        sys.executable, str(REPO / "launch" / "launch.py"),
        "--fdl_config=experiments.tiny",
        f"--fdl.trainer.num_train_steps={steps}",
        "--fdl.trainer.log_every=1",
        f"--fdl.trainer.eval_every={steps}",
        "--fdl.trainer.checkpoint.every_steps=25",
        f"--workdir={workdir}",
    ]  # fmt: skip


def _losses(workdir: pathlib.Path) -> tuple[dict[int, float], float]:
    acc = event_accumulator.EventAccumulator(str(workdir), size_guidance={"scalars": 0})
    acc.Reload()
    train = {e.step: e.value for e in acc.Scalars("train/loss")}
    return train, acc.Scalars("eval/loss")[-1].value


def _latest(workdir: pathlib.Path) -> int:
    ckpt = workdir / "checkpoints"
    steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()] if ckpt.exists() else []
    return max(steps, default=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_wait_s", type=float, default=2.0, help="longest wait before a kill")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = pathlib.Path(tempfile.mkdtemp(prefix="kill_resume_"))

    print(f"uninterrupted run of {args.steps} steps ...", flush=True)
    subprocess.run(_command(root / "straight", args.steps), check=True, capture_output=True)

    workdir = root / "killed"
    kills = []
    while len(kills) < args.kills:
        proc = subprocess.Popen(
            _command(workdir, args.steps), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        out = ""
        while not re.search(r"step +\d+/", out) and proc.poll() is None:
            out += proc.stdout.readline()
        if proc.poll() is not None:
            print("the run finished before it could be killed; use more --steps", flush=True)
            break
        time.sleep(rng.uniform(0.0, args.max_wait_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(_latest(workdir))
        print(f"kill {len(kills)}: resumable from step {kills[-1]}", flush=True)
    subprocess.run(_command(workdir, args.steps), check=True, capture_output=True)

    want_train, want_eval = _losses(root / "straight")
    got_train, got_eval = _losses(workdir)
    same = [s for s in want_train if got_train.get(s) == want_train[s]]
    print(f"kills: {len(kills)} at resumable steps {kills}")
    print(f"train loss equal at {len(same)}/{len(want_train)} steps; final eval loss "
          f"{got_eval!r} vs {want_eval!r} uninterrupted")  # fmt: skip
    ok = len(same) == len(want_train) == args.steps and got_eval == want_eval
    print("RESULT: identical" if ok else "RESULT: DIFFERENT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
