"""The one text normalizer and the metrics every stage reports.

`normalize` is applied to hypothesis and reference alike before WER/CER:

1. Unicode NFKC, lower case;
2. digits spelled out as words, one digit at a time ("42" -> "four two")
   so that "42" and "four two" count the same (a transcript may hold either);
3. apostrophes kept inside words ("don't"), every other punctuation mark
   replaced by a space; letters with accents kept (German "ä", "ß");
4. whitespace collapsed.
"""
from __future__ import annotations

import re
import unicodedata

import jiwer

_DIGITS = "zero one two three four five six seven eight nine".split()
_PUNCT = re.compile(r"[^\w\s']|_")
_APOS = re.compile(r"(?<!\w)'|'(?!\w)")


def normalize(text: str) -> str:
    """Normalize a transcript for scoring (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    text = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", text)
    text = _PUNCT.sub(" ", text)
    text = _APOS.sub(" ", text)
    return " ".join(text.split())


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
