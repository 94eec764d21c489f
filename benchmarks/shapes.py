"""The model shapes and batches the benchmarks measure, and synthetic batches for them.

The first three are the shapes of the issue that asked for these benchmarks (issue 10); `base`
is `experiments.base`, a wider model at the demo's batch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from llama_fdl.model import LlamaConfig, num_params
from llama_fdl.train import flops


@dataclasses.dataclass(frozen=True)
class Shape:
    """A model and the batch it is trained on."""

    name: str
    vocab_size: int
    embedding_dim: int
    num_blocks: int
    head_dim: int
    batch_size: int
    sequence_length: int
    config_fields: tuple[tuple[str, object], ...] = ()
    """Further LlamaConfig fields of this shape, as (name, value) pairs."""

    def llama_config(self, **fields) -> LlamaConfig:
        """The LlamaConfig of this shape; `fields` sets others (dtype, scan_blocks, ...)."""
        return LlamaConfig(
            vocab_size=self.vocab_size,
            embedding_dim=self.embedding_dim,
            num_blocks=self.num_blocks,
            head_dim=self.head_dim,
            **{**dict(self.config_fields), **fields},
        )

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.sequence_length

    @property
    def num_params(self) -> int:
        return num_params(self.llama_config())

    @property
    def flops_per_token(self) -> float:
        """Training FLOPs per token, causal attention counted as computed (llama_fdl.train.flops)."""
        return flops.flops_per_token(self.llama_config(), self.sequence_length, causal=True)

    def describe(self) -> str:
        return (
            f"d={self.embedding_dim}, {self.num_blocks} blocks, head_dim {self.head_dim}, "
            f"vocab {self.vocab_size}, {self.batch_size} x {self.sequence_length}"
        )


SHAPES = {
    s.name: s
    for s in (
        Shape("d128x2", 256, 128, 2, 64, 8, 128),
        Shape("small", 259, 128, 4, 64, 16, 256),
        Shape("58M", 32000, 512, 8, 64, 4, 512),
        Shape("base", 259, 256, 4, 64, 16, 256),
    )
}
"""By name: the issue's three shapes (`small` is experiments.small) and experiments.base."""

LLAMA_1B = Shape(
    "1b",
    259,
    2048,
    16,
    64,
    8,
    2048,
    config_fields=(("theta", 500000.0), ("ffn_multiple_of", 256), ("ffn_dim_multiplier", 1.5)),
)
"""experiments.llama_1b's model (byte vocabulary) at 8 x 2048 tokens: for one GPU, not a CPU."""

TOY = Shape("toy", 64, 32, 2, 16, 2, 16)
"""Seconds to build and step: what the smoke test runs."""


def synthetic_batch(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tokens in the layout of a packed seqio batch: one document per row, no padding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, shape.vocab_size, (shape.batch_size, shape.sequence_length + 1), np.int32)
    ones = np.ones((shape.batch_size, shape.sequence_length), np.int32)
    positions = np.broadcast_to(np.arange(shape.sequence_length, dtype=np.int32), ones.shape)
    return {
        "decoder_input_tokens": tokens[:, :-1],
        "decoder_target_tokens": tokens[:, 1:],
        "decoder_loss_weights": ones,
        "decoder_segment_ids": ones,
        "decoder_positions": np.ascontiguousarray(positions),
    }
