"""A `SpeechLM` from a config: which encoder, projector and LLM, and how they are joined.

Every stage that builds a speech-LLM (2, 3 and 4) builds it here::

    model = build_speechlm(ModelConfig(projector="ctc", prompt_examples=5), texts=train_texts)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

from speechlm_lib.models.ctc_projector import ctc_vocabulary
from speechlm_lib.models.encoders import ENCODERS
from speechlm_lib.models.projectors import PROJECTORS
from speechlm_lib.models.prompting import PromptBuilder, PromptConfig, pick_examples
from speechlm_lib.models.speechlm import SpeechLM, load_llm
from speechlm_lib.training.utils import resolve_dtype


@dataclass
class ModelConfig:
    """The speech-LLM's parts."""

    encoder: str = "whisper"  # name in encoders.ENCODERS
    encoder_source: str = "openai/whisper-tiny.en"  # hub id or directory of the encoder
    encoder_options: dict = field(default_factory=dict)  # extra encoder builder keywords (whisper: pad_to_30s)
    llm: str = "HuggingFaceTB/SmolLM2-135M-Instruct"  # hub id or directory of the causal LM
    llm_dtype: str | None = None  # torch dtype name for the LLM ("bfloat16"); None = float32; "auto" = bfloat16
    #   where the device computes it natively (`train_utils.resolve_dtype`: a GPU, or a CPU with AVX-512 BF16 / AMX)
    projector: str = "linear"  # name in projectors.PROJECTORS
    stride: int = 5  # encoder frames a token (Whisper: 50 frames/s / 5 = 10 tokens/s)
    projector_kwargs: dict = field(default_factory=lambda: {"hidden": 1024})  # extra projector settings
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(system="You are a speech recognizer.",
                                                                      audio_first=False))
    # ^ instruction, system message (short: SmolLM2's default one costs 16 more tokens), audio position:
    #   after the instruction, so the prompt before the audio is shared and runs once (`prefix_cache`)
    prompt_examples: int = 0  # training transcripts shown as demonstrations (fills prompt.examples when empty)
    prompt_example_sets: int = 1  # candidate sets of them tried on dev after CTC pre-alignment, the best kept
    #   (`alignment.choose_examples`; 1 = the first set, no trial): on 200 dev utterances, evenly spread sets
    #   scored WER 29-38 % through the same projector
    freeze_encoder: bool = True  # keep the speech encoder fixed
    freeze_llm: bool = True  # keep the LLM fixed (only the projector trains)


def build_speechlm(cfg: ModelConfig, encoder=None, llm=None, tokenizer=None,
                   texts: Sequence[str] | None = None) -> SpeechLM:
    """A `SpeechLM` from a `ModelConfig`; pass already loaded parts to share them between runs.

    A projector that emits LLM tokens (``ctc``) gets its ``vocab_ids`` from `texts`
    (the training transcripts) unless `cfg.projector_kwargs` already lists them; with
    ``cfg.prompt_examples`` the prompt's demonstrations are picked from `texts` too.
    The result lives on the LLM's device.
    """
    if encoder is None:
        encoder = ENCODERS.build(cfg.encoder, source=cfg.encoder_source, **cfg.encoder_options)
    if llm is None:
        llm, tokenizer = load_llm(cfg.llm, dtype=resolve_dtype(cfg.llm_dtype))
    kwargs = dict(cfg.projector_kwargs)
    if getattr(PROJECTORS.get(cfg.projector), "needs_vocabulary", False) and "vocab_ids" not in kwargs:
        if not texts:
            raise ValueError(f"projector {cfg.projector!r} needs the training texts (texts=...) for its vocabulary")
        kwargs["vocab_ids"] = ctc_vocabulary(PromptBuilder(tokenizer, cfg.prompt), texts)
    prompt = cfg.prompt
    if cfg.prompt_examples and not prompt.examples:
        if not texts:
            raise ValueError(f"prompt_examples={cfg.prompt_examples} needs the training texts (texts=...)")
        prompt = replace(prompt, examples=pick_examples(texts, cfg.prompt_examples))
    model = SpeechLM(encoder, llm, tokenizer, projector=cfg.projector, stride=cfg.stride,
                     projector_kwargs=kwargs, prompt=prompt, freeze_encoder=cfg.freeze_encoder,
                     freeze_llm=cfg.freeze_llm, llm_source=cfg.llm)
    return model.to(llm.device)  # where the LLM is (`train_utils.default_device()` places it)
