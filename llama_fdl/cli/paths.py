"""Dotted paths into a graph (`model.config.num_blocks`), with the nearest names on a typo."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import fiddle as fdl

from llama_fdl.cli import ConfigError


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


def resolve(cfg: fdl.Buildable, path: str) -> tuple[fdl.Buildable, str]:
    """The Buildable that holds the last name of `path`, and that name.

    Raises ConfigError naming the first unknown name and the nearest valid ones.
    """
    names = path.split(".")
    if not path or not all(n.isidentifier() for n in names):
        raise ConfigError(f"`{path}` is not a dotted path of names like `model.config.num_blocks`.")
    node: object = cfg
    for depth, name in enumerate(names):
        where = ".".join(names[:depth]) or "the experiment"
        if not isinstance(node, fdl.Buildable):
            raise ConfigError(f"`{where}` is {node!r}, not a config, so it has no `{name}`.")
        valid = parameter_names(node)
        if name not in valid and not node.__signature_info__.has_var_keyword:
            close = nearest(name, valid)
            hint = (
                f"did you mean {' or '.join(f'`{c}`' for c in close)}?"
                if close
                else f"it has: {', '.join(valid)}."
            )
            raise ConfigError(f"`{where}` ({describe_node(node)}) has no parameter `{name}`; {hint}")
        if depth == len(names) - 1:
            return node, name
        node = getattr(node, name)
    raise AssertionError("unreachable: the loop returns at the last name")
