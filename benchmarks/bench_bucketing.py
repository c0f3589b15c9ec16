"""Stage-4 ICT training batches bucketed by audio seconds (the preset) against by whole-row tokens
(``data.bucket_by=tokens``): padding and seconds an update, both in one run.

    .venv/bin/python benchmarks/bench_bucketing.py --profile cpu          # 2 rounds of 25 updates each way, ~6 min

Starts each round from the same adapters (notebook 03's model, ``runs/<profile>/stage3_lora``) and alternates
which bucketing goes first, so a machine that slows down over the run (this one does) hurts both alike. The
padding is counted over one epoch of batches: the share of the batch's LLM positions that are padding
(row = audio tokens + prompt + answer). Accuracy is not measured here: train a whole model with
``bench_stage4.py --set data.bucket_by=tokens``. Recorded as ``stage4_bucketing`` in runs/<profile>/results.json.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from speechlm_lib import config, results
from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.speechlm_dataset import make_loader
from speechlm_lib.recipes.stage4_context import Stage4Config, load_splits, load_stage3, make_ict_dataset, train_ict


def padding(loader, stride: int) -> float:
    """Share of the padded LLM positions of every batch that are padding."""
    real = total = 0
    for b in loader:
        rows = b["prefix_lengths"] + b["state_lengths"] // stride + b["suffix_lengths"] + b["target_lengths"]
        real, total = real + int(rows.sum()), total + int(rows.max()) * len(rows)
    return 1 - real / max(total, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--steps", type=int, default=25, help="updates a round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--record-as", default="stage4_bucketing")
    args = ap.parse_args()
    os.environ[config.PROFILE_ENV] = args.profile
    config.set_threads()
    cfg = Stage4Config.preset(args.profile)
    model = load_stage3(cfg)
    cache = FeatureCache.for_encoder(model.encoder)
    ds = make_ict_dataset(cfg, model, load_splits(cfg)["train"], cache=cache, progress=False)
    lengths = ds.token_lengths(model.token_rate)
    stride = model.projector.stride
    metrics = {"padding_seconds": padding(make_loader(ds, cfg.data.batch_size, seed=cfg.train.seed), stride),
               "padding_tokens": padding(make_loader(ds, cfg.data.batch_size, seed=cfg.train.seed, lengths=lengths),
                                         stride)}
    start = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
    per_update = {"seconds": [], "tokens": []}
    for r in range(args.rounds):
        for by in (("seconds", "tokens") if r % 2 == 0 else ("tokens", "seconds")):
            model.load_state_dict(start, strict=False)
            run_cfg = cfg.override([f"data.bucket_by={by}", f"train.max_steps={args.steps}", "train.progress=false"])
            t0 = time.perf_counter()
            train_ict(run_cfg, model, ds, cache=cache)
            per_update[by].append((time.perf_counter() - t0) / args.steps)
            print(f"round {r + 1}, by {by}: {per_update[by][-1]:.2f} s an update", flush=True)
    for by, times in per_update.items():
        metrics[f"seconds_per_update_{by}"] = sum(times) / len(times)
    metrics.update(steps=args.steps, rounds=args.rounds,
                   saving=1 - metrics["seconds_per_update_tokens"] / metrics["seconds_per_update_seconds"])
    print(f"padding {metrics['padding_seconds']:.1%} -> {metrics['padding_tokens']:.1%}; "
          f"{metrics['seconds_per_update_seconds']:.2f} -> {metrics['seconds_per_update_tokens']:.2f} s an update "
          f"({metrics['saving']:.0%} less)", flush=True)
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    results.record(args.record_as, metrics, command=command, profile_name=args.profile, replace=True)


if __name__ == "__main__":
    main()
