"""Stage 3, LoRA and multitask instruction tuning (SALM, SLM): the LLM learns to listen, and to do what it is told.

Stage 2 left a frozen LLM that only copies the projector's tokens. Here LoRA adapters on the LLM's
attention (`models.lora`) train with the same LLM loss, on several tasks at once, each chosen by its
instruction (`data.tasks`: English ASR, German ASR, English->German translation). Read top to bottom:
the config (presets in ``configs/stage3_lora/<profile>.yaml``), then the recipe's steps::

    cfg = Stage3Config.preset(profile())
    model = load_stage2(cfg)                      # notebook 02's saved model
    add_adapters(cfg, model)                      # LoRA (+ the projector, if it trains along)
    splits = load_splits(cfg)
    train_ds = make_task_dataset(cfg, model, splits["train"], cfg.tasks)
    result = train_lora(cfg, model, train_ds, dev=splits["dev"])
    scores = evaluate_tasks(cfg, model, splits["test"])

The problem this stage has to solve: on its own training utterances the stage-2 projector is nearly
right, so adapters trained on its best path learn to copy and never meet the errors they must repair
on unseen voices. `ExposureConfig` draws the projector's tokens from its posteriors at a temperature
while the LLM trains, so the training tokens carry errors like the test tokens do.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch

from speechlm_lib.decoding.list_snap import save_training_words
from speechlm_lib.config import StageConfig, runs_dir
from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.data.sources import DataSource, load_source
from speechlm_lib.data.speechlm_dataset import SpeechLMDataset, TaskDataset, make_loader
from speechlm_lib.data.tasks import TASKS, Task, task_items
from speechlm_lib.decoding.ctc import projector_transcripts
from speechlm_lib.decoding.generation import DecodeConfig, transcribe
from speechlm_lib.metrics import bleu, caps_score, cer, chrf, names_score, wer
from speechlm_lib.models.ctc_projector import StateMasking
from speechlm_lib.models.lora import LoraSettings, add_lora
from speechlm_lib.models.sources import PEER_DTYPE
from speechlm_lib.models.speechlm import SpeechLM
from speechlm_lib.training.callbacks import Callback
from speechlm_lib.training.selection import train_keeping_best
from speechlm_lib.training.trainer import TrainConfig
from speechlm_lib.training.utils import resolve_dtype


@dataclass
class ExposureConfig:
    """How the LLM meets the projector's errors while it trains."""

    sample_temperature: float = 0.0  # draw each audio token from softmax(logits / T) (0 = the best path)
    projector_dropout: bool = True  # keep the projector's dropout on while the LLM trains (its train mode)
    masking: StateMasking = field(default_factory=StateMasking)  # SpecAugment on the states the projector reads
    cross_fit_folds: int = 0  # K >= 2: the LLM trains on tokens of K fold projectors, each re-aligned without the
    #   speakers it transcribes (recipes.cross_fit; needs realign and a frozen projector); 0 = off


def _both_languages() -> DataSource:
    return DataSource(splits={s: [s, f"{s}_de"] for s in ("train", "dev", "test")})


@dataclass
class DataConfig:
    """Which utterances, per split and language, and how they are batched."""

    source: DataSource = field(default_factory=_both_languages)  # where utterances come from (data.sources): the
    #   synthetic corpus's English and German manifests, a manifest folder, or a `datasets` corpus
    batch_size: int = 8  # (utterance, task) pairs a training batch
    train_limit: int | None = None  # at most this many training utterances of each language (None = all)
    dev_limit: int = 48  # English dev utterances scored at each evaluation (German ones: dev_limit // 4)
    test_limit: int | None = 200  # English test utterances per task (German: all of them, up to this)
    use_cache: bool = True  # cache the frozen encoder's states on disk (shared with stage 2)
    bucket_by: str = "seconds"  # training batches of similar "seconds" of audio, or of similar "tokens": whole
    #   rows (audio tokens + prompt + answer), less padding where prompts differ in length (stage 4's lists)


@dataclass
class Stage3Config(StageConfig):
    """Everything stage 3 needs; ``preset(name)`` reads ``configs/stage3_lora/<name>.yaml``."""

    config_name: ClassVar[str] = "stage3_lora"
    init_from: str | None = None  # a saved stage-2 SpeechLM folder (None = runs/<profile>/stage2_speechlm)
    llm_dtype: str | None = "auto"  # the LLM's dtype here (train_utils.resolve_dtype; "auto" = bf16 where native)
    keep_examples: bool = False  # keep stage 2's prompt demonstrations (the adapters learn the task instead)
    lora: LoraSettings = field(default_factory=LoraSettings)  # rank, alpha, dropout, target modules
    train_projector: bool = False  # the projector trains along (straight-through its hard tokens)
    realign: TrainConfig | None = None  # CTC re-alignment of the projector on this stage's training data before
    #   the adapters train, its vocabulary grown to their words: for a new corpus, e.g. real speech (None = none)
    realign_batch_size: int = 32  # utterances a batch of re-alignment (no LLM runs: larger is cheap)
    realign_masking: StateMasking = field(default_factory=StateMasking)  # SpecAugment on the states in re-alignment
    projector_members: int = 1  # heads of a new projector (the real-speech ``scratch`` start), each trained by
    #   its own CTC loss, their log-posteriors averaged: an ensemble for one encoder pass (1 = a single head)
    realign_piece_dropout: float = 0.0  # BPE-dropout on the re-alignment targets (models.piece_dropout): each
    #   merge undone with this probability and the vocabulary grown to the smaller pieces, so words no training
    #   transcript has can be spelled (0 = off)
    realign_speeds: tuple[float, ...] = ()  # speed-perturbed copies of each training utterance added to the
    #   re-alignment (data.perturb), e.g. (0.9, 1.1) triples the voices it hears (() = the originals only)
    realign_noise_snr: tuple[float, ...] = ()  # copies of each training utterance (and of its speed copies) with
    #   white noise at these SNRs in dB (evaluation.noise) added to the re-alignment (() = none)
    exposure: ExposureConfig = field(default_factory=ExposureConfig)  # the projector's errors in training
    tasks: dict = field(default_factory=lambda: {"asr_en": 1.0, "asr_de": 1.0, "ast_de": 0.3})  # name -> ratio
    eval_tasks: tuple[str, ...] = ("asr_en", "asr_de", "ast_de", "caps", "names")  # scored on test
    data: DataConfig = field(default_factory=DataConfig)  # subsets and batching
    train: TrainConfig = field(default_factory=TrainConfig)  # optimizer, schedule, logging
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # greedy decoding, token budget
    corpus_profile: str | None = None  # which data/synth/<profile> corpus (None = the active profile)
    keep_best: bool = True  # end with the adapters of the best dev WER (English ASR), before training included
    text_questions: int = 50  # text-only questions asked with adapters on and off (data.text_checks; at most 50)


# ----- 1. the model: notebook 02's speech-LLM, plus adapters ----------------------------------------------
def stage2_dir(cfg: Stage3Config, profile_name: str | None = None) -> Path:
    """Where the stage-2 model is read from."""
    from speechlm_lib.config import profile

    return Path(cfg.init_from) if cfg.init_from else runs_dir() / (profile_name or profile()) / "stage2_speechlm"


def load_stage2(cfg: Stage3Config, llm=None, tokenizer=None, encoder=None) -> SpeechLM:
    """The saved stage-2 `SpeechLM` (frozen parts by reference), without its demonstrations unless kept."""
    from speechlm_lib.models.speechlm import load_llm

    folder = stage2_dir(cfg)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no stage-2 model (run notebooks/02_projector_alignment.ipynb, "
                                f"or name a saved SpeechLM folder in init_from)")
    if llm is None:
        import json

        source = json.loads((folder / "speechlm.json").read_text())["llm"]["source"]
        llm, tokenizer = load_llm(source, dtype=resolve_dtype(cfg.llm_dtype))
    model = SpeechLM.from_pretrained(folder, encoder=encoder, llm=llm, tokenizer=tokenizer)
    if not cfg.keep_examples:
        model.prompts.set_examples([])
    return model.to(llm.device)


def realign_projector(cfg: Stage3Config, model: SpeechLM, train: list[Utterance], dev: list[Utterance] = (),
                      cache: FeatureCache | None = None, callbacks: list[Callback] = ()) -> dict:
    """Stage 2's CTC pre-alignment again, on `train` (``cfg.realign`` sets the updates; the LLM does not run):
    the projector first learns to emit the new corpus's word pieces (`CTCProjector.extend_vocabulary`; with
    ``realign_piece_dropout`` also the smaller pieces they are built from), then its voices (with ``realign_speeds``
    and ``realign_noise_snr`` also `train`'s speed-perturbed and noisy copies). A stage-2 model trained on other
    audio (eSpeak voices) hears real speech as noise until it has.
    Returns the trainer's result plus ``added_tokens``; at evaluations, the projector's dev WER (best path)."""
    from speechlm_lib.data.perturb import augmented
    from speechlm_lib.models.ctc_projector import ctc_vocabulary
    from speechlm_lib.models.piece_dropout import PieceDropout, bpe_merges, piece_closure
    from speechlm_lib.recipes.stage2_align import align_projector

    if not hasattr(model.projector, "extend_vocabulary"):
        raise ValueError(f"realign needs the 'ctc' projector; this model has {type(model.projector).__name__}")
    pieces, dropout = ctc_vocabulary(model.prompts, [u.text for u in train]), None
    if cfg.realign_piece_dropout:
        merges = bpe_merges(model.prompts.tokenizer)
        pieces = piece_closure(pieces, merges)
        dropout = PieceDropout(merges, cfg.realign_piece_dropout, seed=cfg.train.seed)
    added = model.projector.extend_vocabulary(pieces, model.llm)
    model.projector.requires_grad_(True)
    if cfg.realign_speeds or cfg.realign_noise_snr:
        report = Report()
        train = augmented(train, cfg.realign_speeds, cfg.realign_noise_snr, report=report)
        if report.skipped:
            print(f"perturbed copies: {report}")
    if cache is not None:
        train = cache.fill(train, model.encoder, batch_size=16, progress=True)
        dev = cache.fill(list(dev), model.encoder, batch_size=16, progress=False) if dev else []
    ds = SpeechLMDataset(train, model.encoder, model.prompts, cache=cache)
    dev_ds = SpeechLMDataset(list(dev), model.encoder, model.prompts, cache=cache) if dev else None
    result = align_projector(cfg.realign, model, ds, dev_ds, batch_size=cfg.realign_batch_size,
                             seed=cfg.train.seed, callbacks=callbacks, run_config=cfg,
                             masking=cfg.realign_masking, piece_dropout=dropout)
    return {**result, "added_tokens": added}


def prepare_projector(cfg: Stage3Config, model: SpeechLM, train: list[Utterance], dev: list[Utterance] = (),
                      cache: FeatureCache | None = None, realign_dir: str | Path | None = None) -> dict:
    """The projector's steps before the adapters, in the only safe order: cross-fitted tokens from the *starting*
    projector (``exposure.cross_fit_folds``; after re-alignment the full projector has heard every fold), then
    the re-alignment itself (``realign``; its checkpoints in `realign_dir`). Returns ``{"cross_fit": ...,
    "realign": ...}``: `recipes.cross_fit.cross_fitted_tokens`'s and `realign_projector`'s results, None if off."""
    from speechlm_lib.recipes.cross_fit import cross_fitted_tokens

    out = {"cross_fit": None, "realign": None}
    if cfg.exposure.cross_fit_folds:
        out["cross_fit"] = cross_fitted_tokens(cfg, model, train, cache)
    if cfg.realign:
        realign = replace(cfg.realign, output_dir=cfg.realign.output_dir or (str(realign_dir) if realign_dir else None))
        out["realign"] = realign_projector(replace(cfg, realign=realign), model, train, dev, cache)
    return out


def add_adapters(cfg: Stage3Config, model: SpeechLM) -> dict:
    """LoRA on the LLM (rank 0: none), the projector frozen or training along, the exposure regime set.
    Returns the parameter counts (trainable vs frozen per part)."""
    add_lora(model, cfg.lora)
    model.projector.requires_grad_(cfg.train_projector)
    model.projector.sample_temperature = cfg.exposure.sample_temperature
    model.projector.state_masking = cfg.exposure.masking
    if not cfg.exposure.projector_dropout:
        for m in model.projector.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    return model.parameter_counts()


# ----- 2. the data: (utterance, task) pairs -----------------------------------------------------------------
def load_splits(cfg: Stage3Config, report: Report | None = None) -> dict[str, list[Utterance]]:
    """train / dev / test from ``cfg.data.source`` (by default the synthetic corpus, English and German),
    each language cut to its limit: English dev and test to the limits, German dev to a quarter of the dev
    limit, German test to the test limit."""
    splits = load_source(cfg.data.source, report, corpus_profile=cfg.corpus_profile)
    d = cfg.data
    limits = {"train": (d.train_limit, d.train_limit), "dev": (d.dev_limit, max(1, d.dev_limit // 4)),
              "test": (d.test_limit, d.test_limit)}
    out = {}
    for split, (limit_en, limit_other) in limits.items():
        utts = splits.get(split, [])
        out[split] = ([u for u in utts if u.language == "en"][:limit_en] +
                      [u for u in utts if u.language != "en"][:limit_other])
    return out


def make_task_dataset(cfg: Stage3Config, model: SpeechLM, utts: list[Utterance], tasks: dict[str, float],
                      cache: FeatureCache | None = None, report: Report | None = None,
                      progress: bool = True, audio_tokens: dict | None = None) -> TaskDataset:
    """(utterance, task) pairs by the `tasks` ratios, encoder states cached first (batched); `audio_tokens`
    (utterance id -> token ids, `recipes.cross_fit`) replace the projector's output in training."""
    report = report if report is not None else Report()
    pairs = task_items(tasks, utts, report, seed=cfg.train.seed)
    if cfg.data.use_cache:
        cache = cache or FeatureCache.for_encoder(model.encoder)
        kept = {u.audio for u in cache.fill(utts, model.encoder, batch_size=16, report=report, progress=progress)}
        pairs = [(u, t) for u, t in pairs if u.audio in kept]
    return TaskDataset(pairs, model.encoder, model.prompts, cache=cache if cfg.data.use_cache else None,
                       report=report, seed=cfg.train.seed, audio_tokens=audio_tokens)


@torch.no_grad()
def projector_wer(model: SpeechLM, dataset, temperature: float = 0.0, seed: int = 0, batch_size: int = 32) -> float:
    """WER of the projector's own tokens on `dataset` (a `SpeechLMDataset` with cached states): its best path,
    or with `temperature` the tokens drawn as `ExposureConfig` draws them in training. Matching the training
    tokens' WER to the unseen voices' is what exposure is for."""
    torch.manual_seed(seed)
    out = projector_transcripts(model, dataset, temperature, batch_size=batch_size)
    return wer(out["refs"], out["hyps"])


# ----- 3. training: the generic Trainer, dev WER of English ASR, the best adapters kept ---------------------
def train_lora(cfg: Stage3Config, model: SpeechLM, train_ds: TaskDataset, dev: list[Utterance] | None = None,
               callbacks: list[Callback] = (), cache: FeatureCache | None = None,
               output_dir: str | Path | None = None) -> dict:
    """Train the adapters (and the projector if it trains along). Returns the trainer's result plus
    ``train_seconds`` / ``eval_seconds`` / ``samples_per_second``; saves the model to `output_dir`."""
    if cfg.data.bucket_by not in ("seconds", "tokens"):
        raise ValueError(f"data.bucket_by must be 'seconds' or 'tokens', got {cfg.data.bucket_by!r}")
    lengths = train_ds.token_lengths(model.token_rate) if cfg.data.bucket_by == "tokens" else None
    loader = make_loader(train_ds, batch_size=cfg.data.batch_size, seed=cfg.train.seed, lengths=lengths)
    evaluate = None
    if dev:
        asr = TASKS.build("asr_en")
        dev_en = [u for u in dev if asr.applies(u)]
        evaluate = lambda m: {"wer": score_task(m, asr, dev_en, cfg.decode, cache=cache)["wer"]}  # noqa: E731
    result = train_keeping_best(cfg.train, model, loader, evaluate=evaluate, keep_best=cfg.keep_best,
                                callbacks=callbacks, run_config=cfg, batch_size=cfg.data.batch_size)
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
        cfg.save(Path(output_dir) / "config.yaml")
        save_training_words(output_dir, [u.text for u in train_ds.utts])  # for `transcribe --snap`
    return result


# ----- 4. evaluation: every task by its own metric ----------------------------------------------------------
@torch.no_grad()
def score_task(model: SpeechLM, task: Task, utts: list[Utterance], decode: DecodeConfig | None = None,
               instruction: str | None = None, cache: FeatureCache | None = None, progress: bool = False) -> dict:
    """Decode `utts` with the task's instruction (or `instruction`) and score by the task's metric.

    Returns the metric(s), ``rtf``, ``seconds``, ``n``, ``truncated``, ``looped`` (transcripts the repetition guard
    cut) and ``refs`` / ``hyps`` / ``ids``."""
    utts = [u for u in utts if task.applies(u)]
    decode = replace(decode or DecodeConfig(), draft=(decode or DecodeConfig()).draft and task.draft)
    out = transcribe(model, utts, decode, instruction=instruction or task.train[0], cache=cache, progress=progress)
    refs = [task.answer(u) for u in utts]
    scores = {"n": len(utts), "rtf": out.rtf, "seconds": out.seconds, "truncated": out.truncated, "looped": out.looped,
              "refs": refs, "hyps": out.texts, "ids": [u.id for u in utts]}
    if task.metric == "wer":
        scores.update(wer=wer(refs, out.texts), cer=cer(refs, out.texts))
    elif task.metric == "bleu":
        scores.update(bleu=bleu(refs, out.texts), chrf=chrf(refs, out.texts))
    elif task.metric == "caps":
        scores.update(caps_score([u.text for u in utts], out.texts))
    elif task.metric == "names":
        scores.update(names_score([u.keywords for u in utts], [u.text for u in utts], out.texts))
    else:
        raise ValueError(f"task {task.name!r}: unknown metric {task.metric!r}")
    return scores


def evaluate_tasks(cfg: Stage3Config, model: SpeechLM, test: list[Utterance], cache: FeatureCache | None = None,
                   held_out: bool = True, progress: bool = False) -> dict:
    """Every task in ``cfg.eval_tasks`` on `test` (`score_task`); with `held_out`, each trained task is also
    asked in its paraphrases never seen in training (``<task>@unseen``): utterance i of the task's test
    utterances gets paraphrase ``i % k``, so every paraphrase is asked and the unseen figure rests on as
    many utterances as the seen one, at the cost of one more pass (not k)."""
    results = {}
    for name in cfg.eval_tasks:
        task = TASKS.build(name)
        results[name] = score_task(model, task, test, cfg.decode, cache=cache, progress=progress)
        if held_out and task.trained and task.held_out:
            results[f"{name}@unseen"] = _score_unseen(cfg, model, task, test, cache)
    return results


def _score_unseen(cfg: Stage3Config, model: SpeechLM, task: Task, test: list[Utterance],
                  cache: FeatureCache | None) -> dict:
    """`task` asked in its held-out paraphrases, dealt round-robin over its test utterances, pooled."""
    utts = [u for u in test if task.applies(u)]
    k = len(task.held_out)
    runs = [score_task(model, task, utts[i::k], cfg.decode, instruction=phrase, cache=cache)
            for i, phrase in enumerate(task.held_out) if utts[i::k]]
    refs = [r for run in runs for r in run["refs"]]
    hyps = [h for run in runs for h in run["hyps"]]
    key = "wer" if task.metric == "wer" else "bleu"
    value = wer(refs, hyps) if key == "wer" else bleu(refs, hyps)
    return {key: value, "n": len(hyps), "instructions": list(task.held_out), "refs": refs, "hyps": hyps,
            "ids": [i for run in runs for i in run["ids"]]}


# ----- 5. the same test beside stage 2, the projector alone, Whisper, and on real speech --------------------
def real_speech_test(fractions: dict | None = None, seed: int = 0, limit: int | None = None,
                     report: Report | None = None) -> list[Utterance]:
    """The held-out speakers of speechocean762 (``../shared/data``; split by speaker, never by utterance),
    or [] when the folder is absent. Its transcripts are upper case without punctuation (scoring normalises)."""
    from speechlm_lib.data.realdata import load_local_manifest, speechocean_dir, split_by_speaker

    folder = speechocean_dir()
    if not (folder / "transcripts.jsonl").is_file():
        return []
    utts = load_local_manifest(folder, report=report)
    split = split_by_speaker(utts, fractions or {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=seed)
    return split["test"][:limit]


def whisper_wer(utts: list[Utterance], source: str = "openai/whisper-tiny.en", max_new_tokens: int = 96,
                dtype: str | None = PEER_DTYPE) -> dict:
    """The complete Whisper (its own encoder and decoder) on the same English utterances: ``{"wer", "rtf", "hyps"}``.
    `dtype`: "auto" = bf16 where faster on this CPU (`models.sources.PEER_DTYPE`), None = float32."""
    from speechlm_lib.data.audio import load_audio
    from speechlm_lib.decoding.whisper import whisper_transcribe
    from speechlm_lib.models.sources import load_whisper

    whisper, processor = load_whisper(source, dtype=dtype)
    waves = [load_audio(u.audio) for u in utts]
    texts, seconds = whisper_transcribe(whisper, processor, waves, max_new_tokens=max_new_tokens)
    audio = sum(u.duration for u in utts)
    return {"wer": wer([u.text for u in utts], texts), "rtf": seconds / max(audio, 1e-9), "hyps": texts}
