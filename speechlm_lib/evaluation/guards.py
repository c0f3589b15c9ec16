"""What every decoder's output passes through: a length cap tied to the audio, and a repetition guard.

A decoder that loops ("thank you thank you thank you ...") or runs on past the speech costs far more WER than
one wrong word: each looped word is an insertion. Two guards, for every system in `systems.SYSTEMS`:

* **length**: inside the decoder, new tokens are capped at ``ceil(tokens_per_second * seconds + extra)``
  (`decoding.generation.token_budget`; Whisper and faster-whisper get the same budget); after it, at most
  ``ceil(words_per_second * seconds + extra_words)`` words survive (speech is ~2-3 words a second);
* **repetition**: a run of one n-gram (n = 1 .. `max_ngram`) repeated more than `max_repeats` times in a
  row is cut after its `max_repeats`-th copy, and the text ends there (what follows a loop is rarely speech;
  `decoding.repetition`, which the speech-LLM's own decoding applies as well).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from speechlm_lib.decoding.repetition import cut_repetitions, first_loop

__all__ = ["GuardConfig", "cut_repetitions", "first_loop", "guard", "token_budget", "word_cap"]


@dataclass
class GuardConfig:
    """The caps every decoder's output is held to."""

    tokens_per_second: float = 8.0  # decoder token budget: a * seconds + b (the speech-LLM's DecodeConfig default)
    extra_tokens: int = 16  # b in the token budget
    max_new_tokens: int = 256  # hard cap on the token budget
    words_per_second: float = 6.0  # text cap: at most this many words a second of audio ...
    extra_words: int = 4  # ... plus this many
    max_ngram: int = 4  # repetition guard: n-grams up to this length are checked
    max_repeats: int = 3  # a run of more than this many copies of one n-gram is cut


def token_budget(seconds: float, cfg: GuardConfig) -> int:
    """Most new tokens for a clip of `seconds` (>= 1)."""
    return max(1, min(cfg.max_new_tokens, math.ceil(cfg.tokens_per_second * seconds + cfg.extra_tokens)))


def word_cap(seconds: float, cfg: GuardConfig) -> int:
    """Most words a transcript of a clip of `seconds` keeps (>= 1)."""
    return max(1, math.ceil(cfg.words_per_second * seconds + cfg.extra_words))


def guard(text: str, seconds: float, cfg: GuardConfig | None = None) -> tuple[str, bool]:
    """`text` after the repetition guard and the word cap for `seconds` of audio: ``(text, changed)``."""
    cfg = cfg or GuardConfig()
    out = cut_repetitions(text, cfg.max_ngram, cfg.max_repeats)
    words = out.split()
    cap = word_cap(seconds, cfg)
    if len(words) > cap:
        out = " ".join(words[:cap])
    return out, out != text
