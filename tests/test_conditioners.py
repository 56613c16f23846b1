"""What each conditioner computes, and the errors a user meets."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_film import Conditioning, RegistryError, Transformer, build_conditioner, build_normalizer
from lightning_film.nn import combine_signals, combined_dim, observe_conditioning

B, N, D, DC = 2, 4, 8, 6


def set_linear_(seq: torch.nn.Sequential, weight: float, bias: float) -> None:
    with torch.no_grad():
        seq[-1].weight.fill_(weight)
        seq[-1].bias.fill_(bias)


def test_film_formula_and_separate_projections():
    film = build_conditioner("film", D, DC)
    assert film.scale is not film.shift
    set_linear_(film.scale, 0.0, 0.5)  # gamma = 1.5
    set_linear_(film.shift, 0.0, -2.0)  # beta = -2
    h = torch.randn(B, N, D)
    out = film.modulate(h, Conditioning(vector=torch.randn(B, DC)))
    torch.testing.assert_close(out, 1.5 * h - 2.0)


@pytest.mark.parametrize(
    ("name", "raw", "gamma"),
    [
        ("film", 0.7, 1.7),
        ("film_exp", 0.7, math.exp(0.7)),
        ("film_tanh", 3.0, 1 + 0.5 * math.tanh(3.0)),
        ("gate", 0.7, 2 / (1 + math.exp(-0.7))),
    ],
)
def test_film_variants_gamma(name, raw, gamma):
    cond = build_conditioner(name, D, DC)
    set_linear_(cond.scale, 0.0, raw)
    h = torch.randn(B, N, D)
    with observe_conditioning(cond) as stats:
        out = cond.modulate(h, Conditioning(vector=torch.randn(B, DC)))
    torch.testing.assert_close(out, gamma * h)
    torch.testing.assert_close(stats[""]["gamma"], torch.full((B, 1, D), gamma))


def test_film_tanh_is_bounded():
    cond = build_conditioner({"name": "film_tanh", "bound": 0.25}, D, DC)
    set_linear_(cond.scale, 0.0, 1e6)
    h = torch.ones(B, N, D)
    assert cond.modulate(h, Conditioning(vector=torch.zeros(B, DC))).max() <= 1.25


def test_adaln_chunks_one_projection_and_adaln_zero_gates_at_zero():
    adaln = build_conditioner("adaln", D, DC)
    assert adaln.modulation[-1].out_features == 2 * D and isinstance(adaln.modulation[0], torch.nn.SiLU)
    zero = build_conditioner("adaln_zero", D, DC)
    y = torch.randn(B, N, D)
    assert torch.equal(zero.gate(y, Conditioning(vector=torch.randn(B, DC))), torch.zeros_like(y))
    assert build_conditioner("adaln_zero", D, DC, site="final").gate_proj is None


def _adaln_single_stack(depth: int = 3) -> Transformer:
    torch.manual_seed(0)
    stack = Transformer(D, depth, 2, DC, conditioner="adaln_single")
    with torch.no_grad():  # off the zero init, so the projection and every table matter
        for p in stack.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    return stack


def test_adaln_single_projects_once_per_stack_and_each_site_adds_its_table():
    stack = _adaln_single_stack()
    sites = [c for b in stack.blocks for c in (b.cond1, b.cond2)]
    assert all(c.modulation is None and c.table.shape == (3, D) for c in sites)  # tables only in the blocks
    final = stack.final_cond
    assert final.modulation[-1].out_features == 6 * D and isinstance(final.modulation[0], torch.nn.SiLU)
    added = sum(p.numel() for p in stack.parameters()) - sum(
        p.numel() for p in Transformer(D, 3, 2, DC, conditioner="none").parameters()
    )
    assert added == (DC + 1) * 6 * D + (2 * 3 * 3 + 2) * D  # one projection, a table per site
    x, c = torch.randn(B, N, D), torch.randn(B, DC)
    shared = final.modulation(c)[:, None]  # (B, 1, 6 D)
    prepared = final.prepare(x, Conditioning(vector=c))
    block = stack.blocks[0]
    h = block.norm1(x)
    # the attention site by hand: the shared chunks 0..2 plus its table's rows
    shift, scale, gate = (shared[..., i * D : (i + 1) * D] + block.cond1.table[i] for i in range(3))
    ours = block.cond1.gate(block.attn(block.cond1.modulate(h, prepared)), prepared)
    torch.testing.assert_close(ours, gate * block.attn(h * (1 + scale) + shift))
    # the MLP site reads chunks 3..5
    shift, scale = (shared[..., i * D : (i + 1) * D] + block.cond2.table[i - 3] for i in (3, 4))
    torch.testing.assert_close(block.cond2.modulate(h, prepared), h * (1 + scale) + shift)
    calls: list[int] = []
    final.modulation.register_forward_hook(lambda *_: calls.append(1))
    stack(x, Conditioning(vector=c))
    assert len(calls) == 1  # one projection for the whole stack, whatever its depth


def test_adaln_single_blocks_start_as_the_identity_and_learn():
    stack = Transformer(D, 2, 2, DC, conditioner="adaln_single")
    x, c = torch.randn(B, N, D), Conditioning(vector=torch.randn(B, DC))
    out = stack(x, c)
    torch.testing.assert_close(out, stack.final_norm(x))  # every gate 0, final modulation 1, 0
    out.square().mean().backward()
    block = stack.blocks[0]
    assert block.cond1.table.grad[2].abs().sum() > 0  # the gate row: learning starts at once
    assert stack.final_cond.modulation[-1].weight.grad.abs().sum() > 0


def test_adaln_single_outside_a_stack():
    h, c = torch.randn(B, N, D), Conditioning(per_token=torch.randn(B, N, DC))
    final = build_conditioner("adaln_single", D, DC, site="final")  # an embedding's: projects for itself
    with torch.no_grad():
        final.table.fill_(0.5)
    torch.testing.assert_close(final.modulate(h, c), 1.5 * h + 0.5)
    with pytest.raises(ValueError, match="adaln_single at site 'attn' reads the modulation its stack projects once"):
        build_conditioner("adaln_single", D, DC).modulate(h, c)


def test_zero_init_false_is_not_identity():
    film = build_conditioner("film", D, DC, zero_init=False)
    h = torch.randn(B, N, D)
    assert not torch.allclose(film.modulate(h, Conditioning(vector=torch.randn(B, DC))), h)


def test_per_token_conditioning_modulates_each_position():
    film = build_conditioner("film", D, DC, zero_init=False)
    h = torch.randn(B, N, D)
    per_token = torch.randn(B, N, DC)
    full = film.modulate(h, Conditioning(per_token=per_token))
    for t in range(N):
        one = film.modulate(h[:, t : t + 1], Conditioning(vector=per_token[:, t]))
        torch.testing.assert_close(full[:, t : t + 1], one)


def test_concat_prepends_and_removes_tokens_with_mask():
    torch.manual_seed(0)
    model = Transformer(D, 1, 2, DC, conditioner="concat", causal=False)
    x = torch.randn(B, N, D)
    tokens = torch.randn(B, 3, DC)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = model(x, Conditioning(tokens=tokens, mask=mask))
    assert out.shape == (B, N, D)
    changed = tokens.clone()
    changed[~mask] = 100.0  # padded tokens must not matter
    torch.testing.assert_close(model(x, Conditioning(tokens=changed, mask=mask)), out)
    assert not torch.allclose(model(x, Conditioning(tokens=tokens)), out)


def test_cross_attention_mask_and_one_branch_per_block():
    torch.manual_seed(0)
    model = Transformer(D, 2, 2, DC, conditioner={"name": "cross_attention", "num_heads": 2})
    assert sum(b.cond1.attn is not None for b in model.blocks) == 2
    assert all(b.cond2.attn is None for b in model.blocks)
    for block in model.blocks:
        torch.nn.init.normal_(block.cond1.attn.proj.weight)
    x = torch.randn(B, N, D)
    tokens = torch.randn(B, 3, DC)
    mask = torch.tensor([[True, False, False], [True, True, False]])
    changed = tokens.clone()
    changed[~mask] = -50.0
    torch.testing.assert_close(
        model(x, Conditioning(tokens=tokens, mask=mask)), model(x, Conditioning(tokens=changed, mask=mask))
    )


def test_combine_signals_sum_and_concat():
    a, b = torch.randn(B, 4), torch.randn(B, 4)
    torch.testing.assert_close(combine_signals([a, b], "sum"), a + b)
    torch.testing.assert_close(combine_signals([a, b], "concat"), torch.cat([a, b], -1))
    assert combined_dim([4, 4], "sum") == 4 and combined_dim([4, 3], "concat") == 7
    cond = Conditioning.from_signals([a, b], combine="concat")
    assert cond.vector.shape == (B, 8) and cond.tokens.shape == (B, 2, 4)
    assert Conditioning.from_signals([a, torch.randn(B, 3)], combine="concat").tokens is None


# -- bad input ---------------------------------------------------------------------------


def test_dim_mismatch_names_both_widths():
    film = build_conditioner("film", D, DC)
    with pytest.raises(ValueError, match=r"FiLM was built for cond_dim=6 but got conditioning of width 5"):
        film.modulate(torch.randn(B, N, D), Conditioning(vector=torch.randn(B, 5)))


def test_per_token_length_mismatch():
    film = build_conditioner("film", D, DC)
    with pytest.raises(ValueError, match=r"does not fit features \(2, 4, 8\)"):
        film.modulate(torch.randn(B, N, D), Conditioning(per_token=torch.randn(B, N + 1, DC)))


def test_missing_vector_is_named():
    with pytest.raises(ValueError, match=r"FiLM needs a conditioning vector \(B, 6\)"):
        build_conditioner("film", D, DC).modulate(torch.randn(B, N, D), Conditioning(tokens=torch.randn(B, 2, DC)))


@pytest.mark.parametrize("name", ["concat", "cross_attention"])
def test_tokens_missing_for_token_conditioners(name):
    model = Transformer(D, 1, 2, DC, conditioner=name)
    with pytest.raises(ValueError, match=r"reads conditioning tokens \(B, M, 6\) but Conditioning.tokens is None"):
        model(torch.randn(B, N, D), Conditioning(vector=torch.randn(B, DC)))


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: build_conditioner("film", 0, DC), "dim must be a positive int, got 0"),
        (lambda: build_conditioner("film", D, -1), "cond_dim must be a positive int, got -1"),
        (lambda: build_conditioner("film", D, DC, site="middle"), "site must be one of"),
        (lambda: build_conditioner("film", D, DC, hidden_dim=0), "hidden_dim must be a positive int or None, got 0"),
        (lambda: build_conditioner("film_tanh", D, DC, bound=0), "bound must be > 0, got 0"),
        (
            lambda: build_conditioner("cross_attention", D, DC, num_heads=3),
            "num_heads must be a positive divisor of dim=8",
        ),
        (lambda: build_normalizer("dyt", D, alpha_init=-1), "alpha_init must be > 0"),
        (lambda: build_normalizer("rmsnorm", 0), "dim must be a positive int, got 0"),
        (lambda: Transformer(D, 0, 2, DC), "depth must be a positive int, got 0"),
        (lambda: Transformer(D, 1, 3, DC), "num_heads must be a positive divisor of dim=8, got 3"),
        (
            lambda: Conditioning(vector=torch.randn(B, N, DC)),
            r"Conditioning.vector must be a rank-2 tensor, got \(2, 4, 6\)",
        ),
        (
            lambda: Conditioning(tokens=torch.randn(B, 2, DC), mask=torch.ones(B, 3, dtype=torch.bool)),
            "mask must be bool of shape",
        ),
        (lambda: combine_signals([torch.randn(B, 3), torch.randn(B, 4)], "sum"), r"equal width, got widths \[3, 4\]"),
        (
            lambda: combine_signals([torch.randn(B, 3)], "mean"),
            "unknown combine mode 'mean'; accepted: 'sum', 'concat'",
        ),
    ],
)
def test_bad_arguments_raise_named_errors(call, pattern):
    with pytest.raises((ValueError, RegistryError), match=pattern):
        call()


def test_wrong_token_width_in_transformer():
    model = Transformer(D, 1, 2, DC, conditioner="cross_attention")
    with pytest.raises(ValueError, match="built for cond_dim=6 but got tokens of width 4"):
        model(torch.randn(B, N, D), Conditioning(tokens=torch.randn(B, 2, 4)))


def test_transformer_rejects_wrong_token_shape():
    with pytest.raises(ValueError, match=r"expects tokens \(B, N, 8\), got \(2, 4, 7\)"):
        Transformer(D, 1, 2, DC)(torch.randn(B, N, 7), Conditioning(vector=torch.randn(B, DC)))


def test_non_conditioner_factory_rejected():
    with pytest.raises(TypeError, match="must subclass lightning_film.nn.Conditioner"):
        Transformer(D, 1, 2, DC, conditioner=lambda dim, cond_dim, site: torch.nn.Identity())
