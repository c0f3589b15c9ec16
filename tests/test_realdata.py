"""Real data in the common record type: local manifests, `datasets` by name/path, speaker splits."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_tone

from speechlm_lib.data.audio import load_audio
from speechlm_lib.data.realdata import (
    ColumnMap,
    load_hf_dataset,
    load_local_manifest,
    speechocean_dir,
    split_by_speaker,
)
from speechlm_lib.data.records import Report, Utterance


def _folder(tmp_path, n=4):
    (tmp_path / "audio").mkdir()
    rows = []
    for i in range(n):
        write_tone(tmp_path / "audio" / f"u{i}.flac", seconds=0.5 + 0.1 * i)
        rows.append({"audio": f"audio/u{i}.flac", "text": f"WORD {i}", "speaker": f"s{i % 2}", "duration": 0.5})
    rows.append({"audio": "audio/gone.flac", "text": "MISSING", "speaker": "s9"})
    (tmp_path / "transcripts.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def test_local_manifest_skips_missing_audio(tmp_path):
    report = Report()
    utts = load_local_manifest(_folder(tmp_path), report=report)
    assert [u.id for u in utts] == ["u0", "u1", "u2", "u3"]
    assert report.kept == 4 and report.skipped[0][0] == "gone"
    assert load_audio(utts[0].audio).numel() == 8000


def test_local_manifest_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: data folder not found"):
        load_local_manifest(tmp_path / "nowhere")


def test_hf_load_dataset_by_path_parquet(tmp_path):
    """`load_dataset(<folder>)` on a parquet dataset laid out like a hub repo (LibriSpeech's layout)."""
    import datasets

    paths = [write_tone(tmp_path / f"a{i}.wav", seconds=0.4) for i in range(3)]
    cells = [{"bytes": p.read_bytes(), "path": p.name} for p in paths]  # as hub parquet files carry audio
    ds = datasets.Dataset.from_dict({"audio": cells + cells[:1], "sentence": ["hello 0", "hello 1", "hello 2", ""],
                                     "client": ["c0", "c1", "c2", "c0"]}).cast_column("audio", datasets.Audio())
    (tmp_path / "repo" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet"))
    for p in paths:  # the parquet copy must carry the audio bytes itself
        p.unlink()
    report = Report()
    utts = load_hf_dataset(str(tmp_path / "repo"), "train",
                           ColumnMap(audio="audio", text="sentence", speaker="client", id=None),
                           out_dir=tmp_path / "out", report=report)
    assert [u.text for u in utts] == ["hello 0", "hello 1", "hello 2"]
    assert [u.speaker for u in utts] == ["c0", "c1", "c2"]
    assert all(abs(u.duration - 0.4) < 1e-3 for u in utts)
    assert report.kept == 3 and report.skipped == [("0000003", "empty transcript")]


def test_hf_saved_dataset_with_embedded_bytes(tmp_path):
    import datasets

    paths = [str(write_tone(tmp_path / f"b{i}.wav", seconds=0.3)) for i in range(2)]
    ds = datasets.Dataset.from_dict({"audio": paths, "text": ["one", "two"], "speaker_id": [1, 2], "id": ["x", "y"]})
    ds = ds.cast_column("audio", datasets.Audio())
    ds.save_to_disk(str(tmp_path / "saved"))
    for p in paths:  # the saved copy must carry the bytes itself
        Path(p).unlink()
    utts = load_hf_dataset(str(tmp_path / "saved"), "train", out_dir=tmp_path / "out")
    assert [u.id for u in utts] == ["x", "y"] and [u.speaker for u in utts] == ["1", "2"]
    assert load_audio(utts[1].audio).numel() == 4800


def test_hf_missing_column_is_named(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"audio": ["a.wav"], "txt": ["x"]}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(KeyError, match="no column 'text'"):
        load_hf_dataset(str(tmp_path / "d"))


def test_split_by_speaker_is_disjoint():
    utts = [Utterance(id=str(i), audio="a", text="t", speaker=f"s{i % 10}") for i in range(100)]
    splits = split_by_speaker(utts, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=1)
    spk = {k: {u.speaker for u in v} for k, v in splits.items()}
    assert len(spk["train"]) == 8 and len(spk["dev"]) == 1 and len(spk["test"]) == 1
    assert not (spk["train"] & spk["test"]) and not (spk["train"] & spk["dev"])
    assert sum(len(v) for v in splits.values()) == 100


@pytest.mark.realdata
def test_speechocean762_loads():
    folder = speechocean_dir()
    if not (folder / "transcripts.jsonl").is_file():
        pytest.skip(f"{folder} is absent")
    report = Report()
    utts = load_local_manifest(folder, report=report)
    assert len(utts) == 2500 and not report.skipped
    assert len({u.speaker for u in utts}) == 125
    wave = load_audio(utts[0].audio)
    assert abs(wave.numel() / 16000 - utts[0].duration) < 0.05
