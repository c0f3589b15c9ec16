"""The complete Whisper model as a baseline, and the check that unpadded encoding keeps accuracy.

`whisper_transcribe` decodes with Whisper's own decoder in two ways:

* ``padded=True``  -- the standard pipeline: the processor pads every clip to 30 s
  (3000 mel frames) and the stock encoder runs on all 1500 positions;
* ``padded=False`` -- our `WhisperSpeechEncoder` convention: mel frames only up to
  the clip's length (even), positions ``0..frames/2-1``; the decoder cross-attends
  to those shorter states (passed as ``encoder_outputs``).

If the transcripts (and WER) agree, the unpadded states carry the same
information the projector needs -- at a fraction of the encoder's cost.

A multilingual Whisper (``openai/whisper-base``) is told the language and the task
(``language="de"``, ``task="transcribe"`` or ``"translate"`` into English): its prompt is
``<|startoftranscript|><|de|><|transcribe|><|notimestamps|>``. Without a language it
detects one per clip. An English-only model (``*.en``) takes no language tokens; asking
it for another language is an error rather than an English transcript.
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutput

from speechlm_lib.data.audio import AudioError, check_wave
from speechlm_lib.data.records import Report
from speechlm_lib.models.encoders import WhisperSpeechEncoder


@torch.no_grad()
def whisper_transcribe(model, processor, waves: list[torch.Tensor], padded: bool = True, batch_size: int = 8,
                       num_beams: int = 1, max_new_tokens: int | None = None, progress: bool = False,
                       report: Report | None = None, language: str | None = None,
                       task: str | None = None) -> tuple[list[str], float]:
    """Transcribe ``(samples,)`` 16 kHz waves with a `WhisperForConditionalGeneration`.

    Returns (texts, seconds). Unpadded decoding runs one clip at a time (Whisper's
    decoder has no cross-attention mask, so batch padding would be attended).
    `max_new_tokens` caps each transcript (None: Whisper's own limit, 448 tokens).
    Every wave passes `audio.check_wave` (30 s at most); a bad one gets "" and is named
    (``wave <index>``) in `report`, and the others are transcribed.
    `language` ('de', 'en', ...; None: detected) and `task` ('transcribe', 'translate') set a
    multilingual model's prompt (`prompt_options`).
    """
    limit = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    limit |= prompt_options(model, language, task)
    model.eval()
    report = report if report is not None else Report()
    good = {}
    for i, w in enumerate(waves):
        try:
            good[i] = check_wave(w, f"wave {i}", max_seconds=30.0)
        except AudioError as e:
            report.skip(f"wave {i}", str(e))
    report.kept += len(good)
    texts = [""] * len(waves)
    t0 = time.perf_counter()
    index = list(good)
    for start, got in _decode(model, processor, [good[i] for i in index], padded, batch_size, num_beams, limit,
                              progress):
        for j, text in enumerate(got):
            texts[index[start + j]] = text
    return texts, time.perf_counter() - t0


def prompt_options(model, language: str | None = None, task: str | None = None) -> dict:
    """`generate` keywords for the language and task tokens; {} for an English-only model asked for English.

    Raises ValueError when an English-only Whisper is asked for another language or a task.
    """
    if getattr(model.generation_config, "is_multilingual", False):
        return {k: v for k, v in (("language", language), ("task", task)) if v is not None}
    if (language or "en").lower().strip("<|>") not in ("en", "english") or task not in (None, "transcribe"):
        raise ValueError(f"{model.config.name_or_path or 'this Whisper'} is English-only: it cannot take "
                         f"language={language!r}, task={task!r} (load a multilingual one, e.g. openai/whisper-base)")
    return {}


def _decode(model, processor, waves: list[torch.Tensor], padded: bool, batch_size: int, num_beams: int,
            limit: dict, progress: bool):
    """Yield (start index, texts) per chunk of checked waves."""
    step = batch_size if padded else 1
    encoder = None if padded else WhisperSpeechEncoder(model.get_encoder(), reference="baseline")
    for i in tqdm(range(0, len(waves), step), desc="whisper", disable=not progress):
        chunk = [w.numpy() for w in waves[i: i + step]]
        if padded:
            feats = processor.feature_extractor(chunk, sampling_rate=16000, return_tensors="pt").input_features
            ids = model.generate(input_features=feats.to(model.device, model.dtype), num_beams=num_beams, **limit)
        else:
            inputs, lengths = encoder.collate([encoder.featurize(torch.from_numpy(chunk[0]))])
            states, _ = encoder(inputs.to(model.device), lengths.to(model.device))
            ids = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), num_beams=num_beams,
                                 **limit)
        yield i, [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
