"""Sweeps: functions returning the named points of `llama-fdl sweep --sweep=NAME`.

Each point is a `llama_fdl.sweep.Point`: a name (its run directory) and the values and fiddlers it
changes on top of the experiment and the command line's overrides. Run one:
    llama-fdl sweep --fdl_config=experiments.small --sweep=experiments.sweeps.lr_small --workdir=runs/lr
"""

from llama_fdl.sweep import Point


def lr_small() -> list[Point]:
    """Three peak learning rates around experiments.small's 3e-3: 1e-3, 3e-3 and 1e-2.

    Run (add --fdl.trainer.num_train_steps=300 for a quick look):
      llama-fdl sweep --fdl_config=experiments.small --sweep=experiments.sweeps.lr_small --workdir=runs/lr
    """
    return [Point(f"lr_{lr:g}", {"optimizer.peak_learning_rate": lr}) for lr in (1e-3, 3e-3, 1e-2)]


def width_depth(widths: tuple[int, ...] = (64, 128, 256), depths: tuple[int, ...] = (2, 4)) -> list[Point]:
    """A width x depth grid: every embedding_dim in `widths` with every num_blocks in `depths`.

    head_dim stays 64, so each width must be a multiple of 64. Run:
      llama-fdl sweep --fdl_config=experiments.small --sweep=experiments.sweeps.width_depth --workdir=runs/wd
    or a smaller grid: --sweep='width_depth(widths=(64, 128))'.
    """
    return [
        Point(f"d{d}_blocks{n}", {"model.config.embedding_dim": d, "model.config.num_blocks": n})
        for d in widths
        for n in depths
    ]


SWEEPS = ("lr_small", "width_depth")
"""Names of the sweep functions."""
