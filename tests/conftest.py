"""Shared fixtures: small audio files written on the fly, the committed clip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

DATA = Path(__file__).parent / "data"


def write_tone(path: Path, seconds: float = 1.0, sr: int = 16000, channels: int = 1,
               subtype: str = "PCM_16", freq: float = 440.0) -> Path:
    """A sine tone (amplitude 0.3) as a sound file; returns the path."""
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(str(path), data, sr, subtype=subtype)
    return path


@pytest.fixture
def tone(tmp_path):
    return write_tone(tmp_path / "tone.wav")


@pytest.fixture
def clip():
    """The committed test clip and its transcript."""
    wav, txt = DATA / "clip.wav", DATA / "clip.txt"
    if not wav.is_file():
        pytest.skip("tests/data/clip.wav is not there")
    return wav, txt.read_text().strip()
