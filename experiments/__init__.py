"""The experiment library: each name is a function returning a `fdl.Config` of an Experiment.

Use as `python launch/launch.py --fdl_config=experiments.NAME [--fiddler=FIDDLER]`.
"""

from experiments.base import base
from experiments.fiddlers import bf16, doc_masking, no_scan
from experiments.small import small
from experiments.tiny import tiny

EXPERIMENTS = ("base", "small", "tiny")
"""Names of the experiment functions, parents first."""
FIDDLERS = ("bf16", "doc_masking", "no_scan")
"""Names of the fiddlers."""

__all__ = [*EXPERIMENTS, *FIDDLERS]
