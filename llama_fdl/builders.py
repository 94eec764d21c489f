"""Fiddle builders: functions returning the `fdl.Config` graphs that experiments start from.

Each builder covers one part (model, mesh, optimizer, data, trainer) and `experiment()` wires them
together. The one `ParallelConfig` node is shared by the model and the mesh, so the mesh axes have
a single home: setting `model.config.parallel.fsdp_axis_size` also changes the mesh. Likewise the
one `Vocabulary` node is shared by the data and the model's `vocab_size`, which is derived from it
when the graph is built: setting `data.vocabulary.sentencepiece_model` also sizes the model.

Data sources have one builder each (`stdlib_corpus`, `text_files`, `jsonl_files`, `seqio_task`,
`mixture` of `component`s); an experiment switches data by setting `cfg.data.source` to one.

Tags name values that a user may want to set by meaning rather than by path
(`--fdl_tag.DType=bfloat16`, or `fdl.set_tagged(cfg, tag=DType, value=...)` in a notebook).
"""

from __future__ import annotations

import fiddle as fdl

from llama_fdl import optim
from llama_fdl.data.config import DataConfig
from llama_fdl.data.sources import Component, Globs, JsonlFiles, Mixture, SeqioTask, StdlibCorpus, TextFiles
from llama_fdl.data.vocabulary import Vocabulary, vocabulary_size
from llama_fdl.model import LlamaConfig, LlamaTransformer, ParallelConfig
from llama_fdl.sharding import build_mesh
from llama_fdl.train.checkpoint import CheckpointConfig
from llama_fdl.train.config import Experiment, TrainerConfig


class DType(fdl.Tag):
    """The compute dtype of the model: float32, bfloat16 or float16 (parameters stay float32)."""


def parallel() -> fdl.Config[ParallelConfig]:
    """All devices on the data axis; no FSDP, no tensor parallelism, the default (minimal) remat."""
    return fdl.Config(ParallelConfig)


def vocabulary() -> fdl.Config[Vocabulary]:
    """Bytes: seqio's ByteVocabulary, 259 ids."""
    return fdl.Config(Vocabulary)


def model(
    parallel_config: fdl.Config[ParallelConfig] | None = None,
    vocabulary_config: fdl.Config[Vocabulary] | None = None,
    *,
    embedding_dim: int = 256,
    num_blocks: int = 4,
    head_dim: int = 64,
) -> fdl.Config[LlamaTransformer]:
    """A Llama sized for its vocabulary (bytes by default); other LlamaConfig fields keep their
    defaults until an experiment sets them."""
    vocabulary_config = vocabulary_config if vocabulary_config is not None else vocabulary()
    llama_config = fdl.Config(
        LlamaConfig,
        vocab_size=fdl.Config(vocabulary_size, vocabulary=vocabulary_config),
        embedding_dim=embedding_dim,
        num_blocks=num_blocks,
        head_dim=head_dim,
        parallel=parallel_config if parallel_config is not None else parallel(),
    )
    fdl.add_tag(llama_config, "dtype", DType)
    return fdl.Config(LlamaTransformer, config=llama_config)


def mesh(parallel_config: fdl.Config[ParallelConfig]) -> fdl.Config:
    """The device mesh, laid out by the ParallelConfig the model shares."""
    return fdl.Config(build_mesh, parallel=parallel_config)


def optimizer() -> fdl.Partial:
    """AdamW, warmup 100 then cosine, weight decay 0.1, clipping at 1.0; the loop adds the step count."""
    return fdl.Partial(optim.adamw)


def data(vocabulary_config: fdl.Config[Vocabulary] | None = None) -> fdl.Config[DataConfig]:
    """The stdlib corpus in bytes with DataConfig's defaults (256-token sequences, batch 16)."""
    vocabulary_config = vocabulary_config if vocabulary_config is not None else vocabulary()
    return fdl.Config(DataConfig, source=stdlib_corpus(), vocabulary=vocabulary_config)


def stdlib_corpus() -> fdl.Config[StdlibCorpus]:
    """The `.py` files of this interpreter's standard library, each one document; no download."""
    return fdl.Config(StdlibCorpus)


def text_files(files: Globs, validation_files: Globs = "") -> fdl.Config[TextFiles]:
    """Text files, each one document; validation by its own glob(s) or by the file-hash rule."""
    return fdl.Config(TextFiles, files=files, validation_files=validation_files)


def jsonl_files(files: Globs, validation_files: Globs = "", field: str = "text") -> fdl.Config[JsonlFiles]:
    """JSON Lines files (`.gz` too), each line one document whose text is in `field`."""
    return fdl.Config(JsonlFiles, files=files, validation_files=validation_files, field=field)


def seqio_task(name: str) -> fdl.Config[SeqioTask]:
    """A registered seqio Task or Mixture; set `data.module` to the module that registers it."""
    return fdl.Config(SeqioTask, name=name)


def component(name: str, source: fdl.Config, rate: float = 1.0) -> fdl.Config[Component]:
    """One source of a mixture: its name (for eval/<name>/loss), the source, its sampling rate."""
    return fdl.Config(Component, name=name, source=source, rate=rate)


def mixture(*components: fdl.Config[Component]) -> fdl.Config[Mixture]:
    """Chunks of several sources sampled at their rates; each also evaluated on its own."""
    return fdl.Config(Mixture, components=tuple(components))


def trainer() -> fdl.Config[TrainerConfig]:
    """Run length, eval/log intervals and checkpoints, with TrainerConfig's defaults."""
    return fdl.Config(TrainerConfig, checkpoint=fdl.Config(CheckpointConfig))


def experiment() -> fdl.Config[Experiment]:
    """The full graph: model, mesh, optimizer, data and trainer, sharing one ParallelConfig and
    one Vocabulary."""
    shared_parallel, shared_vocabulary = parallel(), vocabulary()
    return fdl.Config(
        Experiment,
        model=model(shared_parallel, shared_vocabulary),
        mesh=mesh(shared_parallel),
        optimizer=optimizer(),
        data=data(shared_vocabulary),
        trainer=trainer(),
    )
