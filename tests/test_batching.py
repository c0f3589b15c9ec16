"""BucketBatchSampler: a partition of the data, within limits, deterministic per (seed, epoch), less padding."""
import random

import pytest

from speechlm_lib.data.batching import BucketBatchSampler, padding_fraction

_RNG = random.Random(0)
LENGTHS = [_RNG.uniform(0.5, 10.0) for _ in range(200)]


def flat(batches):
    return sorted(i for b in batches for i in b)


@pytest.mark.parametrize("kw", [dict(batch_size=16), dict(max_batch_seconds=60.0),
                                dict(batch_size=8, max_batch_seconds=40.0)])
def test_every_item_exactly_once_and_within_limits(kw):
    s = BucketBatchSampler(LENGTHS, seed=1, **kw)
    batches = list(s)
    assert flat(batches) == list(range(len(LENGTHS)))
    assert len(s) == len(batches)
    for b in batches:
        if "batch_size" in kw:
            assert len(b) <= kw["batch_size"]
        if "max_batch_seconds" in kw and len(b) > 1:
            assert len(b) * max(LENGTHS[i] for i in b) <= kw["max_batch_seconds"] + 1e-9


def test_item_longer_than_budget_gets_its_own_batch():
    s = BucketBatchSampler([1.0, 50.0, 1.0, 2.0], max_batch_seconds=10.0, shuffle=False)
    batches = list(s)
    assert [1] in batches and flat(batches) == [0, 1, 2, 3]


def test_deterministic_per_seed_and_epoch():
    a, b = BucketBatchSampler(LENGTHS, batch_size=16, seed=5), BucketBatchSampler(LENGTHS, batch_size=16, seed=5)
    assert list(a) == list(b)
    e0 = list(a)
    a.set_epoch(1)
    assert list(a) != e0  # a new order every epoch
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(BucketBatchSampler(LENGTHS, batch_size=16, seed=6)) != e0


def test_bucketing_reduces_padding_versus_random_batches():
    s = BucketBatchSampler(LENGTHS, batch_size=16, seed=0)
    idx = list(range(len(LENGTHS)))
    random.Random(0).shuffle(idx)
    random_batches = [idx[i:i + 16] for i in range(0, len(idx), 16)]
    bucketed = padding_fraction(LENGTHS, list(s))
    assert bucketed < 0.15 and bucketed < 0.3 * padding_fraction(LENGTHS, random_batches)


def test_no_shuffle_is_sorted_and_drop_last():
    s = BucketBatchSampler(LENGTHS, batch_size=16, shuffle=False, drop_last=True)
    batches = list(s)
    assert all(len(b) == 16 for b in batches) and len(batches) == 200 // 16
    order = [i for b in batches for i in b]
    assert [LENGTHS[i] for i in order] == sorted(LENGTHS[i] for i in order)


def test_padding_fraction_values():
    assert padding_fraction([2.0, 2.0], [[0, 1]]) == 0.0
    assert padding_fraction([1.0, 3.0], [[0, 1]]) == pytest.approx(1 - 4 / 6)
    assert padding_fraction([1.0], []) == 0.0


def test_needs_a_limit():
    with pytest.raises(ValueError):
        BucketBatchSampler(LENGTHS)
