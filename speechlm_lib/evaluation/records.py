"""One decoded utterance as a record: reference, hypothesis, their word alignment, keyword hits, seconds.

The alignment is jiwer's (on `data.text.normalize`d words, the same as `metrics.wer`), flattened to one
operation a word::

    ("equal", "the", "the"), ("sub", "cat", "hat"), ("del", "sat", None), ("ins", None, "um")

From it come the error counts (so corpus WER = sum of errors / sum of reference words, which is what the
bootstrap resamples), the per-reference-word hits (where the LLM fixed or broke what the projector heard) and
the biased/unbiased split of the errors: B-WER counts errors on the words of the keyword list, U-WER the rest
(Le et al. 2021: a substitution or deletion belongs to its reference word; an insertion to the inserted word).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import jiwer

from speechlm_lib.data.text import normalize

OPS = ("equal", "sub", "del", "ins")


def align(reference: str, hypothesis: str) -> list[tuple[str, str | None, str | None]]:
    """Word alignment of normalised texts: ``[(op, ref_word | None, hyp_word | None)]`` (see the module doc)."""
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    if not ref:
        return [("ins", None, w) for w in hyp]
    if not hyp:
        return [("del", w, None) for w in ref]
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    ops = []
    for c in out.alignments[0]:
        r, h = ref[c.ref_start_idx:c.ref_end_idx], hyp[c.hyp_start_idx:c.hyp_end_idx]
        if c.type == "equal":
            ops += [("equal", a, b) for a, b in zip(r, h)]
        elif c.type == "substitute":
            ops += [("sub", a, b) for a, b in zip(r, h)]
        elif c.type == "delete":
            ops += [("del", a, None) for a in r]
        else:
            ops += [("ins", None, b) for b in h]
    return ops


def keyword_words(keywords) -> set[str]:
    """The normalised words of a keyword list (a multi-word keyword gives each of its words)."""
    return {w for k in keywords for w in normalize(k).split()}


@dataclass
class UttRecord:
    """One utterance decoded by one system."""

    id: str
    reference: str
    hypothesis: str
    ops: list = field(default_factory=list)  # `align(reference, hypothesis)`
    keywords: list[str] = field(default_factory=list)  # the utterance's own rare words (its manifest's keywords)
    biasing: list[str] = field(default_factory=list)  # the keyword list the decoder was given (B-WER counts these)
    seconds: float = 0.0  # this utterance's share of its batch's decoding time (by duration)
    audio_seconds: float = 0.0  # its duration
    meta: dict = field(default_factory=dict)  # speaker, language and the manifest's extras (age, gender, snr_db)
    audio: str = ""  # the audio file (for the explorer's player)

    @classmethod
    def make(cls, utt, hypothesis: str, reference: str | None = None, biasing=(), seconds: float = 0.0,
             audio_seconds: float | None = None) -> "UttRecord":
        """The record of `utt` (an `Utterance`) decoded as `hypothesis` (reference: its text unless given)."""
        reference = utt.text if reference is None else reference
        meta = {"speaker": utt.speaker, "language": utt.language, **utt.extra}
        return cls(id=utt.id, reference=reference, hypothesis=hypothesis, ops=align(reference, hypothesis),
                   keywords=list(utt.keywords), biasing=list(biasing), seconds=seconds,
                   audio_seconds=utt.duration if audio_seconds is None else audio_seconds, meta=meta, audio=utt.audio)

    def count(self, op: str) -> int:
        return sum(o == op for o, _, _ in self.ops)

    @property
    def ref_words(self) -> int:
        return sum(o != "ins" for o, _, _ in self.ops)

    @property
    def errors(self) -> int:
        return sum(o != "equal" for o, _, _ in self.ops)

    @property
    def wrong(self) -> bool:
        return self.errors > 0

    def ref_hits(self) -> list[bool]:
        """One flag a reference word: matched (True) or substituted / deleted."""
        return [o == "equal" for o, _, _ in self.ops if o != "ins"]

    def keyword_hits(self) -> dict[str, bool]:
        """Each of the utterance's keywords: are all its words in the hypothesis?"""
        said = set(normalize(self.hypothesis).split())
        return {k: all(w in said for w in normalize(k).split()) for k in self.keywords}

    def biased_counts(self) -> dict[str, int]:
        """Reference words and errors, split by whether the word is on the biasing list (the keyword list
        given to the decoder, or the utterance's own keywords when none was): ``{"b_words", "b_errors",
        "u_words", "u_errors"}``."""
        listed = keyword_words(self.biasing or self.keywords)
        out = {"b_words": 0, "b_errors": 0, "u_words": 0, "u_errors": 0}
        for op, r, h in self.ops:
            side = "b" if (r if op != "ins" else h) in listed else "u"
            out[f"{side}_words"] += op != "ins"
            out[f"{side}_errors"] += op != "equal"
        return out

    def to_dict(self) -> dict:
        """A flat row for a table (errors counted, no alignment)."""
        return {"id": self.id, "reference": self.reference, "hypothesis": self.hypothesis,
                "words": self.ref_words, "sub": self.count("sub"), "del": self.count("del"),
                "ins": self.count("ins"), "seconds": round(self.seconds, 4), "audio_seconds": self.audio_seconds,
                "keyword_misses": sum(not v for v in self.keyword_hits().values()), **self.meta}


COLOURS = {"equal": None, "sub": "#f4b400", "del": "#db4437", "ins": "#4285f4"}


def alignment_html(ops) -> str:
    """The alignment as two rows of HTML (REF over HYP), substitutions amber, deletions red, insertions blue."""
    import html

    ref, hyp = [], []
    for op, r, h in ops:
        colour = COLOURS[op]
        style = f' style="background:{colour};padding:0 2px"' if colour else ""
        width = max(len(r or ""), len(h or ""))
        ref.append(f"<span{style}>{html.escape((r or '*' * len(h or '')).ljust(width))}</span>")
        hyp.append(f"<span{style}>{html.escape((h or '*' * len(r or '')).ljust(width))}</span>")
    return ('<pre style="line-height:1.6">REF ' + " ".join(ref) + "\nHYP " + " ".join(hyp) + "</pre>")
