"""A graph as `path = value` lines (config.txt, --fdl_help, TensorBoard) and as a path -> value map.

Each Buildable is listed once, under the first path that reaches it: the one ParallelConfig shared
by `model.config.parallel` and `mesh.parallel` is spelled out under the first and its other path
gets one line naming where it is, so a reader sees the sharing instead of two copies that look
independent. Unset arguments show the default the build will use, marked `# default`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import fiddle as fdl

_LITERALS = (type(None), bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class Unset:
    """A required argument that the graph leaves for the caller (e.g. the optimizer's step count)."""

    def __repr__(self) -> str:
        return "<unset>"


@dataclasses.dataclass(frozen=True)
class Node:
    """A Buildable seen as a value: which function or class it calls, and how."""

    kind: str
    name: str

    def __repr__(self) -> str:
        return f"{self.kind}[{self.name}]"


@dataclasses.dataclass(frozen=True)
class SameAs:
    """A second path to a Buildable listed under its first path."""

    path: str

    def __repr__(self) -> str:
        return f"<same as {self.path}>"


@dataclasses.dataclass(frozen=True)
class Setting:
    path: str
    value: Any
    is_default: bool = False
    tags: tuple[str, ...] = ()


def settings(cfg: fdl.Buildable) -> list[Setting]:
    """Every node and argument of `cfg` in signature order, each Buildable once."""
    out: list[Setting] = []
    _walk(cfg, "", {}, out, [])
    return out


def buildables(cfg: fdl.Buildable) -> list[tuple[str, fdl.Buildable]]:
    """(first path, Buildable) for every Buildable in `cfg`, each once, in the order of `settings`."""
    found: list[tuple[str, fdl.Buildable]] = []
    _walk(cfg, "", {}, [], found)
    return found


def values(cfg: fdl.Buildable) -> dict[str, Any]:
    """path -> value (the default where unset), for comparing two graphs."""
    return {s.path: s.value for s in settings(cfg)}


def as_text(cfg: fdl.Buildable) -> str:
    """One `path = value` line per node and argument; `# default` marks values left unset."""
    lines = []
    for s in settings(cfg):
        notes = (["default"] if s.is_default else []) + ([f"tags: {', '.join(s.tags)}"] if s.tags else [])
        comment = f"  # {'; '.join(notes)}" if notes else ""
        lines.append(f"{s.path} = {format_value(s.value)}{comment}")
    return "\n".join(lines)


def format_value(value: Any) -> str:
    return repr(value)


def node_of(buildable: fdl.Buildable) -> Node:
    fn = fdl.get_callable(buildable)
    return Node(type(buildable).__name__, getattr(fn, "__qualname__", repr(fn)))


_Found = list[tuple[str, fdl.Buildable]]


def _walk(value: Any, path: str, seen: dict[int, str], out: list[Setting], found: _Found) -> None:
    if isinstance(value, fdl.Buildable):
        if id(value) in seen:
            out.append(Setting(path, SameAs(seen[id(value)])))
            return
        seen[id(value)] = path
        found.append((path, value))
        if path:
            out.append(Setting(path, node_of(value)))
        _walk_arguments(value, path, seen, out, found)
    elif isinstance(value, (list, tuple)) and _holds_buildable(value):
        for i, item in enumerate(value):
            _walk(item, f"{path}[{i}]", seen, out, found)
    elif isinstance(value, dict) and _holds_buildable(value):
        for key, item in value.items():
            _walk(item, f"{path}[{key!r}]", seen, out, found)
    else:
        out.append(Setting(path, value))


def _walk_arguments(
    buildable: fdl.Buildable, path: str, seen: dict[int, str], out: list[Setting], found: _Found
) -> None:
    params = buildable.__signature_info__.parameters
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    names = [n for n, p in params.items() if p.kind not in variadic]
    names += [n for n in buildable.__arguments__ if n not in names]
    for name in names:
        child = f"{path}.{name}" if path else name
        tags = tuple(sorted(t.__name__ for t in buildable.__argument_tags__.get(name, ())))
        if name in buildable.__arguments__:
            value = buildable.__arguments__[name]
            if tags and not isinstance(value, fdl.Buildable):
                out.append(Setting(child, value, tags=tags))
            else:
                _walk(value, child, seen, out, found)
            continue
        default = params[name].default if name in params else inspect.Parameter.empty
        if default is inspect.Parameter.empty:
            out.append(Setting(child, Unset(), tags=tags))
        elif isinstance(default, _LITERALS):
            out.append(Setting(child, default, is_default=True, tags=tags))
        # Other defaults are framework plumbing (Flax's `parent` sentinel) whose reprs carry
        # memory addresses; listing them would make identical graphs print differently.


def _holds_buildable(value: Any) -> bool:
    items = value.values() if isinstance(value, dict) else value
    return any(
        isinstance(v, fdl.Buildable) or (isinstance(v, (list, tuple, dict)) and _holds_buildable(v))
        for v in items
    )
