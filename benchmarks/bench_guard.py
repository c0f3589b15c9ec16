"""The repetition guard of the speech-LLM's decoding, on and off, on the saved stage-3 model's tasks.

    .venv/bin/python benchmarks/bench_guard.py --profile cpu             # English, German ASR, translation
    .venv/bin/python benchmarks/bench_guard.py --profile smoke --tasks asr_en   # plumbing only

`DecodeConfig.max_repeats` (3 by default; 0 = off) cuts an answer after the third copy of an n-gram that runs more
times in a row, and a row decoded against the projector's draft stops as soon as that cut is fixed
(`decoding.repetition`). This scores each task on the test split (the preset's `data.test_limit`) with the guard off
and on, in one process, alternating which goes first, and records per task and setting the metric, the
transcripts the guard cut, those that ended without an end token, the seconds, and whether the guarded texts are
exactly the unguarded ones cut (they must be). Recorded as ``decoding_guard`` in runs/<profile>/results.json.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from speechlm_lib import config, results
from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.tasks import TASKS
from speechlm_lib.decoding.repetition import cut_repetitions
from speechlm_lib.models.speechlm import SpeechLM
from speechlm_lib.recipes.stage3_lora import Stage3Config, load_splits, score_task

METRIC = {"asr_en": "wer", "asr_de": "wer", "ast_de": "bleu", "caps": "wer", "names": "recall"}


def compare(model, task_name: str, test: list, decode, cache, metrics: dict, first_on: bool) -> None:
    """Score one task with the guard off and on (in the order `first_on` says) and record both."""
    task, runs = TASKS.build(task_name), {}
    for on in ((True, False) if first_on else (False, True)):
        runs[on] = score_task(model, task, test, decode if on else replace(decode, max_repeats=0), cache=cache)
    key = METRIC.get(task_name, "wer")
    for on, tag in ((False, "off"), (True, "on")):
        s = runs[on]
        metrics.update({f"{task_name}_{tag}_{key}": s.get(key), f"{task_name}_{tag}_seconds": s["seconds"],
                        f"{task_name}_{tag}_truncated": s["truncated"], f"{task_name}_{tag}_looped": s["looped"]})
    metrics[f"{task_name}_n"] = runs[True]["n"]
    metrics[f"{task_name}_exact"] = runs[True]["hyps"] == [cut_repetitions(t) for t in runs[False]["hyps"]]
    print(task_name, {k: v for k, v in metrics.items() if k.startswith(task_name)}, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--model", type=Path, default=None, help="a saved SpeechLM folder (default: stage 3's)")
    ap.add_argument("--tasks", nargs="*", default=["asr_en", "asr_de", "ast_de"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a stage-3 preset setting")
    ap.add_argument("--record-as", default="decoding_guard")
    args = ap.parse_args()
    os.environ[config.PROFILE_ENV] = args.profile
    cfg = Stage3Config.preset(args.profile).override(args.set)
    folder = args.model or config.runs_dir() / args.profile / "stage3_lora"
    if not folder.is_dir():
        sys.exit(f"{folder}: no saved model (run notebook 03 or benchmarks/bench_stage3.py first)")
    model = SpeechLM.from_pretrained(folder)
    cache = FeatureCache.for_encoder(model.encoder)
    test = load_splits(cfg)["test"]
    metrics = {"model": str(folder), "max_repeats": cfg.decode.max_repeats, "max_ngram": cfg.decode.max_ngram}
    for i, name in enumerate(args.tasks):
        compare(model, name, test, cfg.decode, cache, metrics, first_on=i % 2 == 0)
    command = " ".join([".venv/bin/python"] + [shlex.quote(a) for a in sys.argv])
    results.record(args.record_as, metrics, command=command, profile_name=args.profile, replace=True)


if __name__ == "__main__":
    main()
