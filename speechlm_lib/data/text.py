"""The one text normalizer, applied to hypothesis and reference alike before any metric.

`normalize` (the metrics in `speechlm_lib.metrics` call it):

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
