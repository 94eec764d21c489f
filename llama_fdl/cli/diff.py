"""What one graph changed against another: as text for people, and as code that redoes it.

config_diff.txt has one line per value, with the flags that changed it:

    model.config.num_blocks: 4 -> 8   (--fdl.model.config.num_blocks=8)
    model.config.dtype: 'float32' -> 'bfloat16'   (--fiddler=bf16)

Values are compared as flattened (see flatten): an unset argument counts as its default, so
setting a value to its default is no change, and a shared node is compared once.

config_diff.py is a fiddler function written by fiddle's codegen (`fiddler_from_diff`), checked
to rebuild the same graph before it is saved: --fiddler=RUN/config_diff.py replays the command
line, and the function can be pasted into experiments/.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import fiddle as fdl
from fiddle import diffing
from fiddle.codegen import codegen_diff
from fiddle.experimental import serialization

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


def as_code(old: fdl.Buildable, new: fdl.Buildable, base_flag: str, name: str = "config_diff") -> str:
    """A Python file whose function `name(cfg)` turns `old` into `new`: fiddle's own codegen.

    The file is checked before it is returned: its function, run on a copy of `old`, must give a
    graph that serializes exactly like `new` (same values, same shared nodes). Where fiddle's
    codegen cannot reproduce a change, the file says so instead of holding code that would
    quietly build something else.

    Args:
      old: the base graph (the experiment, or a loaded config file).
      new: the graph after the run's overrides.
      base_flag: the flag that names `old` (`--fdl_config=experiments.small`), for the docstring.
      name: the function's name; `--fiddler=PATH/NAME.py` finds a function named like its file.
    """
    try:
        diff = diffing.build_diff(old, new)
        code = codegen_diff.fiddler_from_diff(diff, old=old, func_name=name, variable_naming="short").code
        same = reproduces(code, name, old, new)
    except Exception:  # noqa: BLE001  (the file is a convenience; a codegen failure must not stop a run)
        same = False
    usage = (
        f"Run it again:  llama-fdl train {base_flag} --fiddler=RUN/config_diff.py\n"
        "(RUN: this run's directory), or copy the function into experiments/ as a fiddler."
    )
    if not same:
        return (
            f'"""fiddle\'s codegen could not reproduce this run\'s changes against {base_flag} as a '
            f'fiddler;\nconfig.json holds the exact graph (--fdl_config_file=RUN/config.json)."""\n'
        )
    header = (
        f'"""What this run changed against {base_flag}, as a fiddler (fiddle\'s codegen).\n\n{usage}\n"""\n'
    )
    return header + ("\n" if code.startswith(("import", "from")) else "\n\n") + code


def reproduces(code: str, name: str, old: fdl.Buildable, new: fdl.Buildable) -> bool:
    """Whether the fiddler `name` in `code`, run on a copy of `old`, gives a graph equal to `new`."""
    namespace: dict = {}
    exec(compile(code, "<config_diff.py>", "exec"), namespace)  # noqa: S102  (code we just generated)
    cfg = copy.deepcopy(old)
    cfg = namespace[name](cfg) or cfg
    return serialization.dump_json(cfg) == serialization.dump_json(new)
