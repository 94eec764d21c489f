"""The data pipeline's speed, memory and checkpoint size, side by side with the train step.

    .venv/bin/python benchmarks/data_pipeline.py            # about 10 minutes, 4.5 GB of /tmp
    .venv/bin/python benchmarks/data_pipeline.py --big_gb=0.2 --seconds=3   # a quick look

Prints, all measured in this one run on this machine:
1. tokens/s of the train stream (batches of 16 x 256, as experiments.small reads them) for each
   source: the stdlib corpus in bytes and in small_spm's 2048-piece SentencePiece vocabulary,
   text files, JSONL, gzipped JSONL, a 3:1 mixture of JSONL and text files, and a registered
   seqio Task; next to the train step of experiments.small (and small_spm), with the ratio
   (the pipeline should be >= 20x the step);
2. peak resident memory of a fresh process that trains experiments.small for a few steps on a
   20 MB and on a `--big_gb` GB corpus (JSONL, then text files), and of one that only reads the
   pipeline; and the size of the data-iterator state in the checkpoint of each.
The corpora are made of the standard library's train files (one copy per document, numbered so
no two are the same) under a temporary directory, which is deleted at the end.
"""

from __future__ import annotations

import argparse
import atexit
import gzip
import json
import os
import pathlib
import runpy
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llama_fdl import host_memory  # noqa: E402
from llama_fdl.data import sources  # noqa: E402

SEQUENCE, BATCH = 256, 16


# --- Corpora --------------------------------------------------------------------------------


def _documents():
    """The stdlib's train files as texts, over and over, each copy numbered (so all differ)."""
    texts = [
        pathlib.Path(f).read_text(errors="replace") for f in sources.files_of(sources.StdlibCorpus(), "train")
    ]
    copy = 0
    while True:
        for text in texts:
            yield f"# copy {copy}\n{text}"
        copy += 1


def write_jsonl(root: pathlib.Path, total_bytes: int, file_bytes: int = 100 << 20) -> None:
    """JSONL train files of about `file_bytes` each, `total_bytes` in all, and a validation file."""
    root.mkdir(parents=True)
    docs, written, index = _documents(), 0, 0
    while written < total_bytes:
        with open(root / f"train_{index:04d}.jsonl", "w") as f:
            size = 0
            while size < min(file_bytes, total_bytes - written):
                size += f.write(json.dumps({"text": next(docs)}) + "\n")
        written, index = written + size, index + 1
    valid = [
        pathlib.Path(p).read_text(errors="replace")
        for p in sources.files_of(sources.StdlibCorpus(), "validation")
    ]
    (root / "valid.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in valid))


def write_text_files(root: pathlib.Path, total_bytes: int) -> None:
    """One document per file, in directories of 1000, `total_bytes` in all; validation apart."""
    docs, written, index = _documents(), 0, 0
    while written < total_bytes:
        path = root / "train" / f"{index // 1000:04d}" / f"doc_{index}.txt"
        if index % 1000 == 0:
            path.parent.mkdir(parents=True)
        written, index = written + path.write_text(next(docs)), index + 1
    (root / "valid").mkdir()
    for p in sources.files_of(sources.StdlibCorpus(), "validation"):
        shutil.copy(p, root / "valid" / pathlib.Path(p).name)


def gzip_copy(source: pathlib.Path, target: pathlib.Path) -> None:
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes(), compresslevel=6))


def _jsonl_source(root: pathlib.Path, suffix: str = ""):
    return sources.JsonlFiles(f"{root}/train_*.jsonl{suffix}", validation_files=f"{root}/valid.jsonl{suffix}")


def _text_source(root: pathlib.Path):
    return sources.TextFiles(f"{root}/train/**/*.txt", validation_files=f"{root}/valid/*.py")


# --- Throughput -----------------------------------------------------------------------------


def pipeline_tokens_per_second(config, seconds: float) -> float:
    """Batch positions per second of the train stream, after a warm-up."""
    from llama_fdl.data import pipeline

    it = pipeline.train_iterator(config)
    for _ in range(20):
        pipeline.next_batch(it)
    start, batches = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        pipeline.next_batch(it)
        batches += 1
    return batches * config.batch_size * config.sequence_length / (time.perf_counter() - start)


def step_tokens_per_second(experiment_name: str, steps: int = 20) -> float:
    """Batch positions per second of experiments.NAME's train step, compiled as the loop compiles
    it (`aot.compile_train_step`), on real batches."""
    import fiddle as fdl
    import jax

    import experiments
    from llama_fdl import sharding
    from llama_fdl.data import pipeline
    from llama_fdl.train import aot
    from llama_fdl.train import state as state_lib

    exp = fdl.build(getattr(experiments, experiment_name)())
    model, data, trainer = exp.model, exp.data, exp.trainer
    tx, schedule = exp.optimizer(trainer.num_train_steps)
    parallel = model.config.parallel
    state, _ = state_lib.init_state(model, tx, data.sequence_length, trainer.seed, exp.mesh, parallel)
    batch_sh = sharding.batch_sharding(exp.mesh, parallel)
    it = pipeline.train_iterator(data)
    batches = [pipeline.to_global(next(it), batch_sh) for _ in range(steps + 3)]
    step = aot.compile_train_step(
        model,
        tx,
        schedule,
        exp.mesh,
        batch_size=data.batch_size,
        sequence_length=data.sequence_length,
        seed=trainer.seed,
        num_microbatches=trainer.num_microbatches,
        skip_nonfinite=trainer.skip_nonfinite_steps,
    ).step
    for batch in batches[:3]:
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for batch in batches[3:]:
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return steps * data.batch_size * data.sequence_length / (time.perf_counter() - start)


def register_task(root: pathlib.Path) -> str:
    """A seqio Task over the text files' lines (its own source and preprocessors)."""
    from llama_fdl.data.quiet_import import seqio

    name = "benchmark_text_lines"
    seqio.TaskRegistry.add(
        name,
        source=seqio.TextLineDataSource(
            {"train": f"{root}/train/*/*.txt", "validation": f"{root}/valid/*.py"}
        ),
        preprocessors=[
            lambda ds: ds.map(lambda line: {"targets": line}),
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos,
        ],
        output_features={"targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=True)},
    )
    return name


# --- Memory (each in a fresh process) ------------------------------------------------------


def _child_read(spec: str, batches: int) -> None:
    """Reads `batches` train batches of a source; prints peak RSS and iterator-state size."""
    from llama_fdl.data import pipeline
    from llama_fdl.data.config import DataConfig
    from llama_fdl.data.quiet_import import tf

    kind, root = spec.split(":", 1)
    source = _jsonl_source(pathlib.Path(root)) if kind == "jsonl" else _text_source(pathlib.Path(root))
    config = DataConfig(sequence_length=SEQUENCE, batch_size=BATCH, source=source)
    start = time.perf_counter()
    it = pipeline.train_iterator(config)
    pipeline.next_batch(it)
    first = time.perf_counter() - start
    for _ in range(batches):
        pipeline.next_batch(it)
    with tempfile.TemporaryDirectory() as tmp:
        tf.train.Checkpoint(iterator=it).write(f"{tmp}/it")
        state = sum(p.stat().st_size for p in pathlib.Path(tmp).iterdir())
    print(json.dumps({"first_batch_s": first, "peak_rss_mb": _peak_rss_mb(), "state_kb": state / 1024}))


def _child_train(args: list[str]) -> None:
    """Runs the launcher in this process; prints its peak RSS when it exits."""
    atexit.register(lambda: print(json.dumps({"peak_rss_mb": _peak_rss_mb()}), flush=True))
    sys.argv = [str(REPO / "launch" / "launch.py"), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; getrusage's maxrss would also count the
    parent's memory this process was forked from)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _in_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def train_memory(kind: str, root: pathlib.Path, workdir: pathlib.Path, steps: int) -> dict:
    fiddler = (
        f"--fiddler=jsonl('{root}/train_*.jsonl', validation_files='{root}/valid.jsonl')"
        if kind == "jsonl"
        else f"--fiddler=text_files('{root}/train/**/*.txt', validation_files='{root}/valid/*.py')"
    )
    args = [
        "--fdl_config=experiments.small", fiddler, f"--workdir={workdir}",
        f"--fdl.trainer.num_train_steps={steps}", "--fdl.optimizer.warmup_steps=5",
        f"--fdl.trainer.eval_every={steps}", f"--fdl.trainer.log_every={steps}",
        f"--fdl.trainer.checkpoint.every_steps={steps}", "--fdl.data.num_eval_batches=2",
    ]  # fmt: skip
    result = _in_child("--_train", json.dumps(args))
    data = workdir / "checkpoints" / str(steps) / "data"
    result["checkpoint_state_kb"] = sum(p.stat().st_size for p in data.iterdir()) / 1024
    return result


# --- Main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big_gb", type=float, default=2.0, help="size of the big corpus")
    parser.add_argument("--seconds", type=float, default=8.0, help="timing per pipeline source")
    parser.add_argument("--read_batches", type=int, default=3000, help="batches read by the memory probe")
    parser.add_argument("--train_steps", type=int, default=30, help="steps of the training memory probe")
    args = parser.parse_args()

    from llama_fdl.data.config import DataConfig
    from llama_fdl.data.tokenizer import stdlib_sentencepiece
    from llama_fdl.data.vocabulary import Vocabulary

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="data_benchmark_"))
    try:
        small = 20 << 20
        write_jsonl(tmp / "jsonl_20mb", small, file_bytes=5 << 20)
        write_text_files(tmp / "text_20mb", small)
        gzip_copy(tmp / "jsonl_20mb", tmp / "jsonl_gz_20mb")
        task = register_task(tmp / "text_20mb")
        mixture = sources.Mixture(
            (
                sources.Component("jsonl", _jsonl_source(tmp / "jsonl_20mb"), 3.0),
                sources.Component("text", _text_source(tmp / "text_20mb"), 1.0),
            )
        )
        spm = Vocabulary(stdlib_sentencepiece(2048))
        rows = {
            "stdlib, bytes": DataConfig(),
            "stdlib, SentencePiece 2048": DataConfig(vocabulary=spm),
            "text files (20 MB)": DataConfig(source=_text_source(tmp / "text_20mb")),
            "JSONL (20 MB)": DataConfig(source=_jsonl_source(tmp / "jsonl_20mb")),
            "JSONL.gz (20 MB)": DataConfig(source=_jsonl_source(tmp / "jsonl_gz_20mb", ".gz")),
            "mixture JSONL:text 3:1": DataConfig(source=mixture),
            "seqio Task (text lines)": DataConfig(source=sources.SeqioTask(task)),
        }
        print(f"== Throughput: batches of {BATCH}x{SEQUENCE} token positions, on {os.cpu_count()} CPU(s)")
        steps = {name: step_tokens_per_second(name) for name in ("small", "small_spm")}
        for name, value in steps.items():
            print(f"train step of experiments.{name:10s} {value:12,.0f} tokens/s")
        for name, config in rows.items():
            rate = pipeline_tokens_per_second(config, args.seconds)
            step = steps["small_spm" if config.vocabulary.sentencepiece_model else "small"]
            print(f"pipeline: {name:28s} {rate:12,.0f} tokens/s  = {rate / step:6.1f}x the step")

        print(f"\n== Memory: 20 MB vs {args.big_gb:g} GB corpora (peak RSS of a fresh process)")
        write_text_files(tmp / "text_big", int(args.big_gb * (1 << 30)))
        write_jsonl(tmp / "jsonl_big", int(args.big_gb * (1 << 30)))
        for kind in ("jsonl", "text"):
            for size, root in (("20 MB", tmp / f"{kind}_20mb"), (f"{args.big_gb:g} GB", tmp / f"{kind}_big")):
                read = _in_child("--_read", f"{kind}:{root}", "--read_batches", str(args.read_batches))
                train = train_memory(
                    kind, root, tmp / f"run_{kind}_{size.replace(' ', '')}", args.train_steps
                )
                print(
                    f"{kind:5s} {size:>6s}: reading {args.read_batches} batches: peak RSS "
                    f"{read['peak_rss_mb']:6.0f} MB, first batch {read['first_batch_s']:.2f} s, iterator "
                    f"state {read['state_kb']:.1f} KB | training small {args.train_steps} steps: peak RSS "
                    f"{train['peak_rss_mb']:6.0f} MB, data state in the checkpoint "
                    f"{train['checkpoint_state_kb']:.1f} KB"
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if "--_read" in sys.argv:
        i = sys.argv.index("--_read")
        _child_read(sys.argv[i + 1], int(sys.argv[sys.argv.index("--read_batches") + 1]))
    elif "--_train" in sys.argv:
        _child_train(json.loads(sys.argv[sys.argv.index("--_train") + 1]))
    else:
        host_memory.reexec_with_huge_pages()  # the step as the launcher runs it (and every child)
        main()
