"""The Whisper peer of stage 4 with each clip encoded once for all its prompt conditions, against once per condition.

    .venv/bin/python benchmarks/bench_whisper_prompts.py --profile cpu            # 100 test utterances, ~6 min

Both ways decode the stage-4 test lists (no list, N = 0, 10, 100 by the preset) in the same run, alternating
which goes first per round: ``per_condition`` calls `whisper_transcribe` with each condition's prompts (the
encoder runs for every condition), ``shared`` calls `whisper_transcribe_prompted` once (it runs once per clip).
Reports both wall times, the saving and whether every transcript is the same. Recorded as
``whisper_prompted_reuse`` in runs/<profile>/results.json. Run it alone.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from speechlm_lib import config, results
from speechlm_lib.data.audio import load_audio
from speechlm_lib.decoding.whisper import whisper_transcribe, whisper_transcribe_prompted
from speechlm_lib.models.sources import load_whisper
from speechlm_lib.recipes.stage4_context import Stage4Config, evaluation_lists, load_splits, whisper_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--limit", type=int, default=None, help="test utterances (default: the preset's test_limit)")
    ap.add_argument("--rounds", type=int, default=1, help="times each way runs (alternating which goes first)")
    ap.add_argument("--record-as", default="whisper_prompted_reuse")
    args = ap.parse_args()
    os.environ[config.PROFILE_ENV] = args.profile
    config.set_threads()
    cfg = Stage4Config.preset(args.profile)
    splits = load_splits(cfg)
    test = splits["test"][: args.limit or None]
    lists = {k: v[: len(test)] if v else v for k, v in evaluation_lists(cfg, splits).items()}
    whisper, processor = load_whisper(cfg.evaluation.whisper_source)
    waves = [load_audio(u.audio) for u in test]
    prompts = {str(k): p for k, (_, _, p) in whisper_prompts(cfg, lists, processor.tokenizer, len(test)).items()}
    cap = cfg.evaluation.whisper_max_new_tokens

    def per_condition():
        return {k: whisper_transcribe(whisper, processor, waves, prompts=p, max_new_tokens=cap)[0]
                for k, p in prompts.items()}

    def shared():
        return {k: texts for k, (texts, _) in
                whisper_transcribe_prompted(whisper, processor, waves, prompts, max_new_tokens=cap).items()}

    seconds, texts = {"per_condition": [], "shared": []}, {}
    for r in range(args.rounds):
        for name, run in sorted({"per_condition": per_condition, "shared": shared}.items(), reverse=r % 2 == 1):
            t0 = time.perf_counter()
            texts[name] = run()
            seconds[name].append(time.perf_counter() - t0)
            print(f"round {r + 1}: {name} {seconds[name][-1]:.1f} s", flush=True)
    best = {k: min(v) for k, v in seconds.items()}
    metrics = {"utterances": len(test), "conditions": list(prompts), "per_condition_seconds": best["per_condition"],
               "shared_seconds": best["shared"], "saving": 1 - best["shared"] / best["per_condition"],
               "same_transcripts": texts["per_condition"] == texts["shared"], "rounds": args.rounds}
    print(f"{len(test)} clips x {len(prompts)} conditions: {best['per_condition']:.1f} s -> {best['shared']:.1f} s "
          f"({metrics['saving']:.0%} less); same transcripts: {metrics['same_transcripts']}", flush=True)
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    results.record(args.record_as, metrics, command=command, profile_name=args.profile, replace=True)


if __name__ == "__main__":
    main()
