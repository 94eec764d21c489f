"""A run's checkpoint as an HF `transformers` directory (what launch/export.py does).

The files are written next to the target under a temporary name and renamed when complete, so an
interrupted export leaves no half-written directory. torch and transformers are imported only here.
"""

from __future__ import annotations

import os
import pathlib
import shutil

from llama_fdl import extras


def export_run(workdir: str | pathlib.Path, out: str | pathlib.Path, step: int | None = None) -> int:
    """Writes checkpoint `step` (default: the latest) of the run in `workdir` to the new or empty
    directory `out`, loadable with `transformers.LlamaForCausalLM.from_pretrained(out)` (a model with
    q/k/v-only biases exports as Qwen2); returns the step."""
    out = pathlib.Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out={out} already exists and is not an empty directory; choose a new one.")
    extras.require("hf", "Exporting a run to HF")
    from llama_fdl import saved_run
    from llama_fdl.model.hf import export_hf

    model = saved_run.load_run(workdir, step)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    partial.mkdir()
    try:
        export_hf(model.params, model.model.config, str(partial))
        if out.exists():
            out.rmdir()  # empty, as checked above
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return model.step
