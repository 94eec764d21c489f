"""Values against the annotations of the dataclasses and functions they configure, before building.

A wrong type caught here names the path, the annotation and the flag that set it; caught by the
dataclass it would be a message about the dataclass, and caught by JAX a shape error in a trace.
Only what can be decided from the annotation is checked: scalars, `Literal`s, unions, and which
annotations a nested config may stand in for. Anything else passes.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import fiddle as fdl

from llama_fdl.cli import ConfigError, flatten, paths
from llama_fdl.cli.paths import describe_node, ranked

_SCALARS = (bool, int, float, str, type(None))


@functools.cache
def _hints(fn_or_cls: Callable) -> dict[str, Any]:
    target = fn_or_cls
    if inspect.isclass(fn_or_cls) and not dataclasses.is_dataclass(fn_or_cls):
        target = fn_or_cls.__init__
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001  (an annotation we cannot resolve is one we do not check)
        return {}


def annotation(buildable: fdl.Buildable, name: str) -> Any:
    """The annotation of argument `name` of the function or class `buildable` calls, or Any."""
    return _hints(fdl.get_callable(buildable)).get(name, Any)


def slot_annotation(slot: paths.Slot) -> Any:
    """The annotation at a path's end: its argument's, then the element type of each index."""
    ann = annotation(slot.owner, slot.argument)
    for key in slot.indexes:
        ann = _element(ann, key)
    return ann


def _element(ann: Any, key: str | int) -> Any:
    """`list[X]`, `Sequence[X]`, `tuple[X, ...]` -> X; `dict[K, V]` -> V; `tuple[A, B]`[1] -> B."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        containers = [a for a in args if typing.get_origin(a) is not None]
        return _element(containers[0], key) if len(containers) == 1 else Any
    if not args or origin is None:
        return Any
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[key] if isinstance(key, int) and -len(args) <= key < len(args) else Any
    if issubclass(origin, collections.abc.Mapping):
        return args[1] if len(args) == 2 else Any
    if issubclass(origin, collections.abc.Sequence):
        return args[0]
    return Any


def accepts(ann: Any, value: Any) -> bool:
    """Whether `value` may be passed where `ann` is annotated (a config stands in for an object)."""
    if ann is Any or ann is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return any(accepts(a, value) for a in typing.get_args(ann))
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(ann))
    if isinstance(value, fdl.Buildable):
        # A config stands in for a scalar only if its function says it returns one (a size derived
        # from a vocabulary, say).
        return ann not in _SCALARS or _hints(fdl.get_callable(value)).get("return") is ann
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann in (str, type(None)):
        return isinstance(value, ann)
    if origin is collections.abc.Callable:
        return callable(value)
    try:
        return isinstance(value, origin or ann)
    except TypeError:  # generics, TypeVars, forward references: not decidable here
        return True


def accepts_text(ann: Any) -> bool:
    """Whether every value `ann` allows is a string, so a bare word on the command line is one."""
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(ann))
    return ann is str


def describe(ann: Any) -> str:
    """`int`, `float or None`, `one of 'xla', 'cudnn'`: an annotation as a person would say it."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(ann))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(ann))
    if ann is type(None):
        return "None"
    if ann in (int, float, str, bool):
        return {int: "an int", float: "a float", str: "a string", bool: "True or False"}[ann]
    return getattr(ann, "__name__", str(ann))


def mismatch(owner: str, name: str, ann: Any, value: Any) -> str:
    """The end of an error sentence: what `owner.name` takes and why `value` is not it."""
    if typing.get_origin(ann) is typing.Literal and isinstance(value, str):
        options = ranked(value, [a for a in typing.get_args(ann) if isinstance(a, str)])
        return f"{owner}.{name} takes {describe(ann)}; nearest to {value!r}: {options[0]!r}"
    got = type(value).__name__ if not isinstance(value, fdl.Buildable) else repr(value).split("(")[0]
    article = "an" if got[:1].lower() in "aeiou" else "a"
    return f"{owner}.{name} takes {describe(ann)}, not {article} {got}"


def check_graph(cfg: fdl.Buildable, sources: Mapping[str, str] | None = None) -> None:
    """Raises ConfigError at the first argument whose value its annotation does not allow.

    Args:
      cfg: the graph.
      sources: path -> the flag that last set it, named in the error.
    """
    sources = sources or {}
    for path, buildable in flatten.buildables(cfg):
        for name, value in buildable.__arguments__.items():
            ann = annotation(buildable, name)
            if accepts(ann, value):
                continue
            child = f"{path}.{name}" if path else name
            source = f" (set by {sources[child]})" if child in sources else ""
            shown = f"{child}={value!r}" if not isinstance(value, fdl.Buildable) else child
            raise ConfigError(f"{shown}{source}: {mismatch(describe_node(buildable), name, ann, value)}.")
