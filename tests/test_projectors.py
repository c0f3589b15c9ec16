"""Projectors: shapes, lengths, padding never leaks into valid tokens, registry errors."""
from __future__ import annotations

import pytest
import torch

from speechlm_lib.models.projectors import PROJECTORS, stack_frames

NAMES = ["linear", "conv1d", "qformer", "transformer"]


def _batch(frames=(23, 17, 5), dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(frames), max(frames), dim, generator=g)
    return x, torch.tensor(frames)


def test_stack_frames_concatenates_in_order_and_rounds_lengths_up():
    x = torch.arange(2 * 7 * 2, dtype=torch.float).reshape(2, 7, 2)
    y, n = stack_frames(x, torch.tensor([7, 4]), 3)
    assert y.shape == (2, 3, 6)
    assert n.tolist() == [3, 2]
    assert y[0, 0].tolist() == x[0, :3].reshape(-1).tolist()
    assert y[0, 2, 2:].abs().sum() == 0  # tail padding is zeros
    assert y[1, 1, 2:].abs().sum() == 0  # frames past row 1's length are zeroed


def test_stack_frames_with_stride_one_is_identity_on_valid_frames():
    x, n = _batch()
    y, m = stack_frames(x, n, 1)
    assert torch.equal(m, n)
    assert torch.equal(y[0, :23], x[0, :23])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("stride", [1, 4, 5])
def test_output_shape_and_lengths(name, stride):
    x, n = _batch()
    proj = PROJECTORS.build(name, in_dim=12, out_dim=20, stride=stride)
    y, m = proj(x, n)
    assert y.shape[0] == 3 and y.shape[2] == 20
    expected = [-(-f // stride) for f in n.tolist()]
    assert m.tolist() == expected
    assert y.shape[1] == max(expected)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_a_row_projects_the_same_alone_or_padded_in_a_batch(name):
    x, n = _batch()
    proj = PROJECTORS.build(name, in_dim=12, out_dim=20, stride=5).eval()
    garbage = x.clone()
    garbage[2, 5:] = 1e3  # whatever lies past a row's length must not matter
    y, m = proj(garbage, n)
    alone, k = proj(x[2:3, :5], n[2:3])
    assert int(k) == int(m[2])
    torch.testing.assert_close(alone[0], y[2, : int(k)], atol=1e-4, rtol=1e-4)


def test_qformer_queries_multiply_tokens_per_window():
    x, n = _batch()
    proj = PROJECTORS.build("qformer", in_dim=12, out_dim=8, stride=5, queries=2)
    y, m = proj(x, n)
    assert m.tolist() == [10, 8, 2]
    assert y.shape == (3, 10, 8)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    x, n = _batch()
    proj = PROJECTORS.build(name, in_dim=12, out_dim=20, stride=5)
    y, _ = proj(x, n)
    y.pow(2).mean().backward()
    assert proj.num_parameters() > 0
    assert all(p.grad is not None for p in proj.parameters())


def test_settings_record_the_constructor_arguments():
    proj = PROJECTORS.build("linear", in_dim=12, out_dim=20, stride=3, hidden=7)
    assert proj.settings == {"in_dim": 12, "out_dim": 20, "stride": 3, "hidden": 7}
    assert proj.num_parameters() == (36 * 7 + 7) + (7 * 20 + 20)


def test_unknown_projector_names_the_known_ones():
    with pytest.raises(KeyError, match="linear"):
        PROJECTORS.build("mlp-mixer", in_dim=4, out_dim=4)


def test_bad_stride_is_an_error():
    with pytest.raises(ValueError, match="stride"):
        PROJECTORS.build("linear", in_dim=4, out_dim=4, stride=0)
