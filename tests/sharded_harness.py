"""What the multi-device checks share: a small model, synthetic packed batches, the loop's jit set-up.

Used by the children that tests/test_sharding_equivalence.py, test_sharding_restore.py and
test_accumulation.py start with 8 simulated CPU devices. The jitted step is built exactly as
llama_fdl.train.loop builds it (same shardings in and out), so the checks test what runs.

Shapes: B batch, L sequence length.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np

from llama_fdl import optim, sharding
from llama_fdl.model import LlamaConfig, LlamaTransformer, ParallelConfig
from llama_fdl.train import state as state_lib
from llama_fdl.train.step import loss_and_grads, train_step

SEQ_LEN = 32
BATCH = 8
SEED = 0


def model(sizes: tuple[int, int, int], **parallel_fields) -> LlamaTransformer:
    """d=64, 4 heads of 16, 2 scanned blocks, MLP 192, document masking; every kernel FSDP-sharded."""
    parallel = ParallelConfig(
        data_axis_size=sizes[0],
        fsdp_axis_size=sizes[1],
        tensor_axis_size=sizes[2],
        fsdp_min_weight_size=parallel_fields.pop("fsdp_min_weight_size", 0),
        **parallel_fields,
    )
    config = LlamaConfig(
        vocab_size=259,
        embedding_dim=64,
        num_blocks=2,
        head_dim=16,
        mask_across_document_boundaries=True,
        parallel=parallel,
    )
    return LlamaTransformer(config)


def batches(num: int, batch: int = BATCH, seq_len: int = SEQ_LEN, seed: int = 1) -> list[dict]:
    """Packed-looking batches: two documents per row, positions restarting, padding at the end."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        tokens_BL = rng.integers(3, 259, size=(batch, seq_len + 1), dtype=np.int32)
        split_B = rng.integers(4, seq_len // 2, size=batch)
        pad_B = rng.integers(0, seq_len // 4, size=batch)
        cols_BL = np.broadcast_to(np.arange(seq_len), (batch, seq_len))
        real_BL = cols_BL < (seq_len - pad_B)[:, None]
        segments_BL = np.where(cols_BL < split_B[:, None], 1, 2) * real_BL
        positions_BL = np.where(cols_BL < split_B[:, None], cols_BL, cols_BL - split_B[:, None]) * real_BL
        out.append(
            {
                "decoder_input_tokens": tokens_BL[:, :-1] * real_BL,
                "decoder_target_tokens": tokens_BL[:, 1:] * real_BL,
                "decoder_loss_weights": real_BL.astype(np.int32),
                "decoder_segment_ids": segments_BL.astype(np.int32),
                "decoder_positions": positions_BL.astype(np.int32),
            }
        )
    return out


@dataclasses.dataclass
class Run:
    """A model laid out on a mesh, with the loop's jitted train step and a jitted gradient."""

    model: LlamaTransformer
    mesh: jax.sharding.Mesh
    shardings: state_lib.TrainState
    boxed: state_lib.TrainState
    batch_sharding: jax.sharding.NamedSharding
    step: object
    grads: object

    def put(self, batch: dict) -> dict:
        return {k: jax.device_put(v, self.batch_sharding) for k, v in batch.items()}


def setup(
    sizes: tuple[int, int, int],
    devices: Sequence[jax.Device] | None = None,
    num_microbatches: int = 1,
    **parallel_fields,
) -> Run:
    mdl = model(sizes, **parallel_fields)
    parallel = mdl.config.parallel
    mesh = sharding.build_mesh(parallel, devices)
    tx, schedule = optim.adamw(10, warmup_steps=2)
    boxed = state_lib.abstract_state(mdl, tx, SEQ_LEN, SEED)
    shardings = state_lib.state_shardings(boxed, mesh, parallel)
    batch_sh = sharding.batch_sharding(mesh, parallel)
    step = jax.jit(
        functools.partial(
            train_step, model=mdl, tx=tx, schedule=schedule, mesh=mesh, num_microbatches=num_microbatches
        ),
        in_shardings=(shardings, batch_sh),
        out_shardings=(shardings, sharding.replicated(mesh)),
    )
    grads = jax.jit(
        functools.partial(loss_and_grads, model=mdl, mesh=mesh, num_microbatches=num_microbatches),
        in_shardings=(shardings.params, batch_sh, sharding.replicated(mesh)),
        out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh), shardings.params),
    )
    return Run(mdl, mesh, shardings, boxed, batch_sh, step, grads)


def init(run: Run) -> state_lib.TrainState:
    """The initial state, laid out on the run's mesh."""
    tx, _ = optim.adamw(10, warmup_steps=2)
    state, _ = state_lib.init_state(run.model, tx, SEQ_LEN, SEED, run.mesh, run.model.config.parallel)
    return state


def place(run: Run, state) -> state_lib.TrainState:
    """`state` (from any mesh) moved onto the run's mesh; cheaper than compiling another init."""
    return jax.device_put(state, run.shardings)


def grads_at(run: Run, state, batch: dict) -> tuple[float, dict[str, np.ndarray]]:
    """The loss and the gradient (by parameter path, as numpy) at `state.params`."""
    rng = jax.random.key(0)
    loss, _, grads = run.grads(state.params, run.put(batch), rng)
    flat = {jax.tree_util.keystr(p): np.asarray(g) for p, g in jax.tree_util.tree_leaves_with_path(grads)}
    return float(loss), flat


def train(run: Run, state, data: list[dict]) -> tuple[state_lib.TrainState, list[float]]:
    """Runs one step per batch; returns the state and each step's loss."""
    losses = []
    for batch in data:
        state, metrics = run.step(state, run.put(batch))
        losses.append(float(metrics["train/loss"]))
    return state, losses


def grad_excess(grads: dict[str, np.ndarray], reference: dict[str, np.ndarray], rtol: float, atol: float):
    """max |g - ref| / (atol + rtol |ref|) over every element: at most 1 means within tolerance."""
    return max(
        float(np.max(np.abs(grads[k] - reference[k]) / (atol + rtol * np.abs(reference[k]))))
        for k in reference
    )


def loss_excess(losses: list[float], reference: list[float], rtol: float) -> float:
    """max |loss - ref| / (rtol |ref|): at most 1 means within tolerance."""
    return max(abs(a - b) / (rtol * abs(b)) for a, b in zip(losses, reference, strict=True))
