"""Where a stage's utterances come from: one `DataSource` in every stage's config, three kinds.

* ``synthetic`` -- the eSpeak NG corpus of a preset (`corpus.ensure_corpus`: built when missing);
* ``manifest``  -- a local folder of JSONL manifests (`realdata.load_local_manifest`), e.g. the
                   speechocean762 copy in ``../shared/data/speechocean762``;
* ``hf``        -- a `datasets` corpus by hub name or local path, with a `ColumnMap` saying which
                   column holds what (`realdata.load_hf_dataset`; ``streaming`` reads it row by row).

``splits`` maps the stage's split names to what the source calls them: a manifest file name
inside the folder, or a dataset split (a list of them is read as one). With ``split_by_speaker``
every listed split is read into one pool and cut into speaker-disjoint parts instead, e.g.
``{"train": 0.8, "dev": 0.1, "test": 0.1}`` -- real corpora are split by speaker, never by utterance.

    load_source(DataSource(kind="manifest", name="../shared/data/speechocean762",
                           split_by_speaker={"train": 0.8, "dev": 0.1, "test": 0.1}))
    -> {"train": [Utterance, ...], "dev": [...], "test": [...]}

Adding a kind is one decorated loader in `SOURCES`. Bad rows are skipped, counted and named in a
`Report`; a missing folder, file or column is an error naming it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from tqdm.auto import tqdm

from speechlm_lib.data.realdata import ColumnMap, load_hf_dataset, load_local_manifest, split_by_speaker
from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.registry import Registry

SOURCES = Registry("data source kind")
SPLITS = ("train", "dev", "test")


@dataclass
class DataSource:
    """Which utterances a stage reads (see the module docstring)."""

    kind: str = "synthetic"  # synthetic | manifest | hf (a loader in data.sources.SOURCES)
    name: str | None = None  # synthetic: corpus preset (None = the stage's corpus profile); manifest: folder;
    #   hf: hub name (openslr/librispeech_asr), a local dataset folder or a save_to_disk folder
    splits: dict = field(default_factory=dict)  # split -> manifest file / dataset split(s); empty = the kind's
    #   default (manifest: train/dev/test.jsonl if present, else transcripts.jsonl; hf: train/validation/test)
    split_by_speaker: dict | None = None  # fractions, e.g. {train: 0.8, dev: 0.1, test: 0.1}: read every listed
    #   split as one pool and cut it into speaker-disjoint parts (None = take the splits as they are)
    seed: int = 0  # shuffles the speakers of split_by_speaker
    columns: ColumnMap = field(default_factory=ColumnMap)  # hf: which column holds audio, text, speaker, id
    config: str | None = None  # hf: the dataset's configuration name (LibriSpeech: clean / other / all)
    max_items: int | None = None  # hf: read at most this many rows of each dataset split (None = all)
    streaming: bool = False  # hf: stream rows instead of downloading whole shards first (audio still lands on disk)
    audio_dir: str | None = None  # hf: where the audio files are written (None = config.cache_dir()/datasets)


def load_source(src: DataSource, report: Report | None = None,
                corpus_profile: str | None = None) -> dict[str, list[Utterance]]:
    """``{split: [Utterance]}`` for `src`; `corpus_profile` names the synthetic corpus when ``src.name`` is None.

    Skipped rows (malformed lines, missing audio, empty transcripts) are counted and named in `report`."""
    report = report if report is not None else Report()
    pools = SOURCES.build(src.kind, src, report, corpus_profile)
    if src.split_by_speaker:
        pool = [u for utts in pools.values() for u in utts]
        return split_by_speaker(pool, dict(src.split_by_speaker), seed=src.seed)
    return pools


def describe(src: DataSource, corpus_profile: str | None = None) -> str:
    """One line saying what `src` reads (for summaries and model cards)."""
    name = src.name or (f"the synthetic corpus of profile {corpus_profile}" if src.kind == "synthetic" else "?")
    parts = [f"{src.kind}: {name}"]
    if src.config:
        parts.append(f"config {src.config}")
    if src.splits:
        parts.append("splits " + ", ".join(f"{k}={v}" for k, v in src.splits.items()))
    if src.split_by_speaker:
        parts.append("split by speaker " + "/".join(f"{k} {v}" for k, v in src.split_by_speaker.items()))
    if src.max_items:
        parts.append(f"at most {src.max_items} rows a split")
    return ", ".join(parts)


@SOURCES.register("synthetic")
def _synthetic(src: DataSource, report: Report, corpus_profile: str | None) -> dict[str, list[Utterance]]:
    from speechlm_lib.data.corpus import ensure_corpus
    from speechlm_lib.data.records import read_manifest

    manifests = ensure_corpus(src.name or corpus_profile)
    wanted = src.splits or {s: s for s in SPLITS}
    missing = [v for v in wanted.values() if v not in manifests]
    if missing:
        raise KeyError(f"synthetic corpus has no split(s) {missing}; it has {sorted(manifests)}")
    return {split: read_manifest(manifests[name], report) for split, name in wanted.items()}


@SOURCES.register("manifest")
def _manifest(src: DataSource, report: Report, corpus_profile: str | None) -> dict[str, list[Utterance]]:
    if not src.name:
        raise ValueError("a manifest data source needs `name`: the folder holding the JSONL manifests")
    folder = Path(src.name).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: data folder not found")
    wanted = src.splits or _default_manifests(folder)
    out = {}
    for split, files in wanted.items():
        out[split] = [u for f in _as_list(files) for u in load_local_manifest(folder, f, report=report)]
    return out


def _default_manifests(folder: Path) -> dict[str, str]:
    """train/dev/test.jsonl when the folder has them all, else its one transcripts.jsonl (as "all")."""
    if all((folder / f"{s}.jsonl").is_file() for s in SPLITS):
        return {s: f"{s}.jsonl" for s in SPLITS}
    if (folder / "transcripts.jsonl").is_file():
        return {"all": "transcripts.jsonl"}
    raise FileNotFoundError(f"{folder}: neither train/dev/test.jsonl nor transcripts.jsonl; "
                            f"name the manifests in data.source.splits")


@SOURCES.register("hf")
def _hf(src: DataSource, report: Report, corpus_profile: str | None) -> dict[str, list[Utterance]]:
    if not src.name:
        raise ValueError("an hf data source needs `name`: a hub dataset name or a local dataset folder")
    wanted = src.splits or {"train": "train", "dev": "validation", "test": "test"}
    kwargs = {"name": src.config} if src.config else {}
    out = {}
    for split, names in wanted.items():
        out[split] = []
        for name in _as_list(names):
            out[split] += _read_hf(src, name, report, kwargs)
    return out


def _read_hf(src: DataSource, split: str, report: Report, kwargs: dict) -> list[Utterance]:
    tag = hashlib.sha1(f"{src.name}:{src.config}:{split}".encode()).hexdigest()[:10]
    root = Path(src.audio_dir) if src.audio_dir else None
    out_dir = (root / f"{split}-{tag}") if root else None
    if not src.streaming:
        return load_hf_dataset(src.name, split, src.columns, out_dir=out_dir, max_items=src.max_items,
                               report=report, **kwargs)
    return _stream_hf(src, split, out_dir, report, kwargs, tag)


def _stream_hf(src: DataSource, split: str, out_dir: Path | None, report: Report, kwargs: dict,
               tag: str) -> list[Utterance]:
    """`load_hf_dataset` for ``streaming=True``: rows are read one by one (no whole shard first)."""
    import datasets

    from speechlm_lib.config import cache_dir
    from speechlm_lib.data.realdata import _row_to_utterance

    ds = datasets.load_dataset(src.name, split=split, streaming=True, **kwargs)
    features = ds.features or {}
    if isinstance(features.get(src.columns.audio), datasets.Audio):
        ds = ds.cast_column(src.columns.audio, datasets.Audio(decode=False))
    out = out_dir or cache_dir() / "datasets" / f"{Path(src.name).name}-{split}-{tag}"
    rows = islice(ds, src.max_items) if src.max_items is not None else ds
    utts = [u for i, row in enumerate(tqdm(rows, desc=f"{src.name}:{split}", leave=False))
            if (u := _row_to_utterance(row, i, src.columns, out, report)) is not None]
    report.kept += len(utts)
    return utts


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]
