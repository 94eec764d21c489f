"""`trainer.init_from`: a run's first parameters taken from an HF checkpoint or another run.

    hf:DIR          an HF Llama, Mistral or Qwen2 directory (save_pretrained's layout)
    run:DIR         the latest checkpoint of another llama_fdl run
    run:DIR@STEP    its checkpoint at STEP

Only parameters are taken: the optimizer state starts fresh, the step at 0 and the data at the
start of the stream. `check` runs with the other launch checks, before the run directory is
touched: the source must exist and its architecture (`ARCHITECTURE_FIELDS`) must equal the
model's, or one line names the first field that differs. `load` reads the parameters into the
run's layout when it starts from scratch.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any

import jax

from llama_fdl.model.config import LlamaConfig, architecture_difference

_SPEC = re.compile(r"^(?P<kind>hf|run):(?P<path>.+?)(@(?P<step>\d+))?$")
_FORM = "'hf:DIR', 'run:DIR' or 'run:DIR@STEP'"


@dataclasses.dataclass(frozen=True)
class Source:
    kind: str
    """"hf" or "run"."""
    path: pathlib.Path
    step: int | None
    """A run's checkpoint; None: the latest."""


def parse(spec: str) -> Source:
    match = _SPEC.match(spec)
    if not match or (match["kind"] == "hf" and match["step"]):
        raise ValueError(f"trainer.init_from={spec!r} is not {_FORM}.")
    step = int(match["step"]) if match["step"] else None
    return Source(match["kind"], pathlib.Path(match["path"]), step)


def source_config(spec: str, config: LlamaConfig) -> LlamaConfig:
    """The source's LlamaConfig (its architecture fields are what `check` compares)."""
    source = parse(spec)
    if source.kind == "hf":
        from llama_fdl.model import hf

        hf_config = hf.read_hf_config(source.path)
        return hf.llama_config_from_hf(hf_config, scan_blocks=config.scan_blocks)
    import fiddle as fdl

    from llama_fdl.cli import safe_load
    from llama_fdl.train import checkpoint as ckpt

    if not (source.path / "config.json").is_file():
        raise ValueError(
            f"trainer.init_from={spec!r}: {source.path} is not a run directory (no config.json)."
        )
    ckpt.choose_step(source.path / "checkpoints", source.step)
    return fdl.build(safe_load.load(source.path / "config.json").model.config)


# The fields to set when a derived architecture value differs.
_SETTING = {"kv_heads": "num_kv_heads", "ffn_hidden_dim": "ffn_multiple_of / ffn_dim_multiplier"}


def check(spec: str, config: LlamaConfig) -> None:
    """Raises ValueError naming the first architecture field where source and model differ."""
    difference = architecture_difference(config, source_config(spec, config))
    if difference:
        name, ours, theirs = difference
        raise ValueError(
            f"trainer.init_from={spec!r} does not fit the model: the source has {name}={theirs!r}, "
            f"model.config has {ours!r}; set model.config.{_SETTING.get(name, name)} to match."
        )


def load(spec: str, config: LlamaConfig, param_shardings: Any) -> Any:
    """The source's parameters in this model's layout (scanned or unrolled), placed by
    `param_shardings`."""
    source = parse(spec)
    if source.kind == "hf":
        from llama_fdl.model import hf

        _, params = hf.import_hf(source.path, scan_blocks=config.scan_blocks)
        return jax.device_put(params, param_shardings)

    import fiddle as fdl

    from llama_fdl.cli import safe_load
    from llama_fdl.generate import abstract_params
    from llama_fdl.model.stack import scanned_to_unrolled_params, unrolled_to_scanned_params
    from llama_fdl.train import checkpoint as ckpt

    directory = source.path / "checkpoints"
    step = ckpt.choose_step(directory, source.step)
    theirs = fdl.build(safe_load.load(source.path / "config.json").model)
    if theirs.config.scan_blocks == config.scan_blocks:
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract_params(theirs, jax.devices()[0]),
            param_shardings,
        )
        return ckpt.restore_params(directory, step, target)
    params = ckpt.restore_params(directory, step, abstract_params(theirs, jax.local_devices()[0]))
    convert = unrolled_to_scanned_params if config.scan_blocks else scanned_to_unrolled_params
    return jax.device_put(convert(params), param_shardings)
