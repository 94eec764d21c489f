"""`trainer.init_from`: a run's first parameters taken from an HF checkpoint or another run.

    hf:DIR          an HF Llama, Mistral or Qwen2 directory (save_pretrained's layout)
    run:DIR         the latest checkpoint of another llama_fdl run
    run:DIR@STEP    its checkpoint at STEP

Only parameters are taken: the optimizer state starts fresh, the step at 0 and the data at the
start of the stream. Before a run starts, `llama_fdl.saved_run.check_init_from` checks that the
source exists and has the model's architecture; `load` reads its parameters into the run's layout
when the run starts from scratch.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

import jax

from llama_fdl.model.config import LlamaConfig

_SPEC = re.compile(r"^(?P<kind>hf|run):(?P<path>.+?)(@(?P<step>\d+))?$")


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str
    """"hf" or "run"."""
    path: pathlib.Path
    step: int | None
    """A run's checkpoint; None: the latest."""


def parse(spec: str) -> Source:
    """The source `spec` names; raises ValueError on a malformed one."""
    match = _SPEC.match(spec)
    if not match or (match["kind"] == "hf" and match["step"]):
        raise ValueError(f"trainer.init_from={spec!r} is not 'hf:DIR', 'run:DIR' or 'run:DIR@STEP'.")
    step = int(match["step"]) if match["step"] else None
    return Source(match["kind"], pathlib.Path(match["path"]), step)


def load(spec: str, config: LlamaConfig, param_shardings: Any) -> Any:
    """The source's parameters in this model's layout (scanned or unrolled), placed by
    `param_shardings`."""
    source = parse(spec)
    if source.kind == "hf":
        from llama_fdl.model import hf

        _, params = hf.import_hf(source.path, scan_blocks=config.scan_blocks)
        return jax.device_put(params, param_shardings)

    from llama_fdl.model.stack import SCANNED_NAME, scanned_to_unrolled_params, unrolled_to_scanned_params
    from llama_fdl.train import checkpoint as ckpt

    directory = source.path / "checkpoints"
    step = ckpt.choose_step(directory, source.step)
    saved = ckpt.saved_params(directory, step)
    if (SCANNED_NAME in saved["block_stack"]) == config.scan_blocks:  # the same layout
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), saved, param_shardings
        )
        return ckpt.restore_params(directory, step, target)
    host = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    params = ckpt.restore_params(
        directory, step, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=host), saved)
    )
    convert = unrolled_to_scanned_params if config.scan_blocks else scanned_to_unrolled_params
    return jax.device_put(convert(params), param_shardings)
