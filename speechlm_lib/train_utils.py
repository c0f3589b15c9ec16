"""Helpers of the `Trainer`: mixed-precision choice, CPU-distributed detection, checkpoint
folders and the learning-rate schedule (each a pure function, tested on its own)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

CHECKPOINT_RE = re.compile(r"^step_(\d+)$")  # <output_dir>/checkpoints/step_N


def resolve_mixed_precision(name: str) -> str:
    """'auto' -> 'bf16' / 'fp16' on a GPU, 'no' on CPU; other names pass through."""
    if name not in ("auto", "no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be auto/no/bf16/fp16, got {name!r}")
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def cpu_distributed() -> bool:
    """True for a multi-process launch (torchrun / ``accelerate launch --multi_gpu``) without a GPU.

    accelerate only picks DDP over gloo when told to run on CPU; this is how the
    trainer tells it (pass the same to ``PartialState(cpu=...)`` if you create one first).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1 and not torch.cuda.is_available()


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``<output_dir>/checkpoints/step_N`` folder, or None."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up to 1 over `warmup` steps, then cosine down to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
