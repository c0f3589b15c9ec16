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
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

from tqdm.auto import tqdm

from speechlm_lib.data.realdata import ColumnMap, load_local_manifest, split_by_speaker
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
    text_case: str | None = None  # rewrite transcripts: "sentence" turns an all-caps corpus ("WE CALL IT BEAR")
    #   into "We call it bear", the spelling an LLM reads best; "lower"; None = as written (scoring ignores case)


def load_source(src: DataSource, report: Report | None = None,
                corpus_profile: str | None = None) -> dict[str, list[Utterance]]:
    """``{split: [Utterance]}`` for `src`; `corpus_profile` names the synthetic corpus when ``src.name`` is None.

    Skipped rows (malformed lines, missing audio, empty transcripts) are counted and named in `report`."""
    report = report if report is not None else Report()
    pools = SOURCES.build(src.kind, src, report, corpus_profile)
    if src.text_case is not None:
        pools = {split: recase(utts, src.text_case) for split, utts in pools.items()}
    if src.split_by_speaker:
        pool = [u for utts in pools.values() for u in utts]
        return split_by_speaker(pool, dict(src.split_by_speaker), seed=src.seed)
    return pools


def _sentence(text: str) -> str:
    """Sentence case for an all-caps transcript; text in mixed case is left as written."""
    if text != text.upper():
        return text
    low = text.lower()
    return low[:1].upper() + low[1:]


CASES = {"sentence": _sentence, "lower": str.lower}


def recase(utts: list[Utterance], case: str) -> list[Utterance]:
    """`utts` with their transcripts rewritten in `case` (a key of `CASES`)."""
    if case not in CASES:
        raise ValueError(f"data.source.text_case: unknown case {case!r}; known: {', '.join(CASES)} or null")
    return [replace(u, text=CASES[case](u.text)) for u in utts]


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
    if src.text_case:
        parts.append(f"transcripts in {src.text_case} case")
    return ", ".join(parts)


@SOURCES.register("synthetic")
def _synthetic(src: DataSource, report: Report, corpus_profile: str | None) -> dict[str, list[Utterance]]:
    from speechlm_lib.data.corpus import ensure_corpus
    from speechlm_lib.data.records import read_manifest

    manifests = ensure_corpus(src.name or corpus_profile)
    wanted = src.splits or {s: s for s in SPLITS}  # a split may name several manifests (e.g. [test, test_de])
    missing = [n for v in wanted.values() for n in _as_list(v) if n not in manifests]
    if missing:
        raise KeyError(f"synthetic corpus has no split(s) {missing}; it has {sorted(manifests)}")
    return {split: [u for n in _as_list(names) for u in read_manifest(manifests[n], report)]
            for split, names in wanted.items()}


@SOURCES.register("manifest")
def _manifest(src: DataSource, report: Report, corpus_profile: str | None) -> dict[str, list[Utterance]]:
    if not src.name:
        raise ValueError("a manifest data source needs `name`: the folder holding the JSONL manifests")
    folder = manifest_folder(src.name)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: data folder not found")
    wanted = src.splits or _default_manifests(folder)
    out = {}
    for split, files in wanted.items():
        out[split] = [u for f in _as_list(files) for u in load_local_manifest(folder, f, report=report)]
    return out


def manifest_folder(name: str) -> Path:
    """A manifest source's folder: a relative name is looked up from the current directory, then from the
    repository root (so a preset's ``../shared/data/...`` works from ``notebooks/`` too)."""
    from speechlm_lib.config import repo_root

    folder = Path(name).expanduser()
    if not folder.is_absolute() and not folder.is_dir() and (repo_root() / folder).is_dir():
        return repo_root() / folder
    return folder


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
    """One dataset split as utterances (`realdata.load_hf_dataset`'s row rules; the config name and streaming
    passed through); audio is written once under ``src.audio_dir`` or the cache."""
    from speechlm_lib.config import cache_dir
    from speechlm_lib.data.realdata import row_to_utterance

    tag = hashlib.sha1(f"{src.name}:{src.config}:{split}".encode()).hexdigest()[:10]
    root = Path(src.audio_dir) if src.audio_dir else cache_dir() / "datasets"
    out = root / f"{Path(src.name).name}-{split}-{tag}"
    ds = _open(src, split, kwargs)
    rows = islice(ds, src.max_items) if src.max_items is not None else ds
    seen: set[str] = set()  # a repeated id is skipped and named (its audio file would be the first row's)
    utts = [u for i, row in enumerate(tqdm(rows, desc=f"{src.name}:{split}", leave=False))
            if (u := row_to_utterance(row, i, src.columns, out, report, seen)) is not None]
    report.kept += len(utts)
    return utts


def _open(src: DataSource, split: str, kwargs: dict):
    """The split as a (streamed or downloaded) dataset with its audio column left undecoded."""
    import datasets

    path = Path(src.name).expanduser()
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json")):
        ds = datasets.load_from_disk(str(path))  # a save_to_disk folder
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise KeyError(f"{path}: no split {split!r}; it has {sorted(ds)}")
            ds = ds[split]
    else:
        ds = datasets.load_dataset(src.name, split=split, streaming=src.streaming, **kwargs)
    names = ds.column_names or list((ds.features or {}).keys())
    for col in (src.columns.audio, src.columns.text):
        if names and col not in names:
            raise KeyError(f"{src.name}: no column {col!r}; columns are {names} (set data.source.columns)")
    if isinstance((ds.features or {}).get(src.columns.audio), datasets.Audio):
        ds = ds.cast_column(src.columns.audio, datasets.Audio(decode=False))
    return ds


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]
