"""Error analysis on per-utterance records: what goes wrong, and where the LLM helped or hurt.

* `substitutions`: the most frequent (reference word -> hypothesis word) pairs;
* `by_word_frequency`: errors of reference words grouped by how often training saw them
  (`metrics.errors_by_frequency`: unseen / rare / common, points adding up to WER);
* `insertions`: the most inserted words, and the utterances that look like hallucinations (more inserted
  words than `min_inserted`, or a hypothesis much longer than its reference);
* `fixed_and_broke`: the projector's best path against the speech-LLM's answer, word by reference word:
  *fixed* = the projector missed it and the LLM got it, *broke* = the other way round.
"""
from __future__ import annotations

from collections import Counter

import pandas as pd

from speechlm_lib.evaluation.records import UttRecord
from speechlm_lib.metrics import errors_by_frequency


def substitutions(records: list[UttRecord], top: int = 10) -> pd.DataFrame:
    pairs = Counter((r, h) for rec in records for op, r, h in rec.ops if op == "sub")
    return pd.DataFrame([{"reference": r, "hypothesis": h, "count": n} for (r, h), n in pairs.most_common(top)],
                        columns=["reference", "hypothesis", "count"])


def by_word_frequency(records: list[UttRecord], counts: dict[str, int], rare_below: int = 10) -> pd.DataFrame:
    """One row a frequency group: its share of reference words, its error rate, its WER points."""
    out = errors_by_frequency([r.reference for r in records], [r.hypothesis for r in records], counts, rare_below)
    rows = [{"group": g, **v} for g, v in out.items() if g != "insertions"]
    rows.append({"group": "insertions", "points": out["insertions"]})
    return pd.DataFrame(rows)


def insertions(records: list[UttRecord], top: int = 10, min_inserted: int = 3,
               length_ratio: float = 1.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(most inserted words, utterances that look like hallucinations)."""
    words = Counter(h for rec in records for op, _, h in rec.ops if op == "ins")
    common = pd.DataFrame([{"word": w, "count": n} for w, n in words.most_common(top)], columns=["word", "count"])
    odd = [{"id": r.id, "inserted": r.count("ins"), "reference": r.reference, "hypothesis": r.hypothesis}
           for r in records
           if r.count("ins") >= min_inserted or len(r.hypothesis.split()) > length_ratio * max(r.ref_words, 1)]
    return common, pd.DataFrame(odd, columns=["id", "inserted", "reference", "hypothesis"])


def fixed_and_broke(projector: list[UttRecord], llm: list[UttRecord], examples: int = 5) -> dict:
    """Reference words the LLM fixed / broke against the projector's best path (matched by utterance id):
    ``{"words", "fixed", "broke", "both_right", "both_wrong", "examples": DataFrame}``."""
    by_id = {r.id: r for r in llm}
    tally, rows = Counter(), []
    for p in projector:
        q = by_id.get(p.id)
        if q is None:
            continue
        ph, qh = p.ref_hits(), q.ref_hits()
        for a, b in zip(ph, qh):
            tally[{(False, True): "fixed", (True, False): "broke", (True, True): "both_right"}.get((a, b),
                                                                                                   "both_wrong")] += 1
        fixed, broke = sum(not a and b for a, b in zip(ph, qh)), sum(a and not b for a, b in zip(ph, qh))
        if fixed or broke:
            rows.append({"id": p.id, "fixed": fixed, "broke": broke, "reference": p.reference,
                         "projector": p.hypothesis, "speech-LLM": q.hypothesis})
    rows.sort(key=lambda r: -(r["fixed"] + r["broke"]))
    return {"words": sum(tally.values()), **{k: tally[k] for k in ("fixed", "broke", "both_right", "both_wrong")},
            "examples": pd.DataFrame(rows[:examples])}
