"""What to train on: the data sources a `DataConfig.source` can be, and the files of each split.

Each source is a plain frozen dataclass, chosen in the Fiddle graph by its builder
(`llama_fdl.builders`): the Python standard library (the default), text files, JSONL files, a
registered seqio Task or Mixture, or a mixture of these with rates. Reading them is
`llama_fdl.data.streams`; this module only names them and lists their files, without TensorFlow.

File sources split into train and validation either by two globs or, with one glob, by a fixed
rule on each file's path: a file is in validation when the CRC32 of its path relative to the
glob's directory is divisible by `VALIDATION_MODULUS` (about 2% of files).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pathlib
import sysconfig
import zlib

VALIDATION_MODULUS = 50
"""A file is in the validation split iff crc32(relative path) % VALIDATION_MODULUS == 0."""

SPLITS = ("train", "validation")

_THIRD_PARTY = ("site-packages", "dist-packages")

Globs = str | tuple[str, ...]


class DataError(ValueError):
    """Bad data or a bad data setting, stated in one line for a person."""


@dataclasses.dataclass(frozen=True)
class StdlibCorpus:
    """The `.py` files of a Python standard library, each file one document: the default corpus.

    Every machine with Python has them, so the demo needs no download. Installed third-party
    packages (`site-packages`, `dist-packages`) are left out.
    """

    root: str = ""
    """Directory of `.py` files to read instead; empty means this interpreter's standard library."""


@dataclasses.dataclass(frozen=True)
class TextFiles:
    """Local text files matched by globs, each file one document (UTF-8 text or any bytes)."""

    files: Globs
    """Glob or globs of the files (`**` matches any depth), e.g. `'corpus/**/*.txt'`."""
    validation_files: Globs = ""
    """Glob(s) of the validation files, taken out of `files`; empty: the file-hash rule."""


@dataclasses.dataclass(frozen=True)
class JsonlFiles:
    """JSON Lines files (optionally gzipped, `.gz`): each line one JSON object, one document."""

    files: Globs
    """Glob or globs of the files, e.g. `'data/*.jsonl.gz'`."""
    validation_files: Globs = ""
    """Glob(s) of the validation files, taken out of `files`; empty: the file-hash rule."""
    field: str = "text"
    """The field of each object that holds the document's text."""


@dataclasses.dataclass(frozen=True)
class SeqioTask:
    """A registered seqio Task or Mixture, by name; `data.module` imports what registers it.

    The Task's own source and preprocessors run (its output feature `targets` must hold token
    ids in `data.vocabulary`), then ours: a trailing EOS is dropped, documents are cut into
    chunks, each document ends in EOS, and chunks are packed. A Mixture is read as its Tasks
    mixed at its rates, each Task also evaluated on its own.
    """

    name: str
    """The registered name, as `seqio.get_mixture_or_task` takes it."""


FileSource = StdlibCorpus | TextFiles | JsonlFiles
Source = StdlibCorpus | TextFiles | JsonlFiles | SeqioTask


@dataclasses.dataclass(frozen=True)
class Component:
    """One source of a mixture, with its name (for `eval/<name>/loss`) and sampling rate."""

    name: str
    """Names the component's eval metrics (`eval/<name>/loss`): letters, digits and `_-.:`."""
    source: Source
    """Where its documents come from."""
    rate: float = 1.0
    """Relative rate at which its chunks are sampled (rates are normalised to sum to 1)."""

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-.:" for c in self.name):
            raise DataError(f"Mixture component name {self.name!r} must be letters, digits and _-.: only.")
        if not self.rate > 0:
            raise DataError(f"Mixture component {self.name!r} has rate {self.rate}; rates must be > 0.")


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Chunks of several sources sampled at their rates, as `seqio.Mixture` mixes Tasks.

    `eval/loss` is measured on the mixed validation stream, and each component also on its own
    validation split as `eval/<name>/loss`.
    """

    components: tuple[Component, ...]
    """The sources and their rates."""

    def __post_init__(self) -> None:
        names = [c.name for c in self.components]
        if len(names) < 2:
            raise DataError(f"A Mixture needs at least two components, not {len(names)}.")
        if len(set(names)) != len(names):
            raise DataError(f"Mixture component names {names} repeat; give each its own name.")


# --- Files of a split ----------------------------------------------------------------------


def stdlib_dir() -> pathlib.Path:
    """The directory holding this interpreter's standard library."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def split_of(relative_path: str) -> str:
    """Which split a file belongs to, from its path relative to its glob's directory."""
    in_validation = zlib.crc32(relative_path.encode()) % VALIDATION_MODULUS == 0
    return "validation" if in_validation else "train"


def files_of(source: FileSource, split: str) -> list[str]:
    """The sorted files of `split`; raises DataError when a glob or the split has none."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
    if isinstance(source, StdlibCorpus):
        return _stdlib_files(source, split)
    everything = matching_files(source.files, what=f"{type(source).__name__} files")
    if source.validation_files:
        validation = matching_files(source.validation_files, what=f"{type(source).__name__} validation_files")
        chosen = (
            sorted(set(validation)) if split == "validation" else sorted(set(everything) - set(validation))
        )
    else:
        chosen = sorted(path for path, relative in everything.items() if split_of(relative) == split)
    if not chosen:
        fix = "pass validation_files=GLOB" if split == "validation" else "check files and validation_files"
        raise DataError(f"{_describe(source)} has no {split} files; {fix}.")
    return chosen


def shard_files(files: list[str], index: int, num_shards: int, what: str) -> list[str]:
    """Process `index`'s files of `num_shards`: every num_shards-th file, so shards are disjoint."""
    if len(files) < num_shards:
        raise DataError(
            f"{what} has {len(files)} file(s), fewer than the {num_shards} processes that each read "
            f"their own files; split it into at least {num_shards} files."
        )
    return files[index::num_shards]


def _stdlib_files(source: StdlibCorpus, split: str) -> list[str]:
    root = pathlib.Path(source.root) if source.root else stdlib_dir()
    if not root.is_dir():
        raise DataError(f"StdlibCorpus root {source.root!r} is not a directory.")
    files = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in _THIRD_PARTY]
        for name in names:
            if name.endswith(".py"):
                path = pathlib.Path(directory, name)
                if split_of(path.relative_to(root).as_posix()) == split:
                    files.append(str(path))
    files.sort()
    if not files:
        raise DataError(f"No .py files of split {split!r} under {root}; is it a Python stdlib?")
    return files


def matching_files(globs: Globs, what: str) -> dict[str, str]:
    """path -> path relative to its glob's directory, over every glob; each glob must match
    (or a DataError names `what` and the glob)."""
    found: dict[str, str] = {}
    for pattern in (globs,) if isinstance(globs, str) else globs:
        paths = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not paths:
            raise DataError(f"{what} glob {pattern!r} matches no files; check the path and pattern.")
        base = str(_glob_directory(pattern))
        for path in paths:  # plain strings: a corpus may have hundreds of thousands of files
            found[path] = os.path.relpath(path, base)
    return found


def _glob_directory(pattern: str) -> pathlib.Path:
    """The directory a glob starts from: its path up to the first part with a wildcard."""
    fixed = []
    for part in pathlib.Path(pattern).parts:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    else:
        fixed = fixed[:-1]  # no wildcard: the pattern names one file
    return pathlib.Path(*fixed) if fixed else pathlib.Path()


def _describe(source: FileSource) -> str:
    return f"{type(source).__name__}(files={source.files!r})"
