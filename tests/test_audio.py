"""Audio loading, validation (each case fails if its check is removed) and features."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import write_tone

from speechlm_lib.data.audio import AudioError, check_utterance, load_audio, load_checked, log_mel
from speechlm_lib.data.records import Report, Utterance


def test_load_resamples_and_downmixes(tmp_path):
    p = write_tone(tmp_path / "st.wav", seconds=1.0, sr=44100, channels=2)
    wave = load_audio(p)
    assert wave.ndim == 1 and wave.dtype == torch.float32
    assert abs(wave.numel() - 16000) <= 2
    assert 0.2 < wave.abs().max() < 0.35


def test_flac_is_read(tmp_path):
    p = write_tone(tmp_path / "a.flac", seconds=0.5)
    assert load_audio(p).numel() == 8000


def test_missing_file_names_file(tmp_path):
    with pytest.raises(AudioError, match="nope.wav: file not found"):
        load_audio(tmp_path / "nope.wav")


def test_corrupt_file_names_file(tmp_path):
    p = tmp_path / "bad.wav"
    p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage" * 3)
    with pytest.raises(AudioError, match="bad.wav: unreadable or corrupt"):
        load_audio(p)


def test_zero_length(tmp_path):
    p = tmp_path / "empty.wav"
    sf.write(str(p), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav: zero-length"):
        load_audio(p)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf(tmp_path, bad):
    x = np.zeros(1600, dtype=np.float32)
    x[100] = bad
    p = tmp_path / "nan.wav"
    sf.write(str(p), x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: audio contains NaN or inf"):
        load_audio(p)


def test_too_long(tmp_path):
    p = write_tone(tmp_path / "long.wav", seconds=3.0)
    assert load_audio(p, max_seconds=5).numel() == 48000
    with pytest.raises(AudioError, match=r"long.wav: duration 3.0 s is over the maximum of 2.0 s"):
        load_audio(p, max_seconds=2.0)


def test_empty_transcript(tone):
    with pytest.raises(AudioError, match="empty transcript"):
        check_utterance(Utterance(id="u1", audio=str(tone), text="   "))


def test_bulk_skips_counts_and_names(tmp_path, tone):
    good = [Utterance(id=f"g{i}", audio=str(tone), text="hello") for i in range(3)]
    bad = [Utterance(id="missing", audio=str(tmp_path / "x.wav"), text="hi"),
           Utterance(id="silent-text", audio=str(tone), text="")]
    report = Report()
    kept = load_checked(good[:2] + bad + good[2:], report=report)
    assert [u.id for u, _ in kept] == ["g0", "g1", "g2"]
    assert report.kept == 3
    assert [item for item, _ in report.skipped] == ["missing", "silent-text"]
    assert "file not found" in report.skipped[0][1]
    assert "skipped 2" in str(report)


def test_log_mel_shape_and_whisper_convention(tone):
    wave = load_audio(tone)
    feats = log_mel(wave)
    assert feats.shape == (80, wave.numel() // 160)
    # Whisper convention: values within 8 log10 units of the peak, scaled (x + 4) / 4
    assert feats.max() - feats.min() <= 2.0 + 1e-5
    batch = log_mel(torch.stack([wave, wave]))
    assert batch.shape == (2, 80, wave.numel() // 160)
    assert torch.allclose(batch[0], feats, atol=1e-5)


def test_log_mel_matches_transformers_feature_extractor(tone):
    from transformers import WhisperFeatureExtractor

    wave = load_audio(tone)
    fe = WhisperFeatureExtractor(feature_size=80)
    ref = fe(wave.numpy(), sampling_rate=16000, padding=False, return_tensors="pt").input_features[0]
    ours = log_mel(wave)
    n = min(ref.shape[-1], ours.shape[-1])
    assert (ref[:, :n] - ours[:, :n]).abs().max() < 1e-2
