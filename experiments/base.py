"""The root experiment every other one derives from."""

import fiddle as fdl

from llama_fdl import builders


def base() -> fdl.Config:
    """A byte-level Llama (d=256, 4 blocks, head_dim 64) on the stdlib corpus, AdamW 3e-3.

    The parent of the library: children change only what differs. Run:
      python launch/launch.py --fdl_config=experiments.base
    """
    return builders.experiment()
