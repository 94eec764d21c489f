"""The experiment library: each name is a function returning a `fdl.Config` of an Experiment.

Use as `python launch/launch.py --fdl_config=experiments.NAME [--fiddler=FIDDLER]`.
"""

from experiments.base import base as base
from experiments.fiddlers import bf16 as bf16
from experiments.fiddlers import doc_masking as doc_masking
from experiments.fiddlers import no_scan as no_scan
from experiments.small import small as small
from experiments.tiny import tiny as tiny

EXPERIMENTS = ("base", "small", "tiny")
"""Names of the experiment functions, parents first."""
FIDDLERS = ("bf16", "doc_masking", "no_scan")
"""Names of the fiddlers."""
