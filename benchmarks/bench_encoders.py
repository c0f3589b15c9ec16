"""Stage 3 on Whisper tiny.en against Whisper base (multilingual), every task, in one run.

    .venv/bin/python benchmarks/bench_encoders.py --profile cpu        # both encoders, about 30 min on 2 cores
    .venv/bin/python benchmarks/bench_encoders.py --profile smoke      # plumbing

The stage-2 model of notebook 02 was trained on tiny.en's states and English only, so each encoder starts the same
way here: a new ``ctc`` projector (the stage-2 preset's settings) on the frozen encoder and the frozen SmolLM2,
re-aligned by CTC on stage 3's English *and German* training utterances (so its vocabulary holds German word
pieces; `recipes.stage3_lora.realign_projector`), then LoRA adapters on the stage-3 task mix (English ASR,
German ASR, English->German translation). The settings are the stage-3 preset's with the changes in ``BENCH``
(a smaller run than the preset, the same for both encoders); ``--set`` changes more.

Reported per encoder (prefix ``tiny.en_`` / ``base_``): each task's test metric (WER, CER, BLEU, chrF), the projector
alone on English and German, the seconds of the feature-cache fill, the re-alignment and the adapters, and the
decoding RTF of English ASR at batch 8. Recorded as ``stage3_encoders`` in runs/<profile>/results.json.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from speechlm_lib import config, results
from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.speechlm_dataset import SpeechLMDataset
from speechlm_lib.experiments.real_speech import WHISPERS, fine_tune, start_model
from speechlm_lib.recipes.stage3_lora import Stage3Config, evaluate_tasks, load_splits, projector_wer

SOURCES = WHISPERS  # encoder name -> hub id
TASKS = ("eval_tasks=('asr_en', 'asr_de', 'ast_de')",)
BENCH = ("data.train_limit=3000", "data.test_limit=100", "train.max_steps=200") + TASKS
SMOKE = ("data.train_limit=16", "data.test_limit=4", "data.dev_limit=4", "train.max_steps=2",
         "train.eval_every=0") + TASKS
REALIGN_STEPS = {"cpu": 400, "smoke": 4}


def settings(args) -> Stage3Config:
    """The stage-3 preset, the bench's changes, the command line's; re-alignment from the real-speech preset."""
    cfg = Stage3Config.preset(args.profile).override(list(SMOKE if args.profile == "smoke" else BENCH) + args.set)
    realign = Stage3Config.preset("cpu-speechocean").realign
    steps = REALIGN_STEPS.get(args.profile, realign.max_steps)
    return replace(cfg, realign=replace(realign, max_steps=steps, eval_every=0))


def one_encoder(args, cfg: Stage3Config, name: str, metrics: dict) -> None:
    """Build, cache, re-align, train and score one encoder; its figures go to ``metrics["<name>_..."]``."""
    splits = load_splits(cfg)
    t0 = time.perf_counter()
    model = start_model("scratch", cfg, splits["train"], args.profile, encoder_source=SOURCES[name])
    cache = FeatureCache.for_encoder(model.encoder)
    splits = {s: cache.fill(u, model.encoder, batch_size=16, progress=True) for s, u in splits.items()}
    m = {"cache_seconds": time.perf_counter() - t0, "encoder_parameters": sum(p.numel() for p in
                                                                             model.encoder.parameters())}
    model, info = fine_tune(cfg, "scratch", splits, cache, args.profile, model=model)
    m.update({k: info[k] for k in ("realign_seconds", "lora_seconds", "added_tokens", "dev_wer_curve")})
    for task, s in evaluate_tasks(cfg, model, splits["test"], cache=cache, held_out=False, progress=True).items():
        m.update({f"{task}_{k}": v for k, v in s.items() if isinstance(v, (int, float))})
    for lang in ("en", "de"):
        test = [u for u in splits["test"] if u.language == lang]
        m[f"projector_{lang}_wer"] = projector_wer(model, SpeechLMDataset(test, model.encoder, model.prompts,
                                                                           cache=cache)) if test else None
    metrics.update({f"{name}_{k}": v for k, v in m.items()})
    print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--encoders", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change a setting")
    ap.add_argument("--record-as", default="stage3_encoders", help="stage name in results.json")
    args = ap.parse_args()
    os.environ[config.PROFILE_ENV] = args.profile  # the corpus of that profile
    cfg = settings(args)
    metrics: dict = {"finished": False, "cpu_threads": torch.get_num_threads(), "realign_steps": cfg.realign.max_steps}
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    for i, name in enumerate(args.encoders):
        one_encoder(args, cfg, name, metrics)
        results.record(args.record_as, {**metrics, "finished": i == len(args.encoders) - 1}, command=command,
                       profile_name=args.profile, config=cfg.to_dict(), replace=i == 0)


if __name__ == "__main__":
    main()
