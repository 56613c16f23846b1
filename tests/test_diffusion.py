"""Objectives and samplers of lightning_film.nn.diffusion, against closed-form oracles.

For Gaussian data x0 ~ N(mu, s^2) (and single points, s = 0) the best denoiser is known in
closed form, and so is the exact noise -> data map of the probability-flow ODE that DDIM and the
flow samplers discretize: a sampler driven by that oracle must land on it.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_film.nn.diffusion import (
    SAMPLERS,
    Diffusion,
    Flow,
    build_objective,
    check_sampler,
    cosine_alpha_bar,
    timestep_embedding,
)

MU, S = 1.0, 0.5


def noise(n: int = 2048, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def diffusion_oracle(d: Diffusion, mu: float, s: float):
    """The exact E[x0 | x_t] denoiser for x0 ~ N(mu, s^2), in d's prediction (eps or v)."""

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = d.alpha_bar[t].view(-1, 1)
        z = x - abar.sqrt() * mu
        x0 = mu + abar.sqrt() * s**2 / (abar * s**2 + 1 - abar) * z
        eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
        return d.from_x0_eps(x, x0, eps, t)

    return denoise


def flow_oracle(mu: float, s: float):
    """The exact velocity E[noise - x0 | x_t] for x0 ~ N(mu, s^2), x_t = (1 - t) x0 + t noise."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.view(-1, 1).to(x.dtype)
        var = (1 - t) ** 2 * s**2 + t**2
        return (t - (1 - t) * s**2) / var * (x - (1 - t) * mu) - mu

    return velocity


# -- schedule and conversions -------------------------------------------------------------------------
def test_cosine_schedule() -> None:
    abar = cosine_alpha_bar(1000)
    assert abar.shape == (1000,) and abar.dtype == torch.float64
    assert (abar[1:] < abar[:-1]).all(), "abar must decrease strictly"
    assert 0.9999 < abar[0] < 1 and 0 < abar[-1] < 1e-6  # from clean to (almost) pure noise
    betas = 1 - abar[1:] / abar[:-1]
    assert betas.max() <= 0.999 + 1e-12 and betas.min() > 0
    # the cosine curve: half the signal variance is left near the middle
    assert 0.4 < abar[499] < 0.6


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_diffusion_conversions_round_trip(prediction: str) -> None:
    d = Diffusion(1000, prediction)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(64, 3, 4, 4, generator=g), torch.randn(64, 3, 4, 4, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    x_t = d.add_noise(x0, eps, t)
    target = d.target(x0, eps, t)
    x0_back, eps_back = d.to_x0_eps(x_t, target, t)
    rows = t < 990  # eps -> x0 divides by sqrt(abar), tiny at the very last steps
    torch.testing.assert_close(eps_back[rows], eps[rows], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x0_back[rows], x0[rows], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(d.from_x0_eps(x_t, x0, eps, t), target, atol=1e-5, rtol=1e-5)
    assert d.loss(target, x0, eps, t) == 0
    if prediction == "v":  # v = sqrt(abar) eps - sqrt(1 - abar) x0, and v is exact at every t
        torch.testing.assert_close(x0_back, x0, atol=1e-4, rtol=1e-4)


def test_flow_interpolates_data_to_noise() -> None:
    f = Flow()
    g = torch.Generator().manual_seed(0)
    x0, n = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    torch.testing.assert_close(f.add_noise(x0, n, torch.zeros(8)), x0)
    torch.testing.assert_close(f.add_noise(x0, n, torch.ones(8)), n)
    t = torch.rand(8, generator=g)
    x_t = f.add_noise(x0, n, t)
    torch.testing.assert_close(f.to_x0(x_t, f.target(x0, n, t), t), x0)
    assert f.model_time(torch.tensor([0.0, 0.5, 1.0])).tolist() == [0.0, 500.0, 1000.0]


def test_training_times() -> None:
    g = torch.Generator().manual_seed(0)
    t = Diffusion(10).sample_time(2000, generator=g)
    assert t.dtype == torch.long and set(t.tolist()) == set(range(10))
    u = Flow().sample_time(2000, generator=g)
    assert u.dtype == torch.float32 and 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.03


# -- samplers with oracle denoisers ----------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [1, 3, 20])
def test_ddim_recovers_a_single_point(prediction: str, steps: int) -> None:
    d = Diffusion(1000, prediction).double()
    point = torch.tensor([[0.7, -0.3]], dtype=torch.float64)
    out = d.sample(diffusion_oracle(d, point, 0.0), noise(16).expand(16, 2).clone(), steps)
    torch.testing.assert_close(out, point.expand(16, 2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampler", SAMPLERS["flow"])
@pytest.mark.parametrize("steps", [1, 3, 20])
def test_flow_recovers_a_single_point(sampler: str, steps: int) -> None:
    point = 0.7
    out = Flow().sample(flow_oracle(point, 0.0), noise(16), steps, sampler)
    torch.testing.assert_close(out, torch.full_like(out, point), atol=1e-9, rtol=0)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_converges_to_the_exact_ode_map(prediction: str) -> None:
    d = Diffusion(1000, prediction).double()
    n = noise()
    abar_last = d.alpha_bar[-1]
    exact = MU + S * (n - abar_last.sqrt() * MU) / (abar_last * S**2 + 1 - abar_last).sqrt()
    errors = [(d.sample(diffusion_oracle(d, MU, S), n, k) - exact).abs().max().item() for k in (4, 16, 100)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.05, errors
    out = d.sample(diffusion_oracle(d, MU, S), n, 100)
    assert abs(out.std().item() - S * n.std().item()) < 0.02


def test_flow_samplers_converge_and_heun_beats_euler() -> None:
    n = noise()
    exact = MU + S * n  # the exact map: (x - mean_t) / std_t is constant along the ODE
    f, oracle = Flow(), flow_oracle(MU, S)
    error = {
        (smp, k): (f.sample(oracle, n, k, smp) - exact).abs().max().item()
        for smp in ("euler", "heun")
        for k in (2, 4, 8)
    }
    for smp in ("euler", "heun"):
        assert error[smp, 2] > error[smp, 4] > error[smp, 8], error
    for k in (2, 4, 8):  # a curved problem (s != 1): second order wins at equal steps
        assert error["heun", k] < error["euler", k], error
    assert error["heun", 8] < 0.1 and error["heun", 8] < error["euler", 8] / 4, error


def test_clip_bounds_the_sample() -> None:
    d = Diffusion(1000, "eps")

    def far(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # the eps of a clean sample at 5
        abar = d.alpha_bar[t].view(-1, 1).float()
        return (x - abar.sqrt() * 5.0) / (1 - abar).sqrt()

    out = d.sample(far, torch.randn(8, 3), 3, clip=1.0)
    torch.testing.assert_close(out, torch.ones_like(out))
    out = Flow().sample(lambda x, t: x - 5.0, torch.randn(8, 3), 3, "heun", clip=1.0)
    assert out.abs().max() <= 1.0


# -- errors and helpers ---------------------------------------------------------------------------------
def test_sampler_objective_pairs_are_checked() -> None:
    assert check_sampler("diffusion", None) == "ddim" and check_sampler("flow", None) == "euler"
    assert check_sampler("flow", "heun") == "heun"
    with pytest.raises(
        ValueError,
        match="sampler 'euler' does not fit objective 'diffusion'; accepted pairs are "
        "diffusion: ddim; flow: euler, heun",
    ):
        check_sampler("diffusion", "euler")
    with pytest.raises(ValueError, match="unknown objective 'score'; accepted: diffusion, flow"):
        check_sampler("score", None)
    with pytest.raises(ValueError, match="applies to objective 'diffusion' only"):
        build_objective("flow", "eps")
    with pytest.raises(ValueError, match="unknown prediction 'x0'"):
        build_objective("diffusion", "x0")
    with pytest.raises(ValueError, match=r"DDIM: steps must be an integer >= 1 and <= 10, got 11"):
        Diffusion(10).sample(lambda x, t: x, torch.zeros(1, 1), 11)
    assert isinstance(build_objective("diffusion", "eps", 50), Diffusion) and isinstance(build_objective("flow"), Flow)
    assert build_objective("diffusion").prediction == "v"  # the default: x0 stays well-posed at high noise


def test_timestep_embedding() -> None:
    t = torch.tensor([0.0, 1.0, 999.0])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert timestep_embedding(t, 7).shape == (3, 7)
    assert not torch.allclose(emb[1], emb[2])


# -- noise shift -------------------------------------------------------------------------------------------
def log_snr_diffusion(d: Diffusion) -> torch.Tensor:
    return torch.log(d.alpha_bar / (1 - d.alpha_bar))


@pytest.mark.parametrize("shift", [2.0, 4.0])
def test_diffusion_shift_moves_every_log_snr_by_two_ln_s(shift: float) -> None:
    plain, shifted = Diffusion(1000), Diffusion(1000, shift=shift)
    moved = log_snr_diffusion(plain) - log_snr_diffusion(shifted)
    torch.testing.assert_close(moved, torch.full_like(moved, 2 * math.log(shift)))
    assert torch.equal(Diffusion(1000, shift=1.0).alpha_bar, plain.alpha_bar)


@pytest.mark.parametrize("shift", [2.0, 4.0])
def test_flow_shift_is_the_same_log_snr_shift(shift: float) -> None:
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    snr = ((1 - t) / t) ** 2
    ts = Flow(shift).shifted(t)
    torch.testing.assert_close(((1 - ts) / ts) ** 2, snr / shift**2)
    ends = Flow(shift).shifted(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends.tolist() == [0.0, 1.0]
    u = Flow(shift).sample_time(4000, generator=torch.Generator().manual_seed(0))
    assert abs((u > 0.5).float().mean() - shift / (shift + 1)) < 0.02  # t' > 1/2 iff u > 1 / (s + 1)


@pytest.mark.parametrize("shift", [1.0, 4.0])
def test_shifted_samplers_still_land_on_the_oracle(shift: float) -> None:
    d = Diffusion(1000, "v", shift).double()
    point = torch.tensor([[0.7, -0.3]], dtype=torch.float64)
    out = d.sample(diffusion_oracle(d, point, 0.0), noise(16).expand(16, 2).clone(), 3)
    torch.testing.assert_close(out, point.expand(16, 2), atol=1e-6, rtol=0)
    n = noise()
    out = Flow(shift).sample(flow_oracle(MU, S), n, 64, "heun")
    assert (out - (MU + S * n)).abs().max() < 0.05


@pytest.mark.parametrize("bad", [0.5, 0, -1, float("nan"), float("inf"), True, "2"])
def test_bad_shift_is_one_clear_error(bad: object) -> None:
    with pytest.raises(ValueError, match=r"noise shift must be a number >= 1 \(1: the plain schedule\), got"):
        build_objective("diffusion", shift=bad)
    with pytest.raises(ValueError, match="noise shift must be a number >= 1"):
        build_objective("flow", shift=bad)


@pytest.mark.parametrize("objective", [Diffusion(1000, "v", 16.0), Diffusion(1000, "eps"), Flow(16.0)], ids=str)
def test_noisiest_time_is_pure_noise_and_x0_from_inverts_the_target(objective) -> None:
    objective = objective.double()
    x0, noise = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    t = objective.noisiest(6)
    assert torch.equal(t, torch.full((6,), 999) if isinstance(objective, Diffusion) else torch.ones(6))
    torch.testing.assert_close(objective.add_noise(x0, noise, t), noise, atol=1e-3, rtol=0)  # x_t is the noise
    t = objective.sample_time(6, generator=torch.Generator().manual_seed(0)).to(torch.float64)
    t = t.long() if isinstance(objective, Diffusion) else t
    x_t = objective.add_noise(x0, noise, t)
    torch.testing.assert_close(objective.x0_from(x_t, objective.target(x0, noise, t), t), x0, atol=1e-6, rtol=0)
