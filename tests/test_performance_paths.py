"""Every fast path equals its reference: RMSNorm's hand-derived backward, the sigmoid-form GELU,
the fused modulation, batched conditioner projections, KV-cache decoding, and compiled vs eager."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_film.nn.transformer as transformer_module
from lightning_film import Conditioning, Transformer, build_conditioner, build_normalizer, list_conditioners
from lightning_film.models import ByteLM
from lightning_film.nn import observe_conditioning
from lightning_film.nn.conditioners.base import ProjectedConditioner
from lightning_film.nn.conditioners.fast import modulate_affine
from lightning_film.nn.mlp import gelu_tanh
from lightning_film.nn.norms import _RMSNormFunction, rms_norm_reference
from tests.helpers import tiny

B, N, D, DC = 3, 7, 16, 8


def _grads(*tensors: torch.Tensor) -> list[torch.Tensor]:
    out = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out


# -- RMSNorm ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(4, 5, 16), (3, 33), (2, 3, 4, 128)])
@pytest.mark.parametrize("affine", [True, False])
def test_rmsnorm_forward_and_backward_equal_the_definition(dtype, shape, affine):
    torch.manual_seed(0)
    d = shape[-1]
    fast = build_normalizer({"name": "rmsnorm", "affine": affine}, d).to(dtype)
    ref = build_normalizer({"name": "rmsnorm", "implementation": "reference", "affine": affine}, d).to(dtype)
    if affine:
        with torch.no_grad():
            fast.weight.uniform_(0.5, 1.5)
            ref.weight.copy_(fast.weight)
    x = (3 * torch.randn(shape, dtype=dtype)).requires_grad_()
    dy = torch.randn(shape, dtype=dtype)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    y_fast = fast(x)
    y_fast.backward(dy)
    gx_fast = _grads(x)[0]
    y_ref = ref(x)
    y_ref.backward(dy)
    torch.testing.assert_close(y_fast, y_ref, **tol)
    torch.testing.assert_close(gx_fast, x.grad, **tol)
    if affine:
        torch.testing.assert_close(fast.weight.grad, ref.weight.grad, **tol)
    # the definition itself, written out once more
    w = fast.weight if affine else 1.0
    torch.testing.assert_close(y_ref, x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w, **tol)


def test_rmsnorm_fast_path_passes_gradcheck_and_takes_strided_inputs():
    torch.manual_seed(1)
    norm = build_normalizer("rmsnorm", 6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, weight: _RMSNormFunction.apply(t, weight, 1e-6), (x, w))
    assert torch.autograd.gradcheck(lambda t: _RMSNormFunction.apply(t, None, 1e-6), (x,))
    # a transposed (non-contiguous) input and gradient give the definition's values
    base = torch.randn(6, 5, 4, dtype=torch.float64)
    xt = base.transpose(0, 2).requires_grad_()  # (4, 5, 6), strided
    dy = torch.randn(6, 5, 4, dtype=torch.float64).transpose(0, 2)
    norm(xt).backward(dy)
    g_fast = _grads(xt)[0]
    rms_norm_reference(xt, norm.weight, norm.eps).backward(dy)
    torch.testing.assert_close(g_fast, xt.grad)


def test_rmsnorm_without_grad_and_the_implementation_option():
    x = torch.randn(2, 3, 8)
    fast, ref = build_normalizer("rmsnorm", 8), build_normalizer({"name": "rmsnorm", "implementation": "reference"}, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x))
    assert set(fast.state_dict()) == set(ref.state_dict()) == {"weight"}  # checkpoints interchange
    with pytest.raises(ValueError, match="unknown implementation 'fused'.*auto, reference"):
        build_normalizer({"name": "rmsnorm", "implementation": "fused"}, 8)


# -- GELU (tanh approximation) ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gelu_tanh_equals_torch(dtype):
    x = torch.linspace(-8, 8, 401, dtype=dtype).reshape(1, 401).repeat(3, 1).requires_grad_()
    dy = torch.randn(x.shape, dtype=dtype)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    y = gelu_tanh(x)
    y.backward(dy)
    g = _grads(x)[0]
    y_ref = F.gelu(x, approximate="tanh")
    y_ref.backward(dy)
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(g, x.grad, **tol)
    with torch.no_grad():
        torch.testing.assert_close(gelu_tanh(x), y_ref, **tol)


def test_mlp_activation_by_name():
    from lightning_film.nn.mlp import MLP

    torch.manual_seed(9)
    mlp = MLP(8, 16, activation="gelu")
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))))
    with pytest.raises(ValueError, match="unknown activation 'relu'; accepted: gelu, gelu_tanh"):
        Transformer(D, 1, 2, DC, activation="relu")


def test_exact_gelu_is_the_default_and_set_activation_swaps_every_mlp():
    from lightning_film.nn.mlp import set_activation

    torch.manual_seed(9)
    model = Transformer(D, 2, 2, DC, conditioner="film")
    assert all(type(b.mlp.act) is nn.GELU and b.mlp.act.approximate == "none" for b in model.blocks)
    x, cond = torch.randn(B, N, D), Conditioning(vector=torch.randn(B, DC))
    exact = model(x, cond)
    assert set_activation(model, "gelu_tanh") == 2
    assert all(b.mlp.act.approximate == "tanh" for b in model.blocks)
    tanh = model(x, cond)
    assert not torch.allclose(exact, tanh)  # a different function (the blocks are not the identity)
    assert set_activation(model, "gelu") == 2
    torch.testing.assert_close(model(x, cond), exact)
    with pytest.raises(ValueError, match="unknown activation 'relu'; accepted: gelu, gelu_tanh"):
        set_activation(model, "relu")


# -- modulation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("with_shift", [True, False])
def test_modulate_affine_equals_addcmul(per_token, with_shift):
    torch.manual_seed(2)
    h = torch.randn(B, N, D, requires_grad=True)
    rows = N if per_token else 1
    gamma = torch.randn(B, rows, D, requires_grad=True)
    beta = torch.randn(B, rows, D, requires_grad=True) if with_shift else None
    dy = torch.randn(B, N, D)
    leaves = [t for t in (h, gamma, beta) if t is not None]
    modulate_affine(h, gamma, beta).backward(dy)
    fast = _grads(*leaves)
    (h * gamma if beta is None else torch.addcmul(beta, h, gamma)).backward(dy)
    for a, t in zip(fast, leaves):
        torch.testing.assert_close(a, t.grad)


# -- batched projections ----------------------------------------------------------------------------
# the conditioners whose per-site projections join the batched matmul (adaln_single projects once per stack)
PROJECTING = [n for n in list_conditioners() if isinstance(build_conditioner(n, D, DC), ProjectedConditioner)]


def _pair(conditioner, **options) -> tuple[Transformer, Transformer]:
    spec = {"name": conditioner, **options}
    torch.manual_seed(0)
    a = Transformer(D, 2, 2, DC, conditioner=spec, causal=True)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # off the zero init, so every projection matters
        for p in a.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    b = Transformer(D, 2, 2, DC, conditioner=spec, causal=True)
    b.load_state_dict(a.state_dict())
    return a, b


def _run(model: Transformer, cond: Conditioning) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = torch.randn(B, N, D, generator=torch.Generator().manual_seed(3))
    out = model(x, cond)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["vector", "per_token"])
@pytest.mark.parametrize("conditioner", PROJECTING)
def test_batched_projections_equal_per_site(conditioner, kind, monkeypatch):
    g = torch.Generator().manual_seed(4)
    cond = (
        Conditioning(vector=torch.randn(B, DC, generator=g))
        if kind == "vector"
        else Conditioning(per_token=torch.randn(B, N, DC, generator=g))
    )
    batched, per_site = _pair(conditioner)
    calls = []
    real = transformer_module.precompute_projections
    monkeypatch.setattr(transformer_module, "precompute_projections", lambda *a: calls.append(1) or real(*a))
    out_b, grads_b = _run(batched, cond)
    assert calls and all(c._precomputed is None for c in batched.conditioners())  # cleared after the forward
    filled = real(batched._sites(), cond, torch.zeros(B, N, D))
    assert len(filled) == len(batched._sites())  # every site took part
    for c in filled:
        c._precomputed = None
    monkeypatch.setattr(transformer_module, "precompute_projections", lambda *a: [])
    out_s, grads_s = _run(per_site, cond)
    torch.testing.assert_close(out_b, out_s, rtol=1e-5, atol=1e-6)
    assert grads_b.keys() == grads_s.keys()
    for name in grads_s:
        torch.testing.assert_close(grads_b[name], grads_s[name], rtol=1e-5, atol=1e-6, msg=name)


def test_batched_projections_keep_diagnostics_and_skip_what_they_cannot_batch():
    cond = Conditioning(vector=torch.randn(B, DC))
    # an MLP projection (hidden_dim) keeps its own forward, and so does a hooked Linear
    mlp, _ = _pair("film", hidden_dim=4)
    assert transformer_module.precompute_projections(mlp._sites(), cond, torch.zeros(B, N, D)) == []
    model, reference = _pair("adaln_zero")
    seen = []
    model.blocks[0].cond1.modulation[-1].register_forward_hook(lambda *a: seen.append(1))
    with observe_conditioning(model) as stats:
        out = model(torch.ones(B, N, D), cond)
    with observe_conditioning(reference) as ref_stats:
        ref = reference(torch.ones(B, N, D), cond)
    assert seen == [1]  # the hooked projection ran by itself
    torch.testing.assert_close(out, ref)
    assert stats.keys() == ref_stats.keys()
    for name in stats:
        for key in stats[name]:
            torch.testing.assert_close(stats[name][key], ref_stats[name][key])


def test_projected_reads_its_own_conditioning_only():
    model, _ = _pair("film")
    site = model.blocks[0].cond1
    assert isinstance(site, ProjectedConditioner)
    cond, other = Conditioning(vector=torch.randn(B, DC)), Conditioning(vector=torch.randn(B, DC))
    site._precomputed = (cond, {"scale": torch.zeros(B, 1, D), "shift": torch.zeros(B, 1, D)})
    h = torch.randn(B, N, D)
    # another Conditioning object is projected afresh, not read from the batch
    scale, shift = site.projected(h, other, "scale", "shift")
    torch.testing.assert_close(scale, site.scale(other.signal()))
    assert torch.equal(site.projected(h, cond, "scale")[0], torch.zeros(B, 1, D))
    site._precomputed = None


# -- KV cache ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("conditioner", "positions"),
    [("none", "none"), ("film", "none"), ("adaln_zero", "none"), ("cross_attention", "none"), ("film", "rotary")],
)
def test_cached_decoding_equals_the_full_forward(conditioner, positions):
    torch.manual_seed(6)
    model = Transformer(D, 2, 2, DC, conditioner=conditioner, causal=True, positions=positions).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(2, 11, D)
    per_token = torch.randn(2, 11, DC)
    tokens = torch.randn(2, 3, DC)

    def cond(lo: int, hi: int) -> Conditioning:
        return Conditioning(per_token=per_token[:, lo:hi], tokens=tokens)

    with torch.no_grad():
        full = model(x, cond(0, 11))
        cache = model.new_cache(16)
        parts = [model(x[:, :4], cond(0, 4), cache=cache)]  # a prompt, then chunks and single tokens
        parts.append(model(x[:, 4:7], cond(4, 7), cache=cache))
        parts += [model(x[:, i : i + 1], cond(i, i + 1), cache=cache) for i in range(7, 11)]
    assert cache.length == 11
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_rotary_scores_depend_on_relative_positions_only():
    """RoPE: q at i and k at j score the same as q at i + s and k at j + s (and differ from j + 1)."""
    from lightning_film.nn.attention import rotary

    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)

    def score(i: int, j: int) -> torch.Tensor:
        return (rotary(q, i) * rotary(k, j)).sum(-1)

    torch.testing.assert_close(score(3, 1), score(10, 8), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2))
    assert torch.equal(rotary(q, 0), q)  # position 0: no rotation
    assert rotary(q.bfloat16(), 5).dtype == torch.bfloat16


def test_rotary_in_the_ane_layout_rotates_queries_and_keys_as_the_default_layout_does():
    """The channels-first attention's RoPE equals rotary() head by head (odd head width: its last channel stays)."""
    from lightning_film.nn.attention import rotary, rotary_angles
    from lightning_film.nn.channels_first import Attention, Conv1x1

    torch.manual_seed(0)
    for dim, heads in ((16, 2), (15, 3)):
        dh, length = dim // heads, 6
        lin = nn.Linear(dim, dim)
        conv = Conv1x1(lin)
        attn = Attention(conv, conv, conv, conv, heads, rotary_angles(0, length, dh))
        x = torch.randn(2, dim, 1, 5)  # (B, D, 1, S), S < L
        heads_first = x.squeeze(2).transpose(1, 2).reshape(2, 5, heads, dh).transpose(1, 2)  # (B, H, S, Dh)
        expected = rotary(heads_first, 0).transpose(1, 2).reshape(2, 5, dim).transpose(1, 2)[:, :, None]
        torch.testing.assert_close(attn._rotated(x), expected, rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match="rotary positions for 7 tokens, but the tables cover 6"):
            attn._rotated(torch.randn(1, dim, 1, 7))


def test_rotary_without_a_seq_len_is_refused_by_the_ane_layout_with_one_line():
    from lightning_film.export.steps import ExportError
    from lightning_film.nn.attention import SelfAttention
    from lightning_film.nn.channels_first import ChannelsFirst

    class Converter(ChannelsFirst):
        def error(self, message: str) -> Exception:
            return ExportError(message)

    attn = SelfAttention(16, 2, causal=True, positions="rotary")
    with pytest.raises(ExportError, match=r"rotary positions \(at <root>\) need the network's seq_len"):
        Converter(attn).convert(attn)


def test_cache_refuses_what_it_cannot_follow():
    with pytest.raises(ValueError, match="causal"):
        Transformer(D, 1, 2, DC, conditioner="none", causal=False).new_cache(8)
    with pytest.raises(ValueError, match="in-context tokens"):
        Transformer(D, 1, 2, DC, conditioner="concat", causal=True).new_cache(8)
    model = Transformer(D, 1, 2, DC, conditioner="none", causal=True)
    cache = model.new_cache(4)
    with torch.no_grad(), pytest.raises(ValueError, match="exceed max_len=4"):
        model(torch.randn(1, 5, D), Conditioning(), cache=cache)


def _byte_model(**kwargs) -> ByteLM:
    torch.manual_seed(7)
    model = tiny.byte_lm(dim=32, depth=2, num_heads=2, seq_len=24, nibble_dim=8, acc_dim=4, **kwargs)
    model.rare_table[3, 5] = True
    model.rare_table_known.fill_(True)
    with torch.no_grad():  # spread the logits: an untrained model is near a tie everywhere
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture
def one_thread():
    """Byte-at-a-time decoding is all tiny ops: one thread keeps it fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("block_conditioner", "positions"), [("none", "learned"), ("film", "learned"), ("none", "rotary")]
)
@pytest.mark.parametrize("prompt", [b"To be", b"x" * 20, b"y" * 30])  # short, crossing, beyond the context
def test_generate_gives_the_same_bytes_with_and_without_the_cache(block_conditioner, positions, prompt, one_thread):
    model = _byte_model(block_conditioner=block_conditioner, positions=positions)
    cached = model.generate(prompt, 24, temperature=0, use_cache=True)
    plain = model.generate(prompt, 24, temperature=0, use_cache=False)
    assert cached == plain and len(cached) == 24
    sampled = [model.generate(prompt, 16, temperature=1.0, top_k=20, seed=1, use_cache=u) for u in (True, False)]
    assert sampled[0] == sampled[1]


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_byte_forward_with_a_cache_continues_positions(positions):
    model = _byte_model(positions=positions).eval()
    stream = model.byte_stream(b"Article 1\nAll human beings")
    ids = stream.window(24)
    with torch.no_grad():
        full = model(*ids)
        cache = model.new_cache()
        first = model(*(t[:, :10] for t in ids), cache=cache)
        rest = model(*(t[:, 10:] for t in ids), cache=cache)
        torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="24 cached bytes"):
            model(*(t[:, :1] for t in ids), cache=cache)


# -- torch.compile ----------------------------------------------------------------------------------
COMPILE_CHECK = """
import torch
from lightning_film import Conditioning, Transformer

torch.manual_seed(0)
eager = Transformer(16, 2, 2, 8, conditioner="film", causal=True)
with torch.no_grad():
    for p in eager.parameters():
        p.add_(0.3 * torch.randn_like(p))
compiled = Transformer(16, 2, 2, 8, conditioner="film", causal=True)
compiled.load_state_dict(eager.state_dict())
compiled.compile()
x, cond = torch.randn(3, 7, 16), Conditioning(vector=torch.randn(3, 8))
for model in (eager, compiled):
    model.out = model(x, cond)
    model.out.square().mean().backward()
torch.testing.assert_close(compiled.out, eager.out, rtol=1e-4, atol=1e-5)
for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
print("compiled ok")
"""


def test_compiled_equals_eager(tmp_path: Path):
    # a fresh interpreter, as a training run compiles: inductor imports setuptools, which a long
    # test session's earlier imports can leave unable to load
    proc = subprocess.run(
        [sys.executable, "-c", COMPILE_CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "compiled ok" in proc.stdout, proc.stderr[-3000:]


def test_compile_callback_checks_its_arguments_and_paths(tmp_path: Path):
    from lightning_film.callbacks.compile import TorchCompile

    with pytest.raises(ValueError, match="mode must be one of"):
        TorchCompile(mode="fastest")
    with pytest.raises(ValueError, match="stages must be a list drawn from"):
        TorchCompile(stages=["train"])
    with pytest.raises(ValueError, match="non-empty list of attribute paths"):
        TorchCompile(modules="transformer")
    callback = TorchCompile(modules=["decoder"])
    with pytest.raises(ValueError, match="no submodule 'decoder'; its children: net"):
        callback.setup(None, _byte_model(), "fit")
    model = _byte_model()
    callback = TorchCompile(stages=["fit"])
    callback.setup(None, model, "predict")  # not a compiled stage: left alone
    assert model.net.transformer._compiled_call_impl is None
    callback.setup(None, model, "fit")
    assert model.net.transformer._compiled_call_impl is not None
    assert set(model.state_dict()) == set(_byte_model().state_dict())  # no _orig_mod. prefix
    callback.teardown(None, model, "fit")
    assert model.net.transformer._compiled_call_impl is None


def test_reuse_freed_memory_reports_whether_it_applied():
    from lightning_film.callbacks.cpu_memory import reuse_freed_memory

    assert reuse_freed_memory() is (sys.platform.startswith("linux") and reuse_freed_memory())


# -- the benchmark command --------------------------------------------------------------------------
def test_performance_benchmark_writes_its_report(tmp_path: Path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.performance import parse_args, run

    settings, _, _ = parse_args(["--quick", "--sections", "norms"])
    result = run(settings, tmp_path, "python -m benchmarks.performance --quick --sections norms")
    assert {p.name for p in tmp_path.iterdir()} == {"performance.md", "performance.json", "performance.png"}
    md = (tmp_path / "performance.md").read_text()
    assert "--quick --sections norms" in md and result["machine"]["torch"] in md and "Load average" in md
    assert {r["normalizer"] for r in result["norms"]["rows"]} >= {"layernorm", "rmsnorm", "rmsnorm (reference)"}
    with pytest.raises(SystemExit):
        parse_args(["--sections", "norms,speed"])
