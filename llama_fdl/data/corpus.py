"""The default corpus: the Python standard library's own `.py` files.

Every machine with Python has them, so the demo needs no download. The split is fixed by file:
a file belongs to validation when the CRC32 of its path relative to the stdlib directory is
divisible by `VALIDATION_MODULUS` (about 2% of files); everything else is train. Files are read
as bytes and cut into chunks of at most `chunk_bytes` so that seqio's packer, which truncates
long examples, never drops text.

This module does not import TensorFlow.
"""

from __future__ import annotations

import pathlib
import sysconfig
import zlib

VALIDATION_MODULUS = 50
"""A file is in the validation split iff crc32(relative path) % VALIDATION_MODULUS == 0."""

SPLITS = ("train", "validation")


def stdlib_dir() -> pathlib.Path:
    """The directory holding this interpreter's standard library."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def split_of(relative_path: str) -> str:
    """Which split a file belongs to, from its path relative to the corpus root."""
    in_validation = zlib.crc32(relative_path.encode()) % VALIDATION_MODULUS == 0
    return "validation" if in_validation else "train"


def list_files(root: pathlib.Path, split: str) -> list[pathlib.Path]:
    """The `.py` files of `split` under `root`, sorted, excluding installed third-party packages."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
    files = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if "site-packages" in relative.parts or "dist-packages" in relative.parts:
            continue
        if split_of(relative.as_posix()) == split:
            files.append(path)
    if not files:
        raise FileNotFoundError(f"No .py files of split {split!r} under {root}; is it a Python stdlib?")
    return files


def chunk_bytes(data: bytes, max_bytes: int) -> list[bytes]:
    """Cuts `data` into consecutive pieces of at most `max_bytes` (the last may be shorter)."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes={max_bytes} must be positive.")
    return [data[i : i + max_bytes] for i in range(0, len(data), max_bytes)]


def load_chunks(root: pathlib.Path, split: str, max_bytes: int) -> list[bytes]:
    """All chunks of all files of `split`, in file order; empty files contribute nothing."""
    chunks: list[bytes] = []
    for path in list_files(root, split):
        chunks.extend(chunk_bytes(path.read_bytes(), max_bytes))
    return chunks
