"""``WorldModel``: training, sampling and evaluation of a next-frame world model.

The network is :class:`~lightning_film.models.world_net.WorldDenoiser`, given as ``net``
(``WorldModel(WorldDenoiser(...))``; ``model.init_args.net`` in a config) and held as ``model.net``, a
plain ``nn.Module`` that export, quantization and evaluation all take; this module adds the objective
(``diffusion`` or ``flow``, :mod:`lightning_film.nn.diffusion`) and its sampler, the loss,
pretrain -> finetune, the optimizer and logging. Frames are uint8 on the way in and out,
[-1, 1] inside.

Actions are ``0 .. num_actions - 1``; index ``num_actions`` is the learned *null action*: the
condition dropped for classifier-free guidance (``cond_dropout`` in training, ``guidance_scale``
at sampling, both halves in one batched forward), and the only action a ``condition="none"``
(unconditional pretraining) model ever sees. ``init_from`` starts a model from such a
checkpoint (see :meth:`WorldModel.initialize_from`).

Evaluation: ``val/loss`` and ``test/loss`` at fixed seeded times and noise (comparable across
runs), ``val/psnr`` of sampled frames of the first validation batch, and at test what
:class:`~lightning_film.models.world_eval.WorldEvaluator` measures (KID, PSNR, SSIM, whether the
agent follows the action, rollouts, PNG sheets) through this class's public methods.

Checkpoints written before the network became ``model.net`` (keys ``transformer.*`` rather than
``net.transformer.*``) are converted when loaded, with one info line.

Legend: B batch, K context frames, C channels, H = W = ``frame_size``, N tokens, A actions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio

from lightning_film.checkpoints import check_weights_fit, nest_checkpoint
from lightning_film.errors import check_ints
from lightning_film.models.checkpoint_activation import adopt_checkpoint_activation
from lightning_film.models.net_module import NetModule, network
from lightning_film.models.optim import adamw_warmup_cosine, check_schedule, clip_gradients
from lightning_film.models.throughput import TrainThroughput
from lightning_film.models.world_eval import WorldEvaluator, datamodule_world
from lightning_film.models.world_init import NET_MODULES, init_from
from lightning_film.models.world_net import WorldDenoiser, sincos_2d, to_uint8, to_unit
from lightning_film.models.world_render import save_png
from lightning_film.nn.diffusion import ObjectiveName, Prediction, SamplerName, build_objective, check_sampler, drawn_on

__all__ = ["WorldDenoiser", "WorldModel", "sincos_2d", "to_uint8", "to_unit"]

#: the data settings a WorldDataModule must share with the model (checked in ``setup``)
DATA_SETTINGS = ("frame_size", "channels", "context_frames", "num_actions")
#: generator seeds are ``hash(tuple of ints) & SEED_MASK``: Python hashes ints the same in every
#: process (unlike strings), so every rank and every resumed run derives the same seeds
SEED_MASK = 2**63 - 1
#: windows sampled at each validation (val/psnr): the first ones of the validation split
VAL_SAMPLES = 16


class WorldModel(NetModule):
    """Trains, samples and evaluates :class:`WorldDenoiser` (``self.net``), a next-frame denoiser
    conditioned on context frames (per patch), time and action.

    Args:
        net: the network (its arguments: :class:`WorldDenoiser`); a checkpoint stores them as a
            mapping (``hparams.net``), which is built into one here. Its ``frame_size``, ``channels``,
            ``context_frames`` and ``num_actions`` must match the data (checked in ``setup``).
        condition: ``"action"``, or ``"none"`` (unconditional pretraining: always the null action).
        objective: ``"diffusion"`` or ``"flow"``.
        prediction: diffusion's target, ``"v"`` (default) or ``"eps"``
            (:class:`~lightning_film.nn.diffusion.Diffusion`); leave unset for flow (velocity).
        sampler: ``"ddim"`` (diffusion) or ``"euler"`` / ``"heun"`` (flow); default the first.
        sample_steps: sampler steps per frame.
        train_timesteps: diffusion's T.
        noise_shift: s >= 1 moves the noise levels of training and sampling toward noise (log-SNR
            minus 2 ln s; :mod:`lightning_film.nn.diffusion`). At s = 1 on 32 x 32 frames the agent
            stays readable in x_t at almost every level, so the model learns to denoise and ignores
            its action (``benchmarks/results/world/world-recipe``).
        cond_dropout: probability per sample of training on the null action (CFG).
        guidance_scale: s in uncond + s (cond - uncond) at sampling; 1 = no guidance.
        init_from: a checkpoint (or state_dict file) to start from, loaded in ``setup``.
        lr: peak AdamW learning rate.
        weight_decay: AdamW decay of matrices.
        warmup_steps: linear warmup steps.
        max_lr_steps: steps of the cosine decay to ``min_lr_ratio * lr`` (default: the trainer's steps).
        min_lr_ratio: the learning rate at the end of the cosine, as a fraction of ``lr``.
        kid_feature: KID feature extractor (``"inception"``, or ``"tiny"`` for tests).
        kid_subset_size: frames per KID subset (capped by the sample count).
        kid_subsets: KID subsets.
        max_eval_samples: test windows whose next frame is sampled (KID, PSNR, SSIM, agent).
        rollout_steps: R, the autoregressive rollout length at test.
        rollout_windows: rollouts, from starting points spread evenly over the test episodes.
        grid_windows: rows of the next-frame sheet.
        seed: seeds evaluation times and noise (every run sees the same ones).
    """

    def __init__(
        self,
        net: WorldDenoiser,
        condition: Literal["action", "none"] = "action",
        objective: ObjectiveName = "diffusion",
        prediction: Prediction | None = None,
        sampler: SamplerName | None = None,
        sample_steps: int = 20,
        train_timesteps: int = 1000,
        noise_shift: float = 1.0,
        cond_dropout: float = 0.0,
        guidance_scale: float = 1.0,
        init_from: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        max_lr_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        kid_feature: str = "inception",
        kid_subset_size: int = 100,
        kid_subsets: int = 50,
        max_eval_samples: int = 500,
        rollout_steps: int = 8,
        grid_windows: int = 4,
        rollout_windows: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_ints("WorldModel", sample_steps=(sample_steps, 1), warmup_steps=(warmup_steps, 0))
        if condition not in ("action", "none"):
            raise ValueError(f"WorldModel: unknown condition {condition!r}; accepted: 'action', 'none'")
        if not 0.0 <= cond_dropout < 1.0 or not guidance_scale >= 0.0:
            raise ValueError(
                f"WorldModel: need 0 <= cond_dropout < 1 and guidance_scale >= 0; "
                f"got cond_dropout={cond_dropout!r}, guidance_scale={guidance_scale!r}"
            )
        if condition == "none" and (cond_dropout > 0 or guidance_scale != 1.0):
            raise ValueError(
                f"WorldModel: condition='none' always uses the null action, so cond_dropout={cond_dropout!r} and "
                f"guidance_scale={guidance_scale!r} do not apply; leave them at 0 and 1"
            )
        check_schedule("WorldModel", lr, weight_decay, min_lr_ratio)
        self.net: WorldDenoiser = network(net, WorldDenoiser, "WorldModel")
        self.save_hyperparameters(ignore=["net"])
        self.hparams["net"] = self.net.config  # plain values: a checkpoint never names the network's code
        self.objective = build_objective(objective, prediction, train_timesteps, noise_shift)
        self.sampler = check_sampler(objective, sampler)
        if self.sampler == "ddim" and sample_steps > train_timesteps:
            raise ValueError(f"WorldModel: sample_steps={sample_steps} exceeds train_timesteps={train_timesteps}")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_psnr = PeakSignalNoiseRatio(data_range=255.0)
        kid = (kid_feature, kid_subsets, kid_subset_size)
        self.evaluator = WorldEvaluator(*kid, max_eval_samples, rollout_steps, rollout_windows, grid_windows, seed)
        self.dataset_key = "unknown"
        self._initialized_from: str | None = None
        self._test_start = 0.0

    @property
    def null_action(self) -> int:
        return self.net.num_actions

    # -- the network ----------------------------------------------------------------------------
    def forward(self, x_t: Tensor, t: Tensor, context: Tensor, action: Tensor) -> Tensor:
        """x_t: (B, C, H, W) noisy frame, t: (B,) in the objective's unit, context: (B, K, C, H, W)
        in [-1, 1], action: (B,) long in 0..A (A = null) -> (B, C, H, W) the objective's prediction, fp32.

        Under mixed precision the network's head gives bf16; the prediction leaves it here, so the
        loss, the guidance and the sampler's x0/eps arithmetic are fp32 (one frame per sample: cheap)."""
        return self.net(x_t, self.objective.model_time(t), context, action).float()

    def guided(self, x_t: Tensor, t: Tensor, context: Tensor, action: Tensor, scale: float | None = None) -> Tensor:
        """The prediction with classifier-free guidance ``uncond + s (cond - uncond)`` on every
        channel; conditional and unconditional halves run as one batch. s = 1: just ``forward``."""
        s = self.hparams.guidance_scale if scale is None else scale
        if s == 1.0:
            return self(x_t, t, context, action)
        null = torch.full_like(action, self.null_action)
        both = self(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([context, context]), torch.cat([action, null]))
        cond, uncond = both.chunk(2)  # (B, C, H, W) each
        return uncond + s * (cond - uncond)

    def noisiest_time(self, n: int) -> Tensor:
        """(n,) the objective's noisiest time, where x_t is pure noise: T - 1 (diffusion), 1 (flow)."""
        return self.objective.noisiest(n, self.device)

    @torch.no_grad()
    def predict_x0(self, x_t: Tensor, t: Tensor, context: Tensor, action: Tensor) -> Tensor:
        """The posterior mean of the clean frame in one model call (guided as at sampling):
        x_t (B, C, H, W), t (B,) in the objective's unit, context (B, K, C, H, W) in [-1, 1],
        action (B,) -> x0_hat (B, C, H, W) clipped to [-1, 1]."""
        pred = self.guided(x_t, t, context, self._actions(action, allow_null=True))
        return self.objective.x0_from(x_t, pred, t).clamp(-1.0, 1.0)

    # -- sampling -------------------------------------------------------------------------------
    def _actions(self, action: Tensor, allow_null: bool = False) -> Tensor:
        """Checked actions (B,) long; the null action when ``condition='none'``."""
        top = self.null_action if allow_null else self.null_action - 1
        if action.dim() != 1 or action.dtype.is_floating_point or action.dtype == torch.bool:
            raise ValueError(f"WorldModel: actions must be integer (B,), got {action.dtype} {tuple(action.shape)}")
        if action.numel() and (int(action.min()) < 0 or int(action.max()) > top):
            bad = action[(action < 0) | (action > top)].unique().tolist()
            raise ValueError(
                f"WorldModel: action(s) {bad} out of range; this model has num_actions={self.null_action} "
                f"(valid 0..{self.null_action - 1}" + (f", {self.null_action} = null)" if allow_null else ")")
            )
        action = action.long()
        return torch.full_like(action, self.null_action) if self.hparams.condition == "none" else action

    @torch.no_grad()
    def sample_next(
        self,
        context: Tensor,
        action: Tensor,
        steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> Tensor:
        """Sample next frames: context (B, K, C, H, W) uint8, action (B,) -> (B, C, H, W) uint8.

        ``steps``/``guidance_scale`` default to the model's; ``generator`` (or one per
        window, on any device: the noise is drawn there) seeds the noise.
        The null action (index ``num_actions``) samples unconditionally.
        """
        if context.dtype != torch.uint8:
            raise ValueError(f"WorldModel.sample_next expects uint8 context frames, got {context.dtype}")
        action = self._actions(action.to(self.device), allow_null=True)
        ctx = to_unit(context.to(self.device))  # (B, K, C, H, W)
        shape = (ctx.shape[0], self.net.channels, self.net.frame_size, self.net.frame_size)
        if isinstance(generator, list):
            noise = torch.stack([torch.randn(shape[1:], generator=g, device=drawn_on(g)) for g in generator]).to(
                self.device
            )
        else:
            noise = torch.randn(shape, generator=generator, device=drawn_on(generator)).to(self.device)  # (B, C, H, W)
        was_training = self.training
        self.eval()
        try:
            x0 = self.objective.sample(
                lambda x, t: self.guided(x, t, ctx, action, guidance_scale),
                noise,
                steps or self.hparams.sample_steps,
                self.sampler,
                clip=1.0,
            )
        finally:
            self.train(was_training)
        return to_uint8(x0)

    @torch.no_grad()
    def rollout(
        self,
        context: Tensor,
        actions: Tensor,
        steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> Tensor:
        """Autoregressive rollout: context (B, K, C, H, W) uint8, actions (B, R) -> (B, R, C, H, W)
        uint8, each sampled frame fed back as the newest context frame (``generator``: as in
        :meth:`sample_next`, drawn from at every step)."""
        frames = []
        for r in range(actions.shape[1]):
            nxt = self.sample_next(context, actions[:, r], steps, guidance_scale, generator)  # (B, C, H, W)
            frames.append(nxt)
            context = torch.cat([context[:, 1:], nxt[:, None].to(context.device)], dim=1)  # (B, K, C, H, W)
        return torch.stack(frames, dim=1)

    # -- pretrain -> finetune -------------------------------------------------------------------
    def initialize_from(self, path: str | Path) -> dict[str, list[str]]:
        """Copy the weights of a checkpoint into this model (:func:`~lightning_film.models.world_init.init_from`)."""
        report = init_from(self, path)
        self._initialized_from = str(path)
        return report

    # -- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Check the data's settings against the model's; apply ``init_from`` (once)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None:
            missing = [name for name in DATA_SETTINGS if not hasattr(dm, name)]
            if missing:
                raise ValueError(
                    f"WorldModel needs a WorldDataModule (a DataModule with {', '.join(DATA_SETTINGS)}); "
                    f"got {type(dm).__name__}, which lacks {missing}"
                )
            for name in DATA_SETTINGS:
                theirs = getattr(dm, name, None)
                if theirs is not None and theirs != getattr(self.net, name):
                    raise ValueError(
                        f"the data's {name}={theirs!r} differs from the model's {name}={getattr(self.net, name)!r}; "
                        f"set model.net.{name} and data.{name} to the same value"
                    )
            self.dataset_key = str(getattr(dm, "dataset_key", None) or type(dm).__name__)
        if self.hparams.init_from and self._initialized_from is None:
            # before Lightning restores a resumed run's checkpoint, which then wins
            self.initialize_from(self.hparams.init_from)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # weights from a checkpoint of this run (load_from_checkpoint, or a restore) are never
        # overwritten by init_from in a later setup()
        self._initialized_from = "checkpoint"
        # Lightning loads the state_dict (and EMA its current_model_state) after this hook: a
        # checkpoint of the layout before WorldModel.net loads as it is, renamed
        if nest_checkpoint(checkpoint, NET_MODULES):
            rank_zero_info("WorldModel: this checkpoint predates WorldModel.net; its network keys were renamed net.*")
        check_weights_fit(self, checkpoint, self.strict_loading)
        adopt_checkpoint_activation(self, checkpoint)  # the weights learned with it

    def unpack_batch(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """A WorldDataModule batch -> checked (context (B, K, C, H, W), action (B,), target (B, C, H, W))."""
        hp = self.net
        frame = (hp.channels, hp.frame_size, hp.frame_size)
        missing = [k for k in ("context", "action", "target") if k not in batch]
        if missing:
            raise ValueError(f"WorldModel: the batch lacks {missing}; it has {sorted(batch)}")
        context, action, target = batch["context"], batch["action"], batch["target"]
        b = target.shape[0]
        if tuple(context.shape) != (b, hp.context_frames, *frame) or tuple(target.shape) != (b, *frame):
            raise ValueError(
                f"WorldModel expects context (B, {hp.context_frames}, {', '.join(map(str, frame))}) and target "
                f"(B, {', '.join(map(str, frame))}); got {tuple(context.shape)} and {tuple(target.shape)}"
            )
        if context.dtype != torch.uint8 or target.dtype != torch.uint8:
            raise ValueError(f"WorldModel expects uint8 frames, got context {context.dtype}, target {target.dtype}")
        return context, self._actions(action), target

    def _eval_generators(self, batch: dict[str, Tensor], split: str, batch_idx: int) -> list[torch.Generator]:
        """One CPU generator per window, seeded by (seed, split, episode, step): a window's
        evaluation times and noise are the same whatever the batch size, the batch it lands in or
        the rank that reads it (batches without ``episode``/``step`` fall back to the batch index)."""
        code = {"val": 1, "test": 2}[split]
        if "episode" in batch and "step" in batch:
            keys = [(self.hparams.seed, code, e, t) for e, t in zip(batch["episode"].tolist(), batch["step"].tolist())]
        else:
            keys = [(self.hparams.seed, code, -1 - self.global_rank, batch_idx, i) for i in range(len(batch["target"]))]
        return [torch.Generator().manual_seed(hash(key) & SEED_MASK) for key in keys]

    def loss(
        self,
        batch: dict[str, Tensor],
        generator: torch.Generator | list[torch.Generator] | None = None,
        dropout: float = 0.0,
        share: tuple[int, int] = (0, 1),
    ) -> Tensor:
        """The objective's loss on a batch: random times and noise (from ``generator`` if given,
        or one generator per window), the action dropped to the null action with probability
        ``dropout`` per sample.

        ``share=(rank, world_size)``: the draws are made for the global batch (``world_size`` x B
        rows) and this rank keeps rows ``rank, rank + world_size, ...``, the rows its sampler gave
        it, so a 2-process fit draws per sample what a 1-process fit of the same global batch does.
        """
        context, action, target = self.unpack_batch(batch)
        x0, ctx = to_unit(target), to_unit(context)
        if isinstance(generator, list):  # per window: (t, noise) drawn from each one in turn
            t = torch.cat([self.objective.sample_time(1, x0.device, g) for g in generator])
            noise = torch.stack([torch.randn(x0.shape[1:], generator=g, device=drawn_on(g)) for g in generator]).to(
                x0.device
            )
            drop = (
                torch.cat([torch.rand(1, generator=g, device=drawn_on(g)) for g in generator]).to(action.device)
                < dropout
            )
        else:
            rank, world = share
            n, rows = x0.shape[0] * world, slice(rank, None, world)
            t = self.objective.sample_time(n, x0.device, generator)[rows]
            noise = torch.randn((n, *x0.shape[1:]), generator=generator, device=drawn_on(generator))[rows].to(x0.device)
            drop = torch.rand(n, generator=generator, device=drawn_on(generator))[rows].to(action.device) < dropout
        action = torch.where(drop, torch.full_like(action, self.null_action), action)
        x_t = self.objective.add_noise(x0, noise, t)
        return self.objective.loss(self(x_t, t, ctx, action), x0, noise, t)

    def _train_generator(self, batch_idx: int) -> torch.Generator:
        # a batch's times, noise and dropout depend on (seed, step, batch) only, not on the global
        # RNG: a fit resumed from a checkpoint draws exactly what the uninterrupted fit drew
        # (batch_idx tells apart the micro-batches of one step under gradient accumulation)
        key = (self.hparams.seed, self.global_step, batch_idx)
        return torch.Generator().manual_seed(hash(key) & SEED_MASK)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        share = (self.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        loss = self.loss(batch, self._train_generator(batch_idx), self.hparams.cond_dropout, share)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    # no FLOP count per batch (the benchmarks measure FLOPs): ThroughputMonitor logs no FLOP rate
    flops_per_batch: int | None = None

    def configure_callbacks(self) -> list[TrainThroughput]:
        return [TrainThroughput(lambda batch: batch["target"].shape[0])]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        g = self._eval_generators(batch, "val", batch_idx)
        self.val_loss.update(self.loss(batch, g), weight=batch["target"].shape[0])
        if batch_idx == 0:  # a few sampled frames: is the sampler on track?
            # this rank's share of the first VAL_SAMPLES windows (ranks read windows r, r + W, ...)
            n = len(range(self.global_rank, VAL_SAMPLES, self.trainer.world_size if self._trainer else 1))
            context, action, target = (t[:n] for t in self.unpack_batch(batch))
            self.val_psnr.update(self.sample_next(context, action, generator=g[:n]).float(), target.float())

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.log("val/psnr", self.val_psnr.compute())
        self.val_loss.reset()
        self.val_psnr.reset()

    def _share(self) -> tuple[int, int]:
        return (self.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)

    def _datamodule(self) -> object | None:
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def on_test_epoch_start(self) -> None:
        self.test_loss.reset()  # nothing left from an interrupted test
        dm = self._datamodule()
        self.evaluator.reset(datamodule_world(dm) if dm is not None else None)
        self._test_start = time.perf_counter()
        hp = self.hparams
        # the first batch alone takes seconds to minutes on a CPU: say what the bar is waiting for
        rank_zero_info(
            f"WorldModel test: each batch samples the next frame of up to {hp.max_eval_samples} windows in all, with "
            f"the true and a wrong action ({hp.sample_steps} {self.sampler} steps each), and embeds the samples for "
            f"KID; after the last batch: KID, {hp.rollout_windows} rollouts of {hp.rollout_steps} steps, the sheets"
        )

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        g = self._eval_generators(batch, "test", batch_idx)
        start = time.perf_counter()
        self.test_loss.update(self.loss(batch, g), weight=batch["target"].shape[0])
        self.evaluator.timings["test loss"] = self.evaluator.timings.get("test loss", 0.0) + time.perf_counter() - start
        self.evaluator.update(self, *self.unpack_batch(batch), g, self._share())

    def on_test_epoch_end(self) -> None:
        self.log("test/loss", self.test_loss.compute())
        self.test_loss.reset()
        metrics, sheets = self.evaluator.finish(self, self._datamodule(), self.dataset_key, self._share())
        for key, value in metrics.items():
            self.log(key, value)
        if self.global_rank == 0 and self._trainer is not None:
            root = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "samples"
            for name, image in sheets.items():
                save_png(image, root / f"{name}.png")
                for logger in self.trainer.loggers:
                    if isinstance(logger, TensorBoardLogger):
                        logger.experiment.add_image(f"test/{name}", image, self.global_step, dataformats="HWC")
            timings = ", ".join(f"{k} {v:.1f} s" for k, v in self.evaluator.timings.items())
            rank_zero_info(
                f"WorldModel test: {time.perf_counter() - self._test_start:.1f} s ({timings}); sample sheets: {root}"
            )

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)  # bf16-mixed with fused AdamW too

    def configure_optimizers(self) -> dict:
        return adamw_warmup_cosine(self, self.net.action_embed.parameters(), betas=(0.9, 0.99))
