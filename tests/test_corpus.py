"""Corpus builder: speaker plan, determinism, disjoint splits, resuming, noise, German manifests."""
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechlm_lib.data import corpus
from speechlm_lib.data.corpus import BuildReport, CorpusConfig, build_corpus, plan_split, speaker_plan
from speechlm_lib.data.records import read_manifest


def tiny(**kw) -> CorpusConfig:
    base = dict(name="tiny", sizes=(12, 4, 4), speakers=(4, 2, 2), german_share=0.25,
                german_speakers=(2, 1, 1), workers=1)
    return CorpusConfig(**{**base, **kw})


def manifest_rows(manifests: dict) -> dict:
    return {k: Path(p).read_text() for k, p in manifests.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return out, build_corpus(tiny(), out)


def test_cpu_plan_has_many_speakers_and_accents():
    plan = speaker_plan(CorpusConfig.preset("cpu"))
    english = [v for s in corpus.SPLITS for v in plan[s]]
    assert len({v.id for v in english}) >= 40
    assert len({v.name for v in english}) >= 5
    assert len({v.name for v in plan["test"]}) >= 5  # the test speakers span several accents too
    assert all(v.language == "de" for s in corpus.SPLITS for v in plan[f"{s}_de"])


@pytest.mark.parametrize("preset", ["smoke", "cpu", "gpu"])
def test_splits_are_voice_disjoint(preset):
    plan = speaker_plan(CorpusConfig.preset(preset))
    for lang in ("", "_de"):
        combos = {s: {(v.name, v.variant) for v in plan[s + lang]} for s in corpus.SPLITS}
        assert not combos["train"] & combos["dev"]
        assert not combos["train"] & combos["test"]
        assert not combos["dev"] & combos["test"]


def test_presets_sizes():
    assert CorpusConfig.preset("cpu").sizes[0] >= 10_000
    assert CorpusConfig.preset("gpu").sizes[0] > CorpusConfig.preset("cpu").sizes[0]
    with pytest.raises(KeyError, match="huge"):
        CorpusConfig.preset("huge")
    with pytest.raises(ValueError, match="speakers"):
        speaker_plan(tiny(speakers=(200, 2, 2)))


def test_utterance_depends_only_on_seed_split_index(tmp_path):
    small = plan_split(tiny(), "train", tmp_path)
    large = plan_split(tiny(sizes=(30, 4, 4)), "train", tmp_path)
    assert [(j.utt.text, j.voice.id, j.key) for j in small] == [(j.utt.text, j.voice.id, j.key) for j in large[:12]]
    other = plan_split(tiny(seed=1), "train", tmp_path)
    assert [j.utt.text for j in other] != [j.utt.text for j in small]


def test_built_manifests(built):
    out, manifests = built
    assert set(manifests) == {"train", "dev", "test", "train_de", "dev_de", "test_de"}
    speakers = {}
    for split, path in manifests.items():
        utts = read_manifest(path)
        assert len(utts) == dict(zip(corpus.SPLITS, (12, 4, 4)))[split.removesuffix("_de")] * (
            0.25 if split.endswith("_de") else 1)
        for u in utts:
            wave, sr = sf.read(u.audio)
            assert sr == 16_000 and abs(len(wave) / sr - u.duration) < 1e-3
            assert u.language == ("de" if split.endswith("_de") else "en") and u.translation
        speakers[split] = {u.speaker for u in utts}
    assert not speakers["train"] & (speakers["dev"] | speakers["test"])
    assert '"audio": "audio/train/train-000000.wav"' in Path(manifests["train"]).read_text()


def test_same_seed_same_corpus_any_worker_count(built, tmp_path):
    out, manifests = built
    again = build_corpus(tiny(workers=2), tmp_path)
    assert manifest_rows(again) == manifest_rows(manifests)
    wavs = sorted(p.relative_to(out) for p in (out / "audio").rglob("*.wav"))
    assert wavs and wavs == sorted(p.relative_to(tmp_path) for p in (tmp_path / "audio").rglob("*.wav"))
    differ = [str(w) for w in wavs if (out / w).read_bytes() != (tmp_path / w).read_bytes()]
    assert not differ, f"{len(differ)} of {len(wavs)} files differ between 1 and 2 workers: {differ[:5]}"


def test_rerun_restores_missing_and_corrupt_files_only(tmp_path):
    manifests = build_corpus(tiny(), tmp_path)
    wavs = sorted((tmp_path / "audio").rglob("*.wav"))
    gone, bad = wavs[3], wavs[5]
    original = {gone: gone.read_bytes(), bad: bad.read_bytes()}
    gone.unlink()
    bad.write_bytes(original[bad][: len(original[bad]) // 2])  # a truncated (partial) file
    mtimes = {w: w.stat().st_mtime_ns for w in wavs if w not in original}
    report = BuildReport()
    again = build_corpus(tiny(), tmp_path, report=report)
    assert {uid for uid, _ in report.redone} == {gone.stem, bad.stem}
    assert report.made == 2 and report.reused == len(wavs) - 2
    assert all(w.read_bytes() == data for w, data in original.items())
    assert all(w.stat().st_mtime_ns == t for w, t in mtimes.items())
    assert manifest_rows(again) == manifest_rows(manifests)


def test_garbage_file_is_redone(tmp_path):
    build_corpus(tiny(sizes=(4, 1, 1), german_share=0), tmp_path)
    wav = tmp_path / "audio/train/train-000002.wav"
    wav.write_bytes(b"not a wav file at all")
    report = BuildReport()
    build_corpus(tiny(sizes=(4, 1, 1), german_share=0), tmp_path, report=report)
    assert report.redone and "unreadable" in report.redone[0][1] and sf.info(str(wav)).frames > 0


def test_noise_at_expected_snr(tmp_path):
    job = plan_split(tiny(noise_snr_db=(10.0,)), "dev", tmp_path)[0]
    clean = corpus.render(plan_split(tiny(), "dev", tmp_path)[0])
    noisy = corpus.render(job)
    assert job.snr_db == 10.0 and len(noisy) == len(clean)
    snr = 10 * np.log10(np.mean(clean ** 2) / np.mean((noisy - clean) ** 2))
    assert abs(snr - 10.0) < 0.5
    assert np.array_equal(noisy, corpus.render(job))  # the noise is seeded per utterance


def test_too_long_utterances_are_reported(tmp_path):
    report = BuildReport()
    manifests = build_corpus(tiny(sizes=(4, 1, 1), german_share=0, max_seconds=1.0), tmp_path, report=report)
    assert len(report.failed.skipped) == 6 and "max_seconds" in report.failed.skipped[0][1]
    assert read_manifest(manifests["train"]) == []


def test_ensure_corpus_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLM_DATA", str(tmp_path))
    manifests = corpus.ensure_corpus("smoke")
    assert manifests["train"] == tmp_path / "synth/smoke/train.jsonl"
    stamp = os.stat(manifests["train"]).st_mtime_ns
    assert corpus.ensure_corpus("smoke") == manifests
    assert os.stat(manifests["train"]).st_mtime_ns == stamp  # nothing rebuilt
    stats = corpus.corpus_stats(manifests["train"])
    assert stats["utterances"] == 240 and stats["speakers"] >= 10 and sum(stats["keywords"].values()) > 0
