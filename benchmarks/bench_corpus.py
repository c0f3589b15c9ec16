"""Time a clean build of the synthetic corpus and record it.

    .venv/bin/python benchmarks/bench_corpus.py --profile cpu            # into a temporary folder
    .venv/bin/python benchmarks/bench_corpus.py --profile smoke --out data/synth/smoke

Prints utterances, hours of audio and seconds, and records them with
``speechlm_lib.results.record("corpus", ...)`` under the chosen profile.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from speechlm_lib import config, results
from speechlm_lib.data.corpus import BuildReport, CorpusConfig, build_corpus, corpus_stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES, help="corpus preset")
    ap.add_argument("--out", type=Path, default=None, help="build here (kept); default: a temporary folder")
    ap.add_argument("--workers", type=int, default=None, help="synthesis processes (default: all cores)")
    args = ap.parse_args()
    config.set_threads()  # $SPEECHLM_THREADS, $OMP_NUM_THREADS or the physical cores

    cfg = CorpusConfig.preset(args.profile)
    cfg.workers = args.workers
    tmp = None if args.out else Path(tempfile.mkdtemp(prefix=f"corpus_{args.profile}_", dir=config.data_dir()))
    out = args.out or tmp
    try:
        report = BuildReport()
        start = time.time()
        manifests = build_corpus(cfg, out, report=report)
        seconds = time.time() - start
        stats = {split: corpus_stats(path) for split, path in manifests.items()}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    utts = sum(s["utterances"] for s in stats.values())
    hours = sum(s["hours"] for s in stats.values())
    speakers = len({spk for s in stats.values() for spk in s["per_speaker"]})
    print(f"profile {args.profile}: {utts} utterances, {hours:.2f} h of audio, {speakers} speakers, "
          f"{seconds:.1f} s ({utts / seconds:.0f} utt/s, {hours * 3600 / seconds:.0f}x real time)")
    for split, s in stats.items():
        print(f"  {split:9s} {s['utterances']:6d} utt  {s['hours']:.2f} h  {s['speakers']:3d} speakers")
    metrics = {"utterances": utts, "hours": hours, "speakers": speakers, "build_seconds": seconds,
               "reused": report.reused, "failed": len(report.failed.skipped)}
    metrics.update({f"{split}_utterances": s["utterances"] for split, s in stats.items()})
    results.record("corpus", metrics, command=" ".join([Path(sys.executable).name] + sys.argv), seconds=seconds,
                   profile_name=args.profile)


if __name__ == "__main__":
    main()
