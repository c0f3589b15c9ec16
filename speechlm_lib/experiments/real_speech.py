"""Real speech: the speech-LLM fine-tuned on a real corpus's train speakers, scored beside the complete Whisper.

The recipe is stage 3's (`recipes.stage3_lora`; preset ``configs/stage3_lora/cpu-speechocean.yaml``): the
projector re-aligned to the real voices by CTC (`realign_projector`, its vocabulary grown to the new words),
then LoRA adapters on English ASR. `fine_tune` runs it from one of two starts, with the same steps:

* ``synthetic`` -- the synthetic stage-2 model (``runs/<profile>/stage2_speechlm``, notebook 02);
* ``scratch``   -- a new projector on the same frozen encoder and LLM (nothing from the synthetic corpus).

`against_whisper` scores a system on the held-out speakers with a bootstrap interval, its WER relative to
Whisper's on the same utterances (paired bootstrap) and per age group. Notebook 05 and
``benchmarks/bench_real_speech.py`` call these.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.records import Utterance
from speechlm_lib.evaluation.aggregate import breakdown, paired_bootstrap
from speechlm_lib.evaluation.run import Evaluation, evaluate
from speechlm_lib.recipes.stage3_lora import (Stage3Config, add_adapters, load_stage2, make_task_dataset,
                                              realign_projector, train_lora)

STARTS = ("synthetic", "scratch")
SMOKE = ("realign.max_steps=6", "realign.eval_every=0", "train.max_steps=3", "train.eval_every=0", "data.dev_limit=4",
         "data.test_limit=8", "data.train_limit=24", "realign_batch_size=8", "lora.r=2")  # the plumbing in seconds


def load_real(cfg: Stage3Config, say=print) -> dict[str, list[Utterance]]:
    """``cfg``'s train / dev / test splits (`recipes.stage3_lora.load_splits`), or empty ones with a line
    when its manifest folder is absent (speechocean762 lives beside the repository, not in it)."""
    from speechlm_lib.recipes.stage3_lora import load_splits

    try:
        return load_splits(cfg)
    except FileNotFoundError as err:
        say(f"real speech absent: {err} (data/README.md says where it comes from)")
        return {"train": [], "dev": [], "test": []}


def start_model(start: str, cfg: Stage3Config, train: list[Utterance], profile: str):
    """The model a start begins from: the saved synthetic stage-2 model, or a new projector on the same parts
    (the stage-2 preset's encoder, projector and LLM; its vocabulary from `train`'s texts)."""
    from speechlm_lib.models.build import build_speechlm
    from speechlm_lib.recipes.stage2_align import Stage2Config

    if start not in STARTS:
        raise ValueError(f"unknown start {start!r}; known: {', '.join(STARTS)}")
    if start == "synthetic":
        return load_stage2(cfg)
    model_cfg = replace(Stage2Config.preset(profile).model, prompt_examples=0)
    return build_speechlm(model_cfg, texts=[u.text for u in train])


def fine_tune(cfg: Stage3Config, start: str, splits: dict[str, list[Utterance]], cache: FeatureCache | None,
              profile: str, output_dir: str | Path | None = None):
    """Re-align the projector and train the adapters from `start` on ``splits["train"]`` (dev WER on
    ``splits["dev"]``; `cache`: the encoder's feature cache, made here when None). Returns ``(model, info)``: info has the seconds (``seconds`` in all, ``realign_seconds``,
    ``lora_seconds``), ``added_tokens`` and the dev curves of the projector and of the speech-LLM."""
    t0 = time.perf_counter()
    model = start_model(start, cfg, splits["train"], profile)
    if cache is None and cfg.data.use_cache:
        cache = FeatureCache.for_encoder(model.encoder)
    aligned = realign_projector(cfg, model, splits["train"], splits["dev"], cache)
    add_adapters(cfg, model)
    train_ds = make_task_dataset(cfg, model, splits["train"], cfg.tasks, cache=cache, progress=False)
    result = train_lora(cfg, model, train_ds, dev=splits["dev"], cache=cache, output_dir=output_dir)
    info = {"seconds": time.perf_counter() - t0, "realign_seconds": aligned["seconds"],
            "lora_seconds": result["seconds"], "added_tokens": aligned["added_tokens"],
            "projector_dev_curve": " ".join(f"{e['step']}:{e['wer']:.3f}" for e in aligned["eval"]),
            "dev_wer_curve": " ".join(f"{e['step']}:{e['wer']:.3f}" for e in result["eval"]),
            "kept_step": result.get("best", {}).get("step")}
    return model.eval(), info


def against_whisper(system, test: list[Utterance], whisper: Evaluation, test_set: str = "speechocean") -> tuple:
    """`system` on `test`: ``(evaluation, figures)``; figures hold ``wer`` with ``wer_low``/``wer_high`` (95 %
    bootstrap), ``rtf``, ``to_whisper`` = WER / Whisper's WER on the same utterances with its paired interval
    (``to_whisper_low``/``_high``), ``better_than_whisper_share`` (of resamples) and ``wer_<age group>``."""
    ev = evaluate(system, test, test_set)
    paired = paired_bootstrap(whisper.records, ev.records)
    figures = {"wer": ev.summary["wer"], "wer_low": ev.ci[0], "wer_high": ev.ci[1], "rtf": ev.summary["rtf"],
               "to_whisper": paired["ratio"], "to_whisper_low": paired["ratio_low"],
               "to_whisper_high": paired["ratio_high"], "better_than_whisper_share": paired["b_better"]}
    figures.update(by_age(ev))
    return ev, figures


def by_age(ev: Evaluation) -> dict:
    """``{"wer_child": ..., "wer_adult": ...}``: WER per age group (`aggregate.AGE_GROUPS`, first word)."""
    table = breakdown(ev.records, "age_group")
    return {f"wer_{row['age_group'].split()[0]}": row["wer"] for _, row in table.iterrows()}
