"""Audio input: load, check, resample, downmix, and Whisper-style log-mel features.

Every check raises `AudioError` whose message names the file and the problem.
`load_checked` is the bulk version: bad utterances are skipped and named in a
`Report`, the rest are kept.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from speechlm_lib.data.records import Report, Utterance

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms window at 16 kHz (Whisper's convention)
HOP = 160  # 10 ms hop -> 100 frames per second


class AudioError(ValueError):
    """A bad audio file or utterance; the message names the file and the problem."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> torch.Tensor:
    """Read wav/flac, downmix to mono, resample to `sample_rate`.

    Returns a float32 tensor of shape ``(samples,)``. Raises `AudioError` for a
    missing, unreadable or corrupt file, zero length, NaN/inf samples, or a
    duration over `max_seconds`.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for corrupt files
        raise AudioError(f"{path}: unreadable or corrupt audio ({e})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: zero-length audio")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio contains NaN or inf samples")
    duration = data.shape[0] / sr
    if max_seconds is not None and duration > max_seconds:
        raise AudioError(f"{path}: duration {duration:.1f} s is over the maximum of {max_seconds:.1f} s")
    wave = torch.from_numpy(data.mean(axis=1))
    if sr != sample_rate:
        wave = torchaudio.functional.resample(wave, sr, sample_rate)
    return wave.contiguous()


def check_utterance(utt: Utterance, max_seconds: float | None = None) -> torch.Tensor:
    """Validate one utterance (transcript and audio); return its waveform ``(samples,)``."""
    if not utt.text or not utt.text.strip():
        raise AudioError(f"{utt.audio}: empty transcript (utterance {utt.id})")
    return load_audio(utt.audio, max_seconds=max_seconds)


def load_checked(utts: list[Utterance], max_seconds: float | None = None,
                 report: Report | None = None) -> list[tuple[Utterance, torch.Tensor]]:
    """Bulk `check_utterance`: returns (utterance, waveform) pairs for the good ones.

    Bad utterances are skipped; `report` counts and names them.
    """
    report = report if report is not None else Report()
    good = []
    for u in utts:
        try:
            good.append((u, check_utterance(u, max_seconds)))
        except AudioError as e:
            report.skip(u.id, str(e))
    report.kept += len(good)
    return good


@lru_cache(maxsize=4)
def _mel_transform(n_mels: int) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=n_mels,
        power=2.0, norm="slaney", mel_scale="slaney", center=True,
    )


def log_mel(wave: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """Whisper's log-mel convention on a waveform ``(samples,)`` or ``(batch, samples)``.

    Power mel spectrogram (25 ms Hann window, 10 ms hop, Slaney mel scale),
    log10 clamped to 8 below the clip's maximum, scaled as ``(x + 4) / 4``.
    Returns ``(n_mels, frames)`` or ``(batch, n_mels, frames)`` with
    ``frames = samples // 160`` (100 frames per second).
    """
    mel = _mel_transform(n_mels).to(wave.device)(wave.float())[..., :-1]
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0
