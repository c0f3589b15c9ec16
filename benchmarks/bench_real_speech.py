"""Real speech: the speech-LLM fine-tuned on speechocean762's train speakers against the complete Whisper tiny.en
(whose encoder it borrows) on the held-out speakers, in one run.

    .venv/bin/python benchmarks/bench_real_speech.py --profile cpu                      # both starts
    .venv/bin/python benchmarks/bench_real_speech.py --profile cpu --start synthetic    # one
    .venv/bin/python benchmarks/bench_real_speech.py --profile smoke                    # plumbing, a minute
    .venv/bin/python benchmarks/bench_real_speech.py --profile cpu --start scratch \
        --set exposure.cross_fit_folds=2 --record-as real_speech_cross_fit     # adapters on cross-fitted tokens
    .venv/bin/python benchmarks/bench_real_speech.py --profile cpu --start scratch --encoder base \
        --record-as real_speech_base         # Whisper base's encoder, beside the complete Whisper base

The recipe is stage 3's (`recipes.stage3_lora`, preset ``configs/stage3_lora/cpu-speechocean.yaml``): the
projector re-aligned to the real voices by CTC (`realign_projector`, its vocabulary grown to the new words),
then LoRA adapters on English ASR. Two starts, the same steps:
  * ``synthetic`` -- the synthetic stage-2 model (``runs/<profile>/stage2_speechlm``, notebook 02);
  * ``scratch``   -- a new projector (nothing learnt from the synthetic corpus).
With ``exposure.cross_fit_folds=K`` the adapters train on tokens of fold projectors that never heard the
speakers they transcribe (`recipes.cross_fit`), so the LLM meets test-like errors in training.
Targets (issue "Stage 5"): WER on the held-out speakers <= 1.0 x Whisper tiny.en's on the same utterances, with
the fine-tuning in <= 15 minutes on the 2-core CPU. Reported: WER with 95 % bootstrap intervals, the ratio
to Whisper with its paired interval, adults against children, the projector alone and the speech-LLM's WER
relative to it (paired), and the seconds spent.
Recorded as ``real_speech_bench`` in runs/<profile>/results.json; the models go to runs/<profile>/real_<start>
(a variant's, recorded under another name, to runs/<profile>/<record-as>_<start>).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from speechlm_lib import config, results
from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.evaluation.aggregate import paired_bootstrap
from speechlm_lib.evaluation.run import evaluate
from speechlm_lib.evaluation.systems import SYSTEMS
from speechlm_lib.experiments.real_speech import (SMOKE, STARTS, WHISPERS, against_whisper, by_age, fine_tune,
                                                  load_real, start_model)
from speechlm_lib.recipes.stage3_lora import Stage3Config, real_speech_test


def show(name: str, f: dict) -> None:
    line = f"{name:<22} WER {f['wer']:.3f} [{f['wer_low']:.3f}, {f['wer_high']:.3f}]"
    if "to_whisper" in f:
        line += f"  x Whisper {f['to_whisper']:.2f} [{f['to_whisper_low']:.2f}, {f['to_whisper_high']:.2f}]"
    print(line, flush=True)


def folder(record_as: str, start: str) -> str:
    """The saved model's folder: ``real_<start>`` (notebook 05 scores it), or ``<record-as>_<start>`` for a variant."""
    return f"real_{start}" if record_as == "real_speech_bench" else f"{record_as}_{start}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--start", nargs="+", default=["synthetic", "scratch"], choices=STARTS)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a preset setting")
    ap.add_argument("--record-as", default="real_speech_bench", help="stage name in results.json")
    ap.add_argument("--encoder", default="tiny.en", choices=sorted(WHISPERS),
                    help="the frozen encoder (a new projector: the scratch start), and the complete Whisper beside it")
    args = ap.parse_args()
    os.environ[config.PROFILE_ENV] = args.profile
    cfg = Stage3Config.preset("cpu-speechocean").override((list(SMOKE) if args.profile == "smoke" else []) + args.set)
    splits = load_real(cfg)
    if not splits["train"]:
        print("speechocean762 is absent (../shared/data/speechocean762): nothing to measure.")
        return
    held_out = {u.id for u in real_speech_test()}
    assert {u.id for u in splits["test"]} <= held_out, "the test speakers differ from notebook 05's held-out set"
    metrics = {"train_utterances": len(splits["train"]), "dev_utterances": len(splits["dev"]),
               "test_utterances": len(splits["test"]), "cpu_threads": torch.get_num_threads(),
               "test_speakers": len({u.speaker for u in splits["test"]})}
    if args.encoder != "tiny.en" and "synthetic" in args.start:
        sys.exit("--encoder base needs --start scratch: the synthetic stage-2 model listens through tiny.en")
    whisper = evaluate(SYSTEMS.build("whisper", source=WHISPERS[args.encoder], language="en"), splits["test"],
                       "speechocean")
    figures = {"wer": whisper.summary["wer"], "wer_low": whisper.ci[0], "wer_high": whisper.ci[1],
               "rtf": whisper.summary["rtf"], **by_age(whisper)}
    metrics.update({f"whisper_{k}": v for k, v in figures.items()})
    show(f"whisper {args.encoder}", figures)
    t0 = time.perf_counter()
    first = start_model(args.start[0], cfg, splits["train"], args.profile, encoder_source=WHISPERS[args.encoder])
    cache = FeatureCache.for_encoder(first.encoder)
    for split in ("train", "dev"):
        splits[split] = cache.fill(splits[split], first.encoder, batch_size=16, progress=True)
    metrics["cache_seconds"] = time.perf_counter() - t0  # once per corpus and encoder, shared by both starts
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    for start in args.start:
        built, first = first, None  # the first start's model is the one built for the cache
        model, info = fine_tune(cfg, start, splits, cache, args.profile, model=built,
                                output_dir=config.runs_dir() / args.profile / folder(args.record_as, start))
        metrics.update({f"{start}_{k}": v for k, v in info.items()})
        print(f"[{start}] fine-tuned in {info['seconds'] / 60:.1f} min; projector dev {info['projector_dev_curve']}; "
              f"speech-LLM dev {info['dev_wer_curve']}", flush=True)
        evs = {}
        for name, system in ((start, "speechlm"), (f"{start}_projector", "projector")):
            evs[system], f = against_whisper(SYSTEMS.build(system, model=model), splits["test"], whisper)
            metrics.update({f"{name}_{k}": v for k, v in f.items()})
            show(name, f)
        paired = paired_bootstrap(evs["projector"].records, evs["speechlm"].records)  # does the LLM add anything?
        metrics.update({f"{start}_to_projector{k[5:]}": paired[k] for k in ("ratio", "ratio_low", "ratio_high")})
        print(f"{start}: speech-LLM / projector alone {paired['ratio']:.3f} "
              f"[{paired['ratio_low']:.3f}, {paired['ratio_high']:.3f}]", flush=True)
        metrics[f"{start}_targets_met"] = {"wer<=1.0x_whisper": metrics[f"{start}_to_whisper"] <= 1.0,
                                           "fine_tune<=15min": info["seconds"] <= 900}
        results.record(args.record_as, metrics, command=command, profile_name=args.profile, config=cfg.to_dict(),
                       replace=start == args.start[0])


if __name__ == "__main__":
    main()
