"""Output vocabularies for CTC: characters (default) or SentencePiece pieces.

Every vocabulary reserves id 0 for the CTC *blank* and works on text that went
through the project's one normalizer (`speechlm_lib.data.text.normalize`: lower
case, digits spelled out, punctuation removed). Characters the vocabulary lacks
are first reduced to their base letter (NFKD: "é" -> "e", "ü" -> "u"); what is
still unknown raises `OutOfVocabulary` naming the text and the characters.
`encode_all` is the bulk version: it skips such utterances and counts them in
a `Report`.

Vocabularies are chosen by name through `VOCABS` ("char", "sentencepiece")
and saved/loaded as JSON (`to_dict` / `vocab_from_dict`).
"""
from __future__ import annotations

import base64
import io
import string
import unicodedata
from typing import Iterable, Sequence

from speechlm_lib.data.records import Report
from speechlm_lib.data.text import normalize
from speechlm_lib.registry import Registry

VOCABS = Registry("vocabulary")
BLANK = "<blank>"
ENGLISH = string.ascii_lowercase + "' "  # letters, apostrophe, space


class OutOfVocabulary(ValueError):
    """A transcript holds characters that no vocabulary entry (or base letter) covers."""


def strip_accents(text: str) -> str:
    """NFKD-decompose and drop combining marks: "café" -> "cafe"."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


class CharVocab:
    """Characters: id 0 = blank, then one id per character (e.g. a-z, apostrophe, space)."""

    kind = "char"

    def __init__(self, chars: str = ENGLISH):
        if len(set(chars)) != len(chars):
            raise ValueError("duplicate characters in the vocabulary")
        self.tokens = [BLANK] + list(chars)
        self._index = {c: i for i, c in enumerate(self.tokens)}
        self.blank = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def prepare(self, text: str) -> str:
        """Normalize `text`; strip accents only when needed. Raises `OutOfVocabulary`."""
        norm = normalize(text)
        if any(c not in self._index for c in norm):
            norm = strip_accents(norm)
        bad = sorted({c for c in norm if c not in self._index})
        if bad:
            raise OutOfVocabulary(f"{text!r}: characters {bad} are not in the vocabulary")
        return norm

    def encode(self, text: str) -> list[int]:
        """Text -> ids (1..len-1; never the blank)."""
        return [self._index[c] for c in self.prepare(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text (blanks dropped; repeats are NOT collapsed here: see `ctc.greedy_decode`)."""
        return "".join(self.tokens[i] for i in ids if i != self.blank)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": "".join(self.tokens[1:])}

    @classmethod
    def from_dict(cls, d: dict) -> "CharVocab":
        return cls(d["chars"])


class SentencePieceVocab:
    """SentencePiece pieces shifted by one so that id 0 is the CTC blank."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.tokens = [BLANK] + [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        self.blank = 0
        self._chars = CharVocab(ENGLISH)  # the alphabet the pieces were trained on

    def __len__(self) -> int:
        return len(self.tokens)

    def prepare(self, text: str) -> str:
        return self._chars.prepare(text)

    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in self.sp.encode(self.prepare(text))]

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i - 1 for i in ids if i != self.blank])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model_proto": base64.b64encode(self.model_proto).decode("ascii")}

    @classmethod
    def from_dict(cls, d: dict) -> "SentencePieceVocab":
        return cls(base64.b64decode(d["model_proto"]))


@VOCABS.register("char")
def build_char(texts: Sequence[str] | None = None, chars: str = ENGLISH) -> CharVocab:
    """The character vocabulary (`texts` is accepted for a uniform builder signature and unused)."""
    return CharVocab(chars)


@VOCABS.register("sentencepiece")
def build_sentencepiece(texts: Sequence[str], vocab_size: int = 64, model_type: str = "unigram") -> SentencePieceVocab:
    """Train a SentencePiece model on the normalized `texts` (unencodable ones are left out)."""
    import sentencepiece as spm

    chars = CharVocab(ENGLISH)
    clean = []
    for t in texts:
        try:
            clean.append(chars.prepare(t))
        except OutOfVocabulary:
            continue
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(clean), model_writer=buf, vocab_size=vocab_size,
                                   model_type=model_type, character_coverage=1.0, bos_id=-1, eos_id=-1,
                                   unk_id=0, minloglevel=2, hard_vocab_limit=False)
    return SentencePieceVocab(buf.getvalue())


def vocab_from_dict(d: dict):
    """Rebuild a saved vocabulary (`to_dict` output)."""
    classes = {c.kind: c for c in (CharVocab, SentencePieceVocab)}
    if d.get("kind") not in classes:
        raise ValueError(f"unknown vocabulary kind {d.get('kind')!r}; known: {sorted(classes)}")
    return classes[d["kind"]].from_dict(d)


def encode_all(vocab, texts: Sequence[str], ids: Sequence[str] | None = None,
               report: Report | None = None) -> list[list[int] | None]:
    """Encode many transcripts; an unencodable one gives None and is named in `report`."""
    report = report if report is not None else Report()
    ids = ids if ids is not None else [str(i) for i in range(len(texts))]
    out: list[list[int] | None] = []
    for uid, text in zip(ids, texts):
        try:
            labels = vocab.encode(text)
        except OutOfVocabulary as e:
            report.skip(uid, str(e))
            out.append(None)
            continue
        if not labels:
            report.skip(uid, f"{text!r}: empty after normalization")
            out.append(None)
            continue
        out.append(labels)
    report.kept += sum(x is not None for x in out)
    return out
