"""The first-time cost of ``realign_speeds``: writing the speed-perturbed copies of speechocean762's train
utterances and encoding them with the frozen Whisper encoder, in temporary folders (so nothing cached counts).

    .venv/bin/python benchmarks/bench_speed_copies.py --profile cpu                  # tiny.en, 0.9 and 1.1, ~2 min
    .venv/bin/python benchmarks/bench_speed_copies.py --profile cpu --encoder base --record-as real_speech_speed_copies_base

Later runs read both from the cache folder, so `bench_real_speech.py` counts this cost only the first time.
Recorded as ``real_speech_speed_copies`` in runs/<profile>/results.json. Run it alone.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from speechlm_lib import config, results
from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.perturb import with_speeds
from speechlm_lib.experiments.real_speech import WHISPERS, load_real, start_model
from speechlm_lib.recipes.stage3_lora import Stage3Config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--speeds", type=float, nargs="+", default=[0.9, 1.1])
    ap.add_argument("--encoder", default="tiny.en", choices=sorted(WHISPERS))
    ap.add_argument("--limit", type=int, default=None, help="at most this many train utterances")
    ap.add_argument("--record-as", default="real_speech_speed_copies")
    args = ap.parse_args()
    os.environ[config.PROFILE_ENV] = args.profile
    config.set_threads()
    cfg = Stage3Config.preset("cpu-speechocean")
    train = load_real(cfg)["train"][:args.limit]
    if not train:
        print("speechocean762 is absent (../shared/data/speechocean762): nothing to measure.")
        return
    model = start_model("scratch", cfg, train, args.profile, encoder_source=WHISPERS[args.encoder])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        copies = with_speeds(train, tuple(args.speeds), out_dir=Path(tmp) / "speed")[len(train):]
        t1 = time.perf_counter()
        cache = FeatureCache.for_encoder(model.encoder, root=Path(tmp) / "features")
        cache.fill(copies, model.encoder, batch_size=16, progress=False)
        t2 = time.perf_counter()
    metrics = {"train_utterances": len(train), "copies": len(copies), "write_seconds": t1 - t0,
               "encode_seconds": t2 - t1, "seconds": t2 - t0, "encoder": args.encoder,
               "speeds": list(args.speeds)}
    print(f"{len(copies)} copies written in {t1 - t0:.1f} s, encoded in {t2 - t1:.1f} s", flush=True)
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    results.record(args.record_as, metrics, command=command, profile_name=args.profile, replace=True)


if __name__ == "__main__":
    main()
