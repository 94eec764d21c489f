"""Which differences between two graphs make another experiment, and which only change the layout.

A run's identity is what it computes. Mesh sizes, rematerialization and microbatching change how
a step runs (where each number lives, what is recomputed, how many rows go through at once), not
the model, the data or the update, so a run directory resumes under new ones; any other
difference is another experiment. `LAYOUT` is the one list of such settings: a new "how, not
what" knob joins the run's identity rules by adding its field here.
"""

from __future__ import annotations

import fiddle as fdl

from llama_fdl.cli import diff, flatten
from llama_fdl.model.config import ParallelConfig
from llama_fdl.train.config import TrainerConfig

LAYOUT: dict[type, tuple[str, ...]] = {
    ParallelConfig: (
        "data_axis_size",
        "fsdp_axis_size",
        "tensor_axis_size",
        "fsdp_min_weight_size",
        "remat",
    ),
    TrainerConfig: ("num_microbatches",),
}
"""Class -> fields that change how a run is laid out and computed, not what it computes."""


def layout_paths(cfg: fdl.Buildable) -> set[str]:
    """The paths in `cfg` of every field that `LAYOUT` lists."""
    found = set()
    for path, node in flatten.buildables(cfg):
        for field in LAYOUT.get(fdl.get_callable(node), ()):
            found.add(f"{path}.{field}" if path else field)
    return found


def split_changes(saved: fdl.Buildable, new: fdl.Buildable) -> tuple[list[diff.Change], list[diff.Change]]:
    """(changes of what the run computes, changes of its layout only) from `saved` to `new`."""
    layout = layout_paths(saved) | layout_paths(new)
    found = diff.changes(saved, new)
    return [c for c in found if c.path not in layout], [c for c in found if c.path in layout]


def describe(changes: list[diff.Change]) -> str:
    """`model.config.parallel.fsdp_axis_size 1 -> 2, trainer.num_microbatches 1 -> 2`."""
    return ", ".join(
        f"{c.path} {flatten.format_value(c.old)} -> {flatten.format_value(c.new)}" for c in changes
    )
