"""Stage 1 end to end: build the data, train the CTC Conformer, score it, save it.

The notebook (``notebooks/01_ctc_encoder.ipynb``), the script
(``scripts/train_ctc.py``) and the benchmark (``benchmarks/bench_ctc.py``)
all call these functions with ``CTCStageConfig.preset(profile)`` (``configs/stage1_ctc/<profile>.yaml``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch

from speechlm_lib.config import StageConfig, runs_dir
from speechlm_lib.data.ctc_dataset import CTCDataset, collate, make_loader
from speechlm_lib.data.records import Report, read_manifest
from speechlm_lib.data.sources import DataSource
from speechlm_lib.decoding import ctc
from speechlm_lib.metrics import cer, wer
from speechlm_lib.models.conformer import ConformerConfig, ConformerCTC, stack_frames
from speechlm_lib.models.vocab import VOCABS
from speechlm_lib.training.trainer import TrainConfig, Trainer


@dataclass
class CTCStageConfig(StageConfig):
    """Everything stage 1 needs: encoder preset, vocabulary, batching, training, evaluation.
    ``preset(name)`` reads ``configs/stage1_ctc/<name>.yaml`` (smoke: CI, seconds; cpu: minutes on 2 cores; gpu)."""

    config_name: ClassVar[str] = "stage1_ctc"
    profile: str = "cpu"  # corpus profile (data/synth/<profile>) and runs/<profile>/ folder
    data: DataSource = field(default_factory=DataSource)  # where train/dev/test come from (`speechlm train stage1`;
    #   data/sources.py): by default the synthetic corpus of `profile`
    encoder: str = "small"  # ConformerConfig preset: tiny / small / base / large
    encoder_overrides: dict = field(default_factory=dict)  # ConformerConfig fields to change (e.g. n_layers)
    vocab: str = "char"  # vocabulary builder in speechlm_lib.models.vocab.VOCABS: char / sentencepiece
    vocab_kwargs: dict = field(default_factory=dict)  # builder options (sentencepiece: vocab_size)
    max_batch_seconds: float = 60.0  # padded audio seconds per batch (BucketBatchSampler)
    batch_size: int | None = None  # optional cap on utterances per batch
    train_utts: int | None = None  # use only the first N training utterances (None = all)
    eval_utts: int | None = None  # score only the first N dev/test utterances (None = all)
    train: TrainConfig = field(default_factory=TrainConfig)  # optimizer, schedule, logging, checkpoints
    probe_strides: tuple[int, ...] = (1, 2, 4, 8)  # frame-stacking factors for the stride probe
    probe_utts: int = 1000  # training utterances for each stride probe
    probe_steps: int = 300  # optimizer steps for each stride probe
    threads: int | None = None  # torch CPU threads to use (None = torch's default; tiny models run faster on 1)

    def output_dir(self) -> Path:
        """``runs/<profile>/stage1_ctc`` (checkpoints + TensorBoard logs)."""
        return runs_dir() / self.profile / "stage1_ctc"

    def encoder_dir(self) -> Path:
        """``runs/<profile>/stage1_encoder``: the saved encoder stage 2 loads."""
        return runs_dir() / self.profile / "stage1_encoder"

    def conformer_config(self, vocab_size: int) -> ConformerConfig:
        return ConformerConfig.preset(self.encoder, **{**self.encoder_overrides, "vocab_size": vocab_size})


def build_vocab(cfg: CTCStageConfig, train_texts: list[str]):
    """The configured vocabulary (SentencePiece is trained on `train_texts`)."""
    return VOCABS.build(cfg.vocab, texts=train_texts, **cfg.vocab_kwargs)


def load_split(manifest: str | Path, vocab, limit: int | None = None, progress: bool = True) -> CTCDataset:
    """A `CTCDataset` of a manifest (first `limit` utterances); bad rows are reported in ``ds.report``."""
    rows = Report()
    utts = read_manifest(manifest, rows)
    ds = CTCDataset(utts[:limit] if limit else utts, vocab, progress=progress, desc=Path(manifest).stem)
    ds.report.audio.skipped.extend(rows.skipped)  # malformed manifest lines count as unreadable items
    return ds


def load_data(cfg: CTCStageConfig, manifests: dict, progress: bool = True):
    """(vocab, {'train','dev','test': CTCDataset}) for the stage's corpus manifests."""
    train_utts = read_manifest(manifests["train"])[: cfg.train_utts or None]
    vocab = build_vocab(cfg, [u.text for u in train_utts])
    data = {"train": load_split(manifests["train"], vocab, cfg.train_utts, progress)}
    for split in ("dev", "test"):
        data[split] = load_split(manifests[split], vocab, cfg.eval_utts, progress)
    return vocab, data


@torch.no_grad()
def transcribe(model: ConformerCTC, ds: CTCDataset, vocab, max_batch_seconds: float = 200.0) -> dict:
    """Greedy-decode a dataset: {'ids', 'refs', 'hyps'} in dataset order."""
    model.eval()
    device = next(model.parameters()).device
    loader = make_loader(ds, max_batch_seconds=max_batch_seconds, shuffle=False)
    out = {"ids": [], "refs": [], "hyps": []}
    for batch in loader:
        o = model(batch["features"].to(device), batch["feature_lengths"].to(device))
        out["hyps"] += [vocab.decode(ids) for ids in ctc.greedy_decode(o["logits"], o["lengths"])]
        out["ids"] += batch["ids"]
        out["refs"] += batch["texts"]
    order = {uid: i for i, uid in enumerate(it.id for it in ds.items)}
    perm = sorted(range(len(out["ids"])), key=lambda i: order[out["ids"][i]])
    return {k: [v[i] for i in perm] for k, v in out.items()}


def score(model: ConformerCTC, ds: CTCDataset, vocab) -> dict:
    """WER and CER (speechlm_lib.data.text, after the shared normalizer) of greedy transcripts."""
    t = transcribe(model, ds, vocab)
    return {"wer": wer(t["refs"], t["hyps"]), "cer": cer(t["refs"], t["hyps"])}


def train_encoder(cfg: CTCStageConfig, vocab, data: dict, callbacks=(), resume: bool = False):
    """Train a fresh ConformerCTC on data['train'] (dev CER/WER at each evaluation); returns (model, result)."""
    torch.manual_seed(cfg.train.seed)
    model = ConformerCTC(cfg.conformer_config(len(vocab)), vocab=vocab)
    loader = make_loader(data["train"], cfg.batch_size, cfg.max_batch_seconds, seed=cfg.train.seed)
    tcfg = replace(cfg.train, output_dir=cfg.train.output_dir or str(cfg.output_dir()), resume=resume)
    trainer = Trainer(tcfg, model, loader, evaluate=lambda m: score(m, data["dev"], vocab), callbacks=callbacks,
                      run_config=cfg)
    result = trainer.run()
    return trainer.model, result


# ----- stride ablation: how many frames can be stacked before information is lost? --------------
@torch.no_grad()
def encoder_states(model: ConformerCTC, ds: CTCDataset, limit: int | None = None) -> list[tuple]:
    """Frozen encoder states per utterance: [(states (frames, dim), labels, seconds)]."""
    model.eval()
    device = next(model.parameters()).device
    items = ds.items[:limit] if limit else ds.items
    out = []
    for start in range(0, len(items), 32):
        batch = collate(items[start:start + 32])
        x, n = model.encode(batch["features"].to(device), batch["feature_lengths"].to(device))
        out += [(x[i, : n[i]].cpu(), it.labels, it.duration) for i, it in enumerate(items[start:start + 32])]
    return out


class StackedCTCProbe(torch.nn.Module):
    """A linear CTC probe on k-stacked states, squeezed through a fixed width (like an LLM's hidden size).

    ``(batch, frames, dim)`` -> stack k -> Linear(k*dim, width) -> Linear(width, k*vocab)
    -> ``(batch, frames_k * k, vocab)``: each stacked frame emits k CTC slots, so the
    output rate stays 25/s and the only thing that varies with k is how the
    information is packed. No nonlinearity: it measures linearly available content.
    """

    def __init__(self, dim: int, k: int, vocab_size: int, width: int):
        super().__init__()
        self.k, self.vocab_size = k, vocab_size
        self.proj = torch.nn.Linear(k * dim, width)
        self.out = torch.nn.Linear(width, k * vocab_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, n = stack_frames(x, lengths, self.k)
        logits = self.out(self.proj(h))  # (batch, frames_k, k * vocab)
        b, t, _ = logits.shape
        return logits.reshape(b, t * self.k, self.vocab_size), n * self.k


def _pad_states(rows: list[tuple]) -> tuple[torch.Tensor, ...]:
    n = torch.tensor([r[0].shape[0] for r in rows])
    x = torch.zeros(len(rows), int(n.max()), rows[0][0].shape[1])
    ll = torch.tensor([len(r[1]) for r in rows])
    y = torch.zeros(len(rows), int(ll.max()), dtype=torch.long)
    for i, (s, labels, _) in enumerate(rows):
        x[i, : s.shape[0]], y[i, : len(labels)] = s, torch.tensor(labels)
    return x, n, y, ll


def stride_probe(train_states: list, test_states: list, k: int, vocab, width: int = 576, steps: int = 300,
                 batch: int = 32, lr: float = 3e-3, seed: int = 0) -> dict:
    """Train a `StackedCTCProbe` for stride `k` on frozen states; report tokens/s, feasibility and CER."""
    torch.manual_seed(seed)
    probe = StackedCTCProbe(train_states[0][0].shape[1], k, len(vocab), width)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(train_states), (batch,), generator=g).tolist()
        x, n, y, ll = _pad_states([train_states[i] for i in idx])
        logits, lengths = probe(x, n)
        loss = torch.nn.functional.ctc_loss(logits.log_softmax(-1).transpose(0, 1), y, lengths, ll,
                                            zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    hyps, refs = [], []
    with torch.no_grad():
        for start in range(0, len(test_states), 64):
            x, n, y, ll = _pad_states(test_states[start:start + 64])
            logits, lengths = probe(x, n)
            hyps += [vocab.decode(h) for h in ctc.greedy_decode(logits, lengths)]
            refs += [vocab.decode(y[i, : ll[i]].tolist()) for i in range(len(y))]
    frames = [-(-s.shape[0] // k) for s, _, _ in test_states]
    seconds = sum(d for _, _, d in test_states)
    feasible = sum(ctc.is_feasible(f, labels) for f, (_, labels, _) in zip(frames, test_states))
    return {"k": k, "tokens_per_second": sum(frames) / seconds, "embedding_dim": k * train_states[0][0].shape[1],
            "char_ctc_feasible": feasible / len(test_states), "probe_cer": float(cer(refs, hyps)),
            "probe_params": sum(p.numel() for p in probe.parameters())}
