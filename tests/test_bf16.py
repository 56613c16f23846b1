"""bf16 mixed precision (Lightning's ``bf16-mixed``: ``torch.autocast("cpu", torch.bfloat16)``).

Each piece kept in fp32 is checked under autocast at its source: normalizer statistics, attention
(on the CPU), the losses, the diffusion schedule and x0/eps conversions, the byte model's accumulator
and bit counters, the KID features; then a tiny bf16-mixed fit + test of each model logs finite
metrics with the plugin's autocast active. Tiny shapes, seconds in all.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_film.data.accumulator import StreamingAccumulator, accumulate
from lightning_film.data.bytes import ByteDataModule
from lightning_film.metrics import TinyFeatures
from lightning_film.models import WorldModel
from lightning_film.models.byte_lm import BitsPerByte
from lightning_film.nn import attention
from lightning_film.nn.attention import CrossAttention, SelfAttention
from lightning_film.nn.diffusion import Diffusion, Flow, drawn_on
from lightning_film.nn.norms import DyT, LayerNorm, RMSNorm
from tests.helpers import tiny

BF16 = torch.bfloat16
FRAME, K, A = tiny.FRAME, tiny.CONTEXT, tiny.ACTIONS
WORLD = {**tiny.WORLD, "rollout_steps": 2, "rollout_windows": 2}
BYTE = tiny.BYTE


def autocast():
    return torch.autocast("cpu", dtype=BF16)


def world_batch(b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "context": torch.randint(0, 256, (b, K, 3, FRAME, FRAME), generator=g, dtype=torch.uint8),
        "action": torch.randint(0, A, (b,), generator=g),
        "target": torch.randint(0, 256, (b, 3, FRAME, FRAME), generator=g, dtype=torch.uint8),
    }


def perturbed_world(**kwargs) -> WorldModel:
    torch.manual_seed(0)
    m = tiny.world_model(**{**WORLD, **kwargs})
    with torch.no_grad():  # off the zero-initialised head, so predictions are not exactly 0
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    return m


# -- normalizers ---------------------------------------------------------------------------------------
NORMS = {
    "layernorm": lambda d: LayerNorm(d),
    "rmsnorm": lambda d: RMSNorm(d),
    "rmsnorm_reference": lambda d: RMSNorm(d, implementation="reference"),
    "dyt": lambda d: DyT(d),
}


@pytest.mark.parametrize("name", list(NORMS))
@pytest.mark.parametrize("grad", [False, True])
def test_normalizers_compute_in_fp32_from_a_bf16_input(name: str, grad: bool) -> None:
    """A bf16 input comes out in bf16, rounded once from the fp32 computation (not computed in bf16)."""
    torch.manual_seed(0)
    norm = NORMS[name](512)
    with torch.no_grad():  # weights that are not exactly representable in bf16
        for p in norm.parameters():
            p.add_(0.01 * torch.randn(p.shape))
    # a large offset and spread: the mean of squares and the variance lose bits in bf16
    x = (3.0 + torch.randn(8, 512) * torch.logspace(-2, 1, 512)).to(BF16).requires_grad_(grad)
    expected = norm(x.detach().float()).to(BF16)
    with autocast(), torch.set_grad_enabled(grad):
        y = norm(x)
    assert y.dtype == BF16
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    if grad:
        y.float().sum().backward()
        assert x.grad.dtype == BF16 and torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("normalizer", ["rmsnorm", "layernorm", "dyt"])
def test_the_residual_stream_and_every_normalizer_stay_fp32_in_both_models(normalizer: str) -> None:
    """Under autocast the matmuls are bf16, but what the normalizers read and give is fp32."""
    seen: list[tuple[str, torch.dtype, torch.dtype]] = []
    linears: list[torch.dtype] = []
    world = perturbed_world(normalizer=normalizer)
    torch.manual_seed(0)
    byte = tiny.byte_lm(**BYTE, normalizer=normalizer)
    byte.rare_table_known.fill_(True)
    for m in (world, byte):
        for mod in m.modules():
            if isinstance(mod, (LayerNorm, RMSNorm, DyT)):
                mod.register_forward_hook(
                    lambda mod, args, out: seen.append((type(mod).__name__, args[0].dtype, out.dtype))
                )
            elif isinstance(mod, torch.nn.Linear):
                mod.register_forward_hook(lambda mod, args, out: linears.append(out.dtype))
    ids = torch.randint(0, 256, (2, 16))
    nib = torch.randint(0, 16, (2, 16))
    with autocast():
        world.loss(world_batch()).backward()
        byte(ids, nib, ids).float().sum().backward()
    assert seen and all(i == torch.float32 and o == torch.float32 for _, i, o in seen), seen
    assert BF16 in linears  # autocast reached the matmuls: the check above is not vacuous


# -- attention ------------------------------------------------------------------------------------------
def test_attention_runs_in_fp32_on_the_cpu_under_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every attention call of our layers (causal, key mask, KV cache, cross) takes the bf16 q, k, v
    the projections give, runs torch's kernel on them in fp32 (exactly: bf16 widens to fp32 without
    loss) and returns bf16: on the CPU torch's bf16 kernel is slower than its fp32 one
    (``benchmarks/results/performance-step-bf16``), and an fp32 softmax is the more exact."""
    kernel: list[tuple[tuple, torch.Tensor]] = []
    returned: list[torch.Tensor] = []
    sdpa, attend = F.scaled_dot_product_attention, attention.attend

    def recording_kernel(q, k, v, **kw):
        out = sdpa(q, k, v, **kw)
        kernel.append(((q, k, v), out))
        return out

    def recording_attend(q, k, v, **kw):
        out = attend(q, k, v, **kw)
        returned.append(out)
        return out

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording_kernel)
    monkeypatch.setattr(attention, "attend", recording_attend)
    torch.manual_seed(0)
    d, s = 32, 256
    causal, bidi, cross = SelfAttention(d, 2, causal=True), SelfAttention(d, 2), CrossAttention(d, d, 2)
    x, ctx = torch.randn(2, s, d), torch.randn(2, s, d)
    key_mask = torch.rand(2, s) > 0.2
    with torch.no_grad(), autocast():
        causal(x)
        bidi(x, key_mask=key_mask)
        cross(x, ctx, mask=key_mask)
        cache = attention.KVCache(s)
        causal(x[:, : s - 8], cache=cache)
        causal(x[:, s - 8 : s - 4], cache=cache)  # several new tokens over a cache: a mask
        causal(x[:, s - 4 : s - 3], cache=cache)  # one new token
    assert len(kernel) == len(returned) == 6
    for ((q, k, v), out), back in zip(kernel, returned):
        assert q.dtype == k.dtype == v.dtype == out.dtype == torch.float32
        assert all(torch.equal(t, t.to(BF16).float()) for t in (q, k, v))  # the projections' bf16, widened
        assert back.dtype == BF16 and torch.equal(back, out.to(BF16))
    with torch.no_grad():  # outside autocast (fp32 training, export) the call is torch's own
        kernel.clear()
        causal(x)
        assert kernel[0][0][0].dtype == torch.float32 and len(returned) == 7


# -- losses and the diffusion schedule ----------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs", [{}, {"objective": "diffusion", "prediction": "eps"}, {"objective": "flow", "sampler": "heun"}]
)
def test_world_loss_prediction_and_sampling_are_fp32_under_autocast(kwargs: dict) -> None:
    m = perturbed_world(**kwargs)
    batch = world_batch()
    with autocast():
        loss = m.loss(batch, torch.Generator().manual_seed(0))
        x = torch.randn(2, 3, FRAME, FRAME)
        pred = m(x, m.noisiest_time(2), torch.zeros(2, K, 3, FRAME, FRAME), torch.tensor([0, 1]))
        sampled = m.sample_next(batch["context"][:2], batch["action"][:2], generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert pred.dtype == torch.float32  # the head's bf16 leaves here: guidance, loss, x0/eps in fp32
    assert sampled.dtype == torch.uint8 and sampled.shape == (2, 3, FRAME, FRAME)


def test_diffusion_levels_and_conversions_are_fp32_for_bf16_inputs() -> None:
    """The schedule is never rounded to a bf16 prediction's dtype: sqrt(abar) near 0 and
    sqrt(1 - abar) near 1 keep 8 bits in bf16 (the noisiest level's abar is ~1e-9)."""
    diff = Diffusion(1000, "v")
    t = torch.tensor([0, 500, 999])
    x_t, pred = torch.randn(3, 4), torch.randn(3, 4).to(BF16)
    with autocast():
        a, s = diff._levels(t, pred)
        x0, eps = diff.to_x0_eps(x_t.to(BF16), pred, t)
        back = diff.from_x0_eps(x_t.to(BF16), x0.to(BF16), eps.to(BF16), t)
        loss = diff.loss(pred, x_t, x_t, t)
    assert a.dtype == s.dtype == x0.dtype == eps.dtype == back.dtype == loss.dtype == torch.float32
    torch.testing.assert_close(a.flatten(), diff.alpha_bar[t].sqrt().float(), rtol=0, atol=0)
    torch.testing.assert_close(s.flatten(), (1 - diff.alpha_bar[t]).sqrt().float(), rtol=0, atol=0)
    flow = Flow(shift=3.0)
    times: list[torch.Tensor] = []
    with autocast():
        out = flow.sample(lambda x, tt: times.append(tt) or x.to(BF16), torch.randn(2, 4).to(BF16), 5, "heun")
    assert all(tt.dtype == torch.float32 for tt in times) and out.dtype == torch.float32
    assert times[1][0] == pytest.approx(flow.shifted(torch.tensor(0.8, dtype=torch.float64)).item(), abs=1e-7)


# -- the byte model: loss, counters, accumulator --------------------------------------------------------
def test_byte_loss_counters_and_accumulator_are_unchanged_by_autocast() -> None:
    torch.manual_seed(0)
    m = tiny.byte_lm(**BYTE)
    m.rare_table_known.fill_(True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (2, 17), generator=g)
    batch = {"bytes": ids, "nibbles": ids[:, :-1] % 16, "acc": ids[:, :-1]}
    with autocast():
        logits = m(ids[:, :-1], batch["nibbles"], batch["acc"])
        nll = m.nll(batch)
    assert logits.dtype == BF16 and nll.dtype == torch.float32  # bf16 matmuls, fp32 log-softmax
    expected = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
    torch.testing.assert_close(nll, expected, rtol=1e-6, atol=1e-6)
    bpb = BitsPerByte(2)
    with autocast():
        bpb.update(nll, torch.ones_like(nll), torch.tensor([0, 1]))
    assert bpb.nats.dtype == bpb.count.dtype == torch.float64
    # the dead-energy accumulator: integer counts since the document start, exact under autocast
    table = torch.rand(16, 16, generator=g) < 0.3
    nibbles = torch.randint(0, 16, (3, 64), generator=g)
    plain = accumulate(nibbles, table)
    stream = StreamingAccumulator("utf8", table)
    raw = torch.randint(0, 256, (64,), generator=g, dtype=torch.uint8)
    plain_stream = stream(raw)
    stream.reset()
    with autocast():
        auto = accumulate(nibbles, table)
        auto_stream = stream(raw)
    assert auto.dtype == plain.dtype == torch.uint8 and torch.equal(auto, plain)
    assert all(torch.equal(a, b) for a, b in zip(auto_stream, plain_stream))


# -- KID ------------------------------------------------------------------------------------------------
def test_kid_features_are_computed_in_fp32_inside_autocast() -> None:
    extractor = TinyFeatures()
    imgs = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    expected = extractor(imgs)
    inner: list[torch.dtype] = []
    for mod in extractor.network().modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(lambda mod, args, out: inner.append(out.dtype))
    with autocast():
        got = extractor(imgs)
    assert inner and all(d == torch.float32 for d in inner), inner
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# -- devices ---------------------------------------------------------------------------------------------
def test_draws_follow_the_generators_device() -> None:
    assert drawn_on(None) == torch.device("cpu")
    assert drawn_on(torch.Generator()) == torch.device("cpu")
    m = perturbed_world()
    ctx, act = world_batch(1)["context"], torch.tensor([2])
    one = m.sample_next(ctx, act, generator=torch.Generator().manual_seed(3))
    per_window = m.sample_next(ctx, act, generator=[torch.Generator().manual_seed(3)])
    assert one.device.type == "cpu" and torch.equal(one, per_window)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_models_take_cpu_and_cuda_generators() -> None:  # pragma: no cover (no GPU here)
    m = perturbed_world().cuda()
    ctx, act = world_batch(2)["context"], torch.tensor([0, 1])
    on_cpu = m.sample_next(ctx, act, generator=torch.Generator().manual_seed(0))
    on_gpu = m.sample_next(ctx, act, generator=torch.Generator("cuda").manual_seed(0))
    assert on_cpu.device.type == on_gpu.device.type == "cuda"
    loss = m.loss({k: v.cuda() for k, v in world_batch().items()}, torch.Generator("cuda").manual_seed(0))
    assert math.isfinite(loss.item())


# -- through Lightning's precision plugin ---------------------------------------------------------------
def bf16_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    kwargs = {
        "max_steps": 2,
        "val_check_interval": 2,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1,
        "limit_test_batches": 1,
        "gradient_clip_val": 1.0,
        **kwargs,
    }
    return L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


class GradNorm(L.Callback):
    """The total gradient norm after each step's clipping (gradients are zeroed only at the next step)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = [p.grad.norm() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.stack(grads).norm()))


def autocast_seen(model: torch.nn.Module) -> list[torch.dtype]:
    """The output dtypes of the model's first Linear in every forward (bf16 when the plugin's autocast is on)."""
    out: list[torch.dtype] = []
    next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).register_forward_hook(
        lambda mod, args, y: out.append(y.dtype)
    )
    return out


def test_byte_lm_fits_tests_and_generates_in_bf16_mixed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src = tmp_path / "text.txt"
    src.write_bytes(
        b"To be, or not to be, that is the question. " * 40 + bytes(rng.integers(0, 256, 200, dtype=np.uint8))
    )
    L.seed_everything(0, verbose=False)
    dm = ByteDataModule([str(src)], seq_len=16, batch_size=8, split_blocks=10, val_fraction=0.1, test_fraction=0.1)
    m = tiny.byte_lm(**BYTE)
    dtypes = autocast_seen(m)
    # the configs clip gradients; Lightning's bf16 plugin would refuse to with our fused AdamW
    grad_norm = GradNorm()
    trainer = bf16_trainer(tmp_path, gradient_clip_val=1e-3, callbacks=[grad_norm])
    trainer.fit(m, dm)
    assert trainer.precision == "bf16-mixed" and dtypes and set(dtypes) == {BF16}
    assert m.optimizers().optimizer.defaults["fused"] and len(grad_norm.norms) == 2
    assert all(0 < n <= 1e-3 * 1.01 for n in grad_norm.norms), grad_norm.norms  # clipped
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key in ("train/loss", "val/bpb"):
        assert key in logged and math.isfinite(logged[key]), key
    test = trainer.test(m, dm, verbose=False)[0]
    assert math.isfinite(test["test/bpb"]) and 0 < test["test/bpb"] < 16
    assert all(p.dtype == torch.float32 for p in m.parameters())  # mixed: fp32 master weights
    with autocast():
        out = m.generate(b"To be", 8, seed=0)
    assert len(out) == 8


def test_world_model_fits_and_tests_in_bf16_mixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_film.data.world import WorldDataModule

    monkeypatch.setenv("LIGHTNING_FILM_CACHE", str(tmp_path / "cache"))
    L.seed_everything(0, verbose=False)
    m = tiny.world_model(**WORLD)
    dm = WorldDataModule(
        episodes=10, episode_length=8, frame_size=FRAME, context_frames=K, val_episodes=2, test_episodes=2, batch_size=4
    )
    dtypes = autocast_seen(m)
    kid_inner: list[torch.dtype] = []
    trainer = bf16_trainer(tmp_path)
    trainer.fit(m, dm)
    assert dtypes and set(dtypes) == {BF16}
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key in ("train/loss", "val/loss", "val/psnr"):
        assert key in logged and math.isfinite(logged[key]), key
    for mod in m.evaluator.kid.inception.network().modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod.register_forward_hook(lambda mod, args, out: kid_inner.append(out.dtype))
    dtypes.clear()
    test = trainer.test(m, dm, verbose=False)[0]
    assert BF16 in dtypes  # the test step ran under the plugin's autocast ...
    assert kid_inner and set(kid_inner) == {torch.float32}  # ... and KID's network did not
    for key in ("test/loss", "test/psnr", "test/kid_mean", "test/x0_psnr", "test/rollout_psnr"):
        assert key in test and math.isfinite(test[key]), key
    # the copy baseline does not depend on the model: its scores must not depend on the precision
    fp32 = L.Trainer(
        accelerator="cpu",
        limit_test_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,  # its sample sheets go there, not into the working directory
    )
    reference = fp32.test(m, dm, verbose=False)[0]
    for key in ("test/ssim_copy", "test/psnr_copy", "test/rollout_psnr_copy"):
        assert test[key] == pytest.approx(reference[key], abs=1e-6), key


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_smoke_refuses_in_one_line_without_cuda(capsys: pytest.CaptureFixture) -> None:
    from benchmarks.gpu_smoke import main

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err
