"""``WorldEvaluator``: a world model's test metrics and PNG sheets, through its public methods.

The evaluator never reads a model's internals: it calls ``sample_next``, ``rollout``,
``noisiest_time``, ``predict_x0``, ``null_action`` and ``hparams`` of
:class:`~lightning_film.models.WorldModel` (imported for typing only: the model imports this
module, never the reverse). What it measures, all on the first ``max_eval_samples`` test windows
(each with its seeded noise, the same noise for every action it tries):

- ``test/kid_mean``, ``test/kid_std``: KID of sampled next frames against the true ones (the real
  features come from :func:`~lightning_film.metrics.kid.real_features`' cache after the first run).
- ``test/psnr``, ``test/ssim``: sampled next frame (true action) vs the truth; ``test/psnr_copy``,
  ``test/ssim_copy``: the last context frame vs the truth, the score of a model that copies.
- ``test/agent_acc``: fraction of sampled frames whose agent is where the truth has it
  (:meth:`~lightning_film.data.environments.World.locate_agent`, within the world's tolerance);
  ``test/agent_acc_wrong``: the same with the action (true + 1) mod A, so a model that follows
  its action scores low here; ``test/agent_acc_copy``: the last context frame. Skipped (one info
  line) when the world has no locator.
- ``test/x0_psnr``, ``test/x0_psnr_wrong``: the model's one-call clean-frame prediction from pure
  noise at the noisiest time (true / wrong action) vs the truth: what the context alone tells it.
- Rollouts of R = ``rollout_steps`` frames from up to ``rollout_windows`` starting points spread
  evenly over the test episodes, each sample fed back with the episode's own actions: per step r
  (1..R) ``test/rollout_agent_acc/step_{r}``, ``test/rollout_psnr/step_{r}`` and
  ``test/rollout_psnr_copy/step_{r}`` (the last real frame held), and ``test/rollout_agent_acc``,
  ``test/rollout_psnr``, ``test/rollout_psnr_copy`` at the last step.

Sheets: ``next_frames``: per window, the K context frames, the truth, then a sample under each
action, under a header row naming the columns; ``rollout``: per rollout, a row of true frames and a
row of sampled ones, the shared context first. Under DDP each rank evaluates its share (windows
r, r + W, ...) and the torchmetrics states sum across ranks.

Legend: B batch, K context frames, C channels, H, W frame size, A actions, R rollout steps.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from lightning_film.data.environments import World, agent_matches, build_world
from lightning_film.errors import check_ints
from lightning_film.metrics.kid import build_kid_feature, compute_kid, kid_metric, real_features
from lightning_film.models.world_net import to_uint8, to_unit
from lightning_film.models.world_render import frame_grid, label_columns
from lightning_film.nn.diffusion import drawn_on

if TYPE_CHECKING:
    from lightning_film.models.world_model import WorldModel

__all__ = ["WorldEvaluator", "datamodule_world", "rollout_starts"]

#: rollouts drawn on the rollout sheet
SHEET_ROLLOUTS = 2
#: seeds of rollout noise: (seed, ROLLOUT_CODE, episode, start), apart from val (1) and test (2)
ROLLOUT_CODE = 3
SEED_MASK = 2**63 - 1


def _score(metric: nn.Module, frames: Tensor, truth: Tensor) -> None:
    """A PSNR / SSIM update on uint8 frames (N, C, H, W), in fp32 even inside the bf16-mixed
    test step: SSIM's Gaussian window is a conv2d, which autocast would run in bf16."""
    with torch.autocast(frames.device.type, enabled=False):
        metric.update(frames.float(), truth.float())


def _rgb(frames: Tensor) -> Tensor:
    """(N, C, H, W) with C = 1 or 3 -> (N, 3, H, W) for the feature networks."""
    if frames.shape[1] == 1:
        return frames.expand(-1, 3, -1, -1)
    if frames.shape[1] != 3:
        raise ValueError(f"KID needs frames with 1 or 3 channels, got {frames.shape[1]}")
    return frames


def _twin(generator: torch.Generator) -> torch.Generator:
    """A generator in the same state: a second action sampled from the same noise."""
    twin = torch.Generator(device=generator.device)  # a state fits a generator of its own device
    twin.set_state(generator.get_state())
    return twin


def datamodule_world(datamodule: Any) -> World | None:
    """The world a WorldDataModule recorded (from its manifest), or None when it does not say."""
    manifest = getattr(datamodule, "manifest", None)
    if manifest is None:
        return None
    settings = {k: v for k, v in manifest.world_settings.items() if k != "frame_size"}
    return build_world({"name": manifest.world, **settings}, frame_size=manifest.frame_size)


def rollout_starts(lengths: list[int], context: int, steps: int, count: int) -> list[tuple[int, int]]:
    """Up to ``count`` (episode, first frame) starts, evenly spaced over every start of the episodes
    (``lengths`` frames each) that leaves ``context`` frames and ``steps`` future frames."""
    starts = [(e, s) for e, n in enumerate(lengths) for s in range(n - context - steps + 1)]
    if not starts or count < 1:
        return []
    picks = np.unique(np.linspace(0, len(starts) - 1, min(count, len(starts))).round().astype(int))
    return [starts[i] for i in picks]


class WorldEvaluator(nn.Module):
    """Test metrics of a WorldModel (see the module docstring); a child module of the model, so
    its metric states follow it to the device.

    Args:
        kid_feature, kid_subsets, kid_subset_size: the KID feature extractor and subsets.
        max_eval_samples: test windows scored. rollout_steps: R. rollout_windows: rollouts.
        grid_windows: rows of the next-frame sheet. seed: seeds the rollouts' noise.
    """

    def __init__(
        self,
        kid_feature: str = "inception",
        kid_subsets: int = 50,
        kid_subset_size: int = 100,
        max_eval_samples: int = 500,
        rollout_steps: int = 8,
        rollout_windows: int = 64,
        grid_windows: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_ints(
            "WorldEvaluator",
            kid_subsets=(kid_subsets, 1),
            kid_subset_size=(kid_subset_size, 2),
            max_eval_samples=(max_eval_samples, 0),
            rollout_steps=(rollout_steps, 0),
            rollout_windows=(rollout_windows, 0),
            grid_windows=(grid_windows, 0),
        )
        self.kid_subset_size, self.max_eval_samples = kid_subset_size, max_eval_samples
        self.rollout_steps = rollout_steps
        self.rollout_windows, self.grid_windows, self.seed = rollout_windows, grid_windows, seed
        self.kid = kid_metric(build_kid_feature(kid_feature), kid_subsets, kid_subset_size)
        psnr = ("psnr", "psnr_copy", "x0_psnr", "x0_psnr_wrong")
        self.scores = nn.ModuleDict({name: PeakSignalNoiseRatio(data_range=255.0) for name in psnr})
        self.scores.update({name: StructuralSimilarityIndexMeasure(data_range=255.0) for name in ("ssim", "ssim_copy")})
        self.scores.update({name: MeanMetric() for name in ("agent_acc", "agent_acc_wrong", "agent_acc_copy")})
        self.count = SumMetric()
        self.rolled = nn.ModuleDict(
            {
                f"{kind}/step_{r}": PeakSignalNoiseRatio(data_range=255.0) if "psnr" in kind else MeanMetric()
                for kind in ("rollout_agent_acc", "rollout_psnr", "rollout_psnr_copy")
                for r in range(1, rollout_steps + 1)
            }
        )
        self.reset()

    def reset(self, world: World | None = None) -> None:
        """Forget the last test; ``world`` locates agents (None, or one without a locator: skipped)."""
        for metric in (self.kid, self.count, *self.scores.values(), *self.rolled.values()):
            metric.reset()
        self.world = world if world is not None and world.agent_tolerance is not None else None
        self.action_names = tuple(world.action_names) if world is not None else ()
        self.seen = 0
        self.real: list[Tensor] = []  # uint8 (n, C, H, W) on the CPU
        self.grid: tuple[Tensor, Tensor] | None = None  # context (G, K, C, H, W), target (G, C, H, W)
        self.timings: dict[str, float] = {}
        if world is not None and self.world is None:
            rank_zero_info(f"WorldEvaluator: world {world.name!r} has no agent locator; agent metrics skipped")

    def _agent(self, name: str, frames: Tensor, truth_at: np.ndarray) -> None:
        if self.world is not None:
            hits = agent_matches(self.world.locate_agent(frames), truth_at, self.world.agent_tolerance)
            self.scores[name].update(torch.as_tensor(hits, dtype=torch.float32, device=self.count.device))

    def _tick(self, name: str, start: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    @torch.inference_mode()
    def update(
        self,
        model: WorldModel,
        context: Tensor,
        action: Tensor,
        target: Tensor,
        generators: list[torch.Generator],
        share: tuple[int, int] = (0, 1),
    ) -> None:
        """Score this batch's windows within ``max_eval_samples``: context (B, K, C, H, W) and
        target (B, C, H, W) uint8, action (B,), one generator per window; ``share`` = (rank, world
        size): ranks read windows r, r + W, ..."""
        if self.grid is None and self.grid_windows:
            self.grid = (context[: self.grid_windows].cpu(), target[: self.grid_windows].cpu())
        rank, world = share
        n = min(target.shape[0], len(range(rank, self.max_eval_samples, world)) - self.seen)
        if n <= 0:
            return
        context, action, target, generators = context[:n], action[:n], target[:n], generators[:n]
        start = time.perf_counter()
        wrong = (action + 1) % model.null_action
        # the true and the wrong action in one batched call, from the same noise per window
        both = model.sample_next(
            torch.cat([context, context]),
            torch.cat([action, wrong]),
            generator=generators + [_twin(g) for g in generators],
        )  # (2n, C, H, W) uint8
        fake, fake_wrong = both[:n], both[n:]
        self._tick("sample next frames", start)
        last, truth = context[:, -1].to(fake.device), target.to(fake.device)
        for name, frames in (("psnr", fake), ("psnr_copy", last)):
            _score(self.scores[name], frames, truth)
            _score(self.scores[name.replace("psnr", "ssim")], frames, truth)
        start = time.perf_counter()
        noise = torch.stack([torch.randn(target.shape[1:], generator=g, device=drawn_on(g)) for g in generators]).to(
            fake.device
        )
        x0 = model.predict_x0(
            torch.cat([noise, noise]),
            model.noisiest_time(2 * n),
            to_unit(torch.cat([context, context]).to(fake.device)),
            torch.cat([action, wrong]).to(fake.device),
        )  # (2n, C, H, W)
        x0 = to_uint8(x0)
        _score(self.scores["x0_psnr"], x0[:n], truth)
        _score(self.scores["x0_psnr_wrong"], x0[n:], truth)
        self._tick("x0 prediction", start)
        if self.world is not None:
            start = time.perf_counter()
            truth_at = self.world.locate_agent(target)
            for name, frames in (("agent_acc", fake), ("agent_acc_wrong", fake_wrong), ("agent_acc_copy", last)):
                self._agent(name, frames, truth_at)
            self._tick("agent locator", start)
        start = time.perf_counter()
        self.kid.update(_rgb(fake), real=False)
        self._tick("KID features (samples)", start)
        self.real.append(target.cpu())
        self.count.update(torch.tensor(float(n), device=self.count.device))
        self.seen += n

    @torch.inference_mode()
    def finish(
        self, model: WorldModel, datamodule: Any, dataset_key: str, share: tuple[int, int] = (0, 1)
    ) -> tuple[dict[str, Tensor], dict[str, np.ndarray]]:
        """The test's metrics {key: scalar} (keys ``test/...``) and sheets {name: (H, W, 3) uint8}
        (this rank's; rank 0 writes them). ``datamodule`` gives the rollouts' episodes
        (``episodes("test")``), ``dataset_key`` names the real frames' KID feature cache."""
        with warnings.catch_warnings():  # a rank may have had no window: its count is 0
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            total = int(self.count.compute())
        metrics: dict[str, Tensor] = {}
        if total:
            for name, metric in self.scores.items():
                if not name.startswith("agent") or self.world is not None:
                    metrics[f"test/{name}"] = metric.compute()
        if total >= 2:
            start = time.perf_counter()
            rank_zero_info(f"WorldEvaluator: KID of {total} sampled frames against the true ones ...")
            # embedded where the samples were (the metric's device), not on the CPU where they are kept:
            # on a GPU, a CPU Inception pass would also move the network back and forth each test
            real = _rgb(torch.cat(self.real)).to(self.count.device) if self.real else None
            if real is not None:
                features = real_features(self.kid.inception, real, dataset_key, "test")
                self.kid.real_features.append(features.to(self.count.device))
            self.kid.subset_size = min(self.kid_subset_size, total)
            metrics["test/kid_mean"], metrics["test/kid_std"] = compute_kid(self.kid, seed=self.seed)
            self._tick("KID features (truth) and subsets", start)
        sheets: dict[str, np.ndarray] = {}
        start = time.perf_counter()
        rolled = self._rollouts(model, datamodule, share)
        if rolled is not None:
            metrics.update(rolled[0])
            sheets["rollout"] = rolled[1]
        self._tick("rollouts", start)
        if share[0] == 0 and self.grid is not None:
            start = time.perf_counter()
            sheets["next_frames"] = self._next_frame_sheet(model, *self.grid)
            self._tick("next-frame sheet", start)
        return metrics, sheets

    def _rollouts(
        self, model: WorldModel, datamodule: Any, share: tuple[int, int]
    ) -> tuple[dict[str, Tensor], np.ndarray] | None:
        """Roll out R frames from evenly spaced starts of the test episodes (this rank's share)."""
        k, r = model.net.context_frames, self.rollout_steps
        if r < 1 or self.rollout_windows < 1 or not callable(getattr(datamodule, "episodes", None)):
            return None
        episodes = datamodule.episodes("test")
        starts = rollout_starts([len(f) for f, _ in episodes], k, r, self.rollout_windows)
        if not starts:
            return None
        rank_zero_info(f"WorldEvaluator: {len(starts)} rollouts of {r} steps ...")
        mine = starts[share[0] :: share[1]]
        if not mine:  # more ranks than rollouts: this rank only joins the metrics' sync
            return self._rollout_metrics(r), np.zeros((1, 1, 3), dtype=np.uint8)
        frames = torch.stack(
            [torch.as_tensor(np.asarray(episodes[e][0][s : s + k + r])).permute(0, 3, 1, 2) for e, s in mine]
        )  # (E, K + R, C, H, W)
        # frame s + j follows action s + j - 1: the window's first future frame follows action s + k - 1
        actions = torch.stack(
            [torch.as_tensor(np.asarray(episodes[e][1][s + k - 1 : s + k - 1 + r]), dtype=torch.long) for e, s in mine]
        )  # (E, R)
        generators = [torch.Generator().manual_seed(hash((self.seed, ROLLOUT_CODE, e, s)) & SEED_MASK) for e, s in mine]
        context, truth = frames[:, :k].contiguous(), frames[:, k:]
        sampled = model.rollout(context, actions, generator=generators).cpu()  # (E, R, C, H, W)
        device = self.count.device
        for step in range(r):
            label = f"step_{step + 1}"
            _score(self.rolled[f"rollout_psnr/{label}"], sampled[:, step].to(device), truth[:, step].to(device))
            _score(self.rolled[f"rollout_psnr_copy/{label}"], context[:, -1].to(device), truth[:, step].to(device))
            if self.world is not None:
                hits = agent_matches(
                    self.world.locate_agent(sampled[:, step]),
                    self.world.locate_agent(truth[:, step]),
                    self.world.agent_tolerance,
                )
                self.rolled[f"rollout_agent_acc/{label}"].update(
                    torch.as_tensor(hits, dtype=torch.float32, device=device)
                )
        shown = range(min(SHEET_ROLLOUTS, len(mine)))
        sheet = frame_grid([row for e in shown for row in ([*context[e], *truth[e]], [*context[e], *sampled[e]])])
        return self._rollout_metrics(r), sheet

    def _rollout_metrics(self, steps: int) -> dict[str, Tensor]:
        """Per step, and at the last step under the summary keys."""
        metrics = {
            f"test/{name}": metric.compute()
            for name, metric in self.rolled.items()
            if not name.startswith("rollout_agent") or self.world is not None
        }
        for kind in ("rollout_agent_acc", "rollout_psnr", "rollout_psnr_copy"):
            if f"test/{kind}/step_{steps}" in metrics:
                metrics[f"test/{kind}"] = metrics[f"test/{kind}/step_{steps}"]
        return metrics

    def _next_frame_sheet(self, model: WorldModel, context: Tensor, target: Tensor) -> np.ndarray:
        """Rows: the K context frames, the truth, and a sample under each action (one when
        unconditional), under a header naming the columns."""
        windows, k = context.shape[0], context.shape[1]
        unconditional = model.hparams.condition == "none"
        actions = [model.null_action] if unconditional else list(range(model.null_action))
        ctx = context.repeat_interleave(len(actions), dim=0)  # (G A, K, C, H, W)
        act = torch.tensor(actions * windows)
        generator = torch.Generator().manual_seed(self.seed)
        samples = model.sample_next(ctx, act, generator=generator).cpu().view(windows, len(actions), *target.shape[1:])
        grid = frame_grid([[*context[w], target[w], *samples[w]] for w in range(windows)])
        names = self.action_names
        labels = [f"t-{k - i - 1}" if k - i - 1 else "t" for i in range(k)] + ["truth t+1"]
        labels += ["null action"] if unconditional else [names[a] if a < len(names) else f"action {a}" for a in actions]
        return label_columns(grid, labels, cell=target.shape[-1] * 4)
