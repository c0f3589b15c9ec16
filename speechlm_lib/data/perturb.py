"""Speed-perturbed copies of a training set: more voices from the same utterances (Ko et al., 2015).

A copy at factor ``f`` plays the clip ``f`` times as fast, pitch and tempo together (Kaldi's "speed"
perturbation): the samples are read as if recorded at ``f x 16 kHz`` and resampled to 16 kHz, so a clip of
``n`` samples becomes ``n / f`` samples. Factors 0.9 and 1.1 triple a small corpus with speakers that sound
lower and slower, or higher and quicker, than the real ones.

Copies are written once under ``config.cache_dir()/speed/<set tag>/x<factor>/`` and reused; each keeps its
source's transcript, speaker and metadata, gets the id ``<id>-sp<factor>`` and holds ``speed`` in
`Utterance.extra`. The frozen encoder's feature cache keys them by their bytes like any other clip.
`augmented` adds noisy copies of those too (stage 3's re-alignment: ``realign_speeds``, ``realign_noise_snr``).
`write_copies` (write each clip's transformed audio once) is shared with `evaluation.noise.noisy_copies`.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from speechlm_lib.config import cache_dir
from speechlm_lib.data.audio import SAMPLE_RATE, AudioError, load_audio
from speechlm_lib.data.records import Report, Utterance


def speed_change(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """`wave` ``(samples,)`` played `factor` times as fast: about ``samples / factor`` samples back (the rate
    is unchanged, so pitch rises with the tempo)."""
    if not 0.5 <= factor <= 2.0:
        raise ValueError(f"speed factor {factor} is outside [0.5, 2.0]")
    if factor == 1.0:
        return wave
    ratio = Fraction(factor).limit_denominator(100)  # 0.9 -> 9/10: resample from 9 to 10 (exact, small kernel)
    return torchaudio.functional.resample(wave, ratio.numerator, ratio.denominator)


def set_tag(utts: list[Utterance]) -> str:
    """A short hash of `utts`' ids and audio paths: the folder their derived copies are written to."""
    return hashlib.sha1("|".join(f"{u.id}={u.audio}" for u in utts).encode()).hexdigest()[:10]


def write_copies(utts: list[Utterance], folder: Path, transform, report: Report) -> list[tuple[Utterance, str]]:
    """``(utterance, path)`` of each of `utts` whose audio reads, `path` holding ``transform(wave, utterance)``
    (``(samples,)`` in, 16 kHz samples out) as a float wav under `folder`, written once (atomically) and read back
    after; files are named by a hash of the id (ids may hold "/" or spaces). An unreadable clip is skipped and
    named in `report`."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for u in utts:
        path = folder / f"{hashlib.sha1(u.id.encode()).hexdigest()[:16]}.wav"
        if not path.is_file():
            try:
                wave = transform(load_audio(u.audio), u)
            except AudioError as e:
                report.skip(u.id, str(e))
                continue
            tmp = path.with_name(path.stem + ".tmp.wav")
            sf.write(str(tmp), np.asarray(wave, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
            tmp.replace(path)
        out.append((u, str(path)))
    report.kept += len(out)
    return out


def speed_copies(utts: list[Utterance], factor: float, out_dir: str | Path | None = None,
                 report: Report | None = None) -> list[Utterance]:
    """`utts` played `factor` times as fast (files written once; `speed_change`). An unreadable clip is
    skipped and named in `report`; the rest are returned in order."""
    folder = (Path(out_dir) if out_dir else cache_dir() / "speed" / set_tag(utts)) / f"x{factor:g}"
    written = write_copies(utts, folder, lambda wave, u: speed_change(wave, factor),
                           report if report is not None else Report())
    return [replace(u, id=f"{u.id}-sp{factor:g}", audio=path, duration=u.duration / factor,
                    extra={**u.extra, "speed": factor}) for u, path in written]


def with_speeds(utts: list[Utterance], factors: tuple[float, ...] | list[float], out_dir: str | Path | None = None,
                report: Report | None = None) -> list[Utterance]:
    """`utts` followed by their copies at each of `factors` (1.0 is the originals themselves and is skipped)."""
    out = list(utts)
    for f in factors:
        if f != 1.0:
            out += speed_copies(utts, f, out_dir, report)
    return out


def augmented(utts: list[Utterance], speeds=(), snrs=(), report: Report | None = None) -> list[Utterance]:
    """`utts`, their speed copies (`with_speeds`), then copies of all of those with white noise at each of `snrs`
    dB (`evaluation.noise.noisy_copies`, ids ``<id>-snr<db>``): ``len(utts) x (1 + len(speeds)) x (1 + len(snrs))``
    utterances when nothing is skipped (1.0 among `speeds` adds none)."""
    from speechlm_lib.evaluation.noise import noisy_copies

    out = with_speeds(utts, speeds, report=report)
    return out + [replace(u, id=f"{u.id}-snr{snr:g}") for snr in snrs for u in noisy_copies(out, snr, report=report)]
