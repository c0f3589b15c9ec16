"""Helpers of the `Trainer`: mixed-precision and LLM dtype choice, CPU-distributed detection,
checkpoint folders (their manifests and completeness) and the learning-rate schedule (each a pure
function, tested on its own)."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from accelerate.state import AcceleratorState

CHECKPOINT_RE = re.compile(r"^step_(\d+)$")  # <output_dir>/checkpoints/step_N
MANIFEST = "MANIFEST.json"  # written last into a checkpoint: each file's size and SHA-256


def resolve_mixed_precision(name: str) -> str:
    """'auto' -> 'bf16' / 'fp16' on a GPU, 'no' on CPU; 'fast' -> the same, but 'bf16' on a CPU that
    multiplies bfloat16 in hardware (`cpu_has_fast_bf16`); other names pass through."""
    if name not in ("auto", "fast", "no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be auto/fast/no/bf16/fp16, got {name!r}")
    if name not in ("auto", "fast"):
        return name
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if name == "fast" and bf16_is_fast() else "no"


def bf16_is_fast() -> bool:
    """Whether bfloat16 pays here: a GPU with bf16, or a CPU with hardware bf16 on which it also measures faster
    than float32 (`cpu_has_fast_bf16`)."""
    return torch.cuda.is_bf16_supported() if torch.cuda.is_available() else cpu_has_fast_bf16()


def cpu_has_fast_bf16() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX flags in /proc/cpuinfo) **and** a
    bfloat16 matrix product measures faster than a float32 one here (`bf16_matmul_is_faster`, once a process).

    Without the flags PyTorch emulates bf16 and it is slower than float32; where the flags cannot be read (not
    Linux) this says False. The flags alone are not enough: on one 2-core Xeon with AVX-512 BF16 and no AMX a
    (392, 576) x (576, 1536) product took 1.8 ms in bf16 against 3.9 ms in float32, on another with the same flags
    4.4 ms against 2.6 ms, and the speech-LLM decoded 1.4 x slower in bf16 (docs/speed_findings.md).
    ``SPEECHLM_BF16=1`` / ``0`` decides without measuring."""
    forced = os.environ.get("SPEECHLM_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None and bf16_matmul_is_faster()


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else `platform.processor()`, else "unknown": benchmarks record it,
    since a figure holds for the machine it was measured on."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@functools.lru_cache(maxsize=1)
def bf16_matmul_is_faster(rows: int = 256, repeats: int = 20) -> bool:
    """Whether a ``(rows, 576) x (576, 1536)`` product (an MLP projection of SmolLM2-135M on a batch of tokens)
    takes under 0.9 x the float32 time in bfloat16 on this CPU, the best of `repeats` timings of each (about
    0.1 s, once a process)."""
    import time

    def best(dtype: torch.dtype) -> float:
        a, w = torch.randn(rows, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype)
        torch.nn.functional.linear(a, w)  # first call: kernel selection, allocations
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.nn.functional.linear(a, w)
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(torch.bfloat16) < 0.9 * best(torch.float32)


def resolve_dtype(name: str | None) -> torch.dtype | None:
    """A dtype name (``ModelConfig.llm_dtype``) as a torch dtype; None stays None (= float32).

    ``"auto"`` = bfloat16 where it is faster than float32 -- a GPU with bf16, or a CPU with
    hardware bf16 on which it measures faster (`cpu_has_fast_bf16`) -- else None. Any other name must be a torch dtype."""
    if name is None:
        return None
    if name == "auto":
        return torch.bfloat16 if bf16_is_fast() else None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"llm_dtype must be 'auto', None or a torch dtype name like 'bfloat16', got {name!r}")
    return dtype


def allow_precision_change(precision: str) -> None:
    """Let one process train with several mixed-precision settings, one after another.

    accelerate keeps a single setting per process and refuses a different one; a notebook or
    benchmark that trains a bf16 run after an fp32 one needs the new one. In a single process
    this forgets the old setting (accelerate's own state reset); a distributed launch keeps it."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", precision) != precision and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state()


def cpu_distributed() -> bool:
    """True for a multi-process launch (torchrun / ``accelerate launch --multi_gpu``) without a GPU.

    accelerate only picks DDP over gloo when told to run on CPU; this is how the
    trainer tells it (pass the same to ``PartialState(cpu=...)`` if you create one first).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1 and not torch.cuda.is_available()


def default_device() -> torch.device:
    """The device the trainer's `Accelerator` trains on: the GPU when there is one, else the CPU.

    Place models with it (``model.to(default_device())``) so that evaluation before or
    after training runs where training does; never name a device by hand."""
    return PartialState(cpu=cpu_distributed()).device


def write_checkpoint_manifest(folder: str | Path, **facts) -> Path:
    """Write ``MANIFEST.json`` (every file's size and SHA-256, plus `facts`) into a finished checkpoint
    folder, last and atomically: a folder without it, or whose files differ from it, is incomplete."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": 1, **facts, "files": files}, indent=1))
    tmp.replace(folder / MANIFEST)
    return folder / MANIFEST


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why checkpoint `folder` cannot be resumed from (no manifest; a file missing, resized or
    changed), or None when every file its ``MANIFEST.json`` lists is there with its size and hash."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (interrupted while saving, or written by an older version)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {MANIFEST} ({type(e).__name__})"
    for name, want in files.items():
        p = folder / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != want["size"]:
            return f"{name} has {p.stat().st_size} bytes, the manifest says {want['size']}"
        if _sha256(p) != want["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest (corrupted)"
    return None


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Every ``<output_dir>/checkpoints/step_N`` folder, newest first (complete or not)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(output_dir: str | Path, rejected: list | None = None) -> Path | None:
    """The newest *complete* ``<output_dir>/checkpoints/step_N`` (`checkpoint_problem` is None), or None.

    Newer incomplete ones are passed over; `rejected` (a list) receives ``(folder, why)`` for each."""
    for p in checkpoints(output_dir):
        problem = checkpoint_problem(p)
        if problem is None:
            return p
        if rejected is not None:
            rejected.append((p, problem))
    return None


def remove_partial_checkpoints(output_dir: str | Path) -> list[Path]:
    """Delete the ``.step_N.partial`` folders an interrupted save left behind; returns them."""
    root = Path(output_dir) / "checkpoints"
    stale = [p for p in root.glob(".step_*.partial")] if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up to 1 over `warmup` steps, then cosine down to `min_ratio` at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def rng_neutral_start(loader):
    """Iterate `loader`, undoing the RNG draws its start makes (a resumed epoch's iterator
    is created after the checkpoint's RNG snapshot; in the original run it came before)."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    it = iter(loader)
    try:
        first = next(it)
    except StopIteration:
        return
    finally:
        random.setstate(states[0]), np.random.set_state(states[1]), torch.set_rng_state(states[2])
    yield first
    yield from it
