"""TensorFlow and seqio for the data path, imported without TensorFlow's C++ start-up chatter.

TensorFlow's shared libraries write to file descriptor 2 before absl logging is initialised
("All log messages before absl::InitializeLog() is called ...", the oneDNN notice, the CUDA probe
and its cuInit error on machines without a GPU), and no setting reaches those lines
(TF_CPP_MIN_LOG_LEVEL does not). They would bury the one-line errors the launcher prints, so the
import runs inside `llama_fdl.console.quiet_stderr`. `pipeline.check` uses it too:
tensorflow_text's own copy of SentencePiece logs a line whenever it loads a model without a
normalization table (ours keep text exactly, so they have none), and Python cannot set that
copy's log level.

The modules of `llama_fdl.data` that use TensorFlow take `tf` and `seqio` from here.
"""

from __future__ import annotations

from llama_fdl.console import quiet_stderr  # the one implementation; see its docstring

with quiet_stderr():
    import seqio
    import tensorflow as tf

    # seqio is the data path's only TensorFlow user; keep TF off the accelerators.
    tf.config.set_visible_devices([], "GPU")

__all__ = ["quiet_stderr", "seqio", "tf"]
