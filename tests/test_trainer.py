"""The generic trainer: it learns, accumulates, skips NaN, evaluates, calls back, and resumes exactly."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from speechlm_lib.data.batching import BucketBatchSampler
from speechlm_lib.training import utils as train_utils
from speechlm_lib.training.callbacks import Callback, LivePlot, PrintLogger
from speechlm_lib.training.trainer import TrainConfig, Trainer
from speechlm_lib.training.utils import cosine_with_warmup, latest_checkpoint, resolve_dtype, resolve_mixed_precision

W = torch.tensor([1.0, -2.0, 3.0, 0.5])


class Regression(Dataset):
    """y = x @ W; item 5 can be poisoned with NaN; a string field rides along untouched."""

    def __init__(self, n=64, poison=False):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ W
        if poison:
            self.y[5] = float("nan")

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i], "name": f"item{i}"}


def collate(items):
    return {"x": torch.stack([b["x"] for b in items]), "y": torch.stack([b["y"] for b in items]),
            "names": [b["name"] for b in items]}


class Linear(nn.Module):
    def __init__(self, frozen_extra=True):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.drop = nn.Dropout(0.2)  # consumes RNG: exact resume must restore it
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(not frozen_extra)
        self.seen_names = []

    def forward(self, x, y, names):
        assert isinstance(names, list) and isinstance(names[0], str)
        self.seen_names.extend(names)
        pred = self.lin(self.drop(x)).squeeze(-1)
        return {"loss": ((pred - y) ** 2).mean()}


def make(tmp_path=None, poison=False, sampler=False, **cfg):
    torch.manual_seed(0)
    ds = Regression(poison=poison)
    if sampler:
        bs = BucketBatchSampler(torch.rand(len(ds), generator=torch.Generator().manual_seed(1)).tolist(),
                                batch_size=8, seed=3)
        loader = DataLoader(ds, batch_sampler=bs, collate_fn=collate)
    else:
        loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate)
    base = dict(max_steps=30, lr=0.05, warmup_steps=3, log_every=1, progress=False, log_with=None,
                output_dir=str(tmp_path) if tmp_path else None)
    return TrainConfig(**{**base, **cfg}), Linear(), loader


def test_loss_decreases_and_only_trainable_params_change():
    cfg, model, loader = make(max_steps=80, lr=0.3)
    frozen_before = model.frozen.weight.clone()
    out = Trainer(cfg, model, loader).run()
    losses = [h["loss"] for h in out["history"]]
    assert losses[-1] < 0.2 * losses[0]
    assert torch.equal(model.frozen.weight, frozen_before)
    assert out["final"]["step"] == 80 and out["skipped_nonfinite"] == 0
    assert set(out) >= {"history", "eval", "final", "skipped_nonfinite", "seconds"}


def test_nonfinite_loss_is_skipped_and_counted():
    cfg, model, loader = make(poison=True, max_steps=16)  # 8 batches/epoch, one holds a NaN target
    out = Trainer(cfg, model, loader).run()
    assert out["skipped_nonfinite"] == 2  # two epochs -> the poisoned batch twice
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_grad_accum_counts_optimizer_steps():
    cfg, model, loader = make(max_steps=6, grad_accum=2)
    seen = []
    model.forward = (lambda f: (lambda **b: (seen.append(1), f(**b))[1]))(model.forward)
    out = Trainer(cfg, model, loader).run()
    assert out["final"]["step"] == 6 and len(seen) == 12


def test_max_epochs_and_evaluate_and_callbacks():
    calls = []

    class Rec(Callback):
        def on_train_begin(self, trainer):
            calls.append("begin")

        def on_eval(self, trainer, step, metrics):
            calls.append(("eval", step))

        def on_train_end(self, trainer):
            calls.append("end")

    cfg, model, loader = make(max_steps=1000, max_epochs=2, eval_every=4)
    ev = lambda m: {"bias": float(m.lin.bias), "training_flag": m.training}
    live = LivePlot()
    out = Trainer(cfg, model, loader, evaluate=ev, callbacks=[Rec(), PrintLogger(), live]).run()
    assert out["final"]["step"] == 16 and out["final"]["epoch"] == 2  # 8 batches an epoch
    assert [c for c in calls if isinstance(c, tuple)] == [("eval", 4), ("eval", 8), ("eval", 12), ("eval", 16)]
    assert calls[0] == "begin" and calls[-1] == "end"
    assert out["final"]["training_flag"] is False and model.training  # eval mode inside, train mode after
    assert len(live.train) == 16 and live.figure() is not None


def test_schedule_and_precision_helpers():
    assert cosine_with_warmup(0, 10, 100) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 10, 100) == pytest.approx(1.0)
    assert cosine_with_warmup(100, 10, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert resolve_mixed_precision("no") == "no"
    if not torch.cuda.is_available():
        assert resolve_mixed_precision("auto") == "no"
    with pytest.raises(ValueError):
        resolve_mixed_precision("fp8")


def test_llm_dtype_auto_follows_the_hardware_and_its_measured_speed(monkeypatch):
    assert resolve_dtype(None) is None and resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="llm_dtype"):
        resolve_dtype("bfloat17")
    detect = train_utils.cpu_has_fast_bf16
    monkeypatch.delenv("SPEECHLM_BF16", raising=False)
    for flags, measured, fast in (("fpu avx2 avx512f avx512_vnni", True, False),
                                  ("fpu avx512f avx512_bf16", True, True), ("fpu amx_bf16 amx_tile", True, True),
                                  ("fpu avx512f avx512_bf16", False, False)):  # the flags, but slower measured
        monkeypatch.setattr(train_utils.Path, "read_text", lambda self, f=flags: f"flags\t\t: {f}\n")
        monkeypatch.setattr(train_utils, "bf16_matmul_is_faster", lambda m=measured: m)
        assert detect() is fast
    for forced, fast in (("1", True), ("0", False)):  # SPEECHLM_BF16 decides without flags or measuring
        monkeypatch.setenv("SPEECHLM_BF16", forced)
        monkeypatch.setattr(train_utils, "bf16_matmul_is_faster", lambda: 1 / 0)
        assert detect() is fast
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for fast, want, precision in ((True, torch.bfloat16, "bf16"), (False, None, "no")):
        monkeypatch.setattr(train_utils, "cpu_has_fast_bf16", lambda f=fast: f)
        assert resolve_dtype("auto") is want
        assert resolve_mixed_precision("fast") == precision  # 'fast' training follows the CPU too
        assert resolve_mixed_precision("auto") == "no"  # 'auto' keeps fp32 on every CPU


class Interrupt(Callback):
    def __init__(self, at):
        self.at = at

    def on_log(self, trainer, step, logs):
        if step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("sampler,accum", [(False, 1), (True, 2)])
def test_resume_is_exact(tmp_path, sampler, accum):
    cfg, model, loader = make(sampler=sampler, grad_accum=accum, max_steps=14)
    ref = Trainer(cfg, model, loader).run()
    ref_w = [p.detach().clone() for p in model.parameters()]

    cfg, model, loader = make(tmp_path, sampler=sampler, grad_accum=accum, max_steps=14, save_every=5)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, model, loader, callbacks=[Interrupt(at=8)]).run()
    assert latest_checkpoint(tmp_path).name == "step_0000005"

    cfg, model, loader = make(tmp_path, sampler=sampler, grad_accum=accum, max_steps=14, save_every=5,
                              resume=True)
    trainer = Trainer(cfg, model, loader)
    out = trainer.run()
    assert out["history"][0]["step"] == 1 and out["final"]["step"] == 14
    assert [h["step"] for h in out["history"]] == list(range(1, 15))  # the history came back too
    for p, q in zip(model.parameters(), ref_w):
        assert torch.equal(p.detach(), q)
    assert [h["loss"] for h in out["history"]] == pytest.approx([h["loss"] for h in ref["history"]])
    assert latest_checkpoint(tmp_path).name == "step_0000014"


def test_tensorboard_events_written(tmp_path):
    cfg, model, loader = make(tmp_path, max_steps=4, log_with="tensorboard")
    Trainer(cfg, model, loader).run()
    assert list(tmp_path.rglob("events.out.tfevents*"))


def test_no_trainable_parameters_is_a_clear_error():
    cfg, model, loader = make()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(cfg, model, loader)


def test_precision_can_change_between_runs_in_one_process():
    """A notebook trains an fp32 run and then a bf16 one: accelerate alone refuses the second."""
    for precision in ("no", "bf16", "no"):
        cfg, model, loader = make(max_steps=3, mixed_precision=precision)
        trainer = Trainer(cfg, model, loader)
        assert trainer.accelerator.mixed_precision == precision
        assert trainer.run()["final"]["step"] == 3
