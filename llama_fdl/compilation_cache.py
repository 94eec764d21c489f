"""JAX's persistent compilation cache, which the launcher turns on, and a watch on its hits.

With the cache on, every compiled program is also saved on disk, keyed by the program, the
devices, and the jax version and flags; a later process that compiles the same program loads it
instead. So the second launch of an experiment (a resume, a replay, a rerun with another
--workdir) skips compiling its train step. The launcher's `--compilation_cache_dir` (default
`default_dir()`) chooses the directory and `--nocompilation_cache` turns the cache off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
from collections.abc import Iterator

import jax
from jax import monitoring

_HIT = "/jax/compilation_cache/cache_hits"
_SAVED = "/jax/compilation_cache/compile_time_saved_sec"


def default_dir() -> pathlib.Path:
    """$XDG_CACHE_HOME/llama_fdl/jax_compilation_cache, XDG_CACHE_HOME defaulting to ~/.cache."""
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root) / "llama_fdl" / "jax_compilation_cache"


def enable(directory: str | os.PathLike) -> None:
    """Saves every compiled program in `directory` and loads it from there when it is asked again.

    jax by default caches only programs that took a second or more to compile; here every one
    is kept, because the small experiments' steps compile in about a second and are exactly
    the ones launched again and again.
    """
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@dataclasses.dataclass
class Hits:
    """Programs loaded from the cache while a `watch()` was open, and the compile time saved."""

    count: int = 0
    saved_seconds: float = 0.0


@contextlib.contextmanager
def watch() -> Iterator[Hits]:
    """Counts the cache hits (and the compile seconds they saved) inside the `with` block."""
    hits = Hits()

    def on_event(event: str, **_) -> None:
        if event == _HIT:
            hits.count += 1

    def on_duration(event: str, seconds: float, **_) -> None:
        if event == _SAVED:
            hits.saved_seconds += seconds

    monitoring.register_event_listener(on_event)
    monitoring.register_event_duration_secs_listener(on_duration)
    try:
        yield hits
    finally:
        monitoring.unregister_event_listener(on_event)
        monitoring.unregister_event_duration_listener(on_duration)
