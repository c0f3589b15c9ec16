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

import contextlib
import logging
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
                       report: Report | None = None, prompts: list[str | None] | None = None,
                       language: str | None = None, task: str | None = None) -> tuple[list[str], float]:
    """Transcribe ``(samples,)`` 16 kHz waves with a `WhisperForConditionalGeneration`.

    Returns (texts, seconds). Unpadded decoding runs one clip at a time (Whisper's
    decoder has no cross-attention mask, so batch padding would be attended).
    `max_new_tokens` caps each transcript (None: Whisper's own limit, 448 tokens).
    Every wave passes `audio.check_wave` (30 s at most); a bad one gets "" and is named
    (``wave <index>``) in `report`, and the others are transcribed.

    `prompts` (one text per wave, None or "" for none) is Whisper's own biasing: the text goes in as the
    previous segment (``<|startofprev|>``, `processor.get_prompt_ids`), which Whisper conditions on. Clips
    are then decoded one at a time (the prompt is one for a whole batch). Whisper allows at most
    `WHISPER_PROMPT_MAX` prompt tokens (half its 448 decoder positions): a longer prompt raises ValueError
    (cut the list first: `models.context.fit_context`).
    `language` ('de', 'en', ...; None: detected) and `task` ('transcribe', 'translate') set a
    multilingual model's prompt (`prompt_options`).
    """
    if prompts is not None:
        return whisper_transcribe_prompted(model, processor, waves, {"": prompts}, num_beams, max_new_tokens,
                                           progress, report, language, task)[""]
    limit = _limits(model, max_new_tokens, language, task)
    good = _checked(waves, report)
    texts = [""] * len(waves)
    t0 = time.perf_counter()
    index = list(good)
    for start, got in _decode(model, processor, [good[i] for i in index], padded, batch_size, num_beams, limit,
                              progress):
        for j, text in enumerate(got):
            texts[index[start + j]] = text
    return texts, time.perf_counter() - t0


def _limits(model, max_new_tokens: int | None, language: str | None, task: str | None) -> dict:
    """`generate` keywords: the length cap and the language and task tokens (`prompt_options`); puts `model` in eval."""
    model.eval()
    return ({"max_new_tokens": max_new_tokens} if max_new_tokens else {}) | prompt_options(model, language, task)


def _checked(waves: list[torch.Tensor], report: Report | None) -> dict[int, torch.Tensor]:
    """index -> wave for the waves `audio.check_wave` accepts (30 s at most); the others are named in `report`."""
    report = report if report is not None else Report()
    good = {}
    for i, w in enumerate(waves):
        try:
            good[i] = check_wave(w, f"wave {i}", max_seconds=30.0)
        except AudioError as e:
            report.skip(f"wave {i}", str(e))
    report.kept += len(good)
    return good


WHISPER_PROMPT_MAX = 223  # prompt tokens Whisper takes (max_target_positions // 2 - 1, as OpenAI's decoder cuts)


def prompt_ids(processor, text: str) -> torch.Tensor:
    """``(tokens,)`` ids of `text` as Whisper's prompt; ValueError if longer than `WHISPER_PROMPT_MAX`."""
    ids = processor.get_prompt_ids(text, return_tensors="pt")
    if len(ids) - 1 > WHISPER_PROMPT_MAX:
        raise ValueError(f"Whisper prompt of {len(ids) - 1} tokens; at most {WHISPER_PROMPT_MAX} fit")
    return ids


@torch.no_grad()
def whisper_transcribe_prompted(model, processor, waves: list[torch.Tensor], prompt_sets: dict[str, list],
                                num_beams: int = 1, max_new_tokens: int | None = None, progress: bool = False,
                                report: Report | None = None, language: str | None = None, task: str | None = None
                                ) -> dict[str, tuple[list[str], float]]:
    """Each ``(samples,)`` wave decoded once per condition of `prompt_sets` (name -> one prompt per wave, None or
    "" for none; see `whisper_transcribe`'s `prompts`), the clip's padded encoding computed once for all of them.

    Returns name -> (texts, seconds). A condition's seconds are its own decoding plus the encoding of every clip:
    what it would take alone, so the conditions' latencies compare. The texts are those `whisper_transcribe` gives
    each condition on its own (a test). A bad wave gets "" in every condition and is named in `report`.
    """
    for name, prompts in prompt_sets.items():
        if len(prompts) != len(waves):
            where = f"condition {name!r}: " if name else ""
            raise ValueError(f"{where}{len(prompts)} prompts for {len(waves)} waves")
    limit = _limits(model, max_new_tokens, language, task)
    good = _checked(waves, report)
    texts = {name: [""] * len(waves) for name in prompt_sets}
    seconds = dict.fromkeys(prompt_sets, 0.0)
    encoding = 0.0
    for i in tqdm(list(good), desc="whisper+prompt", disable=not progress):
        t0 = time.perf_counter()
        feats = processor.feature_extractor([good[i].numpy()], sampling_rate=16000, return_tensors="pt").input_features
        encoded = model.get_encoder()(feats.to(model.device, model.dtype))
        encoding += time.perf_counter() - t0
        for name, prompts in prompt_sets.items():
            t0 = time.perf_counter()
            texts[name][i] = _decode_prompted(model, processor, encoded, prompts[i], num_beams, limit)
            seconds[name] += time.perf_counter() - t0
    return {name: (texts[name], seconds[name] + encoding) for name in prompt_sets}


def _decode_prompted(model, processor, encoded: BaseModelOutput, prompt: str | None, num_beams: int,
                     limit: dict) -> str:
    """One padded clip's encoder states (`encoded`, ``(1, 1500, dim)``), decoded with `prompt` as Whisper's
    previous-text prompt (none for None / "")."""
    extra = {"prompt_ids": prompt_ids(processor, prompt).to(model.device)} if prompt and prompt.strip() else {}
    with _quiet_generate():
        ids = model.generate(encoder_outputs=encoded, num_beams=num_beams, **limit, **extra)
    return processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


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
        with _quiet_generate():
            if padded:
                feats = processor.feature_extractor(chunk, sampling_rate=16000, return_tensors="pt",
                                                    return_attention_mask=True)
                ids = model.generate(input_features=feats.input_features.to(model.device, model.dtype),
                                     attention_mask=feats.attention_mask.to(model.device), num_beams=num_beams,
                                     **limit)
            else:
                inputs, lengths = encoder.collate([encoder.featurize(torch.from_numpy(chunk[0]))])
                states, _ = encoder(inputs.to(model.device), lengths.to(model.device))
                ids = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), num_beams=num_beams,
                                     **limit)
        yield i, [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]


class _DropWhisperInternals(logging.Filter):
    """Drops two messages transformers' own `WhisperForConditionalGeneration.generate` (5.2x) causes on
    every call, whatever its caller passes. It hands the generic ``generate`` its prepared generation
    config (which always holds a ``max_length``) *and* ``suppress_tokens``/``begin_suppress_tokens``
    (a workaround of theirs, transformers PR #48108). The generic ``generate`` then says that passing
    both is deprecated, and, when the caller gave ``max_new_tokens``, that both lengths are set
    (``max_new_tokens`` wins: the tokens are those asked for). Every other message still comes through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not whisper_internal(record.getMessage())


def whisper_internal(msg: str) -> bool:
    """Whether a transformers log message is one `_DropWhisperInternals` drops."""
    return ("Passing `generation_config` together with generation-related arguments" in msg
            and "suppress_tokens" in msg) or ("Both `max_new_tokens`" in msg and "`max_length`" in msg)


@contextlib.contextmanager
def _quiet_generate():
    """Whisper's `generate` without the messages of `_DropWhisperInternals`."""
    log = logging.getLogger("transformers.generation.utils")
    drop = _DropWhisperInternals()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)
