"""What one graph changed against another, one line per value, with the flags that changed it.

    model.config.num_blocks: 4 -> 8   (--fdl.model.config.num_blocks=8)
    model.config.dtype: 'float32' -> 'bfloat16'   (--fiddler=bf16)

Values are compared as flattened (see flatten): an unset argument counts as its default, so
setting a value to its default is no change, and a shared node is compared once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import fiddle as fdl

from llama_fdl.cli import flatten
from llama_fdl.cli.overrides import changed_paths


@dataclasses.dataclass(frozen=True)
class Change:
    path: str
    old: Any
    new: Any


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT = _Absent()


def changes(old: fdl.Buildable, new: fdl.Buildable) -> list[Change]:
    """Every path whose value differs, in the order of the new graph (removed paths last)."""
    before, after = flatten.values(old), flatten.values(new)
    return [Change(p, before.get(p, ABSENT), after.get(p, ABSENT)) for p in changed_paths(before, after)]


def as_text(
    old: fdl.Buildable,
    new: fdl.Buildable,
    sources: Mapping[str, Sequence[str]] | None = None,
    against: str = "",
) -> str:
    """The diff as lines for config_diff.txt; `sources` (path -> flags) adds who changed each value."""
    sources = sources or {}
    header = f"# What this run changed against {against}." if against else ""
    lines = [header] if header else []
    found = changes(old, new)
    for change in found:
        line = f"{change.path}: {flatten.format_value(change.old)} -> {flatten.format_value(change.new)}"
        if change.path in sources:
            line += f"   ({', '.join(dict.fromkeys(sources[change.path]))})"
        lines.append(line)
    if not found:
        lines.append("(no changes)")
    return "\n".join(lines)
