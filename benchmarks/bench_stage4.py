"""Benchmark stage 4: speech-supervised in-context training (keyword biasing) on top of the stage-3 model.

    .venv/bin/python benchmarks/bench_stage4.py --profile cpu            # the targets below
    .venv/bin/python benchmarks/bench_stage4.py --profile smoke          # plumbing, a few minutes
    .venv/bin/python benchmarks/bench_stage4.py --profile cpu --no-ablation --no-whisper   # the main run only
    .venv/bin/python benchmarks/bench_stage4.py --profile cpu --eval-only --set evaluation.filter.keep=5   # list filter
    .venv/bin/python benchmarks/bench_stage4.py --profile cpu --ablation-only --ablation-steps 125   # positive ratio
    .venv/bin/python benchmarks/bench_stage4.py --profile cpu --eval-only --set evaluation.filter.keep=5 \
        --set evaluation.filter.match=sound --record-as stage4_list_filter_sound   # filter by pronunciation
    .venv/bin/python benchmarks/bench_stage4.py --profile cpu --eval-only --tune-snap --set evaluation.filter.keep=5 \
        --set data.dev_limit=200 --record-as stage4_list_snap   # snap near-misses to the list, threshold from dev
    .venv/bin/python benchmarks/bench_stage4.py --profile cpu --no-ablation --no-whisper --set train.max_steps=500 \
        --model stage4_context_500 --record-as stage4_context_500   # twice the training, saved aside
    .venv/bin/python benchmarks/bench_stage4.py --profile cpu --eval-only --tune-snap --no-whisper \
        --set evaluation.filter.keep=5 --set evaluation.filter.match=ctc --set evaluation.filter.min_score=0 \
        --set data.dev_limit=200 --set "evaluation.distractors=(0, 100)" --record-as stage4_list_filter_ctc
        # the filter spots each entry in the projector's posteriors (decoding/keyword_spot.py); the record's
        # "ict_*" keys are the whole lists of the same run, its "filtered_*" keys the five spotted entries
    .venv/bin/python benchmarks/bench_stage4.py --profile cpu --eval-only --tune-snap --tune-place --no-whisper \
        --set evaluation.filter.keep=5 --set evaluation.filter.match=ctc --set evaluation.filter.min_score=0 \
        --set data.dev_limit=200 --set "evaluation.distractors=(0, 100)" --record-as stage4_list_place
        # then place the entries the keyword spotter hears where they were said (decoding/list_place.py);
        # "*_snaponly_*" keys: snapped, nothing placed

Starts from ``runs/<profile>/stage3_lora`` (notebook 03). Every test utterance gets a biasing list by the
LibriSpeech convention (its own keywords + N names never heard in training, N from the preset) and is
decoded with no list and with each list: by the stage-3 model (before ICT), by the ICT-trained model and
by Whisper tiny.en (the list as its prompt). Targets (issue 18), N = 100 (the largest N of the preset when
it has no 100, as the smoke preset):
  * B-WER with the N = 100 lists <= 0.4 x the no-context B-WER;
  * U-WER no more than 10 % relative above the no-context U-WER;
  * B-WER with only the true keywords (N = 0) <= 10 %;
  * whole-test WER with the N = 100 lists <= 10 %;
  * stage-4 training takes <= 10 minutes (the cpu profile);
  * decoding with the N = 100 lists takes <= 1.5 x the time without a list.
The ablation trains once more per positive ratio (``ratios`` of the preset, ``--ablation-steps`` updates)
and scores each with the N = 100 lists. Recorded as ``stage4_context_bench`` in runs/<profile>/results.json.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import torch

from speechlm_lib import config, results
from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.decoding.list_snap import training_vocabulary
from speechlm_lib.recipes.stage4_context import (Stage4Config, evaluate_biasing, evaluation_lists, load_splits,
                                                 decode_pooled, load_stage3, make_ict_dataset, table, train_ict,
                                                 tune_place, tune_snap, whisper_biasing)

KEYS = ("wer", "u_wer", "b_wer", "precision", "recall", "f1", "false_alarms", "seconds_per_utt", "prompt_tokens",
        "context_tokens", "lists_cut", "filter_seconds", "snap_seconds", "keywords_kept", "placed")


def record(args, metrics: dict, first: bool = False) -> None:
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    results.record(args.record_as, flat, command=command, seconds=metrics.get("train_seconds"),
                   profile_name=args.profile, replace=first, config=args.cfg.to_dict())


def flatten(prefix: str, scores: dict, metrics: dict) -> None:
    """``{N: scores}`` -> ``metrics["<prefix>_<N>_<key>"]``."""
    for n, row in scores.items():
        for k in KEYS:
            if k in row:
                metrics[f"{prefix}_{n}_{k}"] = row[k]
        if "before_snap" in row:  # the same hypotheses before snapping to the list
            metrics.update({f"{prefix}_nosnap_{n}_{k}": v for k, v in row["before_snap"].items() if k in KEYS})
            metrics[f"{prefix}_{n}_swaps"] = row["swaps"]
        if "snap_only" in row:  # snapped but nothing placed (decoding/list_place.py)
            metrics.update({f"{prefix}_snaponly_{n}_{k}": v for k, v in row["snap_only"].items() if k in KEYS})


def reference_n(cfg: Stage4Config) -> int:
    """The N of the targets: 100, or the largest of the preset without one."""
    ns = cfg.evaluation.distractors
    return 100 if 100 in ns else max(ns)


def targets(metrics: dict, n: int) -> dict:
    m = lambda k, d=1e9: metrics.get(k) if metrics.get(k) is not None else d  # noqa: E731
    b0, u0 = m("ict_none_b_wer", 0.0), m("ict_none_u_wer", 0.0)
    return {f"b_wer_N{n}<=0.4x_no_context": m(f"ict_{n}_b_wer") <= 0.4 * b0,
            f"u_wer_N{n}<=1.1x_no_context": m(f"ict_{n}_u_wer") <= 1.1 * u0,
            "b_wer_N0<=0.10": m("ict_0_b_wer") <= 0.10, f"wer_N{n}<=0.10": m(f"ict_{n}_wer") <= 0.10,
            "train_minutes<=10": m("train_seconds") <= 600,
            f"latency_N{n}<=1.5x_no_context": m(f"ict_{n}_seconds_per_utt") <= 1.5 * m("ict_none_seconds_per_utt", 0)}


def ablation(args, cfg: Stage4Config, splits, lists: dict, n: int, encoder, cache, metrics: dict) -> None:
    """Train once per positive ratio from the stage-3 model; score each with the N-distractor lists."""
    for ratio in cfg.ratios:
        run_cfg = replace(cfg, ict=replace(cfg.ict, positive_ratio=ratio),
                          train=replace(cfg.train, max_steps=args.ablation_steps or cfg.train.max_steps))
        model = load_stage3(run_cfg, encoder=encoder)
        trained = train_ict(run_cfg, model, make_ict_dataset(run_cfg, model, splits["train"], cache=cache,
                                                             progress=False), cache=cache)
        metrics[f"ratio{ratio:g}_train_seconds"] = trained["train_seconds"]
        scores = evaluate_biasing(run_cfg, model, splits["test"], {"none": None, n: lists[n]}, cache=cache)
        flatten(f"ratio{ratio:g}", scores, metrics)
        print(f"positive ratio {ratio}:", table(scores))
        del model
        record(args, metrics)


def eval_only(args, cfg: Stage4Config, metrics: dict) -> None:
    """The saved ICT model (runs/<profile>/<--model>, by default stage4_context) scored again, with this run's
    settings (e.g. the list filter, ``--set evaluation.filter.keep=5``), without and with the filter in one run.
    No training."""
    saved = replace(cfg, init_from=str(config.runs_dir() / args.profile / args.model))
    model = load_stage3(saved, trainable=False)
    splits = load_splits(cfg)
    lists = evaluation_lists(cfg, splits)
    cache = FeatureCache.for_encoder(model.encoder)
    metrics["test_utterances"] = len(splits["test"])
    known = training_vocabulary(u.text for u in splits["train"])  # the words snapping never replaces
    if args.tune_snap:
        cfg = snap_on_dev(cfg, model, splits, cache, metrics, known, place=args.tune_place)
        record(args, metrics)
    for label, run in (("ict", replace(cfg, evaluation=replace(cfg.evaluation, filter=replace(cfg.evaluation.filter,
                                                                                              keep=0)))),
                       ("filtered", cfg)):
        scores = evaluate_biasing(run, model, splits["test"], lists, cache=cache, known=known)
        flatten(label, scores, metrics)
        print(f"{label}:", table(scores), flush=True)
        record(args, metrics)
    if args.tune_snap and cfg.evaluation.whisper and not args.no_whisper:  # the peer, snapped to the same lists
        flatten("whisper", whisper_biasing(cfg, splits["test"], lists, known=known), metrics)
        record(args, metrics)


def snap_on_dev(cfg: Stage4Config, model, splits, cache, metrics: dict, known: set[str],
                place: bool = False) -> Stage4Config:
    """Choose ``evaluation.snap.min_score`` on the dev split (N = 0 and the reference N pooled, the list filter
    as configured), and with `place` then ``evaluation.place.min_similarity`` after snapping, from the same
    decoding; the grids' scores go into `metrics` as ``snap_dev_<score>_<key>`` and ``place_dev_<sim>_<key>``."""
    n = reference_n(cfg)
    dev_lists = {k: v for k, v in evaluation_lists(cfg, splits, split="dev").items() if k in (0, n)}
    decoded = decode_pooled(cfg, model, splits["dev"], dev_lists, cache)
    best, rows = tune_snap(cfg, model, splits["dev"], dev_lists, known=known, decoded=decoded)
    for row in rows:
        metrics.update({f"snap_dev_{row['min_score']:g}_{k}": v for k, v in row.items() if k != "min_score"})
    metrics.update(snap_min_score=best, dev_utterances=len(splits["dev"]))
    print("snap threshold on dev:", best, rows, flush=True)
    cfg = replace(cfg, evaluation=replace(cfg.evaluation, snap=replace(cfg.evaluation.snap, min_score=best)))
    if not place:
        return cfg
    best, rows = tune_place(cfg, model, splits["dev"], dev_lists, cache=cache, known=known, decoded=decoded)
    for row in rows:
        metrics.update({f"place_dev_{row['min_similarity']:g}_{k}": v for k, v in row.items()
                        if k != "min_similarity"})
    metrics["place_min_similarity"] = best
    print("placing threshold on dev:", best, rows, flush=True)
    return replace(cfg, evaluation=replace(cfg.evaluation, place=replace(cfg.evaluation.place, min_similarity=best)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a preset setting")
    ap.add_argument("--record-as", default="stage4_context_bench", help="stage name in results.json")
    ap.add_argument("--no-whisper", action="store_true", help="skip the Whisper peer")
    ap.add_argument("--no-ablation", action="store_true", help="skip the positive-ratio ablation")
    ap.add_argument("--ablation-steps", type=int, default=None, help="updates of each ablation run (preset's)")
    ap.add_argument("--ablation-only", action="store_true",
                    help="only the positive-ratio ablation (no main run, no Whisper); recorded as stage4_ratio_ablation")
    ap.add_argument("--eval-only", action="store_true",
                    help="no training: score the saved stage-4 model without and with the list filter "
                         "(--set evaluation.filter.keep=K); recorded as stage4_list_filter")
    ap.add_argument("--model", default="stage4_context",
                    help="the ICT model's folder in runs/<profile>: where training saves it, what --eval-only scores")
    ap.add_argument("--tune-snap", action="store_true",
                    help="with --eval-only: choose the snap-to-list threshold on dev, then score test with it "
                         "(before and after snapping, from the same decoding), Whisper's answers too")
    ap.add_argument("--tune-place", action="store_true",
                    help="with --tune-snap: then choose the threshold for placing spotted list entries "
                         "(decoding/list_place.py) on the same dev decoding, and score test with both")
    args = ap.parse_args()
    os.environ[config.PROFILE_ENV] = args.profile  # the corpus and the stage-3 folder of that profile
    cfg = args.cfg = Stage4Config.preset(args.profile).override(args.set)
    n = reference_n(cfg)
    metrics: dict = {"finished": False, "cpu_threads": torch.get_num_threads(), "reference_n": n}
    if args.eval_only:
        args.record_as = "stage4_list_filter" if args.record_as == "stage4_context_bench" else args.record_as
        record(args, metrics, first=True)
        eval_only(args, cfg, metrics)
        return record(args, {**metrics, "finished": True})
    model = load_stage3(cfg)
    splits = load_splits(cfg)
    lists = evaluation_lists(cfg, splits)
    cache = FeatureCache.for_encoder(model.encoder)
    metrics["test_utterances"] = len(splits["test"])
    if args.ablation_only:
        args.record_as = "stage4_ratio_ablation" if args.record_as == "stage4_context_bench" else args.record_as
        metrics["ablation_steps"] = args.ablation_steps or cfg.train.max_steps
        record(args, metrics, first=True)
        ablation(args, cfg, splits, lists, n, model.encoder, cache, metrics)
        return record(args, {**metrics, "finished": True})
    record(args, metrics, first=True)
    known = training_vocabulary(u.text for u in splits["train"])  # the words snapping never replaces (if on)
    flatten("stage3", evaluate_biasing(cfg, model, splits["test"], lists, cache=cache, known=known), metrics)
    train_ds = make_ict_dataset(cfg, model, splits["train"], cache=cache)
    result = train_ict(cfg, model, train_ds, cache=cache, output_dir=config.runs_dir() / args.profile / args.model)
    metrics.update(train_seconds=result["train_seconds"], train_loss=result["final"].get("train_loss"),
                   train_examples=len(train_ds), train_with_list=sum(w is not None for w in train_ds.contexts.values()))
    record(args, metrics)
    after = evaluate_biasing(cfg, model, splits["test"], lists, cache=cache, known=known)
    flatten("ict", after, metrics)
    print("ICT:", table(after))
    record(args, metrics)
    if cfg.evaluation.whisper and not args.no_whisper:
        flatten("whisper", whisper_biasing(cfg, splits["test"], lists), metrics)
        record(args, metrics)
    if not args.no_ablation:
        ablation(args, cfg, splits, lists, n, model.encoder, cache, metrics)
    metrics["targets_met"] = targets(metrics, n)
    metrics["finished"] = True
    print(metrics["targets_met"])
    record(args, {**metrics, **{f"target_{k}": v for k, v in metrics["targets_met"].items()}})


if __name__ == "__main__":
    main()
