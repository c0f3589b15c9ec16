"""Compare settings of the ``ctc`` projector on its own: CTC pre-alignment, then its best path on test (no LLM).

    .venv/bin/python benchmarks/bench_ctc_projector.py --profile cpu \
        --variant "context 0" "model.projector_kwargs={'hidden': 1024, 'hard': True}" --variant "context 2" \
        --seeds 0 1 2

Each ``--variant NAME [KEY=VALUE ...]`` trains a fresh projector with the preset changed by the
settings (`Stage2Config.override`; none = the preset itself) and scores
test WER / CER, and WER on the first 300 training utterances (how well it fits what it heard),
the share of test words it misses by how often they occur in training (unseen, rare, common),
averaged over ``--seeds`` (runs differ by a few WER points from the seed alone).
A variant takes 2-4 minutes on the 2-core CPU (no LLM runs). Recorded in results.json as
``stage2_ctc_projector`` with one metric group per variant.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from speechlm_lib import config, results
from speechlm_lib.data.speechlm_dataset import SpeechLMDataset
from speechlm_lib.metrics import FREQUENCY_GROUPS, errors_by_frequency, word_counts
from speechlm_lib.models.build import build_speechlm
from speechlm_lib.models.ctc_projector import CTCAlignment
from speechlm_lib.models.encoders import ENCODERS
from speechlm_lib.models.sources import load_whisper
from speechlm_lib.recipes.stage2_align import Stage2Config, ctc_wer, load_splits, make_cache, pretrain_ctc


def run_variant(profile: str, settings: list[str], whisper, llm_parts: dict, seed: int) -> dict:
    """Pre-align one projector from `seed` (its initial weights and batch order); its test and
    training-subset scores and the time taken."""
    torch.manual_seed(seed)
    cfg = Stage2Config.preset(profile)
    cfg.corpus_profile = profile
    cfg = cfg.override(settings)
    cfg.train.seed = cfg.pretrain.seed = seed
    cfg.pretrain.progress = False
    splits = load_splits(cfg)
    encoder = ENCODERS.build(cfg.model.encoder, source=cfg.model.encoder_source, model=whisper)
    model = build_speechlm(cfg.model, encoder=encoder, texts=[u.text for u in splits["train"]], **llm_parts)
    llm_parts.update(llm=model.llm, tokenizer=model.tokenizer)  # loaded once, shared by later variants
    cache = make_cache(model)
    train = SpeechLMDataset(cache.fill(splits["train"], encoder, progress=False), encoder, model.prompts, cache=cache)
    t = time.time()
    pretrain_ctc(cfg, model, train)
    seconds = time.time() - t
    objective = CTCAlignment(model)
    test = ctc_wer(objective, SpeechLMDataset(cache.fill(splits["test"], encoder, progress=False), encoder,
                                              model.prompts, cache=cache))
    seen = ctc_wer(objective, SpeechLMDataset(splits["train"][:300], encoder, model.prompts, cache=cache))
    split = errors_by_frequency(test["refs"], test["hyps"], word_counts(u.text for u in splits["train"]))
    return {"test_wer": test["wer"], "test_cer": test["cer"], "train_subset_wer": seen["wer"],
            **{f"test_word_error_{g}": split[g]["error"] for g in FREQUENCY_GROUPS},
            "pretrain_seconds": seconds, "parameters": model.projector.num_parameters()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed and variant")
    ap.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE]",
                    help="a name, then the preset settings it changes")
    ap.add_argument("--record-as", default="stage2_ctc_projector", help="stage name in results.json")
    args = ap.parse_args()
    config.set_threads()  # $SPEECHLM_THREADS, $OMP_NUM_THREADS or the physical cores
    whisper, _ = load_whisper(Stage2Config.preset(args.profile).model.encoder_source)
    llm_parts, metrics = {}, {}
    for name, *settings in args.variant:
        runs = [run_variant(args.profile, settings, whisper, llm_parts, seed) for seed in args.seeds]
        out = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        out["test_wer_by_seed"] = [round(r["test_wer"], 4) for r in runs]
        metrics[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
        print(f"{name}: test WER {out['test_wer']:.3f} (seeds {out['test_wer_by_seed']}) CER {out['test_cer']:.3f}; "
              f"WER on 300 training utterances {out['train_subset_wer']:.3f}; test words missed, unseen / rare / common "
              + " / ".join(f"{out[f'test_word_error_{g}']:.3f}" for g in FREQUENCY_GROUPS)
              + f"; {int(out['parameters']):,} parameters; "
              f"{out['pretrain_seconds']:.0f} s a run", flush=True)
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    results.record(args.record_as, metrics, command=command, profile_name=args.profile, replace=True)


if __name__ == "__main__":
    main()
