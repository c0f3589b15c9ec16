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


#: axis labels for eval metrics LivePlot knows; fractions among them are drawn as percentages
METRIC_LABELS = {"wer": "WER (%)", "cer": "CER (%)", "bleu": "BLEU", "chrf": "chrF"}
PERCENT_METRICS = {"wer", "cer"}


class LivePlot(Callback):
    """Redraw a training-loss curve (and eval metrics) in a notebook cell as training runs.

    One quantity an axis: the training loss and any eval metric whose name holds ``loss`` share the
    left panel; every other eval metric (``wer``, ``cer``, ...) gets a panel of its own, WER and CER
    in percent. Outside a notebook it only collects the points; `figure()` draws them on demand.
    """

    def __init__(self, every: int = 1, eval_keys: tuple[str, ...] = ("loss",), logy: bool = True,
                 title: str = "training", loss_label: str = "loss (nats per token)"):
        self.every = every  # redraw on every `every`-th log call
        self.eval_keys = eval_keys  # eval metrics drawn (losses beside the training loss, others alone)
        self.logy = logy  # log-scale the loss axis (CTC losses span orders of magnitude)
        self.title = title  # the figure's title, e.g. "stage 1: CTC training"
        self.loss_label = loss_label  # the loss axis's label, with its unit
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

    def _panels(self) -> list[str]:
        """The metric of each panel after the loss panel."""
        return [k for k in self.evals if "loss" not in k]

    def figure(self):
        """A matplotlib figure of what was collected so far: the loss panel, then one per other metric."""
        import matplotlib.pyplot as plt

        others = self._panels()
        fig, axes = plt.subplots(1, 1 + len(others), figsize=(5.5 + 4 * len(others), 3.4), squeeze=False)
        ax = axes[0, 0]
        if self.train:
            ax.plot(*zip(*self.train), label="training")
        for k, pts in self.evals.items():
            if "loss" in k:
                ax.plot(*zip(*pts), "o-", label=k.replace("_", " ") if k.startswith("dev") else f"dev {k}")
        ax.set(title="loss", xlabel="optimizer step", ylabel=self.loss_label)
        values = [v for _, v in self.train] + [v for k, p in self.evals.items() if "loss" in k for _, v in p]
        if self.logy and values and min(values) > 0:
            from matplotlib.ticker import FormatStrFormatter

            ax.set_yscale("log")
            for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                axis(FormatStrFormatter("%.3g"))
        if len(ax.get_lines()) > 1:
            ax.legend(loc="best")
        for ax, k in zip(axes[0, 1:], others):
            scale = 100.0 if k in PERCENT_METRICS else 1.0
            steps, vals = zip(*self.evals[k])
            ax.plot(steps, [scale * v for v in vals], "o-", color="C1")
            label = METRIC_LABELS.get(k, k.replace("_", " "))
            ax.set(title=f"dev {label.split(' (')[0]}", xlabel="optimizer step", ylabel=f"dev {label}")
            ax.set_ylim(bottom=0)
        from matplotlib.ticker import MaxNLocator

        for ax in axes[0]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        fig.suptitle(self.title)
        plt.close(fig)  # shown through plots.show, not by the inline backend
        return fig

    def _redraw(self) -> None:
        if not _in_notebook() or not self.train:
            return
        from speechlm_lib import plots

        fig = self.figure()
        if self._handle is None:
            self._handle = plots.show(fig, display_id=True)
        else:
            plots.update(self._handle, fig)


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
