"""Trainer callbacks: hooks that watch a run without changing it.

The `Trainer` calls these on the main process only. `PrintLogger` prints log
lines, `LivePlot` redraws a loss curve inside a notebook (and does nothing
outside one), `History` is what the trainer itself uses to keep the logs, `BestWeights` keeps the
dev-best weights of a run.
"""
from __future__ import annotations

import math

import torch


class Callback:
    """No-op base class; override the hooks you need."""

    def on_train_begin(self, trainer) -> None:
        """Called once, after setup (and after a resume), before the first step."""

    def on_log(self, trainer, step: int, logs: dict) -> None:
        """Called every `log_every` optimizer steps with the averaged training logs."""

    def on_eval(self, trainer, step: int, metrics: dict) -> None:
        """Called after each evaluation with the metrics `evaluate(model)` returned."""

    def on_train_end(self, trainer) -> None:
        """Called once, after the last step and the final evaluation."""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class PrintLogger(Callback):
    """Print one line per log / evaluation (through tqdm, so progress bars survive)."""

    def __init__(self, keys: tuple[str, ...] = ("loss", "lr", "grad_norm")):
        self.keys = keys  # which log entries to print (missing ones are left out)

    def _write(self, line: str) -> None:
        from tqdm.auto import tqdm
        tqdm.write(line)

    def on_log(self, trainer, step, logs):
        parts = [f"{k} {_fmt(logs[k])}" for k in self.keys if k in logs]
        self._write(f"step {step:>6} | " + " | ".join(parts))

    def on_eval(self, trainer, step, metrics):
        self._write(f"step {step:>6} | eval " + " | ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()))


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where `display` can update a figure in place)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class LivePlot(Callback):
    """Redraw a training-loss curve (and eval metrics) in a notebook cell as training runs.

    Outside a notebook it only collects the points; `figure()` draws them on demand.
    """

    def __init__(self, every: int = 1, eval_keys: tuple[str, ...] = ("loss",), logy: bool = True):
        self.every = every  # redraw on every `every`-th log call
        self.eval_keys = eval_keys  # eval metrics drawn on the same axes (if present)
        self.logy = logy  # log-scale the y axis (CTC losses span orders of magnitude)
        self.train: list[tuple[int, float]] = []
        self.evals: dict[str, list[tuple[int, float]]] = {}
        self._handle = None
        self._calls = 0

    def on_log(self, trainer, step, logs):
        if "loss" in logs and math.isfinite(logs["loss"]):
            self.train.append((step, logs["loss"]))
        self._calls += 1
        if self._calls % self.every == 0:
            self._redraw()

    def on_eval(self, trainer, step, metrics):
        for k in self.eval_keys:
            if k in metrics:
                self.evals.setdefault(k, []).append((step, float(metrics[k])))
        self._redraw()

    def on_train_end(self, trainer):
        self._redraw()

    def figure(self):
        """A matplotlib figure of what was collected so far."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2))
        if self.train:
            ax.plot(*zip(*self.train), label="train loss")
        for k, pts in self.evals.items():
            ax.plot(*zip(*pts), "o-", label=f"eval {k}")
        ax.set_xlabel("optimizer step")
        if self.logy and self.train and min(v for _, v in self.train) > 0:
            from matplotlib.ticker import FormatStrFormatter

            ax.set_yscale("log")
            for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                axis(FormatStrFormatter("%.3g"))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
        fig.tight_layout()
        plt.close(fig)  # shown through display(), not by the inline backend
        return fig

    def _redraw(self) -> None:
        if not _in_notebook() or not self.train:
            return
        from IPython.display import display

        fig = self.figure()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)


class BestWeights(Callback):
    """Copies the trainable weights whenever the dev `key` (lower is better) beats the best so far;
    `restore()` puts the best copy back. `start`: the metrics before training (step 0). Callbacks run
    on the main process only, so in a multi-process run only its model (the one saved) is restored."""

    def __init__(self, model: torch.nn.Module, start: dict, key: str = "wer"):
        self.model, self.key, self.start = model, key, start
        self.best, self.step, self.weights = start[key], 0, self._copy()

    def _copy(self) -> dict:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def on_eval(self, trainer, step: int, metrics: dict) -> None:
        if metrics.get(self.key, float("inf")) < self.best:
            self.best, self.step, self.weights = metrics[self.key], step, self._copy()

    @torch.no_grad()
    def restore(self) -> dict:
        """Load the best weights; returns ``{"step", key}`` of that evaluation."""
        params = dict(self.model.named_parameters())
        for name, value in self.weights.items():
            params[name].copy_(value)
        return {"step": self.step, self.key: self.best}
