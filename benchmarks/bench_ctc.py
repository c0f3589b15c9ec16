"""Benchmark stage 1: train the profile's CTC Conformer and report speed, memory and accuracy.

    python benchmarks/bench_ctc.py                 # the 'cpu' profile (target: <= 6 min on 2 cores,
                                                   #  CER <= 5 %, WER <= 15 % on unseen voices)
    python benchmarks/bench_ctc.py --profile smoke --max-steps 10

Reports training throughput (utterances/s and audio seconds/s, over wall time and
over this process's CPU time), peak resident memory (ru_maxrss), the padding
fraction of the duration-bucketed batches, the 1-minute load average seen at the
start and end (other jobs sharing the CPU make wall times pessimistic), and test
WER/CER (train_seconds includes the trainer's dev evaluations); records them
as stage "stage1_ctc_bench" in runs/<profile>/results.json.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from dataclasses import replace

import torch

from speechlm_lib import config, results
from speechlm_lib.data import corpus
from speechlm_lib.data.ctc_dataset import loader_padding_fraction, make_loader
from speechlm_lib.recipes.stage1_ctc import CTCStageConfig, load_data, score, train_encoder


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--max-steps", type=int, default=None, help="override the preset's steps")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: config.threads(): "
                   "$SPEECHLM_THREADS, $OMP_NUM_THREADS or the physical cores; "
                   "1 is much faster when other jobs share the cores)")
    p.add_argument("--no-record", action="store_true", help="print only; do not write results.json")
    args = p.parse_args(argv)
    config.set_threads(args.threads)
    cfg = CTCStageConfig.preset(args.profile)
    if args.max_steps:
        cfg = replace(cfg, train=replace(cfg.train, max_steps=args.max_steps))
    cfg = replace(cfg, train=replace(cfg.train, output_dir=str(cfg.output_dir().with_name("stage1_ctc_bench"))))

    t0 = time.time()
    vocab, data = load_data(cfg, corpus.ensure_corpus(cfg.profile))
    prep_s = time.time() - t0
    padding = loader_padding_fraction(make_loader(data["train"], cfg.batch_size, cfg.max_batch_seconds))
    load_start = os.getloadavg()[0]
    cpu0, t1 = time.process_time(), time.time()
    model, run = train_encoder(cfg, vocab, data)
    train_s, train_cpu = time.time() - t1, time.process_time() - cpu0
    n_utts, n_seconds = _seen(run, cfg, data)
    test = score(model, data["test"], vocab)
    metrics = {"test_wer": test["wer"], "test_cer": test["cer"], "dev_wer": run["final"]["wer"],
               "dev_cer": run["final"]["cer"], "params": model.num_parameters(), "steps": run["final"]["step"],
               "train_seconds": train_s, "train_cpu_seconds": train_cpu, "data_prep_seconds": prep_s,
               "utterances_per_second": n_utts / train_s, "audio_seconds_per_second": n_seconds / train_s,
               "audio_seconds_per_cpu_second": n_seconds / train_cpu, "epochs": n_utts / len(data["train"]),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "padding_fraction": padding, "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0],
               "torch_threads": torch.get_num_threads(), **data["train"].report.counts()}
    for k, v in metrics.items():
        print(f"{k:>30}: {v:.4g}" if isinstance(v, float) else f"{k:>30}: {v}")
    if not args.no_record:
        results.record("stage1_ctc_bench", metrics, command="python " + " ".join(sys.argv),
                       seconds=time.time() - t0, profile_name=cfg.profile)
    return metrics


def _seen(run: dict, cfg: CTCStageConfig, data: dict) -> tuple[float, float]:
    """Utterances and audio seconds the training consumed (whole epochs + the partial last one)."""
    loader = make_loader(data["train"], cfg.batch_size, cfg.max_batch_seconds, seed=cfg.train.seed)
    sampler, durations = loader.batch_sampler, data["train"].durations()
    n_utts = n_sec = 0.0
    batches_left = run["final"]["step"] * cfg.train.grad_accum
    epoch = 0
    while batches_left > 0:
        for b in sampler.batches(epoch)[:batches_left]:
            n_utts += len(b)
            n_sec += sum(durations[i] for i in b)
        batches_left -= len(sampler.batches(epoch))
        epoch += 1
    return n_utts, n_sec


if __name__ == "__main__":
    main()
