"""Fiddle builders: functions returning the `fdl.Config` graphs that experiments start from.

Each builder covers one part (model, mesh, optimizer, data, trainer) and `experiment()` wires them
together. The one `ParallelConfig` node is shared by the model and the mesh, so the mesh axes have
a single home: setting `model.config.parallel.fsdp_axis_size` also changes the mesh.

Tags name values that a user may want to set by meaning rather than by path
(`--fdl_tag.DType=bfloat16`, or `fdl.set_tagged(cfg, tag=DType, value=...)` in a notebook).
"""

from __future__ import annotations

import fiddle as fdl

from llama_fdl import optim
from llama_fdl.data.config import BYTE_VOCAB_SIZE, DataConfig
from llama_fdl.model import LlamaConfig, LlamaTransformer, ParallelConfig
from llama_fdl.sharding import build_mesh
from llama_fdl.train.checkpoint import CheckpointConfig
from llama_fdl.train.config import Experiment, TrainerConfig


class DType(fdl.Tag):
    """The compute dtype of the model: float32, bfloat16 or float16 (parameters stay float32)."""


def parallel() -> fdl.Config[ParallelConfig]:
    """All devices on the data axis; no FSDP, no tensor parallelism, no remat."""
    return fdl.Config(ParallelConfig)


def model(
    parallel_config: fdl.Config[ParallelConfig] | None = None,
    *,
    embedding_dim: int = 256,
    num_blocks: int = 4,
    head_dim: int = 64,
) -> fdl.Config[LlamaTransformer]:
    """A byte-level Llama; other LlamaConfig fields keep their defaults until an experiment sets them."""
    llama_config = fdl.Config(
        LlamaConfig,
        vocab_size=BYTE_VOCAB_SIZE,
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


def data() -> fdl.Config[DataConfig]:
    """The stdlib-bytes corpus with DataConfig's defaults (256-token sequences, batch 16)."""
    return fdl.Config(DataConfig)


def trainer() -> fdl.Config[TrainerConfig]:
    """Run length, eval/log intervals and checkpoints, with TrainerConfig's defaults."""
    return fdl.Config(TrainerConfig, checkpoint=fdl.Config(CheckpointConfig))


def experiment() -> fdl.Config[Experiment]:
    """The full graph: model, mesh, optimizer, data and trainer, sharing one ParallelConfig."""
    shared_parallel = parallel()
    return fdl.Config(
        Experiment,
        model=model(shared_parallel),
        mesh=mesh(shared_parallel),
        optimizer=optimizer(),
        data=data(),
        trainer=trainer(),
    )
