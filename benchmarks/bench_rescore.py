"""The LLM as a second opinion: a saved model's CTC projector n-best rescored by its LLM (`decoding.ctc_rescore`),
against the projector's best path, the speech-LLM and the complete Whisper whose encoder the model uses (tiny.en,
or base: `experiments.real_speech.whisper_of`) on the same test utterances, in one run.

    .venv/bin/python benchmarks/bench_real_speech.py --profile cpu --start scratch   # makes runs/cpu/real_scratch
    .venv/bin/python benchmarks/bench_rescore.py --profile cpu                        # then this, ~10 min
    .venv/bin/python benchmarks/bench_rescore.py --profile cpu --set beam=32 --record-as real_speech_rescore_b32
    .venv/bin/python benchmarks/bench_rescore.py --profile cpu --data synthetic  # stage 3's model, unseen voices
    .venv/bin/python benchmarks/bench_rescore.py --profile cpu --model real_speech_base_scratch \
        --record-as real_speech_rescore_base     # the Whisper-base model, beside the complete Whisper base

The weights of the CTC, LLM and speech-LLM scores and the length bonus are chosen on the dev speakers (all of
them, by WER, over `RescoreConfig.grid`), then the test speakers are scored once with them. The LLM reads five
training transcripts before each candidate (`RescoreConfig.examples`; training text only).
Recorded as ``real_speech_rescore`` (``synthetic_rescore``) in runs/<profile>/results.json, with the dev grid's
WERs.
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
from tqdm.auto import tqdm

from speechlm_lib import config, results
from speechlm_lib.data.audio import load_audio
from speechlm_lib.decoding.ctc_rescore import RescoreConfig, choose_weights, nbest_scores
from speechlm_lib.evaluation.aggregate import paired_bootstrap
from speechlm_lib.evaluation.run import evaluate
from speechlm_lib.evaluation.systems import SYSTEMS, load_speechlm
from speechlm_lib.experiments.real_speech import against_whisper, load_real, rescore_examples, whisper_of
from speechlm_lib.metrics import wer
from speechlm_lib.recipes.stage3_lora import Stage3Config


@torch.no_grad()
def tables_of(model, utts, cfg: RescoreConfig, batch_size: int = 8) -> list[dict]:
    """`nbest_scores` of every utterance of `utts`, in order."""
    out = []
    for start in tqdm(range(0, len(utts), batch_size), desc="n-best", leave=False):
        waves = [load_audio(u.audio) for u in utts[start:start + batch_size]]
        feats, lengths = model.encoder.collate([model.encoder.featurize(w) for w in waves])
        states, n = model.encode(feats, lengths)
        out += nbest_scores(model, states, n, cfg)
    return out


DATA = {  # --data: (the Stage3Config preset whose splits are scored, the saved model's default folder)
    "speechocean": ("cpu-speechocean", "real_scratch"),  # real speech, held-out speakers
    "synthetic": (None, "stage3_lora"),  # the synthetic corpus's unseen voices (the profile's own preset), English
}


def load_data(name: str, profile: str) -> dict:
    """train / dev / test English utterances of `name` (every dev utterance; empty when the corpus is absent)."""
    preset = DATA[name][0] or profile
    cfg = Stage3Config.preset(preset).override(["data.dev_limit=100000"])  # every dev utterance
    splits = load_real(cfg)
    return {k: [u for u in v if u.language == "en"] for k, v in splits.items()}


def tune(model, dev, cfg: RescoreConfig) -> tuple[dict, dict]:
    """The weights chosen on `dev` and the figures of the choice (dev WERs of the grid, oracle, seconds)."""
    t0 = time.perf_counter()
    refs = [u.text for u in dev]
    tables = tables_of(model, dev, cfg)
    weights, tried = choose_weights(tables, refs, model.prompts.decode, cfg, wer)
    grid = {" ".join(f"{k}={v}" for k, v in w.items()): round(value, 4) for w, value in tried}
    oracle = [min((model.prompts.decode(c) for c in t["candidates"]), key=lambda h, r=r: wer([r], [h]))
              for t, r in zip(tables, refs)]
    figures = {"tune_seconds": time.perf_counter() - t0, "dev_oracle_wer": wer(refs, oracle), "dev_grid": grid,
               "dev_ctc_top_wer": grid[" ".join(f"{k}={0.0}" for k in weights)],
               "dev_chosen_wer": min(v for _, v in tried), **{f"chosen_{k}": v for k, v in weights.items()}}
    print(f"dev: n-best top {figures['dev_ctc_top_wer']:.3f}, chosen {weights} -> {figures['dev_chosen_wer']:.3f},"
          f" oracle {figures['dev_oracle_wer']:.3f} ({figures['tune_seconds']:.0f} s)", flush=True)
    return weights, figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--data", default="speechocean", choices=sorted(DATA))
    ap.add_argument("--model", default=None, help="saved model folder in runs/<profile> (default: --data's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a RescoreConfig setting")
    ap.add_argument("--dev-limit", type=int, default=None, help="dev utterances that choose the weights")
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--record-as", default=None, help="default: real_speech_rescore / synthetic_rescore")
    args = ap.parse_args()
    os.environ[config.PROFILE_ENV] = args.profile
    config.set_threads()
    splits = load_data(args.data, args.profile)
    folder = config.runs_dir() / args.profile / (args.model or DATA[args.data][1])
    if not splits["train"]:
        print(f"{args.data}: the corpus is absent: nothing to measure.")
        return
    if not (folder / "speechlm.json").is_file():
        sys.exit(f"{folder}: no saved model (benchmarks/bench_real_speech.py or notebook 03 makes it)")
    dev, test = splits["dev"][:args.dev_limit], splits["test"][:args.test_limit]
    cfg = RescoreConfig(examples=rescore_examples(splits["train"])).override(args.set)
    model = load_speechlm(folder).eval()
    metrics = {"dev_utterances": len(dev), "test_utterances": len(test), "beam": cfg.beam, "top_k": cfg.top_k,
               "cpu_threads": torch.get_num_threads(), "model": folder.name, "data": args.data}
    weights, figures = tune(model, dev, cfg)
    metrics.update(figures)
    metrics.update(score_test(model, test, replace(cfg, **weights), args.data))
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    record_as = args.record_as or ("real_speech_rescore" if args.data == "speechocean" else f"{args.data}_rescore")
    results.record(record_as, metrics, command=command, profile_name=args.profile, replace=True)


def score_test(model, test, cfg: RescoreConfig, test_set: str) -> dict:
    """Whisper, the projector, the speech-LLM and the rescored n-best on `test`, in one run: their figures."""
    whisper = evaluate(SYSTEMS.build("whisper", source=whisper_of(model), language="en"), test, test_set)
    metrics = {"whisper_wer": whisper.summary["wer"], "whisper_wer_low": whisper.ci[0],
               "whisper_wer_high": whisper.ci[1], "whisper_rtf": whisper.summary["rtf"]}
    evs = {}
    for name, kw in (("projector", {}), ("speechlm", {}), ("rescored", {"rescore": cfg})):
        evs[name], f = against_whisper(SYSTEMS.build(name, model=model, **kw), test, whisper, test_set)
        metrics.update({f"{name}_{k}": v for k, v in f.items()})
        print(f"{name:<10} WER {f['wer']:.3f} [{f['wer_low']:.3f}, {f['wer_high']:.3f}]  x Whisper "
              f"{f['to_whisper']:.2f} [{f['to_whisper_low']:.2f}, {f['to_whisper_high']:.2f}]  RTF {f['rtf']:.3f}",
              flush=True)
    for name in ("projector", "speechlm"):
        paired = paired_bootstrap(evs[name].records, evs["rescored"].records)
        metrics.update({f"rescored_to_{name}{k[5:]}": paired[k] for k in ("ratio", "ratio_low", "ratio_high")})
        print(f"rescored / {name} {paired['ratio']:.3f} [{paired['ratio_low']:.3f}, {paired['ratio_high']:.3f}]")
    metrics["targets_met"] = {"wer<=1.0x_whisper": metrics["rescored_to_whisper"] <= 1.0}
    return metrics


if __name__ == "__main__":
    main()
