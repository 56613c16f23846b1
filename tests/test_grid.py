"""Every registered normalizer x conditioner pair, in the conditioned transformer."""

from __future__ import annotations

import pytest
import torch

from lightning_film import Conditioning, Transformer, list_conditioners, list_normalizers
from lightning_film.nn import ablate_conditioning

B, N, D, DC, HEADS, DEPTH = 2, 5, 16, 8, 2, 2
PAIRS = [(n, c) for n in list_normalizers() for c in list_conditioners()]


def make_cond(kind: str, seed: int = 0) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, 2, DC, generator=g)
    if kind == "vector":
        return Conditioning(vector=torch.randn(B, DC, generator=g), tokens=tokens)
    return Conditioning(per_token=torch.randn(B, N, DC, generator=g), tokens=tokens)


def build(normalizer: str, conditioner: str, causal: bool = True) -> Transformer:
    torch.manual_seed(0)
    return Transformer(D, DEPTH, HEADS, DC, normalizer=normalizer, conditioner=conditioner, causal=causal)


def perturb_(model: torch.nn.Module) -> None:
    """Move every parameter off its init, so zero-initialised projections matter."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("kind", ["vector", "per_token"])
@pytest.mark.parametrize(("normalizer", "conditioner"), PAIRS)
def test_pair_forward_backward_identity(normalizer, conditioner, kind):
    model = build(normalizer, conditioner)
    x = torch.randn(B, N, D, generator=torch.Generator().manual_seed(2))
    cond = make_cond(kind)
    out = model(x, cond)
    assert out.shape == (B, N, D) and torch.isfinite(out).all()

    # Every parameter is reached by backward (no unused parameters: DDP needs this).
    out.square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, unused

    final = model.final_cond
    if final.identity_at_init:
        with ablate_conditioning(model):
            torch.testing.assert_close(model(x, cond), out, rtol=0, atol=0)
    if conditioner == "adaln_zero":  # the conditioner is not the identity, but every block is
        h = x
        for block in model.blocks:
            torch.testing.assert_close(block(h, cond), h, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["vector", "per_token"])
@pytest.mark.parametrize(("normalizer", "conditioner"), PAIRS)
def test_pair_conditioning_matters_after_training(normalizer, conditioner, kind):
    model = build(normalizer, conditioner)
    perturb_(model)
    x = torch.randn(B, N, D, generator=torch.Generator().manual_seed(2))
    a, b = model(x, make_cond(kind, seed=0)), model(x, make_cond(kind, seed=1))
    if conditioner == "none":
        torch.testing.assert_close(a, b)
    else:
        assert not torch.allclose(a, b), f"{conditioner} ignores its conditioning"
        with ablate_conditioning(model):
            torch.testing.assert_close(model(x, make_cond(kind, 0)), model(x, make_cond(kind, 1)))


@pytest.mark.parametrize("conditioner", list_conditioners())
def test_causal_stack_never_reads_the_future(conditioner):
    model = build("rmsnorm", conditioner, causal=True)
    perturb_(model)
    x = torch.randn(B, N, D)
    y = x.clone()
    y[:, -1] += 1.0
    cond = make_cond("vector")
    torch.testing.assert_close(model(x, cond)[:, :-1], model(y, cond)[:, :-1])


@pytest.mark.parametrize("conditioner", list_conditioners())
def test_exports_with_conditioning_input(conditioner):
    """torch.export takes a Conditioning (quantization and Core ML export build on this)."""
    model = build("rmsnorm", conditioner).eval()
    perturb_(model)
    x, cond = torch.randn(B, N, D), make_cond("vector")
    exported = torch.export.export(model, (x, cond))
    torch.testing.assert_close(exported.module()(x, cond), model(x, cond))
