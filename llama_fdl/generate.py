"""Text in, text out: a model continues prompts, tokenized with its run's vocabulary.

`TextModel` holds a model, its parameters and its vocabulary (`llama_fdl.saved_run.load_run`
makes one from a run directory). `TrainingSamples` is what the train loop writes to TensorBoard
every `trainer.sample_every` steps: continuations of a few fixed validation prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from llama_fdl.data.config import DataConfig
from llama_fdl.model.sampling import Sampler, SamplingOptions, left_pad
from llama_fdl.model.transformer import LlamaTransformer


def vocabulary(data: DataConfig):
    """The run's seqio vocabulary (bytes or its SentencePiece model), the one place generation
    gets its tokenizer from; imports TensorFlow (seqio), paid only when text is involved."""
    return data.vocabulary.seqio()


PROMPT_MULTIPLE = 32
"""Prompts are left-padded to a multiple of this, so prompts of similar lengths share a compile."""


@dataclasses.dataclass
class TextModel:
    """A model with its parameters and vocabulary, ready to continue text."""

    model: LlamaTransformer
    params: Any
    vocabulary: Any
    """A seqio.Vocabulary: encode(str) -> ids, decode(ids) -> str, eos_id."""
    context_length: int
    """Longest sequence (prompt + continuation) in tokens: the run's data.sequence_length."""
    step: int | None = None
    """The checkpoint the parameters come from, if any."""
    _samplers: dict = dataclasses.field(default_factory=dict, repr=False)

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt; refuses a prompt that leaves no room in the context."""
        encoded = [list(self.vocabulary.encode(p)) for p in prompts]
        for text, ids in zip(prompts, encoded, strict=True):
            if not ids:
                raise ValueError("A prompt is empty; give at least one character to continue.")
            if len(ids) >= self.context_length:
                raise ValueError(
                    f"The prompt {_clip(text)} is {len(ids)} tokens long, but the model's context is "
                    f"{self.context_length} tokens (the data.sequence_length it was trained with) "
                    f"and must leave room to generate; shorten it to at most {self.context_length - 1}."
                )
        return encoded

    def complete(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        stop_at_eos: bool = True,
    ) -> list[str]:
        """The continuation of each prompt (without the prompt).

        `max_new_tokens` defaults to what the context leaves after the longest prompt; see
        `SamplingOptions` for the rest.
        """
        encoded = self.encode(prompts)
        room = self.context_length - max(len(ids) for ids in encoded)
        if max_new_tokens is None:
            max_new_tokens = room
        if max_new_tokens > room:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} after a prompt of {self.context_length - room} "
                f"tokens exceeds the model's context of {self.context_length}; use at most {room}."
            )
        options = SamplingOptions(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=self.vocabulary.eos_id if stop_at_eos else None,
            pad_id=self.vocabulary.pad_id,
        )
        if options not in self._samplers:  # one compiled sampler per set of options
            self._samplers[options] = Sampler(self.model, options)
        tokens_BP, segment_ids_BP = left_pad(encoded, options.pad_id, multiple_of=PROMPT_MULTIPLE)
        out = jax.device_get(
            self._samplers[options](self.params, tokens_BP, segment_ids_BP, jax.random.key(seed))
        )
        return [
            self.vocabulary.decode(row[:n].tolist()) for row, n in zip(out.tokens, out.lengths, strict=True)
        ]


def _clip(text: str, width: int = 30) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")


# --- Samples during training ---------------------------------------------------------------

SAMPLE_PROMPTS = 3
"""How many validation prompts are continued."""
SAMPLE_TEMPERATURE = 0.8
"""Sharper than the model's own distribution, which a small model spreads over too many bytes."""
SAMPLE_TOP_P = 0.95


class TrainingSamples:
    """Continuations of the first `SAMPLE_PROMPTS` documents of the evaluation batches, as markdown.

    Each prompt is the first quarter of the context from the start of a validation document and
    the continuation fills up to half of it, sampled with the same seed every time, so successive
    samples differ only by what the model learned.
    """

    def __init__(
        self, model: LlamaTransformer, data: DataConfig, eval_batch: dict[str, np.ndarray], seed: int
    ):
        """`eval_batch`: this process's first evaluation batch (numpy); process 0's prompts are
        used everywhere, since every process must feed the same prompts to the sampler."""
        from jax.experimental import multihost_utils

        self.vocabulary = vocabulary(data)
        prompt_len = data.sequence_length // 4
        rows = [self._first_document(eval_batch, row)[:prompt_len] for row in range(SAMPLE_PROMPTS)]
        tokens_BP, segment_ids_BP = left_pad(rows, self.vocabulary.pad_id)
        # A fixed width, so that every process broadcasts arrays of one shape.
        widen = ((0, 0), (prompt_len - tokens_BP.shape[1], 0))
        tokens_BP = np.pad(tokens_BP, widen, constant_values=self.vocabulary.pad_id)
        segment_ids_BP = np.pad(segment_ids_BP, widen)
        tokens_BP, segment_ids_BP = multihost_utils.broadcast_one_to_all((tokens_BP, segment_ids_BP))
        self.prompts_BP, self.segment_ids_BP = np.asarray(tokens_BP), np.asarray(segment_ids_BP)
        self.options = SamplingOptions(
            max_new_tokens=data.sequence_length // 2,
            temperature=SAMPLE_TEMPERATURE,
            top_p=SAMPLE_TOP_P,
            eos_id=self.vocabulary.eos_id,
            pad_id=self.vocabulary.pad_id,
        )
        self.sampler = Sampler(model, self.options)
        self.rng = jax.random.key(seed)

    def markdown(self, params) -> str:
        """The prompts and their continuations under `params`, for TensorBoard's text tab."""
        out = jax.device_get(self.sampler(params, self.prompts_BP, self.segment_ids_BP, self.rng))
        decode = self.vocabulary.decode
        parts = [
            f"{len(self.prompts_BP)} validation prompts, each continued for up to "
            f"{self.options.max_new_tokens} tokens (temperature {SAMPLE_TEMPERATURE}, top-p "
            f"{SAMPLE_TOP_P}, the same seed every time)."
        ]
        rows = zip(self.prompts_BP, self.segment_ids_BP, out.tokens, out.lengths, strict=True)
        for i, (prompt, segments, row, n) in enumerate(rows):
            prompt_text, continuation = decode(prompt[segments != 0].tolist()), decode(row[:n].tolist())
            parts.append(
                f"**{i + 1}.** prompt:\n```\n{prompt_text}\n```\ncontinuation:\n```\n{continuation}\n```"
            )
        return "\n\n".join(parts)

    def _first_document(self, batch: dict[str, np.ndarray], row: int) -> list[int]:
        """The tokens of segment 1 of a packed row, without padding and EOS."""
        tokens = batch["decoder_target_tokens"][row][batch["decoder_segment_ids"][row] == 1]
        special = (self.vocabulary.pad_id, self.vocabulary.eos_id)
        return [int(t) for t in tokens if t not in special]
