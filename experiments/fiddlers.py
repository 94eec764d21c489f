"""Fiddlers: functions that change an experiment graph in place, applied with --fiddler=NAME.

Each changes one aspect and works on every experiment of the library; tests apply each to
`tiny` and check that it changed the graph and that the result still builds and initialises.
Fiddlers run before --fdl.PATH=VALUE settings, so a setting on the command line wins.
"""

import fiddle as fdl

from llama_fdl import builders
from llama_fdl.model import xlstm_jax
from llama_fdl.model.config import RematPolicy


def bf16(cfg: fdl.Config) -> None:
    """Compute in bfloat16 (parameters and logits stay float32)."""
    cfg.model.config.dtype = "bfloat16"


def no_scan(cfg: fdl.Config) -> None:
    """Unroll the transformer blocks instead of nn.scan (slower compiles, per-block params)."""
    cfg.model.config.scan_blocks = False


def doc_masking(cfg: fdl.Config) -> None:
    """Attend only within each packed document."""
    cfg.model.config.mask_across_document_boundaries = True


def fsdp(cfg: fdl.Config, size: int = -1) -> None:
    """Shard parameters, optimizer state and the batch over `size` devices (-1: all of them).

    The data axis takes whatever devices are left. The mesh and the model share one
    ParallelConfig, so this one change lays out both.
    """
    parallel = cfg.model.config.parallel
    parallel.fsdp_axis_size = size
    parallel.data_axis_size = 1 if size == -1 else -1


def remat(cfg: fdl.Config, policy: RematPolicy = "full") -> None:
    """Recompute each block's activations in the backward pass: less memory, about 1/3 more compute
    for 'full' (also 'dots_saveable', 'attention', 'ffn', 'attention_and_ffn')."""
    cfg.model.config.parallel.remat = policy


def long_context(cfg: fdl.Config, sequence_length: int = 1024) -> None:
    """Train on `sequence_length`-token sequences, keeping the tokens per batch (fewer, longer rows).

    The eval set keeps its size in tokens too, so its loss stays comparable with the parent's.
    A length that does not divide the tokens per batch (or exceeds them) would change them, so it
    is refused, naming the lengths that work.
    """
    data = cfg.data
    tokens_per_batch = data.batch_size * data.sequence_length
    if sequence_length < 1 or tokens_per_batch % sequence_length:
        longer = range(data.sequence_length + 1, tokens_per_batch + 1)
        fits = ", ".join([str(n) for n in longer if tokens_per_batch % n == 0][:6]) or "none is longer"
        raise ValueError(
            f"long_context({sequence_length}) cannot keep the {tokens_per_batch:,} tokens per batch "
            f"({data.batch_size} x {data.sequence_length}); pick a sequence_length that divides "
            f"them: {fits}."
        )
    data.batch_size = tokens_per_batch // sequence_length
    data.sequence_length = sequence_length


def xlstm_parallel(cfg: fdl.Config, **keywords) -> None:
    """Lay out model and mesh from xlstm-jax ParallelConfig keywords (remat=['AttnBlock'], ...).

    The shared ParallelConfig becomes a call of `llama_fdl.model.xlstm_jax.parallel_config`, so
    later --fdl.model.config.parallel.NAME settings use xlstm-jax's names too.
    """
    parallel = fdl.Config(xlstm_jax.parallel_config, **keywords)
    cfg.model.config.parallel = parallel
    cfg.mesh.parallel = parallel


def text_files(
    cfg: fdl.Config, files: str | tuple[str, ...], validation_files: str | tuple[str, ...] = ""
) -> None:
    """Train on text files matched by glob(s), each file one document.

    Validation is `validation_files` (taken out of `files`), or else the files whose path hash
    puts them there (about 2%). Example: --fiddler='text_files("corpus/**/*.txt")'.
    """
    cfg.data.source = builders.text_files(files, validation_files)


def jsonl(
    cfg: fdl.Config,
    files: str | tuple[str, ...],
    validation_files: str | tuple[str, ...] = "",
    field: str = "text",
) -> None:
    """Train on JSON Lines files (`.gz` too), each line one document with its text in `field`.

    Example: --fiddler='jsonl("data/*.jsonl.gz", validation_files="data/valid.jsonl.gz")'.
    """
    cfg.data.source = builders.jsonl_files(files, validation_files, field)


def seqio_task(cfg: fdl.Config, name: str, module: str | tuple[str, ...] = "") -> None:
    """Train on a registered seqio Task or Mixture, importing `module` first (it registers it).

    Example: --fiddler='seqio_task("my_mixture", module="my_tasks")'; the module may also be
    given as --fdl.data.module=my_tasks.
    """
    cfg.data.source = builders.seqio_task(name)
    if module:
        cfg.data.module = module


def smoke(cfg: fdl.Config, steps: int = 4) -> None:
    """Any experiment at tiny's sizes for `steps` steps: a command line checked end to end in seconds.

    d=32, 2 blocks of head_dim 16, 64-token sequences, batch 8, 2 eval batches, warmup 1, an eval
    and a checkpoint at the end, no samples; everything else (mesh, dtype, layout, data source)
    as the experiment has it. Values on the command line still win over it, so a command that sets
    trainer.num_train_steps itself also needs --fdl.trainer.num_train_steps=STEPS to stay short.
    tests/test_readme.py runs the README's training commands with both added.
    """
    model, data, trainer = cfg.model.config, cfg.data, cfg.trainer
    model.embedding_dim, model.num_blocks, model.head_dim = 32, 2, 16
    data.sequence_length, data.batch_size, data.num_eval_batches = 64, 8, 2
    cfg.optimizer.warmup_steps = 1
    trainer.num_train_steps = steps
    trainer.eval_every = trainer.log_every = trainer.checkpoint.every_steps = steps
    trainer.sample_every = 0
