"""Data for the speech-LLM: manifests -> (encoder input or cached states, prompt ids, target ids).

`SpeechLMDataset` yields one dict an utterance::

    {"features": (..., time) | "states": (frames, enc_dim),
     "prefix": [ids], "suffix": [ids], "target": [ids + end], "id": str, "text": str, "seconds": float}

`collate` pads those into the batch `SpeechLM.forward` takes; `make_loader`
groups similar durations with `BucketBatchSampler`.

Later stages reuse this by passing `instruction_fn(utt) -> str` (keyword
context, translation instructions) and `target_fn(utt) -> str` (the German
translation instead of the transcript); `TaskDataset` holds (utterance, task)
pairs, so one recording can serve several tasks (stage 3).
"""
from __future__ import annotations

import random
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from speechlm_lib.data.audio import load_audio
from speechlm_lib.data.batching import BucketBatchSampler
from speechlm_lib.data.feature_cache import FeatureCache
from speechlm_lib.data.records import Report, Utterance
from speechlm_lib.models.encoders import pad_last
from speechlm_lib.models.prompting import PromptBuilder


class SpeechLMDataset(Dataset):
    """Utterances as model-ready items.

    Args:
        utts: utterances (from `records.read_manifest`).
        encoder: the `SpeechEncoder` (featurizes audio, sets the maximum duration).
        prompts: the model's `PromptBuilder`.
        cache: a `FeatureCache` -> items carry encoder ``states`` (computed and stored on a
            miss; `FeatureCache.fill` does it batched beforehand); None -> raw ``features``.
        instruction_fn: utterance -> instruction (default: the prompt config's instruction).
        target_fn: utterance -> answer text (default: the transcript).
        report: utterances over the encoder's maximum duration or with an empty
            target are skipped at construction and named here.
    """

    def __init__(self, utts: list[Utterance], encoder, prompts: PromptBuilder, cache: FeatureCache | None = None,
                 instruction_fn: Callable[[Utterance], str] | None = None,
                 target_fn: Callable[[Utterance], str] | None = None, report: Report | None = None):
        self.encoder, self.prompts, self.cache = encoder, prompts, cache
        self.instruction_fn = instruction_fn or (lambda u: prompts.config.instruction)
        self.target_fn = target_fn or (lambda u: u.text)
        report = report if report is not None else Report()
        self.utts = []
        for u in utts:
            if encoder.max_seconds is not None and u.duration > encoder.max_seconds:
                report.skip(u.id, f"{u.audio}: duration {u.duration:.1f} s is over the encoder's maximum "
                                  f"of {encoder.max_seconds:.0f} s")
            elif not (self.target_fn(u) or "").strip():
                report.skip(u.id, f"{u.audio}: empty target text")
            else:
                self.utts.append(u)
        report.kept += len(self.utts)

    def __len__(self) -> int:
        return len(self.utts)

    def durations(self) -> list[float]:
        """Seconds per item (manifest durations), for bucketing."""
        return [u.duration for u in self.utts]

    def token_lengths(self, token_rate: float) -> list[float]:
        """LLM positions per item: its audio tokens (``duration * token_rate``) plus prompt and answer ids.
        A bucketing key for batches of similar whole-row length (`make_loader`'s `lengths`)."""
        out = []
        for u in self.utts:
            prompt = self.prompts.prompt(self.instruction_fn(u))
            out.append(u.duration * token_rate + len(prompt.prefix) + len(prompt.suffix)
                       + len(self.prompts.target(self.target_fn(u))))
        return out

    def audio_item(self, u: Utterance) -> dict:
        """``{"states": (frames, dim)}`` with a cache (encoded now on a miss), else ``{"features": ...}``."""
        if self.cache is not None:
            states = self.cache.get(u.audio)
            if states is not None:
                return {"states": states}
        wave = load_audio(u.audio, max_seconds=self.encoder.max_seconds)  # AudioError names the file
        features = self.encoder.featurize(wave)
        if self.cache is None:
            return {"features": features}
        device = next(self.encoder.parameters()).device
        with torch.no_grad():
            states, n = self.encoder(*[t.to(device) for t in self.encoder.collate([features])])
        states = states[0, : int(n[0])].to("cpu", self.cache.dtype)  # the same rounding as a later hit
        self.cache.put(u.audio, states)
        return {"states": states.float()}

    def __getitem__(self, i: int) -> dict:
        u = self.utts[i]
        prompt = self.prompts.prompt(self.instruction_fn(u))
        item = self.audio_item(u)
        item.update(prefix=prompt.prefix, suffix=prompt.suffix, target=self.prompts.target(self.target_fn(u)),
                    id=u.id, text=self.target_fn(u), seconds=u.duration)
        return item


class TaskDataset(SpeechLMDataset):
    """(utterance, `tasks.Task`) pairs as model-ready items: the task gives the answer and an instruction
    paraphrase (fixed per item for a `seed`, so a resumed run sees the same prompts). Cached states are
    shared by every task that reads the same recording.

    `audio_tokens` (utterance id -> LLM token ids) stands in for the projector: such items carry
    ``audio_ids`` instead of states (stage 3's cross-fitted tokens, `recipes.cross_fit`); every kept
    utterance must have them."""

    def __init__(self, pairs: list, encoder, prompts: PromptBuilder, cache: FeatureCache | None = None,
                 report: Report | None = None, seed: int = 0, audio_tokens: dict[str, list[int]] | None = None):
        self.tasks = {id(u): t for u, t in pairs}  # construction filters utterances; remember each one's task
        rngs = {id(u): random.Random(f"{seed}:{i}") for i, (u, _) in enumerate(pairs)}
        self.instructions = {key: self.tasks[key].instruction(rng) for key, rng in rngs.items()}
        super().__init__([u for u, _ in pairs], encoder, prompts, cache=cache,
                         instruction_fn=lambda u: self.instructions[id(u)],
                         target_fn=lambda u: self.tasks[id(u)].answer(u), report=report)
        self.audio_tokens = audio_tokens
        missing = [u.id for u in self.utts if u.id not in audio_tokens] if audio_tokens is not None else []
        if missing:
            raise ValueError(f"audio_tokens has no tokens for {len(missing)} utterance(s), e.g. {missing[:3]}")

    def audio_item(self, u: Utterance) -> dict:
        if self.audio_tokens is not None:
            return {"audio_ids": list(self.audio_tokens[u.id])}
        return super().audio_item(u)

    def task_names(self) -> list[str]:
        """The task of each kept item, in order."""
        return [self.tasks[id(u)].name for u in self.utts]


def pad_ids(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists: ``(batch, max_len)`` long tensor, lengths ``(batch,)``."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.full((len(rows), max(1, int(lengths.max()))), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, lengths


class Collate:
    """Batch items: pad states ``(batch, frames, dim)``, features or audio token ids ``(batch, tokens)``, and
    the three id rows."""

    def __init__(self, encoder, pad_id: int):
        self.encoder, self.pad_id = encoder, pad_id

    def __call__(self, items: list[dict]) -> dict:
        batch = {}
        if all("states" in it for it in items):
            states, lengths = pad_last([it["states"].T for it in items])
            batch.update(states=states.transpose(1, 2), state_lengths=lengths)
        elif all("features" in it for it in items):
            batch["features"], batch["feature_lengths"] = self.encoder.collate([it["features"] for it in items])
        elif all("audio_ids" in it for it in items):
            batch["audio_ids"], batch["audio_id_lengths"] = pad_ids([it["audio_ids"] for it in items], self.pad_id)
        else:
            raise ValueError("a batch mixes cached states, raw features and audio token ids")
        for key in ("prefix", "suffix", "target"):
            batch[f"{key}_ids"], batch[f"{key}_lengths"] = pad_ids([it[key] for it in items], self.pad_id)
        batch["meta"] = {"id": [it["id"] for it in items], "text": [it["text"] for it in items],
                         "seconds": [it["seconds"] for it in items]}
        return batch


def make_loader(dataset: SpeechLMDataset, batch_size: int | None = 8, max_batch_seconds: float | None = None,
                shuffle: bool = True, seed: int = 0, num_workers: int = 0,
                lengths: list[float] | None = None) -> DataLoader:
    """A DataLoader with length-bucketed batches (`BucketBatchSampler`): by the items' durations, or by
    `lengths` (one per item, e.g. `SpeechLMDataset.token_lengths`) when given. `max_batch_seconds` always
    counts durations, so it needs the default key."""
    if lengths is not None and max_batch_seconds is not None:
        raise ValueError("max_batch_seconds budgets durations: it cannot be used with other lengths")
    sampler = BucketBatchSampler(dataset.durations() if lengths is None else lengths, batch_size=batch_size,
                                 max_batch_seconds=max_batch_seconds, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                      collate_fn=Collate(dataset.encoder, dataset.prompts.pad_id))
