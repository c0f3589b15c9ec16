"""LoRA on the speech-LLM's LLM: low-rank updates that let the frozen LLM learn to listen (stage 3).

A LoRA layer keeps a frozen weight ``W (out, in)`` and learns ``B (out, r) @ A (r, in)``::

    y = x W^T + (alpha / r) * x A^T B^T        B starts at zero, so training starts from the frozen LLM

`LowRankLinear` is that formula written out (notebook 03 builds it first); `add_lora` puts peft's
implementation of the same thing into the LLM of a `SpeechLM`. The adapters are *injected* into the
LLM's own modules (``q_proj``, ``k_proj``, ...): ``model.llm`` stays the transformers model, so the
prefix cache, ``generate`` and the draft decoding (which passes ``logits_to_keep``) work unchanged,
and the `PeftModel` wrapper is kept aside only for saving (`save_pretrained`) and merging.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LoraSettings:
    """Where the adapters go and how big they are."""

    r: int = 8  # rank of each update (0 = no adapters: the stage-2 model)
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the adapters' input (0 on a CPU: it costs a copy of every activation)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # attention; add the MLP's
    #   ("gate_proj", "up_proj", "down_proj") for more capacity at about 2.5x the adapter parameters
    extra: dict = field(default_factory=dict)  # any other peft.LoraConfig keyword (e.g. use_rslora)


class LowRankLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-`r` update (the from-scratch version of peft's layer).

    ``(..., in) -> (..., out)``; with ``B = 0`` at the start the output equals the frozen layer's.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0):
        super().__init__()
        self.base, self.scale = base, alpha / r
        self.base.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # what peft does for A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T


def add_lora(model, settings: LoraSettings):
    """Inject LoRA adapters into ``model.llm`` (a `SpeechLM`); only they train in the LLM.

    Returns the `peft.PeftModel` around the LLM (also kept as ``model.peft``). With ``settings.r == 0``
    nothing is added and None is returned.
    """
    from peft import LoraConfig, get_peft_model

    if settings.r <= 0:
        return None
    if getattr(model, "peft", None) is not None:
        raise ValueError("this model already has LoRA adapters")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none", **settings.extra)
    with quiet_peft():
        wrapped = get_peft_model(model.llm, config)  # injects into model.llm's modules in place
    attach(model, wrapped)
    return wrapped


@contextmanager
def quiet_peft():
    """peft (0.21) asks transformers' deprecated `is_gradient_checkpointing` when it wraps a model; the
    FutureWarning is about peft's code, not ours, and would reach every notebook that adds adapters."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def attach(model, wrapped) -> None:
    """Keep `wrapped` (a PeftModel) beside the model without registering it as a submodule (its weights are
    ``model.llm``'s), and mark the LLM as partly trainable."""
    object.__setattr__(model, "peft", wrapped)
    model.freeze_llm = True  # the LLM's own weights stay frozen; the adapters are the trainable part
    model.llm.train(model.training)


@contextmanager
def adapters_off(model):
    """Within the block the LLM answers without its LoRA adapters (a no-op for a model without them): the
    original LLM, as `experiments.text_ability` and `decoding.ctc_rescore` need it."""
    wrapped = getattr(model, "peft", None)
    with (wrapped.disable_adapter() if wrapped is not None else nullcontext()):
        yield model


@contextmanager
def adapters_merged(model):
    """Within the block the adapters are folded into the LLM's weights (``W + scale * B A``), so a pass runs
    the plain linear layers, as cheap as the stage-2 model's; on leaving, every changed weight is put back
    bit for bit from a copy (not by subtracting the update again, which rounds), so training can go on.

    A no-op for a model without adapters, one already merged (`merge_lora`) or with its adapters switched
    off. Costs a copy of the adapted weights (about 26 M numbers for q/k/v/o of SmolLM2-135M) while it lasts.
    """
    from peft.tuners.lora import LoraLayer

    wrapped = getattr(model, "peft", None)
    layers = [] if wrapped is None else [m for m in model.llm.modules()
                                         if isinstance(m, LoraLayer) and not m.merged and not m.disable_adapters]
    kept = [m.get_base_layer().weight.detach().clone() for m in layers]
    try:
        with torch.no_grad():
            for m in layers:
                m.merge()
        yield model
    finally:
        with torch.no_grad():
            for m, w in zip(layers, kept):
                m.get_base_layer().weight.copy_(w)
                m.merged_adapters.clear()


def lora_parameters(model) -> dict[str, torch.Tensor]:
    """The adapter weights by name (empty without adapters)."""
    return {n: p for n, p in model.llm.named_parameters() if "lora_" in n}


def merge_lora(model):
    """Fold the adapters into the LLM's weights (``W + scale * B A``) and drop them: decoding then costs what
    the stage-2 model cost. The merged model has no adapters left to train or save separately."""
    wrapped = getattr(model, "peft", None)
    if wrapped is None:
        return model
    model.llm = wrapped.merge_and_unload()
    object.__setattr__(model, "peft", None)
    model.merged_lora = True
    return model
