"""Normalizers equal their definitions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_film import build_normalizer, list_normalizers


@pytest.mark.parametrize("name", list_normalizers())
def test_shape_and_backward(name):
    norm = build_normalizer(name, 16)
    x = torch.randn(2, 3, 16, requires_grad=True)
    y = norm(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 33), st.floats(0.1, 10.0))
def test_rmsnorm_definition(rows, dim, scale):
    torch.manual_seed(rows * 100 + dim)
    x = torch.randn(rows, dim) * scale
    norm = build_normalizer("rmsnorm", dim, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), ref, rtol=1e-5, atol=1e-5)


def test_layernorm_definition():
    x = torch.randn(3, 10)
    ref = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)
    torch.testing.assert_close(build_normalizer("layernorm", 10)(x), ref, rtol=1e-5, atol=1e-5)


def test_dyt_definition():
    norm = build_normalizer({"name": "dyt", "alpha_init": 0.8}, 10)
    x = torch.randn(3, 10)
    torch.testing.assert_close(norm(x), torch.tanh(0.8 * x))
    assert set(build_normalizer("dyt", 10, affine=False).state_dict()) == {"alpha"}


def test_identity_is_identity():
    x = torch.randn(3, 10)
    assert build_normalizer("identity", 10)(x) is x
