"""Stage 2, projector alignment (SLAM-ASR): a frozen speech encoder and a frozen LLM, only a projector trains.

Read top to bottom: the config (presets in ``configs/stage2_align/<profile>.yaml``), then the
recipe's steps. Notebook 02, ``benchmarks/bench_speechlm.py`` and the command line call them::

    cfg = Stage2Config.preset(profile())
    splits = load_splits(cfg)
    model = build_speechlm(cfg.model, texts=[u.text for u in splits["train"]])
    train_ds = make_dataset(model, splits["train"], cfg)
    if cfg.pretrain:  # the "ctc" projector: cheap CTC pre-alignment first
        pretrain_ctc(cfg, model, train_ds)
    result = train_projector(cfg, model, train_ds, dev=splits["dev"])
    scores = evaluate_wer(model, splits["test"], cfg.decode)

The presets: ``smoke`` proves the plumbing in seconds; ``cpu`` is the ``ctc`` projector (CTC
pre-alignment over the LLM's own tokens, then a few LLM-loss updates through the frozen, bf16 LLM,
keeping the dev-best weights) on Whisper tiny.en + SmolLM2-135M-Instruct; ``gpu`` takes hub models
and the 50k-utterance noisy corpus. Why each number is what it is: docs/stage2_findings.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Sequence

import torch

from speechlm_lib.decoding.list_snap import save_training_words
from speechlm_lib.config import StageConfig
from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.data.sources import DataSource, load_source
from speechlm_lib.data.speechlm_dataset import SpeechLMDataset, make_loader
from speechlm_lib.decoding.ctc import projector_transcripts
from speechlm_lib.decoding.generation import DecodeConfig, transcribe
from speechlm_lib.metrics import cer, wer
from speechlm_lib.models.build import ModelConfig
from speechlm_lib.models.ctc_projector import CTCAlignment, StateMasking
from speechlm_lib.models.prompting import example_sets
from speechlm_lib.models.speechlm import SpeechLM
from speechlm_lib.training.callbacks import Callback
from speechlm_lib.training.selection import train_keeping_best
from speechlm_lib.training.trainer import TrainConfig, Trainer


@dataclass
class DataConfig:
    """Which utterances and how they are batched."""

    source: DataSource = field(default_factory=DataSource)  # where train/dev/test come from: the synthetic
    #   corpus (default), a manifest folder or a `datasets` corpus (data/sources.py; docs/own_data.md)
    batch_size: int = 8  # utterances a training batch
    pretrain_batch_size: int = 32  # utterances a batch of CTC pre-alignment (no LLM runs: larger is cheap)
    max_batch_seconds: float | None = None  # also cap padded audio seconds a batch (None = no cap)
    train_limit: int | None = None  # use at most this many training utterances (None = all)
    dev_limit: int = 48  # dev utterances decoded at each evaluation (WER during training)
    test_limit: int | None = None  # test utterances for the final WER (None = all)
    use_cache: bool = True  # cache frozen-encoder states on disk (config.cache_dir()/features)
    num_workers: int = 0  # DataLoader worker processes


@dataclass
class Stage2Config(StageConfig):
    """Everything stage 2 needs; ``preset(name)`` reads ``configs/stage2_align/<name>.yaml``."""

    config_name: ClassVar[str] = "stage2_align"
    model: ModelConfig = field(default_factory=ModelConfig)  # encoder, projector, LLM, prompt
    data: DataConfig = field(default_factory=DataConfig)  # subsets and batching
    train: TrainConfig = field(default_factory=TrainConfig)  # optimizer, schedule, logging
    pretrain: TrainConfig | None = None  # CTC pre-alignment of a "ctc" projector first (None = none)
    masking: StateMasking = field(default_factory=StateMasking)  # SpecAugment on the states in pre-alignment
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # greedy/beam, token budget
    corpus_profile: str | None = None  # which data/synth/<profile> corpus (None = the active profile)
    keep_best: bool = True  # after LLM-loss training keep the weights with the best dev WER (before training too)

    def with_model(self, **changes) -> "Stage2Config":
        """A copy with some model fields changed (for encoder / stride comparisons)."""
        return replace(self, model=replace(self.model, **changes))


def load_splits(cfg: Stage2Config, report: Report | None = None) -> dict[str, list[Utterance]]:
    """train / dev / test utterances of ``cfg.data.source`` (by default the synthetic corpus of
    ``cfg.corpus_profile``, built if missing), cut to the limits; a split the source lacks is empty."""
    splits = load_source(cfg.data.source, report, corpus_profile=cfg.corpus_profile)
    limits = {"train": cfg.data.train_limit, "dev": cfg.data.dev_limit, "test": cfg.data.test_limit}
    return {split: splits.get(split, [])[: limits.get(split)] for split in ("train", "dev", "test")}


def make_cache(model: SpeechLM, root: str | Path | None = None) -> FeatureCache:
    """The feature cache for `model`'s encoder (keyed by its settings)."""
    return FeatureCache.for_encoder(model.encoder, root=root)


def make_dataset(model: SpeechLM, utts: list[Utterance], cfg: Stage2Config, cache: FeatureCache | None = None,
                 report: Report | None = None, progress: bool = True, **kw) -> SpeechLMDataset:
    """A dataset over `utts`; with ``cfg.data.use_cache`` the cache is filled first (batched)."""
    report = report if report is not None else Report()
    if cfg.data.use_cache:
        cache, filled = cache or make_cache(model), Report()
        utts = cache.fill(utts, model.encoder, batch_size=16, report=filled, progress=progress)
        report.skipped += filled.skipped  # unreadable audio; the dataset counts what it keeps
    return SpeechLMDataset(utts, model.encoder, model.prompts, cache=cache if cfg.data.use_cache else None,
                           report=report, **kw)


def choose_examples(cfg: Stage2Config, model: SpeechLM, texts: Sequence[str], dev: list[Utterance],
                    cache: FeatureCache | None = None) -> list[dict]:
    """Try ``cfg.model.prompt_example_sets`` demonstration sets (`prompting.example_sets` over the
    training `texts`) on `dev` and keep the one with the lowest WER in the model's prompt.

    Which transcripts the frozen LLM is shown changes how faithfully it copies the projector's
    tokens; the choice belongs to dev, like any setting. Returns ``[{"examples", "wer", "seconds"}, ...]``
    per set tried, in order (nothing tried with fewer than two sets or no `dev`)."""
    sets = example_sets(texts, cfg.model.prompt_examples, cfg.model.prompt_example_sets)
    if len(sets) < 2 or not dev:
        return []
    tried = []
    for examples in sets:
        model.prompts.set_examples(examples)
        scores = evaluate_wer(model, dev, cfg.decode, cache=cache)
        tried.append({"examples": examples, "wer": scores["wer"], "seconds": scores["seconds"]})
    model.prompts.set_examples(min(tried, key=lambda t: t["wer"])["examples"])
    return tried


@torch.no_grad()
def evaluate_wer(model: SpeechLM, utts: list[Utterance], decode: DecodeConfig | None = None,
                 cache: FeatureCache | None = None, progress: bool = False) -> dict:
    """Greedy/beam transcripts of `utts` scored against their texts.

    Returns ``{"wer", "cer", "rtf", "seconds", "truncated", "refs", "hyps"}``.
    """
    out = transcribe(model, utts, decode, cache=cache, progress=progress)
    refs = [u.text for u in utts]
    return {"wer": wer(refs, out.texts), "cer": cer(refs, out.texts), "rtf": out.rtf, "seconds": out.seconds,
            "truncated": out.truncated, "refs": refs, "hyps": out.texts}


@torch.no_grad()
def dev_loss(model: SpeechLM, dataset: SpeechLMDataset, batch_size: int = 8) -> float:
    """Mean teacher-forced answer-token loss over `dataset`."""
    device = next(model.projector.parameters()).device
    total, count = 0.0, 0
    for batch in make_loader(dataset, batch_size=batch_size, shuffle=False):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        out = model(**batch)
        total += float(out["loss"]) * out["n_tokens"]
        count += out["n_tokens"]
    return total / max(1, count)


def make_evaluator(dev: list[Utterance], cfg: Stage2Config, cache: FeatureCache | None = None,
                   dev_dataset: SpeechLMDataset | None = None):
    """``evaluate(model) -> {"wer", "cer", "dev_loss"}`` for the trainer (dev WER by greedy decoding)."""
    def evaluate(model):
        scores = evaluate_wer(model, dev, cfg.decode, cache=cache)
        metrics = {"wer": scores["wer"], "cer": scores["cer"]}
        if dev_dataset is not None:
            metrics["dev_loss"] = dev_loss(model, dev_dataset, cfg.data.batch_size)
        return metrics

    return evaluate


def train_projector(cfg: Stage2Config, model: SpeechLM, train_ds: SpeechLMDataset,
                    dev: list[Utterance] | None = None, callbacks: Sequence[Callback] = (),
                    cache: FeatureCache | None = None, output_dir: str | Path | None = None) -> dict:
    """Train the trainable parts (the projector by default) with the shared `Trainer`.

    Returns the trainer's result dict (history, eval, final, seconds) plus
    ``train_seconds`` / ``eval_seconds`` (time spent training vs scoring dev WER) and
    ``samples_per_second`` (training only); the model is saved to `output_dir` if given.
    With `dev` and ``cfg.keep_best``, dev WER is also scored before the first update (step 0
    in ``eval``) and the model ends with the weights of the best evaluation (``best``):
    LLM-loss updates that make dev WER worse are undone.
    """
    loader = make_loader(train_ds, batch_size=cfg.data.batch_size, max_batch_seconds=cfg.data.max_batch_seconds,
                         seed=cfg.train.seed, num_workers=cfg.data.num_workers)
    evaluate = None
    if dev:
        dev_ds = SpeechLMDataset(dev, model.encoder, model.prompts, cache=cache)
        evaluate = make_evaluator(dev, cfg, cache=cache, dev_dataset=dev_ds)
    result = train_keeping_best(cfg.train, model, loader, evaluate=evaluate, keep_best=cfg.keep_best,
                                callbacks=callbacks, run_config=cfg, batch_size=cfg.data.batch_size)
    if output_dir is not None:
        model.save_pretrained(output_dir)
        cfg.save(Path(output_dir) / "config.yaml")
        save_training_words(output_dir, [u.text for u in train_ds.utts])  # for `transcribe --snap`
    return result


def pretrain_ctc(cfg: Stage2Config, model: SpeechLM, train_ds: SpeechLMDataset,
                 dev_ds: SpeechLMDataset | None = None, callbacks: Sequence[Callback] = ()) -> dict:
    """CTC pre-alignment of a ``ctc`` projector (`ctc_projector`): no LLM runs, so an update
    is cheap. ``cfg.pretrain`` sets the steps, ``cfg.data.pretrain_batch_size`` the batch;
    at evaluations, the dev WER of the projector's own best path. Returns the trainer's result."""
    return align_projector(cfg.pretrain, model, train_ds, dev_ds, batch_size=cfg.data.pretrain_batch_size,
                           seed=cfg.train.seed, num_workers=cfg.data.num_workers, callbacks=callbacks,
                           run_config=cfg, masking=cfg.masking)


def align_projector(train: TrainConfig, model: SpeechLM, train_ds: SpeechLMDataset,
                    dev_ds: SpeechLMDataset | None = None, batch_size: int = 32, seed: int = 0,
                    num_workers: int = 0, callbacks: Sequence[Callback] = (), run_config=None,
                    masking: StateMasking | None = None, piece_dropout=None) -> dict:
    """The CTC alignment loop itself (`CTCAlignment` under the generic `Trainer`, settings `train`, the states
    masked by `masking`, the targets re-split by `piece_dropout`), shared by stage 2's pre-alignment and stage 3's re-alignment on a new corpus."""
    loader = make_loader(train_ds, batch_size=batch_size, seed=seed, num_workers=num_workers)
    evaluate = (lambda m: {"wer": ctc_wer(m, dev_ds)["wer"]}) if dev_ds is not None else None
    return Trainer(train, CTCAlignment(model, masking, piece_dropout), loader, evaluate=evaluate, callbacks=callbacks,
                   run_config=run_config).run()


@torch.no_grad()
def ctc_wer(objective: CTCAlignment, dataset: SpeechLMDataset, batch_size: int = 32) -> dict:
    """The ``ctc`` projector alone as a recogniser: best-path transcripts of `dataset` and their WER.

    Returns ``{"wer", "cer", "refs", "hyps", "ids"}`` (in the loader's duration-bucketed order).
    """
    out = projector_transcripts(objective.speechlm, dataset, batch_size=batch_size)
    return {"wer": wer(out["refs"], out["hyps"]), "cer": cer(out["refs"], out["hyps"]), **out}


def emergence(evals: list[dict], key: str = "wer") -> dict:
    """Where the dev metric fell most between two checkpoints (SLAM-ASR's "capability emergence").

    Returns ``{"first", "last", "best", "largest_drop", "drop_at_step"}``; a large drop
    between late checkpoints after a long plateau is emergence, a steady slope is not.
    """
    points = [(e["step"], e[key]) for e in evals if key in e]
    if len(points) < 2:
        return {"first": points[0][1] if points else None, "last": points[-1][1] if points else None,
                "best": min((v for _, v in points), default=None), "largest_drop": 0.0, "drop_at_step": None}
    drops = [(a[1] - b[1], b[0]) for a, b in zip(points, points[1:])]
    drop, at = max(drops)
    return {"first": points[0][1], "last": points[-1][1], "best": min(v for _, v in points),
            "largest_drop": drop, "drop_at_step": at}
