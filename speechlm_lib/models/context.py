"""Keyword context for the speech-LLM (stage 4, SALM's speech-supervised in-context training).

The recogniser is told in plain text which rare words to expect. The context is a line of text put in
front of the instruction::

    "Names that may occur: Barillaro, Kowalczyk, Ijzerman. Transcribe the audio."

With the project's prompt (``PromptConfig.audio_first=False``) the instruction, and so the list, comes
*before* the audio inside the chat template's user turn; the loss still covers only the answer.

* `clean_list` -- strip, drop empties, dedupe (case-insensitively after `normalize`), keep order;
* `with_context` -- the instruction with its list in front ([] or None: the instruction alone);
* `ICTConfig` + `ICTSampler` -- training lists: with probability `p` an example gets a list holding
  its own keywords (each kept with probability `positive_ratio`) and distractors from the *training*
  entity pool, length and order random;
* `biasing_lists` + `unseen_pool` -- evaluation lists by the LibriSpeech biasing convention (Le et al.
  2021): an utterance's own keywords + N distractors from a pool of names never seen in training,
  shuffled, deterministic by seed;
* `fit_context` -- the length guard: the prompt must fit the LLM's ``max_position_embeddings`` with room
  for the audio and the answer; the list is cut from its end (the lowest priority) with a warning, or
  `ContextTooLong` is raised.
"""
from __future__ import annotations

import random
import warnings
import zlib
from dataclasses import dataclass

from speechlm_lib.data.text import normalize

CONTEXT_TEMPLATE = "Names that may occur: {names}."  # the context line; {names} = comma-separated list


class ContextTooLong(ValueError):
    """A keyword list that does not fit the LLM's context window (and truncation was not allowed)."""


def clean_list(words) -> list[str]:
    """Keywords stripped, empty ones dropped, duplicates (same `normalize`d form) removed, order kept.

    Words in any script are kept as they are (emoji, CJK): the tokenizer splits them into bytes, which
    costs tokens (`fit_context` counts them) but breaks nothing."""
    out, seen = [], set()
    for w in words or ():
        w = " ".join(str(w).split())  # newlines or tabs inside a keyword would break the one-line context
        key = normalize(w) or w
        if w and key not in seen:
            seen.add(key)
            out.append(w)
    return out


def context_text(words, template: str = CONTEXT_TEMPLATE) -> str:
    """The context line for `words` ("" for an empty list: no context at all)."""
    words = clean_list(words)
    return template.format(names=", ".join(words)) if words else ""


def with_context(instruction: str, words, template: str = CONTEXT_TEMPLATE) -> str:
    """`instruction` with the context line in front (the instruction alone for an empty list / None)."""
    text = context_text(words, template)
    return f"{text} {instruction}" if text else instruction


# ----- training lists (ICT) ---------------------------------------------------------------------------------
@dataclass
class ICTConfig:
    """How training examples get keyword lists (SALM's speech-supervised in-context training)."""

    probability: float = 0.8  # share of examples that get a list (the others train without any context)
    positive_ratio: float = 0.8  # each of the utterance's own keywords is in its list with this probability
    min_distractors: int = 0  # fewest distractors a list gets (from the training entity pool)
    max_distractors: int = 20  # most distractors; the count is uniform in [min, max]
    template: str = CONTEXT_TEMPLATE  # the context line


class ICTSampler:
    """Draws a training list for an utterance's keywords (`ICTConfig`); `pool` = the training keywords."""

    def __init__(self, cfg: ICTConfig, pool):
        for name in ("probability", "positive_ratio"):
            value = getattr(cfg, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ICTConfig.{name} must be in [0, 1], got {value}")
        if not 0 <= cfg.min_distractors <= cfg.max_distractors:
            raise ValueError(f"ICTConfig: need 0 <= min_distractors <= max_distractors, got "
                             f"{cfg.min_distractors}, {cfg.max_distractors}")
        self.cfg, self.pool = cfg, clean_list(pool)

    def __call__(self, keywords, rng: random.Random) -> list[str] | None:
        """A shuffled list (positives + distractors), or None (no context) with probability ``1 - p``."""
        if rng.random() >= self.cfg.probability:
            return None
        own = clean_list(keywords)
        positives = [w for w in own if rng.random() < self.cfg.positive_ratio]
        taken = {normalize(w) for w in own}
        n = rng.randint(self.cfg.min_distractors, self.cfg.max_distractors)
        candidates = [w for w in rng.sample(self.pool, min(len(self.pool), n + len(own))) if normalize(w) not in taken]
        words = positives + candidates[:n]
        rng.shuffle(words)
        return words


# ----- evaluation lists (LibriSpeech biasing convention) ----------------------------------------------------
def unseen_pool(train_texts, held_out_keywords, size: int = 0, seed: int = 0, max_draws: int = 20000) -> list[str]:
    """Names never seen in training: `held_out_keywords` (the dev/test utterances' own keywords) topped up to
    `size` with names drawn from the corpus generator's held-out ("test") pool; every name whose normalized
    words occur in a training transcript is dropped. Deterministic; may fall short of `size` (warned)."""
    seen = {w for t in train_texts for w in normalize(t).split()}
    pool, keys = [], set()

    def add(word: str) -> None:
        key = normalize(word)
        if key and key not in keys and not any(w in seen for w in key.split()):
            keys.add(key)
            pool.append(word)

    for w in clean_list(held_out_keywords):
        add(w)
    if len(pool) < size:
        from speechlm_lib.data.textgen import SentenceGenerator

        gen = SentenceGenerator(seed=f"biasing-pool:{seed}", holdout="test")
        for i in range(max_draws):
            for w in gen.sample(i).keywords:
                add(w)
            if len(pool) >= size:
                break
    if len(pool) < size:
        warnings.warn(f"unseen_pool: only {len(pool)} unseen names, {size} asked for", stacklevel=2)
    return pool


def biasing_lists(keyword_lists, pool, n: int, seed: int = 0) -> list[list[str]]:
    """One list per utterance: its own keywords + `n` distractors from `pool` (never its own words),
    shuffled. Utterance ``i``'s list depends only on ``(seed, n, i)`` and its keywords."""
    if n < 0:
        raise ValueError(f"the number of distractors must be >= 0, got {n}")
    pool = clean_list(pool)
    out = []
    for i, keywords in enumerate(keyword_lists):
        rng = random.Random(zlib.crc32(f"{seed}:{n}:{i}".encode()))
        own = clean_list(keywords)
        taken = {normalize(w) for w in own}
        others = [w for w in pool if normalize(w) not in taken]
        if n > len(others):
            raise ValueError(f"asked for {n} distractors, but the pool holds only {len(others)} other names")
        words = own + rng.sample(others, n)
        rng.shuffle(words)
        out.append(words)
    return out


# ----- the length guard -------------------------------------------------------------------------------------
def context_tokens(tokenizer, words, template: str = CONTEXT_TEMPLATE) -> int:
    """Tokens the context line for `words` adds (0 for none)."""
    text = context_text(words, template)
    return len(tokenizer(" " + text, add_special_tokens=False)["input_ids"]) if text else 0


def fit_context(words, tokenizer, max_tokens: int, on_overflow: str = "truncate",
                template: str = CONTEXT_TEMPLATE) -> list[str]:
    """`clean_list(words)`, cut from its end until its context line is at most `max_tokens` tokens.

    The list's order is its priority: the last words go first (evaluation lists are shuffled, so the cut
    favours neither true keywords nor distractors). A cut is warned about, naming how many words went;
    ``on_overflow="raise"`` raises `ContextTooLong` instead. `max_tokens` < 1 allows no context."""
    if on_overflow not in ("truncate", "raise"):
        raise ValueError(f"on_overflow must be 'truncate' or 'raise', got {on_overflow!r}")
    words = clean_list(words)
    total = context_tokens(tokenizer, words, template)
    if total <= max_tokens:
        return words
    if on_overflow == "raise":
        raise ContextTooLong(f"a keyword list of {len(words)} words takes {total} tokens, but only {max_tokens} "
                             f"fit the LLM's context window beside the audio and the answer")
    lo, hi = 0, len(words)  # the longest prefix that fits: binary search on the count
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if context_tokens(tokenizer, words[:mid], template) <= max_tokens else (lo, mid - 1)
    warnings.warn(f"keyword list cut from {len(words)} to {lo} words: {total} tokens do not fit the "
                  f"{max_tokens} left in the LLM's context window", stacklevel=2)
    return words[:lo]


def context_room(model, audio_seconds: float, budget_tokens: int) -> int:
    """Tokens left for a context in `model`'s LLM window: ``max_position_embeddings`` minus the bare prompt,
    the audio embeddings of `audio_seconds` and the answer's `budget_tokens`."""
    limit = getattr(model.llm.config, "max_position_embeddings", None) or 2048
    prompt = model.prompts.prompt()
    audio = int(audio_seconds * model.token_rate) + 1
    return limit - len(prompt.prefix) - len(prompt.suffix) - audio - budget_tokens
