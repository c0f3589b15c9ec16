"""BPE-dropout for the ``ctc`` projector's targets: train on word pieces split into smaller pieces at random.

A ``ctc`` projector can only emit the LLM token ids its vocabulary holds, and that vocabulary comes from the
training transcripts. On speechocean762, 8.3 % of the test words hold a piece no training transcript has
("Lilly" -> "L" + "illy"), so the projector can never write them. BPE-dropout (Provilkov et al. 2020, "BPE-Dropout:
Simple and Effective Subword Regularization") fixes both halves of that:

* `piece_closure` grows the vocabulary by every smaller piece the LLM's tokenizer builds the training pieces from
  (down to single letters), so an unseen word can be spelled from pieces the projector knows;
* `PieceDropout` undoes each merge of a target's pieces with probability `rate`, afresh for every batch, so
  the projector hears those smaller pieces in training and learns to spell with them.

The text never changes: a piece's two halves decode to the same bytes (byte-level BPE). Uses the tokenizer's
own merge list (`bpe_merges`), so the smaller pieces are real LLM tokens.
"""
from __future__ import annotations

import json
import random
from typing import Iterable


def bpe_merges(tokenizer) -> dict[int, tuple[int, int]]:
    """Token id -> the two token ids its BPE merge joins, from a Hugging Face fast tokenizer's merge list
    (tokens that are not a merge, e.g. single bytes and special tokens, are absent). Raises ValueError for a
    tokenizer that is not BPE."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE":
        raise ValueError(f"piece dropout needs a BPE tokenizer with a merge list, not {type(tokenizer).__name__}")
    vocab = model["vocab"]
    out: dict[int, tuple[int, int]] = {}
    for pair in model["merges"]:
        left, right = pair.split(" ", 1) if isinstance(pair, str) else pair
        merged = vocab.get(left + right)
        if merged is not None and merged not in out and left in vocab and right in vocab:
            out[merged] = (vocab[left], vocab[right])  # the first (highest-priority) merge that builds it
    return out


def piece_closure(ids: Iterable[int], merges: dict[int, tuple[int, int]]) -> set[int]:
    """`ids` and every smaller piece they are built from, down to single bytes."""
    out: set[int] = set()
    todo = list(ids)
    while todo:
        t = todo.pop()
        if t not in out:
            out.add(t)
            todo.extend(merges.get(t, ()))
    return out


class PieceDropout:
    """Split each piece of a token-id sequence into its merge's two halves with probability `rate`, the halves
    again with the same probability, and so on (BPE-dropout). ``rate=0`` returns the ids unchanged; ``rate=1``
    spells every piece in single bytes. `seed` makes the draws repeatable."""

    def __init__(self, merges: dict[int, tuple[int, int]], rate: float, seed: int = 0):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"piece dropout rate must lie in [0, 1], got {rate}")
        self.merges, self.rate, self.rng = merges, rate, random.Random(seed)

    def __call__(self, ids: Iterable[int]) -> list[int]:
        out: list[int] = []
        todo = list(ids)[::-1]  # a stack: the next piece on top
        while todo:
            t = todo.pop()
            halves = self.merges.get(t)
            if halves is not None and self.rate and self.rng.random() < self.rate:
                todo.extend(halves[::-1])
            else:
                out.append(t)
        return out
