"""Training with dev selection, as stages 2 and 3 train: the generic `Trainer`, dev scored before the first
update and at each evaluation, the weights of the best evaluation kept, and training time kept apart from the
time spent scoring dev (so samples/s counts training only, and no time comes out negative)."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from speechlm_lib.training.callbacks import BestWeights, Callback
from speechlm_lib.training.trainer import TrainConfig, Trainer


class TimedEvaluation:
    """`evaluate(model) -> metrics`, with the seconds it took added up in ``seconds``."""

    def __init__(self, evaluate: Callable[[torch.nn.Module], dict]):
        self.evaluate, self.seconds = evaluate, 0.0

    def __call__(self, model) -> dict:
        start = time.perf_counter()
        try:
            return self.evaluate(model)
        finally:
            self.seconds += time.perf_counter() - start


@torch.no_grad()
def evaluate_now(model: torch.nn.Module, evaluate) -> dict:
    """`evaluate(model)` in eval mode, the model's mode restored afterwards."""
    was_training = model.training
    model.eval()
    metrics = dict(evaluate(model))
    model.train(was_training)
    return metrics


def train_keeping_best(config: TrainConfig, model: torch.nn.Module, loader, evaluate=None, keep_best: bool = True,
                       callbacks: Sequence[Callback] = (), run_config=None, batch_size: int = 1,
                       key: str = "wer") -> dict:
    """Run the `Trainer`; with `evaluate` and `keep_best`, dev `key` (lower is better) is also scored before the
    first update (step 0 in ``eval``, outside the trainer's clock) and the model ends with the weights of the best
    evaluation (``best``: its step and score). Returns the trainer's result plus ``eval_seconds``,
    ``train_seconds`` and ``samples_per_second`` (`batch_size` x grad_accum samples an update)."""
    timed = TimedEvaluation(evaluate) if evaluate is not None else None
    best = None
    if timed is not None and keep_best:
        best = BestWeights(model, start=evaluate_now(model, evaluate), key=key)
        callbacks = [*callbacks, best]
    result = Trainer(config, model, loader, evaluate=timed, callbacks=callbacks, run_config=run_config).run()
    if best is not None:
        result["eval"] = [{"step": 0, **best.start}, *result["eval"]]
        result["best"] = best.restore()
    result["eval_seconds"] = timed.seconds if timed is not None else 0.0
    result["train_seconds"] = result["seconds"] - result["eval_seconds"]
    samples = result["final"]["step"] * batch_size * config.grad_accum
    result["samples_per_second"] = samples / max(result["train_seconds"], 1e-9)
    return result
