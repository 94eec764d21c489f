"""TensorFlow and seqio for the data path, imported without TensorFlow's C++ start-up chatter.

TensorFlow's shared libraries write to file descriptor 2 before absl logging is initialised
("All log messages before absl::InitializeLog() is called ...", the oneDNN notice, the CUDA probe
and its cuInit error on machines without a GPU), and no setting reaches those lines
(TF_CPP_MIN_LOG_LEVEL does not). They would bury the one-line errors the launcher prints, so the
import runs inside `quiet_stderr`. `pipeline.check` uses it too: tensorflow_text's own copy of
SentencePiece logs a line whenever it loads a model without a normalization table (ours keep
text exactly, so they have none), and Python cannot set that copy's log level.

The modules of `llama_fdl.data` that use TensorFlow take `tf` and `seqio` from here.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def quiet_stderr():
    """Runs the block with file descriptor 2 in a temporary file, dropped afterwards unless the
    block raises something other than a ValueError: then it is written out, since it may say what
    went wrong. (A ValueError is a one-line error for a person, which stands alone.)"""
    sys.stderr.flush()
    saved = os.dup(2)
    captured = tempfile.TemporaryFile()
    os.dup2(captured.fileno(), 2)
    replay = False
    try:
        yield
    except ValueError:
        raise
    except BaseException:
        replay = True
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if replay:
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            sys.stderr.flush()
        captured.close()


with quiet_stderr():
    import seqio
    import tensorflow as tf

    # seqio is the data path's only TensorFlow user; keep TF off the accelerators.
    tf.config.set_visible_devices([], "GPU")

__all__ = ["quiet_stderr", "seqio", "tf"]
