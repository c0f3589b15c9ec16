"""Greedy decoding that checks a guessed continuation in one LLM pass (speculative decoding).

Plain greedy decoding runs the LLM once per new token. A speech-LLM whose projector
already names LLM tokens -- the ``ctc`` projector's best path -- mostly *copies* them,
so those tokens make a good guess (a *draft*) of what it will write. Each pass here
feeds a row's next token followed by up to `block` drafted tokens; the logits at every
position say what greedy decoding would pick there, so the row keeps the drafted tokens
up to the first one the LLM would not have chosen, plus the LLM's own choice in its
place. That is the verification step of speculative decoding (Leviathan et al. 2023),
with the speech encoder's CTC best path as the draft model.

**The output is exactly the greedy output** (up to floating-point ties): every kept
token is the LLM's argmax given all tokens before it. The draft decides only how many
tokens one pass settles -- a perfect draft finishes a row in one or two passes, a useless
one degrades to one token a pass, as plain greedy decoding.

Batched: rows settle different numbers of tokens a pass. Positions a pass checked and
rejected stay in the key/value cache but are masked out (attention mask 0) and position
ids count only kept tokens, so no later token sees them; finished rows leave the batch.

Refilled (`speculative_stream`, ``refill_at``): a batch waits for its slowest row, and a row
that leaves its draft settles one token a pass, so the last passes of a batch often run for
one or two rows while reading every weight. With a refill, waiting rows are prefilled as soon
as enough slots are free and join the rows still decoding (their caches packed together), so
later passes serve a full batch.

    llm prompt (batch, seq, dim) + drafts [[ids], ...] --> new ids per row (stop ids removed)
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from speechlm_lib.models.kv import CACHE_KW, pack, select_rows


@dataclass
class _Row:
    """One utterance being decoded."""

    draft: list[int]  # guessed answer ids (the projector's best path + the end id)
    budget: int  # most new tokens allowed
    pending: int | None = None  # the LLM's latest choice, not yet fed back
    at: int = 0  # index in `draft` of the token expected after `pending`
    out: list[int] = field(default_factory=list)  # kept tokens
    done: bool = False
    truncated: bool = False

    def guess(self, size: int) -> list[int]:
        """Up to `size` drafted ids to check next."""
        return self.draft[self.at: self.at + size]

    def keep(self, drafted: list[int], picks: list[int], stops: set[int]) -> int:
        """After a pass that fed the pending token (if any) and then `drafted`: `picks[j]` is the
        LLM's choice after ``drafted[:j]``. Keeps the agreed prefix; returns how many drafted ids."""
        if self.pending is not None:
            self.out.append(self.pending)  # fed in this pass; the LLM chose it earlier
        n = 0
        while (n < len(drafted) and picks[n] == drafted[n] and drafted[n] not in stops
               and len(self.out) < self.budget):
            self.out.append(drafted[n])
            n += 1
        self.at += n
        self._choose(picks[n], stops)
        return n

    def _choose(self, token: int, stops: set[int]) -> None:
        """The LLM picked `token` next: finish on the budget or a stop id, else re-align the draft."""
        if len(self.out) >= self.budget:  # as `generate` counts it: no stop within the budget
            self.done = self.truncated = True
        elif token in stops:
            self.done = True
        elif len(self.out) + 1 == self.budget:  # the last allowed token: no need to run it
            self.out.append(token)
            self.done = self.truncated = True
        else:
            self.pending = token
            self.at = self._realign(token)

    def _realign(self, token: int, reach: int = 4) -> int:
        """Where the draft goes on after `token`: past its nearest copy within `reach` of the expected
        spot (the LLM skipped, added or reordered a word), else past the expected one (it replaced it)."""
        near = [j for j in range(max(0, self.at - reach), min(len(self.draft), self.at + reach + 1))
                if self.draft[j] == token]
        return min(near, key=lambda j: (abs(j - self.at), -j)) + 1 if near else self.at + 1


@dataclass
class Prompts:
    """A left-padded prompt batch to answer, with a draft and a token budget per row."""

    embeds: torch.Tensor  # ``inputs_embeds (batch, seq, dim)``; the first `cache` length positions are in `cache`
    mask: torch.Tensor  # ``attention_mask (batch, seq)`` over the whole prompt
    cache: object | None  # a `DynamicCache` of the first positions (a shared prefix), or None
    drafts: list[list[int]]  # guessed answer ids per row (any length, may be empty)
    budgets: list[int]  # most new tokens per row
    keys: list = field(default_factory=list)  # the caller's name for each row (default: 0, 1, ...)

    def __post_init__(self):
        self.keys = list(self.keys) or list(range(len(self.drafts)))

    def take(self, n: int, config) -> Prompts:
        """The first `n` rows as their own batch; this one keeps the rest (all of them: nothing is copied)."""
        if n >= len(self.keys):
            part = Prompts(self.embeds, self.mask, self.cache, self.drafts, self.budgets, self.keys)
            self.drafts, self.budgets, self.keys = [], [], []
            return part
        head, rest = (torch.arange(a, b, device=self.mask.device) for a, b in ((0, n), (n, len(self.keys))))
        part = Prompts(self.embeds[head], self.mask[head], _rows(self.cache, head, config),
                       self.drafts[:n], self.budgets[:n], self.keys[:n])
        self.embeds, self.mask, self.cache = self.embeds[rest], self.mask[rest], _rows(self.cache, rest, config)
        self.drafts, self.budgets, self.keys = self.drafts[n:], self.budgets[n:], self.keys[n:]
        return part


def _rows(cache, rows: torch.Tensor, config):
    return None if cache is None else select_rows(cache, rows, config)


@torch.no_grad()
def speculative_greedy(llm, embeds: torch.Tensor, mask: torch.Tensor, cache, drafts: list[list[int]],
                       budgets: list[int], stops: list[int], pad_id: int, block: int = 32, stop=None):
    """Greedy answers for one left-padded prompt batch, checking `drafts` as it goes.

    Args:
        llm: a Hugging Face causal LM.
        embeds, mask, cache, drafts, budgets: as in `Prompts`.
        stops: ids that end a row; block: most drafted tokens checked per row and pass (the
            first pass checks them with the prompt).
        stop: None, or a test on a row's kept ids that ends the row early (counted as cut short), e.g. the
            repetition guard's `repetition.loop_closed` on their text.

    Returns ``(ids per row without stop ids, rows that hit their budget, LLM passes)``.
    """
    stats = {}
    done = dict(((k, (ids, cut)) for k, ids, cut in speculative_stream(
        llm, [Prompts(embeds, mask, cache, drafts, budgets)], stops, pad_id, block, slots=len(drafts), stats=stats,
        stop=stop)))
    rows = [done[i] for i in range(len(drafts))]
    return [ids for ids, _ in rows], sum(cut for _, cut in rows), stats["passes"]


@torch.no_grad()
def speculative_stream(llm, batches, stops: list[int], pad_id: int, block: int = 32, slots: int = 8,
                       refill_at: int = 0, stats: dict | None = None, stop=None):
    """Answers for a stream of `Prompts` batches, at most `slots` rows decoding at once.

    Yields ``(key, ids without stop ids, hit its budget)`` as rows finish. A batch waits for its
    slowest row; with ``refill_at`` > 0, once that many slots are free, the next waiting rows are
    prefilled (one pass of their own) and join the decoding rows (`kv.pack`), so later passes
    serve a full batch instead of a few stragglers. ``refill_at`` = 0: batch after batch, each
    to its end. `batches` is read lazily (the next batch is built only when rows are wanted);
    `stats` gets the count of LLM passes under ``"passes"``; `stop` as in `speculative_greedy`.
    """
    stats = {} if stats is None else stats
    stats["passes"], source, waiting, live = 0, iter(batches), None, None
    config = llm.config
    trim = "logits_to_keep" in inspect.signature(llm.forward).parameters
    while True:
        free = slots - (len(live.rows) if live is not None else 0)
        want = live is None or (refill_at > 0 and free >= refill_at)
        while want and (waiting is None or not waiting.keys):  # the next batch with rows, if any
            waiting = next(source, None)
            if waiting is None:
                break
        if want and waiting is not None:
            new = _Batch(llm, waiting.take(min(free, len(waiting.keys)), config), stops, pad_id, block, trim, stop)
            yield from new.finished()
            live = new if live is None else live.merge(new, config)
        elif live is not None:
            live.step()
            yield from live.finished()
        else:
            return
        stats["passes"] += 1
        if not live.rows:
            live = None


class _Batch:
    """Rows decoding together: their key/value cache, attention mask and `_Row` states."""

    def __init__(self, llm, prompts: Prompts, stops: list[int], pad_id: int, block: int, trim: bool, stop=None):
        from transformers import DynamicCache

        self.llm, self.stops, self.pad, self.block, self.trim = llm, set(stops), pad_id, block, trim
        self.stop = stop  # None, or a test on a row's kept ids that ends it early (`speculative_greedy`)
        self.cache = prompts.cache if prompts.cache is not None else DynamicCache(config=llm.config)
        self.mask, self.keys = prompts.mask, list(prompts.keys)
        self.rows = [_Row(list(d), b) for d, b in zip(prompts.drafts, prompts.budgets)]
        self._run(prompts.embeds[:, self.cache.get_seq_length():])

    def step(self) -> None:
        """One more pass: each row's pending token and next drafted tokens."""
        self._run(None)

    def _run(self, prompt) -> None:
        """One LLM pass. The first (`prompt` = the uncached prompt embeddings) feeds the prompt and each
        row's draft; later ones each row's pending token and draft. Rows keep what the LLM agrees
        with; the fed positions they do not keep stay in the cache, masked out."""
        first = prompt is not None
        fed = [([] if first else [r.pending]) + r.guess(self.block) for r in self.rows]
        width = max(len(f) for f in fed)
        device = self.mask.device
        ids = torch.tensor([f + [self.pad] * (width - len(f)) for f in fed], dtype=torch.long, device=device)
        new = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in fed], dtype=self.mask.dtype,
                           device=device)
        mask = torch.cat([self.mask, new], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -(width + (prompt.shape[1] if first else 0)):]
        embeds = self.llm.get_input_embeddings()(ids)
        if first:  # the prompt's last position picks the first answer token
            embeds, keep = torch.cat([prompt, embeds.to(prompt.dtype)], dim=1), width + 1
        else:
            keep = width
        # the kept positions as an index tensor, not a count: the LM head then gets a contiguous gathered
        # copy (measured: ~1.7x slower on CPU for a strided view of the last positions than a gathered copy)
        last = torch.arange(embeds.shape[1] - keep, embeds.shape[1], device=device)
        kw = {"logits_to_keep": last} if self.trim else {}
        kw[CACHE_KW] = self.cache
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True, **kw)
        picks = out.logits[:, -keep:].argmax(-1).tolist()
        for i, (row, f) in enumerate(zip(self.rows, fed)):
            kept = row.keep(f if first else f[1:], picks[i][:len(f) + first], self.stops)
            new[i, kept + (not first):] = 0  # fed but not kept: masked out from now on
            if self.stop is not None and not row.done and self.stop(row.out):
                row.done = row.truncated = True
        self.mask = torch.cat([self.mask, new], dim=1)

    def finished(self):
        """Yield ``(key, ids, truncated)`` of the rows that are done and remove them (cache and mask follow)."""
        keep = [i for i, r in enumerate(self.rows) if not r.done]
        if len(keep) == len(self.rows):
            return
        for key, row in zip(self.keys, self.rows):
            if row.done:
                yield key, row.out, row.truncated
        if keep:
            idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
            self.cache.batch_select_indices(idx)
            self.mask = self.mask[idx]
        self.rows, self.keys = [self.rows[i] for i in keep], [self.keys[i] for i in keep]

    def merge(self, other: _Batch, config) -> _Batch:
        """These rows and `other`'s in one batch (`kv.pack`: each row's attended positions, right-aligned)."""
        if not other.rows:
            return self
        if not self.rows:
            return other
        self.cache, self.mask = pack([(self.cache, self.mask), (other.cache, other.mask)], config)
        self.rows, self.keys = self.rows + other.rows, self.keys + other.keys
        return self
