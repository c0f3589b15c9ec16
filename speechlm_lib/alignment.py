"""Stage 2 end to end: build the speech-LLM, cache encoder states, train the projector, score WER.

The notebook and the benchmark call these; each is a few lines on top of
`SpeechLM`, `SpeechLMDataset`, `FeatureCache`, `Trainer` and `transcribe`::

    cfg = Stage2Config.preset(profile())
    model = build_speechlm(cfg.model)
    splits = load_splits(cfg)
    train_ds = make_dataset(model, splits["train"], cfg)
    result = train_projector(cfg, model, train_ds, dev=splits["dev"])
    scores = evaluate_wer(model, splits["test"], cfg.decode)
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .encoders import ENCODERS
from .feature_cache import FeatureCache
from .generation import DecodeConfig, transcribe
from .records import Report, Utterance, read_manifest
from .speechlm import SpeechLM, load_llm
from .speechlm_config import ModelConfig, Stage2Config
from .speechlm_data import SpeechLMDataset, make_loader
from .text import cer, wer
from .trainer import Callback, Trainer


def build_speechlm(cfg: ModelConfig, encoder=None, llm=None, tokenizer=None) -> SpeechLM:
    """A `SpeechLM` from a `ModelConfig`; pass already loaded parts to share them between runs."""
    if encoder is None:
        encoder = ENCODERS.build(cfg.encoder, source=cfg.encoder_source)
    if llm is None:
        dtype = getattr(torch, cfg.llm_dtype) if cfg.llm_dtype else None
        llm, tokenizer = load_llm(cfg.llm, dtype=dtype)
    return SpeechLM(encoder, llm, tokenizer, projector=cfg.projector, stride=cfg.stride,
                    projector_kwargs=cfg.projector_kwargs, prompt=cfg.prompt, freeze_encoder=cfg.freeze_encoder,
                    freeze_llm=cfg.freeze_llm, llm_source=cfg.llm)


def load_splits(cfg: Stage2Config, report: Report | None = None) -> dict[str, list[Utterance]]:
    """train / dev / test utterances of the synthetic corpus (built if missing), cut to the limits."""
    from .corpus import ensure_corpus

    manifests = ensure_corpus(cfg.corpus_profile)
    limits = {"train": cfg.data.train_limit, "dev": cfg.data.dev_limit, "test": cfg.data.test_limit}
    return {split: read_manifest(manifests[split], report)[: limits.get(split)] for split in ("train", "dev", "test")}


def make_cache(model: SpeechLM, root: str | Path | None = None) -> FeatureCache:
    """The feature cache for `model`'s encoder (keyed by its settings)."""
    return FeatureCache.for_encoder(model.encoder, root=root)


def make_dataset(model: SpeechLM, utts: list[Utterance], cfg: Stage2Config, cache: FeatureCache | None = None,
                 report: Report | None = None, progress: bool = True, **kw) -> SpeechLMDataset:
    """A dataset over `utts`; with ``cfg.data.use_cache`` the cache is filled first (batched)."""
    report = report if report is not None else Report()
    if cfg.data.use_cache:
        cache = cache or make_cache(model)
        utts = cache.fill(utts, model.encoder, batch_size=16, report=report, progress=progress)
    return SpeechLMDataset(utts, model.encoder, model.prompts, cache=cache if cfg.data.use_cache else None,
                           report=report, **kw)


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

    Returns the trainer's result dict (history, evals, final, seconds) plus
    ``"samples_per_second"``; the trained model is saved to `output_dir` if given.
    """
    loader = make_loader(train_ds, batch_size=cfg.data.batch_size, max_batch_seconds=cfg.data.max_batch_seconds,
                         seed=cfg.train.seed, num_workers=cfg.data.num_workers)
    evaluate = None
    if dev:
        dev_ds = SpeechLMDataset(dev, model.encoder, model.prompts, cache=cache)
        evaluate = make_evaluator(dev, cfg, cache=cache, dev_dataset=dev_ds)
    trainer = Trainer(cfg.train, model, loader, evaluate=evaluate, callbacks=callbacks)
    result = trainer.run()
    steps = result["final"]["step"]
    result["samples_per_second"] = steps * cfg.data.batch_size * cfg.train.grad_accum / max(result["seconds"], 1e-9)
    if output_dir is not None:
        trainer.model.save_pretrained(output_dir)
    return result
