"""Whisper tiny.en against Whisper base (multilingual) as complete recognisers, English and German.

    SPEECHLM_RUNS=$PWD/runs OMP_NUM_THREADS=1 python benchmarks/bench_whisper_base.py --profile smoke \\
        --data /work/main/data/synth/smoke

For each model, each language's utterances (``test.jsonl``; German: ``test_de.jsonl``, then
``dev_de.jsonl`` and ``train_de.jsonl`` until ``--de`` utterances -- Whisper never trained on
them) and each encoder convention (``padded``: the stock 30-s input; ``unpadded``: the
`WhisperSpeechEncoder` states the speech-LLM uses), it reports WER, CER and the real-time factor
(decoding seconds / audio seconds, after one warm-up clip). Base is told the language
(``<|en|>`` / ``<|de|>``); tiny.en is English-only, so on German it writes its English best guess.
Base also translates the German clips into English (Whisper's ``translate`` task), scored with
BLEU and chrF against the manifests' English originals. ``runaways`` counts transcripts caught in
a repetition loop (cut at ``--max-new-tokens``), which dominate a WER over 1. For training time,
``<model>_encoder_rtf_{unpadded,30s}`` times the encoder alone (batches of 8, English clips): what a
speech-LLM on this encoder pays per audio second in an uncached step or the feature-cache fill. Records stage ``whisper_base_bench``
in ``runs/<profile>/results.json``, with the CPU, the thread count and a reference matmul time.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from speechlm_lib import results
from speechlm_lib.config import data_dir
from speechlm_lib.data.audio import load_audio
from speechlm_lib.data.records import read_manifest
from speechlm_lib.decoding.whisper import whisper_transcribe
from speechlm_lib.metrics import bleu, cer, chrf, wer
from speechlm_lib.models.sources import load_whisper
from speechlm_lib.training.utils import cpu_name

MODELS = {"tiny_en": "openai/whisper-tiny.en", "base": "openai/whisper-base"}


def load_set(folder: Path, manifests: list[str], limit: int) -> tuple[list, list[torch.Tensor]]:
    """Up to `limit` utterances from `manifests` in order, with their waves."""
    utts = [u for m in manifests if (folder / m).is_file() for u in read_manifest(folder / m)][:limit]
    if not utts:
        raise FileNotFoundError(f"{folder}: none of {manifests} holds utterances (build the corpus first)")
    return utts, [load_audio(u.audio) for u in utts]


def score_model(key: str, model, processor, sets: dict, conventions: list[str], max_new_tokens: int) -> dict:
    """WER / CER / RTF per language and convention (+ German->English translation for a multilingual model)."""
    multilingual = bool(getattr(model.generation_config, "is_multilingual", False))
    whisper_transcribe(model, processor, sets["en"][1][:1], max_new_tokens=8)  # warm-up
    out = {}
    for lang, (utts, waves) in sets.items():
        audio_s = sum(w.shape[-1] for w in waves) / 16000
        language = lang if multilingual else None
        for conv in conventions:
            hyps, secs = whisper_transcribe(model, processor, waves, padded=conv == "padded", language=language,
                                            max_new_tokens=max_new_tokens, progress=True)
            tag, refs = f"{key}_{lang}_{conv}", [u.text for u in utts]
            out |= {f"{tag}_wer": wer(refs, hyps), f"{tag}_cer": cer(refs, hyps), f"{tag}_rtf": secs / audio_s,
                    f"{tag}_runaways": runaways(refs, hyps)}
            print(f"{tag}: WER {out[f'{tag}_wer']:.3f} RTF {out[f'{tag}_rtf']:.3f} runaways "
                  f"{out[f'{tag}_runaways']}; e.g. {hyps[0]!r}")
        if lang == "de" and multilingual:
            hyps, secs = whisper_transcribe(model, processor, waves, language="de", task="translate",
                                            max_new_tokens=max_new_tokens)
            refs = [u.translation or "" for u in utts]
            out |= {f"{key}_ast_de_en_bleu": bleu(refs, hyps), f"{key}_ast_de_en_chrf": chrf(refs, hyps),
                    f"{key}_ast_de_en_rtf": secs / audio_s}
            print(f"{key} de->en: BLEU {out[f'{key}_ast_de_en_bleu']:.1f}; e.g. {hyps[0]!r}")
    return out


def runaways(refs: list[str], hyps: list[str]) -> int:
    """Hypotheses over twice their reference's words + 5: a decoder caught in a loop (capped by max_new_tokens)."""
    return sum(len(h.split()) > 2 * len(r.split()) + 5 for r, h in zip(refs, hyps))


@torch.no_grad()
def encoder_rtf(model, waves: list[torch.Tensor], batch_size: int = 8) -> dict:
    """Seconds of the encoder alone per audio second, unpadded and stock 30-s: what an uncached training
    step (or the feature-cache fill) pays for the encoder of a speech-LLM built on this Whisper."""
    from speechlm_lib.models.encoders import WhisperSpeechEncoder

    audio_s, out = sum(w.shape[-1] for w in waves) / 16000, {}
    for name, pad in (("unpadded", False), ("30s", True)):
        enc = WhisperSpeechEncoder(model.get_encoder(), reference="bench", pad_to_30s=pad)
        enc(*enc.collate([enc.featurize(waves[0])]))  # warm-up
        t = time.perf_counter()
        for i in range(0, len(waves), batch_size):
            enc(*enc.collate([enc.featurize(w) for w in waves[i:i + batch_size]]))
        out[name] = (time.perf_counter() - t) / audio_s
    return out


def reference_matmul_ms() -> float:
    """Milliseconds of one fp32 (392, 576) x (576, 1536) product, best of 5 rounds of 20: the machine's speed."""
    a, b = torch.randn(392, 576), torch.randn(576, 1536)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(20):
            a @ b
        best = min(best, (time.perf_counter() - t) / 20 * 1e3)
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="smoke")
    p.add_argument("--data", default=None, help="the corpus folder (default: <data>/synth/<profile>)")
    p.add_argument("--en", type=int, default=40, help="English utterances")
    p.add_argument("--de", type=int, default=20, help="German utterances")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--conventions", nargs="+", default=["padded", "unpadded"], choices=["padded", "unpadded"])
    p.add_argument("--max-new-tokens", type=int, default=96, help="cap a transcript (a runaway loop costs this)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = Path(args.data) if args.data else data_dir() / "synth" / args.profile
    sets = {"en": load_set(folder, ["test.jsonl"], args.en),
            "de": load_set(folder, ["test_de.jsonl", "dev_de.jsonl", "train_de.jsonl"], args.de)}
    t0 = time.time()
    metrics = {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "load_avg_start": os.getloadavg()[0],
               "reference_matmul_ms_fp32": reference_matmul_ms(), "max_new_tokens": args.max_new_tokens,
               **{f"{lang}_utterances": len(s[0]) for lang, s in sets.items()},
               **{f"{lang}_audio_seconds": sum(w.shape[-1] for w in s[1]) / 16000 for lang, s in sets.items()}}
    for key in args.models:
        t = time.perf_counter()
        model, processor = load_whisper(MODELS[key])
        metrics |= {f"{key}_load_seconds": time.perf_counter() - t,
                    f"{key}_parameters": sum(q.numel() for q in model.parameters())}
        metrics |= {f"{key}_encoder_rtf_{k}": v for k, v in encoder_rtf(model, sets["en"][1]).items()}
        metrics |= score_model(key, model, processor, sets, args.conventions, args.max_new_tokens)
        del model
    metrics["load_avg_end"] = os.getloadavg()[0]
    for k, v in metrics.items():
        print(f"{k:>32}: {v:.4g}" if isinstance(v, float) else f"{k:>32}: {v}")
    if not args.no_record:
        results.record("whisper_base_bench", metrics, command="python " + shlex.join(sys.argv),
                       seconds=time.time() - t0, profile_name=args.profile, replace=True)
    return metrics


if __name__ == "__main__":
    main()
