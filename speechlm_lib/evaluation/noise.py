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

from speechlm_lib.config import cache_dir
from speechlm_lib.data.corpus import add_noise
from speechlm_lib.data.perturb import set_tag, write_copies
from speechlm_lib.data.records import Report, Utterance


def noisy_copies(utts: list[Utterance], snr_db: float, out_dir: str | Path | None = None, seed: int = 0,
                 report: Report | None = None) -> list[Utterance]:
    """`utts` with their audio at `snr_db` dB SNR (files written once: `data.perturb.write_copies`). An
    unreadable clip is skipped and named in `report`."""
    folder = (Path(out_dir) if out_dir else cache_dir() / "noisy" / set_tag(utts)) / f"snr{snr_db:g}"
    written = write_copies(utts, folder, lambda wave, u: add_noise(wave.numpy(), snr_db,
                                                                   zlib.crc32(f"{seed}:{u.id}".encode())),
                           report if report is not None else Report())
    return [replace(u, audio=path, extra={**u.extra, "snr_db": snr_db}) for u, path in written]


def measured_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR (dB) of `noisy` against `clean`: the clean part is `noisy`'s projection on `clean` (add_noise may
    scale the sum down), the noise is the rest."""
    clean, noisy = np.asarray(clean, dtype=np.float64), np.asarray(noisy, dtype=np.float64)
    gain = float(noisy @ clean / max(clean @ clean, 1e-12))
    noise = noisy - gain * clean
    return float(10 * np.log10((gain ** 2 * (clean @ clean)) / max(noise @ noise, 1e-12)))
