"""Stage 4, speech-supervised in-context training (SALM's ICT): tell the recogniser, in plain text, which
rare names to expect.

Stage 3's LoRA model goes on training with a keyword list in front of the instruction of most examples
(`models.context`: its own keywords, each kept with the positive ratio, plus distractors from the
training names; some examples get none). At test time every utterance gets a biasing list by the
LibriSpeech convention -- its own keywords + N distractors from names never heard in training -- and is
scored by `metrics_bias.biasing_scores` (WER, U-WER, B-WER, keyword F1, false alarms). Whisper tiny.en,
given the same list as its prompt, is the peer. Read top to bottom::

    cfg = Stage4Config.preset(profile())
    model = load_stage3(cfg)                          # notebook 03's model, adapters trainable
    splits = load_splits(cfg)
    lists = evaluation_lists(cfg, splits)             # {"none": None, 0: [...], 10: [...], ...}
    before = evaluate_biasing(cfg, model, splits["test"], lists)   # stage 3 given the lists
    train_ds = make_ict_dataset(cfg, model, splits["train"])
    result = train_ict(cfg, model, train_ds)
    after = evaluate_biasing(cfg, model, splits["test"], lists)
    peer = whisper_biasing(cfg, splits["test"], lists)
"""
from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from speechlm_lib.config import StageConfig, runs_dir
from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.data.sources import DataSource
from speechlm_lib.data.speechlm_dataset import TaskDataset
from speechlm_lib.decoding.generation import DecodeConfig, token_budget, transcribe
from speechlm_lib.decoding.list_filter import ListFilterConfig, Spotted, filter_list, projector_spotted, projector_texts
from speechlm_lib.decoding.list_place import ListPlaceConfig, place_all, tune_min_similarity
from speechlm_lib.decoding.list_snap import SNAP_GRID, ListSnapConfig, snap_all, tune_min_score
from speechlm_lib.metrics_bias import biasing_scores
from speechlm_lib.models.context import (
    ICTConfig,
    ICTSampler,
    biasing_lists,
    clean_list,
    context_room,
    context_text,
    fit_context,
    unseen_pool,
    with_context,
)
from speechlm_lib.models.lora import LoraSettings, add_lora
from speechlm_lib.models.speechlm import SpeechLM
from speechlm_lib.recipes import stage3_lora
from speechlm_lib.recipes.stage3_lora import DataConfig, ExposureConfig
from speechlm_lib.training.trainer import TrainConfig
from speechlm_lib.training.utils import resolve_dtype

NO_CONTEXT = "none"  # the condition without any list


def _english() -> DataSource:
    return DataSource(splits={s: [s] for s in ("train", "dev", "test")})


def _english_data() -> DataConfig:
    return DataConfig(source=_english())


@dataclass
class BiasEvalConfig:
    """How the test is biased and scored."""

    distractors: tuple[int, ...] = (0, 10, 100, 500)  # N per list (besides no context at all)
    list_seed: int = 0  # the lists depend only on this, N and the utterance's index
    pool_seed: int = 0  # the generator seed that tops up the unseen-name pool
    on_overflow: str = "truncate"  # a list over the LLM's window: "truncate" (its end, warned) or "raise"
    whisper: bool = True  # decode the same lists with Whisper (its prompt) as the peer
    whisper_source: str = "openai/whisper-tiny.en"  # the peer
    whisper_max_new_tokens: int = 96  # the peer's answer budget
    whisper_dtype: str | None = "auto"  # the peer's precision: bf16 where faster on this CPU, None = float32
    filter: ListFilterConfig = field(default_factory=ListFilterConfig)  # CTC-assisted list filtering before the
    #   prompt (decoding.list_filter; keep 0 = the whole list). The peer always gets the whole list.
    snap: ListSnapConfig = field(default_factory=ListSnapConfig)  # after decoding, near-misses of a list entry
    #   become the entry (decoding.list_snap; min_score 0 = off; choose it on dev with `tune_snap`)
    place: ListPlaceConfig = field(default_factory=ListPlaceConfig)  # after snapping, an entry the CTC keyword
    #   spotter finds but the answer lacks goes where it was heard (decoding.list_place; min_similarity 0 = off)


@dataclass
class Stage4Config(StageConfig):
    """Everything stage 4 needs; ``preset(name)`` reads ``configs/stage4_context/<name>.yaml``."""

    config_name: ClassVar[str] = "stage4_context"
    init_from: str | None = None  # a saved stage-3 SpeechLM folder (None = runs/<profile>/stage3_lora)
    llm_dtype: str | None = "auto"  # the LLM's dtype (train_utils.resolve_dtype; "auto" = bf16 where native)
    lora: LoraSettings = field(default_factory=LoraSettings)  # only used if the stage-3 model has no adapters
    exposure: ExposureConfig = field(default_factory=ExposureConfig)  # the projector's errors in training
    ict: ICTConfig = field(default_factory=ICTConfig)  # how training examples get keyword lists
    instruction: str = "Transcribe the audio."  # the instruction the lists go in front of at test time
    tasks: dict = field(default_factory=lambda: {"asr_en": 1.0})  # training tasks (lists go to asr_en items)
    data: DataConfig = field(default_factory=_english_data)  # subsets and batching (English by default)
    train: TrainConfig = field(default_factory=TrainConfig)  # optimizer, schedule, logging
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # greedy decoding, token budget
    evaluation: BiasEvalConfig = field(default_factory=BiasEvalConfig)  # lists, N values, the peer
    ratios: tuple[float, ...] = (0.5, 0.8, 1.0)  # positive ratios of the ablation (bench_stage4.py)
    corpus_profile: str | None = None  # which data/synth/<profile> corpus (None = the active profile)
    keep_best: bool = False  # (train_lora's switch) no dev selection: the dev WER without lists would undo ICT


# ----- 1. the model: stage 3's, adapters trainable ----------------------------------------------------------
def stage3_dir(cfg: Stage4Config) -> Path:
    """Where the stage-3 model is read from."""
    from speechlm_lib.config import profile

    return Path(cfg.init_from) if cfg.init_from else runs_dir() / profile() / "stage3_lora"


def load_stage3(cfg: Stage4Config, encoder=None, trainable: bool = True, warn=warnings.warn) -> SpeechLM:
    """The saved stage-3 `SpeechLM` with its adapters (trainable unless `trainable=False`; a model saved
    without adapters gets fresh ones from ``cfg.lora``), the projector frozen, exposure as configured."""
    import json

    from speechlm_lib.models.speechlm import load_llm

    folder = stage3_dir(cfg)
    if not (folder / "speechlm.json").is_file():
        raise FileNotFoundError(f"{folder}: no stage-3 model (run notebooks/03_lora_multitask.ipynb, or name a "
                                f"saved SpeechLM folder in init_from)")
    saved = json.loads((folder / "speechlm.json").read_text())
    llm, tokenizer = load_llm(saved["llm"]["source"], dtype=resolve_dtype(cfg.llm_dtype))
    model = SpeechLM.from_pretrained(folder, encoder=encoder, llm=llm, tokenizer=tokenizer,
                                     trainable_adapters=trainable)
    if model.peft is None and trainable:
        add_lora(model, cfg.lora)
    if model.prompts.config.audio_first:
        warn(f"{folder}: the prompt puts the audio first, so the keyword list comes after the audio")
    model.prompts.set_examples([])
    model.projector.requires_grad_(False)
    model.projector.sample_temperature = cfg.exposure.sample_temperature
    model.projector.state_masking = cfg.exposure.masking
    return model.to(llm.device).eval()


def load_splits(cfg: Stage4Config, report: Report | None = None) -> dict[str, list[Utterance]]:
    """train / dev / test as stage 3 reads them (`stage3_lora.load_splits`)."""
    return stage3_lora.load_splits(cfg, report)


# ----- 2. the training data: ICT lists in front of the instruction ------------------------------------------
def make_ict_dataset(cfg: Stage4Config, model: SpeechLM, utts: list[Utterance], cache: FeatureCache | None = None,
                     report: Report | None = None, progress: bool = True) -> TaskDataset:
    """Stage 3's (utterance, task) dataset, each English-ASR item's instruction given an ICT list (or none).

    Distractors come from the training utterances' own keywords. The list of each item is fixed by the seed
    (``dataset.contexts``: id(utterance) -> list or None)."""
    ds = stage3_lora.make_task_dataset(cfg, model, utts, cfg.tasks, cache=cache, report=report, progress=progress)
    sampler = ICTSampler(cfg.ict, [k for u in utts for k in u.keywords])
    room = context_room(model, max((u.duration for u in ds.utts), default=0.0),
                        token_budget(max((u.duration for u in ds.utts), default=0.0), cfg.decode))
    ds.contexts = {}
    for i, u in enumerate(ds.utts):
        if ds.tasks[id(u)].name != "asr_en":
            continue
        words = sampler(u.keywords, random.Random(f"{cfg.train.seed}:ict:{i}"))
        words = fit_context(words, model.tokenizer, room, cfg.evaluation.on_overflow) if words else None
        ds.contexts[id(u)] = words
        ds.instructions[id(u)] = with_context(ds.instructions[id(u)], words, cfg.ict.template)
    return ds


def train_ict(cfg: Stage4Config, model: SpeechLM, train_ds: TaskDataset, cache: FeatureCache | None = None,
              output_dir: str | Path | None = None) -> dict:
    """Train the adapters on the ICT data (`stage3_lora.train_lora`, no dev selection)."""
    return stage3_lora.train_lora(cfg, model, train_ds, dev=None, cache=cache, output_dir=output_dir)


# ----- 3. evaluation lists and scores -----------------------------------------------------------------------
def evaluation_lists(cfg: Stage4Config, splits: dict[str, list[Utterance]], split: str = "test") -> dict:
    """``{"none": None, N: one list per utterance of `split`, ...}``: own keywords + N unseen distractors."""
    test = splits[split]
    pool = unseen_pool([u.text for u in splits["train"]], [k for s in ("dev", "test") for u in splits.get(s, [])
                                                            for k in u.keywords],
                       size=max(cfg.evaluation.distractors, default=0) + 20, seed=cfg.evaluation.pool_seed)
    lists = {NO_CONTEXT: None}
    for n in cfg.evaluation.distractors:
        lists[n] = biasing_lists([u.keywords for u in test], pool, n, seed=cfg.evaluation.list_seed)
    return lists


def fitted_lists(lists: list, tokenizer, room: int, on_overflow: str, template: str,
                 warn: bool = True) -> tuple[list, int]:
    """Each list through `fit_context` (bulk: one summary warning instead of one a list; none with `warn`
    False, where the caller reports the count). Returns the lists as given to the model and the count cut."""
    out, cut = [], 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for words in lists:
            kept = fit_context(words, tokenizer, room, on_overflow, template)
            cut += len(kept) < len(clean_list(words))
            out.append(kept)
    if cut and warn:
        warnings.warn(f"{cut} of {len(lists)} keyword lists were cut to fit the context window", stacklevel=2)
    return out, cut


def evaluate_biasing(cfg: Stage4Config, model: SpeechLM, test: list[Utterance], lists: dict,
                     cache: FeatureCache | None = None, progress: bool = False, known: set[str] | None = None) -> dict:
    """Decode `test` once per condition of `lists` and score each (`biasing_scores`) with its latency
    (``seconds_per_utt``, ``rtf``) and cost (``prompt_tokens``: mean prompt ids a row, ``context_tokens``).
    The no-context condition is scored against the true keywords (the N = 0 lists), so its B words are the
    same as every other condition's. With ``cfg.evaluation.snap`` on, the hypotheses are snapped to the lists
    the model was given (`decoding.list_snap`; `known`: the training vocabulary it trusts) before scoring;
    ``before_snap`` holds the scores without, ``swaps`` the words replaced and ``raw_hyps`` the hypotheses as
    decoded. ``given``: each utterance's list as the model got it (filtered, cut)."""
    tok, tpl, out = model.tokenizer, cfg.ict.template, {}
    bare = model.prompts.prompt(cfg.instruction)
    room = context_room(model, max((u.duration for u in test), default=0.0),
                        token_budget(max((u.duration for u in test), default=0.0), cfg.decode))
    truth = [clean_list(u.keywords) for u in test]
    hyps, filter_seconds = filter_hypotheses(cfg, model, test, cache)
    spotted, spot_seconds = spotted_for_place(cfg, model, test, cache, hyps)
    for key, given in lists.items():
        extra, kept = 0.0, None
        if given and hyps is not None:
            t0 = time.perf_counter()
            given = [filter_list(w, h, cfg.evaluation.filter) for w, h in zip(given, hyps)]
            extra = filter_seconds + time.perf_counter() - t0
            kept = _kept_share(given, truth)
        given, cut = fitted_lists(given, tok, room, cfg.evaluation.on_overflow, tpl) if given else ([None] * len(test), 0)
        instructions = [with_context(cfg.instruction, w, tpl) for w in given]
        run = transcribe(model, test, cfg.decode, instruction=instructions, cache=cache, progress=progress)
        scores = snapped_scores(cfg, test, run.texts, given, lists[key] if lists[key] else truth, known, spotted)
        texts, snap_seconds = scores["hyps"], scores.pop("snap_seconds") + (spot_seconds if any(given) else 0.0)
        prompt = [len(p.prefix) + len(p.suffix) for p in map(model.prompts.prompt, instructions)]
        seconds = run.seconds + extra + snap_seconds  # the filter's projector pass and matching, the snapping and
        #   the placing (its projector pass too), count as decoding time
        scores.update(seconds=seconds, seconds_per_utt=seconds / max(1, len(test)),
                      rtf=run.rtf * seconds / max(run.seconds, 1e-9), filter_seconds=extra, snap_seconds=snap_seconds,
                      keywords_kept=kept,
                      prompt_tokens=sum(prompt) / max(1, len(prompt)),
                      context_tokens=sum(prompt) / max(1, len(prompt)) - len(bare.prefix) - len(bare.suffix),
                      lists_cut=cut, hyps=texts, ids=[u.id for u in test], given=given)
        out[key] = scores
    return out


def snapped_scores(cfg: Stage4Config, test: list[Utterance], hyps: list[str], given: list, scored: list,
                   known: set[str] | None = None, spotted: list | None = None) -> dict:
    """`biasing_scores` of `hyps` after snapping them to the lists the model was `given` (``cfg.evaluation.snap``;
    off: as they are), then placing the spotted entries they still lack (``cfg.evaluation.place``, with the
    utterances' `spotted` posteriors; None: no placing; its threshold's prior is the length of the `scored` list, the
    whole one, not of the filtered one `given`), against the `scored` lists, plus ``hyps`` (final) and
    ``snap_seconds``; with either on, also ``before_snap`` (the scores of `hyps` as given), ``swaps``, ``placed``
    (the count) and ``raw_hyps``; with placing on, ``snap_only`` (the scores snapped, not placed). No decoding:
    notebooks snap results they already have with it."""
    refs, t0 = [u.text for u in test], time.perf_counter()
    texts, swaps = snap_all(hyps, given, cfg.evaluation.snap, known)
    placing = spotted is not None and cfg.evaluation.place.min_similarity > 0
    whole = [len(clean_list(w)) if w else None for w in scored]  # the lists' lengths before any filter: the prior
    final, placed = place_all(texts, given, spotted, cfg.evaluation.place, known, whole) if placing else (texts, 0)
    scores = {**biasing_scores(refs, final, scored), "hyps": final, "snap_seconds": time.perf_counter() - t0}
    if cfg.evaluation.snap.min_score > 0 or placing:
        scores.update(before_snap=biasing_scores(refs, hyps, scored), swaps=swaps, placed=placed, raw_hyps=list(hyps))
    if placing:
        scores["snap_only"] = biasing_scores(refs, texts, scored)  # snapped, nothing placed
    return scores


def tune_snap(cfg: Stage4Config, model: SpeechLM, dev: list[Utterance], lists: dict, cache=None,
              grid=SNAP_GRID, known: set[str] | None = None, decoded: tuple | None = None) -> tuple[float, list[dict]]:
    """The snap threshold (``evaluation.snap.min_score``) of `grid` with the lowest WER on `dev`, pooled over the
    list conditions of `lists` (``{N: one list per dev utterance}``, e.g. `evaluation_lists` of the dev split):
    each condition decoded once as `evaluate_biasing` would (filter included), then snapped at each point.
    `decoded`: `decode_pooled`'s answer when at hand (no decoding then)."""
    refs, hyps, used, _ = decoded or decode_pooled(cfg, model, dev, lists, cache)
    return tune_min_score(refs, hyps, used, grid, base=cfg.evaluation.snap, known=known)


def tune_place(cfg: Stage4Config, model: SpeechLM, dev: list[Utterance], lists: dict, cache=None,
               grid=None, known: set[str] | None = None, decoded: tuple | None = None) -> tuple[float, list]:
    """The placing threshold (``evaluation.place.min_similarity``) of `grid` (None: the rule's own,
    ``ListPlaceConfig.grid``) with the lowest WER on `dev`, after snapping with ``cfg.evaluation.snap`` (choose that
    first: `tune_snap`), pooled as in `tune_snap`."""
    refs, hyps, used, whole = decoded or decode_pooled(cfg, model, dev, lists, cache)
    snapped, _ = snap_all(hyps, used, cfg.evaluation.snap, known)
    spotted = projector_spotted(model, dev, cache) * (len(hyps) // max(1, len(dev)))  # the same for each condition
    return tune_min_similarity(refs, snapped, used, spotted, grid, base=cfg.evaluation.place, known=known,
                               lengths=whole)


def decode_pooled(cfg: Stage4Config, model: SpeechLM, utts: list[Utterance], lists: dict, cache=None) -> tuple:
    """`utts` decoded once per list condition of `lists` (those with lists), as `evaluate_biasing` would but with
    snapping and placing off: ``(refs, hyps, given, lengths)`` pooled over the conditions, in their order (`given`:
    each list as the model got it, filtered or cut; `lengths`: the whole list's length, the placing prior)."""
    ev = replace(cfg.evaluation, snap=replace(cfg.evaluation.snap, min_score=0.0),
                 place=replace(cfg.evaluation.place, min_similarity=0.0))
    given = {k: v for k, v in lists.items() if v}
    scores = evaluate_biasing(replace(cfg, evaluation=ev), model, utts, given, cache=cache)
    return ([u.text for _ in given for u in utts], [h for k in given for h in scores[k]["hyps"]],
            [w for k in given for w in scores[k]["given"]], [len(clean_list(w)) for k in given for w in given[k]])


def filter_hypotheses(cfg: Stage4Config, model: SpeechLM, test: list[Utterance], cache=None) -> tuple:
    """The projector's transcripts (for ``match="ctc"``: its spotted posteriors) the list filter matches against,
    and their seconds; ``(None, 0)`` when the filter is off (``cfg.evaluation.filter.keep`` 0)."""
    if cfg.evaluation.filter.keep <= 0:
        return None, 0.0
    t0 = time.perf_counter()
    read = projector_spotted if cfg.evaluation.filter.match == "ctc" else projector_texts
    return read(model, test, cache), time.perf_counter() - t0


def spotted_for_place(cfg: Stage4Config, model: SpeechLM, test: list[Utterance], cache=None,
                      hyps: list | None = None) -> tuple[list | None, float]:
    """The `Spotted` utterances the placing step needs and their seconds: the list filter's when it spotted them
    already (`hyps`), else one projector pass; ``(None, 0)`` when placing is off."""
    if cfg.evaluation.place.min_similarity <= 0:
        return None, 0.0
    if hyps and isinstance(hyps[0], Spotted):
        return hyps, 0.0
    t0 = time.perf_counter()
    return projector_spotted(model, test, cache), time.perf_counter() - t0


def _kept_share(given: list, truth: list) -> float | None:
    """Share of the utterances' own keywords that are still in their filtered lists."""
    pairs = [(k.lower(), {w.lower() for w in (g or [])}) for g, t in zip(given, truth) for k in t]
    return sum(k in g for k, g in pairs) / len(pairs) if pairs else None


def whisper_prompts(cfg: Stage4Config, lists: dict, tokenizer, n: int) -> dict[object, tuple[list, int, list]]:
    """Each condition's lists as the Whisper peer takes them: key -> (given, cut, prompts). Lists over Whisper's 223
    prompt tokens are cut from their end (``cut`` counts them: the peer's own limit, no warning); ``prompts`` are
    the context lines, None where there is no list (a condition without lists: `n` Nones)."""
    from speechlm_lib.decoding.whisper import WHISPER_PROMPT_MAX

    out = {}
    for key, given in lists.items():
        given, cut = fitted_lists(given, tokenizer, WHISPER_PROMPT_MAX - 2, "truncate", cfg.ict.template,
                                  warn=False) if given else ([None] * n, 0)
        out[key] = (given, cut, [context_text(w, cfg.ict.template) if w else None for w in given])
    return out


def whisper_biasing(cfg: Stage4Config, test: list[Utterance], lists: dict, whisper=None, processor=None,
                    known: set[str] | None = None) -> dict:
    """The peer: Whisper given each list as its prompt (the same context line), one clip at a time in every
    condition (no context included, so latencies compare; each clip is encoded once for all conditions, and that
    encoding counts in every condition's seconds: `whisper_transcribe_prompted`). Lists over Whisper's 223 prompt
    tokens are cut from their end and counted in ``lists_cut`` (the peer's own limit, shown in every table; no
    warning).
    With ``cfg.evaluation.snap`` on, its answers are snapped to the same lists as the speech-LLM's
    (``before_snap``, ``swaps`` as in `evaluate_biasing`)."""
    from speechlm_lib.data.audio import load_audio
    from speechlm_lib.decoding.whisper import whisper_transcribe_prompted
    from speechlm_lib.models.sources import load_whisper

    if whisper is None:
        whisper, processor = load_whisper(cfg.evaluation.whisper_source, dtype=cfg.evaluation.whisper_dtype)
    waves = [load_audio(u.audio) for u in test]
    audio = sum(u.duration for u in test)
    truth, out = [clean_list(u.keywords) for u in test], {}
    fitted = whisper_prompts(cfg, lists, processor.tokenizer, len(test))
    decoded = whisper_transcribe_prompted(  # each clip encoded once for every condition (timed into each)
        whisper, processor, waves, {key: prompts for key, (_, _, prompts) in fitted.items()},
        max_new_tokens=cfg.evaluation.whisper_max_new_tokens)
    for key, (given, cut, _) in fitted.items():
        raw, seconds = decoded[key]
        scores = snapped_scores(cfg, test, raw, given, lists[key] if lists[key] else truth, known)
        del scores["snap_seconds"]
        scores.update(seconds=seconds, seconds_per_utt=seconds / max(1, len(test)), rtf=seconds / max(audio, 1e-9),
                      lists_cut=cut)
        out[key] = scores
    return out


def table(results: dict) -> list[dict]:
    """Rows for a table: one per condition, the headline scores (hyps left out)."""
    keep = ("wer", "u_wer", "b_wer", "precision", "recall", "f1", "false_alarms", "seconds_per_utt",
            "prompt_tokens", "lists_cut")
    return [{"N": key, **{k: v[k] for k in keep if k in v}} for key, v in results.items()]
