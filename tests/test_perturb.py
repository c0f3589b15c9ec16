"""Speed perturbation (data.perturb): lengths and pitch move by the factor, copies are written once and keep
their transcripts, bad clips are skipped and named, and re-alignment trains on the copies when asked."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_whisper_ctc, write_tone
from speechlm_lib.data.audio import load_audio
from speechlm_lib.data.perturb import augmented, speed_change, speed_copies, with_speeds
from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.recipes import stage2_align
from speechlm_lib.recipes.stage3_lora import Stage3Config, realign_projector
from speechlm_lib.training.trainer import TrainConfig


def _peak_hz(wave: torch.Tensor, sr: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()])


def _tones(tmp_path, n=3):
    return [Utterance(id=f"spk/u {i}", audio=str(write_tone(tmp_path / f"t{i}.wav", seconds=1.0 + 0.5 * i)),
                      text=f"tone number {i}", speaker=f"s{i % 2}", duration=1.0 + 0.5 * i, extra={"age": 9})
            for i in range(n)]


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_change_scales_length_and_pitch(tmp_path, factor):
    wave = load_audio(write_tone(tmp_path / "a.wav", seconds=2.0, freq=440.0))
    out = speed_change(wave, factor)
    assert abs(len(out) - len(wave) / factor) <= 2  # n samples -> n / f samples
    assert _peak_hz(out) == pytest.approx(440.0 * factor, abs=2.0)  # played faster: higher, slower: lower
    assert speed_change(wave, 1.0) is wave
    with pytest.raises(ValueError, match="outside"):
        speed_change(wave, 3.0)


def test_speed_copies_keep_the_transcripts_and_are_written_once(tmp_path):
    utts = _tones(tmp_path)
    copies = speed_copies(utts, 1.1, out_dir=tmp_path / "speed")
    assert [c.id for c in copies] == [f"{u.id}-sp1.1" for u in utts]
    assert [(c.text, c.speaker) for c in copies] == [(u.text, u.speaker) for u in utts]
    assert all(c.extra == {"age": 9, "speed": 1.1} for c in copies)
    for u, c in zip(utts, copies):
        assert abs(len(load_audio(c.audio)) - len(load_audio(u.audio)) / 1.1) <= 2
        assert c.duration == pytest.approx(u.duration / 1.1)
    stamps = [Path(c.audio).stat().st_mtime_ns for c in copies]
    again = speed_copies(utts, 1.1, out_dir=tmp_path / "speed")
    assert [c.audio for c in again] == [c.audio for c in copies]
    assert [Path(c.audio).stat().st_mtime_ns for c in again] == stamps  # read back, not written again


def test_a_bad_clip_is_skipped_and_named(tmp_path):
    utts = _tones(tmp_path)
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    bad = Utterance(id="bad", audio=str(tmp_path / "bad.wav"), text="broken")
    report = Report()
    out = with_speeds([utts[0], bad, utts[1]], (1.0, 0.9), out_dir=tmp_path / "speed", report=report)
    assert [u.id for u in out] == [utts[0].id, "bad", utts[1].id, f"{utts[0].id}-sp0.9", f"{utts[1].id}-sp0.9"]
    assert report.kept == 2 and [item for item, _ in report.skipped] == ["bad"]
    assert "bad.wav" in report.skipped[0][1]


def test_augmented_adds_noisy_copies_of_every_speed(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHLM_CACHE", str(tmp_path / "cache"))
    utts = [replace(u, id=f"u{i}") for i, u in enumerate(_tones(tmp_path, n=2))]
    out = augmented(utts, speeds=(0.9,), snrs=(10, 20))
    speeds = ["u0", "u1", "u0-sp0.9", "u1-sp0.9"]
    assert [u.id for u in out] == speeds + [f"{i}-snr{s}" for s in (10, 20) for i in speeds]
    assert len({u.audio for u in out}) == len(out) and {u.text for u in out} == {u.text for u in utts}
    assert out[-1].extra == {"age": 9, "speed": 0.9, "snr_db": 20}
    assert augmented(utts) == utts


def test_realignment_trains_on_the_copies(tmp_path, monkeypatch):
    utts = _tones(tmp_path, n=4)
    model = tiny_whisper_ctc([u.text for u in utts])
    seen, real = [], stage2_align.align_projector

    def spy(train, m, train_ds, *args, **kwargs):
        seen.append(sorted(u.id for u in train_ds.utts))
        return real(train, m, train_ds, *args, **kwargs)

    monkeypatch.setattr(stage2_align, "align_projector", spy)
    monkeypatch.setenv("SPEECHLM_CACHE", str(tmp_path / "cache"))
    cfg = replace(Stage3Config(), realign=TrainConfig(max_steps=2, eval_every=0, progress=False), realign_batch_size=4)
    realign_projector(cfg, model, utts)
    realign_projector(replace(cfg, realign_speeds=(0.9, 1.1)), model, utts)
    ids = [u.id for u in utts]
    assert seen[0] == sorted(ids)
    assert seen[1] == sorted(ids + [f"{i}-sp0.9" for i in ids] + [f"{i}-sp1.1" for i in ids])
