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
                                              prepare_projector, train_lora)

STARTS = ("synthetic", "scratch")
WHISPERS = {"tiny.en": "openai/whisper-tiny.en", "base": "openai/whisper-base"}  # --encoder: the speech-LLM's
#   frozen encoder, and the complete Whisper it is measured against (told the audio is English)
SMOKE = ("realign.max_steps=6", "realign.eval_every=0", "train.max_steps=3", "train.eval_every=0", "data.dev_limit=4",
         "data.test_limit=8", "data.train_limit=24", "realign_batch_size=8", "lora.r=2")  # the plumbing in seconds


def whisper_of(model) -> str:
    """The complete Whisper whose encoder `model` listens through (its hub id or folder): the peer it must beat.
    A model on another encoder (Conformer, wav2vec 2.0) is measured against tiny.en, the course's reference."""
    encoder = model.encoder
    return encoder.reference if getattr(encoder, "name", None) == "whisper" else WHISPERS["tiny.en"]


def load_real(cfg: Stage3Config, say=print) -> dict[str, list[Utterance]]:
    """``cfg``'s train / dev / test splits (`recipes.stage3_lora.load_splits`), or empty ones with a line
    when its manifest folder is absent (speechocean762 lives beside the repository, not in it)."""
    from speechlm_lib.recipes.stage3_lora import load_splits

    try:
        return load_splits(cfg)
    except FileNotFoundError as err:
        say(f"real speech absent: {err} (data/README.md says where it comes from)")
        return {"train": [], "dev": [], "test": []}


def start_model(start: str, cfg: Stage3Config, train: list[Utterance], profile: str,
                projector: dict | None = None, encoder_source: str | None = None):
    """The model a start begins from: the saved synthetic stage-2 model, or a new projector on the same parts
    (the stage-2 preset's encoder, projector and LLM; its vocabulary from `train`'s texts; its heads
    ``cfg.projector_members``; `projector`: settings of the new projector changed, e.g. ``{"dropout": 0.3}``;
    `encoder_source`: another encoder, e.g. ``openai/whisper-base``)."""
    from speechlm_lib.models.build import build_speechlm
    from speechlm_lib.recipes.stage2_align import Stage2Config

    if start not in STARTS:
        raise ValueError(f"unknown start {start!r}; known: {', '.join(STARTS)}")
    if start == "synthetic":
        if cfg.projector_members > 1:
            raise ValueError("projector_members makes a new projector: use the scratch start (the synthetic "
                             "start keeps the saved projector's heads)")
        return load_stage2(cfg)
    model_cfg = Stage2Config.preset(profile).model
    kwargs = {**model_cfg.projector_kwargs, "members": cfg.projector_members, **(projector or {})}
    model_cfg = replace(model_cfg, prompt_examples=0, projector_kwargs=kwargs,
                        encoder_source=encoder_source or model_cfg.encoder_source)
    return build_speechlm(model_cfg, texts=[u.text for u in train])


def fine_tune(cfg: Stage3Config, start: str, splits: dict[str, list[Utterance]], cache: FeatureCache | None,
              profile: str, output_dir: str | Path | None = None, model=None):
    """Re-align the projector and train the adapters from `start` on ``splits["train"]`` (dev WER on
    ``splits["dev"]``; `cache`: the encoder's feature cache, made here when None; `model`: `start`'s model if
    already built by `start_model`). With ``exposure.cross_fit_folds`` the adapters train on cross-fitted
    tokens (`recipes.cross_fit`, from the start's projector before re-alignment). Returns ``(model, info)``:
    info has the seconds (``seconds`` in all, ``realign_seconds``, ``lora_seconds``, ``cross_fit_seconds``),
    ``added_tokens``, the dev curves of the projector and of the speech-LLM, and the cross-fitted tokens' WER."""
    t0 = time.perf_counter()
    model = model if model is not None else start_model(start, cfg, splits["train"], profile)
    if cache is None and cfg.data.use_cache:
        cache = FeatureCache.for_encoder(model.encoder)
    if cfg.realign is None:
        raise ValueError("fine_tune re-aligns the projector to the new corpus: the config needs realign settings")
    prepared = prepare_projector(cfg, model, splits["train"], splits["dev"], cache)
    aligned, crossed = prepared["realign"], prepared["cross_fit"]
    add_adapters(cfg, model)
    train_ds = make_task_dataset(cfg, model, splits["train"], cfg.tasks, cache=cache, progress=False,
                                 audio_tokens=crossed["tokens"] if crossed else None)
    result = train_lora(cfg, model, train_ds, dev=splits["dev"], cache=cache, output_dir=output_dir)
    info = {"seconds": time.perf_counter() - t0, "realign_seconds": aligned["seconds"],
            "lora_seconds": result["seconds"], "added_tokens": aligned["added_tokens"],
            "projector_dev_curve": " ".join(f"{e['step']}:{e['wer']:.3f}" for e in aligned["eval"]),
            "dev_wer_curve": " ".join(f"{e['step']}:{e['wer']:.3f}" for e in result["eval"]),
            "kept_step": result.get("best", {}).get("step")}
    if crossed:
        info.update(cross_fit_seconds=crossed["seconds"], cross_fit_token_wer=crossed["wer"],
                    cross_fit_fold_wer=" ".join(f"{w:.3f}" for w in crossed["fold_wer"]))
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


def saved_or_fine_tuned(cfg: Stage3Config, splits: dict[str, list[Utterance]], runs: Path, profile: str,
                        shared: dict | None = None, say=print):
    """The real-speech model of ``runs/real_*`` if one is saved (``synthetic`` first; the benchmark makes them),
    else one fine-tuned here from the synthetic start and saved to ``runs/real_synthetic``."""
    from speechlm_lib.evaluation.systems import load_speechlm

    saved = next((runs / f"real_{s}" for s in STARTS if (runs / f"real_{s}" / "speechlm.json").is_file()), None)
    if saved is not None:  # like every system in notebook 05: a saved model is scored, not trained again
        say(f"scoring the saved {saved} (benchmarks/bench_real_speech.py made it; delete it to fine-tune here)")
        return load_speechlm(saved, shared)
    model, info = fine_tune(cfg, "synthetic", splits, None, profile, output_dir=runs / "real_synthetic")
    say(f"fine-tuned in {info['seconds'] / 60:.1f} min; projector dev WER by update {info['projector_dev_curve']};"
        f" speech-LLM dev WER by update {info['dev_wer_curve']}")
    return model


def rescore_examples(train: list[Utterance], n: int = 5) -> list[str]:
    """`n` training transcripts (seed 0): the lines the LLM reads before each candidate when rescoring."""
    import random

    return [u.text for u in random.Random(0).sample(train, min(n, len(train)))]


def rescore_settings(train: list[Utterance], stage: str = "real_speech_rescore", profile: str = "cpu"):
    """The `RescoreConfig` for a real-speech model: `rescore_examples` as the LLM's context and the weights
    ``benchmarks/bench_rescore.py`` chose on the dev speakers (`stage` in runs/<profile>'s results.json), or
    the class's defaults when it has not run."""
    from speechlm_lib.decoding.ctc_rescore import RescoreConfig
    from speechlm_lib.results import load

    examples = rescore_examples(train)
    metrics = load(profile)["stages"].get(stage, {}).get("metrics", {})
    chosen = {k[len("chosen_"):]: v for k, v in metrics.items() if k.startswith("chosen_")}
    sizes = {k: metrics[k] for k in ("beam", "top_k") if k in metrics}
    return RescoreConfig(examples=examples, **chosen, **sizes)


BEST = ("real_speech_speed_members3_scratch", "real_speech_rescore_speed_members3_b32_lm")  # the best measured
#   real-speech model's folder in runs/<profile> and the results.json stage of its rescoring (docs/real_speech_findings.md)


def real_speech_rows(cfg: Stage3Config, runs: Path, profile: str, shared: dict | None = None, say=print,
                     best: tuple[str, str] | None = BEST) -> list:
    """Notebook 05's real-speech table: Whisper tiny.en, the fine-tuned speech-LLM, its projector alone and the
    projector's n-best rescored by the LLM (`rescore_settings`) on `cfg`'s held-out speakers (`against_whisper`
    figures, one dict a row); then, if the benchmarks saved it, `best`'s model (folder in `runs`) rescored with
    the weights and beam of its results stage. Empty, with a line, when the corpus or notebook 02's model
    (``runs/stage2_speechlm``) is absent."""
    from speechlm_lib.evaluation.systems import SYSTEMS, load_speechlm

    splits = load_real(cfg, say)
    if not splits["train"] or not (runs / "stage2_speechlm").is_dir():
        say("the real corpus or notebook 02's model (runs/<profile>/stage2_speechlm) is absent: section skipped.")
        return []
    say(f"{ {k: len(v) for k, v in splits.items()} } utterances; "
        f"{len({u.speaker for u in splits['test']})} test speakers")
    whisper = evaluate(SYSTEMS.build("whisper"), splits["test"], "real")
    model = saved_or_fine_tuned(cfg, splits, runs, profile, shared, say)
    rows = [{"system": "Whisper tiny.en (complete)", "wer": whisper.summary["wer"], "wer_low": whisper.ci[0],
             "wer_high": whisper.ci[1], **by_age(whisper)}]
    rescore = rescore_settings(splits["train"], profile=profile)
    for label, kind, kw in (("speech-LLM, fine-tuned", "speechlm", {}), ("its projector alone", "projector", {}),
                            ("its projector's n-best rescored by the LLM", "rescored", {"rescore": rescore})):
        rows.append({"system": label, **against_whisper(SYSTEMS.build(kind, model=model, **kw), splits["test"],
                                                        whisper, "real")[1]})
    if best is not None and (runs / best[0] / "speechlm.json").is_file():
        del model
        rescore = rescore_settings(splits["train"], stage=best[1], profile=profile)
        system = SYSTEMS.build("rescored", model=load_speechlm(runs / best[0], shared).eval(), rescore=rescore)
        rows.append({"system": f"{best[0]}, {rescore.beam}-best rescored",
                     **against_whisper(system, splits["test"], whisper, "real")[1]})
    elif best is not None:
        say(f"{runs / best[0]} is absent: benchmarks/bench_real_speech.py and bench_rescore.py make it "
            "(docs/real_speech_findings.md), and it then joins this table")
    return rows
