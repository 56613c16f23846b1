"""DualModulatedEmbedding: identity at init for every modulating conditioner, the signal matters, errors."""

from __future__ import annotations

import pytest
import torch

from lightning_film import build_conditioner, list_conditioners
from lightning_film.nn import DualModulatedEmbedding, ablate_conditioning
from lightning_film.nn.embedding import VARIANTS, modulating_conditioners

B, N, D = 3, 7, 16
TOKEN_READERS = [n for n in list_conditioners() if build_conditioner(n, 8, 4, site="final").reads_tokens]
# every registered conditioner that reads the per-token signal ("none" reads nothing: that is variant "byte")
MODULATING = [n for n in list_conditioners() if n not in TOKEN_READERS and n != "none"]


def ids(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 256, (B, N), generator=g),
        torch.randint(0, 16, (B, N), generator=g),
        torch.randint(0, 256, (B, N), generator=g),
    )


def pair(variant: str, conditioner: str = "film", **kwargs) -> tuple[DualModulatedEmbedding, DualModulatedEmbedding]:
    """(byte baseline, variant) sharing the same byte embedding weights."""
    torch.manual_seed(0)
    base = DualModulatedEmbedding(D, "byte")
    emb = DualModulatedEmbedding(D, variant, nibble_dim=8, acc_dim=4, conditioner=conditioner, **kwargs)
    emb.byte.load_state_dict(base.byte.state_dict())
    return base, emb


def perturb(module: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))


def test_the_modulating_list_is_the_registry_minus_token_readers_and_none() -> None:
    assert TOKEN_READERS  # concat and cross_attention are registered: the filter is exercised
    assert modulating_conditioners() == MODULATING
    assert "film" in MODULATING


@pytest.mark.parametrize("conditioner", MODULATING)
@pytest.mark.parametrize("variant", ["nibble", "nibble_acc"])
def test_identity_at_init_equals_byte(variant: str, conditioner: str) -> None:
    base, emb = pair(variant, conditioner)
    b, n, a = ids()
    assert torch.equal(emb(b, n, a), base(b))


@pytest.mark.parametrize("conditioner", MODULATING)
@pytest.mark.parametrize("variant", ["nibble", "nibble_acc"])
def test_the_signal_matters_after_perturbation(variant: str, conditioner: str) -> None:
    base, emb = pair(variant, conditioner)
    perturb(emb.conditioner)
    b, n, a = ids()
    out = emb(b, n, a)  # (B, N, D)
    assert out.shape == (B, N, D)
    assert not torch.allclose(out, base(b))
    assert not torch.allclose(emb(b, (n + 1) % 16, a), out)  # the nibbles move it
    if variant == "nibble_acc":
        assert not torch.allclose(emb(b, n, (a + 1) % 256), out)  # the accumulator too
    with ablate_conditioning(emb):
        assert torch.equal(emb(b, n, a), base(b))


def test_nibble_variant_ignores_acc_and_byte_ignores_both() -> None:
    base, emb = pair("nibble")
    perturb(emb.conditioner)
    b, n, a = ids()
    assert emb.acc is None and torch.equal(emb(b, n, a), emb(b, n, None))
    assert base.nibble is None and base.acc is None and base.conditioner is None
    assert torch.equal(base(b, n, a), base(b)) and base.signal(n, a) is None


@pytest.mark.parametrize(("combine", "cond_dim"), [("concat", 12), ("sum", 8)])
def test_signal_shape_and_combine(combine: str, cond_dim: int) -> None:
    acc_dim = 4 if combine == "concat" else 8
    emb = DualModulatedEmbedding(D, "nibble_acc", nibble_dim=8, acc_dim=acc_dim, combine=combine)
    _, n, a = ids()
    assert emb.cond_dim == cond_dim and emb.signal(n, a).shape == (B, N, cond_dim)
    expected = [emb.nibble(n), emb.acc(a)]
    expected = torch.cat(expected, -1) if combine == "concat" else expected[0] + expected[1]
    assert torch.equal(emb.signal(n, a), expected)


def test_parameters_added_over_byte() -> None:
    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    byte = DualModulatedEmbedding(D, "byte")
    nib = DualModulatedEmbedding(D, "nibble", nibble_dim=8)
    acc = DualModulatedEmbedding(D, "nibble_acc", nibble_dim=8, acc_dim=4)

    def film(dc: int) -> int:  # gamma and beta projections with biases
        return 2 * (dc * D + D)

    assert count(byte) == 256 * D
    assert count(nib) == 256 * D + 16 * 8 + film(8)
    assert count(acc) == 256 * D + 16 * 8 + 256 * 4 + film(12)


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("conditioner", TOKEN_READERS)
def test_token_reading_conditioner_is_refused_naming_the_accepted(conditioner: str) -> None:
    with pytest.raises(ValueError, match=f"conditioner '{conditioner}' reads conditioning tokens") as err:
        DualModulatedEmbedding(D, "nibble", conditioner=conditioner)
    assert all(name in str(err.value) for name in MODULATING)


def test_none_conditioner_points_to_the_byte_variant() -> None:
    with pytest.raises(ValueError, match="variant='byte'.*accepted modulating conditioners: adaln"):
        DualModulatedEmbedding(D, "nibble", conditioner="none")


def test_unknown_variant_lists_the_accepted() -> None:
    with pytest.raises(ValueError, match="unknown variant 'nibbles'; accepted: " + ", ".join(VARIANTS)):
        DualModulatedEmbedding(D, "nibbles")


def test_sum_needs_equal_widths() -> None:
    with pytest.raises(ValueError, match=r"nibble_dim \(8\) must equal acc_dim \(4\)"):
        DualModulatedEmbedding(D, "nibble_acc", nibble_dim=8, acc_dim=4, combine="sum")


@pytest.mark.parametrize(
    ("variant", "given", "message"),
    [
        ("nibble", "b", "variant='nibble'.* needs nibble_ids .*got nibble_ids=None"),
        ("nibble_acc", "bn", "variant='nibble_acc'.* needs nibble_ids and acc_ids .*got acc_ids=None"),
    ],
)
def test_missing_ids_are_named(variant: str, given: str, message: str) -> None:
    _, emb = pair(variant)
    b, n, _ = ids()
    args = [b, n if "n" in given else None, None]
    with pytest.raises(ValueError, match=message):
        emb(*args)


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("byte", r"byte_ids must hold ids 0..255, got values in \[\d+, 256\]"),
        ("nibble", r"nibble_ids must hold ids 0..15, got values in \[\d+, 16\]"),
        ("shape", r"acc_ids \(3, 6\) and nibble_ids \(3, 7\) must have the same shape"),
        ("float", r"nibble_ids must be an integer tensor \(B, N\)"),
    ],
)
def test_bad_ids_are_named(which: str, message: str) -> None:
    _, emb = pair("nibble_acc")
    b, n, a = ids()
    if which == "byte":
        b[0, 0] = 256
    elif which == "nibble":
        n[0, 0] = 16
    elif which == "shape":
        a = a[:, :-1]
    else:
        n = n.float()
    with pytest.raises(ValueError, match=message):
        emb(b, n, a)
