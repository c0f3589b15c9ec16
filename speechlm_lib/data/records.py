"""The one record type every stage uses, and JSONL manifests of it.

A manifest is a JSONL file, one utterance a line::

    {"id": "train-000001", "audio": "audio/train-000001.wav", "text": "...",
     "speaker": "en-us+m3_p45_r160", "duration": 3.21, "language": "en",
     "keywords": ["Zbigniew"], "translation": "...", "gender": "f", "age": 34}

Any other field (speechocean762's ``gender`` and ``age``, an accent, an SNR) is kept in
``Utterance.extra`` and written back as it was, so evaluation can break results down by it.
``audio`` may be relative to the manifest's folder. Bulk readers never stop at
a bad line: they skip it, and the returned `Report` counts and names it.
"""
from __future__ import annotations

import codecs
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable


@dataclass
class Utterance:
    """One utterance: audio file, transcript and metadata."""

    id: str  # unique id within a corpus
    audio: str  # path to a wav/flac file (absolute, or relative to the manifest)
    text: str  # the transcript (source language)
    speaker: str = "unknown"  # speaker id; splits are disjoint by speaker
    duration: float = 0.0  # seconds
    language: str = "en"  # ISO code of `text`
    keywords: list[str] = field(default_factory=list)  # rare words in `text` (biasing stage)
    translation: str | None = None  # German translation of `text` (translation stage)
    extra: dict = field(default_factory=dict)  # a manifest's other fields (age, gender, accent, snr_db, ...)

    def to_json(self) -> str:
        """One manifest line: the fields, then the extras at the top level (as they were read)."""
        row = asdict(self)
        extra = row.pop("extra")
        return json.dumps({**extra, **row}, ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict, root: Path | None = None) -> "Utterance":
        """Build from a manifest row; `root` resolves relative audio paths.

        Raises ValueError naming the field for a row that is not an object, lacks ``audio`` or
        ``text``, or holds a null / non-string ``audio``, ``text`` or ``id``, a non-number
        ``duration`` or ``keywords`` that are not a list of strings.
        """
        if not isinstance(d, dict):
            raise ValueError("row is not a JSON object")
        missing = [k for k in ("audio", "text") if k not in d]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        for k in ("audio", "text"):
            if not isinstance(d[k], str):
                raise ValueError(f"field {k!r} is {_kind(d[k])}, not a string")
        if not d["audio"].strip():
            raise ValueError("field 'audio' is an empty path")
        for k in ("id", "speaker", "language", "translation"):
            if d.get(k) is not None and not isinstance(d[k], (str, int)):
                raise ValueError(f"field {k!r} is {_kind(d[k])}, not a string")
        duration = d.get("duration") or 0.0
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration):
            raise ValueError(f"field 'duration' is {duration!r}, not a finite number of seconds")
        keywords = d.get("keywords") or []
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            raise ValueError("field 'keywords' is not a list of strings")
        audio = d["audio"]
        if root is not None and not Path(audio).is_absolute():
            audio = str(Path(root) / audio)
        uid = str(d["id"]) if d.get("id") not in (None, "") else Path(audio).stem
        return cls(
            id=uid,
            audio=audio,
            text=d["text"],
            speaker=str(d.get("speaker") or "unknown"),
            duration=float(duration),
            language=str(d.get("language") or "en"),
            keywords=list(keywords),
            translation=d.get("translation"),
            extra=_extras(d),
        )


def _extras(d: dict) -> dict:
    """A row's fields that are not `Utterance` fields (an ``extra`` object, as `asdict` writes it, merged in)."""
    known = {f for f in Utterance.__dataclass_fields__ if f != "extra"}
    nested = d.get("extra") if isinstance(d.get("extra"), dict) else {}
    return {**nested, **{k: v for k, v in d.items() if k not in known and k != "extra"}}


def _kind(value) -> str:
    return "null" if value is None else f"a {type(value).__name__} ({str(value)[:30]!r})"


@dataclass
class Report:
    """What a bulk job kept and skipped: ``skipped`` holds (item, reason) pairs."""

    kept: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, item: str, reason: str) -> None:
        self.skipped.append((item, reason))

    def __str__(self) -> str:
        lines = [f"kept {self.kept}, skipped {len(self.skipped)}"]
        lines += [f"  skipped {item}: {reason}" for item, reason in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


def write_manifest(path: str | Path, utts: Iterable[Utterance], relative_to: Path | None = None) -> Path:
    """Write utterances as JSONL (atomically); audio paths relative to `relative_to` if given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for u in utts:
            if relative_to is not None:
                try:
                    u = Utterance(**{**asdict(u), "audio": str(Path(u.audio).relative_to(relative_to))})
                except ValueError:
                    pass
            f.write(u.to_json() + "\n")
    tmp.replace(path)
    return path


def read_manifest(path: str | Path, report: Report | None = None) -> list[Utterance]:
    """Read a JSONL manifest. Bad lines are skipped and named in `report` as ``file:line``.

    Each line is decoded on its own, so one non-UTF-8 byte costs only its line; a UTF-8
    byte-order mark before the first row is ignored; a row whose ``id`` repeats an earlier
    row's is skipped (ids must be unique: stages pair audio, labels and cached states by id).
    Raises FileNotFoundError (naming the file) when the manifest itself is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    report = report if report is not None else Report()
    utts, first_line = [], {}
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                u = _parse_line(raw, i, path.parent)
                if u is None:
                    continue
                if u.id in first_line:
                    raise ValueError(f"duplicate id {u.id!r} (first on line {first_line[u.id]})")
            except (ValueError, TypeError) as e:
                report.skip(f"{path}:{i}", str(e))
                continue
            first_line[u.id] = i
            utts.append(u)
    report.kept += len(utts)
    return utts


def _parse_line(raw: bytes, lineno: int, root: Path) -> Utterance | None:
    """One manifest line (bytes) -> an `Utterance`, None for a blank line; ValueError says what is wrong."""
    if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    return Utterance.from_dict(row, root=root)


def drop_duplicate_ids(utts: Iterable[Utterance], report: Report | None = None) -> list[Utterance]:
    """The utterances in order without those whose id repeats an earlier one (skipped and named)."""
    report = report if report is not None else Report()
    seen, out = set(), []
    for u in utts:
        if u.id in seen:
            report.skip(u.id, f"{u.audio}: duplicate id {u.id!r} (ids must be unique)")
        else:
            seen.add(u.id)
            out.append(u)
    return out
