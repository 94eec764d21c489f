"""Small corpora written into a test's temporary directory, and experiments that train on them.

Every document is distinct and recognisable (`doc <name> <i>: ...`), so a test can say which
document a packed chunk came from. Used by the data tests and, through
`--fdl_config=tests.data_corpora.NAME(...)`, by the launcher tests.
"""

from __future__ import annotations

import gzip
import json
import pathlib

import fiddle as fdl
import numpy as np

import experiments
from llama_fdl import builders


def document(name: str, i: int, rng: np.random.Generator) -> str:
    """A recognisable document of 40 to 900 bytes."""
    words = " ".join(f"w{int(w)}" for w in rng.integers(0, 500, size=int(rng.integers(5, 180))))
    return f"doc {name} {i}: {words}\n"


def write_text_files(root: pathlib.Path, n: int = 40, name: str = "t", seed: int = 0) -> dict[str, str]:
    """`n` text files under root/ (some in a subdirectory); returns path -> text."""
    rng = np.random.default_rng(seed)
    texts = {}
    for i in range(n):
        path = root / ("sub" if i % 3 == 0 else "") / f"{name}_{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        texts[str(path)] = document(name, i, rng)
        path.write_text(texts[str(path)])
    return texts


def write_jsonl(path: pathlib.Path, n: int, name: str = "j", seed: int = 0, field: str = "text") -> list[str]:
    """`n` documents as JSON Lines (gzipped if the name ends in .gz); returns their texts."""
    rng = np.random.default_rng(seed)
    texts = [document(name, i, rng) for i in range(n)]
    lines = "".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(lines.encode()))
    else:
        path.write_text(lines)
    return texts


def write_jsonl_corpus(root: pathlib.Path, name: str = "j", files: int = 4, per_file: int = 40) -> None:
    """`files` train files (one gzipped) and one validation file under root/."""
    for f in range(files):
        suffix = ".jsonl.gz" if f == 0 else ".jsonl"
        write_jsonl(root / f"train_{f}{suffix}", per_file, f"{name}{f}", seed=f)
    write_jsonl(root / "valid.jsonl", per_file, f"{name}v", seed=99)


def tiny_jsonl(root: str) -> fdl.Config:
    """experiments.tiny on the JSONL corpus of `write_jsonl_corpus(root)`."""
    cfg = experiments.tiny()
    cfg.data.source = builders.jsonl_files(f"{root}/*.jsonl*", validation_files=f"{root}/valid.jsonl")
    return cfg


def tiny_mixture(root: str) -> fdl.Config:
    """experiments.tiny on a 3:1 mixture of a JSONL corpus and text files under `root`."""
    cfg = experiments.tiny()
    cfg.data.source = builders.mixture(
        builders.component(
            "jsonl",
            builders.jsonl_files(f"{root}/jsonl/*.jsonl*", validation_files=f"{root}/jsonl/valid.jsonl"),
            rate=3.0,
        ),
        builders.component(
            "text", builders.text_files(f"{root}/text/**/*.txt", validation_files=f"{root}/text/sub/*.txt")
        ),
    )
    return cfg


def write_mixture_corpus(root: pathlib.Path) -> None:
    write_jsonl_corpus(root / "jsonl")
    write_text_files(root / "text", n=120)
