"""What keeps a training run from being poisoned or resumed from something it did not write.

* `BufferSnapshot` -- copies of a model's buffers (BatchNorm running statistics and
  counters) taken before a forward pass, put back when the batch is skipped: a NaN batch
  leaves the normalisation statistics exactly as they were.
* `NonFiniteTrainingError` -- raised when more than `TrainConfig.max_skipped_share` of a
  run's micro-batches were skipped for NaN/inf.
* `save_trainer_state` / `load_trainer_state` -- the trainer's counters, history and LR
  scheduler as JSON (``trainer_state.json``), never a pickle: resuming reads only JSON,
  safetensors and `torch.load(weights_only=True)` files.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

TRAINER_STATE = "trainer_state.json"  # in each checkpoint: TrainState + scheduler + process count


class NonFiniteTrainingError(RuntimeError):
    """Too many micro-batches had a NaN/inf loss or gradient: the run stops instead of training on garbage."""


class BufferSnapshot:
    """Copies of every buffer of `model` (running means/variances, batch counters) at one moment."""

    def __init__(self, model: nn.Module):
        self.pairs = [(b, b.detach().clone()) for b in model.buffers()]

    @torch.no_grad()
    def restore(self) -> None:
        """Put every buffer back as it was when the snapshot was taken."""
        for live, saved in self.pairs:
            live.copy_(saved)


def _json_default(obj):
    """Tensors and numpy scalars/arrays as numbers or lists; anything else as its string."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def save_trainer_state(path: str | Path, state: dict, scheduler: dict, num_processes: int) -> Path:
    """Write the trainer's state dicts as JSON (floats round-trip exactly; NaN is written as NaN)."""
    path = Path(path)
    doc = {"format": 1, "num_processes": num_processes, "state": state, "scheduler": scheduler}
    path.write_text(json.dumps(doc, default=_json_default))
    return path


def load_trainer_state(path: str | Path, num_processes: int) -> tuple[dict, dict]:
    """(state, scheduler) dicts from `save_trainer_state`'s file; ValueError naming it if it is unusable."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        state, scheduler, written_by = doc["state"], doc["scheduler"], int(doc["num_processes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable trainer state ({type(e).__name__}: {e})") from e
    if written_by != num_processes:
        raise ValueError(f"{path}: written by a run of {written_by} processes, this one has {num_processes}; "
                         "resume with the same number of processes (data order and RNG states are per process)")
    return state, scheduler


def skip_limit(share: float, total_micro_batches: int) -> float:
    """How many skipped micro-batches a run may have: `share` of all of them (inf when share >= 1)."""
    return math.inf if share >= 1 else share * total_micro_batches
