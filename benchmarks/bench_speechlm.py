"""Benchmark stage 2: train the projector (frozen Whisper tiny.en + frozen SmolLM2), decode, compare.

    .venv/bin/python benchmarks/bench_speechlm.py                  # the 'cpu' profile (targets below)
    .venv/bin/python benchmarks/bench_speechlm.py --profile smoke  # plumbing check, ~1 minute

Targets on the project's 2-core CPU (profile 'cpu'):
  * training (projector only) takes <= 8 minutes and reaches WER <= 10 % on the
    test split (voices and names never seen in training);
  * batched greedy decoding: real-time factor <= 0.05 with batch 8, <= 0.2 with batch 1;
  * training samples/s with the feature cache and without it (encoder run every step,
    unpadded and stock 30-s padded);
  * peak memory (max RSS).

Also decodes the same test set with the complete Whisper tiny.en model (30-s padded
input, its own decoder) for a side-by-side WER. Everything is recorded with
``results.record("stage2_speechlm_bench", ...)``; timings depend on what else runs.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path

import torch

from speechlm_lib import config, results
from speechlm_lib.alignment import build_speechlm, evaluate_wer, load_splits, make_cache, train_projector
from speechlm_lib.audio import load_audio
from speechlm_lib.generation import DecodeConfig
from speechlm_lib.records import Report
from speechlm_lib.sources import load_whisper
from speechlm_lib.speechlm_config import Stage2Config
from speechlm_lib.speechlm_data import SpeechLMDataset
from speechlm_lib.text import wer
from speechlm_lib.trainer import Trainer, TrainConfig
from speechlm_lib.whisper_baseline import whisper_transcribe


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def samples_per_second(model, dataset, cfg: Stage2Config, steps: int) -> float:
    """Training throughput over `steps` updates (projector restored afterwards)."""
    from speechlm_lib.speechlm_data import make_loader

    saved = copy.deepcopy(model.projector.state_dict())
    loader = make_loader(dataset, batch_size=cfg.data.batch_size, seed=1)
    tc = TrainConfig(max_steps=steps, lr=cfg.train.lr, warmup_steps=0, log_every=0, log_with=None, progress=False)
    out = Trainer(tc, model, loader).run()
    model.projector.load_state_dict(saved)
    return steps * cfg.data.batch_size / out["seconds"]


def decode_rtf(model, utts, batch_size: int, decode: DecodeConfig) -> dict:
    scores = evaluate_wer(model, utts, DecodeConfig(**{**decode.__dict__, "batch_size": batch_size}))
    return {"rtf": scores["rtf"], "wer": scores["wer"], "seconds": scores["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--steps", type=int, default=None, help="override the preset's training steps")
    ap.add_argument("--throughput-steps", type=int, default=4, help="updates per cache / no-cache timing")
    ap.add_argument("--rtf-utts", type=int, default=24, help="test utterances for the RTF timings")
    ap.add_argument("--out", type=Path, default=None, help="also write the metrics here as JSON")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = Stage2Config.preset(args.profile)
    if args.steps:
        cfg.train.max_steps = args.steps
    cfg.corpus_profile = args.profile
    metrics: dict = {"profile": args.profile, "steps": cfg.train.max_steps, "batch_size": cfg.data.batch_size,
                     "stride": cfg.model.stride, "projector": cfg.model.projector}

    t = time.time()
    whisper, processor = load_whisper(cfg.model.encoder_source)
    from speechlm_lib.encoders import ENCODERS
    encoder = ENCODERS.build(cfg.model.encoder, source=cfg.model.encoder_source, model=whisper)
    model = build_speechlm(cfg.model, encoder=encoder)
    metrics["load_seconds"] = time.time() - t
    metrics["trainable_parameters"] = model.parameter_counts()["all"]["trainable"]
    splits = load_splits(cfg)
    print(f"loaded in {metrics['load_seconds']:.1f} s; splits " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    # 1. the feature cache: fill once, then training throughput with and without it
    cache, report = make_cache(model), Report()
    t = time.time()
    train = cache.fill(splits["train"], encoder, batch_size=16, report=report)
    dev = cache.fill(splits["dev"], encoder, batch_size=16, report=report)
    metrics["cache_fill_seconds"] = time.time() - t
    metrics["cache_mb"] = cache.size_bytes() / 2**20
    cached_ds = SpeechLMDataset(train, encoder, model.prompts, cache=cache)
    raw_ds = SpeechLMDataset(train, encoder, model.prompts)
    metrics["train_samples_per_s_cached"] = samples_per_second(model, cached_ds, cfg, args.throughput_steps)
    metrics["train_samples_per_s_uncached"] = samples_per_second(model, raw_ds, cfg, args.throughput_steps)
    encoder.pad_to_30s = True  # the stock 30-s encoder, uncached: what the cache saves a stock pipeline
    metrics["train_samples_per_s_uncached_30s"] = samples_per_second(model, raw_ds, cfg, args.throughput_steps)
    encoder.pad_to_30s = False
    print(f"cache: filled in {metrics['cache_fill_seconds']:.1f} s; training samples/s: "
          f"{metrics['train_samples_per_s_cached']:.2f} cached, {metrics['train_samples_per_s_uncached']:.2f} "
          f"uncached (unpadded encoder), {metrics['train_samples_per_s_uncached_30s']:.2f} uncached (30-s encoder)")

    # 2. train the projector (dev WER at checkpoints)
    result = train_projector(cfg, model, cached_ds, dev=dev, cache=cache,
                             output_dir=config.runs_dir() / args.profile / "stage2_bench")
    metrics["train_seconds"] = result["train_seconds"]  # excluding dev-WER evaluations
    metrics["train_plus_eval_seconds"] = result["seconds"]
    metrics["train_samples_per_s"] = result["samples_per_second"]
    metrics["checkpoints"] = [{k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()}
                              for e in result["eval"]]
    print(f"trained {cfg.train.max_steps} steps in {result['seconds']:.0f} s; evals {metrics['checkpoints']}")

    # 3. test WER and decoding speed (unseen voices and names)
    test = splits["test"]
    scores = evaluate_wer(model, test, cfg.decode, progress=True)
    metrics.update(test_wer=scores["wer"], test_cer=scores["cer"], test_utterances=len(test),
                   truncated=scores["truncated"])
    sub = test[: args.rtf_utts]
    metrics["rtf_batch8"] = decode_rtf(model, sub, 8, cfg.decode)["rtf"]
    metrics["rtf_batch1"] = decode_rtf(model, sub, 1, cfg.decode)["rtf"]
    print(f"test WER {scores['wer']:.3f} CER {scores['cer']:.3f}; RTF batch 8 {metrics['rtf_batch8']:.3f}, "
          f"batch 1 {metrics['rtf_batch1']:.3f}")

    # 4. the complete Whisper tiny.en on the same test set
    waves = [load_audio(u.audio) for u in test]
    hyps, seconds = whisper_transcribe(whisper, processor, waves, padded=True, batch_size=8, progress=True)
    metrics["whisper_test_wer"] = wer([u.text for u in test], hyps)
    metrics["whisper_rtf"] = seconds / sum(u.duration for u in test)
    metrics["peak_rss_mb"] = peak_rss_mb()
    print(f"Whisper tiny.en WER {metrics['whisper_test_wer']:.3f} (RTF {metrics['whisper_rtf']:.3f}); "
          f"peak RSS {metrics['peak_rss_mb']:.0f} MB")
    for r, h in list(zip(scores["refs"], scores["hyps"]))[:5]:
        print(f"  REF {r}\n  HYP {h}")

    metrics["targets_met"] = {"train_minutes<=8": metrics["train_seconds"] <= 480,
                              "wer<=0.10": metrics["test_wer"] <= 0.10,
                              "rtf_batch8<=0.05": metrics["rtf_batch8"] <= 0.05,
                              "rtf_batch1<=0.2": metrics["rtf_batch1"] <= 0.2}
    if args.out:
        args.out.write_text(json.dumps(metrics, indent=2))
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
    results.record("stage2_speechlm_bench", flat, command=" ".join([Path(sys.executable).name] + sys.argv),
                   seconds=metrics["train_seconds"], profile_name=args.profile)
    print(json.dumps(metrics["targets_met"]))


if __name__ == "__main__":
    main()
