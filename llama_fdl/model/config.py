"""Model configuration: `LlamaConfig` and `ParallelConfig`.

All are plain dataclasses of strings, numbers and booleans so that Fiddle graphs holding them
serialize to JSON. The field set and defaults of `LlamaConfig` up to `parallel` mirror
`xlstm_jax.models.llama.llama.LlamaConfig`; the fields after it (grouped-query attention, norm
epsilon, rope scaling, q/k/v-only biases, tied embeddings) come with defaults that keep every
earlier config meaning what it meant.
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
InitScheme = Literal["lecun", "small_wang"]
RematPolicy = Literal["none", "minimal", "full", "dots_saveable", "attention", "ffn", "attention_and_ffn"]
ComputeDType = Literal["float32", "bfloat16", "float16"]

ATTENTION_BACKENDS: tuple[str, ...] = typing.get_args(AttentionBackend)
REMAT_POLICIES: tuple[str, ...] = typing.get_args(RematPolicy)
COMPUTE_DTYPES: tuple[str, ...] = typing.get_args(ComputeDType)
INIT_SCHEMES: tuple[str, ...] = typing.get_args(InitScheme)


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
    remat: RematPolicy = "minimal"
    """What each block recomputes in the backward pass: none; minimal (the elementwise work
    between the matmuls and attention kernels, whose outputs are kept); the whole block (full,
    or dots_saveable keeping matmul outputs); or only its attention, only its ffn, or each of
    attention_and_ffn on its own (see llama_fdl.model.remat)."""

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
class RopeScaling:
    """Llama 3's frequency-dependent rotary scaling (HF `rope_type="llama3"`).

    Rotary frequencies whose wavelength exceeds `original_max_position_embeddings /
    low_freq_factor` are divided by `factor`; those shorter than `original_max_position_embeddings
    / high_freq_factor` stay; those in between are interpolated smoothly.
    """

    factor: float = 8.0
    """How much the longest wavelengths are stretched."""
    low_freq_factor: float = 1.0
    """Wavelengths longer than original_max_position_embeddings / this are divided by factor."""
    high_freq_factor: float = 4.0
    """Wavelengths shorter than original_max_position_embeddings / this are left alone."""
    original_max_position_embeddings: int = 8192
    """The context length the model was pretrained with before scaling."""

    def __post_init__(self) -> None:
        if self.factor <= 0 or self.original_max_position_embeddings <= 0:
            raise ValueError("RopeScaling.factor and original_max_position_embeddings must be > 0.")
        if not 0 < self.low_freq_factor < self.high_freq_factor:
            raise ValueError(
                f"RopeScaling needs 0 < low_freq_factor < high_freq_factor; got "
                f"{self.low_freq_factor} and {self.high_freq_factor}."
            )


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
    ffn_dim_multiplier: float | None = 1.0
    """Multiplier on the default feed-forward hidden width of int(8/3 * embedding_dim); None: none."""
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
    num_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); must divide num_heads. None: one per query head."""
    norm_eps: float = 1e-6
    """Epsilon inside the square root of every RMSNorm (Llama 2/3, Mistral: 1e-5)."""
    rope_scaling: RopeScaling | None = None
    """Llama 3's rotary frequency scaling; None keeps plain rotary frequencies."""
    qkv_bias: bool = False
    """Biases on the query, key and value projections only (Qwen2); use_bias puts them everywhere."""
    tie_embeddings: bool = False
    """The LM head is the transposed embedding table (no separate head weights, no head bias)."""
    init_scheme: InitScheme = "lecun"
    """Initial weights: lecun (std 1/sqrt(fan_in)) or small_wang (xlstm-jax's small and wang init;
    see llama_fdl.model.initializers)."""

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
        if self.ffn_dim_multiplier is not None and self.ffn_dim_multiplier <= 0:
            raise ValueError(
                f"LlamaConfig.ffn_dim_multiplier={self.ffn_dim_multiplier} must be > 0, "
                "or None for no multiplier."
            )
        if self.theta <= 0:
            raise ValueError(f"LlamaConfig.theta={self.theta} must be > 0.")
        if self.logits_soft_cap is not None and self.logits_soft_cap <= 0:
            raise ValueError(f"LlamaConfig.logits_soft_cap={self.logits_soft_cap} must be > 0 or None.")
        kv = self.num_kv_heads
        if kv is not None and (not isinstance(kv, int) or kv <= 0 or self.num_heads % kv):
            divisors = [str(d) for d in range(1, self.num_heads + 1) if self.num_heads % d == 0]
            raise ValueError(
                f"LlamaConfig.num_kv_heads={kv!r} does not divide the {self.num_heads} query heads "
                f"(embedding_dim // head_dim); use one of {', '.join(divisors)}, or None for "
                f"{self.num_heads}."
            )
        if not self.norm_eps > 0:
            raise ValueError(f"LlamaConfig.norm_eps={self.norm_eps} must be > 0.")
        if self.init_scheme not in INIT_SCHEMES:
            raise ValueError(f"LlamaConfig.init_scheme={self.init_scheme!r} is not one of {INIT_SCHEMES}.")
        if self.tie_embeddings and self.use_bias:
            raise ValueError(
                "LlamaConfig.tie_embeddings=True leaves the LM head without the bias that use_bias=True "
                "asks for; set use_bias=False (qkv_bias=True keeps q/k/v biases) or tie_embeddings=False."
            )

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
    def kv_heads(self) -> int:
        """Key/value heads: num_kv_heads, or num_heads when it is None."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """The SwiGLU hidden width F (see `ffn_width`)."""
        return ffn_width(self.embedding_dim, self.ffn_dim_multiplier, self.ffn_multiple_of)

    @property
    def _dtype(self) -> jnp.dtype:
        """The jnp dtype named by `dtype`."""
        return jnp.dtype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def ffn_width(embedding_dim: int, multiplier: float | None, multiple_of: int) -> int:
    """Meta's Llama and xlstm-jax's SwiGLU width: int(8D/3), times the multiplier and truncated
    again, rounded up to `multiple_of`.

    Truncating before the multiplier matters: D=88, multiplier 1.3, multiple 16 gives 304, where
    int(8D/3 * 1.3) would give 305 and round up to 320.
    """
    hidden = int(8 * embedding_dim / 3)
    if multiplier is not None:
        hidden = int(hidden * multiplier)
    return multiple_of * math.ceil(hidden / multiple_of)


def _divisors_near(n: int, target: int) -> str:
    divisors = sorted((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - target))
    return ", ".join(str(d) for d in divisors[:3])


def num_params(config: LlamaConfig) -> int:
    """Closed-form parameter count of `LlamaTransformer(config)`."""
    d, f, v, n_layers = config.embedding_dim, config.ffn_hidden_dim, config.vocab_size, config.num_blocks
    kv = config.kv_heads * config.head_dim  # width of the key and of the value projection
    attn = _attention_matmul_params(config)
    if config.use_bias or config.qkv_bias:
        attn += d + 2 * kv  # q, k, v biases
    if config.use_bias:
        attn += d  # the output projection's bias
    qk_norm = 2 * config.head_dim if config.qk_norm else 0
    ffn = 3 * d * f + ((2 * f + d) if config.use_bias else 0)
    norms = 2 * d
    head = 0 if config.tie_embeddings else d * v + (v if config.use_bias else 0)
    return v * d + n_layers * (attn + qk_norm + ffn + norms) + d + head


def num_matmul_params(config: LlamaConfig) -> int:
    """Parameters that take part in a matmul per token (all but the embedding lookup, norms and
    biases; a tied head counts once, as the head)."""
    d, f = config.embedding_dim, config.ffn_hidden_dim
    return config.num_blocks * (_attention_matmul_params(config) + 3 * d * f) + d * config.vocab_size


def _attention_matmul_params(config: LlamaConfig) -> int:
    """q and out are D x D; k and v are D x (kv_heads * head_dim)."""
    d = config.embedding_dim
    return 2 * d * d + 2 * d * config.kv_heads * config.head_dim


ARCHITECTURE_FIELDS = (
    "vocab_size", "embedding_dim", "num_blocks", "head_dim", "qk_norm", "causal", "theta",
    "ffn_multiple_of", "ffn_dim_multiplier", "use_bias", "logits_soft_cap", "num_kv_heads",
    "norm_eps", "rope_scaling", "qkv_bias", "tie_embeddings",
)  # fmt: skip
"""The fields that decide what the weights mean; the others (layout, dtype, kernels, dropout,
masking, the mesh) change how a model computes or trains, not the function of its weights."""

# Fields that spell a size more than one way are compared by the size they give.
_COMPARED_AS = {
    "ffn_multiple_of": "ffn_hidden_dim",
    "ffn_dim_multiplier": "ffn_hidden_dim",
    "num_kv_heads": "kv_heads",
}


def architecture_difference(ours: LlamaConfig, theirs: LlamaConfig) -> tuple[str, str, Any, Any] | None:
    """For the first architecture field that differs: (the field, the value compared, ours,
    theirs), e.g. ("num_kv_heads", "kv_heads", 4, 2); None when the architectures are equal."""
    for name in ARCHITECTURE_FIELDS:
        compared = _COMPARED_AS.get(name, name)
        mine, other = getattr(ours, compared), getattr(theirs, compared)
        if mine != other:
            return name, compared, mine, other
    return None
