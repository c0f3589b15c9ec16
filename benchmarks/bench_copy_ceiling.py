"""The copy ceiling of the frozen LLM: WER when the audio tokens are the transcript's own embeddings.

    .venv/bin/python benchmarks/bench_copy_ceiling.py                 # 'cpu' profile, 100 test texts
    .venv/bin/python benchmarks/bench_copy_ceiling.py --shots 0 5 --utts 20

No audio and no training: for each number of demonstrations (`PromptConfig.examples`,
picked from the training transcripts as `build_speechlm` picks them) the stage-2
prompt is built around the perfect "audio" (the test transcript's tokens) and the
frozen LLM decodes greedily. No projector can do better than this against the same
prompt and LLM. Recorded as stage ``stage2_copy_ceiling`` in runs/<profile>/results.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from speechlm_lib import config, results
from speechlm_lib.data.records import read_manifest
from speechlm_lib.experiments.copy_ceiling import copy_ceiling
from speechlm_lib.models.prompting import pick_examples
from speechlm_lib.models.speechlm import load_llm
from speechlm_lib.recipes.stage2_align import Stage2Config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 1, 3, 5], help="demonstration counts to try")
    ap.add_argument("--utts", type=int, default=100, help="test transcripts to copy")
    args = ap.parse_args()
    config.set_threads()  # $SPEECHLM_THREADS, $OMP_NUM_THREADS or the physical cores
    cfg = Stage2Config.preset(args.profile)
    from speechlm_lib.data.corpus import ensure_corpus

    manifests = ensure_corpus(args.profile)
    train = [u.text for u in read_manifest(manifests["train"])[: cfg.data.train_limit]]
    test = [u.text for u in read_manifest(manifests["test"])[: args.utts]]
    llm, tok = load_llm(cfg.model.llm)
    metrics, t0 = {"utterances": len(test), "llm": cfg.model.llm}, time.time()
    for n in args.shots:
        prompt = replace(cfg.model.prompt, examples=pick_examples(train, n))
        t = time.time()
        out = copy_ceiling(llm, tok, prompt, test, batch_size=cfg.decode.batch_size, progress=True)
        metrics[f"wer_{n}_shots"], metrics[f"cer_{n}_shots"] = out["wer"], out["cer"]
        bad = [(r, h) for r, h in zip(out["refs"], out["hyps"]) if r.strip() != h.strip()]
        print(f"{n} demonstrations: WER {out['wer']:.3f} CER {out['cer']:.3f} ({time.time() - t:.0f} s); "
              f"{len(bad)} of {len(test)} not copied exactly")
        for r, h in bad[:3]:
            print(f"    REF {r}\n    HYP {h}")
    results.record("stage2_copy_ceiling", metrics, command=" ".join([Path(sys.executable).name] + sys.argv),
                   seconds=time.time() - t0, profile_name=args.profile)


if __name__ == "__main__":
    main()
