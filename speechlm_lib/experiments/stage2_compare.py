"""Notebook 02's comparisons: which encoder and stacking rate, and plain SLAM-ASR beside the ``ctc`` projector.

An experiment, not a stage: its settings (`CompareConfig`, presets in ``configs/stage2_compare/``)
live here, and it reuses stage 2's recipe functions. ``benchmarks/bench_compare.py`` runs it alone.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch

from speechlm_lib import results
from speechlm_lib.config import StageConfig
from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.records import Utterance
from speechlm_lib.models.build import build_speechlm
from speechlm_lib.models.ctc_projector import CTCAlignment
from speechlm_lib.models.encoders import ENCODERS
from speechlm_lib.models.speechlm import SpeechLM
from speechlm_lib.recipes.stage2_align import (
    Stage2Config,
    ctc_wer,
    make_cache,
    make_dataset,
    pretrain_ctc,
    train_projector,
)


@dataclass
class CompareConfig(StageConfig):
    """How big each comparison run is; ``preset(name)`` reads ``configs/stage2_compare/<name>.yaml``."""

    config_name: ClassVar[str] = "stage2_compare"
    steps: int = 60  # LLM-loss updates of each run whose projector is not "ctc"
    ctc_steps: int = 150  # CTC pre-alignment updates of each run with a "ctc" projector
    ctc_utterances: int = 1600  # the training utterances those CTC updates cycle over
    strides: tuple[int, ...] = (2, 5, 10)  # stacking rates k compared


def comparison_variants(cfg: Stage2Config, runs: CompareConfig,
                        stage1_dir: str | Path | None = None) -> dict[str, dict]:
    """Notebook 02's comparisons (name -> ModelConfig changes): the preset's ``ctc`` projector on
    Whisper at each of ``runs.strides``, on Whisper's stock 30-s states, on the stage-1
    Conformer in `stage1_dir` (when that folder exists), and plain SLAM-ASR (``linear``, LLM loss) last."""
    ctc, k = {"projector": "ctc", "projector_kwargs": cfg.model.projector_kwargs}, cfg.model.stride
    variants = {f"ctc, whisper k={s}": {**ctc, "stride": s} for s in runs.strides}
    variants[f"ctc, whisper k={k}, 30-s padded states"] = {**ctc, "stride": k,
                                                           "encoder_options": {"pad_to_30s": True}}
    if stage1_dir is not None and Path(stage1_dir).is_dir():
        variants["ctc, conformer k=2"] = {**ctc, "encoder": "conformer", "encoder_source": str(stage1_dir),
                                          "stride": 2}
    variants[f"plain SLAM-ASR: linear, LLM loss, whisper k={k}"] = {
        "projector": "linear", "projector_kwargs": {"hidden": 1024}, "stride": k}
    return variants


def compare(cfg: Stage2Config, runs: CompareConfig, variants: dict[str, dict], splits: dict[str, list[Utterance]],
            llm, tokenizer, whisper=None, progress: bool = False) -> list[dict]:
    """Small runs that differ only in model fields (`variants`: name -> ModelConfig changes).

    A variant with a ``ctc`` projector (and ``cfg.pretrain`` set) trains ``runs.ctc_steps``
    CTC pre-alignment updates on the first ``runs.ctc_utterances`` training utterances and
    is scored as the projector alone (best path, no LLM: cheap, so a few minutes give a WER that
    ranks encoders and stacking rates). Any other projector trains ``runs.steps`` LLM-loss
    updates (on the first ``steps x batch`` utterances) and is scored through the frozen LLM.
    Each row: ``run``, ``objective`` ("ctc" / "llm"), the dev WER and CER of its last weights, final
    training loss, audio tokens a second, seconds a step and trainable parameters. The LLM (and a
    loaded Whisper) is shared; features are cached, one cache per encoder setting.
    """
    rows = []
    for name, changes in variants.items():
        run_cfg = replace(cfg.with_model(**changes), keep_best=False)  # a row reports its last weights
        encoder = None
        if run_cfg.model.encoder == "whisper" and whisper is not None:
            encoder = ENCODERS.build("whisper", source=run_cfg.model.encoder_source, model=whisper,
                                     **run_cfg.model.encoder_options)
        torch.manual_seed(run_cfg.train.seed)
        model = build_speechlm(run_cfg.model, encoder=encoder, llm=llm, tokenizer=tokenizer,
                               texts=[u.text for u in splits["train"]])
        ctc = run_cfg.model.projector == "ctc" and run_cfg.pretrain is not None
        run = _compare_ctc if ctc else _compare_llm
        rows.append({"run": name, "objective": "ctc" if ctc else "llm", "tokens_per_second": model.token_rate,
                     "trainable": model.parameter_counts()["all"]["trainable"],
                     **run(run_cfg, runs, model, splits, make_cache(model), progress)})
    return rows


def recorded_comparison(variants: dict[str, dict], profile_name: str | None = None) -> list[dict] | None:
    """The rows `compare` would give, read from the profile's recorded reference run instead of trained here
    (``stage2_compare`` in ``runs/<profile>/results.json``, written by ``benchmarks/bench_compare.py``).

    Rows follow `variants`' order; a variant the record lacks is left out. None when the profile has no record.
    """
    recorded = results.load(profile_name)["stages"].get("stage2_compare", {}).get("metrics")
    if not recorded:
        return None
    return [{"run": name, **recorded[name]} for name in variants if name in recorded]


def _compare_llm(cfg: Stage2Config, runs: CompareConfig, model: SpeechLM, splits: dict, cache: FeatureCache,
                 progress: bool) -> dict:
    steps = runs.steps
    cfg = replace(cfg, train=replace(cfg.train, max_steps=steps, eval_every=0, progress=progress,
                                     warmup_steps=min(cfg.train.warmup_steps, steps // 4)))
    train_ds = make_dataset(model, splits["train"][:steps * cfg.data.batch_size], cfg, cache=cache,
                            progress=progress)
    dev = cache.fill(splits["dev"], model.encoder, progress=False)
    result = train_projector(cfg, model, train_ds, dev=dev, cache=cache)
    final = result["final"]
    return {"dev_wer": final.get("wer"), "dev_cer": final.get("cer"), "train_loss": final["train_loss"],
            "seconds_per_step": result["train_seconds"] / max(1, final["step"])}


def _compare_ctc(cfg: Stage2Config, runs: CompareConfig, model: SpeechLM, splits: dict, cache: FeatureCache,
                 progress: bool) -> dict:
    steps = runs.ctc_steps
    cfg = replace(cfg, pretrain=replace(cfg.pretrain, max_steps=steps, eval_every=0, progress=progress,
                                        warmup_steps=min(cfg.pretrain.warmup_steps, steps // 4)))
    train_ds = make_dataset(model, splits["train"][:runs.ctc_utterances], cfg, cache=cache,
                            progress=progress)
    dev_ds = make_dataset(model, splits["dev"], cfg, cache=cache, progress=False)
    result = pretrain_ctc(cfg, model, train_ds)
    scores = ctc_wer(CTCAlignment(model), dev_ds)
    return {"dev_wer": scores["wer"], "dev_cer": scores["cer"], "train_loss": result["final"]["train_loss"],
            "seconds_per_step": result["seconds"] / max(1, result["final"]["step"])}
