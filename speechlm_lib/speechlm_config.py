"""Stage 2 configuration: which encoder / projector / LLM, the data, training and decoding.

``Stage2Config.preset(config.profile())`` gives:

* ``smoke`` -- the notebook in well under a minute: Whisper tiny.en + SmolLM2-135M-Instruct
  (offline), a few dozen utterances, a handful of steps. Numbers are not meaningful.
* ``cpu``   -- the real default on a 2-core CPU: same models, the ``ctc`` projector
  (`ctc_projector`, with two Transformer layers over its tokens): 650 cheap CTC pre-alignment
  updates of 32 (~4 min, under bf16 autocast where the CPU has it natively), demonstrations chosen
  on 96 dev utterances, then 30 LLM-loss updates of 8 at lr 3e-5 through the frozen LLM (bfloat16
  there too, ``llm_dtype="auto"``), keeping the dev-best weights (`keep_best`); cached encoder
  states; 200 test utterances.
  Plain SLAM-ASR (``linear``, LLM loss only) needs thousands of updates to align --
  hours on this CPU -- so it appears in the notebook's comparison runs.
* ``gpu``   -- Whisper small + SmolLM2-360M-Instruct by hub id, bf16 through accelerate, the
  50k-utterance noisy corpus, 2000 CTC updates of 32 and 1000 LLM-loss updates of 64. Offline, run it
  with the embedded models: ``--set model.encoder_source=openai/whisper-tiny.en
  --set model.llm=HuggingFaceTB/SmolLM2-135M-Instruct`` (`benchmarks/bench_speechlm.py`).
"""
from __future__ import annotations

import ast
import copy
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace

from .generation import DecodeConfig
from .prompting import PromptConfig
from .trainer import TrainConfig


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


@dataclass
class DataConfig:
    """Which utterances and how they are batched."""

    batch_size: int = 8  # utterances a training batch
    pretrain_batch_size: int = 32  # utterances a batch of CTC pre-alignment (no LLM runs: larger is cheap)
    max_batch_seconds: float | None = None  # also cap padded audio seconds a batch (None = no cap)
    train_limit: int | None = None  # use at most this many training utterances (None = all)
    dev_limit: int = 48  # dev utterances decoded at each evaluation (WER during training)
    test_limit: int | None = None  # test utterances for the final WER (None = all)
    use_cache: bool = True  # cache frozen-encoder states on disk (config.cache_dir()/features)
    num_workers: int = 0  # DataLoader worker processes


@dataclass
class Stage2Config:
    """Everything stage 2 needs; `preset(name)` for name in smoke / cpu / gpu."""

    model: ModelConfig = field(default_factory=ModelConfig)  # encoder, projector, LLM, prompt
    data: DataConfig = field(default_factory=DataConfig)  # subsets and batching
    train: TrainConfig = field(default_factory=TrainConfig)  # optimizer, schedule, logging
    pretrain: TrainConfig | None = None  # CTC pre-alignment of a "ctc" projector first (None = none)
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # greedy/beam, token budget
    corpus_profile: str | None = None  # which data/synth/<profile> corpus (None = the active profile)
    keep_best: bool = True  # after LLM-loss training keep the weights with the best dev WER (before training too)
    compare_steps: int = 60  # LLM-loss updates of each small comparison run whose projector is not "ctc"
    compare_ctc_steps: int = 150  # CTC pre-alignment updates of each comparison run with a "ctc" projector
    compare_ctc_utterances: int = 1600  # the training utterances those CTC updates cycle over
    compare_strides: tuple[int, ...] = (2, 5, 10)  # stacking rates k compared in those runs

    @classmethod
    def preset(cls, name: str) -> "Stage2Config":
        if name not in PRESETS:
            raise KeyError(f"unknown stage-2 preset {name!r}; known: {', '.join(PRESETS)}")
        return PRESETS[name]()

    def override(self, assignments) -> "Stage2Config":
        """A copy with dotted settings changed by ``"key=value"`` strings, e.g.
        ``["train.max_steps=100", "model.llm=HuggingFaceTB/SmolLM2-360M-Instruct"]``.

        Values are read as Python literals (``100``, ``2e-3``, ``None``, ``{"hidden": 2048}``),
        anything else as text. An unknown key raises ``KeyError`` naming it."""
        cfg = copy.deepcopy(self)
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"setting {item!r} is not key=value")
            *path, leaf = key.strip().split(".")
            obj = cfg
            for part in path:
                obj = getattr(obj, part, None) if is_dataclass(obj) else None
            if not is_dataclass(obj) or leaf not in {f.name for f in fields(obj)}:
                raise KeyError(f"unknown setting {key.strip()!r} (a None section cannot be set into)")
            try:
                value = ast.literal_eval(raw.strip())
            except (ValueError, SyntaxError):
                value = raw.strip()
            setattr(obj, leaf, value)
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    def with_model(self, **changes) -> "Stage2Config":
        """A copy with some model fields changed (for encoder / stride comparisons)."""
        return replace(self, model=replace(self.model, **changes))


def _smoke() -> Stage2Config:
    return Stage2Config(
        model=ModelConfig(projector="ctc", projector_kwargs={"hidden": 1024, "hard": True, "context": 2},
                          prompt_examples=5, prompt_example_sets=2),
        data=DataConfig(batch_size=4, pretrain_batch_size=8, train_limit=32, dev_limit=2, test_limit=8),
        pretrain=TrainConfig(max_steps=4, lr=2e-3, warmup_steps=1, log_every=1, eval_every=2, log_with=None,
                             progress=True),
        train=TrainConfig(max_steps=2, lr=5e-4, warmup_steps=1, log_every=1, eval_every=2, log_with=None,
                          progress=True),
        decode=DecodeConfig(batch_size=8, max_new_tokens=16),
        compare_steps=2,
        compare_ctc_steps=2,
        compare_ctc_utterances=16,
        compare_strides=(5,),
    )


def _cpu() -> Stage2Config:
    # 650 CTC updates on all 10,000 training utterances: test WER 25 % for the projector alone, against 30 %
    # after 300 on 6,000; 1000 updates gave 25.2 %, no better. In bf16 where the CPU has it ('fast'), an update
    # takes 0.38 s instead of 0.61 s. LLM-loss updates at lr 3e-4 raised dev WER (21.1 -> 26.8 % in 30), at
    # 3e-5 they leave it about level. On a GPU 6000 updates fit the training utterances perfectly and gave
    # 25.2 %: the rest is unseen names and voices, not too few updates (docs/stage2_findings.md)
    return Stage2Config(
        model=ModelConfig(projector="ctc", projector_kwargs={"hidden": 1024, "hard": True, "context": 2},
                          prompt_examples=5, prompt_example_sets=4, llm_dtype="auto"),
        # dev 96: chosen on 32 dev utterances, the demonstrations that won were the third best of four on test
        # (docs/stage2_findings.md, "Why the same code timed slower in a later session")
        data=DataConfig(batch_size=8, pretrain_batch_size=32, train_limit=None, dev_limit=96, test_limit=200),
        pretrain=TrainConfig(max_steps=650, lr=2e-3, warmup_steps=30, log_every=10, eval_every=325,
                             log_with=None, mixed_precision="fast"),
        train=TrainConfig(max_steps=30, lr=3e-5, warmup_steps=3, log_every=5, eval_every=15, log_with=None,
                          weight_decay=0.0),
        decode=DecodeConfig(batch_size=8),
        compare_steps=60,
        compare_strides=(5, 10),
    )


def _gpu() -> Stage2Config:
    return Stage2Config(
        model=ModelConfig(encoder_source="openai/whisper-small", llm="HuggingFaceTB/SmolLM2-360M-Instruct",
                          llm_dtype="bfloat16", projector="ctc",
                          projector_kwargs={"hidden": 2048, "hard": True, "context": 2},
                          prompt_examples=5, prompt_example_sets=4),
        pretrain=TrainConfig(max_steps=2000, lr=2e-3, warmup_steps=100, log_every=50, eval_every=500,
                             mixed_precision="bf16"),
        # batch 64: on an H100 an update of 16 took 0.26 s (benchmarks/device_logs); one update runs ~20k
        # eager PyTorch ops, so it is most likely bound by launching them and a larger batch costs little more
        data=DataConfig(batch_size=64, dev_limit=100, test_limit=500, num_workers=4),
        # lr 2e-5: at 2e-4 the 1000 updates raised the training loss from 2.0 to 3.1 and dev WER from 35 % to
        # 51 % on an H100 (benchmarks/device_logs)
        train=TrainConfig(max_steps=1000, lr=2e-5, warmup_steps=100, log_every=20, eval_every=250,
                          mixed_precision="bf16"),
        decode=DecodeConfig(batch_size=32),
        compare_steps=500,
        compare_ctc_steps=500,
        compare_ctc_utterances=16000,
    )


PRESETS = {"smoke": _smoke, "cpu": _cpu, "gpu": _gpu}
