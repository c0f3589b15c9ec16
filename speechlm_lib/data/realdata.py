"""Real speech in the same record type as the synthetic corpus.

Two ways in:

* `load_local_manifest(folder)` -- a folder with a JSONL manifest, e.g. the
  speechocean762 copy in ``../shared/data/speechocean762`` (``transcripts.jsonl``);
* `load_hf_dataset(name, split, columns=...)` -- any `datasets` audio dataset by
  hub name or local path (LibriSpeech, ``mispeech/speechocean762``, an
  ``audiofolder``, a ``save_to_disk`` folder), with a `ColumnMap` saying which
  column holds what. Audio is read without decoding (no torchcodec needed) and
  written once to files, so every stage sees plain wav/flac paths.

Real corpora must be split by speaker, never by utterance: `split_by_speaker`.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
from tqdm.auto import tqdm

from speechlm_lib.config import cache_dir, shared_data_dir
from speechlm_lib.data.audio import AudioError, check_file
from speechlm_lib.data.records import Report, Utterance, read_manifest


def speechocean_dir() -> Path:
    """Where the optional speechocean762 copy lives (``../shared/data/speechocean762``)."""
    return shared_data_dir() / "speechocean762"


def load_local_manifest(folder: str | Path, manifest: str = "transcripts.jsonl",
                        report: Report | None = None, check_audio: bool = True) -> list[Utterance]:
    """Utterances from ``folder/manifest`` (`records.read_manifest`: bad lines and duplicate ids skipped);
    rows whose audio file `audio.check_file` refuses (missing, empty, not a regular file, too large)
    are skipped and named too.

    Raises FileNotFoundError naming the folder when it or its manifest is absent.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: data folder not found")
    report = report if report is not None else Report()
    inner = Report()
    utts = read_manifest(folder / manifest, inner)
    report.skipped += inner.skipped
    if check_audio:
        utts = [u for u in utts if _file_ok(u, report)]
    report.kept += len(utts)
    return utts


def _file_ok(u: Utterance, report: Report) -> bool:
    try:
        check_file(u.audio)
        return True
    except AudioError as e:
        report.skip(u.id, str(e))
        return False


@dataclass
class ColumnMap:
    """Which dataset column holds each `Utterance` field (None: not present)."""

    audio: str = "audio"  # an Audio column (or file paths)
    text: str = "text"  # the transcript
    speaker: str | None = "speaker_id"  # speaker id; LibriSpeech: "speaker_id"
    id: str | None = "id"  # utterance id; falls back to the row index
    translation: str | None = None  # optional translation column


LIBRISPEECH = ColumnMap(audio="audio", text="text", speaker="speaker_id", id="id")
SPEECHOCEAN_HUB = ColumnMap(audio="audio", text="text", speaker="speaker", id=None)


def _open_dataset(name: str, split: str, **load_kwargs):
    """A `datasets.Dataset` from a ``save_to_disk`` folder, or `load_dataset` by name/path."""
    import datasets

    path = Path(name)
    if path.is_dir() and (path / "dataset_info.json").is_file():
        ds = datasets.load_from_disk(str(path))
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    return datasets.load_dataset(name, split=split, **load_kwargs)


def _write_audio(cell, dest: Path) -> Path:
    """Materialize an undecoded Audio cell (``{"path", "bytes"}``) or a path as a file."""
    if isinstance(cell, (str, Path)):
        return Path(cell)
    if cell.get("bytes"):
        suffix = Path(cell.get("path") or "x.wav").suffix or ".wav"
        out = dest.with_suffix(suffix)
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(cell["bytes"])
        return out
    if cell.get("path"):
        return Path(cell["path"])
    raise ValueError("audio cell has neither bytes nor path")


def load_hf_dataset(name: str, split: str = "train", columns: ColumnMap = ColumnMap(),
                    out_dir: str | Path | None = None, max_items: int | None = None,
                    report: Report | None = None, **load_kwargs) -> list[Utterance]:
    """Utterances from a `datasets` audio dataset; bad rows are skipped and named in `report`.

    Audio is kept undecoded and written to ``out_dir`` (default: the cache) once.
    """
    from datasets import Audio

    ds = _open_dataset(name, split, **load_kwargs)
    for col in (columns.audio, columns.text):
        if col not in ds.column_names:
            raise KeyError(f"{name}: no column {col!r}; columns are {ds.column_names}")
    if isinstance(ds.features.get(columns.audio), Audio):
        ds = ds.cast_column(columns.audio, Audio(decode=False))
    if max_items is not None:
        ds = ds.select(range(min(max_items, len(ds))))
    tag = hashlib.sha1(f"{name}:{split}".encode()).hexdigest()[:10]
    out = Path(out_dir) if out_dir else cache_dir() / "datasets" / f"{Path(name).name}-{split}-{tag}"
    report = report if report is not None else Report()
    seen: set[str] = set()
    utts = [u for i, row in enumerate(tqdm(ds, desc=f"{name}:{split}", leave=False))
            if (u := row_to_utterance(row, i, columns, out, report, seen)) is not None]
    report.kept += len(utts)
    return utts


def row_to_utterance(row: dict, i: int, columns: ColumnMap, out: Path, report: Report,
                      seen: set[str]) -> Utterance | None:
    """One dataset row as an `Utterance` (its audio written to ``out/<id>``), or None (skipped, named)."""
    uid = str(row[columns.id]) if columns.id and columns.id in row else f"{i:07d}"
    if uid in seen:  # its audio file would be the first row's: skip rather than pair text with other audio
        report.skip(uid, f"row {i}: duplicate id {uid!r} (ids must be unique)")
        return None
    seen.add(uid)
    try:
        text = row[columns.text]
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty transcript")
        path = check_file(_write_audio(row[columns.audio], out / uid))
        info = sf.info(str(path))
    except Exception as e:  # bulk job: skip, count and name
        report.skip(uid, str(e))
        return None
    return Utterance(
        id=uid, audio=str(path), text=text,
        speaker=str(row[columns.speaker]) if columns.speaker and columns.speaker in row else "unknown",
        duration=round(info.frames / info.samplerate, 3),
        translation=row.get(columns.translation) if columns.translation else None,
    )


def split_by_speaker(utts: list[Utterance], fractions: dict[str, float], seed: int = 0) -> dict[str, list[Utterance]]:
    """Speaker-disjoint splits, e.g. ``{"train": 0.8, "dev": 0.1, "test": 0.1}`` of the speakers."""
    speakers = sorted({u.speaker for u in utts})
    random.Random(seed).shuffle(speakers)
    total = sum(fractions.values())
    out, start = {}, 0
    names = list(fractions)
    for j, name in enumerate(names):
        end = len(speakers) if j == len(names) - 1 else start + round(len(speakers) * fractions[name] / total)
        chosen = set(speakers[start:end])
        out[name] = [u for u in utts if u.speaker in chosen]
        start = end
    return out
