"""The Whisper peer in bfloat16 against float32 on this CPU: time and WER on the same utterances, in one run.

    .venv/bin/python benchmarks/bench_peer_dtype.py --profile cpu     # ~3 min on a 2-core CPU (run alone)
    .venv/bin/python benchmarks/bench_peer_dtype.py --profile smoke --utts 8

Why: the complete Whisper tiny.en is the peer of notebooks 03-05 (`evaluation.systems.PEER_DTYPE`,
`recipes.stage3_lora.whisper_wer`, stage 4's ``evaluation.whisper_dtype``). It runs in the precision that is faster
on this CPU ("auto", as the speech-LLM's LLM does); this benchmark says what that costs the peer in accuracy, so
a ratio to Whisper can be read knowing it. Test sets: the synthetic test split (``--utts``) and, when
``../shared/data/speechocean762`` is here, its held-out speakers (`recipes.stage3_lora.real_speech_test`). Each set
is decoded in both dtypes, the order alternating between sets; the bf16 minus float32 WER comes with a paired
bootstrap interval. Recorded as ``whisper_peer_dtype``.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from speechlm_lib import config, results
from speechlm_lib.evaluation.aggregate import paired_bootstrap
from speechlm_lib.evaluation.run import evaluate
from speechlm_lib.evaluation.systems import SYSTEMS
from speechlm_lib.evaluation.testsets import TEST_SETS
from speechlm_lib.models.sources import load_whisper
from speechlm_lib.recipes.stage3_lora import real_speech_test
from speechlm_lib.training.utils import bf16_is_fast

DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


def compare(name: str, utts, whispers: dict, first: str) -> dict:
    """Both dtypes on `utts` (`first` first): WER, RTF and the paired bf16 - float32 difference."""
    evals = {}
    for key in sorted(whispers, key=lambda k: k != first):
        model, processor = whispers[key]
        evals[key] = evaluate(SYSTEMS.build("whisper", model=model, processor=processor, batch_size=8), utts, name)
    diff = paired_bootstrap(evals["float32"].records, evals["bf16"].records)
    out = {f"{name}_n": len(utts)}
    for key, ev in evals.items():
        out.update({f"{name}_{key}_wer": ev.summary["wer"], f"{name}_{key}_rtf": ev.summary["rtf"]})
    out.update({f"{name}_bf16_minus_float32": diff["delta"], f"{name}_bf16_minus_float32_low": diff["low"],
                f"{name}_bf16_minus_float32_high": diff["high"],
                f"{name}_time_bf16_over_float32": out[f"{name}_bf16_rtf"] / max(out[f"{name}_float32_rtf"], 1e-12)})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--utts", type=int, default=200, help="synthetic test utterances")
    ap.add_argument("--real-limit", type=int, default=None, help="held-out real utterances (default: all)")
    ap.add_argument("--record-as", default="whisper_peer_dtype")
    args = ap.parse_args(argv)
    sets = {"synthetic": TEST_SETS.build("synthetic", args.profile, args.utts)}
    real = real_speech_test(limit=args.real_limit)
    if real:
        sets["real"] = real
    else:
        print("speechocean762 is absent (../shared/data/speechocean762): the synthetic set only")
    whispers = {key: load_whisper(dtype=dtype) for key, dtype in DTYPES.items()}
    start = time.perf_counter()
    metrics = {"threads": torch.get_num_threads(), "auto_chooses_bf16": bf16_is_fast()}
    for i, (name, utts) in enumerate(sets.items()):
        metrics.update(compare(name, utts, whispers, first=("float32", "bf16")[i % 2]))
    results.report(args.record_as, metrics, start, profile_name=args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
