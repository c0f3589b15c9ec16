"""Every stage's data source: manifest folders, `datasets` corpora with a column map (a local stand-in for
LibriSpeech by hub name), speaker-disjoint splits, speechocean762 when present; and long audio in pieces."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import write_tone

from speechlm_lib.data.realdata import ColumnMap, speechocean_dir
from speechlm_lib.data.records import Report
from speechlm_lib.data.sources import DataSource, describe, load_source
from speechlm_lib.decoding.chunking import split_long
from speechlm_lib.recipes.stage2_align import Stage2Config, load_splits


def _rows(folder, names, speakers):
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, spk) in enumerate(zip(names, speakers)):
        write_tone(folder / "audio" / f"{name}.wav", 0.5, freq=200 + 30 * i)
        rows.append({"id": name, "audio": f"audio/{name}.wav", "text": f"word {i}", "speaker": spk})
    return rows


def test_a_manifest_folder_with_its_own_splits_and_a_missing_file(tmp_path):
    for split in ("train", "dev", "test"):
        rows = _rows(tmp_path, [f"{split}{i}" for i in range(3)], ["a", "b", "c"])
        if split == "train":
            rows.append({"id": "ghost", "audio": "audio/ghost.wav", "text": "gone"})
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = Report()
    splits = load_source(DataSource(kind="manifest", name=str(tmp_path)), report)
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "dev": 3, "test": 3}
    assert report.skipped == [("ghost", f"{tmp_path / 'audio' / 'ghost.wav'}: file not found")]
    cfg = Stage2Config.preset("smoke").override(["data.source.kind=manifest", f"data.source.name={tmp_path}",
                                                 "data.train_limit=2"])
    assert [len(v) for v in load_splits(cfg).values()] == [2, 2, 3]  # dev_limit 2 in smoke


def test_one_pool_split_by_speaker_never_shares_a_speaker(tmp_path):
    rows = _rows(tmp_path, [f"u{i}" for i in range(20)], [f"s{i % 10}" for i in range(20)])
    (tmp_path / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = DataSource(kind="manifest", name=str(tmp_path), split_by_speaker={"train": 0.6, "dev": 0.2, "test": 0.2})
    splits = load_source(src)
    spk = {k: {u.speaker for u in v} for k, v in splits.items()}
    assert [len(s) for s in spk.values()] == [6, 2, 2]
    assert not (spk["train"] & spk["dev"] or spk["train"] & spk["test"] or spk["dev"] & spk["test"])
    assert sum(len(v) for v in splits.values()) == 20
    assert "split by speaker train 0.6/dev 0.2/test 0.2" in describe(src)


def test_an_all_caps_corpus_is_read_in_sentence_case_and_a_bad_case_is_named(tmp_path):
    rows = _rows(tmp_path, ["u0", "u1"], ["a", "b"])
    rows[0]["text"], rows[1]["text"] = "WE CALL IT BEAR", "Already Mixed case"
    (tmp_path / "transcripts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = DataSource(kind="manifest", name=str(tmp_path), text_case="sentence")
    assert [u.text for u in load_source(src)["all"]] == ["We call it bear", "Already Mixed case"]
    assert "transcripts in sentence case" in describe(src)
    with pytest.raises(ValueError, match="text_case: unknown case 'title'"):
        load_source(DataSource(kind="manifest", name=str(tmp_path), text_case="title"))


def test_missing_folders_and_kinds_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: data folder not found"):
        load_source(DataSource(kind="manifest", name=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match="neither train/dev/test.jsonl nor transcripts.jsonl"):
        load_source(DataSource(kind="manifest", name=str(tmp_path)))
    with pytest.raises(KeyError, match="unknown data source kind 'ftp'"):
        load_source(DataSource(kind="ftp"))


def _librispeech_standin(folder):
    """A `save_to_disk` DatasetDict shaped like openslr/librispeech_asr (its split and column names)."""
    datasets = pytest.importorskip("datasets")
    parts = {}
    for s, split in enumerate(("train.clean.100", "train.clean.360", "train.other.500", "validation.clean",
                               "test.clean")):
        files = [str(write_tone(folder / f"{split}-{i}.flac", 0.5, freq=300 + 50 * i)) for i in range(2)]
        parts[split] = datasets.Dataset.from_dict({
            "file": files, "audio": files, "text": [f"WORD {s} {i}" for i in range(2)],
            "speaker_id": [100 * s + i for i in range(2)], "chapter_id": [1, 1], "id": [f"{s}-{i}" for i in range(2)],
        }).cast_column("audio", datasets.Audio(sampling_rate=16000))
    datasets.DatasetDict(parts).save_to_disk(str(folder / "librispeech"))
    return folder / "librispeech"


def test_the_gpu_librispeech_recipe_reads_a_local_stand_in(tmp_path):
    local = _librispeech_standin(tmp_path)
    cfg = Stage2Config.preset("gpu-librispeech")
    assert cfg.data.source.name == "openslr/librispeech_asr" and cfg.data.source.streaming
    cfg = cfg.override([f"data.source.name={local}", "data.source.streaming=False",
                        f"data.source.audio_dir={tmp_path / 'audio'}"])
    splits = load_splits(cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "dev": 2, "test": 2}
    assert splits["test"][0].text == "WORD 4 0" and splits["test"][0].speaker == "400"
    assert splits["train"][0].duration == pytest.approx(0.5)


def test_an_hf_corpus_with_other_column_names_streamed(tmp_path):
    datasets = pytest.importorskip("datasets")
    files = [str(write_tone(tmp_path / f"c{i}.wav", 0.5, freq=250 + 40 * i)) for i in range(6)]
    ds = datasets.Dataset.from_dict({"path": files, "sentence": [f"clip {i}" for i in range(5)] + [""],
                                     "client_id": [f"p{i % 3}" for i in range(6)]})
    (tmp_path / "corpus").mkdir()
    ds.to_parquet(str(tmp_path / "corpus" / "train.parquet"))
    report = Report()
    src = DataSource(kind="hf", name=str(tmp_path / "corpus"), splits={"all": "train"}, streaming=True,
                     columns=ColumnMap(audio="path", text="sentence", speaker="client_id", id=None),
                     split_by_speaker={"train": 1, "dev": 1, "test": 1}, audio_dir=str(tmp_path / "out"))
    splits = load_source(src, report)
    assert sum(len(v) for v in splits.values()) == 5 and len(report.skipped) == 1  # the empty transcript
    assert "empty transcript" in report.skipped[0][1]
    assert all(len({u.speaker for u in v}) == 1 for v in splits.values())


@pytest.mark.realdata
def test_speechocean762_split_by_speaker():
    if not (speechocean_dir() / "transcripts.jsonl").is_file():
        pytest.skip("../shared/data/speechocean762 is not there")
    src = DataSource(kind="manifest", name=str(speechocean_dir()),
                     split_by_speaker={"train": 0.8, "dev": 0.1, "test": 0.1})
    splits = load_source(src)
    spk = {k: {u.speaker for u in v} for k, v in splits.items()}
    assert all(splits.values()) and not (spk["train"] & spk["test"] or spk["dev"] & spk["test"])


# ----- long audio -----------------------------------------------------------------------------------
def test_long_audio_is_cut_at_the_quiet_point_without_overlap():
    sr = 16000
    loud = lambda s: torch.sin(torch.arange(int(s * sr)) * 0.05) * 0.5  # noqa: E731
    wave = torch.cat([loud(23.0), torch.zeros(int(0.3 * sr)), loud(20.0), torch.zeros(int(0.3 * sr)), loud(10.0)])
    pieces = split_long(wave, max_seconds=25.0, search_seconds=3.0)
    assert len(pieces) == 3 and all(p.shape[-1] <= 25 * sr for _, p in pieces)
    assert torch.equal(torch.cat([p for _, p in pieces]), wave)  # no overlap, nothing lost
    assert 23.0 <= pieces[1][0] <= 23.3  # the first cut falls in the pause
    assert pieces[1][1][:100].abs().max() == 0  # and begins in silence
    assert split_long(wave[: 10 * sr], 25.0)[0][1].shape[-1] == 10 * sr  # short audio: one piece


def test_a_relative_folder_is_found_from_the_repository_root_and_absent_real_speech_is_said(tmp_path, monkeypatch):
    from speechlm_lib.config import repo_root
    from speechlm_lib.data.sources import manifest_folder
    from speechlm_lib.experiments.real_speech import load_real
    from speechlm_lib.recipes.stage3_lora import Stage3Config

    monkeypatch.chdir(tmp_path)  # as a notebook runs, from notebooks/
    assert manifest_folder("configs/stage3_lora") == repo_root() / "configs" / "stage3_lora"
    assert manifest_folder("nowhere") == tmp_path.joinpath("nowhere").relative_to(tmp_path)
    cfg = Stage3Config.preset("cpu-speechocean").override([f"data.source.name={tmp_path / 'nowhere'}"])
    said = []
    assert load_real(cfg, say=said.append) == {"train": [], "dev": [], "test": []}
    assert "nowhere: data folder not found" in said[0]
