"""Noisy copies of a test set: the same utterances with white noise at a chosen SNR.

The noise is the corpus builder's (`data.corpus.add_noise`: Gaussian, relative to the clip's mean power,
seeded by the utterance id, so a copy is the same on every run). Copies are written once under
``config.cache_dir()/noisy/<set tag>/snr<db>/`` and reused; each copy's `Utterance.extra` holds ``snr_db``
so results break down by it.
"""
from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf

from speechlm_lib.config import cache_dir
from speechlm_lib.data.audio import SAMPLE_RATE, AudioError, load_audio
from speechlm_lib.data.corpus import add_noise
from speechlm_lib.data.records import Report, Utterance


def noisy_copies(utts: list[Utterance], snr_db: float, out_dir: str | Path | None = None, seed: int = 0,
                 report: Report | None = None) -> list[Utterance]:
    """`utts` with their audio at `snr_db` dB SNR (files written once). An unreadable clip is skipped and
    named in `report`."""
    import hashlib

    report = report if report is not None else Report()
    tag = hashlib.sha1("|".join(u.audio for u in utts).encode()).hexdigest()[:10]
    folder = Path(out_dir) if out_dir else cache_dir() / "noisy" / tag
    folder = folder / f"snr{snr_db:g}"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for u in utts:
        path = folder / f"{u.id}.wav"
        if not path.is_file():
            try:
                wave = load_audio(u.audio).numpy()
            except AudioError as e:
                report.skip(u.id, str(e))
                continue
            noisy = add_noise(wave, snr_db, zlib.crc32(f"{seed}:{u.id}".encode()))
            tmp = path.with_name(path.stem + ".tmp.wav")
            sf.write(str(tmp), noisy, SAMPLE_RATE, subtype="FLOAT")
            tmp.replace(path)
        out.append(replace(u, audio=str(path), extra={**u.extra, "snr_db": snr_db}))
    report.kept += len(out)
    return out


def measured_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR (dB) of `noisy` against `clean`: the clean part is `noisy`'s projection on `clean` (add_noise may
    scale the sum down), the noise is the rest."""
    clean, noisy = np.asarray(clean, dtype=np.float64), np.asarray(noisy, dtype=np.float64)
    gain = float(noisy @ clean / max(clean @ clean, 1e-12))
    noise = noisy - gain * clean
    return float(10 * np.log10((gain ** 2 * (clean @ clean)) / max(noise @ noise, 1e-12)))
