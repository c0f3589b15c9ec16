"""Two processes train one tiny CTC Conformer together (DDP over gloo via `accelerate launch`),
then a second launch resumes from the step-3 checkpoint and must land on the same weights.

One training item is poisoned with NaN: both ranks must agree to skip that micro-batch
(otherwise the gradient all-reduce would hang or the replicas would drift apart).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = r'''
import json, sys
import torch
from torch.utils.data import DataLoader, Dataset
from speechlm_lib.data.batching import BucketBatchSampler
from speechlm_lib.models.conformer import ConformerConfig, ConformerCTC
from speechlm_lib.training.trainer import TrainConfig, Trainer

out_dir, resume, report = sys.argv[1], sys.argv[2] == "1", sys.argv[3]

class Synthetic(Dataset):
    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.frames = torch.randint(40, 80, (n,), generator=g)
        self.feats = [torch.randn(16, int(t), generator=g) for t in self.frames]
        self.labels = [torch.randint(1, 8, (5,), generator=g) for _ in range(n)]
        self.feats[3][0, 0] = float("nan")  # one poisoned utterance
    def __len__(self): return len(self.feats)
    def __getitem__(self, i): return i

def collate(idx):
    t = max(ds.feats[i].shape[1] for i in idx)
    feats = torch.zeros(len(idx), 16, t)
    for j, i in enumerate(idx):
        feats[j, :, : ds.feats[i].shape[1]] = ds.feats[i]
    return {"features": feats, "feature_lengths": torch.tensor([ds.feats[i].shape[1] for i in idx]),
            "labels": torch.stack([ds.labels[i] for i in idx]), "label_lengths": torch.full((len(idx),), 5),
            "ids": [str(i) for i in idx]}

ds = Synthetic()
torch.manual_seed(0)
model = ConformerCTC(ConformerConfig.preset("tiny", n_mels=16, d_model=32, ffn_dim=64, n_layers=1,
                                            subsample_channels=8, vocab_size=8))
loader = DataLoader(ds, batch_sampler=BucketBatchSampler(ds.frames.tolist(), batch_size=4, seed=1),
                    collate_fn=collate)
cfg = TrainConfig(max_steps=6, lr=3e-3, warmup_steps=1, grad_accum=2, log_every=1, save_every=3,
                  keep_checkpoints=0, output_dir=out_dir, resume=resume, progress=False, log_with=None)
trainer = Trainer(cfg, model, loader)
res = trainer.run()
weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
rank = trainer.accelerator.process_index
with open(f"{report}.{rank}.json", "w") as f:
    json.dump({"steps": [h["step"] for h in res["history"]], "loss": [h["loss"] for h in res["history"]],
               "skipped": res["skipped_nonfinite"], "weights": weights.tolist(),
               "world": trainer.accelerator.num_processes}, f)
'''


def launch(tmp: Path, out_dir: Path, resume: bool, tag: str) -> list[dict]:
    worker = tmp / "worker.py"
    worker.write_text(WORKER)
    # `--multi_gpu` makes accelerate start 2 processes (through torchrun); with no GPU visible the
    # trainer asks accelerate for CPU DDP over gloo (`trainer.cpu_distributed`).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_LOG_LEVEL": "error"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           str(worker), str(out_dir), "1" if resume else "0", str(tmp / tag)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((tmp / f"{tag}.{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_processes_train_skip_nan_together_and_resume_exactly(tmp_path):
    pytest.importorskip("accelerate")
    out = tmp_path / "run"
    full = launch(tmp_path, out, resume=False, tag="full")
    assert all(r["world"] == 2 for r in full)
    assert full[0]["weights"] == full[1]["weights"]  # the replicas stayed identical
    assert full[0]["steps"] == list(range(1, 7))
    assert full[0]["skipped"] >= 1 and full[0]["skipped"] == full[1]["skipped"]  # NaN batch skipped on both ranks
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000003", "step_0000006"]

    shutil.rmtree(out / "checkpoints" / "step_0000006")  # pretend the run died after step 3
    resumed = launch(tmp_path, out, resume=True, tag="resumed")
    assert resumed[0]["steps"] == list(range(1, 7))  # history restored for 1-3, continued 4-6
    assert resumed[0]["loss"][3:] == pytest.approx(full[0]["loss"][3:], rel=1e-5)
    for a, b in zip(resumed[0]["weights"], full[0]["weights"]):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    assert resumed[0]["weights"] == resumed[1]["weights"]
