"""Stage 1 as a script: train the CTC Conformer on the profile's synthetic corpus.

    python scripts/train_ctc.py                                   # $SPEECHLM_PROFILE (default cpu)
    python scripts/train_ctc.py --profile smoke --max-steps 20
    accelerate launch --multi_gpu --num_processes 2 scripts/train_ctc.py --profile smoke   # 2-process DDP
    torchrun --standalone --nproc_per_node 2 scripts/train_ctc.py --profile smoke        # the same

On a machine without a GPU both run DDP over gloo (`trainer.cpu_distributed`);
note that accelerate's own ``--cpu --num_processes 2`` starts ONE process unless
mpirun is set up (accelerate 1.15's simple launcher).
    python scripts/train_ctc.py --resume                           # continue from the latest checkpoint

Writes checkpoints + TensorBoard logs to runs/<profile>/stage1_ctc/, the encoder
(safetensors + config) to runs/<profile>/stage1_encoder/, and the test WER/CER
to runs/<profile>/results.json (stage "stage1_ctc").
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch
from accelerate import PartialState

from speechlm_lib import config, results
from speechlm_lib.data import corpus
from speechlm_lib.recipes.stage1_ctc import CTCStageConfig, load_data, score, train_encoder
from speechlm_lib.training.callbacks import PrintLogger
from speechlm_lib.training.utils import cpu_distributed


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=None, help="smoke / cpu / gpu (default: $SPEECHLM_PROFILE)")
    p.add_argument("--max-steps", type=int, default=None, help="override the preset's optimizer steps")
    p.add_argument("--train-utts", type=int, default=None, help="use only the first N training utterances")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps")
    p.add_argument("--output-dir", default=None, help="checkpoints/logs folder (default runs/<profile>/stage1_ctc)")
    p.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the output dir")
    p.add_argument("--no-record", action="store_true", help="do not write results.json or the encoder")
    return p.parse_args(argv)


def stage_config(args: argparse.Namespace) -> CTCStageConfig:
    cfg = CTCStageConfig.preset(args.profile or config.profile())
    train = cfg.train
    if args.max_steps is not None:
        train = replace(train, max_steps=args.max_steps, warmup_steps=min(train.warmup_steps, args.max_steps // 5))
    if args.save_every is not None:
        train = replace(train, save_every=args.save_every)
    if args.output_dir:
        train = replace(train, output_dir=args.output_dir)
    return replace(cfg, train=train, train_utts=args.train_utts or cfg.train_utts)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = stage_config(args)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state = PartialState(cpu=cpu_distributed())
    with state.main_process_first():  # one process builds the corpus, the others then read it
        manifests = corpus.ensure_corpus(cfg.profile)
        vocab, data = load_data(cfg, manifests, progress=state.is_main_process)
    start = time.time()
    model, run = train_encoder(cfg, vocab, data, callbacks=[PrintLogger()], resume=args.resume)
    metrics = {}
    if state.is_main_process:
        metrics = {**{f"test_{k}": v for k, v in score(model, data["test"], vocab).items()},
                   "steps": run["final"]["step"], "train_seconds": run["seconds"],
                   "skipped_nonfinite": run["skipped_nonfinite"], **data["train"].report.counts()}
        print(metrics)
        if not args.no_record:
            model.save_pretrained(cfg.encoder_dir())
            results.record("stage1_ctc", metrics, command="python " + " ".join(sys.argv),
                           seconds=time.time() - start, profile_name=cfg.profile)
    return metrics


if __name__ == "__main__":
    main()
