"""Contextual-biasing scores (Le et al. 2021, "Contextualized streaming end-to-end speech recognition with
trie-based deep biasing and shallow fusion"; the convention of the LibriSpeech biasing lists and of
SLAM-LLM's contextual ASR).

Every utterance comes with its biasing list. After `normalize`, the reference and hypothesis are aligned
(jiwer), and every error is charged to one of two groups:

* a substituted or deleted reference word -> **B** if that word is in the utterance's list, else **U**;
* an inserted hypothesis word            -> **B** if that word is in the list (a list word written where
  nothing was said), else **U**.

``B-WER = B errors / reference words in the list`` and ``U-WER = U errors / the other reference words``;
their errors add up to the WER's. Besides: keyword **recall** (list words of the reference recognised,
i.e. aligned as equal), **precision** (of the list words in the hypothesis, the share that are such
correct ones), **F1**, and **false alarms** (list words written more often than they were said: a
distractor written, or a true keyword written twice).
"""
from __future__ import annotations

from collections import Counter

import jiwer

from speechlm_lib.data.text import normalize


def list_words(words) -> set[str]:
    """The normalized words of a biasing list (a multi-word name gives each of its words)."""
    return {w for entry in words or () for w in normalize(str(entry)).split()}


def _count(ref: list[str], hyp: list[str], bias: set[str]) -> dict:
    """Error counts of one aligned utterance (ref / hyp = normalized word lists)."""
    c = Counter(b_words=sum(w in bias for w in ref))
    c["u_words"] = len(ref) - c["b_words"]
    chunks = jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0] if ref else []
    if not ref:
        c["u_errors"] = sum(w not in bias for w in hyp)
        c["b_errors"] = len(hyp) - c["u_errors"]
    for ch in chunks:
        if ch.type == "equal":
            c["b_hits"] += sum(w in bias for w in ref[ch.ref_start_idx:ch.ref_end_idx])
            continue
        if ch.type in ("substitute", "delete"):
            for w in ref[ch.ref_start_idx:ch.ref_end_idx]:
                c["b_errors" if w in bias else "u_errors"] += 1
        if ch.type == "insert":
            for w in hyp[ch.hyp_start_idx:ch.hyp_end_idx]:
                c["b_errors" if w in bias else "u_errors"] += 1
    c["b_written"] = sum(w in bias for w in hyp)
    said, written = Counter(w for w in ref if w in bias), Counter(w for w in hyp if w in bias)
    c["false_alarms"] = sum((written - said).values())
    return c


def biasing_scores(refs: list[str], hyps: list[str], lists: list) -> dict:
    """WER, U-WER, B-WER, keyword precision / recall / F1 and false alarms over a test set.

    `lists[i]` is utterance i's biasing list (words or names; None or [] = no list, so all its words are
    U words). Returns ``{"wer", "u_wer", "b_wer", "precision", "recall", "f1", "false_alarms",
    "b_words", "u_words", "n"}`` (rates 0..1+; an empty group scores 0)."""
    if not (len(refs) == len(hyps) == len(lists)):
        raise ValueError(f"{len(refs)} references, {len(hyps)} hypotheses and {len(lists)} biasing lists")
    total = Counter()
    for ref, hyp, words in zip(refs, hyps, lists):
        total.update(_count(normalize(ref).split(), normalize(hyp).split(), list_words(words)))
    b, u = total["b_words"], total["u_words"]
    recall = total["b_hits"] / b if b else 0.0
    precision = total["b_hits"] / total["b_written"] if total["b_written"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"wer": (total["b_errors"] + total["u_errors"]) / max(1, b + u),
            "u_wer": total["u_errors"] / u if u else 0.0, "b_wer": total["b_errors"] / b if b else 0.0,
            "precision": precision, "recall": recall, "f1": f1, "false_alarms": int(total["false_alarms"]),
            "b_words": int(b), "u_words": int(u), "n": len(refs)}


def example_rows(ids, refs, hyps, lists, baseline_hyps=None) -> dict[str, list[dict]]:
    """Utterances worth showing: ``fixed`` (a list word missed by `baseline_hyps`, found here) and
    ``false_alarm`` (a list word written that was not said). Each row: id, ref, hyp, baseline, words."""
    out = {"fixed": [], "false_alarm": []}
    for i, (ref, hyp, words) in enumerate(zip(refs, hyps, lists)):
        bias = list_words(words)
        r, h = normalize(ref).split(), normalize(hyp).split()
        row = {"id": ids[i], "ref": ref, "hyp": hyp, "baseline": baseline_hyps[i] if baseline_hyps else None}
        if baseline_hyps is not None:
            base = set(normalize(baseline_hyps[i]).split())
            found = [w for w in r if w in bias and w in h and w not in base]
            if found:
                out["fixed"].append({**row, "words": found})
        extra = Counter(w for w in h if w in bias) - Counter(w for w in r if w in bias)
        if extra:
            out["false_alarm"].append({**row, "words": sorted(extra)})
    return out
