"""Benchmark stage 2: train the projector (frozen Whisper tiny.en + frozen SmolLM2), decode, compare.

    .venv/bin/python benchmarks/bench_speechlm.py                  # the 'cpu' profile (targets below)
    .venv/bin/python benchmarks/bench_speechlm.py --profile smoke  # plumbing check, ~1 minute
    python benchmarks/bench_speechlm.py --profile gpu --set model.encoder_source=openai/whisper-tiny.en \
        --set model.llm=HuggingFaceTB/SmolLM2-135M-Instruct      # a GPU without the hub (--set: any preset field)

Targets on the project's 2-core CPU (profile 'cpu'):
  * training (projector only: CTC pre-alignment + LLM-loss updates) takes <= 8 minutes
    and reaches WER <= 10 % on the test split (voices and names never seen in training);
    the CTC-pre-aligned projector alone (best path, no LLM) is scored on the same test set;
  * batched greedy decoding: real-time factor <= 0.05 with batch 8, <= 0.2 with batch 1
    (each the median of --rtf-repeats timings, 3 by default);
  * training samples/s with the feature cache and without it (encoder run every step,
    unpadded and stock 30-s padded);
  * peak memory (max RSS).

Also decodes the same test set with the complete Whisper tiny.en model (30-s padded
input, its own decoder) for a side-by-side WER. Everything is recorded with
``results.record("stage2_speechlm_bench", ...)`` (``--record-as`` names another entry, e.g. a
longer run); timings depend on what else runs.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from speechlm_lib import config, results
from speechlm_lib.data.audio import load_audio
from speechlm_lib.data.records import Report
from speechlm_lib.data.speechlm_dataset import SpeechLMDataset, make_loader
from speechlm_lib.data.text import normalize
from speechlm_lib.decoding.generation import DecodeConfig
from speechlm_lib.decoding.whisper import whisper_transcribe
from speechlm_lib.metrics import FREQUENCY_GROUPS, errors_by_frequency, wer, word_counts
from speechlm_lib.models.build import build_speechlm
from speechlm_lib.models.ctc_projector import CTCAlignment
from speechlm_lib.models.encoders import ENCODERS
from speechlm_lib.models.sources import load_whisper
from speechlm_lib.recipes.stage2_align import (
    Stage2Config,
    choose_examples,
    ctc_wer,
    evaluate_wer,
    load_splits,
    make_cache,
    pretrain_ctc,
    train_projector,
)
from speechlm_lib.training.trainer import TrainConfig, Trainer
from speechlm_lib.training.utils import default_device


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_matmul_ms(dtype) -> float:
    """Milliseconds of one (392, 576) x (576, 1536) product (the shape of the first decoding pass's MLP), the
    median of 5 rounds of 40: the machine's speed at the time, recorded beside the timings (this VM's speed
    drifts; on 2026-11-22 it measured 1.8 ms in bf16 in one session and 2.3 ms in the next)."""
    a, b = torch.randn(392, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(40):
            a @ b
        rounds.append((time.perf_counter() - t) / 40 * 1e3)
    return statistics.median(rounds)


def samples_per_second(model, dataset, cfg: Stage2Config, steps: int) -> float:
    """Training throughput over `steps` updates, after one untimed warm-up update (the same
    batches for every variant; the projector is restored afterwards)."""
    saved = copy.deepcopy(model.projector.state_dict())
    for n in (1, steps):
        loader = make_loader(dataset, batch_size=cfg.data.batch_size, seed=1)
        tc = TrainConfig(max_steps=n, lr=cfg.train.lr, warmup_steps=0, log_every=0, log_with=None, progress=False)
        out = Trainer(tc, model, loader).run()
        model.projector.load_state_dict(saved)
    return steps * cfg.data.batch_size / out["seconds"]


def decode_rtf(model, utts, batch_size: int, decode: DecodeConfig, repeats: int = 1) -> float:
    """Real-time factor of greedy decoding `utts` at `batch_size` (features computed, not cached):
    the median of `repeats` timings (this machine's timings vary by 10 % or more from run to run)."""
    cfg = DecodeConfig(**{**decode.__dict__, "batch_size": batch_size})
    return statistics.median(evaluate_wer(model, utts, cfg)["rtf"] for _ in range(repeats))


def setup(args, metrics: dict):
    """Config, the frozen models (Whisper shared by encoder and baseline), the speech-LLM and the splits."""
    cfg = Stage2Config.preset(args.profile)
    if args.steps:
        cfg.train.max_steps = args.steps
    if args.soft_tokens:
        cfg.model.projector_kwargs = {**cfg.model.projector_kwargs, "hard": False}
    cfg.corpus_profile = args.profile
    cfg = cfg.override(args.set)
    metrics.update(profile=args.profile, steps=cfg.train.max_steps, batch_size=cfg.data.batch_size,
                   stride=cfg.model.stride, projector=cfg.model.projector,
                   hard_tokens=bool(cfg.model.projector_kwargs.get("hard")), prompt_examples=cfg.model.prompt_examples,
                   encoder_source=cfg.model.encoder_source, llm=cfg.model.llm, device=str(default_device()),
                   settings=" ".join(args.set))
    splits = load_splits(cfg)
    t = time.time()
    whisper, processor = load_whisper(cfg.model.encoder_source)
    encoder = ENCODERS.build(cfg.model.encoder, source=cfg.model.encoder_source, model=whisper)
    model = build_speechlm(cfg.model, encoder=encoder, texts=[u.text for u in splits["train"]])
    whisper.to(default_device())  # the baseline runs where the speech-LLM does
    model.to(default_device())
    metrics["load_seconds"] = time.time() - t
    metrics["trainable_parameters"] = model.parameter_counts()["all"]["trainable"]
    print(f"loaded in {metrics['load_seconds']:.1f} s; " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return cfg, whisper, processor, model, splits


def bench_cache(cfg, model, splits, metrics: dict, steps: int):
    """Fill the cache; training samples/s cached vs uncached (unpadded and stock 30-s encoder)."""
    encoder, cache, report = model.encoder, make_cache(model), Report()
    t = time.time()
    train = cache.fill(splits["train"], encoder, batch_size=16, report=report)
    dev = cache.fill(splits["dev"], encoder, batch_size=16, report=report)
    metrics.update(cache_fill_seconds=time.time() - t, cache_mb=cache.size_bytes() / 2**20,
                   skipped_utterances=len(report.skipped))
    cached_ds = SpeechLMDataset(train, encoder, model.prompts, cache=cache)
    raw_ds = SpeechLMDataset(train, encoder, model.prompts)
    metrics["train_samples_per_s_cached"] = samples_per_second(model, cached_ds, cfg, steps)
    metrics["train_samples_per_s_uncached"] = samples_per_second(model, raw_ds, cfg, steps)
    encoder.pad_to_30s = True  # the stock 30-s encoder, uncached: what the cache saves a stock pipeline
    metrics["train_samples_per_s_uncached_30s"] = samples_per_second(model, raw_ds, cfg, steps)
    encoder.pad_to_30s = False
    print(f"cache filled in {metrics['cache_fill_seconds']:.1f} s; training samples/s: "
          f"{metrics['train_samples_per_s_cached']:.2f} cached, {metrics['train_samples_per_s_uncached']:.2f} "
          f"uncached (unpadded encoder), {metrics['train_samples_per_s_uncached_30s']:.2f} uncached (30-s encoder)")
    return cache, cached_ds, dev


def bench_pretrain(cfg, model, cached_ds, splits, dev, cache, metrics: dict) -> dict:
    """CTC pre-alignment of a ``ctc`` projector (if the preset has one), then the demonstrations chosen on
    dev; on test, the projector alone and the frozen LLM reading its tokens. Returns the projector's own
    transcripts by utterance id."""
    if not cfg.pretrain:
        metrics["pretrain_seconds"] = 0.0
        return {}
    result = pretrain_ctc(cfg, model, cached_ds)
    test = splits["test"]
    tried = choose_examples(cfg, model, [u.text for u in splits["train"]], dev, cache=cache)
    if tried:
        metrics.update(example_sets_dev_wer=" ".join(f"{t['wer']:.4f}" for t in tried),
                       example_set_chosen=min(range(len(tried)), key=lambda i: tried[i]["wer"]),
                       choose_examples_seconds=sum(t["seconds"] for t in tried))
        print(f"demonstration sets on dev: WER {metrics['example_sets_dev_wer']}, kept set "
              f"{metrics['example_set_chosen']} ({metrics['choose_examples_seconds']:.0f} s)")
    test_ds = SpeechLMDataset(cache.fill(test, model.encoder, progress=False), model.encoder, model.prompts,
                              cache=cache)
    scores = ctc_wer(CTCAlignment(model), test_ds)
    metrics.update(pretrain_steps=result["final"]["step"], pretrain_seconds=result["seconds"],
                   pretrain_batch_size=cfg.data.pretrain_batch_size, ctc_projector_test_wer=scores["wer"],
                   ctc_projector_test_cer=scores["cer"])
    zero = evaluate_wer(model, test, cfg.decode, cache=cache)  # the frozen LLM reads the pre-aligned tokens
    metrics.update(llm_zero_shot_test_wer=zero["wer"], llm_zero_shot_test_cer=zero["cer"])
    print(f"CTC pre-alignment: {result['final']['step']} updates in {result['seconds']:.0f} s; on test, the "
          f"projector alone: WER {scores['wer']:.3f} CER {scores['cer']:.3f}; through the frozen LLM before any "
          f"LLM-loss update: WER {zero['wer']:.3f} CER {zero['cer']:.3f}")
    return dict(zip(scores["ids"], scores["hyps"]))


def bench_train(cfg, model, cached_ds, dev, cache, metrics: dict) -> None:
    """Train the projector through the LLM with dev WER at checkpoints; time it without the evaluations."""
    result = train_projector(cfg, model, cached_ds, dev=dev, cache=cache,
                             output_dir=config.runs_dir() / cfg.corpus_profile / "stage2_bench")
    metrics.update(llm_train_seconds=result["train_seconds"],
                   train_seconds=metrics["pretrain_seconds"] + result["train_seconds"],
                   train_plus_eval_seconds=metrics["pretrain_seconds"] + result["seconds"],
                   train_samples_per_s=result["samples_per_second"],
                   seconds_per_step=result["train_seconds"] / max(1, result["final"]["step"]))
    metrics["checkpoints"] = [{k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()}
                              for e in result["eval"]]
    if "best" in result:  # keep_best: the dev-best weights are kept (step 0 = none of these updates)
        metrics.update(kept_step=result["best"]["step"], kept_dev_wer=result["best"]["wer"])
    print(f"trained {result['final']['step']} steps in {result['train_seconds']:.0f} s "
          f"(+ {result['eval_seconds']:.0f} s dev evaluation); checkpoints {metrics['checkpoints']}; "
          f"kept the weights of step {metrics.get('kept_step', result['final']['step'])}")


def bench_decode(cfg, model, test, metrics: dict, rtf_utts: int, repeats: int) -> dict:
    """Test WER / CER (greedy, batch from the preset) and RTF at batch 8 and 1 (the median of `repeats`
    timings; the one-pass-per-token comparison is timed once)."""
    scores = evaluate_wer(model, test, cfg.decode, progress=True)
    metrics.update(test_wer=scores["wer"], test_cer=scores["cer"], test_utterances=len(test),
                   truncated=scores["truncated"])
    metrics["rtf_batch8"] = decode_rtf(model, test[:rtf_utts], 8, cfg.decode, repeats)
    metrics["rtf_batch1"] = decode_rtf(model, test[:rtf_utts], 1, cfg.decode, repeats)
    metrics.update(rtf_utterances=len(test[:rtf_utts]), rtf_repeats=repeats)
    print(f"test WER {scores['wer']:.3f} CER {scores['cer']:.3f}; RTF batch 8 {metrics['rtf_batch8']:.3f}, "
          f"batch 1 {metrics['rtf_batch1']:.3f}")
    if cfg.decode.draft and cfg.decode.num_beams == 1:  # the same greedy decoding, one LLM pass a token
        plain = DecodeConfig(**{**cfg.decode.__dict__, "draft": False})
        metrics["rtf_batch8_no_draft"] = decode_rtf(model, test[:rtf_utts], 8, plain)
        metrics["rtf_batch1_no_draft"] = decode_rtf(model, test[:rtf_utts], 1, plain)
        print(f"without the projector's draft: RTF batch 8 {metrics['rtf_batch8_no_draft']:.3f}, "
              f"batch 1 {metrics['rtf_batch1_no_draft']:.3f}")
    return scores


def bench_whisper(whisper, processor, test, metrics: dict) -> list[str]:
    """The complete Whisper model (30-s padded input, its own decoder) on the same test set."""
    waves = [load_audio(u.audio) for u in test]
    hyps, seconds = whisper_transcribe(whisper, processor, waves, padded=True, batch_size=8, progress=True)
    metrics["whisper_test_wer"] = wer([u.text for u in test], hyps)
    metrics["whisper_rtf"] = seconds / sum(u.duration for u in test)
    print(f"Whisper (complete) WER {metrics['whisper_test_wer']:.3f}, RTF {metrics['whisper_rtf']:.3f}")
    return hyps


def by_seen_words(test, train, systems: dict, metrics: dict) -> None:
    """WER of each system (name -> hypotheses in test order) on the test utterances whose words
    all occur in the training transcripts, and on the rest (unseen names, mostly); and the share of
    test words each system misses by how often the word occurs in training (`text.errors_by_frequency`)."""
    seen = word_counts(u.text for u in train)  # word -> count in the training transcripts
    known = [all(w in seen for w in normalize(u.text).split()) for u in test]
    metrics["test_utterances_seen_words"] = sum(known)
    for name, hyps in systems.items():
        for tag, want in (("seen_words", True), ("unseen_words", False)):
            pick = [i for i, k in enumerate(known) if k == want]
            if pick:
                metrics[f"{name}_wer_{tag}"] = wer([test[i].text for i in pick], [hyps[i] for i in pick])
    print(f"{sum(known)} of {len(test)} test utterances have only words seen in training; WER there / elsewhere: "
          + "; ".join(f"{n} {metrics.get(f'{n}_wer_seen_words', float('nan')):.3f} / "
                      f"{metrics.get(f'{n}_wer_unseen_words', float('nan')):.3f}" for n in systems))
    for name, hyps in systems.items():
        split = errors_by_frequency([u.text for u in test], hyps, seen)
        metrics.update({f"{name}_word_error_{g}": split[g]["error"] for g in FREQUENCY_GROUPS})
        print(f"{name}: words missed, unseen / rare (< 10 in training) / common: "
              + " / ".join(f"{split[g]['error']:.1%}" for g in FREQUENCY_GROUPS)
              + f"; insertions {split['insertions']:.1%}")
    # the shares depend on the references only: the last system's split holds them
    metrics.update({f"test_words_share_{g}": split[g]["share"] for g in FREQUENCY_GROUPS})
    print("test words unseen / rare / common: " + " / ".join(f"{split[g]['share']:.1%}" for g in FREQUENCY_GROUPS))


def record(args, metrics: dict, seconds: float, first: bool = False) -> None:
    """Scalar metrics into results.json under ``--record-as``, with the command line. Called after
    each phase (``finished`` stays false until the end), so a run cut short keeps what it measured."""
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
    command = " ".join([Path(sys.executable).name] + [shlex.quote(a) for a in sys.argv])
    results.record(args.record_as, flat, command=command, seconds=seconds, profile_name=args.profile,
                   replace=first, config=getattr(args, "config_dict", None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=config.profile(), choices=config.PROFILES)
    ap.add_argument("--steps", type=int, default=None, help="override the preset's LLM-loss training steps")
    ap.add_argument("--record-as", default="stage2_speechlm_bench", help="stage name in results.json")
    ap.add_argument("--throughput-steps", type=int, default=8, help="updates per cache / no-cache timing")
    ap.add_argument("--throughput-only", action="store_true", help="only the cache / no-cache timings")
    ap.add_argument("--rtf-utts", type=int, default=48, help="test utterances for the RTF timings")
    ap.add_argument("--rtf-repeats", type=int, default=3, help="timings of each RTF target; the median is kept")
    ap.add_argument("--soft-tokens", action="store_true", help="ctc projector: posterior mixtures, not exact tokens")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change a preset setting, e.g. --set train.max_steps=500 --set model.llm=DIR_OR_HUB_ID")
    ap.add_argument("--out", type=Path, default=None, help="also write the metrics here as JSON")
    ap.add_argument("--save", type=Path, default=None, metavar="DIR",
                    help="save the trained speech-LLM there (stage 3 starts from runs/<profile>/stage2_speechlm)")
    args = ap.parse_args()
    config.set_threads()  # $SPEECHLM_THREADS, $OMP_NUM_THREADS or the physical cores
    metrics: dict = {"finished": False, "reference_matmul_ms_bf16": reference_matmul_ms(torch.bfloat16),
                     "reference_matmul_ms_fp32": reference_matmul_ms(torch.float32)}
    cfg, whisper, processor, model, splits = setup(args, metrics)
    args.config_dict = cfg.to_dict()  # the resolved config, beside the figures in results.json
    cache, cached_ds, dev = bench_cache(cfg, model, splits, metrics, args.throughput_steps)
    if args.throughput_only:
        metrics["finished"] = True
        return record(args, metrics, seconds=0.0, first=True)
    record(args, metrics, seconds=0.0, first=True)
    ctc_hyps = bench_pretrain(cfg, model, cached_ds, splits, dev, cache, metrics)
    record(args, metrics, seconds=metrics["pretrain_seconds"])
    bench_train(cfg, model, cached_ds, dev, cache, metrics)
    record(args, metrics, seconds=metrics["train_seconds"])
    if args.save:
        model.save_pretrained(args.save)
        cfg.save(args.save / "config.yaml")
    scores = bench_decode(cfg, model, splits["test"], metrics, args.rtf_utts, args.rtf_repeats)
    systems = {"speechlm": scores["hyps"], "whisper": bench_whisper(whisper, processor, splits["test"], metrics)}
    if ctc_hyps:
        systems["ctc_projector"] = [ctc_hyps.get(u.id, "") for u in splits["test"]]
    by_seen_words(splits["test"], splits["train"], systems, metrics)
    metrics["peak_rss_mb"] = peak_rss_mb()
    for r, h in list(zip(scores["refs"], scores["hyps"]))[:5]:
        print(f"  REF {r}\n  HYP {h}")
    metrics["targets_met"] = {"train_minutes<=8": metrics["train_seconds"] <= 480,
                              "wer<=0.10": metrics["test_wer"] <= 0.10,
                              "rtf_batch8<=0.05": metrics["rtf_batch8"] <= 0.05,
                              "rtf_batch1<=0.2": metrics["rtf_batch1"] <= 0.2}
    print(f"peak RSS {metrics['peak_rss_mb']:.0f} MB; targets {json.dumps(metrics['targets_met'])}")
    metrics["finished"] = True
    if args.out:
        args.out.write_text(json.dumps(metrics, indent=2))
    record(args, metrics, seconds=metrics["train_seconds"])


if __name__ == "__main__":
    main()
