"""`small` with a subword vocabulary: the same model and budget, compared in bits per byte."""

import fiddle as fdl

from experiments.small import small
from llama_fdl.data import tokenizer


def small_spm() -> fdl.Config:
    """`small` on a 2048-piece SentencePiece (BPE) vocabulary trained on the stdlib train split.

    The vocabulary is trained at first use (about 15 s on 2 CPUs) and cached under
    $LLAMA_FDL_CACHE (default ~/.cache/llama_fdl); the model's vocab_size follows it. A token
    covers about 2.6 bytes of the stdlib, so in the same wall-clock time as `small` this run
    reads about twice the text; compare the two on eval/bits_per_byte (README, "Your own data").
    Run:
      python launch/launch.py --fdl_config=experiments.small_spm
    """
    cfg = small()
    cfg.data.vocabulary.sentencepiece_model = fdl.Config(tokenizer.stdlib_sentencepiece, vocab_size=2048)
    return cfg
