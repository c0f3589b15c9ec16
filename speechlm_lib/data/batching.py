"""Length-bucketed batching: put utterances of similar duration together.

Padding a 2 s clip to the length of a 9 s clip wastes 78 % of that row's
compute. `BucketBatchSampler` sorts utterances by (slightly jittered) length,
cuts the sorted list into batches -- a fixed number of utterances, or as many
as fit a budget of *padded* seconds -- and shuffles the batch order. The order
is a pure function of ``(seed, epoch)``, so every process of a distributed run
sees the same batches and a resumed run replays the same order.

`padding_fraction` measures what is left: the share of padded frames that are
padding.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[int]]):
    """Yield lists of dataset indices, each a batch of similar-length items.

    Args:
        lengths: one length per dataset item (seconds or frames; any unit).
        batch_size: at most this many items a batch (None: no count limit).
        max_batch_seconds: at most this much *padded* length a batch, i.e.
            ``len(batch) * max(lengths in batch)`` (None: no length limit).
            An item longer than the budget gets a batch of its own.
        shuffle: jitter the sort and shuffle the batch order every epoch.
        seed: base seed; the epoch's order depends on ``(seed, epoch)`` only.
        drop_last: drop the one incomplete batch (only with `batch_size`).
        jitter: relative noise on the sort key when shuffling, so batch
            composition changes between epochs (0 = same batches, new order).
    """

    def __init__(self, lengths: Sequence[float], batch_size: int | None = None,
                 max_batch_seconds: float | None = None, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, jitter: float = 0.05):
        if batch_size is None and max_batch_seconds is None:
            raise ValueError("BucketBatchSampler needs batch_size or max_batch_seconds (or both)")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_batch_seconds is not None and max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be > 0, got {max_batch_seconds}")
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.batch_size = batch_size
        self.max_batch_seconds = max_batch_seconds
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.jitter = jitter
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next ``iter()`` yields."""
        self.epoch = epoch

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of `epoch` (default: the current one), in yield order."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._make_batches(epoch))
        return self._cache[1]

    def _make_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        key = self.lengths
        if self.shuffle and self.jitter > 0:
            key = key * np.exp(rng.uniform(-self.jitter, self.jitter, size=len(key)))
        order = np.argsort(key, kind="stable")
        batches = self._cut(order.tolist())
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _cut(self, order: list[int]) -> list[list[int]]:
        """Greedily cut length-sorted indices into batches within both limits."""
        batches, cur, cur_max = [], [], 0.0
        for i in order:
            new_max = max(cur_max, self.lengths[i])
            full = self.batch_size is not None and len(cur) >= self.batch_size
            over = self.max_batch_seconds is not None and (len(cur) + 1) * new_max > self.max_batch_seconds
            if cur and (full or over):
                batches.append(cur)
                cur, new_max = [], self.lengths[i]
            cur.append(i)
            cur_max = new_max
        if cur:
            batches.append(cur)
        if self.drop_last and self.batch_size is not None and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()

    def __len__(self) -> int:
        return len(self.batches())


def padding_fraction(lengths: Sequence[float], batches: Sequence[Sequence[int]]) -> float:
    """Share of the padded batch area that is padding (0 = no padding).

    ``1 - sum(lengths) / sum(len(batch) * max length in batch)`` over `batches`.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    used = padded = 0.0
    for b in batches:
        if len(b) == 0:
            continue
        ls = lengths[list(b)]
        used += ls.sum()
        padded += len(b) * ls.max()
    return float(1.0 - used / padded) if padded > 0 else 0.0
