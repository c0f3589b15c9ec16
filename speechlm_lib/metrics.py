"""The metrics every stage reports: WER, CER and errors by training frequency on `normalize`d text; BLEU
and chrF for translation; the zero-shot tasks' scores."""
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


def bleu(refs: list[str], hyps: list[str]) -> float:
    """Corpus BLEU (sacrebleu, 0..100, its default 13a tokenisation; cased text as written)."""
    import sacrebleu

    _check_pairs(refs, hyps)
    return float(sacrebleu.corpus_bleu(hyps, [refs]).score) if refs else 0.0


def chrf(refs: list[str], hyps: list[str]) -> float:
    """Corpus chrF (sacrebleu, 0..100): character n-gram F-score, kinder than BLEU to short outputs."""
    import sacrebleu

    _check_pairs(refs, hyps)
    return float(sacrebleu.corpus_chrf(hyps, [refs]).score) if refs else 0.0


def _check_pairs(refs: list[str], hyps: list[str]) -> None:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")


def caps_score(refs: list[str], hyps: list[str]) -> dict:
    """The "capital letters" task: share of answers whose letters are all upper case, and their WER."""
    _check_pairs(refs, hyps)
    upper = [any(c.isalpha() for c in h) and h == h.upper() for h in hyps]
    return {"all_caps": sum(upper) / max(1, len(hyps)), "wer": wer(refs, hyps)}


def names_score(names: list[list[str]], transcripts: list[str], hyps: list[str]) -> dict:
    """The "which names" task: ``recall`` of the names in the answers, and ``copied`` -- the share of
    answers that are the whole transcript again (a model that only transcribes scores recall too)."""
    if not (len(names) == len(transcripts) == len(hyps)):
        raise ValueError("names, transcripts and hypotheses differ in length")
    found = total = copied = 0
    for want, said, got in zip(names, transcripts, hyps):
        words = set(normalize(got).split())
        found += sum(normalize(n) in words for n in want)
        total += len(want)
        copied += len(normalize(got).split()) >= 0.8 * len(normalize(said).split())
    return {"recall": found / max(1, total), "copied": copied / max(1, len(hyps))}
