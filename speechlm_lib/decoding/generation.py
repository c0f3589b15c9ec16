"""Decoding for the speech-LLM: batched greedy / beam search with a KV cache.

Hugging Face `generate` takes the spliced prompt as ``inputs_embeds``. In
transformers 5 (`generation/utils.py`) a decoder-only model then

* starts `input_ids` empty and returns **only the new tokens**;
* uses the embeddings for the first (prefill) step only, and forces
  ``use_cache=True`` so later steps feed one new token against the KV cache;
* derives position ids from the attention mask (``cumsum - 1``), so prompts
  must be **left**-padded (`SpeechLM.assemble(padding_side="left")`);
* sizes the cache for ``prompt length + max_new_tokens``;
* given ``past_key_values`` for the first positions, prefills only the rest --
  the prompt prefix every row shares runs once (`_prompt_inputs`).

With a projector that guesses LLM tokens itself (the ``ctc`` projector's best path),
greedy decoding checks those guesses several tokens per LLM pass instead of running one
pass per token (`speculative`, `DecodeConfig.draft`): the same transcripts, fewer passes
(but for answers that run on far past the draft: `DecodeConfig.draft_slack`).

Decoding always ends: ``max_new_tokens = min(cap, ceil(a * seconds + b))``
(`token_budget`) for the longest clip of the batch, and each row is held to
its own clip's budget, besides the end-of-turn / EOS stop ids. With a draft, a row is
also held to the draft's length plus `DecodeConfig.draft_slack`. Digital silence (peak below `silence_peak`) gets an
empty transcript without decoding; a bad input (files and in-memory waves pass the same `audio` checks) gets "" and is
named in `Transcription.skipped`, and the rest are transcribed.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from speechlm_lib.data.audio import SAMPLE_RATE, AudioError, check_wave, load_audio
from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.data.speechlm_dataset import pad_ids
from speechlm_lib.decoding.repetition import cut_repetitions, loop_closed
from speechlm_lib.decoding.speculative import Prompts, speculative_greedy, speculative_stream
from speechlm_lib.models.encoders import pad_last
from speechlm_lib.models.kv import CACHE_KW
from speechlm_lib.models.lora import adapters_merged


@dataclass
class DecodeConfig:
    """How transcripts are decoded."""

    num_beams: int = 1  # 1 = greedy; >1 = beam search
    tokens_per_second: float = 8.0  # `a` in the budget a * seconds + b (speech is ~3-4 tokens/s)
    extra_tokens: int = 16  # `b` in the budget
    max_new_tokens: int = 256  # hard cap on the budget
    batch_size: int = 8  # utterances decoded together (sorted by duration)
    silence_peak: float = 1e-4  # a clip whose peak |sample| is below this is silent -> ""
    stop_at_newline: bool = True  # a newline also ends a transcript (answers are one line)
    draft: bool = True  # greedy only: check the projector's own token guesses several per LLM pass
    #                     (`speculative`; the greedy transcripts in fewer passes; projectors without guesses skip it)
    draft_block: int = 32  # most drafted tokens checked per row and pass
    draft_slack: int | None = 8  # with a draft, a row also stops at len(draft) + this many tokens: an answer
    #   that far past what the projector heard is the LLM running on (on 200 cpu test utterances the
    #   answers ran at most 6 past their draft, but for one that counted years to its audio budget);
    #   None = the audio budget alone, exactly the greedy transcripts
    max_repeats: int = 3  # repetition guard: an answer is cut after the 3rd copy of an n-gram that runs more times in
    #   a row, and with a draft its row stops as soon as that cut is fixed (`decoding.repetition`); 0 = off
    max_ngram: int = 4  # the longest n-gram (in words) the repetition guard checks
    refill_at: int = 0  # with a draft: once this many of the `batch_size` rows decoding together have finished,
    #   the next utterances are prefilled and join them (`speculative_stream`), so no pass runs for a few
    #   stragglers; 0 = each batch of `batch_size` runs to its slowest row
    merge_adapters: bool = True  # LoRA adapters folded into the weights while decoding (`models.lora.adapters_merged`):
    #   the same greedy answers in float32 (in bf16 the merged weights round differently), fewer ops a pass


def token_budget(seconds: float, cfg: DecodeConfig) -> int:
    """Most new tokens allowed for a clip of `seconds` (always >= 1)."""
    return max(1, min(cfg.max_new_tokens, math.ceil(cfg.tokens_per_second * seconds + cfg.extra_tokens)))


@dataclass
class Transcription:
    """Texts (input order) and how long they took."""

    texts: list[str]  # one transcript per input
    token_ids: list[list[int]] = field(default_factory=list)  # generated ids (stop / pad ids removed)
    seconds: float = 0.0  # wall time from waveforms to texts (features, encoder, projector, LLM)
    audio_seconds: float = 0.0  # total duration of the inputs
    truncated: int = 0  # transcripts that ended without an end token: the token budget, or a loop stopped
    looped: int = 0  # transcripts the repetition guard cut (`DecodeConfig.max_repeats`)
    passes: int = 0  # LLM passes of the draft-checking decoding (`speculative`; 0 without a draft)
    skipped: Report = field(default_factory=Report)  # bad inputs (text ""), each named with the problem

    @property
    def rtf(self) -> float:
        """Real-time factor: compute seconds per second of audio (lower is faster)."""
        return self.seconds / max(self.audio_seconds, 1e-9)


@torch.no_grad()
def generate(model, batch: dict, cfg: DecodeConfig | None = None) -> tuple[list[list[int]], int]:
    """Decode one collated batch (prompt ids + features or states, no targets).

    Returns the new token ids per row (stop and pad ids removed) and the count of
    rows that hit the token budget.
    """
    return _generate(model, batch, cfg or DecodeConfig())[:2]


def _generate(model, batch: dict, cfg: DecodeConfig, stop=None) -> tuple[list[list[int]], int, int]:
    """`generate`, plus the LLM passes the draft-checking decoding ran (0 for Hugging Face's own); `stop` as in
    `speculative_greedy` (`transcribe` passes the repetition guard's)."""
    drafted, plain = _prepare(model, batch, cfg)
    if drafted is None:
        return (*_plain(model, cfg, *plain, stop=stop), 0)
    return speculative_greedy(model.llm, drafted.embeds, drafted.mask, drafted.cache, drafted.drafts,
                              drafted.budgets, model.prompts.stops(newline=cfg.stop_at_newline),
                              model.prompts.pad_id, cfg.draft_block, stop=stop)


def _prepare(model, batch: dict, cfg: DecodeConfig, keys: list | None = None):
    """Encode a batch and assemble its prompts: ``(Prompts, None)`` for draft-checking decoding
    (`speculative`), or ``(None, (embeds, mask, cache keywords, budgets))`` for `generate`'s own."""
    inputs = [batch.get(k) for k in ("features", "feature_lengths", "states", "state_lengths")]
    if cfg.draft and cfg.num_beams == 1:
        audio, audio_lengths, guesses = model.audio_embeddings_and_guesses(*inputs)
    else:
        (audio, audio_lengths), guesses = model.audio_embeddings(*inputs), None
    embeds, mask, kv = _prompt_inputs(model, batch, audio, audio_lengths, cfg.num_beams)
    if "meta" in batch:
        seconds = list(batch["meta"]["seconds"])
    else:
        seconds = (audio_lengths.float() / model.token_rate).tolist()
    budgets = [token_budget(s, cfg) for s in seconds]
    if guesses is None:
        return None, (embeds, mask, kv, budgets)
    drafts = [g + [model.prompts.end_id] for g in guesses]
    if cfg.draft_slack is not None:
        budgets = [max(1, min(b, len(g) + cfg.draft_slack)) for b, g in zip(budgets, guesses)]
    return Prompts(embeds, mask, kv.get(CACHE_KW), drafts, budgets, keys or []), None


def _plain(model, cfg: DecodeConfig, embeds, mask, kv: dict, budgets: list[int],
           stop=None) -> tuple[list[list[int]], int]:
    """Hugging Face `generate` (greedy or beam search), each row held to its own budget; with `stop` (greedy
    only), a row also ends once it holds (`_RowStop`)."""
    stops = model.prompts.stops(newline=cfg.stop_at_newline)
    early = _RowStop(stop) if stop is not None and cfg.num_beams == 1 else None
    out = model.llm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max(budgets),
                             num_beams=cfg.num_beams, do_sample=False, eos_token_id=stops,
                             pad_token_id=model.prompts.pad_id, use_cache=True,
                             stopping_criteria=StoppingCriteriaList([early] if early else []), **kv)
    rows, truncated = [], 0
    for i, (row, budget) in enumerate(zip(out.tolist(), budgets)):
        row = row[:budget]  # the batch ran to its longest clip's budget; hold each row to its own
        ended = next((j for j, t in enumerate(row) if t in stops), None)
        if early is not None and i in early.lengths and (ended is None or ended >= early.lengths[i]):
            ended = early.lengths[i]  # stopped early (cut short, like a row at its budget): padding follows
            truncated += 1
        else:
            truncated += ended is None
        rows.append(row[:ended] if ended is not None else row)
    return rows, truncated


class _RowStop(StoppingCriteria):
    """For `generate`: a row is done once ``stop(its new ids)`` holds; `lengths` keeps how many it had then."""

    def __init__(self, stop):
        self.stop, self.start, self.lengths = stop, None, {}

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if self.start is None:  # the first call sees one new token after whatever `generate` calls the prompt
            self.start = input_ids.shape[1] - 1
        for i, row in enumerate(input_ids[:, self.start:].tolist()):
            if i not in self.lengths and self.stop(row):
                self.lengths[i] = len(row)
        return torch.tensor([i in self.lengths for i in range(input_ids.shape[0])], device=input_ids.device)


def _prompt_inputs(model, batch: dict, audio, audio_lengths, num_beams: int):
    """Left-padded ``inputs_embeds (batch, seq, dim)``, ``attention_mask`` and extra `generate` keywords.

    The prefix ids every row begins with (the chat template, system message, demonstrations; with per-row
    keyword lists, what comes before the list) are not run per row: the rows are
    ``pad | rest of their prefix | audio | suffix`` after that shared part, whose
    keys/values come from `SpeechLM.prefix_kv` as the cache keyword (`kv.CACHE_KW`). `generate` then
    prefills only the uncached tail; positions follow the mask (``cumsum - 1``), so the
    padding between prefix and audio is skipped like left padding.
    """
    pre_ids, pre_lengths = batch["prefix_ids"], batch["prefix_lengths"]
    shared = model.shared_prefix(pre_ids, pre_lengths, for_training=False)
    if shared is None:
        embeds, mask, _, _ = model.assemble(audio, audio_lengths, pre_ids, pre_lengths, batch["suffix_ids"],
                                            batch["suffix_lengths"], padding_side="left")
        return embeds, mask, {}
    n = len(shared)  # each row's own rest of the prefix (a keyword list) stays in the row
    embeds, mask, _, _ = model.assemble(audio, audio_lengths, pre_ids[:, n:], pre_lengths - n,
                                        batch["suffix_ids"], batch["suffix_lengths"], padding_side="left")
    b = embeds.shape[0]
    prefix = model.llm.get_input_embeddings()(pre_ids[:1, :n]).expand(b, -1, -1)  # sliced off by generate
    return (torch.cat([prefix.to(embeds.dtype), embeds], 1), torch.cat([mask.new_ones((b, n)), mask], 1),
            {CACHE_KW: model.prefix_kv(shared, b * num_beams)})


def _load(item, max_seconds: float | None) -> tuple[str, torch.Tensor]:
    """An Utterance, a path, or a ``(name, wave)`` pair -> (name, wave ``(samples,)``).

    Files go through `audio.load_audio`, in-memory waves through `audio.check_wave` (the same
    checks); a bad item raises `AudioError` naming it and the problem."""
    if isinstance(item, Utterance):
        return item.audio, load_audio(item.audio, max_seconds=max_seconds)
    if isinstance(item, tuple):
        name, wave = item
        return str(name), check_wave(wave, str(name), max_seconds)
    return str(item), load_audio(item, max_seconds=max_seconds)


@torch.no_grad()
def transcribe(model, items: list, cfg: DecodeConfig | None = None, instruction: str | list[str] | None = None,
               cache=None, progress: bool = True) -> Transcription:
    """Transcribe utterances / paths / ``(name, wave)`` pairs with `model` (a `SpeechLM`).

    `instruction`: one for every item, or a list with one per item (stage 4's keyword lists differ per
    utterance; rows whose prompts differ before the audio then run their own prefix, not a shared one).

    A bad item (unreadable, too short or too long, NaN samples) does not stop the others: its
    text stays "" and ``result.skipped`` names it and the problem; when every item is bad,
    `AudioError` names the (first) one. With a `FeatureCache`, a
    batch whose clips are all cached skips the encoder.
    """
    cfg = cfg or DecodeConfig()
    model.eval()
    enc, prompts = model.encoder, model.prompts
    skipped = Report()
    loaded = [_load_or_skip(x, enc.max_seconds, skipped) for x in items]
    if items and not skipped.kept:  # nothing usable: an error naming the (first) bad input
        reason = skipped.skipped[0][1]
        raise AudioError(reason if len(items) == 1 else f"all {len(items)} inputs are bad; the first: {reason}")
    if isinstance(instruction, (list, tuple)):
        if len(instruction) != len(items):
            raise ValueError(f"{len(instruction)} instructions for {len(items)} items")
        row_prompts = [prompts.prompt(x) for x in instruction]
    else:
        row_prompts = [prompts.prompt(instruction)] * len(items)
    order = sorted((i for i, x in enumerate(loaded) if x is not None), key=lambda i: -loaded[i][1].shape[-1])
    texts, ids = [""] * len(loaded), [[] for _ in loaded]
    result = Transcription(texts=texts, token_ids=ids, skipped=skipped)
    t0 = time.perf_counter()
    batches = [[i for i in order[start: start + cfg.batch_size] if loaded[i][1].abs().max() >= cfg.silence_peak]
               for start in range(0, len(order), cfg.batch_size)]  # silent clips stay ""
    batches = [idx for idx in batches if idx]
    with (adapters_merged(model) if cfg.merge_adapters else nullcontext()):
        if cfg.refill_at > 0 and cfg.draft and cfg.num_beams == 1:
            _refilled(model, batches, loaded, row_prompts, cache, cfg, result, progress)
        else:
            _batch_after_batch(model, batches, loaded, row_prompts, cache, cfg, result, progress)
    _cut_loops(texts, cfg, result)
    result.seconds = time.perf_counter() - t0
    result.audio_seconds = sum(x[1].shape[-1] for x in loaded if x is not None) / SAMPLE_RATE
    return result


def _batch_after_batch(model, batches: list[list[int]], loaded: list, row_prompts: list, cache, cfg: DecodeConfig,
                       result: Transcription, progress: bool) -> None:
    """`transcribe`'s batches one after another, each run to its slowest row."""
    for idx in tqdm(batches, desc="decode", disable=not progress):
        rows, truncated, passes = _generate(model, _batch(model, [loaded[i] for i in idx],
                                                          [row_prompts[i] for i in idx], cache), cfg,
                                            stop=_loop_stop(model, cfg))
        result.truncated, result.passes = result.truncated + truncated, result.passes + passes
        for i, row in zip(idx, rows):
            result.token_ids[i], result.texts[i] = row, model.prompts.decode(row)


def _refilled(model, batches: list[list[int]], loaded: list, row_prompts: list, cache, cfg: DecodeConfig,
              result: Transcription, progress: bool) -> None:
    """`transcribe`'s batches through `speculative_stream`: rows join as others finish (`DecodeConfig.refill_at`).
    A batch the projector made no guesses for is decoded by `generate`'s own path when it comes up."""
    def answer(i, row, truncated):
        result.token_ids[i], result.texts[i] = row, model.prompts.decode(row)
        result.truncated += truncated
        bar.update(1)

    def prepared():
        for idx in batches:
            batch = _batch(model, [loaded[i] for i in idx], [row_prompts[i] for i in idx], cache)
            drafted, plain = _prepare(model, batch, cfg, keys=idx)
            if drafted is not None:
                yield drafted
                continue
            rows, truncated = _plain(model, cfg, *plain, stop=_loop_stop(model, cfg))
            result.truncated += truncated
            for i, row in zip(idx, rows):
                answer(i, row, 0)

    stats = {}
    with tqdm(total=sum(map(len, batches)), desc="decode", disable=not progress) as bar:
        for i, row, truncated in speculative_stream(model.llm, prepared(), model.prompts.stops(
                newline=cfg.stop_at_newline), model.prompts.pad_id, cfg.draft_block, slots=cfg.batch_size,
                refill_at=cfg.refill_at, stats=stats, stop=_loop_stop(model, cfg)):
            answer(i, row, int(truncated))
    result.passes = stats["passes"]


def _loop_stop(model, cfg: DecodeConfig):
    """The repetition guard as a row stop for `speculative_stream`: True once the row's text holds a loop whose
    cut more tokens cannot move (`repetition.loop_closed`); None when the guard is off."""
    if cfg.max_repeats <= 0:
        return None
    return lambda ids: loop_closed(model.prompts.decode(ids), cfg.max_ngram, cfg.max_repeats)


def _cut_loops(texts: list[str], cfg: DecodeConfig, result: Transcription) -> None:
    """The repetition guard on finished transcripts, in place: each cut after its loop's `max_repeats`-th copy."""
    if cfg.max_repeats <= 0:
        return
    for i, text in enumerate(texts):
        cut = cut_repetitions(text, cfg.max_ngram, cfg.max_repeats)
        result.looped += cut != text
        texts[i] = cut


def _load_or_skip(item, max_seconds: float | None, skipped: Report):
    """`_load`, or None with the item named in `skipped` (counted in ``skipped.kept`` otherwise)."""
    try:
        out = _load(item, max_seconds)
    except AudioError as e:
        skipped.skip(str(item[0] if isinstance(item, tuple) else getattr(item, "id", item)), str(e))
        return None
    skipped.kept += 1
    return out


def _batch(model, named_waves: list, prompts: list, cache) -> dict:
    """Collate waves into a generation batch (features, or cached states) on the model's device, one
    `Prompt` a wave."""
    enc = model.encoder
    device = next(model.projector.parameters()).device
    batch = {"meta": {"seconds": [w.shape[-1] / SAMPLE_RATE for _, w in named_waves]}}
    cached = [_cached(cache, name, w) for name, w in named_waves] if cache is not None else None
    if cached is not None and all(s is not None for s in cached):
        states, lengths = pad_last([s.T for s in cached])
        batch.update(states=states.transpose(1, 2).to(device), state_lengths=lengths.to(device))
    else:
        feats, lengths = enc.collate([enc.featurize(w) for _, w in named_waves])
        batch.update(features=feats.to(device), feature_lengths=lengths.to(device))
    for key in ("prefix", "suffix"):
        padded, lengths = pad_ids([getattr(p, key) for p in prompts], model.prompts.pad_id)
        batch[f"{key}_ids"], batch[f"{key}_lengths"] = padded.to(device), lengths.to(device)
    return batch


def _cached(cache, name: str, wave: torch.Tensor):
    """Cached states keyed like training keys them: by the file when `name` is one, else by the samples."""
    return cache.get(name) if Path(name).is_file() else cache.get(wave)
