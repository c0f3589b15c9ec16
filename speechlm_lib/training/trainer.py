"""The one training loop every stage uses.

`Trainer(config, model, train_loader, evaluate, callbacks).run()` trains any
``nn.Module`` whose ``model(**batch)`` returns something with a ``"loss"``
entry (a dict or a Hugging Face ``ModelOutput``). Only parameters with
``requires_grad`` are optimized (AdamW), so freezing an LLM is the caller's
one line.

Built on `accelerate.Accelerator`: device placement, mixed precision, DDP
(``accelerate launch``), gradient accumulation, gradient clipping, TensorBoard
trackers and checkpoints. A checkpoint (``<output_dir>/checkpoints/step_N``)
holds model, optimizer, scheduler, AMP scaler, every process's RNG states and
the position in the data (epoch + batches consumed), so ``resume=True``
continues exactly where the run stopped: the same batches in the same order
with the same random numbers.

Checkpoints are atomic: written to ``.step_N.partial``, then ``MANIFEST.json`` (each file's
size and SHA-256) last, then renamed. Resume takes the newest checkpoint whose files match
its manifest, says which, and names every newer one it passes over (a missing RNG file is a
mismatch, never a silent change of results). What a resume reads is trusted only as data:
weights from safetensors, optimizer / RNG / scaler through ``torch.load(weights_only=True)``,
counters and scheduler from JSON (``trainer_state.json``) -- no pickle that can run code.

A non-finite loss (NaN/inf) does not poison the model: that micro-batch is skipped (a zero
loss is back-propagated instead so DDP ranks stay in step), its forward pass's changes to
buffers (BatchNorm running statistics) are undone, and it is counted in ``skipped_nonfinite``;
an update whose micro-batches were all skipped, or whose gradient norm is non-finite, does
not call ``optimizer.step()`` (no weight decay, no momentum: weights and optimizer state stay
exactly as they were). More than ``max_skipped_share`` of the run's micro-batches skipped
stops the run with `NonFiniteTrainingError`.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from speechlm_lib.training import checkpointing
from speechlm_lib.training.callbacks import Callback
from speechlm_lib.training.safety import BufferSnapshot, NonFiniteTrainingError, skip_limit
from speechlm_lib.training.utils import (
    allow_precision_change,
    cosine_with_warmup,
    cpu_distributed,
    latest_checkpoint,
    resolve_mixed_precision,
    rng_neutral_start,
)


@dataclass
class TrainConfig:
    """How to train (stages keep their own presets of this)."""

    max_steps: int = 1000  # optimizer updates to run; the LR schedule spans them
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    warmup_steps: int = 100  # linear warm-up from 0 to `lr` over this many updates, then cosine decay
    grad_accum: int = 1  # micro-batches accumulated into one optimizer update
    clip_norm: float = 1.0  # clip the global gradient norm to this (0 = no clipping; the norm is still logged)
    mixed_precision: str = "auto"  # 'auto': bf16 on a GPU with bf16, else fp16 on GPU, 'no' on CPU; 'fast': also
    #   bf16 on a CPU with native bf16 (AVX-512 BF16 / AMX); or no/bf16/fp16
    log_every: int = 10  # average and log training metrics every this many updates
    eval_every: int = 0  # call `evaluate(model)` every this many updates (0 = only at the end)
    save_every: int = 0  # save a checkpoint every this many updates and at the end (0 = never)
    output_dir: str | None = None  # checkpoints + tensorboard logs go here (None = nothing written)
    resume: bool = False  # continue from output_dir's latest checkpoint (model, optimizer, scheduler, data order, RNG)
    seed: int = 0  # seeds python/numpy/torch RNGs (dropout, plain shuffled loaders)
    log_with: str | None = "tensorboard"  # an accelerate tracker name, or None (needs output_dir)
    max_epochs: int | None = None  # also stop after this many passes over the data (None = max_steps only)
    progress: bool = True  # show a tqdm progress bar
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    keep_checkpoints: int = 2  # keep only the newest this many checkpoints (0 = keep all)
    find_unused_parameters: bool = False  # DDP: set when some trainable parameters get no gradient
    max_skipped_share: float = 0.25  # stop (NonFiniteTrainingError) once more than this share of the run's
    #   micro-batches were skipped for a NaN/inf loss or gradient (1.0 = never stop)


class Trainer:
    """Train `model` on `train_loader`; see the module docstring for the contract.

    Attributes: ``accelerator``, ``step`` (updates done), ``history`` (log
    dicts), ``model`` (the unwrapped module), ``optimizer``, ``scheduler``.
    Callbacks run on the main process only.
    """

    def __init__(self, config: TrainConfig, model: nn.Module, train_loader: DataLoader,
                 evaluate: Callable[[nn.Module], dict] | None = None, callbacks: Sequence[Callback] = (),
                 run_config=None):
        self.config = config
        self.run_config = run_config  # the stage's whole resolved config (a `StageConfig`): config.yaml in checkpoints
        self.evaluate_fn = evaluate
        self.callbacks = list(callbacks)
        self.accelerator = self._make_accelerator()
        set_seed(config.seed)
        self.state = checkpointing.TrainState()
        self._raw_loader = train_loader
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (requires_grad=False everywhere)")
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas)
        self.total_steps = self._total_steps(train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        self._wrapped, self.optimizer, self.train_loader = self.accelerator.prepare(model, optimizer, train_loader)
        self._window: dict = {"loss": [], "grad_norm": []}
        self._accum = {"micro": 0, "bad": 0, "start": None}  # this update's micro-batches, skipped ones, buffers
        self._bar = None
        self._t0 = time.time()

    # ----- setup -------------------------------------------------------------------------------
    def _make_accelerator(self) -> Accelerator:
        c = self.config
        log_with = c.log_with if (c.log_with and c.output_dir) else None
        project = ProjectConfiguration(project_dir=c.output_dir) if c.output_dir else None
        precision = resolve_mixed_precision(c.mixed_precision)
        allow_precision_change(precision)
        return Accelerator(
            cpu=cpu_distributed(),
            mixed_precision=precision,
            gradient_accumulation_steps=c.grad_accum,
            log_with=log_with,
            project_config=project,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=c.seed),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=c.find_unused_parameters)],
        )

    def _total_steps(self, loader: DataLoader) -> int:
        """`max_steps`, or fewer when `max_epochs` ends the run first."""
        if self.config.max_epochs is None:
            return self.config.max_steps
        try:
            per_epoch = math.ceil(len(loader) / self.accelerator.num_processes / self.config.grad_accum)
        except TypeError:  # unsized (iterable) loader
            return self.config.max_steps
        return max(1, min(self.config.max_steps, per_epoch * self.config.max_epochs))

    def _lr_factor(self, step: int) -> float:
        c = self.config
        return cosine_with_warmup(step, c.warmup_steps, self.total_steps, c.min_lr_ratio)

    # ----- public attributes -------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        """The trained module without DDP / mixed-precision wrappers."""
        return self.accelerator.unwrap_model(self._wrapped)

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def history(self) -> list[dict]:
        return self.state.history

    # ----- the loop ----------------------------------------------------------------------------
    def run(self) -> dict:
        """Train until `max_steps` (or `max_epochs`); return history, evals and final metrics."""
        self._t0 = time.time()
        self._maybe_resume()
        self._begin()
        while not self._done():
            self._run_epoch()
        return self._finish()

    def _done(self) -> bool:
        c = self.config
        return self.state.step >= self.total_steps or (c.max_epochs is not None and self.state.epoch >= c.max_epochs)

    def _run_epoch(self) -> None:
        """One (possibly resumed, possibly partial) pass over the training data."""
        st = self.state
        self._set_epoch(st.epoch)
        shard, loader = self.train_loader, self.train_loader
        if st.batch_in_epoch:  # resumed mid-epoch: skip what was consumed, without touching the RNG
            shard = self.accelerator.skip_first_batches(self.train_loader, st.batch_in_epoch)
            loader = rng_neutral_start(shard)
        broke = finished = False
        try:
            for batch in loader:
                st.batch_in_epoch += 1  # counted first: a checkpoint saved inside the update includes it
                self._micro_step(batch)
                if self.accelerator.sync_gradients and self._done():
                    broke, finished = True, self.accelerator.gradient_state.end_of_dataloader
                    break
            else:
                finished = True
        finally:
            if broke and hasattr(shard, "end"):
                shard.end()  # tell accelerate's GradientState that this loader is closed
        if finished:
            st.epoch, st.batch_in_epoch = st.epoch + 1, 0

    def _set_epoch(self, epoch: int) -> None:
        """Select the epoch's data order in the prepared loader and the user's (batch) sampler."""
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        for obj in (getattr(self._raw_loader, "batch_sampler", None), getattr(self._raw_loader, "sampler", None)):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def _micro_step(self, batch: dict) -> None:
        """Forward + backward one micro-batch; update the weights at accumulation boundaries.

        A micro-batch with a NaN/inf loss changes nothing: its buffers' updates are undone."""
        with self.accelerator.accumulate(self._wrapped):
            before = BufferSnapshot(self._wrapped)
            if self._accum["micro"] == 0:
                self._accum["start"] = before  # the model as the update found it
            self._accum["micro"] += 1
            loss = self._wrapped(**batch)["loss"]
            if self._all_finite(loss.detach()):
                self.accelerator.backward(loss)
                self._window["loss"].append(loss.detach().float())
            else:
                before.restore()
                self._accum["bad"] += 1
                self._count_skip()
                self.accelerator.backward(self._zero_loss())
            if self.accelerator.sync_gradients:
                self._update()

    def _count_skip(self) -> None:
        """Count one skip; stop the run once more than `max_skipped_share` of its micro-batches were skipped."""
        st, c = self.state, self.config
        st.skipped_nonfinite += 1
        total = self.total_steps * c.grad_accum
        if st.skipped_nonfinite > skip_limit(c.max_skipped_share, total):
            raise NonFiniteTrainingError(
                f"training stopped at update {st.step}: {st.skipped_nonfinite} of the run's {total} micro-batches "
                f"had a NaN/inf loss or gradient, more than max_skipped_share={c.max_skipped_share} allows. The "
                "model is as it was before the skipped batches; look for NaN/inf in the inputs, or lower the lr.")

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every process (all ranks must agree to skip)."""
        flag = torch.isfinite(loss).all().float().reshape(1)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag.to(self.accelerator.device), "sum") / self.accelerator.num_processes
        return bool(flag.item() == 1.0)

    def _zero_loss(self) -> torch.Tensor:
        """A loss of 0 that touches every trainable parameter (keeps DDP gradient sync in step)."""
        return sum((p.sum() * 0.0 for p in self._wrapped.parameters() if p.requires_grad), torch.zeros(()))

    def _update(self) -> None:
        """Clip and step optimizer + scheduler, unless every micro-batch was skipped or the gradient is
        non-finite (then weights, optimizer state and buffers stay as the update found them); then the
        periodic jobs."""
        all_bad = self._accum["bad"] == self._accum["micro"]
        start, self._accum = self._accum["start"], {"micro": 0, "bad": 0, "start": None}
        if all_bad:
            self.state.skipped_updates += 1
        else:
            self._step_optimizer(start)
        with warnings.catch_warnings():  # a skipped first update: the schedule still follows `state.step`
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self._periodic()

    def _step_optimizer(self, start: BufferSnapshot) -> None:
        """Clip the gradient and step the optimizer, or skip (restoring `start`) on a non-finite norm."""
        params = [p for p in self._wrapped.parameters() if p.requires_grad]
        max_norm = self.config.clip_norm if self.config.clip_norm else float("inf")
        norm = self.accelerator.clip_grad_norm_(params, max_norm)
        norm = torch.as_tensor(norm).float() if norm is not None else torch.tensor(float("nan"))
        if self.accelerator.scaler is None and not torch.isfinite(norm):
            start.restore()  # bf16/fp32: skip the update ourselves
            self.state.skipped_updates += 1
            self._count_skip()
        else:
            self.optimizer.step()  # fp16: the grad scaler skips inf steps and lowers its scale
            if self.optimizer.step_was_skipped:
                self.state.skipped_updates += 1
                self._count_skip()
            elif torch.isfinite(norm):
                self._window["grad_norm"].append(norm)

    def _periodic(self) -> None:
        c, step = self.config, self.state.step
        if self._bar is not None:
            self._bar.update(1)
        if c.log_every and step % c.log_every == 0:
            self._log()
        if c.eval_every and step % c.eval_every == 0 and step < self.total_steps:
            self._evaluate()
        if c.save_every and step % c.save_every == 0:
            self.save_checkpoint()

    # ----- logging, evaluation, checkpoints ----------------------------------------------------
    def _mean(self, values: list) -> float:
        """Mean of this window's values, averaged over processes (nan if empty)."""
        acc = self.accelerator
        t = torch.stack(values).mean().reshape(1) if values else torch.full((1,), float("nan"))
        if acc.num_processes > 1:
            t = acc.reduce(t.to(acc.device), "mean")
        return float(t.item())

    def _log(self) -> None:
        logs = {"step": self.state.step, "epoch": self.state.epoch,
                "loss": self._mean(self._window["loss"]),
                "grad_norm": self._mean(self._window["grad_norm"]),
                "lr": self.scheduler.get_last_lr()[0],
                "skipped_nonfinite": self.state.skipped_nonfinite,
                "seconds": round(time.time() - self._t0, 2)}
        self._window = {"loss": [], "grad_norm": []}
        self.state.history.append(logs)
        self.accelerator.log({f"train/{k}": v for k, v in logs.items() if k != "step"}, step=logs["step"])
        if self._bar is not None and math.isfinite(logs["loss"]):
            self._bar.set_postfix(loss=f"{logs['loss']:.3f}")
        self._callbacks("on_log", self.state.step, logs)

    def _evaluate(self) -> dict:
        """Run `evaluate(model)` in eval mode without gradients; log and keep its metrics."""
        if self.evaluate_fn is None:
            return {}
        model = self.model
        was_training = model.training
        model.eval()
        with torch.no_grad(), self.accelerator.autocast():
            metrics = dict(self.evaluate_fn(model))
        model.train(was_training)
        self.state.evals.append({"step": self.state.step, **metrics})
        numeric = {f"eval/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.accelerator.log(numeric, step=self.state.step)
        self._callbacks("on_eval", self.state.step, metrics)
        return metrics

    def save_checkpoint(self) -> Path:
        """Save the full training state to ``<output_dir>/checkpoints/step_N`` (all processes call this),
        with the run's resolved config as ``config.yaml``; atomic and sealed by a manifest (`checkpointing`)."""
        if not self.config.output_dir:
            raise ValueError("save_checkpoint needs TrainConfig.output_dir")
        path = Path(self.config.output_dir) / "checkpoints" / self._ckpt_name()
        return checkpointing.save(self.accelerator, path, self.state, self.scheduler, self.run_config,
                                  self.config.keep_checkpoints)

    def _maybe_resume(self) -> None:
        if self.config.resume and self.config.output_dir:
            checkpointing.resume(self.accelerator, self.config.output_dir, self.state, self.scheduler)

    def _begin(self) -> None:
        c = self.config
        if self.accelerator.trackers == [] and c.log_with and c.output_dir:
            config = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in asdict(c).items()}
            self.accelerator.init_trackers("tensorboard", config=config)
        show = c.progress and self.accelerator.is_local_main_process
        self._bar = tqdm(total=self.total_steps, initial=self.state.step, desc="train", disable=not show)
        self._wrapped.train()
        self._callbacks("on_train_begin")

    def _finish(self) -> dict:
        last_eval = self.state.evals[-1] if self.state.evals else None
        final = dict(last_eval) if last_eval and last_eval["step"] == self.state.step else self._evaluate()
        final.pop("step", None)
        last = latest_checkpoint(self.config.output_dir) if self.config.output_dir else None
        if self.config.save_every and self.config.output_dir and (last is None or last.name != self._ckpt_name()):
            self.save_checkpoint()
        if self._bar is not None:
            self._bar.close()
        for tracker in self.accelerator.trackers:  # not `end_training()`: it destroys the process group, and a
            tracker.finish()                        # stage may train again (CTC pre-alignment, then LLM loss)
        if self.state.skipped_nonfinite:
            self.accelerator.print(f"warning: {self.state.skipped_nonfinite} micro-batch(es) skipped for a NaN/inf "
                                   f"loss or gradient, {self.state.skipped_updates} update(s) not taken")
        self._callbacks("on_train_end")
        losses = [h["loss"] for h in self.state.history if math.isfinite(h["loss"])]
        final = {"step": self.state.step, "epoch": self.state.epoch,
                 "train_loss": losses[-1] if losses else float("nan"), **final}
        return {"history": self.state.history, "eval": self.state.evals, "final": final,
                "skipped_nonfinite": self.state.skipped_nonfinite, "skipped_updates": self.state.skipped_updates,
                "seconds": round(time.time() - self._t0, 2)}

    def _ckpt_name(self) -> str:
        return f"step_{self.state.step:07d}"

    def _callbacks(self, hook: str, *args) -> None:
        if not self.accelerator.is_main_process:
            return
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)
