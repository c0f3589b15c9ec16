"""Stage-1 data: utterances -> (log-mel features, CTC labels) batches.

`CTCDataset` reads a manifest's utterances once: audio through
`audio.load_checked` (bad files skipped and counted), log-mel features computed
a single time and kept in memory as float16, transcripts encoded by the
vocabulary (unencodable ones skipped and counted), and utterances too short
for their labels under CTC filtered and counted. Its `report` says what was
dropped and why.

`collate` pads a batch into the dict the model takes::

    features (batch, n_mels, frames) float32   feature_lengths (batch,)
    labels   (batch, max_labels)     int64     label_lengths   (batch,)
    ids, texts: lists of str (passed through untouched)

`make_loader` batches by duration with `BucketBatchSampler`. SpecAugment is
applied inside the model (training mode only), not here, so the loader draws
no random numbers and a resumed run replays exactly.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from speechlm_lib.data.audio import SAMPLE_RATE, load_checked, log_mel
from speechlm_lib.data.batching import BucketBatchSampler, padding_fraction
from speechlm_lib.data.records import Report, Utterance, drop_duplicate_ids
from speechlm_lib.decoding import ctc
from speechlm_lib.models.conformer import subsampled_lengths
from speechlm_lib.models.vocab import encode_all


@dataclass
class DataReport:
    """What building a dataset dropped, by cause (each a `Report` naming the items)."""

    audio: Report = field(default_factory=Report)  # unreadable / empty / too short / too long audio, duplicate ids
    vocab: Report = field(default_factory=Report)  # transcripts with characters outside the vocabulary
    infeasible: Report = field(default_factory=Report)  # fewer encoder frames than CTC needs

    def counts(self) -> dict:
        return {"skipped_audio": len(self.audio.skipped), "skipped_vocab": len(self.vocab.skipped),
                "skipped_infeasible": len(self.infeasible.skipped)}

    def __str__(self) -> str:
        return "\n".join(f"{k}: {r}" for k, r in (("audio", self.audio), ("vocab", self.vocab),
                                                   ("ctc", self.infeasible)))


@dataclass
class Item:
    """One prepared utterance."""

    id: str
    text: str
    features: torch.Tensor  # (n_mels, frames) float16
    labels: list[int]
    duration: float  # seconds
    audio: str = ""  # the audio file (for players and error messages)


@contextmanager
def one_thread():
    """Run torch single-threaded inside the block (restoring the thread count after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class CTCDataset(Dataset):
    """Features + labels for a list of utterances (see the module docstring)."""

    def __init__(self, utts: Sequence[Utterance], vocab, n_mels: int = 80, max_seconds: float | None = 30.0,
                 frames_of=subsampled_lengths, progress: bool = True, desc: str = "features", chunk: int = 256):
        self.vocab, self.n_mels = vocab, n_mels
        self.report = DataReport()
        utts = drop_duplicate_ids(utts, self.report.audio)  # labels, features and results are paired by id
        labels = encode_all(vocab, [u.text for u in utts], [u.id for u in utts], self.report.vocab)
        encodable = [(u, y) for u, y in zip(utts, labels) if y is not None]
        with one_thread():  # small per-clip ops: extra threads only add synchronisation cost
            items = self._featurize(encodable, max_seconds, chunk, progress, desc)
        self.items = ctc.filter_feasible(items, lambda it: int(frames_of(it.features.shape[-1])),
                                         lambda it: it.labels, lambda it: it.id, self.report.infeasible)

    def _featurize(self, encodable, max_seconds, chunk, progress, desc) -> list[Item]:
        """Load audio (bad files skipped into ``report.audio``) and compute float16 log-mels, chunk by chunk."""
        items = []
        for start in tqdm(range(0, len(encodable), chunk), desc=desc, disable=not progress, leave=False):
            part = encodable[start:start + chunk]  # chunks bound the waveform memory
            labels = {id(u): y for u, y in part}  # by object: a label can never meet another row's audio
            for u, w in load_checked([u for u, _ in part], max_seconds=max_seconds, report=self.report.audio):
                items.append(Item(u.id, u.text, log_mel(w, self.n_mels).half(), labels[id(u)], w.numel() / SAMPLE_RATE,
                                  u.audio))
        return items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Item:
        return self.items[i]

    def durations(self) -> list[float]:
        return [it.duration for it in self.items]

    def audio_seconds(self) -> float:
        return float(sum(self.durations()))


def collate(items: Sequence[Item]) -> dict:
    """Pad a list of `Item`s into the model's batch dict (see the module docstring)."""
    n_mels = items[0].features.shape[0]
    flen = torch.tensor([it.features.shape[-1] for it in items])
    llen = torch.tensor([len(it.labels) for it in items])
    feats = torch.zeros(len(items), n_mels, int(flen.max()))
    labels = torch.zeros(len(items), int(llen.max()), dtype=torch.long)
    for i, it in enumerate(items):
        feats[i, :, : flen[i]] = it.features.float()
        labels[i, : llen[i]] = torch.tensor(it.labels)
    return {"features": feats, "feature_lengths": flen, "labels": labels, "label_lengths": llen,
            "ids": [it.id for it in items], "texts": [it.text for it in items]}


def make_loader(ds: CTCDataset, batch_size: int | None = None, max_batch_seconds: float | None = None,
                shuffle: bool = True, seed: int = 0) -> DataLoader:
    """A DataLoader with duration-bucketed batches; `padding_fraction(loader)` reports the waste."""
    sampler = BucketBatchSampler(ds.durations(), batch_size=batch_size, max_batch_seconds=max_batch_seconds,
                                 shuffle=shuffle, seed=seed)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=collate)


def loader_padding_fraction(loader: DataLoader) -> float:
    """Padding share of the loader's current epoch of batches."""
    return padding_fraction(loader.dataset.durations(), list(loader.batch_sampler))
