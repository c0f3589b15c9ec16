"""The metrics every stage reports, on `normalize`d text: WER, CER and errors by training frequency."""
from __future__ import annotations

from collections import Counter

import jiwer

from speechlm_lib.data.text import normalize


def _pairs(refs: list[str], hyps: list[str]) -> tuple[list[str], list[str]]:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    r, h = [normalize(x) for x in refs], [normalize(x) for x in hyps]
    keep = [i for i, x in enumerate(r) if x]  # jiwer cannot score an empty reference
    return [r[i] for i in keep], [h[i] for i in keep]


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus word error rate (0..1+) after `normalize`."""
    r, h = _pairs(refs, hyps)
    return float(jiwer.wer(r, h)) if r else 0.0


def cer(refs: list[str], hyps: list[str]) -> float:
    """Corpus character error rate (0..1+) after `normalize`."""
    r, h = _pairs(refs, hyps)
    return float(jiwer.cer(r, h)) if r else 0.0


FREQUENCY_GROUPS = ("unseen", "rare", "common")  # training count 0, 1..rare_below-1, >= rare_below


def word_counts(texts) -> Counter:
    """How often each normalized word occurs in `texts` (the training transcripts)."""
    return Counter(w for text in texts for w in normalize(text).split())


def errors_by_frequency(refs: list[str], hyps: list[str], counts: dict[str, int], rare_below: int = 10) -> dict:
    """Where the word errors are: reference words grouped by how often they occur in training.

    `counts` is `word_counts` of the training transcripts. Groups: ``unseen`` (never), ``rare``
    (fewer than `rare_below` times), ``common``. For each group: ``share`` of the reference words,
    ``error`` (the fraction of them not matched: substituted or deleted) and ``points`` (what they
    add to WER, share x error). Insertions belong to no word: ``{"insertions": their share of WER}``.
    The points and the insertions add up to `wer` exactly.

    Returns ``{group: {"words", "share", "error", "points"}, ..., "insertions": float}``.
    """
    r, h = _pairs(refs, hyps)
    words = {g: [0, 0] for g in FREQUENCY_GROUPS}  # group -> [reference words, missed]
    inserted = 0
    out = jiwer.process_words(r, h) if r else None
    for ref, chunks in zip(out.references, out.alignments) if out else ():
        matched = [False] * len(ref)
        for c in chunks:
            if c.type == "equal":
                matched[c.ref_start_idx:c.ref_end_idx] = [True] * (c.ref_end_idx - c.ref_start_idx)
            elif c.type == "insert":
                inserted += c.hyp_end_idx - c.hyp_start_idx
        for w, ok in zip(ref, matched):
            n = counts.get(w, 0)
            group = words["unseen" if n == 0 else "rare" if n < rare_below else "common"]
            group[0] += 1
            group[1] += not ok
    total = max(1, sum(n for n, _ in words.values()))
    result: dict = {g: {"words": n, "share": n / total, "error": e / max(1, n), "points": e / total}
                    for g, (n, e) in words.items()}
    result["insertions"] = inserted / total
    return result
