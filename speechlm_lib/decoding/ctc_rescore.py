"""The LLM as a second opinion on what the CTC projector heard: n-best rescoring.

The speech-LLM reads the projector's *best path* as hard tokens, so every alternative the projector weighed and
dropped is gone before the LLM runs; on real speech the fine-tuned LLM copies those tokens (45.8 % WER against
the projector's 46.1 %, docs/real_speech_findings.md). Rescoring keeps the alternatives:

1. **CTC prefix beam search** (`ctc_prefix_beam`) over the projector's posteriors returns the `beam` most
   probable label sequences, each with its CTC log-probability (all the paths that collapse to it, summed).
2. **The LLM scores each candidate** -- as a language model, adapters off, after a text-only prompt
   (`text_logprobs`: which sentence reads like the training transcripts listed before it?), and/or as the
   speech-LLM itself, the candidate as its answer to the audio (`speech_logprobs`: which did the model hear?).
3. **A weighted sum picks one**: ``ctc + lm_weight * lm + speech_weight * speech + length_bonus * tokens``
   (the classic CTC + LM combination, Hannun et al. 2014; the hybrid CTC/attention rescoring of ESPnet).
   The weights are chosen on dev (`choose_weights`), never on test.

On speechocean762's held-out speakers this takes the projector's 46.1 % WER to 41.6 % (Whisper tiny.en: 39.4 %;
`benchmarks/bench_rescore.py`). A perfect choice among the same 16 candidates would be near 33 %: the candidates
are there, and a 135 M LLM cannot tell them apart.

Shapes: posteriors ``(frames, V + 1)`` (blank = 0; class ``c`` is the LLM token ``vocab[c - 1]``), candidates
are lists of LLM token ids.
"""
from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field, replace

import torch

from speechlm_lib.config import StageConfig
from speechlm_lib.models.kv import CACHE_KW, cache_layers, cache_of, expand_rows
from speechlm_lib.models.lora import adapters_off

NEG = float("-inf")


@dataclass
class RescoreConfig(StageConfig):
    """How many candidates, and how their scores are weighed (``override(["beam=32"])`` like a stage's config)."""

    beam: int = 16  # label sequences kept by the prefix beam search: the n-best the LLM scores
    top_k: int = 6  # candidate labels per frame (the most probable ones)
    blank_skip: float = 0.999  # frames at least this sure of blank extend no prefix (speed; exact enough)
    # the weights: defaults are what the dev speakers of speechocean762 chose for the reference run
    # (runs/cpu/results.json, real_speech_rescore); `choose_weights` finds them for another model or corpus
    lm_weight: float = 1.3  # weight of the text LLM's log-probability (adapters off, `lm_prompt`)
    speech_weight: float = 0.0  # weight of the speech-LLM's log-probability of the candidate given the audio
    length_bonus: float = 8.0  # added per token: an LM's log-probability otherwise favours short candidates
    lm_prompt: str = "Sentences read aloud by learners of English:"  # the text line before the examples
    examples: list = field(default_factory=list)  # training transcripts listed after `lm_prompt`, one a line
    #   (the benchmark puts 5 there): the LLM scores each candidate as the next line of that list
    grid: dict = field(default_factory=lambda: {"lm_weight": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.3, 1.6],
                                                 "speech_weight": [0.0, 0.1, 0.3],
                                                 "length_bonus": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]})
    #   the weights `choose_weights` tries on dev


def _logadd(a: float, b: float) -> float:
    if a == NEG:
        return b
    if b == NEG:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def ctc_prefix_beam(logp: torch.Tensor, beam: int = 16, top_k: int = 6,
                    blank_skip: float = 0.999) -> list[tuple[tuple[int, ...], float]]:
    """The `beam` best label sequences of one utterance's CTC log-posteriors ``(frames, V + 1)`` (blank = 0),
    best first, each with its log-probability summed over every path that collapses to it. Per frame only the
    `top_k` likeliest labels extend a prefix; a frame with P(blank) >= `blank_skip` extends none."""
    logp = logp.float()
    rows = logp.tolist()
    top = logp[:, 1:].topk(min(top_k, logp.shape[1] - 1), dim=-1).indices.add(1).tolist()
    skip = (logp[:, 0] >= math.log(blank_skip)).tolist()
    beams = {(): (0.0, NEG)}  # prefix -> (log P ending in blank, log P ending in a label)
    for t, row in enumerate(rows):
        new = defaultdict(lambda: [NEG, NEG])
        for prefix, (pb, pl) in beams.items():
            total = _logadd(pb, pl)
            stay = new[prefix]
            stay[0] = _logadd(stay[0], total + row[0])
            if prefix:  # the last label repeated: still the same prefix
                stay[1] = _logadd(stay[1], pl + row[prefix[-1]])
            if skip[t]:
                continue
            for c in top[t]:
                grown = new[prefix + (c,)]
                # a repeat of the last label is a new token only after a blank
                from_ = pb if prefix and c == prefix[-1] else total
                grown[1] = _logadd(grown[1], from_ + row[c])
        ranked = sorted(((p, s) for p, s in new.items() if _logadd(*s) > NEG), key=lambda kv: -_logadd(*kv[1]))
        ranked = ranked[:beam]  # (a repeat with no blank before it is impossible: -inf, dropped)
        beams = {p: tuple(s) for p, s in ranked}
    return [(p, _logadd(*s)) for p, s in beams.items()]


def merge_spellings(nbest: list[tuple[list[int], float]], prompts) -> list[tuple[list[int], float]]:
    """Candidates that spell the same text in different pieces ("Ġbig" + "ger" and "Ġbigger": a projector
    trained with piece dropout writes both) become one, in the LLM tokenizer's own pieces, their CTC
    probabilities summed; best first. `prompts`: the model's `PromptBuilder`."""
    merged: dict[tuple[int, ...], float] = {}
    for ids, score in nbest:
        key = tuple(prompts.target(prompts.decode(ids))[:-1])
        merged[key] = _logadd(merged.get(key, NEG), score)
    return sorted(((list(k), v) for k, v in merged.items()), key=lambda kv: -kv[1])


def _row_logprobs(llm, ids: torch.Tensor, mask: torch.Tensor, scored: torch.Tensor, **kw) -> torch.Tensor:
    """Sum of log P(token) over the positions `scored` marks, per row. `ids`/`mask`/`scored`: ``(rows, seq)``;
    ``scored[:, t]`` means token t is scored (predicted from position t - 1); `kw` may carry inputs_embeds."""
    kw.setdefault("use_cache", CACHE_KW in kw)
    hidden = llm.get_decoder()(input_ids=None if "inputs_embeds" in kw else ids, attention_mask=mask,
                               **kw).last_hidden_state
    keep = scored[:, 1:]
    logits = llm.get_output_embeddings()(hidden[:, :-1][keep]).float().log_softmax(-1)
    gold = ids[:, 1:][keep]
    token_lp = logits.gather(1, gold.unsqueeze(1)).squeeze(1)
    row = keep.nonzero()[:, 0]
    return torch.zeros(ids.shape[0]).index_add(0, row.cpu(), token_lp.cpu())


def _rows(prompt: list[int], candidates: list[list[int]], end: int, pad: int, device):
    """Right-padded ``prompt + candidate + [end]`` rows: ids, attention mask, scored mask ``(rows, seq)``."""
    seqs = [prompt + list(c) + [end] for c in candidates]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = True
    scored = mask.clone()
    scored[:, :len(prompt)] = False
    return ids.to(device), mask.long().to(device), scored.to(device)


def lm_context(cfg: RescoreConfig) -> str:
    """The plain text the LLM reads before each candidate: the header line, then the example sentences one a
    line (each candidate then ends with a newline, as they do)."""
    return cfg.lm_prompt + "\n" + "".join(f"{t.strip()}\n" for t in cfg.examples)


@torch.no_grad()
def text_logprobs(model, candidates: list[list[int]], context: str) -> torch.Tensor:
    """log P(candidate + newline | `context`) under the LLM with its adapters off, ``(rows,)``: how plausible
    each sentence is as the next line of `context`, its sound unheard. The context runs once, as a cache
    kept between calls."""
    pb = model.prompts
    tok = pb.tokenizer
    head = pb._encode(context)
    if not pb.chat and pb._adds_bos():
        head = [tok.bos_token_id] + head
    texts = [t.strip() for t in tok.batch_decode(candidates, skip_special_tokens=True)]
    rows = tok(texts, add_special_tokens=False)["input_ids"]  # re-encoded after a newline, as the context's lines
    newline = pb.newline_id if pb.newline_id is not None else pb.end_id
    device = model.llm.get_input_embeddings().weight.device
    with adapters_off(model):
        return _scored_after(model.llm, head, rows, newline, pb.pad_id, device)


_HEAD: dict = {}  # the last context's key -> (log P of the next token, its keys/values): one entry


def _head(llm, head: list[int], device):
    """The LLM run over `head` once: log P of the token after it ``(vocab,)`` and the per-layer keys/values,
    kept while the head, the device and the weights (their in-place version) stay the same."""
    key = (id(llm), tuple(head), str(device), sum(p._version for p in llm.parameters()))
    if key not in _HEAD:
        out = llm.get_decoder()(input_ids=torch.tensor([head], device=device), use_cache=True)
        first = llm.get_output_embeddings()(out.last_hidden_state[:, -1]).float().log_softmax(-1)[0]
        _HEAD.clear()
        _HEAD[key] = (first, cache_layers(cache_of(out)))
    return _HEAD[key]


def _scored_after(llm, head: list[int], rows: list[list[int]], end: int, pad: int, device) -> torch.Tensor:
    """Sum of log P over each row's tokens + `end`, after the shared `head` (`_head`: its last position
    predicts each row's first token). ``(rows,)``."""
    first, layers = _head(llm, head, device)
    ids, mask, scored = _rows([], rows, end, pad, device)
    n, h = ids.shape[0], len(head)
    cache = expand_rows(layers, n, llm.config)
    full_mask = torch.cat([mask.new_ones((n, h)), mask], dim=1)
    rest = _row_logprobs(llm, ids, full_mask, scored, position_ids=torch.arange(h, h + ids.shape[1],
                         device=device).expand(n, -1), **{CACHE_KW: cache})
    return rest + first[ids[:, 0]].cpu()


@torch.no_grad()
def speech_logprobs(model, audio: torch.Tensor, candidates: list[list[int]], instruction: str | None = None):
    """log P(candidate + end of turn | prompt, audio) under the speech-LLM (adapters on), ``(rows,)``.
    `audio`: one utterance's projected tokens ``(tokens, llm_dim)``."""
    p = model.prompts.prompt(instruction)
    device = audio.device
    n = len(candidates)
    ids, mask, scored = _rows([], candidates, model.prompts.end_id, model.prompts.pad_id, device)
    lengths = mask.sum(1)
    ones = torch.ones(n, dtype=torch.long, device=device)
    embeds, att, _, labels = model.assemble(
        audio.unsqueeze(0).expand(n, -1, -1), ones * audio.shape[0],
        torch.tensor([p.prefix] * n, device=device), ones * len(p.prefix),
        torch.tensor([p.suffix] * n, device=device), ones * len(p.suffix), ids, lengths, padding_side="right")
    full = labels.clamp(min=0)
    return _row_logprobs(model.llm, full, att, labels >= 0, inputs_embeds=embeds)


def combine(scores: dict[str, torch.Tensor], cfg: RescoreConfig) -> torch.Tensor:
    """The weighted sum of `scores` (``ctc``, ``lm``, ``speech``, ``tokens``; each ``(rows,)``)."""
    total = scores["ctc"] + cfg.length_bonus * scores["tokens"]
    if cfg.lm_weight:
        total = total + cfg.lm_weight * scores["lm"]
    if cfg.speech_weight:
        total = total + cfg.speech_weight * scores["speech"]
    return total


def choose_weights(tables: list[dict], refs: list[str], decode, cfg: RescoreConfig, metric) -> tuple[dict, list]:
    """The weights of ``cfg.grid`` with the lowest `metric(refs, hyps)` on dev. `tables`: `nbest_scores`'
    output per utterance; `decode`: token ids -> text. Returns ``(best weights, [(weights, value), ...])``."""
    keys = list(cfg.grid)
    tried = []
    for values in itertools.product(*(cfg.grid[k] for k in keys)):
        weights = dict(zip(keys, values))
        hyps = [decode(c) for c in rescored(tables, replace(cfg, **weights))]
        tried.append((weights, metric(refs, hyps)))
    best = min(tried, key=lambda wv: (wv[1], sum(wv[0].values())))  # a tie: the smaller weights
    return best[0], tried


@torch.no_grad()
def nbest_scores(model, states: torch.Tensor, lengths: torch.Tensor, cfg: RescoreConfig,
                 instruction: str | None = None) -> list[dict]:
    """Each utterance's n-best and its scores: ``{"candidates": [token ids, ...], "scores": {"ctc", "lm",
    "speech", "tokens"}}`` (each ``(rows,)``; ``lm`` / ``speech`` only when their weight, or the grid, uses
    them). `states`: the encoder's output ``(batch, frames, enc_dim)`` and its lengths."""
    proj = model.projector
    if not hasattr(proj, "logits"):
        raise ValueError(f"rescoring needs the 'ctc' projector's posteriors, not {type(proj).__name__}")
    x = states.to(next(proj.parameters()).dtype)
    logits, n = proj.logits(x, lengths)
    logp = logits.float().log_softmax(-1)
    vocab = proj.vocab.tolist()
    wants = {k: getattr(cfg, f"{k}_weight") or any(cfg.grid.get(f"{k}_weight", [0])) for k in ("lm", "speech")}
    if wants["speech"]:  # what the speech-LLM reads: the projector's tokens (a second projector pass)
        audio, audio_n = proj(x, lengths)
        audio = audio.to(model.llm.get_input_embeddings().weight.dtype)
    out = []
    for i, frames in enumerate(n.tolist()):
        nbest = ctc_prefix_beam(logp[i, :frames], cfg.beam, cfg.top_k, cfg.blank_skip)
        nbest = merge_spellings([([vocab[c - 1] for c in labels], s) for labels, s in nbest], model.prompts)
        cands = [ids for ids, _ in nbest]
        scores = {"ctc": torch.tensor([s for _, s in nbest]), "tokens": torch.tensor([float(len(c)) for c in cands])}
        if wants["speech"]:
            scores["speech"] = speech_logprobs(model, audio[i, :int(audio_n[i])], cands, instruction)
        out.append({"candidates": cands, "scores": scores})
    if wants["lm"]:  # every utterance's candidates in one call of the LLM
        lm = text_logprobs(model, [c for t in out for c in t["candidates"]], lm_context(cfg))
        for t, part in zip(out, lm.split([len(t["candidates"]) for t in out])):
            t["scores"]["lm"] = part
    return out


def rescored(tables: list[dict], cfg: RescoreConfig) -> list[list[int]]:
    """The chosen candidate of each utterance's table under `cfg`'s weights."""
    return [t["candidates"][int(combine(t["scores"], cfg).argmax())] for t in tables]


@torch.no_grad()
def rescore_waves(model, waves: list[torch.Tensor], cfg: RescoreConfig, instruction: str | None = None) -> list[str]:
    """Transcripts of one batch of 16 kHz waveforms ``(samples,)``: each one's n-best rescored with `cfg`'s
    weights (the grid is not searched). What the ``rescored`` evaluation system and ``speechlm transcribe
    --rescore`` decode with."""
    states, n = model.encode_waves(waves)
    cfg = replace(cfg, grid={})  # score only what the weights use
    return [model.prompts.decode(ids) for ids in rescored(nbest_scores(model, states, n, cfg, instruction), cfg)]
