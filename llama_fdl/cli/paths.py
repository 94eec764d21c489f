"""Paths into a graph (`model.config.num_blocks`, `data.mixture[0].rate`), with the nearest names on a typo.

A path is names joined by dots, and indexes into lists (`[0]`) and dicts (`['key']`), spelled as
`--fdl_help` and config.txt print them.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import re
from collections.abc import Sequence
from typing import Any

import fiddle as fdl

from llama_fdl.cli import ConfigError

_STEP = re.compile(r"\.?([A-Za-z_]\w*)|\[(-?\d+|'[^'\]]*'|\"[^\"\]]*\")\]")


def nearest(name: str, known: Sequence[str], n: int = 3) -> list[str]:
    """Up to `n` of `known` that look most like `name`, best first (none if nothing is close)."""
    return difflib.get_close_matches(name, list(known), n=n, cutoff=0.6)


def ranked(name: str, known: Sequence[str]) -> list[str]:
    """All of `known`, those most like `name` first."""
    return sorted(known, key=lambda k: -difflib.SequenceMatcher(None, name, k).ratio())


def parameter_names(buildable: fdl.Buildable) -> tuple[str, ...]:
    return tuple(buildable.__signature_info__.valid_param_names)


def describe_node(buildable: fdl.Buildable) -> str:
    fn = fdl.get_callable(buildable)
    return getattr(fn, "__qualname__", repr(fn))


@dataclasses.dataclass(frozen=True)
class Index:
    """A step into a list (`[0]`) or a dict (`['key']`), as opposed to an argument name."""

    key: str | int

    def __str__(self) -> str:
        return f"[{self.key!r}]"


Step = str | Index


def parse(path: str) -> list[Step]:
    """`data.mixture[0].rate` -> ['data', 'mixture', Index(0), 'rate']."""
    steps: list[Step] = []
    position = 0
    while position < len(path):
        match = _STEP.match(path, position)
        if not match or (match.group(1) and bool(steps) != (path[position] == ".")):
            steps = []
            break
        name, index = match.groups()
        steps.append(name if name else Index(ast.literal_eval(index)))
        position = match.end()
    if not steps or not isinstance(steps[0], str):
        raise ConfigError(
            f"`{path}` is not a dotted path of names like `model.config.num_blocks`, with indexes "
            "like `data.mixture[0].rate` or `['key']` into lists and dicts."
        )
    return steps


def spell(steps: Sequence[Step]) -> str:
    """The inverse of `parse`: ['data', 'mixture', Index(0)] -> `data.mixture[0]`."""
    return "".join(str(s) if isinstance(s, Index) else f".{s}" if i else s for i, s in enumerate(steps))


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where a path ends: argument `argument` of the config `owner`, then `indexes` into its value."""

    path: str
    owner: fdl.Buildable
    argument: str
    indexes: tuple[str | int, ...] = ()

    def get(self) -> Any:
        value = getattr(self.owner, self.argument)
        for index in self.indexes:
            value = value[index]
        return value

    def set(self, value: Any) -> None:
        if not self.indexes:
            setattr(self.owner, self.argument, value)
            return
        container = getattr(self.owner, self.argument)
        for index in self.indexes[:-1]:
            container = container[index]
        container[self.indexes[-1]] = value


def resolve(cfg: fdl.Buildable, path: str) -> Slot:
    """The slot `path` names in `cfg`.

    Raises ConfigError naming the first unknown name or index and the nearest valid ones.
    """
    steps = parse(path)
    node: Any = cfg
    slot: Slot | None = None
    for depth, step in enumerate(steps):
        where = spell(steps[:depth]) or "the experiment"
        last = depth == len(steps) - 1
        if isinstance(step, str):
            if not isinstance(node, fdl.Buildable):
                raise ConfigError(f"`{where}` is {node!r}, not a config, so it has no `{step}`.")
            _check_parameter(node, step, where)
            slot = Slot(path, node, step)
            node = getattr(node, step) if not last else None
        else:
            _check_index(node, step.key, where)
            if isinstance(node, tuple) and (last or not isinstance(node[step.key], fdl.Buildable)):
                raise ConfigError(
                    f"`{where}` is a tuple, which cannot be changed in place; set all of it, as in "
                    f"--fdl.{where}=(...)."
                )
            assert slot is not None  # a path starts with a name
            slot = Slot(path, slot.owner, slot.argument, (*slot.indexes, step.key))
            node = node[step.key]
    assert slot is not None
    return slot


def _check_parameter(node: fdl.Buildable, name: str, where: str) -> None:
    valid = parameter_names(node)
    if name in valid or node.__signature_info__.has_var_keyword:
        return
    close = nearest(name, valid)
    hint = (
        f"did you mean {' or '.join(f'`{c}`' for c in close)}?" if close else f"it has: {', '.join(valid)}."
    )
    raise ConfigError(f"`{where}` ({describe_node(node)}) has no parameter `{name}`; {hint}")


def _check_index(node: Any, key: str | int, where: str) -> None:
    if isinstance(node, (list, tuple)):
        if not isinstance(key, int):
            raise ConfigError(f"`{where}` is a {type(node).__name__}; index it with a number, as in [0].")
        if not -len(node) <= key < len(node):
            raise ConfigError(
                f"`{where}` has {len(node)} items, so [{key}] is out of range; use 0 .. {len(node) - 1}."
            )
    elif isinstance(node, dict):
        if key not in node:
            spelled = {str(k): repr(k) for k in node}  # compared unquoted: quotes make all keys alike
            close = nearest(str(key), list(spelled))
            hint = (
                f"did you mean {' or '.join(f'[{spelled[c]}]' for c in close)}?"
                if close
                else f"it has: {', '.join(spelled.values())}."
            )
            raise ConfigError(f"`{where}` has no key {key!r}; {hint}")
    else:
        raise ConfigError(f"`{where}` is {node!r}, not a list or dict, so it has no [{key!r}].")
