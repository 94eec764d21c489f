"""Model configuration: `LlamaConfig` and `ParallelConfig`.

Both are plain dataclasses of strings, numbers and booleans so that Fiddle graphs holding them
serialize to JSON. The field set and defaults of `LlamaConfig` mirror
`xlstm_jax.models.llama.llama.LlamaConfig`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal

import jax.numpy as jnp

# Each choice is spelled once, here; the tuples are derived, and the command line's type check
# reads the Literals (so a typo there gets the nearest valid name).
AttentionBackend = Literal["xla", "pallas_triton", "cudnn"]
RematPolicy = Literal["none", "full", "dots_saveable"]
ComputeDType = Literal["float32", "bfloat16", "float16"]

ATTENTION_BACKENDS: tuple[str, ...] = typing.get_args(AttentionBackend)
REMAT_POLICIES: tuple[str, ...] = typing.get_args(RematPolicy)
COMPUTE_DTYPES: tuple[str, ...] = typing.get_args(ComputeDType)


@dataclasses.dataclass
class ParallelConfig:
    """How the model is laid out on the device mesh, and what is rematerialized."""

    data_axis_name: str = "data"
    """Mesh axis over which the batch is split (pure data parallelism)."""
    fsdp_axis_name: str = "fsdp"
    """Mesh axis over which parameters, optimizer state and the batch are split."""
    tensor_axis_name: str = "tensor"
    """Mesh axis over which attention heads and the MLP hidden units are split."""
    data_axis_size: int = -1
    """Devices on the data axis; -1 means all devices not used by the other axes."""
    fsdp_axis_size: int = 1
    """Devices on the fsdp axis; -1 means all devices not used by the other axes."""
    tensor_axis_size: int = 1
    """Devices on the tensor axis; -1 means all devices not used by the other axes."""
    fsdp_min_weight_size: int = 2**18
    """Parameters with fewer elements than this stay replicated instead of FSDP-sharded."""
    remat: RematPolicy = "none"
    """Rematerialization of each transformer block: none, full, or dots_saveable."""

    def __post_init__(self) -> None:
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"ParallelConfig.remat={self.remat!r} is not one of {REMAT_POLICIES}.")
        for name in ("data_axis_size", "fsdp_axis_size", "tensor_axis_size"):
            size = getattr(self, name)
            if size == 0 or size < -1:
                raise ValueError(f"ParallelConfig.{name}={size} must be a positive size or -1.")

    @property
    def axis_names(self) -> tuple[str, str, str]:
        return (self.data_axis_name, self.fsdp_axis_name, self.tensor_axis_name)

    @property
    def axis_sizes(self) -> tuple[int, int, int]:
        return (self.data_axis_size, self.fsdp_axis_size, self.tensor_axis_size)


@dataclasses.dataclass
class LlamaConfig:
    """Hyperparameters of a Llama-style decoder-only transformer."""

    vocab_size: int
    """Number of token ids the embedding and the output head cover."""
    embedding_dim: int
    """Width of the residual stream."""
    num_blocks: int
    """Number of transformer blocks (self-attention + feed-forward each)."""
    head_dim: int = 128
    """Width of one attention head; the number of heads is embedding_dim // head_dim."""
    qk_norm: bool = False
    """Apply RMSNorm over each head's queries and keys before the dot product."""
    causal: bool = True
    """Mask attention to earlier positions only; False makes attention bidirectional."""
    theta: float = 1e4
    """Base of the rotary position frequencies."""
    ffn_multiple_of: int = 64
    """The feed-forward hidden width is rounded up to a multiple of this."""
    ffn_dim_multiplier: float = 1.0
    """Multiplier on the default feed-forward hidden width of 8/3 * embedding_dim."""
    use_bias: bool = False
    """Add biases to the linear projections."""
    scan_blocks: bool = True
    """Run the blocks with nn.scan over stacked parameters (fast compiles) instead of unrolled."""
    attention_backend: AttentionBackend = "xla"
    """Attention kernel: xla (everywhere), pallas_triton (flash kernel), cudnn (GPU only)."""
    mask_across_document_boundaries: bool = False
    """Tokens attend only within their own packed document (needs segment ids)."""
    dtype: ComputeDType = "float32"
    """Compute dtype: float32, bfloat16 or float16. Parameters stay float32, logits float32."""
    dropout_rate: float = 0.0
    """Dropout on attention and feed-forward outputs while training."""
    add_embedding_dropout: bool = False
    """Also apply dropout to the token embeddings while training."""
    logits_soft_cap: float | None = None
    """If set, logits become cap * tanh(logits / cap)."""
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    """Mesh axes and memory levers."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ValueError with one sentence naming the bad field and what would be right."""
        for name in ("vocab_size", "embedding_dim", "num_blocks", "head_dim", "ffn_multiple_of"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LlamaConfig.{name}={value!r} must be a positive integer.")
        if self.embedding_dim % self.head_dim:
            raise ValueError(
                f"LlamaConfig.embedding_dim={self.embedding_dim} is not divisible by "
                f"head_dim={self.head_dim}; pick a head_dim that divides it "
                f"(for example {_divisors_near(self.embedding_dim, self.head_dim)})."
            )
        if self.head_dim % 2:
            raise ValueError(
                f"LlamaConfig.head_dim={self.head_dim} must be even: rotary embeddings rotate "
                "pairs of channels."
            )
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"LlamaConfig.dtype={self.dtype!r} is not one of {COMPUTE_DTYPES}.")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"LlamaConfig.attention_backend={self.attention_backend!r} is not one of "
                f"{ATTENTION_BACKENDS}."
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"LlamaConfig.dropout_rate={self.dropout_rate} must be in [0, 1).")
        if self.ffn_dim_multiplier <= 0:
            raise ValueError(f"LlamaConfig.ffn_dim_multiplier={self.ffn_dim_multiplier} must be > 0.")
        if self.theta <= 0:
            raise ValueError(f"LlamaConfig.theta={self.theta} must be > 0.")
        if self.logits_soft_cap is not None and self.logits_soft_cap <= 0:
            raise ValueError(f"LlamaConfig.logits_soft_cap={self.logits_soft_cap} must be > 0 or None.")

    def check_platform(self, platform: str) -> None:
        """Raises ValueError if JAX's `platform` ("cpu", "gpu", "tpu") cannot run this config.

        Run once per launch at config-check time (llama_fdl.runner.check), not by the model:
        cuDNN attention needs a GPU and a 16-bit compute dtype.
        """
        if self.attention_backend != "cudnn":
            return
        if platform != "gpu":
            raise ValueError(
                f"attention_backend='cudnn' needs a GPU, but JAX runs on {platform!r}; "
                "use attention_backend='xla' or 'pallas_triton' here."
            )
        if self.dtype not in ("bfloat16", "float16"):
            raise ValueError(
                f"attention_backend='cudnn' supports dtype bfloat16 or float16, not {self.dtype}; "
                "set dtype='bfloat16' or use attention_backend='xla' or 'pallas_triton'."
            )

    @property
    def num_heads(self) -> int:
        return self.embedding_dim // self.head_dim

    @property
    def ffn_hidden_dim(self) -> int:
        """8/3 * embedding_dim * ffn_dim_multiplier, rounded up to ffn_multiple_of."""
        hidden = int(8 * self.embedding_dim / 3 * self.ffn_dim_multiplier)
        return self.ffn_multiple_of * math.ceil(hidden / self.ffn_multiple_of)

    @property
    def _dtype(self) -> jnp.dtype:
        """The jnp dtype named by `dtype`."""
        return jnp.dtype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _divisors_near(n: int, target: int) -> str:
    divisors = sorted((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - target))
    return ", ".join(str(d) for d in divisors[:3])


def num_params(config: LlamaConfig) -> int:
    """Closed-form parameter count of `LlamaTransformer(config)` (untied embedding and head)."""
    d, f, v, n_layers = config.embedding_dim, config.ffn_hidden_dim, config.vocab_size, config.num_blocks
    attn = 4 * d * d + (4 * d if config.use_bias else 0)
    qk_norm = 2 * config.head_dim if config.qk_norm else 0
    ffn = 3 * d * f + ((2 * f + d) if config.use_bias else 0)
    norms = 2 * d
    head_bias = v if config.use_bias else 0
    return v * d + n_layers * (attn + qk_norm + ffn + norms) + d + d * v + head_bias


def num_matmul_params(config: LlamaConfig) -> int:
    """Parameters that take part in a matmul per token (all but the embedding, norms, biases)."""
    d, f = config.embedding_dim, config.ffn_hidden_dim
    return config.num_blocks * (4 * d * d + 3 * d * f) + d * config.vocab_size
