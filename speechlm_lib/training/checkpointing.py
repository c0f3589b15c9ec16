"""The trainer's checkpoints on disk: atomic saves sealed by a manifest, and resuming from the newest complete one.

::

    <output_dir>/checkpoints/.step_N.partial/   while being written (removed by the next resume)
    <output_dir>/checkpoints/step_N/            model.safetensors, optimizer.bin, random_states_<rank>.pkl,
                                                [scaler.pt], trainer_state.json, [config.yaml], MANIFEST.json

``MANIFEST.json`` is written last (sizes and SHA-256 of every other file) and the folder is
renamed only then. Resume verifies it: a folder without one, or with a file missing (an RNG
file, say), resized or changed, is passed over -- named, with the reason -- for the next newer
complete one. Nothing a resume reads can run code: safetensors, ``torch.load(weights_only=True)``
(accelerate's optimizer / RNG / scaler files) and JSON.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from speechlm_lib.training.safety import TRAINER_STATE, load_trainer_state, save_trainer_state
from speechlm_lib.training.utils import (
    CHECKPOINT_RE,
    latest_checkpoint,
    remove_partial_checkpoints,
    write_checkpoint_manifest,
)


def save(acc, path: Path, state, scheduler, run_config=None, keep: int = 0) -> Path:
    """Write checkpoint folder `path` atomically (every process calls this); keep the newest `keep` (0: all).

    `acc`: the `Accelerator`; `state`, `scheduler`: objects with ``state_dict()``; `run_config`:
    the stage config (``save(path)``), written as ``config.yaml``."""
    partial = path.with_name(f".{path.name}.partial")
    if acc.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(partial))
    acc.wait_for_everyone()
    if acc.is_main_process:
        save_trainer_state(partial / TRAINER_STATE, state.state_dict(), scheduler.state_dict(), acc.num_processes)
        if run_config is not None:
            run_config.save(partial / "config.yaml")
        write_checkpoint_manifest(partial, step=state.state_dict().get("step"), num_processes=acc.num_processes)
        shutil.rmtree(path, ignore_errors=True)
        partial.rename(path)
    acc.wait_for_everyone()
    if acc.is_main_process and keep:
        old = sorted(p for p in path.parent.iterdir() if CHECKPOINT_RE.match(p.name))
        for p in old[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    acc.wait_for_everyone()
    return path


def resume(acc, output_dir: str | Path, state, scheduler) -> Path | None:
    """Load the newest complete checkpoint of `output_dir` into the accelerator's objects, `state` and
    `scheduler`; print which, and every newer folder passed over and why. Returns it (None: none found)."""
    if acc.is_main_process:
        for p in remove_partial_checkpoints(output_dir):
            acc.print(f"resume: removed {p.name}, left by a save that was interrupted")
    acc.wait_for_everyone()
    rejected: list = []
    ckpt = latest_checkpoint(output_dir, rejected)
    for p, why in rejected:
        acc.print(f"resume: passing over {p}: {why}")
    if ckpt is None:
        acc.print(f"resume: no complete checkpoint in {output_dir}; starting fresh")
        return None
    trainer_state, scheduler_state = load_trainer_state(ckpt / TRAINER_STATE, acc.num_processes)
    acc.load_state(str(ckpt))
    scheduler.load_state_dict(scheduler_state)
    state.load_state_dict(trainer_state)
    note = f" (passing over {len(rejected)} newer incomplete one(s))" if rejected else ""
    acc.print(f"resumed from {ckpt} at step {state.step}, the newest complete checkpoint{note}")
    return ckpt


@dataclass
class TrainState:
    """Counters saved with each checkpoint (registered with the accelerator)."""

    step: int = 0  # optimizer updates done
    epoch: int = 0  # current pass over the data
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed (this process)
    skipped_nonfinite: int = 0  # micro-batches with a NaN/inf loss + updates with a NaN/inf gradient norm
    skipped_updates: int = 0  # optimizer updates not taken (every micro-batch skipped, or NaN/inf gradient)
    history: list = field(default_factory=list)  # training log dicts
    evals: list = field(default_factory=list)  # evaluation dicts (with "step")

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)
