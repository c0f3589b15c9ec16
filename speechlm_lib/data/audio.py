"""Audio input: check, load, resample, downmix, and Whisper-style log-mel features.

One validation path for every stage (stage-1 data, the stage-2 feature cache, decoding):

* `check_file(path)`  -- before a byte is read or hashed: a regular file (not a device
  such as ``/dev/zero``, a pipe or a folder), not empty, at most `MAX_FILE_BYTES`;
* `load_audio(path)`  -- `check_file`, the header's duration against ``max_seconds``
  (before the samples are decoded), then the decoded, resampled wave through `check_wave`;
* `check_wave(wave, name)` -- the same checks for audio already in memory: a 1-D
  ``(samples,)`` tensor, at least `MIN_SAMPLES` long, finite, not over ``max_seconds``.

Every check raises `AudioError` whose message names the file (or the wave's name) and the
problem. `load_checked` is the bulk version: bad utterances are skipped and named in a
`Report`, the rest are kept.
"""
from __future__ import annotations

import os
import stat
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
MIN_SAMPLES = N_FFT  # shortest usable clip: one analysis window (25 ms); the centred STFT needs > N_FFT/2
MAX_FILE_BYTES = 1 << 30  # 1 GiB: larger audio files are refused before they are read or hashed


class AudioError(ValueError):
    """A bad audio file or utterance; the message names the file and the problem."""


def check_file(path: str | Path, max_bytes: int | None = None) -> Path:
    """Refuse what must not be read: missing, not a regular file, empty, or over `max_bytes`.

    Uses only ``stat`` (nothing is read), so an endless file (``/dev/zero``, a FIFO) is
    refused before any reading or hashing. `max_bytes` None: `MAX_FILE_BYTES`. Returns the path.
    """
    path, max_bytes = Path(path), MAX_FILE_BYTES if max_bytes is None else max_bytes
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioError(f"{path}: file not found") from None
    except OSError as e:
        raise AudioError(f"{path}: cannot be opened ({e.strerror or e})") from e
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a pipe" if stat.S_ISFIFO(st.st_mode) else "a special file")
        raise AudioError(f"{path}: not a regular file ({kind})")
    if st.st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    if st.st_size > max_bytes:
        raise AudioError(f"{path}: {st.st_size} bytes is over the {max_bytes}-byte limit for an audio file")
    return path


def check_wave(wave, name: str = "waveform", max_seconds: float | None = None,
               sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Validate audio held in memory exactly like a file; return float32 ``(samples,)``.

    `wave`: a tensor or array of shape ``(samples,)``. Raises `AudioError` naming `name`
    for another shape, zero length, fewer than `MIN_SAMPLES` samples, NaN/inf samples,
    or a duration over `max_seconds`.
    """
    if isinstance(wave, np.ndarray):
        wave = torch.from_numpy(np.ascontiguousarray(wave))
    if not isinstance(wave, torch.Tensor):
        raise AudioError(f"{name}: expected a waveform tensor, got {type(wave).__name__}")
    if wave.dim() != 1:
        raise AudioError(f"{name}: expected a mono waveform of shape (samples,), got shape {tuple(wave.shape)}")
    if wave.is_complex() or wave.dtype == torch.bool:
        raise AudioError(f"{name}: waveform dtype {wave.dtype} is not real audio samples")
    n = wave.numel()
    if n == 0:
        raise AudioError(f"{name}: zero-length audio")
    if n < MIN_SAMPLES:
        raise AudioError(f"{name}: too short: {n} samples ({1000 * n / sample_rate:.1f} ms); the minimum is "
                         f"{MIN_SAMPLES} samples ({1000 * MIN_SAMPLES / sample_rate:.0f} ms)")
    wave = wave.detach().float()
    if not torch.isfinite(wave).all():
        raise AudioError(f"{name}: audio contains NaN or inf samples")
    if max_seconds is not None and n / sample_rate > max_seconds:
        raise AudioError(f"{name}: duration {n / sample_rate:.1f} s is over the maximum of {max_seconds:.1f} s")
    return wave.contiguous()


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> torch.Tensor:
    """Read wav/flac, downmix to mono, resample to `sample_rate`.

    Returns a float32 tensor of shape ``(samples,)``. Raises `AudioError` for a
    missing, unreadable, corrupt or non-regular file, zero length, a clip shorter than
    `MIN_SAMPLES`, NaN/inf samples, or a duration over `max_seconds` (checked from the
    header before the samples are decoded).
    """
    path = check_file(path)
    try:
        info = sf.info(str(path))
        if info.samplerate > 0 and max_seconds is not None and info.frames / info.samplerate > max_seconds:
            raise AudioError(f"{path}: duration {info.frames / info.samplerate:.1f} s is over the maximum "
                             f"of {max_seconds:.1f} s")
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:  # soundfile raises several types for corrupt files
        raise AudioError(f"{path}: unreadable or corrupt audio ({e})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: zero-length audio")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: audio contains NaN or inf samples")
    wave = torch.from_numpy(data.mean(axis=1))
    if sr != sample_rate:
        wave = torchaudio.functional.resample(wave, sr, sample_rate)
    return check_wave(wave, str(path), max_seconds, sample_rate)


def check_utterance(utt: Utterance, max_seconds: float | None = None) -> torch.Tensor:
    """Validate one utterance (transcript and audio); return its waveform ``(samples,)``."""
    if not isinstance(utt.text, str) or not utt.text.strip():
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
    ``frames = samples // 160`` (100 frames per second). A wave shorter than `MIN_SAMPLES`
    raises `AudioError` (validate with `check_wave` first to have the file named).
    """
    if wave.shape[-1] < MIN_SAMPLES:
        raise AudioError(f"waveform of {wave.shape[-1]} samples is shorter than the {MIN_SAMPLES}-sample minimum "
                         "of log_mel (check it with audio.check_wave first)")
    mel = _mel_transform(n_mels).to(wave.device)(wave.float())[..., :-1]
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0
