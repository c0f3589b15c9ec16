"""From per-utterance records to the numbers a table reports, with honest uncertainty.

* `summarize`: WER / CER, U-WER / B-WER, keyword recall, BLEU / chrF (translation), RTF;
* `bootstrap_wer`: a 95 % confidence interval on corpus WER by resampling utterances (Bisani & Ney 2004):
  draw n utterances with replacement, WER = their errors / their reference words, repeat, take percentiles;
* `paired_bootstrap`: two systems on the same utterances, resampled together: the interval of the WER
  difference and how often system B was better -- the honest way to say one system beats another;
* `breakdown`: WER (with its interval) per value of any metadata field: a manifest's extras (age, gender),
  or a derived one in `FIELDS` (``accent`` and ``voice_gender`` of a synthetic speaker, ``age_group``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from speechlm_lib.evaluation.records import UttRecord
from speechlm_lib.metrics import bleu, cer, chrf
from speechlm_lib.registry import Registry

FIELDS = Registry("metadata field")


def _counts(records: list[UttRecord]) -> tuple[np.ndarray, np.ndarray]:
    """(errors, reference words) per utterance."""
    return (np.array([r.errors for r in records], dtype=float), np.array([r.ref_words for r in records], dtype=float))


def corpus_wer(records: list[UttRecord]) -> float:
    e, n = _counts(records)
    return float(e.sum() / max(n.sum(), 1))


def summarize(records: list[UttRecord], translation: bool = False) -> dict:
    """Corpus figures of one system on one test set (``translation``: BLEU and chrF as well)."""
    refs, hyps = [r.reference for r in records], [r.hypothesis for r in records]
    b = {k: sum(r.biased_counts()[k] for r in records) for k in ("b_words", "b_errors", "u_words", "u_errors")}
    hits = [h for r in records for h in r.keyword_hits().values()]
    audio, seconds = sum(r.audio_seconds for r in records), sum(r.seconds for r in records)
    out = {"n": len(records), "words": int(sum(r.ref_words for r in records)), "wer": corpus_wer(records),
           "cer": cer(refs, hyps) if records else 0.0,
           "sub": sum(r.count("sub") for r in records), "del": sum(r.count("del") for r in records),
           "ins": sum(r.count("ins") for r in records),
           "b_wer": b["b_errors"] / b["b_words"] if b["b_words"] else float("nan"),
           "u_wer": b["u_errors"] / max(b["u_words"], 1),
           "keyword_recall": sum(hits) / len(hits) if hits else float("nan"),
           "seconds": seconds, "audio_seconds": audio, "rtf": seconds / max(audio, 1e-9)}
    if translation:
        out.update(bleu=bleu(refs, hyps), chrf=chrf(refs, hyps))
    return out


def bootstrap_wer(records: list[UttRecord], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple:
    """``(low, high)``: the `level` percentile interval of corpus WER over utterance resamples."""
    e, n = _counts(records)
    if not len(e):
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(e), size=(n_boot, len(e)))
    wers = e[idx].sum(1) / np.maximum(n[idx].sum(1), 1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(wers, tail)), float(np.percentile(wers, 100 - tail))


def paired_bootstrap(a: list[UttRecord], b: list[UttRecord], n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """System B against system A on the same utterances (matched by id): ``{"delta": WER(B) - WER(A),
    "low", "high": its interval, "ratio": WER(B) / WER(A), "ratio_low", "ratio_high": its interval,
    "b_better": share of resamples where B's WER is lower}``."""
    by_id = {r.id: r for r in b}
    pairs = [(r, by_id[r.id]) for r in a if r.id in by_id]
    if not pairs:
        raise ValueError("the two systems share no utterance ids")
    ea, na = _counts([p[0] for p in pairs])
    eb, nb = _counts([p[1] for p in pairs])
    idx = np.random.default_rng(seed).integers(0, len(pairs), size=(n_boot, len(pairs)))
    wa, wb = ea[idx].sum(1) / np.maximum(na[idx].sum(1), 1), eb[idx].sum(1) / np.maximum(nb[idx].sum(1), 1)
    delta, ratio = wb - wa, wb / np.maximum(wa, 1e-12)
    tail = (1 - level) / 2 * 100
    whole_a, whole_b = ea.sum() / max(na.sum(), 1), eb.sum() / max(nb.sum(), 1)
    return {"delta": float(whole_b - whole_a),
            "low": float(np.percentile(delta, tail)), "high": float(np.percentile(delta, 100 - tail)),
            "ratio": float(whole_b / max(whole_a, 1e-12)), "ratio_low": float(np.percentile(ratio, tail)),
            "ratio_high": float(np.percentile(ratio, 100 - tail)),
            "b_better": float((delta < 0).mean()), "n": len(pairs)}


# ----- metadata fields -----------------------------------------------------------------------------------
def field_value(record: UttRecord, name: str):
    """`name` of a record: a derived field in `FIELDS`, else its metadata (speaker, extras), else "unknown"."""
    if name in FIELDS:
        return FIELDS.build(name, record.meta)
    value = record.meta.get(name)
    return "unknown" if value is None else value


@FIELDS.register("accent")
def _accent(meta: dict) -> str:
    """A synthetic speaker's eSpeak voice (``en-gb-scotland+f5_...`` -> ``en-gb-scotland``), or ``accent``."""
    return str(meta.get("accent") or meta.get("speaker", "unknown").split("+")[0])


@FIELDS.register("voice_gender")
def _voice_gender(meta: dict) -> str:
    """``gender`` when the manifest has it; a synthetic voice's variant letter (``+f5`` / ``+m3``) otherwise."""
    if meta.get("gender"):
        return str(meta["gender"])
    variant = meta.get("speaker", "").partition("+")[2][:1]
    return {"f": "f", "m": "m"}.get(variant, "unknown")


AGE_GROUPS = ((0, 12, "child (<12)"), (12, 18, "teen (12-17)"), (18, 200, "adult (18+)"))


@FIELDS.register("age_group")
def _age_group(meta: dict) -> str:
    age = meta.get("age")
    if not isinstance(age, (int, float)):
        return "unknown"
    return next(name for lo, hi, name in AGE_GROUPS if lo <= age < hi)


def breakdown(records: list[UttRecord], name: str, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """WER per value of field `name` (`field_value`), with utterances, words and a bootstrap interval."""
    groups: dict = {}
    for r in records:
        groups.setdefault(field_value(r, name), []).append(r)
    rows = []
    for value, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        low, high = bootstrap_wer(rs, n_boot, seed)
        rows.append({name: value, "utterances": len(rs), "words": sum(r.ref_words for r in rs),
                     "wer": corpus_wer(rs), "wer_low": low, "wer_high": high})
    return pd.DataFrame(rows)
