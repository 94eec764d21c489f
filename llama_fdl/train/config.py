"""What a built experiment is: the model, mesh, optimizer factory, data and trainer settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optax
from flax import linen as nn
from jax.sharding import Mesh

from llama_fdl import sharding
from llama_fdl.data.config import DataConfig
from llama_fdl.train import init_from
from llama_fdl.train.checkpoint import CheckpointConfig


@dataclasses.dataclass
class TrainerConfig:
    """How long to train and how often to evaluate, log and checkpoint."""

    num_train_steps: int = 1000
    """Optimizer steps in the whole run (also the length of the learning-rate schedule)."""
    eval_every: int = 250
    """Evaluate on the fixed validation batches every this many steps (and at the end)."""
    log_every: int = 50
    """Write train scalars and a console line every this many steps."""
    seed: int = 0
    """Seed of parameter initialisation and dropout."""
    skip_nonfinite_steps: bool = False
    """On a NaN/Inf loss or gradient, skip that update and go on instead of stopping the run."""
    num_microbatches: int = 1
    """Gradient accumulation: each step runs the batch as this many microbatches, one at a time."""
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    """When checkpoints are written and which are kept."""
    sample_every: int = 0
    """Write continuations of validation prompts to TensorBoard's text tab every this many steps;
    0 turns samples off."""
    log_intermediates_every: int = 0
    """Write each block's attn_out_std, attn_out_abs_max, ffn_out_std and ffn_out_abs_max (as
    xlstm-jax's trainer logs them) to TensorBoard every this many steps; 0 never records them.
    Those steps run a second compiled step that also returns them; the others are unchanged."""
    init_from: str | None = None
    """Start from these weights instead of random ones: "hf:DIR" (an HF Llama/Mistral/Qwen2
    directory) or "run:DIR" / "run:DIR@STEP" (another run's parameters; its optimizer state and
    data position are not taken). Only when the run starts; a resumed run keeps its own."""

    def __post_init__(self) -> None:
        for name in ("num_train_steps", "eval_every", "log_every", "num_microbatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name}={getattr(self, name)} must be a positive integer.")
        if self.log_intermediates_every < 0:
            raise ValueError(
                f"trainer.log_intermediates_every={self.log_intermediates_every} must be >= 0 (0: never)."
            )
        if self.sample_every < 0:
            raise ValueError(f"trainer.sample_every={self.sample_every} must be >= 0 (0: no samples).")
        if self.init_from is not None:
            init_from.parse(self.init_from)


@dataclasses.dataclass
class Experiment:
    """Everything a run needs, as built from a Fiddle graph."""

    model: nn.Module
    """The Linen model; its `config` is the LlamaConfig."""
    mesh: Mesh
    """The device mesh the run is laid out on."""
    optimizer: Callable[[int], tuple[optax.GradientTransformation, optax.Schedule]]
    """Called with the run's total steps; returns the optax transformation and its schedule."""
    data: DataConfig
    """What to train and evaluate on."""
    trainer: TrainerConfig
    """Loop lengths and intervals."""

    def validate(self) -> None:
        """Cross-part checks that no single part can make; raises ValueError naming the fix."""
        model_config = self.model.config
        vocab = self.data.vocabulary_size
        if model_config.vocab_size != vocab:
            raise ValueError(
                f"model.config.vocab_size={model_config.vocab_size} but data.vocabulary has {vocab} ids; "
                f"let vocab_size follow the vocabulary as the builders derive it, or set it to {vocab}."
            )
        # Building the optimizer checks the schedule against the run length (warmup < steps).
        self.optimizer(self.trainer.num_train_steps)
        parallel = model_config.parallel
        batch_devices = self.mesh.shape[parallel.data_axis_name] * self.mesh.shape[parallel.fsdp_axis_name]
        if self.data.batch_size % batch_devices:
            raise ValueError(
                f"data.batch_size={self.data.batch_size} is not divisible by the {batch_devices} "
                f"devices of the data and fsdp mesh axes; use a multiple of {batch_devices}."
            )
        rows = batch_devices * self.trainer.num_microbatches
        if self.data.batch_size % rows:
            raise ValueError(
                f"data.batch_size={self.data.batch_size} does not split into "
                f"trainer.num_microbatches={self.trainer.num_microbatches} microbatches over the "
                f"{batch_devices} data x fsdp devices; use a batch size that is a multiple of {rows}."
            )
        sharding.check_batch_split_by_process(self.mesh, parallel, self.data.batch_size)
