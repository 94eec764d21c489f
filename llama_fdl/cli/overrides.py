"""The override language of the command line, applied in one documented order, with attribution.

Order, whatever the order on the command line:
  1. the base graph: --fdl_config=experiments.NAME or --fdl_config_file=PATH.json;
  2. fiddlers, in the order given: --fiddler=NAME or --fiddler='NAME(ARGS)';
  3. tags: --fdl_tag.TAG=VALUE (or --fdl_tags_set=TAG=VALUE), in the order given;
  4. values, in the order given: --fdl_set=PATH=VALUE or its shorthand --fdl.PATH=VALUE.
So a value always wins over the fiddler that also sets it, and the last of two values wins.

VALUE is a Python literal (`8`, `3e-4`, `None`, `'bfloat16'`, `(1, 2)`); `true`/`false` are bools,
and where the annotation takes only strings a bare word is a string (`--fdl.model.config.dtype=bfloat16`).
Each override is recorded with its spelling so that the diff can say which flag changed a value.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import types
from collections.abc import Sequence
from typing import Literal

import fiddle as fdl
from fiddle import tagging

from llama_fdl.cli import ConfigError, flatten, library, paths, typecheck

Kind = Literal["fiddler", "tag", "set"]
_ORDER: dict[str, int] = {"fiddler": 0, "tag": 1, "set": 2}


class _Typed:
    def __repr__(self) -> str:
        return "<typed>"


TYPED = _Typed()
"""`Override.value` of an override typed on the command line (its text says it all)."""


@dataclasses.dataclass(frozen=True)
class Override:
    kind: Kind
    text: str
    """`NAME(ARGS)` for a fiddler, `TAG=VALUE` for a tag, `PATH=VALUE` for a value; given by code
    (a sweep point), the fiddler's name or the PATH alone."""
    label: str
    """The flag as typed, e.g. `--fdl.model.config.num_blocks=8`, or who gave it (`sweep point a`)."""
    value: object = TYPED
    """Given by code rather than typed: the fiddler to call, or the Python value to set at PATH."""


@dataclasses.dataclass
class Applied:
    """A graph after its overrides, the graph before them, and which flags changed which paths."""

    cfg: fdl.Buildable
    base: fdl.Buildable
    sources: dict[str, list[str]]


def rewrite_shorthands(argv: Sequence[str]) -> list[str]:
    """`--fdl.PATH=V` -> `--fdl_set=PATH=V` and `--fdl_tag.T=V` -> `--fdl_tags_set=T=V`, for absl."""
    out = []
    for arg in argv:
        for short, long in (("--fdl.", "--fdl_set="), ("--fdl_tag.", "--fdl_tags_set=")):
            if arg.startswith(short):
                if "=" not in arg:
                    raise ConfigError(f"`{arg}` needs a value: {short}NAME=VALUE.")
                arg = long + arg[len(short) :]
                break
        out.append(arg)
    return out


def from_flags(
    fiddlers: Sequence[str], tags: Sequence[str], sets: Sequence[str], argv: Sequence[str]
) -> list[Override]:
    """The overrides in the order they are applied, each labelled as it was typed in `argv`."""

    def label(short: str, long: str, text: str) -> str:
        return f"{short}{text}" if f"{short}{text}" in argv else f"{long}{text}"

    return (
        [Override("fiddler", f, f"--fiddler={f}") for f in fiddlers]
        + [Override("tag", t, label("--fdl_tag.", "--fdl_tags_set=", t)) for t in tags]
        + [Override("set", s, label("--fdl.", "--fdl_set=", s)) for s in sets]
    )


def apply(cfg: fdl.Buildable, overrides: Sequence[Override], lib: types.ModuleType) -> Applied:
    """Applies `overrides` to `cfg`, in the documented order, and type-checks the result.

    `cfg` is changed in place, except by a fiddler that returns a new graph instead (fiddle allows
    both): use the returned `Applied.cfg`.
    """
    overrides = sorted(overrides, key=lambda o: _ORDER[o.kind])  # stable: keeps the given order
    base = copy.deepcopy(cfg)
    sources: dict[str, list[str]] = {}
    before = flatten.values(cfg)
    for override in overrides:
        if override.kind == "fiddler":
            fiddler = override.text if override.value is TYPED else override.value
            cfg = library.apply_fiddler(cfg, fiddler, lib, override.label)
        elif override.kind == "tag":
            set_tag(cfg, override.text, override.label)
        elif override.value is TYPED:
            set_value(cfg, override.text, override.label)
        else:
            check_and_set(_resolve(cfg, override.text, override.label), override.value, override.label)
        after = flatten.values(cfg)
        for path in changed_paths(before, after):
            sources.setdefault(path, []).append(override.label)
        before = after
    typecheck.check_graph(cfg, {path: labels[-1] for path, labels in sources.items()})
    return Applied(cfg, base, sources)


def changed_paths(before: dict, after: dict) -> list[str]:
    """Paths added, removed or given another value (1 and True and 1.0 count as different)."""
    keys = list(after) + [k for k in before if k not in after]
    return [k for k in keys if _key(before.get(k, _MISSING)) != _key(after.get(k, _MISSING))]


_MISSING = object()


def _key(value):
    return (type(value), value)


def set_value(cfg: fdl.Buildable, text: str, label: str) -> None:
    """`PATH=VALUE`: parses VALUE against the annotation at PATH and sets it."""
    path, sep, value_text = text.partition("=")
    if not sep:
        raise ConfigError(f"{label}: needs a value, as in --fdl.model.config.num_blocks=8.")
    slot = _resolve(cfg, path.strip(), label)
    ann = typecheck.slot_annotation(slot)
    value = parse_value(value_text, ann, label, current=slot.get())
    check_and_set(slot, value, label)


def _resolve(cfg: fdl.Buildable, path: str, label: str) -> paths.Slot:
    try:
        return paths.resolve(cfg, path)
    except ConfigError as e:
        raise ConfigError(f"{label}: {e}") from e


def check_and_set(slot: paths.Slot, value, label: str) -> None:
    """Sets `value` at `slot` if the annotation there allows it; else says what it takes."""
    ann = typecheck.slot_annotation(slot)
    if not typecheck.accepts(ann, value):
        where = slot.argument + "".join(f"[{k!r}]" for k in slot.indexes)
        problem = typecheck.mismatch(paths.describe_node(slot.owner), where, ann, value)
        raise ConfigError(f"{label}: {problem}.")
    slot.set(value)


def set_tag(cfg: fdl.Buildable, text: str, label: str) -> None:
    """`TAG=VALUE`: sets every argument tagged TAG (its class name or full name) to VALUE."""
    name, sep, value_text = text.partition("=")
    if not sep:
        raise ConfigError(f"{label}: needs a value, as in --fdl_tag.DType=bfloat16.")
    tags = {t.__name__: t for t in tagging.list_tags(cfg)}
    tags.update({t.name: t for t in tagging.list_tags(cfg)})
    if name not in tags:
        short = sorted({t.__name__ for t in tags.values()})
        known = ", ".join(paths.ranked(name, short)) if short else "none in this graph"
        raise ConfigError(f"{label}: no tag `{name}`; tags: {known}.")
    tag = tags[name]
    places = [
        (node, arg)
        for _, node in flatten.buildables(cfg)
        for arg, arg_tags in node.__argument_tags__.items()
        if tag in arg_tags
    ]
    node, arg = places[0]
    ann = typecheck.annotation(node, arg)
    value = parse_value(value_text, ann, label, current=getattr(node, arg, None))
    for node, arg in places:
        ann = typecheck.annotation(node, arg)
        if not typecheck.accepts(ann, value):
            raise ConfigError(f"{label}: {typecheck.mismatch(paths.describe_node(node), arg, ann, value)}.")
        setattr(node, arg, value)


def parse_value(text: str, ann, label: str, current=None):
    """Command-line text to a value for an argument annotated `ann`."""
    stripped = text.strip()
    if typecheck.accepts_text(ann) and stripped[:1] not in ("'", '"'):
        return text  # a bare word where only strings are allowed: --fdl.model.config.dtype=bfloat16
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    try:
        return ast.literal_eval(stripped)
    except (ValueError, SyntaxError):
        if typecheck.accepts(ann, text):
            return text
        example = f" (it is {current!r} now)" if current is not None else ""
        raise ConfigError(
            f"{label}: `{text}` is not {typecheck.describe(ann)}, which this setting takes{example}; "
            f"values are Python literals, strings in quotes."
        ) from None
