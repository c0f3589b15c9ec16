"""Shared fixtures: small audio files written on the fly, the committed clip; no transformers deprecations."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

DATA = Path(__file__).parent / "data"

# `llm_dtype: auto` picks bf16 only where a timed product says it is faster (training.utils.cpu_has_fast_bf16): tests
# (and the notebooks and commands they start, which inherit this) run float32 on every CPU, so no result depends
# on a timing; the bf16 paths are tested with explicit dtypes, the choice itself with the timing replaced
os.environ.setdefault("SPEECHLM_BF16", "0")


def write_tone(path: Path, seconds: float = 1.0, sr: int = 16000, channels: int = 1,
               subtype: str = "PCM_16", freq: float = 440.0) -> Path:
    """A sine tone (amplitude 0.3) as a sound file; returns the path."""
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(str(path), data, sr, subtype=subtype)
    return path


def write_noise(path: Path, seconds: float, seed: int, sr: int = 16000) -> Path:
    """`seconds` of quiet seeded white noise (amplitude 0.1) as a wav: a stand-in utterance for tiny models."""
    sf.write(str(path), np.random.RandomState(seed).randn(int(sr * seconds)).astype("float32") * 0.1, sr)
    return path


def save_tiny_parts(folder: Path) -> tuple[str, str]:
    """A tiny random LLM and wav2vec2 encoder saved under `folder` (a fresh process can load them by path)."""
    from speechlm_lib.models.tiny_models import save_tiny_llm, save_tiny_wav2vec2

    return str(save_tiny_llm(folder / "llm")), str(save_tiny_wav2vec2(folder / "w2v"))


def tiny_whisper_ctc(texts, members: int = 1, seed: int = 0):
    """An in-memory `SpeechLM`: a random tiny Whisper encoder and Llama LLM, the soft-token ``ctc`` projector
    (stride 2, hidden 32, no dropout, `members` heads) over `texts`' tokens."""
    import torch

    from speechlm_lib.models.build import ModelConfig, build_speechlm
    from speechlm_lib.models.encoders import ENCODERS
    from speechlm_lib.models.tiny_models import tiny_llm, tiny_whisper

    torch.manual_seed(seed)
    llm, tok = tiny_llm()
    enc = ENCODERS.build("whisper", source="tiny-random", model=tiny_whisper())
    cfg = ModelConfig(projector="ctc", stride=2, projector_kwargs={"hidden": 32, "dropout": 0.0, "members": members})
    return build_speechlm(cfg, encoder=enc, llm=llm, tokenizer=tok, texts=list(texts))


def tiny_ctc_speechlm(parts: tuple[str, str], texts, r: int = 0, seed: int = 0):
    """A `SpeechLM` on the tiny saved `parts`: the hard-token ``ctc`` projector over `texts`' tokens and, with
    `r`, LoRA adapters of rank r whose B is random (peft starts it at zero: these change the output)."""
    import torch

    from speechlm_lib.models.build import ModelConfig, build_speechlm
    from speechlm_lib.models.encoders import ENCODERS
    from speechlm_lib.models.lora import LoraSettings, add_lora, lora_parameters
    from speechlm_lib.models.speechlm import load_llm

    llm_dir, enc_dir = parts
    llm, tok = load_llm(llm_dir)
    cfg = ModelConfig(encoder="wav2vec2", encoder_source=enc_dir, llm=llm_dir, projector="ctc", stride=2,
                      projector_kwargs={"hidden": 32, "hard": True, "dropout": 0.0})
    torch.manual_seed(seed)
    model = build_speechlm(cfg, encoder=ENCODERS.build("wav2vec2", source=enc_dir), llm=llm, tokenizer=tok,
                           texts=list(texts))
    if r:
        add_lora(model, LoraSettings(r=r, alpha=2 * r))
        with torch.no_grad():
            for name, p in lora_parameters(model).items():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    return model


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
