"""Benchmark stage 3: LoRA + multitask instruction tuning on top of the saved stage-2 model.

    .venv/bin/python benchmarks/bench_stage3.py --profile cpu          # the targets below
    .venv/bin/python benchmarks/bench_stage3.py --profile smoke        # plumbing, about a minute
    .venv/bin/python benchmarks/bench_stage3.py --profile cpu --ranks 2 8 32 --rank-steps 60   # rank ablation only
    .venv/bin/python benchmarks/bench_stage3.py --profile cpu --quick --set train_projector=true \
        --set "eval_tasks=('asr_en',)" --record-as stage3_lora_bench_train_projector \
        --save runs/cpu/stage3_lora_train_projector                      # the projector trains along

Starts from ``runs/<profile>/stage2_speechlm`` (notebook 02, or ``bench_speechlm.py --save``). Targets on
the project's 2-core CPU (issue "Stage 3"), all on the unseen-voice test split of stage 2:
  * training takes <= 10 minutes;
  * English test WER <= 15 %, and at least 30 % relative below the projector alone; words seen in
    training missed <= 5 % of the time;
  * German WER <= 20 %; English->German BLEU >= 30;
  * decoding RTF at batch 8 no worse than the stage-2 model's in the same run;
  * the LLM's text ability with adapters on and off; real speech (speechocean762 held-out speakers) beside
    Whisper tiny.en on the same utterances.
Recorded as ``stage3_lora_bench`` (``--record-as``) in runs/<profile>/results.json.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from speechlm_lib import config, results
from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.records import Report
from speechlm_lib.data.speechlm_dataset import SpeechLMDataset
from speechlm_lib.data.tasks import TASKS
from speechlm_lib.decoding.generation import transcribe
from speechlm_lib.experiments.text_ability import text_ability_on_and_off
from speechlm_lib.metrics import errors_by_frequency, wer, word_counts
from speechlm_lib.models.speechlm import SpeechLM
from speechlm_lib.recipes.stage3_lora import (
    Stage3Config,
    add_adapters,
    evaluate_tasks,
    load_splits,
    load_stage2,
    make_task_dataset,
    projector_wer,
    real_speech_test,
    score_task,
    stage2_dir,
    train_lora,
    whisper_wer,
)


def record(args, metrics: dict, seconds: float, first: bool = False) -> None:
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    results.record(args.record_as, flat, command=command, seconds=seconds, profile_name=args.profile,
                   replace=first, config=args.cfg.to_dict())


def exposure(cfg, model, splits, cache, metrics: dict) -> None:
    """The projector's own WER on training voices (best path and drawn at T) and on unseen voices."""
    n = 200 if cfg.data.dev_limit >= 48 else 8
    seen = SpeechLMDataset([u for u in splits["train"] if u.language == "en"][:n], model.encoder, model.prompts,
                           cache=cache)
    dev = SpeechLMDataset([u for u in splits["dev"] if u.language == "en"][:n], model.encoder, model.prompts,
                          cache=cache)
    t = cfg.exposure.sample_temperature
    metrics.update(projector_train_wer_best=projector_wer(model, seen),
                   projector_train_wer_drawn=projector_wer(model, seen, t) if t > 0 else None,
                   projector_dev_wer=projector_wer(model, dev), exposure_temperature=t)
    print(f"projector WER: training voices {metrics['projector_train_wer_best']:.3f} (best path), "
          f"{metrics['projector_train_wer_drawn']} (drawn at T={t}); unseen voices {metrics['projector_dev_wer']:.3f}")


def train(args, cfg, model, splits, cache, metrics: dict):
    report = Report()
    train_ds = make_task_dataset(cfg, model, splits["train"], cfg.tasks, cache=cache, report=report)
    names = train_ds.task_names()
    metrics.update({f"train_pairs_{t}": names.count(t) for t in cfg.tasks}, pairs_without_answer=len(report.skipped))
    t0 = time.time()
    result = train_lora(cfg, model, train_ds, dev=splits["dev"], cache=cache,
                        output_dir=args.save or config.runs_dir() / args.profile / "stage3_lora")
    metrics.update(train_seconds=result["train_seconds"], dev_eval_seconds=result["eval_seconds"],
                   wall_seconds=time.time() - t0, samples_per_second=result["samples_per_second"],
                   steps=result["final"]["step"], final_train_loss=result["final"]["train_loss"],
                   kept_step=result.get("best", {}).get("step"), kept_dev_wer=result.get("best", {}).get("wer"),
                   dev_wer_curve=" ".join(f"{e['step']}:{e['wer']:.3f}" for e in result["eval"]))
    print(f"trained {metrics['steps']} updates in {metrics['train_seconds']:.0f} s; dev {metrics['dev_wer_curve']}")


def evaluate(cfg, model, splits, cache, metrics: dict) -> dict:
    scores = evaluate_tasks(cfg, model, splits["test"], cache=cache, progress=True)
    for name, s in scores.items():
        metrics.update({f"{name}_{k}": v for k, v in s.items() if isinstance(v, (int, float))})
        print(f"{name:<16} " + " ".join(f"{k} {v:.3f}" for k, v in s.items() if isinstance(v, float)))
    asr = scores["asr_en"]
    counts = word_counts(u.text for u in splits["train"])
    groups = errors_by_frequency(asr["refs"], asr["hyps"], counts)
    seen_words = groups["rare"]["words"] + groups["common"]["words"]
    metrics["seen_word_error"] = ((groups["rare"]["error"] * groups["rare"]["words"] +
                                   groups["common"]["error"] * groups["common"]["words"]) / max(1, seen_words))
    metrics.update({f"word_error_{g}": groups[g]["error"] for g in ("unseen", "rare", "common")})
    return scores


def projector_test(cfg, model, splits, cache, metrics: dict) -> list:
    """The projector alone on the English test (after training: it changes when it trains along)."""
    test_en = [u for u in splits["test"] if u.language == "en"][: cfg.data.test_limit]
    metrics["projector_test_wer"] = projector_wer(model, SpeechLMDataset(test_en, model.encoder, model.prompts,
                                                                         cache=cache))
    return test_en


def baselines(args, cfg, model, splits, cache, metrics: dict) -> None:
    """On the same English test: the projector alone, the stage-2 model (its demonstrations, no adapters,
    RTF in the same run), Whisper tiny.en; and real speech for stage 3 and Whisper."""
    test_en = projector_test(cfg, model, splits, cache, metrics)
    stage2 = SpeechLM.from_pretrained(stage2_dir(cfg, args.profile), encoder=model.encoder,
                                      llm=model.peft.get_base_model() if model.peft else model.llm,
                                      tokenizer=model.tokenizer)
    with (model.peft.disable_adapter() if model.peft else torch.no_grad()):
        out = transcribe(stage2, test_en, cfg.decode, cache=cache, progress=True)
    metrics.update(stage2_test_wer=wer([u.text for u in test_en], out.texts), stage2_rtf_batch8=out.rtf)
    mine = transcribe(model, test_en, cfg.decode, cache=cache, progress=True)
    metrics["stage3_rtf_batch8"] = mine.rtf
    metrics["whisper_test_wer"] = whisper_wer(test_en)["wer"]
    real = real_speech_test(limit=None if args.profile != "smoke" else 8)
    metrics["real_utterances"] = len(real)
    if real:
        metrics["real_stage3_wer"] = score_task(model, TASKS.build("asr_en"), real, cfg.decode, progress=True)["wer"]
        metrics["real_whisper_wer"] = whisper_wer(real)["wer"]


def text_checks(cfg, model, metrics: dict) -> None:
    ability = text_ability_on_and_off(model, questions=cfg.text_questions)
    for side, a in ability.items():
        metrics[f"qa_accuracy_{side}"] = a["qa_accuracy"]
        metrics[f"perplexity_{side}"] = a["perplexity"]


def targets(metrics: dict) -> dict:
    """Each target of the issue: met or not (a figure this run did not measure counts as not met)."""
    en, proj = metrics.get("asr_en_wer", 1.0), metrics.get("projector_test_wer", 0.0)
    return {"train_minutes<=10": metrics.get("train_seconds", 1e9) <= 600, "en_wer<=0.15": en <= 0.15,
            "30%_below_projector": en <= 0.7 * proj, "seen_word_error<=0.05": metrics.get("seen_word_error", 1) <= 0.05,
            "de_wer<=0.20": metrics.get("asr_de_wer", 1.0) <= 0.20, "bleu>=30": metrics.get("ast_de_bleu", 0) >= 30,
            "rtf_no_worse_than_stage2": metrics.get("stage3_rtf_batch8", 9) <= metrics.get("stage2_rtf_batch8", 0)}


def decoding_speed(args, cfg, metrics: dict, repeats: int = 3, n: int = 48) -> None:
    """RTF at batch 8 on the first `n` English test utterances, median of `repeats`, in one run: the saved
    stage-2 model, the saved stage-3 model with its adapters beside the weights, folded in while decoding
    (`DecodeConfig.merge_adapters`, the default) and merged for good (`merge_lora`)."""
    import statistics

    from speechlm_lib.models.lora import merge_lora

    splits = load_splits(cfg)
    test = [u for u in splits["test"] if u.language == "en"][:n]
    stage3 = SpeechLM.from_pretrained(args.save or config.runs_dir() / args.profile / "stage3_lora")
    cache = FeatureCache.for_encoder(stage3.encoder)
    stage2 = SpeechLM.from_pretrained(stage2_dir(cfg, args.profile), encoder=stage3.encoder)

    def rtf(model, merge: bool = True) -> float:
        decode = replace(cfg.decode, merge_adapters=merge)
        return statistics.median(transcribe(model, test, decode, cache=cache, progress=False).rtf
                                 for _ in range(repeats))

    metrics.update(rtf_utterances=len(test), stage2_rtf_batch8=rtf(stage2),
                   stage3_rtf_batch8=rtf(stage3, merge=False),  # the adapters beside the weights
                   stage3_folded_rtf_batch8=rtf(stage3))  # folded in for each decoding (the default) and restored
    metrics["stage3_merged_rtf_batch8"] = rtf(merge_lora(stage3))
    print({k: v for k, v in metrics.items() if "rtf" in k})


def rank_ablation(args, cfg, metrics: dict) -> None:
    """Each rank (0 = stage 2 as it is, no demonstrations) trained `--rank-steps` updates on the same pairs:
    dev WER (English ASR), seconds an update, adapter parameters. One LLM, adapters removed between runs."""
    llm = tok = None
    for r in args.ranks:
        run = cfg.override([f"lora.r={r}", f"train.max_steps={args.rank_steps}", "train.eval_every=0",
                            "keep_best=False"])
        model = load_stage2(run, llm=llm, tokenizer=tok)
        llm, tok = model.llm, model.tokenizer
        counts = add_adapters(run, model)
        splits = load_splits(run)
        cache = FeatureCache.for_encoder(model.encoder)
        row = {"trainable": counts["llm"]["trainable"]}
        if r > 0:
            ds = make_task_dataset(run, model, splits["train"], run.tasks, cache=cache, progress=False)
            res = train_lora(run, model, ds, dev=splits["dev"], cache=cache)
            row.update(dev_wer=res["final"].get("wer"), seconds_per_update=res["train_seconds"] / args.rank_steps)
        else:
            row["dev_wer"] = score_task(model, TASKS.build("asr_en"), splits["dev"], run.decode, cache=cache)["wer"]
        metrics[f"rank_{r}"] = row
        print(f"rank {r}: {row}", flush=True)
        if model.peft is not None:
            llm = model.peft.unload()  # the bare LLM again for the next rank


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a preset setting")
    ap.add_argument("--record-as", default="stage3_lora_bench", help="stage name in results.json")
    ap.add_argument("--ranks", type=int, nargs="*", default=None, help="run only the rank ablation over these ranks")
    ap.add_argument("--rank-steps", type=int, default=60, help="updates of each rank-ablation run")
    ap.add_argument("--speed", action="store_true", help="only decoding RTF: stage 2, stage 3, stage 3 merged")
    ap.add_argument("--quick", action="store_true",
                    help="train and score the tasks only (no stage-2 / Whisper / real-speech rows, no text checks)")
    ap.add_argument("--save", type=Path, default=None, metavar="DIR",
                    help="where the trained model goes (default runs/<profile>/stage3_lora, which stage 4 reads)")
    args = ap.parse_args()
    os.environ[config.PROFILE_ENV] = args.profile  # the corpus and the stage-2 folder of that profile
    cfg = args.cfg = Stage3Config.preset(args.profile).override(args.set)
    metrics: dict = {"finished": False, "cpu_threads": torch.get_num_threads()}
    if args.speed:
        decoding_speed(args, cfg, metrics)
        return results.record("stage3_decoding_speed", metrics, profile_name=args.profile, config=cfg.to_dict(),
                              command=" ".join([Path(sys.executable).name] + sys.argv))
    if args.ranks is not None:
        args.record_as = args.record_as if args.record_as != "stage3_lora_bench" else "stage3_rank_ablation"
        rank_ablation(args, cfg, metrics)
        metrics["finished"] = True
        return results.record(args.record_as, metrics, profile_name=args.profile, config=cfg.to_dict(),
                              command=" ".join([Path(sys.executable).name] + sys.argv))
    model = load_stage2(cfg)
    metrics.update({f"params_{k}": v for k, v in add_adapters(cfg, model)["all"].items()})
    splits = load_splits(cfg)
    cache = FeatureCache.for_encoder(model.encoder)
    exposure(cfg, model, splits, cache, metrics)
    record(args, metrics, 0.0, first=True)
    train(args, cfg, model, splits, cache, metrics)
    record(args, metrics, metrics["train_seconds"])
    evaluate(cfg, model, splits, cache, metrics)
    if not args.quick:
        baselines(args, cfg, model, splits, cache, metrics)
        text_checks(cfg, model, metrics)
    elif cfg.train_projector:
        projector_test(cfg, model, splits, cache, metrics)
    metrics["targets_met"] = targets(metrics)
    metrics["finished"] = True
    print({k: v for k, v in metrics["targets_met"].items()})
    results.record(args.record_as, {**{k: v for k, v in metrics.items() if not isinstance(v, dict)},
                                    "targets_met": metrics["targets_met"]}, profile_name=args.profile,
                   command=" ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv]),
                   seconds=metrics["train_seconds"], config=cfg.to_dict())


if __name__ == "__main__":
    main()
