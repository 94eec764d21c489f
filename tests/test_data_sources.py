"""JSONL files and registered seqio Tasks and Mixtures as sources, and every bad data input as one
clear line that leaves no run directory behind."""

import gzip
import json
import os
import pathlib
import re
import sys
import textwrap
import uuid

import numpy as np
import pytest
from data_corpora import write_jsonl, write_jsonl_corpus

import experiments
from llama_fdl import builders, runner
from llama_fdl.data import pipeline
from llama_fdl.data.config import DataConfig
from llama_fdl.data.sources import DataError, JsonlFiles, SeqioTask


def _text_of(targets) -> bytes:
    return bytes(int(t) - 3 for t in np.ravel(targets) if t >= 3)


def _validation_text(config: DataConfig) -> bytes:
    config.batch_size, config.num_eval_batches = 1, 1
    ds = pipeline.packed_dataset(config, "validation")
    return b"".join(_text_of(b["decoder_target_tokens"]) for b in ds.as_numpy_iterator())


def test_jsonl_reads_the_field_of_each_line_gzipped_or_not(tmp_path):
    plain = write_jsonl(tmp_path / "a.jsonl", 5, "a", field="body")
    zipped = write_jsonl(tmp_path / "b.jsonl.gz", 5, "b", field="body")
    with open(tmp_path / "a.jsonl", "a") as f:
        f.write("\n   \n")  # blank lines are skipped
    source = JsonlFiles(f"{tmp_path}/*.jsonl*", validation_files=f"{tmp_path}/*.jsonl*", field="body")
    text = _validation_text(DataConfig(sequence_length=64, source=source))
    assert text == "".join(plain + zipped).encode()


def _bad_jsonl(tmp_path: pathlib.Path, line: str, split: str) -> DataConfig:
    write_jsonl_corpus(tmp_path)
    target = tmp_path / ("valid.jsonl" if split == "validation" else "train_1.jsonl")
    lines = target.read_text().splitlines()
    lines.insert(0 if split == "validation" else 33, line)
    target.write_text("\n".join(lines) + "\n")
    source = JsonlFiles(f"{tmp_path}/*.jsonl*", validation_files=f"{tmp_path}/valid.jsonl")
    return DataConfig(sequence_length=64, batch_size=2, num_eval_batches=1, source=source)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "unterminated', r"valid.jsonl line 1 is not JSON \(Unterminated string"),
        ('{"body": "no text here"}', r"valid.jsonl line 1 has no field 'text' \(it has \['body'\]\)"),
        ('{"text": 42}', r"valid.jsonl line 1: field 'text' is a int, not text"),
    ],
)
def test_a_bad_jsonl_line_is_named_by_file_and_line(tmp_path, line, message):
    config = _bad_jsonl(tmp_path, line, "validation")
    with pytest.raises(DataError, match=message + r".*; fix or remove that line\.$"):
        pipeline.check(config)


def test_a_bad_line_deep_in_a_train_file_stops_training_with_its_name(tmp_path):
    config = _bad_jsonl(tmp_path, "not json at all", "train")
    it = pipeline.train_iterator(config)
    with pytest.raises(DataError, match=r"train_1.jsonl line 34 is not JSON"):
        for _ in range(2000):
            pipeline.next_batch(it)


@pytest.fixture
def task_module(tmp_path, monkeypatch):
    """A module, importable by name, that registers a Task (with its own preprocessor, which
    upper-cases the text), a second Task and a Mixture of the two; names unique to this test."""
    import seqio

    tag = uuid.uuid4().hex[:8]
    name = f"tasks_{tag}"
    long_doc = "a long document " * 40  # 640 bytes: 10 chunks of 64
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(f"""
        import functools
        import seqio
        import tensorflow as tf

        DOCS = {{
            "train": ["first train doc", "second train doc", {long_doc!r}] * 5,
            "validation": ["one validation doc", {long_doc!r}] * 8,
        }}

        def source(split, shuffle_files, seed=None):
            return tf.data.Dataset.from_tensor_slices({{"text": DOCS[split]}})

        def shout(ds):
            return ds.map(lambda ex: {{"text": tf.strings.upper(ex["text"])}})

        for suffix in ("", "_other"):
            seqio.TaskRegistry.add(
                "task_{tag}" + suffix,
                source=seqio.FunctionDataSource(source, splits=("train", "validation")),
                preprocessors=[
                    shout,
                    functools.partial(seqio.preprocessors.rekey, key_map={{"targets": "text"}}),
                    seqio.preprocessors.tokenize,
                    seqio.preprocessors.append_eos,
                ],
                output_features={{"targets": seqio.Feature(seqio.ByteVocabulary(), add_eos=True)}},
            )
        seqio.MixtureRegistry.add("mix_{tag}", [("task_{tag}", 2.0), ("task_{tag}_other", 1.0)])
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, f"task_{tag}", f"mix_{tag}", long_doc
    for provider in (f"task_{tag}", f"task_{tag}_other"):
        seqio.TaskRegistry.remove(provider)
    seqio.MixtureRegistry.remove(f"mix_{tag}")
    sys.modules.pop(name, None)


def test_a_registered_task_runs_its_preprocessors_then_ours(task_module):
    module, task, _, long_doc = task_module
    config = DataConfig(sequence_length=64, batch_size=1, source=SeqioTask(task), module=module)
    ds = pipeline.packed_dataset(config, "validation")
    rows = list(ds.as_numpy_iterator())
    text = b"".join(_text_of(r["decoder_target_tokens"]) for r in rows)
    # Its preprocessor upper-cased the text; ours cut the long document into chunks (nothing
    # truncated) and ended each document with one EOS, the Task's own EOS dropped.
    assert text == ("ONE VALIDATION DOC" + long_doc.upper()).encode() * 8
    eos = sum(int((r["decoder_target_tokens"] == 1).sum()) for r in rows)
    assert eos == 16
    assert next(pipeline.train_iterator(config))["decoder_target_tokens"].shape == (1, 64)


def test_a_registered_task_resumes_exactly_from_an_iterator_checkpoint(task_module, tmp_path):
    import tensorflow as tf

    module, task, _, _ = task_module
    config = DataConfig(sequence_length=32, batch_size=2, source=SeqioTask(task), module=module)
    it = pipeline.train_iterator(config)
    for _ in range(23):
        next(it)
    path = tf.train.Checkpoint(iterator=it).write(str(tmp_path / "it"))
    expected = [next(it)["decoder_target_tokens"].numpy() for _ in range(20)]
    fresh = pipeline.train_iterator(config)
    tf.train.Checkpoint(iterator=fresh).read(path).assert_consumed()
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["decoder_target_tokens"].numpy(), want)
    # Control: without the restore the stream starts elsewhere.
    assert not np.array_equal(
        next(pipeline.train_iterator(config))["decoder_target_tokens"].numpy(), expected[0]
    )


def test_a_registered_mixture_is_evaluated_per_task(task_module):
    module, task, mixture, _ = task_module
    config = DataConfig(
        sequence_length=64, batch_size=2, num_eval_batches=2, source=SeqioTask(mixture), module=module
    )
    pipeline.check(config)
    assert [s.prefix for s in pipeline.eval_sets(config)] == ["eval/", f"eval/{task}/", f"eval/{task}_other/"]


def test_the_fiddler_and_the_module_setting_choose_a_task(task_module):
    module, task, _, _ = task_module
    cfg = experiments.tiny()
    experiments.seqio_task(cfg, task, module=module)
    built = runner.check(cfg)
    assert built.data.source == SeqioTask(task) and built.data.modules == (module,)


# --- Bad input: one line, nothing written ---------------------------------------------------


def _sentencepiece_model_of_another_size(tmp_path) -> str:
    from llama_fdl.data import tokenizer

    corpus = tmp_path / "spm.txt"
    corpus.write_text("".join(f"line {i} of some text to learn pieces from\n" for i in range(300)))
    return str(tokenizer.train(tokenizer.lines_of([str(corpus)]), 300, tmp_path / "spm.model"))


def _jsonl_with_bad_line(cfg, tmp_path: pathlib.Path, line: str) -> None:
    """cfg reads a JSONL corpus whose validation file starts with `line`."""
    source = _bad_jsonl(tmp_path / "jsonl", line, "validation").source
    cfg.data.source = builders.jsonl_files(source.files, validation_files=source.validation_files)


BAD = {
    "glob matches nothing": (
        lambda cfg, tmp: setattr(cfg.data, "source", builders.text_files(f"{tmp}/none/*.txt")),
        r"TextFiles files glob '.*/none/\*.txt' matches no files; check the path and pattern\.",
    ),
    "no validation files": (
        lambda cfg, tmp: setattr(cfg.data, "source", builders.jsonl_files(f"{tmp}/one/*.jsonl")),
        r"JsonlFiles\(files=.*\) has no validation files; pass validation_files=GLOB\.",
    ),
    "jsonl line not json": (
        lambda cfg, tmp: _jsonl_with_bad_line(cfg, tmp, '{"text": "unterminated'),
        r"valid.jsonl line 1 is not JSON \(Unterminated string.*\); fix or remove that line\.$",
    ),
    "jsonl line lacks the field": (
        lambda cfg, tmp: _jsonl_with_bad_line(cfg, tmp, '{"body": "no text here"}'),
        r"valid.jsonl line 1 has no field 'text' \(it has \['body'\]\); fix or remove that line\.$",
    ),
    "unknown task": (
        lambda cfg, tmp: setattr(cfg.data, "source", builders.seqio_task("glue_cola_v200")),
        r"No seqio Task or Mixture is registered as 'glue_cola_v200' \(nearest: glue_cola_v2",
    ),
    "module fails to import": (
        lambda cfg, tmp: setattr(cfg.data, "module", "no_such_tasks_module"),
        r"data.module 'no_such_tasks_module' failed to import: ModuleNotFoundError",
    ),
    "vocabulary missing": (
        lambda cfg, tmp: setattr(cfg.data.vocabulary, "sentencepiece_model", f"{tmp}/none.model"),
        r"sentencepiece_model='.*none.model' does not exist; train one with `python -m llama_fdl",
    ),
    "vocabulary not a model": (
        lambda cfg, tmp: setattr(cfg.data.vocabulary, "sentencepiece_model", f"{tmp}/one/a.jsonl"),
        r"sentencepiece_model='.*a.jsonl' is not a SentencePiece model",
    ),
    "vocabulary size disagrees": (
        lambda cfg, tmp: setattr(cfg.model.config, "vocab_size", 300),
        r"model.config.vocab_size=300 but data.vocabulary has 259 ids; .* or set it to 259\.",
    ),
    "task vocabulary differs": (
        lambda cfg, tmp: (
            setattr(cfg.data, "source", builders.seqio_task("glue_cola_v2")),
            setattr(cfg.data.vocabulary, "sentencepiece_model", _sentencepiece_model_of_another_size(tmp)),
        ),
        r"seqio Task 'glue_cola_v2' tokenizes with .* but data.vocabulary is .*; set",
    ),
    "eval set too big": (
        lambda cfg, tmp: setattr(cfg.data, "num_eval_batches", 5000),
        r"data.num_eval_batches=5000 .* do not fit in the validation split, which fills \d+; lower",
    ),
}


@pytest.fixture(scope="module")
def glue_like_task():
    """A registered Task named like a real one, so the nearest-name hint has something to find."""
    import seqio
    import tensorflow as tf

    seqio.TaskRegistry.add(
        "glue_cola_v2",
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensors({"targets": "x"}),
            splits=("train", "validation"),
        ),
        preprocessors=[seqio.preprocessors.tokenize],
        output_features={"targets": seqio.Feature(seqio.ByteVocabulary())},
    )
    yield
    seqio.TaskRegistry.remove("glue_cola_v2")


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_input_is_one_line_before_the_run_directory_exists(tmp_path, case, glue_like_task):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    change, message = BAD[case]
    cfg = experiments.tiny()
    change(cfg, tmp_path)
    with pytest.raises(ValueError, match=message) as error:
        runner.run(cfg, tmp_path / "run")
    assert re.search(message, runner.one_line(error.value))  # what the launcher prints, alone
    assert not (tmp_path / "run").exists()


def test_gzip_is_recognised_by_name_not_content(tmp_path):
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress(b'{"text": "zipped"}\n'))
    source = JsonlFiles(f"{tmp_path}/*.gz", validation_files=f"{tmp_path}/*.gz")
    assert _validation_text(DataConfig(sequence_length=16, source=source)) == b"zipped"


def test_held_back_stderr_is_shown_only_when_it_may_explain_a_failure(capfd):
    from llama_fdl.data.quiet_import import quiet_stderr

    def chatter_then(error):
        with quiet_stderr():
            os.write(2, b"library chatter\n")
            if error:
                raise error

    chatter_then(None)
    with pytest.raises(ValueError):
        chatter_then(ValueError("one line for a person"))
    assert "chatter" not in capfd.readouterr().err
    with pytest.raises(RuntimeError):  # control: an unexpected failure shows what was held back
        chatter_then(RuntimeError("crash"))
    assert capfd.readouterr().err == "library chatter\n"
