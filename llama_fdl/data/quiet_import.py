"""TensorFlow and seqio for the data path, imported without TensorFlow's C++ start-up chatter.

TensorFlow's shared libraries write to file descriptor 2 before absl logging is initialised
("All log messages before absl::InitializeLog() is called ...", the oneDNN notice, the CUDA probe
and its cuInit error on machines without a GPU), and no setting reaches those lines
(TF_CPP_MIN_LOG_LEVEL does not). They would bury the one-line errors the launcher prints, so the
import runs with descriptor 2 on /dev/null. A Python exception from the import still reaches
stderr: it is printed after the descriptor is restored.

The modules of `llama_fdl.data` that use TensorFlow take `tf` and `seqio` from here.
"""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def _stderr_to_devnull():
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


with _stderr_to_devnull():
    import seqio
    import tensorflow as tf

    # seqio is the data path's only TensorFlow user; keep TF off the accelerators.
    tf.config.set_visible_devices([], "GPU")

__all__ = ["seqio", "tf"]
