"""Training a SentencePiece vocabulary here, using it end to end (a run that is sampled, loaded
back and sampled by the command), and bits per byte."""

import functools
import json
import subprocess
import sys

import fiddle as fdl
import jax
import numpy as np
import pytest
import sentencepiece
from data_corpora import write_jsonl
from launcher import LAUNCH, REPO, accumulator, last_line

import experiments
from llama_fdl import builders, runner, saved_run
from llama_fdl.data import pipeline, tokenizer
from llama_fdl.data.config import DataConfig
from llama_fdl.data.sources import TextFiles
from llama_fdl.data.vocabulary import Vocabulary
from llama_fdl.model import LlamaConfig, LlamaTransformer
from llama_fdl.model.config import ParallelConfig
from llama_fdl.sharding import build_mesh
from llama_fdl.train.step import eval_step

CODE = "def f(x):\n    return x * 2  # doubles\n\n\nclass Thing:\n\tpass\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm_corpus")
    for i in range(30):
        (root / f"m{i}.py").write_text(CODE.replace("f(", f"f{i}(") * (1 + i % 4) + f"# naïve café {i}\n")
    write_jsonl(root / "docs.jsonl", 30, "j")
    return root


@pytest.fixture(scope="module")
def model_file(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("spm") / "code.model"
    args = [f"--input={corpus}/*.py", f"--input={corpus}/*.jsonl", "--vocab_size=320", f"--output={out}"]
    result = subprocess.run(
        [sys.executable, "-m", "llama_fdl.data.tokenizer", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"Wrote {out}: 320 pieces (bpe) from 31 file(s)." in result.stdout
    return str(out)


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_the_command_trains_a_model_that_gives_text_back_exactly(corpus, tmp_path, model_type):
    out = tmp_path / "m.model"
    code = tokenizer.main(
        [f"--input={corpus}/*.py", "--vocab_size=300", f"--output={out}", f"--model_type={model_type}"]
    )
    assert code == 0
    sp = sentencepiece.SentencePieceProcessor(model_file=str(out))
    assert sp.get_piece_size() == 300
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    # Spaces, tabs, newlines and characters never seen (byte fallback) all come back.
    for text in (CODE, "  x\n\n\ty = 'ünïcødé ✓ 漢字'\n", " leading space", ""):
        ids = sp.encode(text)
        assert sp.decode(ids) == text
        assert 2 not in ids  # never UNK: unseen characters become byte pieces
    assert any(sp.id_to_piece(i) == "<0x0A>" for i in range(sp.get_piece_size()))


def test_the_command_refuses_bad_input_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "llama_fdl.data.tokenizer", f"--input={tmp_path}/none/*.txt",
         "--vocab_size=300", f"--output={tmp_path}/x.model"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"error: --input glob '{tmp_path}/none/*.txt' matches no files; check the path and pattern."
    )
    assert not (tmp_path / "x.model").exists()
    (tmp_path / "bad.jsonl").write_text('{"txt": "no text field"}\n')
    assert (
        tokenizer.main([f"--input={tmp_path}/bad.jsonl", "--vocab_size=300", f"--output={tmp_path}/x.model"])
        == 1
    )
    assert not (tmp_path / "x.model").exists()


def test_the_model_vocab_size_follows_the_vocabulary(model_file):
    cfg = experiments.tiny()
    cfg.data.vocabulary.sentencepiece_model = model_file  # one setting; the model is sized by it
    built = fdl.build(cfg)
    assert built.model.config.vocab_size == 320 == built.data.vocabulary_size
    assert fdl.build(experiments.tiny()).model.config.vocab_size == 259  # control: bytes


def test_the_pipeline_tokenizes_with_the_model(model_file, corpus):
    sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
    source = TextFiles(f"{corpus}/*.py", validation_files=f"{corpus}/m1.py")
    config = DataConfig(sequence_length=32, batch_size=1, source=source, vocabulary=Vocabulary(model_file))
    rows = list(pipeline.packed_dataset(config, "validation").as_numpy_iterator())
    ids = [
        int(t)
        for r in rows
        for t, w in zip(r["decoder_target_tokens"][0], r["decoder_loss_weights"][0], strict=True)
        if w
    ]
    assert ids == sp.encode((corpus / "m1.py").read_text()) + [1]


def _bytes_decoded(vocabulary: Vocabulary, batch: dict) -> int:
    """The UTF-8 length of what each packed segment's targets decode to, summed: the reference."""
    total = 0
    seqio_vocab = vocabulary.seqio()
    for seg, targets in zip(batch["decoder_segment_ids"], batch["decoder_target_tokens"], strict=True):
        for s in np.unique(seg[seg > 0]):
            ids = [int(t) for t in targets[seg == s] if t != 1]
            total += len(seqio_vocab.decode(ids).encode("utf-8"))
    return total


@pytest.mark.parametrize("kind", ["bytes", "sentencepiece"])
def test_eval_counts_the_bytes_the_targets_decode_to(model_file, corpus, kind):
    vocabulary = Vocabulary(model_file if kind == "sentencepiece" else "")
    source = TextFiles(f"{corpus}/*.py", validation_files=f"{corpus}/m[0-3].py")
    config = DataConfig(
        sequence_length=32, batch_size=2, num_eval_batches=3, source=source, vocabulary=vocabulary
    )
    batches = pipeline.eval_sets(config)[0].batches
    model_config = LlamaConfig(vocab_size=vocabulary.size, embedding_dim=16, num_blocks=1, head_dim=8)
    model = LlamaTransformer(model_config)
    params = model.init(jax.random.key(0), batches[0]["decoder_input_tokens"])["params"]
    mesh = build_mesh(ParallelConfig())
    step = jax.jit(
        functools.partial(eval_step, model=model, mesh=mesh, byte_lengths_V=vocabulary.byte_lengths())
    )
    for batch in batches:
        stats = jax.device_get(step(params, batch))
        assert stats["byte_sum"] == _bytes_decoded(vocabulary, batch)
        # Control: counting tokens instead of bytes would not match (a piece is often several bytes).
        if kind == "sentencepiece":
            assert stats["byte_sum"] > stats["weight_sum"]


def test_the_stdlib_vocabulary_is_trained_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_FDL_CACHE", str(tmp_path))
    monkeypatch.setattr(tokenizer, "lines_of", lambda files, field="text": iter(CODE.split("\n") * 50))
    first = tokenizer.stdlib_sentencepiece(vocab_size=320)
    stamp = (tmp_path / first.split("/")[-1]).stat().st_mtime_ns
    assert tokenizer.stdlib_sentencepiece(vocab_size=320) == first
    assert (tmp_path / first.split("/")[-1]).stat().st_mtime_ns == stamp  # read, not retrained
    assert tokenizer.stdlib_sentencepiece(vocab_size=330) != first  # another recipe, another file
    assert json.dumps(first)  # a plain path, what the graph records


def test_line_segments_tokenize_to_the_tokens_of_the_whole_file(model_file, tmp_path):
    """The train stream tokenizes segments of a file alone; pieces never span a newline, so
    together they are the whole file's tokens (a segment boundary inside a line would not be)."""
    import tensorflow as tf

    from llama_fdl.data import segments

    sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
    path = tmp_path / "code.py"
    path.write_text((CODE + "x = 'naïve café ✓'\n") * 40)
    size, segment_bytes = path.stat().st_size, 200
    count = -(-size // segment_bytes)
    texts = [
        segments._lines(tf.constant(str(path)), tf.constant(size, tf.int64), tf.constant(j, tf.int64),
                        tf.constant(j == count - 1), segment_bytes).numpy().decode()
        for j in range(count)
    ]  # fmt: skip
    assert sum((sp.encode(t) for t in texts), []) == sp.encode(path.read_text())
    # Control: cutting at byte multiples instead (inside lines) changes the tokens.
    raw = path.read_bytes()
    cut = [raw[i : i + segment_bytes].decode(errors="replace") for i in range(0, size, segment_bytes)]
    assert sum((sp.encode(t) for t in cut), []) != sp.encode(path.read_text())


# --- A SentencePiece run: trained, sampled in TensorBoard, loaded back, sampled by the command ---


@pytest.fixture(scope="module")
def spm_run(model_file, corpus, tmp_path_factory):
    """experiments.small_spm in miniature: tiny on the corpus's .py files with the SentencePiece
    model, 4 steps, samples in TensorBoard at steps 2 and 4, checkpoints at 2 and 4."""
    cfg = experiments.tiny()
    cfg.data.source = builders.text_files(f"{corpus}/*.py", validation_files=f"{corpus}/m[0-9].py")
    cfg.data.vocabulary.sentencepiece_model = model_file
    cfg.data.batch_size, cfg.data.num_eval_batches = 4, 1
    cfg.optimizer.warmup_steps = 1
    cfg.trainer.num_train_steps = cfg.trainer.eval_every = 4
    cfg.trainer.checkpoint.every_steps = cfg.trainer.sample_every = 2
    workdir = tmp_path_factory.mktemp("spm_runs") / "run"
    runner.run(cfg, workdir)
    return workdir


def test_a_sentencepiece_run_writes_samples_in_its_own_vocabulary(spm_run, corpus):
    (first, last) = accumulator(spm_run).Tensors("samples/text_summary")
    assert (first.step, last.step) == (2, 4)
    text = last.tensor_proto.string_val[0].decode()
    assert text.count("prompt:") == 3 and text.count("continuation:") == 3
    # The prompts are the validation files' starts (m0.py, m1.py), 16 SentencePiece ids decoded
    # with the model: the files' own text (the same ids decoded as bytes would be other characters).
    assert "prompt:\n```\ndef f0(x):\n    retu" in text and "prompt:\n```\ndef f1(x):" in text


def test_a_sentencepiece_run_is_loaded_with_its_vocabulary_and_continues_prompts(spm_run, model_file):
    model = saved_run.load_run(spm_run)
    assert model.step == 4 and model.model.config.vocab_size == 320
    sp = sentencepiece.SentencePieceProcessor(model_file=model_file)
    prompt = "def f7(x):\n    return"
    assert model.encode([prompt]) == [sp.encode(prompt)]  # control below: bytes would give one id per byte
    assert len(sp.encode(prompt)) < len(prompt.encode())
    (greedy,) = model.complete([prompt], max_new_tokens=6, temperature=0.0, stop_at_eos=False)
    ids = list(model.vocabulary.encode(prompt))
    forward = jax.jit(lambda p, i: LlamaTransformer(model.model.config).apply({"params": p}, i))
    for _ in range(6):  # the same continuation, recomputed by full forwards in the model's vocabulary
        padded = np.zeros((1, 32), np.int32)
        padded[0, : len(ids)] = ids
        ids.append(int(np.argmax(forward(model.params, padded)[0, len(ids) - 1])))
    assert greedy == sp.decode(ids[-6:])


def test_the_sample_command_continues_with_a_sentencepiece_run(spm_run):
    result = subprocess.run(
        [sys.executable, str(REPO / "launch" / "sample.py"), f"--workdir={spm_run}", "--prompt=def f3(x):",
         "--num_samples=2", "--max_new_tokens=5"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for k in (1, 2):
        assert f"=== prompt 1, sample {k} (step 4 of {spm_run}) ===" in result.stdout
    assert result.stdout.count("\ndef f3(x):") == 2


def test_bad_input_with_a_sentencepiece_vocabulary_is_still_one_line(model_file, corpus, tmp_path):
    """tensorflow_text's SentencePiece logs a line on stderr when it loads a model; the launch-time
    check holds such chatter back, so the error stands alone."""
    result = subprocess.run(
        [*LAUNCH, "--fdl_config=experiments.tiny", f"--workdir={tmp_path / 'run'}",
         f"--fiddler=text_files('{corpus}/*.py', validation_files='{corpus}/m1.py')",
         f"--fdl.data.vocabulary.sentencepiece_model={model_file}", "--fdl.data.num_eval_batches=50"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [last_line(result.stderr)], result.stderr
    assert last_line(result.stderr).startswith("error: data.num_eval_batches=50 batches of 8x64 tokens")
    assert not (tmp_path / "run").exists()
