"""Shared fixtures: small audio files written on the fly, the committed clip; no transformers deprecations."""
from __future__ import annotations

import logging

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


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        from speechlm_lib.decoding.whisper import whisper_internal

        msg = record.getMessage()
        if not whisper_internal(msg):  # what transformers' own Whisper.generate says on every call
            self.messages.append(msg)


@pytest.fixture(autouse=True)
def no_transformers_deprecations():
    """transformers logs its deprecations (not `warnings`); a test whose code triggers one fails."""
    handler = _Collect()
    log = logging.getLogger("transformers")
    log.addHandler(handler)
    yield
    log.removeHandler(handler)
    bad = [m for m in handler.messages if "deprecated" in m or "seem to have been set" in m]
    assert not bad, f"transformers said: {bad}"
