"""The stages ``speechlm train`` knows: a registry of name -> (config class, run function).

Each run function composes the stage's recipe functions, the ones the notebooks and the benchmarks
call, and writes one run folder::

    <run>/config.yaml     the resolved config (rerun it: speechlm train STAGE --config <run>/config.yaml)
    <run>/checkpoints/    the trainer's resumable checkpoints (--set train.resume=True continues the latest)
    <run>/model/          the trained model (stage 2: SpeechLM.save_pretrained; stage 1: the encoder)
    <run>/results.json    metrics, data and the command (what `speechlm export` puts in the model card)
    <run>/run.json        which stage wrote the folder

Adding a stage is one entry::

    STAGES.register("stage4")(Stage(Stage4Config, run_stage4, "keyword biasing"))

where ``run_stage4(cfg, run_dir, command) -> dict`` returns the summary (``line`` and ``metrics``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from speechlm_lib.cli.common import MODEL_DIR, CLIError, write_run
from speechlm_lib.config import StageConfig
from speechlm_lib.data.records import Report, write_manifest
from speechlm_lib.data.sources import describe, load_source
from speechlm_lib.decoding.list_snap import save_training_words
from speechlm_lib.recipes.stage1_ctc import CTCStageConfig
from speechlm_lib.recipes.stage2_align import Stage2Config
from speechlm_lib.recipes.stage3_lora import Stage3Config
from speechlm_lib.registry import Registry

STAGES = Registry("stage")


@dataclass(frozen=True)
class Stage:
    """A trainable stage: its config class (presets in configs/<config_name>/) and its run function."""

    config: type[StageConfig]  # the stage's config tree
    run: Callable[..., dict]  # run(cfg, run_dir: Path, command: str) -> {"line": str, "metrics": dict}
    about: str  # one line for --help


def stage(name: str) -> Stage:
    """The registered stage `name` (a `CLIError` listing the known ones otherwise)."""
    try:
        return STAGES.get(name)
    except KeyError as e:
        raise CLIError(e.args[0]) from None


# ----- shared steps ------------------------------------------------------------------------------
def _time() -> float:
    import time

    return time.perf_counter()


def replica_digests(model: torch.nn.Module, state) -> list[str]:
    """A digest of the trainable weights from every process (all equal: the DDP replicas agree)."""
    from accelerate.utils import gather_object

    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    mine = h.hexdigest()[:16]
    return gather_object([mine]) if state.num_processes > 1 else [mine]


def _skipped_line(report: Report) -> str:
    return f", skipped {len(report.skipped)} unreadable item(s) (first: {report.skipped[0]})" if report.skipped else ""


# ----- stage 1: the CTC Conformer ------------------------------------------------------------------
def run_stage1(cfg: CTCStageConfig, run_dir: Path, command: str) -> dict:
    """Stage 1 (`recipes.stage1_ctc`): train the CTC Conformer on ``cfg.data``, score test, save the encoder."""
    from accelerate import PartialState

    from speechlm_lib.recipes.stage1_ctc import load_data, score, train_encoder
    from speechlm_lib.training.callbacks import PrintLogger
    from speechlm_lib.training.utils import cpu_distributed

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state, start, rows = PartialState(cpu=cpu_distributed()), _time(), Report()
    with state.main_process_first():
        splits = load_source(cfg.data, rows, corpus_profile=cfg.profile)
        _need(splits, ("train", "dev", "test"), cfg.data)
        manifests = {s: write_manifest(run_dir / "data" / f"{s}.jsonl", u) for s, u in splits.items()}
        vocab, data = load_data(cfg, manifests, progress=state.is_main_process)
    tcfg = replace(cfg.train, output_dir=str(run_dir))
    model, result = train_encoder(replace(cfg, train=tcfg), vocab, data, callbacks=[PrintLogger()],
                                  resume=tcfg.resume)
    digests = replica_digests(model, state)
    if not state.is_main_process:
        return {"line": "", "metrics": {}}
    metrics = {"steps": result["final"]["step"], "train_seconds": result["seconds"], "replicas": len(digests),
               "replicas_identical": len(set(digests)) == 1, "skipped_rows": len(rows.skipped)}
    if data.get("test") is not None and len(data["test"]):
        metrics.update({f"test_{k}": v for k, v in score(model, data["test"], vocab).items()})
    model.save_pretrained(run_dir / MODEL_DIR)
    cfg.save(run_dir / "config.yaml")
    write_run(run_dir, "stage1", metrics, command, _time() - start, data=describe(cfg.data, cfg.profile))
    wer = f"test WER {metrics['test_wer']:.3f}" if "test_wer" in metrics else "no test split"
    return {"metrics": metrics, "line": f"stage1: {wer}, {metrics['steps']} steps{_skipped_line(rows)}; "
                                        f"encoder -> {run_dir / MODEL_DIR} (use it: --set model.encoder=conformer "
                                        f"--set model.encoder_source={run_dir / MODEL_DIR})"}


def _need(splits: dict, names: tuple[str, ...], src) -> None:
    empty = [n for n in names if not splits.get(n)]
    if empty:
        raise CLIError(f"data source ({describe(src)}) gives no utterances for split(s) {', '.join(empty)}; "
                       f"it has {', '.join(f'{k} {len(v)}' for k, v in splits.items()) or 'nothing'}")


# ----- stage 2: projector alignment ----------------------------------------------------------------
def run_stage2(cfg: Stage2Config, run_dir: Path, command: str) -> dict:
    """Stage 2 (`recipes.stage2_align`), as notebook 02 runs it: CTC pre-alignment (a ``ctc`` projector),
    demonstrations chosen on dev, LLM-loss training, test WER; the model saved to ``<run>/model``."""
    from accelerate import PartialState

    from speechlm_lib.recipes.stage2_align import choose_examples, evaluate_wer, pretrain_ctc, train_projector
    from speechlm_lib.training.utils import cpu_distributed

    state, start = PartialState(cpu=cpu_distributed()), _time()
    cfg = _with_output_dirs(cfg, run_dir)
    model, splits, cache, train_ds, dev, report = _prepare_stage2(cfg, state)
    if cfg.pretrain:
        dev_ds = _dataset(model, dev, cfg, cache) if dev else None
        pretrain_ctc(cfg, model, train_ds, dev_ds)
    choose_examples(cfg, model, [u.text for u in splits["train"]], dev, cache=cache)
    result = train_projector(cfg, model, train_ds, dev=dev, cache=cache)
    digests = replica_digests(model, state)
    if not state.is_main_process:
        return {"line": "", "metrics": {}}
    metrics = {"steps": result["final"]["step"], "train_seconds": result["train_seconds"],
               "replicas": len(digests), "replicas_identical": len(set(digests)) == 1,
               "train_utterances": len(train_ds), "skipped_utterances": len(report.skipped)}
    if result.get("best"):
        metrics["best_dev_step"] = result["best"]["step"]
    if splits["test"]:
        scores = evaluate_wer(model, splits["test"], cfg.decode, progress=True)
        metrics.update(test_wer=scores["wer"], test_cer=scores["cer"], rtf=scores["rtf"],
                       test_utterances=len(splits["test"]))
        _write_hyps(run_dir / "test_transcripts.jsonl", splits["test"], scores)
    model.save_pretrained(run_dir / MODEL_DIR)
    save_training_words(run_dir / MODEL_DIR, [u.text for u in splits["train"]])  # for `transcribe --snap`
    cfg.save(run_dir / "config.yaml")
    write_run(run_dir, "stage2", metrics, command, _time() - start,
              data=describe(cfg.data.source, cfg.corpus_profile), model=_model_line(cfg))
    wer = f"test WER {metrics['test_wer']:.3f} on {metrics['test_utterances']}" if splits["test"] else "no test split"
    return {"metrics": metrics, "line": f"stage2: {wer}, {metrics['steps']} steps in "
                                        f"{metrics['train_seconds']:.0f} s{_skipped_line(report)}; "
                                        f"model -> {run_dir / MODEL_DIR}, results -> {run_dir / 'results.json'}"}


def _with_output_dirs(cfg: Stage2Config, run_dir: Path) -> Stage2Config:
    """Checkpoints of the LLM-loss training in ``<run>/checkpoints``, of the CTC pre-alignment in ``<run>/pretrain``."""
    train = replace(cfg.train, output_dir=cfg.train.output_dir or str(run_dir))
    pre = cfg.pretrain and replace(cfg.pretrain, output_dir=cfg.pretrain.output_dir or str(run_dir / "pretrain"))
    return replace(cfg, train=train, pretrain=pre or None)


def _prepare_stage2(cfg: Stage2Config, state):
    """Splits, model, feature cache and datasets; the main process first (it fills the cache)."""
    from speechlm_lib.models.build import build_speechlm
    from speechlm_lib.recipes.stage2_align import load_splits, make_cache

    report = Report()
    with state.main_process_first():
        splits = load_splits(cfg, report)
        _need(splits, ("train",), cfg.data.source)
        model = build_speechlm(cfg.model, texts=[u.text for u in splits["train"]])
        cache = make_cache(model) if cfg.data.use_cache else None
        train_ds = _dataset(model, splits["train"], cfg, cache, report, progress=state.is_main_process)
        dev = splits["dev"]
        if cache is not None and dev:
            dev = cache.fill(dev, model.encoder, report=report, progress=False)
    return model, splits, cache, train_ds, dev, report


def _dataset(model, utts, cfg, cache, report=None, progress=False):
    from speechlm_lib.recipes.stage2_align import make_dataset

    return make_dataset(model, utts, cfg, cache=cache, report=report, progress=progress)


def _model_line(cfg: Stage2Config) -> str:
    m = cfg.model
    return f"{m.encoder} {m.encoder_source} -> {m.projector} projector (stride {m.stride}) -> {m.llm}"


def _write_hyps(path: Path, utts, scores: dict) -> None:
    import json

    with open(path, "w", encoding="utf-8") as f:
        for u, ref, hyp in zip(utts, scores["refs"], scores["hyps"]):
            f.write(json.dumps({"id": u.id, "ref": ref, "hyp": hyp}, ensure_ascii=False) + "\n")


STAGES.register("stage1")(Stage(CTCStageConfig, run_stage1, "CTC Conformer encoder from scratch (recipes/stage1_ctc.py)"))
STAGES.register("stage2")(Stage(Stage2Config, run_stage2,
                                "projector alignment: frozen encoder + frozen LLM (recipes/stage2_align.py)"))


# ----- stage 3: LoRA + multitask instruction tuning --------------------------------------------------
def run_stage3(cfg: Stage3Config, run_dir: Path, command: str) -> dict:
    """Stage 3 (`recipes.stage3_lora`), as notebook 03 runs it: the stage-2 model in ``init_from`` (default
    runs/<profile>/stage2_speechlm) gets LoRA adapters, trains on the task mix, and is scored on every task."""
    from speechlm_lib.data.feature_cache import FeatureCache
    from speechlm_lib.recipes.stage3_lora import (add_adapters, evaluate_tasks, load_splits, load_stage2,
                                                  make_task_dataset, prepare_projector, stage2_dir, train_lora)

    start, report = _time(), Report()
    if not stage2_dir(cfg).is_dir():
        raise CLIError(f"{stage2_dir(cfg)}: no stage-2 model; train one (speechlm train stage2) and pass "
                       f"--set init_from=<its run>/{MODEL_DIR}")
    cfg = replace(cfg, train=replace(cfg.train, output_dir=cfg.train.output_dir or str(run_dir)))
    model = load_stage2(cfg)
    splits = load_splits(cfg, report)
    _need(splits, ("train",), cfg.data.source)
    cache = FeatureCache.for_encoder(model.encoder) if cfg.data.use_cache else None
    # a new corpus: the projector learns its words and voices first (CTC, the LLM idle), and with cross-fitting
    # the adapters get training tokens from fold projectors that never heard their speakers
    prepared = prepare_projector(cfg, model, splits["train"], splits["dev"], cache, realign_dir=run_dir / "realign")
    realigned, crossed = prepared["realign"], prepared["cross_fit"]
    counts = add_adapters(cfg, model)
    train_ds = make_task_dataset(cfg, model, splits["train"], cfg.tasks, cache=cache, report=report,
                                 audio_tokens=crossed["tokens"] if crossed else None)
    result = train_lora(cfg, model, train_ds, dev=splits["dev"], cache=cache, output_dir=run_dir / MODEL_DIR)
    metrics = {"steps": result["final"]["step"], "train_seconds": result["train_seconds"],
               "trainable_parameters": counts["all"]["trainable"], "train_pairs": len(train_ds),
               "skipped": len(report.skipped)}
    if realigned is not None:
        metrics.update(realign_steps=realigned["final"]["step"], realign_seconds=realigned["seconds"],
                       realign_added_tokens=realigned["added_tokens"])
    if crossed is not None:
        metrics.update(cross_fit_seconds=crossed["seconds"], cross_fit_token_wer=crossed["wer"])
    if splits["test"]:
        scores = evaluate_tasks(cfg, model, splits["test"], cache=cache, held_out=False, progress=True)
        metrics.update({f"{t}_{k}": v for t, s in scores.items() for k, v in s.items() if isinstance(v, (int, float))})
    cfg.save(run_dir / "config.yaml")
    write_run(run_dir, "stage3", metrics, command, _time() - start,
              data=describe(cfg.data.source, cfg.corpus_profile), model=f"{stage2_dir(cfg)} + LoRA r={cfg.lora.r}")
    wer = f"English test WER {metrics['asr_en_wer']:.3f}" if "asr_en_wer" in metrics else "no test split"
    return {"metrics": metrics, "line": f"stage3: {wer}, {metrics['steps']} steps in {metrics['train_seconds']:.0f} s"
                                        f"{_skipped_line(report)}; model -> {run_dir / MODEL_DIR}"}


STAGES.register("stage3")(Stage(Stage3Config, run_stage3,
                                "LoRA + multitask instruction tuning on a stage-2 model (recipes/stage3_lora.py)"))
