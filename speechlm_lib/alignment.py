"""Stage 2 end to end: build the speech-LLM, cache encoder states, train the projector, score WER.

The notebook and the benchmark call these; each is a few lines on top of
`SpeechLM`, `SpeechLMDataset`, `FeatureCache`, `Trainer` and `transcribe`::

    cfg = Stage2Config.preset(profile())
    splits = load_splits(cfg)
    model = build_speechlm(cfg.model, texts=[u.text for u in splits["train"]])
    train_ds = make_dataset(model, splits["train"], cfg)
    if cfg.pretrain:  # the "ctc" projector: cheap CTC pre-alignment first
        pretrain_ctc(cfg, model, train_ds)
    result = train_projector(cfg, model, train_ds, dev=splits["dev"])
    scores = evaluate_wer(model, splits["test"], cfg.decode)
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from .ctc_projector import CTCAlignment, ctc_vocabulary
from .encoders import ENCODERS
from .feature_cache import FeatureCache
from .generation import DecodeConfig, transcribe
from .projectors import PROJECTORS
from .prompting import PromptBuilder, example_sets, pick_examples
from .records import Report, Utterance, read_manifest
from .speechlm import SpeechLM, load_llm
from .speechlm_config import ModelConfig, Stage2Config
from .speechlm_data import SpeechLMDataset, make_loader
from .text import cer, wer
from .train_utils import resolve_dtype
from .trainer import Callback, Trainer


def build_speechlm(cfg: ModelConfig, encoder=None, llm=None, tokenizer=None,
                   texts: Sequence[str] | None = None) -> SpeechLM:
    """A `SpeechLM` from a `ModelConfig`; pass already loaded parts to share them between runs.

    A projector that emits LLM tokens (``ctc``) gets its ``vocab_ids`` from `texts`
    (the training transcripts) unless `cfg.projector_kwargs` already lists them; with
    ``cfg.prompt_examples`` the prompt's demonstrations are picked from `texts` too.
    The result lives on the LLM's device.
    """
    if encoder is None:
        encoder = ENCODERS.build(cfg.encoder, source=cfg.encoder_source, **cfg.encoder_options)
    if llm is None:
        llm, tokenizer = load_llm(cfg.llm, dtype=resolve_dtype(cfg.llm_dtype))
    kwargs = dict(cfg.projector_kwargs)
    if getattr(PROJECTORS.get(cfg.projector), "needs_vocabulary", False) and "vocab_ids" not in kwargs:
        if not texts:
            raise ValueError(f"projector {cfg.projector!r} needs the training texts (texts=...) for its vocabulary")
        kwargs["vocab_ids"] = ctc_vocabulary(PromptBuilder(tokenizer, cfg.prompt), texts)
    prompt = cfg.prompt
    if cfg.prompt_examples and not prompt.examples:
        if not texts:
            raise ValueError(f"prompt_examples={cfg.prompt_examples} needs the training texts (texts=...)")
        prompt = replace(prompt, examples=pick_examples(texts, cfg.prompt_examples))
    model = SpeechLM(encoder, llm, tokenizer, projector=cfg.projector, stride=cfg.stride,
                     projector_kwargs=kwargs, prompt=prompt, freeze_encoder=cfg.freeze_encoder,
                     freeze_llm=cfg.freeze_llm, llm_source=cfg.llm)
    return model.to(llm.device)  # where the LLM is (`train_utils.default_device()` places it)


def load_splits(cfg: Stage2Config, report: Report | None = None) -> dict[str, list[Utterance]]:
    """train / dev / test utterances of the synthetic corpus (built if missing), cut to the limits."""
    from .corpus import ensure_corpus

    manifests = ensure_corpus(cfg.corpus_profile)
    limits = {"train": cfg.data.train_limit, "dev": cfg.data.dev_limit, "test": cfg.data.test_limit}
    return {split: read_manifest(manifests[split], report)[: limits.get(split)] for split in ("train", "dev", "test")}


def make_cache(model: SpeechLM, root: str | Path | None = None) -> FeatureCache:
    """The feature cache for `model`'s encoder (keyed by its settings)."""
    return FeatureCache.for_encoder(model.encoder, root=root)


def make_dataset(model: SpeechLM, utts: list[Utterance], cfg: Stage2Config, cache: FeatureCache | None = None,
                 report: Report | None = None, progress: bool = True, **kw) -> SpeechLMDataset:
    """A dataset over `utts`; with ``cfg.data.use_cache`` the cache is filled first (batched)."""
    report = report if report is not None else Report()
    if cfg.data.use_cache:
        cache, filled = cache or make_cache(model), Report()
        utts = cache.fill(utts, model.encoder, batch_size=16, report=filled, progress=progress)
        report.skipped += filled.skipped  # unreadable audio; the dataset counts what it keeps
    return SpeechLMDataset(utts, model.encoder, model.prompts, cache=cache if cfg.data.use_cache else None,
                           report=report, **kw)


def choose_examples(cfg: Stage2Config, model: SpeechLM, texts: Sequence[str], dev: list[Utterance],
                    cache: FeatureCache | None = None) -> list[dict]:
    """Try ``cfg.model.prompt_example_sets`` demonstration sets (`prompting.example_sets` over the
    training `texts`) on `dev` and keep the one with the lowest WER in the model's prompt.

    Which transcripts the frozen LLM is shown changes how faithfully it copies the projector's
    tokens; the choice belongs to dev, like any setting. Returns ``[{"examples", "wer", "seconds"}, ...]``
    per set tried, in order (nothing tried with fewer than two sets or no `dev`)."""
    sets = example_sets(texts, cfg.model.prompt_examples, cfg.model.prompt_example_sets)
    if len(sets) < 2 or not dev:
        return []
    tried = []
    for examples in sets:
        model.prompts.set_examples(examples)
        scores = evaluate_wer(model, dev, cfg.decode, cache=cache)
        tried.append({"examples": examples, "wer": scores["wer"], "seconds": scores["seconds"]})
    model.prompts.set_examples(min(tried, key=lambda t: t["wer"])["examples"])
    return tried


@torch.no_grad()
def evaluate_wer(model: SpeechLM, utts: list[Utterance], decode: DecodeConfig | None = None,
                 cache: FeatureCache | None = None, progress: bool = False) -> dict:
    """Greedy/beam transcripts of `utts` scored against their texts.

    Returns ``{"wer", "cer", "rtf", "seconds", "truncated", "refs", "hyps"}``.
    """
    out = transcribe(model, utts, decode, cache=cache, progress=progress)
    refs = [u.text for u in utts]
    return {"wer": wer(refs, out.texts), "cer": cer(refs, out.texts), "rtf": out.rtf, "seconds": out.seconds,
            "truncated": out.truncated, "refs": refs, "hyps": out.texts}


@torch.no_grad()
def dev_loss(model: SpeechLM, dataset: SpeechLMDataset, batch_size: int = 8) -> float:
    """Mean teacher-forced answer-token loss over `dataset`."""
    device = next(model.projector.parameters()).device
    total, count = 0.0, 0
    for batch in make_loader(dataset, batch_size=batch_size, shuffle=False):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        out = model(**batch)
        total += float(out["loss"]) * out["n_tokens"]
        count += out["n_tokens"]
    return total / max(1, count)


def make_evaluator(dev: list[Utterance], cfg: Stage2Config, cache: FeatureCache | None = None,
                   dev_dataset: SpeechLMDataset | None = None):
    """``evaluate(model) -> {"wer", "cer", "dev_loss"}`` for the trainer (dev WER by greedy decoding)."""
    def evaluate(model):
        scores = evaluate_wer(model, dev, cfg.decode, cache=cache)
        metrics = {"wer": scores["wer"], "cer": scores["cer"]}
        if dev_dataset is not None:
            metrics["dev_loss"] = dev_loss(model, dev_dataset, cfg.data.batch_size)
        return metrics

    return evaluate


def train_projector(cfg: Stage2Config, model: SpeechLM, train_ds: SpeechLMDataset,
                    dev: list[Utterance] | None = None, callbacks: Sequence[Callback] = (),
                    cache: FeatureCache | None = None, output_dir: str | Path | None = None) -> dict:
    """Train the trainable parts (the projector by default) with the shared `Trainer`.

    Returns the trainer's result dict (history, eval, final, seconds) plus
    ``train_seconds`` / ``eval_seconds`` (time spent training vs scoring dev WER) and
    ``samples_per_second`` (training only); the model is saved to `output_dir` if given.
    With `dev` and ``cfg.keep_best``, dev WER is also scored before the first update (step 0
    in ``eval``) and the model ends with the weights of the best evaluation (``best``):
    LLM-loss updates that make dev WER worse are undone.
    """
    loader = make_loader(train_ds, batch_size=cfg.data.batch_size, max_batch_seconds=cfg.data.max_batch_seconds,
                         seed=cfg.train.seed, num_workers=cfg.data.num_workers)
    evaluate, eval_seconds = None, [0.0]
    if dev:
        dev_ds = SpeechLMDataset(dev, model.encoder, model.prompts, cache=cache)
        scorer = make_evaluator(dev, cfg, cache=cache, dev_dataset=dev_ds)

        def evaluate(m):  # timed, so training throughput excludes evaluation
            t = time.perf_counter()
            out = scorer(m)
            eval_seconds[0] += time.perf_counter() - t
            return out

    best = None
    if evaluate is not None and cfg.keep_best:
        best = BestWeights(model, start=_evaluate_now(model, evaluate))
        callbacks = [*callbacks, best]
    trainer = Trainer(cfg.train, model, loader, evaluate=evaluate, callbacks=callbacks)
    result = trainer.run()
    if best is not None:
        result["eval"] = [{"step": 0, **best.start}, *result["eval"]]
        result["best"] = best.restore()
    result["eval_seconds"] = eval_seconds[0]
    result["train_seconds"] = result["seconds"] - eval_seconds[0]
    samples = result["final"]["step"] * cfg.data.batch_size * cfg.train.grad_accum
    result["samples_per_second"] = samples / max(result["train_seconds"], 1e-9)
    if output_dir is not None:
        trainer.model.save_pretrained(output_dir)
    return result


class BestWeights(Callback):
    """Copies the trainable weights whenever the dev `key` (lower is better) beats the best so far;
    `restore()` puts the best copy back. `start`: the metrics before training (step 0). Callbacks run
    on the main process only, so in a multi-process run only its model (the one saved) is restored."""

    def __init__(self, model: torch.nn.Module, start: dict, key: str = "wer"):
        self.model, self.key, self.start = model, key, start
        self.best, self.step, self.weights = start[key], 0, self._copy()

    def _copy(self) -> dict:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def on_eval(self, trainer, step: int, metrics: dict) -> None:
        if metrics.get(self.key, float("inf")) < self.best:
            self.best, self.step, self.weights = metrics[self.key], step, self._copy()

    @torch.no_grad()
    def restore(self) -> dict:
        """Load the best weights; returns ``{"step", key}`` of that evaluation."""
        params = dict(self.model.named_parameters())
        for name, value in self.weights.items():
            params[name].copy_(value)
        return {"step": self.step, self.key: self.best}


@torch.no_grad()
def _evaluate_now(model, evaluate) -> dict:
    was_training = model.training
    model.eval()
    metrics = dict(evaluate(model))
    model.train(was_training)
    return metrics


def pretrain_ctc(cfg: Stage2Config, model: SpeechLM, train_ds: SpeechLMDataset,
                 dev_ds: SpeechLMDataset | None = None, callbacks: Sequence[Callback] = ()) -> dict:
    """CTC pre-alignment of a ``ctc`` projector (`ctc_projector`): no LLM runs, so an update
    is cheap. ``cfg.pretrain`` sets the steps, ``cfg.data.pretrain_batch_size`` the batch;
    at evaluations, the dev WER of the projector's own best path. Returns the trainer's result."""
    objective = CTCAlignment(model)
    loader = make_loader(train_ds, batch_size=cfg.data.pretrain_batch_size, seed=cfg.train.seed,
                         num_workers=cfg.data.num_workers)
    evaluate = (lambda m: {"wer": ctc_wer(m, dev_ds)["wer"]}) if dev_ds is not None else None
    return Trainer(cfg.pretrain, objective, loader, evaluate=evaluate, callbacks=callbacks).run()


@torch.no_grad()
def ctc_wer(objective: CTCAlignment, dataset: SpeechLMDataset, batch_size: int = 32) -> dict:
    """The ``ctc`` projector alone as a recogniser: best-path transcripts of `dataset` and their WER.

    Returns ``{"wer", "cer", "refs", "hyps", "ids"}`` (in the loader's duration-bucketed order).
    """
    device = objective.lookup.device
    refs, hyps, ids = [], [], []
    for batch in make_loader(dataset, batch_size=batch_size, shuffle=False):
        if "states" in batch:
            states, lengths = batch["states"].to(device), batch["state_lengths"].to(device)
        else:
            states, lengths = objective.speechlm.encode(batch["features"].to(device),
                                                        batch["feature_lengths"].to(device))
        hyps += [objective.speechlm.prompts.decode(row) for row in objective.greedy(states, lengths)]
        refs += batch["meta"]["text"]
        ids += batch["meta"]["id"]
    return {"wer": wer(refs, hyps), "cer": cer(refs, hyps), "refs": refs, "hyps": hyps, "ids": ids}


def emergence(evals: list[dict], key: str = "wer") -> dict:
    """Where the dev metric fell most between two checkpoints (SLAM-ASR's "capability emergence").

    Returns ``{"first", "last", "best", "largest_drop", "drop_at_step"}``; a large drop
    between late checkpoints after a long plateau is emergence, a steady slope is not.
    """
    points = [(e["step"], e[key]) for e in evals if key in e]
    if len(points) < 2:
        return {"first": points[0][1] if points else None, "last": points[-1][1] if points else None,
                "best": min((v for _, v in points), default=None), "largest_drop": 0.0, "drop_at_step": None}
    drops = [(a[1] - b[1], b[0]) for a, b in zip(points, points[1:])]
    drop, at = max(drops)
    return {"first": points[0][1], "last": points[-1][1], "best": min(v for _, v in points),
            "largest_drop": drop, "drop_at_step": at}


def comparison_variants(cfg: Stage2Config, stage1_dir: str | Path | None = None) -> dict[str, dict]:
    """Notebook 02's comparisons (name -> ModelConfig changes): the preset's ``ctc`` projector on
    Whisper at each of ``cfg.compare_strides``, on Whisper's stock 30-s states, on the stage-1
    Conformer in `stage1_dir` (when that folder exists), and plain SLAM-ASR (``linear``, LLM loss) last."""
    ctc, k = {"projector": "ctc", "projector_kwargs": cfg.model.projector_kwargs}, cfg.model.stride
    variants = {f"ctc, whisper k={s}": {**ctc, "stride": s} for s in cfg.compare_strides}
    variants[f"ctc, whisper k={k}, 30-s padded states"] = {**ctc, "stride": k,
                                                           "encoder_options": {"pad_to_30s": True}}
    if stage1_dir is not None and Path(stage1_dir).is_dir():
        variants["ctc, conformer k=2"] = {**ctc, "encoder": "conformer", "encoder_source": str(stage1_dir),
                                          "stride": 2}
    variants[f"plain SLAM-ASR: linear, LLM loss, whisper k={k}"] = {
        "projector": "linear", "projector_kwargs": {"hidden": 1024}, "stride": k}
    return variants


def compare(cfg: Stage2Config, variants: dict[str, dict], splits: dict[str, list[Utterance]], llm, tokenizer,
            whisper=None, progress: bool = False) -> list[dict]:
    """Small runs that differ only in model fields (`variants`: name -> ModelConfig changes).

    A variant with a ``ctc`` projector (and ``cfg.pretrain`` set) trains ``cfg.compare_ctc_steps``
    CTC pre-alignment updates on the first ``cfg.compare_ctc_utterances`` training utterances and
    is scored as the projector alone (best path, no LLM: cheap, so a few minutes give a WER that
    ranks encoders and stacking rates). Any other projector trains ``cfg.compare_steps`` LLM-loss
    updates (on the first ``steps x batch`` utterances) and is scored through the frozen LLM.
    Each row: ``run``, ``objective`` ("ctc" / "llm"), the dev WER and CER of its last weights, final
    training loss, audio tokens a second, seconds a step and trainable parameters. The LLM (and a
    loaded Whisper) is shared; features are cached, one cache per encoder setting.
    """
    rows = []
    for name, changes in variants.items():
        run_cfg = replace(cfg.with_model(**changes), keep_best=False)  # a row reports its last weights
        encoder = None
        if run_cfg.model.encoder == "whisper" and whisper is not None:
            encoder = ENCODERS.build("whisper", source=run_cfg.model.encoder_source, model=whisper,
                                     **run_cfg.model.encoder_options)
        torch.manual_seed(run_cfg.train.seed)
        model = build_speechlm(run_cfg.model, encoder=encoder, llm=llm, tokenizer=tokenizer,
                               texts=[u.text for u in splits["train"]])
        ctc = run_cfg.model.projector == "ctc" and run_cfg.pretrain is not None
        run = _compare_ctc if ctc else _compare_llm
        rows.append({"run": name, "objective": "ctc" if ctc else "llm", "tokens_per_second": model.token_rate,
                     "trainable": model.parameter_counts()["all"]["trainable"],
                     **run(run_cfg, model, splits, make_cache(model), progress)})
    return rows


def _compare_llm(cfg: Stage2Config, model: SpeechLM, splits: dict, cache: FeatureCache, progress: bool) -> dict:
    steps = cfg.compare_steps
    cfg = replace(cfg, train=replace(cfg.train, max_steps=steps, eval_every=0, progress=progress,
                                     warmup_steps=min(cfg.train.warmup_steps, steps // 4)))
    train_ds = make_dataset(model, splits["train"][:steps * cfg.data.batch_size], cfg, cache=cache,
                            progress=progress)
    dev = cache.fill(splits["dev"], model.encoder, progress=False)
    result = train_projector(cfg, model, train_ds, dev=dev, cache=cache)
    final = result["final"]
    return {"dev_wer": final.get("wer"), "dev_cer": final.get("cer"), "train_loss": final["train_loss"],
            "seconds_per_step": result["train_seconds"] / max(1, final["step"])}


def _compare_ctc(cfg: Stage2Config, model: SpeechLM, splits: dict, cache: FeatureCache, progress: bool) -> dict:
    steps = cfg.compare_ctc_steps
    cfg = replace(cfg, pretrain=replace(cfg.pretrain, max_steps=steps, eval_every=0, progress=progress,
                                        warmup_steps=min(cfg.pretrain.warmup_steps, steps // 4)))
    train_ds = make_dataset(model, splits["train"][:cfg.compare_ctc_utterances], cfg, cache=cache,
                            progress=progress)
    dev_ds = make_dataset(model, splits["dev"], cfg, cache=cache, progress=False)
    result = pretrain_ctc(cfg, model, train_ds)
    scores = ctc_wer(CTCAlignment(model), dev_ds)
    return {"dev_wer": scores["wer"], "dev_cer": scores["cer"], "train_loss": result["final"]["train_loss"],
            "seconds_per_step": result["seconds"] / max(1, result["final"]["step"])}
