"""Training objectives and samplers for denoising generative models (no Lightning here).

Two objectives with one interface (:class:`Objective`), so a model never branches on the kind:

- ``diffusion``: DDPM (Ho et al., 2020) with the cosine schedule of Nichol & Dhariwal (2021),
  ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` over integer steps ``t = 0 .. T-1``; the model
  predicts ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho, 2022; the default) or ``eps``, the
  loss is the MSE to that target, and sampling is DDIM with eta = 0 (Song et al., 2021).
- ``flow``: rectified flow (Liu et al., 2022) with **t = 0 the data and t = 1 the noise**:
  ``x_t = (1 - t) x0 + t noise`` for continuous t in [0, 1]; the model predicts the velocity
  ``dx_t/dt = noise - x0``; sampling integrates dx/dt from t = 1 to t = 0 with Euler or Heun.

Both take a noise ``shift`` s >= 1 (default 1: the plain schedules). Diffusion subtracts
``2 ln s`` from every level's log-SNR (Hoogeboom et al., 2023, "simple diffusion"); flow maps
its times through ``t' = s t / (1 + (s - 1) t)`` (Esser et al., 2024, SD3), which is the same
log-SNR shift. Why: a small frame made of large flat objects stays readable through noise that
destroys fine texture, so at the plain schedules most training levels can be solved by
denoising x_t alone and the model rarely has to predict the frame from its conditioning
(measured on the world model: ``benchmarks/results/world/recipe``).

Times reach the model in a common unit (:meth:`Objective.model_time`, ``[0, 1000)``-ish for
both) so the same sinusoidal time embedding serves both objectives.

Legend: B batch, ``*`` any further dimensions of a sample.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from lightning_film.errors import check_int

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "Diffusion",
    "Flow",
    "Objective",
    "ObjectiveName",
    "Prediction",
    "SamplerName",
    "TimestepEmbedder",
    "build_objective",
    "check_sampler",
    "cosine_alpha_bar",
    "drawn_on",
    "timestep_embedding",
]

ObjectiveName = Literal["diffusion", "flow"]
Prediction = Literal["eps", "v"]
SamplerName = Literal["ddim", "euler", "heun"]
OBJECTIVES: tuple[str, ...] = get_args(ObjectiveName)
#: objective -> the samplers it accepts, its default first.
SAMPLERS: dict[str, tuple[str, ...]] = {"diffusion": ("ddim",), "flow": ("euler", "heun")}

#: A denoiser: (x_t (B, *), t (B,) in the objective's own time) -> its prediction (B, *).
Denoiser = Callable[[Tensor, Tensor], Tensor]


def check_sampler(objective: str, sampler: str | None) -> str:
    """The sampler to use for ``objective`` (its default when ``None``); a clear error otherwise."""
    if objective not in SAMPLERS:
        raise ValueError(f"unknown objective {objective!r}; accepted: {', '.join(OBJECTIVES)}")
    accepted = SAMPLERS[objective]
    if sampler is None:
        return accepted[0]
    if sampler not in accepted:
        pairs = "; ".join(f"{o}: {', '.join(s)}" for o, s in SAMPLERS.items())
        raise ValueError(f"sampler {sampler!r} does not fit objective {objective!r}; accepted pairs are {pairs}")
    return sampler


def drawn_on(generator: torch.Generator | None) -> torch.device:
    """Where random numbers from ``generator`` are drawn: on its own device (a CUDA generator
    cannot fill a CPU tensor), on the CPU without one. The models seed CPU generators and move
    the draws, so a window gets the same noise on any accelerator."""
    return torch.device("cpu") if generator is None else generator.device


def _check_shift(shift: object) -> float:
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 1.0 <= shift < float("inf"):
        raise ValueError(f"noise shift must be a number >= 1 (1: the plain schedule), got {shift!r}")
    return float(shift)


def _check_steps(steps: int, who: str, most: int | None = None) -> None:
    check_int("steps", steps, 1, most, who=who)


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16/fp16/fp32, fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def _expand(values: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``like`` (B, *), in fp32 at least.

    Never narrower than fp32: under mixed precision a bf16 ``like`` (a network's prediction) must not
    round the schedule (sqrt(1 - abar) near 1, sqrt(abar) near 0 keep 8 bits in bf16), and the
    product with it is then fp32 too, so x0/eps conversions and the sampler's steps stay fp32.
    """
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(_at_least_fp32(like.dtype))


def cosine_alpha_bar(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """The cosine schedule's cumulative signal level abar_t for t = 0 .. T-1, float64 (T,).

    ``abar(u) = cos(((u + s) / (1 + s)) pi / 2)^2 / abar(0)`` on u in [0, 1]; step t goes from
    u = t/T to (t+1)/T with ``beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta)``, and
    ``abar_t = prod_{i <= t} (1 - beta_i)``. Strictly decreasing from just below 1 to about 0
    (the clipped last beta leaves abar_{T-1} a little above 0, so every step is invertible).
    """
    _check_steps(timesteps, "cosine_alpha_bar")
    u = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0)


@functools.lru_cache(maxsize=8)
def _frequencies(half: int, max_period: float) -> Tensor:
    """w_i = max_period^(-i / half), computed once: a constant, not an ``arange`` in the graph, so
    an exported model carries no int64 range for coremltools to narrow (with a warning) to int32."""
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (B,) float times -> (B, dim): [cos(t w_i), sin(t w_i)] (DiT's)."""
    half = dim // 2
    freqs = _frequencies(half, max_period).to(t.device)  # (dim / 2,)
    angles = t.float()[:, None] * freqs[None]  # (B, dim / 2)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (B, 2 * (dim // 2))
    return emb if dim % 2 == 0 else torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)


class TimestepEmbedder(nn.Module):
    """Times (B,) -> (B, dim): a sinusoidal embedding of ``freq_dim`` through Linear-SiLU-Linear (DiT's)."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) float times (:meth:`Objective.model_time`) -> (B, dim)."""
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class Objective(nn.Module):
    """What a denoiser is trained to predict, and how samples are drawn from it."""

    #: the sampler names this objective accepts
    samplers: tuple[str, ...] = ()

    def sample_time(
        self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> Tensor:
        """(n,) training times, uniform over the objective's range (drawn on ``generator``'s device, :func:`drawn_on`)."""
        raise NotImplementedError

    def model_time(self, t: Tensor) -> Tensor:
        """(B,) times in the objective's own unit -> (B,) float for the time embedding."""
        raise NotImplementedError

    def noisiest(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """(n,) the noisiest time, where x_t is pure noise (diffusion: T - 1, flow: 1)."""
        raise NotImplementedError

    def x0_from(self, x_t: Tensor, pred: Tensor, t: Tensor) -> Tensor:
        """The clean sample (B, *) that the model's prediction ``pred`` at x_t (B, *), t (B,) implies."""
        raise NotImplementedError

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Clean x0 (B, *), standard normal noise (B, *), times (B,) -> x_t (B, *)."""
        raise NotImplementedError

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The regression target of the model at x_t (B, *)."""
        raise NotImplementedError

    def loss(self, pred: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Mean squared error of the prediction (B, *) to :meth:`target`: an fp32 scalar (also under autocast)."""
        return torch.mean((pred.float() - self.target(x0, noise, t).float()) ** 2)

    def sample(
        self, denoiser: Denoiser, noise: Tensor, steps: int, sampler: str | None = None, clip: float | None = None
    ) -> Tensor:
        """Draw x0 (B, *) from pure noise (B, *) in ``steps`` steps of ``sampler``.

        ``clip`` clamps the predicted clean sample to [-clip, clip] at every step (images in
        [-1, 1]: clip=1); ``None`` leaves it free.
        """
        raise NotImplementedError


class Diffusion(Objective):
    """DDPM with the cosine schedule; eps or v prediction; DDIM (eta = 0) sampling.

    Args:
        timesteps: T, the number of training noise levels.
        shift: s >= 1; every level's log-SNR moves by ``-2 ln s`` (see the module doc).
        prediction: ``"v"`` (the default) or ``"eps"`` (the noise). With eps, the clean sample
            ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)`` multiplies the model's error by up to
            1 / sqrt(abar_{T-1}) ~ 2e4 at the noisiest steps, where v gives x0 directly; in short
            CPU trainings eps-prediction sampled noise where v sampled the scene.
    """

    samplers = SAMPLERS["diffusion"]

    def __init__(self, timesteps: int = 1000, prediction: Prediction = "v", shift: float = 1.0) -> None:
        super().__init__()
        _check_steps(timesteps, "Diffusion(timesteps)")
        self.shift = _check_shift(shift)
        if prediction not in get_args(Prediction):
            raise ValueError(f"unknown prediction {prediction!r} for diffusion; accepted: 'eps', 'v'")
        self.timesteps, self.prediction = timesteps, prediction
        # float64 for the conversions near abar = 0 and 1; not persistent: derived from hparams
        alpha_bar = cosine_alpha_bar(timesteps)
        if self.shift != 1.0:  # sigmoid(log-SNR - 2 ln s): abar / (1 - abar) is the SNR
            alpha_bar = torch.sigmoid(torch.logit(alpha_bar) - 2 * math.log(self.shift))
        self.register_buffer("alpha_bar", alpha_bar, persistent=False)

    def _levels(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """sqrt(abar_t), sqrt(1 - abar_t) as (B, 1, ...) in ``like``'s dtype, fp32 at least (from the float64 table)."""
        abar = self.alpha_bar.to(t.device)[t]
        return _expand(abar.sqrt(), like), _expand((1 - abar).sqrt(), like)

    def sample_time(self, n, device="cpu", generator=None):
        return torch.randint(0, self.timesteps, (n,), generator=generator, device=drawn_on(generator)).to(device)

    def model_time(self, t: Tensor) -> Tensor:
        return t.float()

    def noisiest(self, n, device="cpu"):
        return torch.full((n,), self.timesteps - 1, dtype=torch.long, device=device)

    def x0_from(self, x_t, pred, t):
        return self.to_x0_eps(x_t, pred, t)[0]

    def add_noise(self, x0, noise, t):
        a, s = self._levels(t, x0)
        return a * x0 + s * noise

    def target(self, x0, noise, t):
        if self.prediction == "eps":
            return noise
        a, s = self._levels(t, x0)
        return a * noise - s * x0

    def to_x0_eps(self, x_t: Tensor, pred: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """A prediction at x_t -> (x0, eps) it implies (both (B, *))."""
        a, s = self._levels(t, x_t)
        if self.prediction == "eps":
            return (x_t - s * pred) / a, pred
        return a * x_t - s * pred, s * x_t + a * pred

    def from_x0_eps(self, x_t: Tensor, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The prediction (eps or v) that (x0, eps) imply at x_t: the inverse of :meth:`to_x0_eps`."""
        if self.prediction == "eps":
            return eps
        a, s = self._levels(t, x_t)
        return a * eps - s * x0

    def sample(self, denoiser, noise, steps, sampler=None, clip=None):
        check_sampler("diffusion", sampler)
        _check_steps(steps, "DDIM", self.timesteps)
        # evenly spaced, from the noisiest level down to t = 0; abar = 1 after the last step
        ts = torch.linspace(self.timesteps - 1, 0, steps, dtype=torch.float64).round().long()
        x = noise.to(_at_least_fp32(noise.dtype))  # the sampler's state: fp32 even from bf16 noise
        for i, t in enumerate(ts.tolist()):
            tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            x0, eps = self.to_x0_eps(x, denoiser(x, tt), tt)
            if clip is not None:  # re-derive eps from the clipped x0, so the step stays on its line
                x0 = x0.clamp(-clip, clip)
                a, s = self._levels(tt, x)
                eps = (x - a * x0) / s
            if i + 1 == len(ts):
                return x0
            a_next, s_next = self._levels(torch.full_like(tt, int(ts[i + 1])), x)
            x = a_next * x0 + s_next * eps  # (B, *)
        return x  # pragma: no cover  (steps >= 1 returns in the loop)


class Flow(Objective):
    """Rectified flow: x_t = (1 - t) x0 + t noise, velocity prediction, Euler or Heun sampling.

    Heun (a predictor-corrector, second order) costs two model calls per step except the last:
    the step that lands on t = 0 is an Euler step (as in Karras et al. 2022, Alg. 1), since the
    velocity at t = 0 asks for the noise of an already clean sample. So Heun with N steps
    makes 2N - 1 calls.
    """

    samplers = SAMPLERS["flow"]

    def __init__(self, shift: float = 1.0) -> None:
        super().__init__()
        self.shift = _check_shift(shift)

    def shifted(self, t: Tensor) -> Tensor:
        """Times in [0, 1] -> ``s t / (1 + (s - 1) t)``: the same ends, more time near the noise."""
        return t if self.shift == 1.0 else self.shift * t / (1 + (self.shift - 1) * t)

    #: model_time = t * time_scale, so flow times span the same range as diffusion steps
    time_scale = 1000.0

    def sample_time(self, n, device="cpu", generator=None):
        return self.shifted(torch.rand(n, generator=generator, device=drawn_on(generator))).to(device)

    def model_time(self, t: Tensor) -> Tensor:
        return t.float() * self.time_scale

    def noisiest(self, n, device="cpu"):
        return torch.ones(n, device=device)

    def x0_from(self, x_t, pred, t):
        return self.to_x0(x_t, pred, t)

    def add_noise(self, x0, noise, t):
        tt = _expand(t, x0)
        return (1 - tt) * x0 + tt * noise

    def target(self, x0, noise, t):
        return noise - x0

    @staticmethod
    def to_x0(x_t: Tensor, velocity: Tensor, t: Tensor) -> Tensor:
        """The clean sample a velocity implies at x_t: x0 = x_t - t v."""
        return x_t - _expand(t, x_t) * velocity

    def sample(self, denoiser, noise, steps, sampler=None, clip=None):
        sampler = check_sampler("flow", sampler)
        _check_steps(steps, "flow sampler")
        grid = self.shifted(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)).tolist()
        x = noise.to(_at_least_fp32(noise.dtype))  # the sampler's state: fp32 even from bf16 noise

        def velocity(x: Tensor, t: float) -> Tensor:
            # fp32 at least: a bf16 time would round t = 0.996 to 1.0 (module _expand)
            tt = torch.full((x.shape[0],), t, dtype=_at_least_fp32(x.dtype), device=x.device)
            v = denoiser(x, tt)
            if clip is not None and t > 0:  # clamp the implied x0, keep the implied noise
                x0 = self.to_x0(x, v, tt)
                noise = x0 + v
                v = noise - x0.clamp(-clip, clip)
            return v

        for t, t_next in zip(grid[:-1], grid[1:]):
            dt = t_next - t  # negative: integrating from noise to data
            v = velocity(x, t)
            x_euler = x + dt * v
            if sampler == "heun" and t_next > 0:
                x = x + dt * 0.5 * (v + velocity(x_euler, t_next))
            else:
                x = x_euler
        return x.clamp(-clip, clip) if clip is not None else x


def build_objective(
    name: ObjectiveName, prediction: Prediction | None = None, timesteps: int = 1000, shift: float = 1.0
) -> Objective:
    """``"diffusion"`` (v by default, or eps) or ``"flow"`` (velocity: no ``prediction`` to choose),
    with noise ``shift`` s >= 1 (see the module doc)."""
    if name == "diffusion":
        return Diffusion(timesteps, prediction or "v", shift)
    if name == "flow":
        if prediction is not None:
            raise ValueError(
                f"prediction={prediction!r} applies to objective 'diffusion' only; 'flow' always predicts "
                f"the velocity (leave prediction unset)"
            )
        return Flow(shift)
    raise ValueError(f"unknown objective {name!r}; accepted: {', '.join(OBJECTIVES)}")
