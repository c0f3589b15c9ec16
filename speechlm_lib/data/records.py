"""The one record type every stage uses, and JSONL manifests of it.

A manifest is a JSONL file, one utterance a line::

    {"id": "train-000001", "audio": "audio/train-000001.wav", "text": "...",
     "speaker": "en-us+m3_p45_r160", "duration": 3.21, "language": "en",
     "keywords": ["Zbigniew"], "translation": "..."}

``audio`` may be relative to the manifest's folder. Bulk readers never stop at
a bad line: they skip it, and the returned `Report` counts and names it.
"""
from __future__ import annotations

import json
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict, root: Path | None = None) -> "Utterance":
        """Build from a manifest row; `root` resolves relative audio paths."""
        if not isinstance(d, dict):
            raise ValueError("row is not a JSON object")
        missing = [k for k in ("audio", "text") if k not in d]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        audio = str(d["audio"])
        if root is not None and not Path(audio).is_absolute():
            audio = str(Path(root) / audio)
        uid = str(d.get("id") or Path(audio).stem)
        return cls(
            id=uid,
            audio=audio,
            text=str(d["text"]),
            speaker=str(d.get("speaker", "unknown")),
            duration=float(d.get("duration") or 0.0),
            language=str(d.get("language", "en")),
            keywords=list(d.get("keywords") or []),
            translation=d.get("translation"),
        )


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
    """Read a JSONL manifest. Malformed lines are skipped and named in `report`.

    Raises FileNotFoundError (naming the file) when the manifest itself is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    report = report if report is not None else Report()
    utts = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                utts.append(Utterance.from_dict(json.loads(line), root=path.parent))
            except (ValueError, TypeError) as e:
                report.skip(f"{path}:{i}", str(e))
    report.kept += len(utts)
    return utts
