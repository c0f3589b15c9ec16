"""Notebook 02's small comparisons, alone: encoders and stacking rates through the `ctc` projector.

    .venv/bin/python benchmarks/bench_compare.py                  # 'cpu' profile
    .venv/bin/python benchmarks/bench_compare.py --profile smoke

Each variant (`alignment.comparison_variants`) trains the preset's ``ctc`` projector from scratch
for ``ctc_steps`` CTC updates over the first ``ctc_utterances`` training utterances
and is scored alone on the dev set; plain SLAM-ASR (``linear``) trains ``steps`` LLM-loss
updates and is scored through the frozen LLM. The stage-1 Conformer is used when notebook 01 (or
`scripts/train_ctc.py`) has left one in runs/<profile>/stage1_encoder. Recorded as stage
``stage2_compare`` in runs/<profile>/results.json, one entry per variant.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from speechlm_lib import config, results
from speechlm_lib.experiments.stage2_compare import CompareConfig, compare, comparison_variants
from speechlm_lib.models.sources import load_llm, load_whisper
from speechlm_lib.recipes.stage2_align import Stage2Config, load_splits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    args = ap.parse_args()
    config.set_threads()  # $SPEECHLM_THREADS, $OMP_NUM_THREADS or the physical cores
    cfg, runs = Stage2Config.preset(args.profile), CompareConfig.preset(args.profile)
    stage1 = config.runs_dir() / args.profile / "stage1_encoder"
    if not stage1.is_dir():
        print(f"No stage-1 Conformer at {stage1}: that row is left out (run notebooks/01 first).")
    t0 = time.time()
    whisper, _ = load_whisper(cfg.model.encoder_source)
    llm, tokenizer = load_llm(cfg.model.llm)
    splits = load_splits(cfg)
    rows = compare(cfg, runs, comparison_variants(cfg, runs, stage1), splits, llm, tokenizer, whisper=whisper, progress=True)
    metrics = {}
    for r in rows:
        print(f"{r['run']:<48} {r['objective']:<4} {r['tokens_per_second']:5.1f} tokens/s "
              f"{r['seconds_per_step']:.2f} s/update  dev WER {r['dev_wer']:.4f}  CER {r['dev_cer']:.4f}")
        metrics[r["run"]] = {k: v for k, v in r.items() if k != "run"}
    metrics["settings"] = {**runs.to_dict(), "dev_utterances": len(splits["dev"])}
    results.record("stage2_compare", metrics, command=" ".join([Path(sys.executable).name] + sys.argv),
                   seconds=time.time() - t0, profile_name=args.profile, replace=True)


if __name__ == "__main__":
    main()
