"""llama_fdl: config-as-code training of Llama-style models in JAX.

Importing the package is cheap: it loads no TensorFlow (only `llama_fdl.data.pipeline` does) and
no torch (only `llama_fdl.model.hf` does, inside its functions).
"""

__version__ = "0.1.0"
