"""A run directory read back: its saved graph, its model, a checkpoint's parameters.

This is where a saved Fiddle graph meets a finished run (runner.py is where a graph meets a new
one), so Fiddle lives here: `load_run` gives a `TextModel` to sample from, and
`check_init_from` compares a `trainer.init_from` source with the model before a run starts.

    from llama_fdl import saved_run
    model = saved_run.load_run("runs/small")          # the latest checkpoint; step=N for another
    print(model.complete(["def fibonacci(n):"], max_new_tokens=120, temperature=0.8)[0])
"""

from __future__ import annotations

import pathlib

import fiddle as fdl
import jax

from llama_fdl.cli import safe_load
from llama_fdl.generate import TextModel, vocabulary
from llama_fdl.model.config import LlamaConfig, architecture_difference
from llama_fdl.train import checkpoint as ckpt
from llama_fdl.train import init_from


def load_graph(workdir: pathlib.Path) -> fdl.Config:
    """The experiment graph saved in `workdir`, checked by the safe loader."""
    if not (workdir / "config.json").is_file():
        raise ValueError(f"{workdir} is not a run directory: it has no config.json.")
    return safe_load.load(workdir / "config.json")


def load_run(workdir: str | pathlib.Path, step: int | None = None) -> TextModel:
    """The model of a run directory with the parameters of checkpoint `step` (default: the
    latest), on this process's first device."""
    workdir = pathlib.Path(workdir)
    graph = load_graph(workdir)
    model, data = fdl.build(graph.model), fdl.build(graph.data)
    directory = workdir / "checkpoints"
    step = ckpt.choose_step(directory, step)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), ckpt.saved_params(directory, step)
    )
    params = ckpt.restore_params(directory, step, target)
    return TextModel(model, params, vocabulary(data), data.sequence_length, step)


def check_init_from(spec: str, config: LlamaConfig) -> None:
    """Raises ValueError unless `trainer.init_from` names an existing source whose architecture
    equals `config`'s, naming the first field that differs."""
    source = init_from.parse(spec)
    if source.kind == "hf":
        from llama_fdl.model import hf

        theirs = hf.llama_config_from_hf(hf.read_hf_config(source.path))
    else:
        ckpt.choose_step(source.path / "checkpoints", source.step)
        theirs = fdl.build(load_graph(source.path).model.config)
    difference = architecture_difference(config, theirs)
    if difference:
        name, compared, ours, other = difference
        setting = "ffn_multiple_of / ffn_dim_multiplier" if compared == "ffn_hidden_dim" else name
        raise ValueError(
            f"trainer.init_from={spec!r} does not fit the model: the source has {compared}={other!r}, "
            f"model.config has {ours!r}; set model.config.{setting} to match."
        )
