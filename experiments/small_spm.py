"""`small` with a subword vocabulary: the same model and budget, compared in bits per byte."""

import fiddle as fdl

from experiments.small import small
from llama_fdl.data import tokenizer


def small_spm() -> fdl.Config:
    """`small` on a 2048-piece SentencePiece (BPE) vocabulary trained on the stdlib train split.

    The vocabulary is trained at first use (about 15 s on 2 CPUs) and cached under
    $LLAMA_FDL_CACHE (default ~/.cache/llama_fdl); the model's vocab_size follows it (0.92M ->
    1.38M parameters: a bigger embedding and output layer). A step takes 1/0.815 as long as one
    of `small` (measured side by side on 2 CPUs: 0.815 on 2026-11-27, 0.813 on 2026-11-28 with
    the faster step of issue 10), so 1630 steps take the wall-clock time of small's 2000; a token
    covers about 2.6 bytes of the stdlib, so the run reads about twice the text. Compare the two
    on eval/bits_per_byte (README, "Your own data"). Run:
      python launch/launch.py --fdl_config=experiments.small_spm
    """
    cfg = small()
    cfg.data.vocabulary.sentencepiece_model = fdl.Config(tokenizer.stdlib_sentencepiece, vocab_size=2048)
    cfg.trainer.num_train_steps = 1630
    return cfg
