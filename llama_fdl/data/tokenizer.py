"""Train a SentencePiece vocabulary on your own files, with the `sentencepiece` package.

    python -m llama_fdl.data.tokenizer --input='corpus/train/**/*.txt' --vocab_size=8000 \\
        --output=vocab/corpus8k.model [--model_type=unigram] [--field=text]

then train with `--fdl.data.vocabulary.sentencepiece_model=vocab/corpus8k.model` (the model's
vocab_size follows). `--input` may be given several times; files ending in `.jsonl` or
`.jsonl.gz` are read as JSON Lines (their `--field`), other files as text, each line one training
sentence. Give the train files only, so the validation text stays unseen.

The model keeps text exactly (no Unicode normalization, spaces and newlines kept, no dummy
prefix), so decoding gives back the bytes that were encoded and bits per byte count the text
itself; characters outside the vocabulary fall back to byte pieces; ids are the ones seqio
expects: pad 0, EOS 1, UNK 2, no BOS.

`stdlib_sentencepiece(vocab_size)` is the same model trained on the Python standard library's
train split at first use and cached (experiments.small_spm uses it).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import itertools
import json
import os
import pathlib
import random
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from typing import Literal

from llama_fdl.data import sources

ModelType = Literal["bpe", "unigram"]

MAX_SENTENCES = 1_000_000
"""At most this many lines are read for training."""
_SETTINGS = {
    "byte_fallback": True,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "add_dummy_prefix": False,
    "allow_whitespace_only_pieces": True,
    "user_defined_symbols": ["\n"],  # lines are the training sentences; documents keep newlines
    "character_coverage": 1.0,
    "pad_id": 0,
    "eos_id": 1,
    "unk_id": 2,
    "bos_id": -1,
    "max_sentence_length": 16384,
    "shuffle_input_sentence": True,
    "minloglevel": 2,
}


def train(
    lines: Iterable[str],
    vocab_size: int,
    output: str | pathlib.Path,
    model_type: ModelType = "bpe",
    max_sentences: int = MAX_SENTENCES,
) -> pathlib.Path:
    """Trains a model on the first `max_sentences` of `lines`, writes it to `output` (atomically)."""
    import sentencepiece

    if vocab_size < 260:
        raise ValueError(
            f"--vocab_size={vocab_size} must be at least 260 (256 byte pieces, pad, EOS, UNK, one more)."
        )
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=itertools.islice(lines, max_sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            num_threads=os.cpu_count() or 1,
            **_SETTINGS,
        )
    except RuntimeError as e:
        raise ValueError(f"SentencePiece could not train a {vocab_size}-piece model: {e}") from None
    output = pathlib.Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    tmp.write_bytes(model.getvalue())
    tmp.replace(output)
    return output


def lines_of(files: Iterable[str], field: str = "text") -> Iterator[str]:
    """The lines of each file; a JSONL file's are the lines of each document's `field`."""
    for path in files:
        if path.endswith((".jsonl", ".jsonl.gz")):
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        yield from _json_field(line, field, f"{path} line {number}").split("\n")
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                yield from f.read().split("\n")


def _json_field(line: str, field: str, where: str) -> str:
    try:
        text = json.loads(line)[field]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{where} is not a JSON object with a text field {field!r}.") from None
    if not isinstance(text, str):
        raise ValueError(f"{where}: field {field!r} is not text.")
    return text


def stdlib_sentencepiece(vocab_size: int = 2048, model_type: ModelType = "bpe") -> str:
    """A model trained on the train split of this interpreter's standard library, cached.

    Trained at first use (seconds) into $LLAMA_FDL_CACHE (default ~/.cache/llama_fdl) under a
    name that includes the stdlib's path, Python's version and the settings, and read from there
    afterwards. Returns the model's path.
    """
    files = sources.files_of(sources.StdlibCorpus(), "train")
    recipe = json.dumps([sysconfig.get_paths()["stdlib"], sys.version, vocab_size, model_type, _SETTINGS])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    cache = pathlib.Path(os.environ.get("LLAMA_FDL_CACHE") or pathlib.Path.home() / ".cache" / "llama_fdl")
    path = cache / f"stdlib_{model_type}{vocab_size}_{key}.model"
    if not path.exists():
        print(f"Training the SentencePiece model {path} on the stdlib train split ...", flush=True)
        train(lines_of(files), vocab_size, path, model_type)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", action="append", required=True, help="glob of training files (repeatable)")
    parser.add_argument("--vocab_size", type=int, required=True, help="number of pieces, specials included")
    parser.add_argument("--output", required=True, help="where to write the .model file")
    parser.add_argument("--model_type", choices=("bpe", "unigram"), default="bpe")
    parser.add_argument("--field", default="text", help="the text field of JSONL files")
    parser.add_argument("--max_sentences", type=int, default=MAX_SENTENCES, help="most lines read")
    parser.add_argument("--seed", type=int, default=0, help="order in which files are read")
    args = parser.parse_args(argv)
    try:
        files = sorted(sources.matching_files(tuple(args.input), "--input"))
        random.Random(args.seed).shuffle(files)  # so that the first --max_sentences span the corpus
        path = train(
            lines_of(files, args.field), args.vocab_size, args.output, args.model_type, args.max_sentences
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    import sentencepiece

    size = sentencepiece.SentencePieceProcessor(model_file=str(path)).get_piece_size()
    print(f"Wrote {path}: {size} pieces ({args.model_type}) from {len(files)} file(s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
