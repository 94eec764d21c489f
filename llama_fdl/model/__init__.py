"""The Llama model: config, Linen modules and parameter layouts.

HF `transformers` interop lives in `llama_fdl.model.hf` (`from llama_fdl.model.hf import
import_hf, export_hf`): it is the one part that needs torch and transformers, so this package
does not import it, and neither does anything on the training path.
"""

from llama_fdl.model.blocks import FFNBlock, SelfAttentionBlock, TransformerBlock
from llama_fdl.model.config import (
    LlamaConfig,
    ParallelConfig,
    RopeScaling,
    architecture_difference,
    num_matmul_params,
    num_params,
)
from llama_fdl.model.stack import (
    TransformerBlockStack,
    scanned_to_unrolled_params,
    unrolled_to_scanned_params,
)
from llama_fdl.model.transformer import LlamaTransformer

__all__ = [
    "FFNBlock",
    "LlamaConfig",
    "LlamaTransformer",
    "ParallelConfig",
    "RopeScaling",
    "SelfAttentionBlock",
    "TransformerBlock",
    "TransformerBlockStack",
    "architecture_difference",
    "num_matmul_params",
    "num_params",
    "scanned_to_unrolled_params",
    "unrolled_to_scanned_params",
]
