"""All the benchmarks, one after the other, printed as the markdown of docs/PERFORMANCE.md.

`python -m benchmarks.run` (about 20 minutes on a 2-core CPU; `--quick` for fewer rounds). Like
the launcher, it first re-executes itself with glibc's huge-page malloc tunable
(llama_fdl/host_memory.py), so both frameworks run in the environment the launcher gives.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform

from llama_fdl import host_memory


def machine() -> str:
    """The machine, its load and the process environment, for the record."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {cpu}, {os.cpu_count()} cores, load average "
        f"{load}, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 steps instead of 9 of 3")
    parser.add_argument("--shapes", default="d128x2,small,58M,base")
    args = parser.parse_args(argv)
    from benchmarks import compile_time, data_rate, memory, step_vs_hf

    print(f"## Measured: {machine()}\n", flush=True)
    rounds, steps = (3, 2) if args.quick else (9, 3)  # HF's tokens/s swings by 30% here
    results = step_vs_hf.main(
        [f"--shapes={args.shapes}", "--dtypes=float32", f"--rounds={rounds}", f"--steps={steps}"]
    )
    step_vs_hf.main(["--shapes=small", "--dtypes=bfloat16", f"--rounds={rounds}", f"--steps={steps}"])
    print("\n### Compile time against depth\n", flush=True)
    compile_time.main(["--shape=small", "--depths=2,8,32"])
    print("\n### Peak resident memory\n", flush=True)
    memory.main(["--shapes=small,58M"])
    print("\n### Data pipeline\n", flush=True)
    rate = data_rate.main([])
    small = next((r for r in results if r.shape == "small"), None)
    if small:
        tps = small.fdl_tokens_per_s
        print(f"the train step at small's shape: {tps:,.0f} tokens/s ({rate / tps:.0f}x less)")
    print(f"\nEnd: {machine()}")


if __name__ == "__main__":
    host_memory.reexec_with_huge_pages()
    main()
