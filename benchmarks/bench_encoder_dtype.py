"""The speech-LLM's Whisper encoder in bfloat16 against float32 on this CPU: time and how far its states move.

    .venv/bin/python benchmarks/bench_encoder_dtype.py --profile cpu     # ~1 min on a 2-core CPU (run alone)
    .venv/bin/python benchmarks/bench_encoder_dtype.py --profile smoke --utts 16

Why: the feature cache runs the frozen encoder once over every utterance a stage trains or is tested on (notebook
02's cache, notebook 05's real and noisy sets). The presets ask for ``encoder_options: {dtype: auto}``: bf16 where
that is faster here (`training.utils.resolve_dtype`). This says how much faster, and how far the states move
(relative error and cosine against float32); what that does to WER is measured by training on them (the stage-2
benchmark and the tutorial, docs/speed_findings.md). Both precisions encode the same batches of `--utts` synthetic
training utterances (and the held-out speechocean762 speakers when ``../shared/data/speechocean762`` is here), the
order alternating over `--repeats`, the best time of each kept. Recorded as ``encoder_dtype``.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from speechlm_lib import config, results
from speechlm_lib.data.audio import load_audio
from speechlm_lib.data.sources import DataSource
from speechlm_lib.evaluation.testsets import from_source
from speechlm_lib.models.encoders import ENCODERS
from speechlm_lib.models.sources import WHISPER_DEFAULT, load_whisper
from speechlm_lib.recipes.stage3_lora import real_speech_test
from speechlm_lib.training.utils import bf16_is_fast, cpu_name


@torch.no_grad()
def encode_all(encoder, batches: list) -> tuple[float, list[torch.Tensor]]:
    """Seconds to encode every ``(inputs, lengths)`` batch, and the float32 states of each utterance."""
    start, states = time.perf_counter(), []
    for inputs, lengths in batches:
        out, n = encoder(inputs, lengths)
        states += [s[: int(k)] for s, k in zip(out, n)]
    return time.perf_counter() - start, states


def compare(name: str, utts, encoders: dict, repeats: int, batch_size: int) -> dict:
    """Both precisions on `utts`: best seconds of `repeats`, RTF, and the bf16 states' distance from float32."""
    feats = [encoders["float32"].featurize(load_audio(u.audio, max_seconds=30)) for u in utts]
    batches = [encoders["float32"].collate(feats[i: i + batch_size]) for i in range(0, len(feats), batch_size)]
    audio = sum(f.shape[-1] for f in feats) / 100.0  # mel frames at 100/s
    best, states = {k: float("inf") for k in encoders}, {}
    for r in range(repeats):
        for key in sorted(encoders, reverse=bool(r % 2)):
            seconds, states[key] = encode_all(encoders[key], batches)
            best[key] = min(best[key], seconds)
    rel = [((b - a).norm() / a.norm()).item() for a, b in zip(states["float32"], states["bfloat16"])]
    cos = [torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()
           for a, b in zip(states["float32"], states["bfloat16"])]
    return {f"{name}_n": len(utts), f"{name}_audio_seconds": audio,
            **{f"{name}_{k}_rtf": best[k] / audio for k in encoders},
            f"{name}_time_bf16_over_float32": best["bfloat16"] / best["float32"],
            f"{name}_relative_error": sum(rel) / len(rel), f"{name}_relative_error_max": max(rel),
            f"{name}_cosine": sum(cos) / len(cos)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--utts", type=int, default=400, help="synthetic training utterances")
    ap.add_argument("--real-limit", type=int, default=None, help="held-out real utterances (default: all)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16, help="the feature cache's batch")
    ap.add_argument("--record-as", default="encoder_dtype")
    args = ap.parse_args(argv)
    sets = {"synthetic": from_source(DataSource(), "train", args.profile, args.utts)}
    real = real_speech_test(limit=args.real_limit)
    if real:
        sets["real"] = real
    else:
        print("speechocean762 is absent (../shared/data/speechocean762): the synthetic set only")
    whisper = load_whisper(WHISPER_DEFAULT)[0]
    encoders = {key: ENCODERS.build("whisper", source=WHISPER_DEFAULT, model=whisper, dtype=key).eval()
                for key in ("float32", "bfloat16")}
    start = time.perf_counter()
    metrics = {"threads": torch.get_num_threads(), "cpu": cpu_name(), "auto_chooses_bf16": bf16_is_fast()}
    for name, utts in sets.items():
        metrics.update(compare(name, utts, encoders, args.repeats, args.batch_size))
    results.report(args.record_as, metrics, start, profile_name=args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
