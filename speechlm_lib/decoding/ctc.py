"""CTC decoding and feasibility.

CTC scores every frame with a distribution over the vocabulary plus a *blank*
(id 0). A frame-level path maps to a transcript by collapsing repeats and then
dropping blanks::

    frames:   _ h h _ e l l _ l o o _      ("_" = blank)
    collapse: _ h _ e l _ l o _
    drop _:   h e l l o

so a double letter needs a blank between its two copies, and an utterance is
only trainable when it has at least ``len(labels) + repeats`` encoder frames
(`min_frames`). Infeasible utterances would give an infinite loss; we filter
them up front and count them (`filter_feasible`), with ``zero_infinity=True``
in the loss as a second guard.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from speechlm_lib.data.records import Report

BLANK = 0


def collapse(path: Sequence[int], blank: int = BLANK) -> list[int]:
    """Merge consecutive repeats, then drop blanks: ``[0,3,3,0,3,5,5] -> [3,3,5]``."""
    out, prev = [], None
    for t in path:
        t = int(t)
        if t != prev and t != blank:
            out.append(t)
        prev = t
    return out


def best_path(logits: torch.Tensor) -> torch.Tensor:
    """Frame-wise argmax ``(frames, vocab)`` -> ``(frames,)`` (the path greedy decoding collapses)."""
    return logits.argmax(dim=-1)


def greedy_decode(logits: torch.Tensor, lengths: torch.Tensor, blank: int = BLANK) -> list[list[int]]:
    """Greedy CTC decoding of a batch: ``(batch, frames, vocab)`` + ``(batch,)`` -> one id list per utterance."""
    paths = logits.argmax(dim=-1).cpu()
    return [collapse(paths[i, : int(n)].tolist(), blank) for i, n in enumerate(lengths.cpu())]


def path_segments(path: Sequence[int], blank: int = BLANK) -> list[tuple[int, int, int]]:
    """Runs of one non-blank id in a frame path: ``(id, first_frame, last_frame)`` (for plotting alignments)."""
    segs, start = [], 0
    path = [int(t) for t in path]
    for i, t in enumerate(path):
        if i + 1 == len(path) or path[i + 1] != t:
            if t != blank:
                segs.append((t, start, i))
            start = i + 1
    return segs


def min_frames(labels: Sequence[int]) -> int:
    """The fewest frames a CTC alignment of `labels` needs: one per label plus a blank between repeats."""
    repeats = sum(1 for a, b in zip(labels, labels[1:]) if a == b)
    return len(labels) + repeats


def is_feasible(n_frames: int, labels: Sequence[int]) -> bool:
    """Whether `n_frames` encoder frames can emit `labels` under CTC."""
    return len(labels) > 0 and n_frames >= min_frames(labels)


def filter_feasible(items: Sequence, frames_of: Callable, labels_of: Callable, name_of: Callable = str,
                    report: Report | None = None) -> list:
    """Keep the items whose encoder frames can emit their labels; skip + name the others in `report`."""
    report = report if report is not None else Report()
    kept = []
    for it in items:
        n, labels = frames_of(it), labels_of(it)
        if is_feasible(n, labels):
            kept.append(it)
        else:
            report.skip(name_of(it), f"CTC-infeasible: {n} encoder frames < {min_frames(labels)} needed "
                                     f"for {len(labels)} labels")
    report.kept += len(kept)
    return kept


def encoder_batches(model, dataset, batch_size: int = 32):
    """Batches of `dataset` (a `SpeechLMDataset`, in order) with the encoder's states ``(batch, frames, dim)`` and
    lengths ``(batch,)`` on the projector's device: the cached ``states``, or the encoder run on ``features``."""
    from speechlm_lib.data.speechlm_dataset import make_loader

    device = next(model.projector.parameters()).device
    for batch in make_loader(dataset, batch_size=batch_size, shuffle=False):
        if "states" in batch:
            yield batch, batch["states"].to(device), batch["state_lengths"].to(device)
        else:
            yield batch, *model.encode(batch["features"].to(device), batch["feature_lengths"].to(device))


@torch.no_grad()
def projector_transcripts(model, dataset, temperature: float = 0.0, batch_size: int = 32) -> dict[str, list[str]]:
    """The ``ctc`` projector alone as a recogniser: its best-path transcript of every utterance of `dataset`
    (a `SpeechLMDataset`; cached ``states`` or ``features``), or with `temperature` > 0 the tokens drawn as
    stage 3's exposure draws them. Returns ``{"ids", "refs", "hyps", "tokens"}`` (``tokens``: the LLM token
    ids of each transcript) in the loader's order."""
    proj = model.projector
    if not hasattr(proj, "guess_tokens"):
        raise ValueError(f"the projector alone can only transcribe with the 'ctc' projector, not "
                         f"{type(proj).__name__}")
    out = {"ids": [], "refs": [], "hyps": [], "tokens": []}
    for batch, states, lengths in encoder_batches(model, dataset, batch_size):
        rows = proj.guess_tokens(states, lengths, temperature)
        out["tokens"] += rows
        out["hyps"] += [model.prompts.decode(row) for row in rows]
        out["refs"] += batch["meta"]["text"]
        out["ids"] += batch["meta"]["id"]
    return out
