"""The graph as a picture: fiddle.graphviz, rendered to SVG by graphviz's `dot` program."""

from __future__ import annotations

import shutil

import fiddle as fdl
import graphviz
from fiddle import graphviz as fdl_graphviz

MISSING_DOT = (
    "graphviz's `dot` program is not installed, so config.svg was not drawn; "
    "install it with `apt-get install graphviz` (scripts/setup.sh does, as root)."
)


def have_dot() -> bool:
    return shutil.which("dot") is not None


def svg(cfg: fdl.Buildable) -> str | None:
    """The graph as SVG text, or None when `dot` is not installed."""
    if not have_dot():
        return None
    try:
        return fdl_graphviz.render(cfg).pipe(format="svg", encoding="utf-8")
    except graphviz.ExecutableNotFound:
        return None
