"""The Llama model: config, Linen modules, parameter layouts and HF `transformers` interop.

Importing this package never imports torch or transformers; `llama_fdl.model.hf` does that
inside its functions.
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
from llama_fdl.model.hf import (
    export_hf,
    hf_config_from_llama,
    import_hf,
    llama_config_from_hf,
    params_from_hf,
    state_dict_from_params,
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
    "export_hf",
    "hf_config_from_llama",
    "import_hf",
    "llama_config_from_hf",
    "num_matmul_params",
    "num_params",
    "params_from_hf",
    "scanned_to_unrolled_params",
    "state_dict_from_params",
    "unrolled_to_scanned_params",
]
