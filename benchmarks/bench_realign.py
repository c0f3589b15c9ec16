"""Real speech, the projector alone: how far CTC re-alignment on speechocean762's train speakers gets the
``ctc`` projector, under a few settings, before any LLM training.

    .venv/bin/python benchmarks/bench_realign.py --profile cpu                       # the variants below, ~17 min
    .venv/bin/python benchmarks/bench_realign.py --profile cpu --variant masked_synthetic:   # notebook 02's start
    .venv/bin/python benchmarks/bench_realign.py --profile cpu --variant long:realign.max_steps=1200
    .venv/bin/python benchmarks/bench_realign.py --profile cpu --variant masked: \
        --variant pieces0.1:realign_piece_dropout=0.1 --record-as real_speech_realign_pieces  # BPE-dropout
    .venv/bin/python benchmarks/bench_realign.py --profile cpu --variant masked: \
        --variant speed:"realign_speeds=(0.9, 1.1)" --record-as real_speech_realign_speed  # speed perturbation

Each variant starts from a new projector (``scratch``; ``synthetic`` in its name: notebook 02's stage-2 model),
re-aligns it (`recipes.stage3_lora.realign_projector`, preset ``cpu-speechocean`` plus the variant's settings;
``projector.<key>`` changes the new projector's own settings, e.g. dropout) and scores its best path on the dev
and test speakers and on 300 training utterances -- the last also with the states masked in train mode
(`StateMasking`, 4/8/12 spans), the errors stage 3's exposure could show the LLM. The figures bound what the
LLM can start from: the speech-LLM copies these tokens (docs/real_speech_findings.md).
Recorded as ``real_speech_realign`` in runs/<profile>/results.json.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from speechlm_lib import config, results
from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.speechlm_dataset import SpeechLMDataset
from speechlm_lib.decoding.ctc import projector_transcripts
from speechlm_lib.experiments.real_speech import load_real, start_model
from speechlm_lib.metrics import wer
from speechlm_lib.models.ctc_projector import StateMasking
from speechlm_lib.recipes.stage3_lora import Stage3Config, realign_projector

OFF = ["realign_masking.time_masks=0", "realign_masking.channel_masks=0"]
VARIANTS = {  # name -> settings over the preset ("masked": the preset's own masking)
    "plain": OFF, "masked": [], "masked_more": ["realign_masking.time_masks=4", "realign_masking.channel_masks=4"],
    "masked_1200": ["realign.max_steps=1200"], "masked_dropout0.3": ["projector.dropout=0.3"],
    "masked_pieces0.1": ["realign_piece_dropout=0.1"], "masked_speed": ["realign_speeds=(0.9, 1.1)"]}


def score(model, utts, cache, masking: StateMasking | None = None) -> float:
    """Best-path WER of the projector on `utts`; with `masking`, states masked (train mode, dropout off)."""
    ds = SpeechLMDataset(cache.fill(utts, model.encoder, batch_size=16, progress=False), model.encoder,
                         model.prompts, cache=cache)
    proj = model.projector
    proj.eval()
    if masking is not None:
        proj.train()
        for m in proj.modules():
            if isinstance(m, torch.nn.Dropout):
                m.eval()
        proj.state_masking = masking
    torch.manual_seed(0)
    out = projector_transcripts(model, ds)
    proj.state_masking = None
    proj.eval()
    return wer(out["refs"], out["hyps"])


def run_variant(name: str, sets: list[str], base: Stage3Config, splits: dict, profile: str) -> dict:
    projector = {k.split(".", 1)[1]: float(v) for k, v in (s.split("=", 1) for s in sets if s.startswith("projector."))}
    cfg = base.override(["realign.eval_every=0", *[s for s in sets if not s.startswith("projector.")]])
    torch.manual_seed(0)
    start_from = "synthetic" if "synthetic" in name else "scratch"
    model = start_model(start_from, cfg, splits["train"], profile, projector)
    cache = FeatureCache.for_encoder(model.encoder)
    start = time.perf_counter()
    realign_projector(cfg, model, splits["train"], splits["dev"], cache)
    figures = {"seconds": time.perf_counter() - start, "dev_wer": score(model, splits["dev"], cache),
               "test_wer": score(model, splits["test"], cache), "train_wer": score(model, splits["train"][:300], cache)}
    for spans in (4, 8, 12):
        masking = StateMasking(time_masks=spans, time_width=0.05, channel_masks=2, channel_width=48)
        figures[f"train_wer_masked{spans}"] = score(model, splits["train"][:300], cache, masking)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="a variant of your own (default: the built-in ones)")
    ap.add_argument("--record-as", default="real_speech_realign", help="the name in results.json")
    args = ap.parse_args()
    os.environ[config.PROFILE_ENV] = args.profile
    config.set_threads()
    variants = dict(VARIANTS)
    if args.variant:
        variants = {v.split(":")[0]: [s for s in re.split(r",(?=[\w.]+=)", v.partition(":")[2]) if s]
                    for v in args.variant}  # split at a comma before the next "key=", not inside a value
    base = Stage3Config.preset("cpu-speechocean")
    if args.profile == "smoke":
        base = base.override(["realign.max_steps=4", "data.train_limit=24", "realign_batch_size=8"])
    splits = load_real(base)
    if not splits["train"]:
        return
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    for i, (name, sets) in enumerate(variants.items()):
        figures = run_variant(name, sets, base, splits, args.profile)
        print(name, " ".join(f"{k} {v:.3f}" for k, v in figures.items()), flush=True)
        results.record(args.record_as, {f"{name}_{k}": v for k, v in figures.items()}, command=command,
                       profile_name=args.profile, replace=i == 0)


if __name__ == "__main__":
    main()
