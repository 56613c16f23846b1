"""The conditioners' measured fast paths, kept out of the interface (base.py).

- :func:`modulate_affine`: h * gamma (+ beta) with a backward that skips a full-size pass;
- :func:`precompute_projections`: every site's projections of the signal in one matmul per
  stack forward, read back by :meth:`ProjectedConditioner.projected`.

Both equal the plain expressions (tests/test_performance_paths.py); the speed they buy is
measured by ``python -m benchmarks.performance``.

Legend: B batch, N tokens, D width, Dc conditioning width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_film.nn.conditioners.base import Conditioner, ProjectedConditioner
from lightning_film.nn.conditioning import Conditioning

__all__ = ["modulate_affine", "precompute_projections"]


def _grad_needed(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _eager() -> bool:
    return not (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing())


class _AffineFunction(torch.autograd.Function):
    """h * gamma (+ beta) with gamma, beta broadcast over tokens, and the minimal backward.

    Autograd's ``addcmul`` backward also multiplies the full-size h by ``value`` (a third
    full-size pass); this one reads dy twice and h once: dh = dy gamma, dgamma = sum(dy h),
    dbeta = sum(dy).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(h if ctx.needs_input_grad[1] else None, gamma if ctx.needs_input_grad[0] else None)
        ctx.beta_shape = None if beta is None else beta.shape
        ctx.gamma_shape = gamma.shape
        return h * gamma if beta is None else torch.addcmul(beta, h, gamma)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        h, gamma = ctx.saved_tensors
        need_h, need_gamma, need_beta = ctx.needs_input_grad
        dh = dy * gamma if need_h else None
        dgamma = (dy * h).sum_to_size(ctx.gamma_shape) if need_gamma else None
        dbeta = dy.sum_to_size(ctx.beta_shape) if need_beta and ctx.beta_shape is not None else None
        return dh, dgamma, dbeta


def modulate_affine(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
    """h (B, N, D) * gamma (+ beta), gamma and beta (B, 1 | N, D): ``torch.addcmul(beta, h, gamma)``.

    Equal to the plain expression; in eager training (same dtypes, h full size) its backward
    skips a full-size pass of autograd's ``addcmul`` backward.
    """
    same = gamma.dtype == h.dtype and (beta is None or beta.dtype == h.dtype)
    if same and _eager() and _grad_needed(h, gamma, beta) and gamma.dim() == h.dim():
        return _AffineFunction.apply(h, gamma, beta)
    return h * gamma if beta is None else torch.addcmul(beta, h, gamma)


def _plain_linear(seq: nn.Module | None, pre_activation: bool) -> nn.Linear | None:
    """The Linear of a one-layer projection ([SiLU,] Linear) that may join a batched matmul, else None.

    Anything else (an MLP projection, a swapped or hooked module, a quantized or parametrized
    weight) keeps its own forward.
    """
    if not isinstance(seq, nn.Sequential) or len(seq) != 1 + pre_activation:
        return None
    layers = list(seq)
    if pre_activation and type(layers[0]) is not nn.SiLU:
        return None
    linear = layers[-1]
    if type(linear) is not nn.Linear or linear.bias is None:
        return None
    if any(type(p) is not nn.Parameter for p in (linear.weight, linear.bias)):
        return None
    if any(m._forward_hooks or m._forward_pre_hooks for m in (seq, *layers)) or hasattr(linear, "parametrizations"):
        return None
    return linear


def precompute_projections(conditioners: list[Conditioner], cond: Conditioning, x: torch.Tensor) -> list[Conditioner]:
    """Compute the projections of every conditioner in one matmul per input; returns those filled.

    A transformer's conditioners project the same signal (B, 1 | N, Dc) with 2 depth + 1 small
    Linears (4 depth + 2 for FiLM); run one by one, their per-op overhead (forward, backward
    and gradient accumulation of each) costs more than their arithmetic. Here the weights are
    concatenated and applied once (SiLU(c) once for the pre-activated ones), and each
    conditioner's hooks read their slice through :meth:`ProjectedConditioner.projected` for the
    conditioning ``cond`` only. The caller clears ``_precomputed`` of the returned conditioners
    after the forward. Eager mode only: a compiler sees the plain per-site graph.
    """
    if not _eager():
        return []
    groups: dict[bool, list[tuple[ProjectedConditioner, str, nn.Linear]]] = {False: [], True: []}
    for c in conditioners:
        if c.ablated or not isinstance(c, ProjectedConditioner):
            continue
        for name in c.batched_projections:
            linear = _plain_linear(getattr(c, name, None), c.pre_activation)
            if linear is not None:
                groups[c.pre_activation].append((c, name, linear))
    items = groups[False] + groups[True]
    if len(items) < 2:
        return []
    signal = items[0][0].signal(x, cond)  # (B, 1 | N, Dc), checked once for the whole stack
    weights = [lin.weight for _, _, lin in items]
    if any(c.cond_dim != signal.shape[-1] for c, _, _ in items) or any(
        w.dtype != signal.dtype or w.device != signal.device for w in weights
    ):
        return []
    outputs: dict[Conditioner, dict[str, torch.Tensor]] = {}
    for pre, group in groups.items():
        if not group:
            continue
        inp = F.silu(signal) if pre else signal  # (B, 1 | N, Dc)
        weight = torch.cat([lin.weight for _, _, lin in group])  # (sum of outputs, Dc)
        bias = torch.cat([lin.bias for _, _, lin in group])
        pieces = F.linear(inp, weight, bias).split([lin.out_features for _, _, lin in group], dim=-1)
        for (c, name, _), piece in zip(group, pieces):
            outputs.setdefault(c, {})[name] = piece  # (B, 1 | N, out)
    for c, found in outputs.items():
        c._precomputed = (cond, found)
    return list(outputs)
