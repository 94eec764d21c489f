"""The experiment library: each name is a function returning a `fdl.Config` of an Experiment.

Use as `python launch/launch.py --fdl_config=experiments.NAME [--fiddler=FIDDLER]`.
"""

from experiments import sweeps as sweeps
from experiments.base import base as base
from experiments.fiddlers import bf16 as bf16
from experiments.fiddlers import doc_masking as doc_masking
from experiments.fiddlers import fsdp as fsdp
from experiments.fiddlers import jsonl as jsonl
from experiments.fiddlers import long_context as long_context
from experiments.fiddlers import no_scan as no_scan
from experiments.fiddlers import remat as remat
from experiments.fiddlers import seqio_task as seqio_task
from experiments.fiddlers import smoke as smoke
from experiments.fiddlers import text_files as text_files
from experiments.fiddlers import xlstm_parallel as xlstm_parallel
from experiments.llama_1b import llama_1b as llama_1b
from experiments.llama_7b import llama_7b as llama_7b
from experiments.medium import medium as medium
from experiments.small import small as small
from experiments.small_spm import small_spm as small_spm
from experiments.tiny import tiny as tiny

EXPERIMENTS = ("base", "small", "small_spm", "tiny", "medium", "llama_1b", "llama_7b")
"""Names of the experiment functions, parents first."""
FIDDLERS = (
    "bf16",
    "doc_masking",
    "fsdp",
    "long_context",
    "no_scan",
    "remat",
    "xlstm_parallel",
    "text_files",
    "jsonl",
    "seqio_task",
    "smoke",
)
"""Names of the fiddlers."""
