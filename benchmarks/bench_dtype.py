"""The LLM in bfloat16 against float32 on this CPU: a matrix product, ICT training and batched decoding, both
dtypes in one run, alternating.

    .venv/bin/python benchmarks/bench_dtype.py --profile cpu          # 2 rounds, ~8 min on a 2-core CPU (run alone)

Why: ``llm_dtype: auto`` (stages 3 and 4) used to mean bfloat16 wherever the CPU has the AVX-512 BF16 or AMX flags.
On one 2-core Xeon with AVX-512 BF16 and no AMX a bf16 product ran 2 x faster than float32; on another with the
same flags it ran 1.7 x slower. `training.utils.cpu_has_fast_bf16` now also measures one product, and this
benchmark checks what that choice is worth where it matters:

* ``matmul_*``: a ``(392, 576) x (576, 1536)`` product (an MLP projection of SmolLM2-135M over a training
  batch's positions), the best of 50;
* ``train_*``: seconds an update of notebook 04's ICT training (`recipes.stage4_context.train_ict`), starting each
  round from the same adapters of notebook 03's model (``runs/<profile>/stage3_lora``);
* ``decode_*``: RTF of greedy batch-8 decoding (`decoding.generation.transcribe`) of the first ``--utts`` English
  test utterances by that model, and the WER of its transcripts.

Each round runs both dtypes, alternating which goes first, so a machine that slows over the run hurts both
alike. Recorded as ``llm_dtype_speed`` in runs/<profile>/results.json, with the CPU's model name and what
``llm_dtype: auto`` chose here.
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
from speechlm_lib.decoding.generation import transcribe
from speechlm_lib.metrics import wer
from speechlm_lib.recipes.stage4_context import Stage4Config, load_splits, load_stage3, make_ict_dataset, train_ict
from speechlm_lib.training.utils import cpu_has_fast_bf16, cpu_name, resolve_dtype

DTYPES = ("float32", "bfloat16")


def matmul_ms(dtype: torch.dtype, rows: int = 392, repeats: int = 50) -> float:
    """Best milliseconds of one ``(rows, 576) x (576, 1536)`` product in `dtype`."""
    a, w = torch.randn(rows, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype)
    torch.nn.functional.linear(a, w)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.nn.functional.linear(a, w)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--steps", type=int, default=15, help="training updates a round and dtype")
    ap.add_argument("--utts", type=int, default=48, help="test utterances decoded a round and dtype")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--record-as", default="llm_dtype_speed")
    args = ap.parse_args()
    os.environ[config.PROFILE_ENV] = args.profile
    config.set_threads()
    cfg = Stage4Config.preset(args.profile)
    models = {d: load_stage3(replace(cfg, llm_dtype=d)) for d in DTYPES}
    cache = FeatureCache.for_encoder(models["float32"].encoder)
    splits = load_splits(cfg)
    test = [u for u in splits["test"] if u.language == "en"][:args.utts]
    ds = make_ict_dataset(cfg, models["float32"], splits["train"], cache=cache, progress=False)
    start = {k: v.detach().clone() for k, v in models["float32"].state_dict().items() if "lora_" in k}
    run_cfg = cfg.override([f"train.max_steps={args.steps}", "train.progress=false"])
    got = {f"{what}_{d}": [] for what in ("matmul_ms", "train_s_per_update", "decode_rtf") for d in DTYPES}
    texts = {}
    for r in range(args.rounds):
        for d in (DTYPES if r % 2 == 0 else DTYPES[::-1]):
            model = models[d]
            got[f"matmul_ms_{d}"].append(matmul_ms(getattr(torch, d)))
            model.load_state_dict(start, strict=False)
            t0 = time.perf_counter()
            train_ict(run_cfg, model, ds, cache=cache)
            got[f"train_s_per_update_{d}"].append((time.perf_counter() - t0) / args.steps)
            model.load_state_dict(start, strict=False)
            out = transcribe(model.eval(), test, cfg.decode, cache=cache, progress=False)
            got[f"decode_rtf_{d}"].append(out.rtf)
            texts[d] = out.texts
            print(f"round {r + 1}, {d}: " + ", ".join(f"{k.removesuffix('_' + d)} {v[-1]:.4g}"
                                                      for k, v in got.items() if k.endswith(d)), flush=True)
    metrics = {k: sum(v) / len(v) for k, v in got.items()}
    refs = [u.text for u in test]
    metrics.update({f"decode_wer_{d}": wer(refs, texts[d]) for d in DTYPES})
    for what in ("matmul_ms", "train_s_per_update", "decode_rtf"):
        metrics[f"{what}_bf16_over_fp32"] = metrics[f"{what}_bfloat16"] / metrics[f"{what}_float32"]
    metrics.update(cpu=cpu_name(), cpu_bf16_flags_and_faster=cpu_has_fast_bf16(),
                   auto_chooses=str(resolve_dtype("auto") or torch.float32).removeprefix("torch."),
                   threads=torch.get_num_threads(), steps=args.steps, utts=len(test), rounds=args.rounds)
    for k, v in metrics.items():
        print(f"{k:32} {v:.4f}" if isinstance(v, float) else f"{k:32} {v}")
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    results.record(args.record_as, metrics, command=command, profile_name=args.profile, replace=True, runs=got)


if __name__ == "__main__":
    main()
