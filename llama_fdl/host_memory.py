"""Huge pages for the host's malloc, which XLA:CPU's per-step buffers need to run at full speed.

XLA:CPU allocates a step's temporary buffers afresh at every step (390 MiB for experiments.small)
and glibc serves blocks that large with mmap and unmaps them when freed, so every step faults
all of those pages in again, 4 KiB at a time: about 100,000 page faults per step of the demo,
a quarter of its CPU time spent in the kernel. glibc's tunable `glibc.malloc.hugetlb=1` makes
malloc ask for transparent huge pages (2 MiB) on such mappings, and the faults drop to a few
hundred (docs/PERFORMANCE.md has the measurements). glibc reads tunables only when a process
starts, so the launcher and the benchmarks re-execute themselves once with it set.

It does nothing where the kernel's transparent huge pages are off, and a user's own
`glibc.malloc.hugetlb` setting in GLIBC_TUNABLES (for example `=0`, to opt out) is kept.
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def environment_with_huge_pages(environ: Mapping[str, str]) -> dict[str, str] | None:
    """`environ` plus the tunable, or None when there is nothing to add.

    Nothing to add: not Linux, transparent huge pages disabled (the setting reads `[never]`),
    or GLIBC_TUNABLES already names the tunable, whatever its value.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        if "[never]" in THP_SETTING.read_text():
            return None
    except OSError:
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, (tunables, f"{TUNABLE}=1")))}


def reexec_with_huge_pages() -> None:
    """Replaces this process by the same command with the tunable set, if it lacks it.

    Call it first thing, before anything worth keeping has happened: the process image is
    replaced (same pid, same arguments, same interpreter options).
    """
    environ = environment_with_huge_pages(os.environ)
    if environ is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, environ)
