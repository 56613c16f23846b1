"""WorldModel: zero-init output, every normalizer x conditioner pair, both objectives learning,
classifier-free guidance, init_from, bad input, and fit/test through Lightning and the CLI.

Tiny shapes (16 x 16 frames, dim 32, 2 sampler steps, the ``tiny`` KID features); the data is
synthetic batches built to the WorldDataModule contract, or a few recorded ``bounce_room``
episodes in a temporary cache.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from lightning_film import list_conditioners, list_normalizers
from lightning_film.errors import UsageError
from lightning_film.models import WorldDenoiser, WorldModel
from lightning_film.models.world_model import sincos_2d, to_uint8, to_unit
from tests.helpers import tiny

REPO = Path(__file__).resolve().parents[1]
FRAME, K, A = tiny.FRAME, tiny.CONTEXT, tiny.ACTIONS
TINY = tiny.WORLD
PAIRS = [(n, c) for n in list_normalizers() for c in list_conditioners()]


def make_batch(b: int = 4, seed: int = 0, frame: int = FRAME) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "context": torch.randint(0, 256, (b, K, 3, frame, frame), generator=g, dtype=torch.uint8),
        "action": torch.randint(0, A, (b,), generator=g),
        "target": torch.randint(0, 256, (b, 3, frame, frame), generator=g, dtype=torch.uint8),
        "episode": torch.zeros(b, dtype=torch.long),
        "step": torch.arange(b),
    }


def model(**kwargs) -> WorldModel:
    torch.manual_seed(0)
    return tiny.world_model(**{**TINY, **kwargs})


def perturb_(m: torch.nn.Module, scale: float = 0.3) -> None:
    """Move every parameter off its init (zero-initialised layers then matter)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def inputs(b: int = 3, seed: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, FRAME, FRAME, generator=g)
    ctx = torch.rand(b, K, 3, FRAME, FRAME, generator=g) * 2 - 1
    return x, torch.randint(0, 1000, (b,), generator=g), ctx, torch.randint(0, A, (b,), generator=g)


# -- the network -------------------------------------------------------------------------------------
@pytest.mark.parametrize("conditioner", ["film", "adaln_zero", "concat", "none"])
def test_output_is_exactly_zero_at_init(conditioner: str) -> None:
    out = model(conditioner=conditioner)(*inputs())
    assert out.shape == (3, 3, FRAME, FRAME) and torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize(("normalizer", "conditioner"), PAIRS)
def test_every_pair_trains_a_step_and_samples(normalizer: str, conditioner: str) -> None:
    m = model(normalizer=normalizer, conditioner=conditioner, cond_dropout=0.2, guidance_scale=1.5)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    loss = m.loss(make_batch(), dropout=0.2)
    loss.backward()
    assert math.isfinite(loss.item()) and m.net.head.weight.grad.abs().sum() > 0
    opt.step()
    frames = m.sample_next(make_batch()["context"], torch.tensor([0, 1, 4, A]))  # A: the null action
    assert frames.shape == (4, 3, FRAME, FRAME) and frames.dtype == torch.uint8


def test_frames_enter_per_patch_and_return_in_place() -> None:
    """A change in one pixel of the noisy frame or of a context frame moves only its own patch's
    output when attention is blind (no blocks' mixing): pixel_unshuffle / pixel_shuffle are inverse."""
    m = model()
    perturb_(m)
    for block in m.net.transformer.blocks:  # make every token see only itself
        block.attn.forward = lambda x, key_mask=None: torch.zeros_like(x)
    x, t, ctx, a = inputs(1)
    base = m(x, t, ctx, a)
    x2, ctx2 = x.clone(), ctx.clone()
    x2[0, 1, 5, 9] += 1.0  # patch (1, 2) of 4 x 4 patches
    ctx2[0, 0, 2, 13, 3] += 1.0  # patch (3, 0)
    for changed, (r, c) in ((m(x2, t, ctx, a), (1, 2)), (m(x, t, ctx2, a), (3, 0))):
        diff = (changed - base).abs().sum(dim=(0, 1))  # (H, W)
        mask = torch.zeros(FRAME, FRAME, dtype=torch.bool)
        mask[4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = True
        assert diff[mask].sum() > 0 and diff[~mask].sum() == 0


def test_sincos_positions_and_pixel_scaling() -> None:
    pos = sincos_2d(4, 32)
    assert pos.shape == (1, 16, 32) and len({tuple(p.tolist()) for p in pos[0]}) == 16
    frames = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert to_unit(frames).min() == -1 and to_unit(frames).max() == 1
    assert torch.equal(to_uint8(to_unit(frames)), frames)


# -- objectives and guidance ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs", [{"objective": "diffusion", "prediction": "eps"}, {"objective": "diffusion"}, {"objective": "flow"}]
)
def test_objectives_overfit_a_batch(kwargs: dict) -> None:
    m = model(**kwargs)
    batch = make_batch(4)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    fixed = lambda: m.loss(batch, torch.Generator().manual_seed(0))  # noqa: E731  (the same times and noise)
    before = fixed().item()
    for _ in range(30):
        opt.zero_grad()
        fixed().backward()
        opt.step()
    assert fixed().item() < 0.5 * before


def test_guidance_formula_on_every_channel() -> None:
    m = model(guidance_scale=3.0, cond_dropout=0.1)
    perturb_(m)
    x, t, ctx, a = inputs()
    null = torch.full_like(a, A)
    cond, uncond = m(x, t, ctx, a), m(x, t, ctx, null)
    assert not torch.allclose(cond, uncond)
    both = m(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx, ctx]), torch.cat([a, null]))
    scale = cond.abs().max().item()  # one batch or two: float rounding only
    torch.testing.assert_close(both, torch.cat([cond, uncond]), rtol=1e-5, atol=1e-5 * scale)
    c, u = both.chunk(2)
    torch.testing.assert_close(m.guided(x, t, ctx, a), u + 3.0 * (c - u), rtol=1e-6, atol=1e-6 * scale)
    torch.testing.assert_close(m.guided(x, t, ctx, a, scale=1.0), cond, rtol=0, atol=0)
    calls = []
    m.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    m.guided(x, t, ctx, a)
    assert calls == [6]  # conditional and unconditional halves in one batched forward


def test_cond_dropout_and_unconditional_training_use_the_null_action() -> None:
    seen: list[torch.Tensor] = []
    m = model(cond_dropout=0.5)
    m.net.action_embed.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    torch.manual_seed(0)
    m.loss(make_batch(400), dropout=0.5)
    assert 0.4 < (seen[-1] == A).float().mean() < 0.6
    m.loss(make_batch(400))  # evaluation: no dropout
    assert not (seen[-1] == A).any()
    u = model(condition="none")
    u.net.action_embed.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    u.loss(make_batch(8))
    assert (seen[-1] == A).all()
    u.sample_next(make_batch(2)["context"], torch.tensor([0, 3]))
    assert (seen[-1] == A).all()


def test_sampling_is_seeded_and_rollout_feeds_back() -> None:
    m = model(objective="flow", sampler="heun")
    perturb_(m, 0.05)
    ctx = make_batch(2)["context"]
    one = m.sample_next(ctx, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0))
    two = m.sample_next(ctx, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(one, two)
    roll = m.rollout(ctx, torch.tensor([[1, 0, 3], [2, 0, 4]]), generator=torch.Generator().manual_seed(0))
    assert roll.shape == (2, 3, 3, FRAME, FRAME) and roll.dtype == torch.uint8
    assert torch.equal(roll[:, 0], one)  # the first step is the same draw


# -- pretrain -> finetune ----------------------------------------------------------------------------
def quick_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    kwargs = {
        "max_steps": 2,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1,
        "logger": False,
        **kwargs,
    }
    return L.Trainer(
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def pretrained(tmp_path: Path, **kwargs) -> tuple[WorldModel, Path]:
    """A condition='none' model moved off its init, saved as a Lightning checkpoint."""
    pre = model(condition="none", **kwargs)
    perturb_(pre, 0.1)
    trainer = quick_trainer(tmp_path)
    trainer.strategy.connect(pre)
    path = tmp_path / "pre.ckpt"
    trainer.save_checkpoint(path)
    return pre, path


@pytest.mark.parametrize("pre_conditioner", ["film", "none"])
def test_init_from_starts_where_the_pretrained_model_was(tmp_path: Path, pre_conditioner: str) -> None:
    pre, path = pretrained(tmp_path, conditioner=pre_conditioner)
    fine = model(condition="action", conditioner="film", init_from=str(path))
    report = fine.initialize_from(path)
    x, t, ctx, a = inputs(5)
    expected = pre(x, t, ctx, torch.full_like(a, A))
    torch.testing.assert_close(fine(x, t, ctx, torch.full_like(a, A)), expected, rtol=0, atol=0)
    # every action starts as the pretrained null action: the same output for any action
    torch.testing.assert_close(fine(x, t, ctx, torch.arange(5)), expected, rtol=0, atol=0)
    assert report["actions_from_null"] == ["net.action_embed.weight"]
    if pre_conditioner == "none":  # the new FiLM layers keep their identity init and are named
        assert report["missing"] and all("cond" in k for k in report["missing"])
        assert any(k.endswith("final_cond.scale.0.weight") for k in report["missing"])
    else:
        assert report["missing"] == [] and report["ignored"] == []


def test_the_checkpoints_activation_wins(tmp_path: Path) -> None:
    """A checkpoint trained with tanh GELU (or written before the activation was recorded) loads
    with it, also through init_from, whatever the new model's default (exact GELU) says."""
    pre, path = pretrained(tmp_path, activation="gelu_tanh")
    x, t, ctx, a = inputs(5)
    loaded = WorldModel.load_from_checkpoint(path)
    assert loaded.hparams.net["activation"] == "gelu_tanh"
    torch.testing.assert_close(loaded(x, t, ctx, a), pre(x, t, ctx, a), rtol=0, atol=0)
    fine = model(condition="none")
    assert fine.net.transformer.blocks[0].mlp.act.approximate == "none"
    fine.initialize_from(path)
    assert fine.hparams.net["activation"] == "gelu_tanh"
    torch.testing.assert_close(fine(x, t, ctx, a), pre(x, t, ctx, a), rtol=0, atol=0)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["hyper_parameters"]["net"]["activation"]  # as written before the argument existed
    old = model(condition="none")
    old.on_load_checkpoint(checkpoint)
    assert old.net.transformer.blocks[0].mlp.act.approximate == "tanh"


def test_init_from_names_every_mismatched_tensor(tmp_path: Path) -> None:
    _, path = pretrained(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"tensor\(s\) differ in shape.*patch_embed.weight: checkpoint \(32, 144\) "
        r"vs model \(48, 144\).*head.weight: checkpoint \(48, 32\) vs model \(48, 48\)",
    ) as err:
        model(dim=48, cond_dim=32).initialize_from(path)
    assert "time_embed" not in str(err.value)  # cond_dim kept: those tensors fit
    with pytest.raises(UsageError, match="does not exist"):
        model().initialize_from(tmp_path / "nope.ckpt")


def test_init_from_runs_in_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_FILM_CACHE", str(tmp_path / "cache"))
    pre, path = pretrained(tmp_path)
    fine = model(init_from=str(path))
    calls = []
    original = fine.initialize_from
    monkeypatch.setattr(fine, "initialize_from", lambda p: calls.append(p) or original(p))
    quick_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(fine, world_data())
    assert calls == [str(path)]


def test_a_finetuned_checkpoint_is_not_reinitialized(tmp_path: Path) -> None:
    _, path = pretrained(tmp_path)
    fine = model(init_from=str(path))
    fine.initialize_from(path)
    perturb_(fine, 0.1)  # "finetuned"
    trainer = quick_trainer(tmp_path)
    trainer.strategy.connect(fine)
    trainer.save_checkpoint(tmp_path / "fine.ckpt")
    loaded = WorldModel.load_from_checkpoint(tmp_path / "fine.ckpt")
    loaded.setup("test")  # init_from must not overwrite the finetuned weights
    for key, value in fine.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


# -- bad input -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frame_size": 18}, "frame_size=18 is not divisible by patch_size=4"),
        ({"objective": "diffusion", "sampler": "heun"}, "sampler 'heun' does not fit objective 'diffusion'"),
        ({"objective": "flow", "sampler": "ddim"}, "sampler 'ddim' does not fit objective 'flow'"),
        ({"objective": "flow", "prediction": "v"}, "applies to objective 'diffusion' only"),
        ({"objective": "score"}, "unknown objective 'score'"),
        ({"condition": "none", "guidance_scale": 2.0}, "condition='none' always uses the null action"),
        ({"cond_dropout": 1.0}, "need 0 <= cond_dropout < 1"),
        ({"kid_feature": "inceptoin"}, "unknown kid feature 'inceptoin'; did you mean 'inception'"),
        ({"conditioner": "flim"}, "unknown conditioner 'flim'; did you mean 'film'"),
        ({"sample_steps": 0}, "sample_steps must be an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model(**kwargs)


def test_bad_batches_are_named() -> None:
    m = model()
    batch = make_batch()
    batch["action"] = torch.tensor([0, 5, -1, 2])
    with pytest.raises(
        ValueError,
        match=r"action\(s\) \[-1, 5\] out of range; this model has num_actions=5 "
        r"\(valid 0..4\)",
    ):
        m.loss(batch)
    with pytest.raises(
        ValueError,
        match=r"expects context \(B, 2, 3, 16, 16\) and target \(B, 3, 16, 16\); "
        r"got \(4, 2, 3, 32, 32\)",
    ):
        m.loss(make_batch(frame=32))
    batch = make_batch()
    batch["target"] = batch["target"].float()
    with pytest.raises(ValueError, match="expects uint8 frames"):
        m.loss(batch)
    with pytest.raises(ValueError, match=r"valid 0..4, 5 = null\)"):
        m.sample_next(make_batch(1)["context"], torch.tensor([6]))


# -- through Lightning, with recorded bounce_room episodes -----------------------------------------------------
def world_data(**kwargs):
    from lightning_film.data.world import WorldDataModule

    kwargs = {
        "episodes": 10,
        "episode_length": 8,
        "frame_size": FRAME,
        "context_frames": K,
        "val_episodes": 2,
        "test_episodes": 2,
        "batch_size": 4,
        **kwargs,
    }
    return WorldDataModule(**kwargs)


def test_data_settings_must_match_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_FILM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="the data's frame_size=16 differs from the model's frame_size=32"):
        quick_trainer(tmp_path).fit(model(frame_size=32), world_data())
    with pytest.raises(ValueError, match="the data's context_frames=3 differs from the model's context_frames=2"):
        quick_trainer(tmp_path).fit(model(), world_data(context_frames=3))


@pytest.mark.parametrize(
    "kwargs", [{}, {"objective": "flow", "sampler": "heun", "cond_dropout": 0.2, "guidance_scale": 2.0}]
)
def test_fit_and_test_log_metrics_write_sheets_and_cache_real_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict
) -> None:
    monkeypatch.setenv("LIGHTNING_FILM_CACHE", str(tmp_path / "cache"))
    L.seed_everything(0, verbose=False)
    m, dm = model(**kwargs), world_data()
    trainer = quick_trainer(tmp_path, max_steps=3, val_check_interval=3)
    trainer.fit(m, dm)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key in ("train/loss", "val/loss", "val/psnr"):
        assert key in logged and math.isfinite(logged[key]), key

    embedded: list[int] = []
    extractor = m.evaluator.kid.inception
    original = extractor.forward
    monkeypatch.setattr(extractor, "forward", lambda imgs: embedded.append(len(imgs)) or original(imgs))
    first = trainer.test(m, dm, verbose=False)[0]
    for key in ("test/loss", "test/psnr", "test/kid_mean", "test/kid_std", *CONTROL_KEYS):
        assert key in first and math.isfinite(first[key]), key
    for r in range(1, TINY["rollout_steps"] + 1):
        for kind in ("rollout_agent_acc", "rollout_psnr", "rollout_psnr_copy"):
            assert f"test/{kind}/step_{r}" in first
    assert first["test/rollout_psnr"] == first[f"test/rollout_psnr/step_{TINY['rollout_steps']}"]
    assert 0 <= first["test/agent_acc"] <= 1 and first["test/agent_acc_copy"] > 0  # the agent often stays put
    assert sum(embedded) == 2 * 8  # 8 sampled frames, then their 8 real frames (cache miss)
    assert len(list((tmp_path / "cache" / "kid").glob(f"{dm.dataset_key}-test-tiny-n8-*.pt"))) == 1
    sheets = tmp_path / "samples"
    assert (sheets / "next_frames.png").is_file() and (sheets / "rollout.png").is_file()

    from PIL import Image

    with Image.open(sheets / "next_frames.png") as image:
        width = image.size[0]  # K context + truth + A samples, 4x enlarged
    assert width == (K + 1 + A) * (4 * FRAME + 2) + 2
    embedded.clear()
    second = trainer.test(m, dm, verbose=False)[0]
    assert sum(embedded) == 8, "the real frames' features must come from the cache"
    assert second == pytest.approx(first)  # seeded: the same noise, the same KID subsets


def test_test_says_what_it_does_and_its_sheets_reach_tensorboard_as_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("LIGHTNING_FILM_CACHE", str(tmp_path / "cache"))
    L.seed_everything(0, verbose=False)
    m, dm = model(), world_data()
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer = quick_trainer(tmp_path, max_steps=1, logger=logger, limit_test_batches=1)
    trainer.fit(m, dm)
    said: list[str] = []  # what the user reads while the test runs (Lightning's info lines)
    monkeypatch.setattr("lightning_film.models.world_model.rank_zero_info", said.append)
    monkeypatch.setattr("lightning_film.models.world_eval.rank_zero_info", said.append)
    trainer.test(m, dm, verbose=False)
    assert "each batch samples the next frame" in said[0] and "KID of" in said[1] and "rollouts of" in said[2]
    assert said[-1].endswith(f"sample sheets: {Path(logger.log_dir) / 'samples'}")
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert {"test/next_frames", "test/rollout"} <= set(events.Tags()["images"])
    (image,) = events.Images("test/next_frames")
    assert image.width == (K + 1 + A) * (4 * FRAME + 2) + 2  # the labelled sheet, as the PNG beside the logs
    assert (Path(logger.log_dir) / "samples" / "next_frames.png").is_file()


CONTROL_KEYS = (
    "test/agent_acc",
    "test/agent_acc_wrong",
    "test/agent_acc_copy",
    "test/psnr_copy",
    "test/ssim",
    "test/ssim_copy",
    "test/x0_psnr",
    "test/x0_psnr_wrong",
    "test/rollout_agent_acc",
    "test/rollout_psnr",
    "test/rollout_psnr_copy",
)


def test_a_world_without_a_locator_skips_the_agent_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_film.data.environments import World
    from lightning_film.models import world_eval

    said: list[str] = []  # Lightning's logger may not propagate to caplog after other tests' trainers
    monkeypatch.setattr(world_eval, "rank_zero_info", said.append)

    class Plain(World):  # a gym world, say: frames but no locator
        name, num_actions, action_names = "plain", A, tuple("abcde")

    m, batch = model(), make_batch(4)
    perturb_(m, 0.05)
    g = [torch.Generator().manual_seed(i) for i in range(4)]
    m.evaluator.reset(Plain(FRAME))
    assert any("world 'plain' has no agent locator; agent metrics skipped" in line for line in said)
    m.evaluator.update(m, *m.unpack_batch(batch), g)
    metrics, sheets = m.evaluator.finish(m, None, "synthetic")
    assert not any("agent" in key for key in metrics)
    for key in ("test/psnr", "test/psnr_copy", "test/ssim", "test/ssim_copy", "test/x0_psnr", "test/x0_psnr_wrong"):
        assert math.isfinite(float(metrics[key])), key
    assert set(sheets) == {"next_frames"}  # no episodes: no rollout


def test_evaluation_separates_the_true_action_from_a_wrong_one() -> None:
    """x0 from pure noise under the true and the wrong action: the same noise, so a model whose
    action embedding is ablated scores both alike, and the copy baseline ignores the model."""
    m, batch = model(), make_batch(4)
    perturb_(m, 0.05)
    with torch.no_grad():
        m.net.action_embed.weight.zero_()  # the action cannot matter
    m.evaluator.reset(None)
    m.evaluator.update(m, *m.unpack_batch(batch), [torch.Generator().manual_seed(i) for i in range(4)])
    metrics, _ = m.evaluator.finish(m, None, "synthetic")
    assert float(metrics["test/x0_psnr"]) == pytest.approx(float(metrics["test/x0_psnr_wrong"]))


def test_checkpoints_of_the_layout_before_net_still_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_film.models import world_model

    said: list[str] = []  # read the message itself: Lightning's logger need not reach caplog
    monkeypatch.setattr(world_model, "rank_zero_info", said.append)
    m = model()
    perturb_(m, 0.1)
    trainer = quick_trainer(tmp_path)
    trainer.strategy.connect(m)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=False)
    checkpoint["state_dict"] = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()}
    assert "transformer.final_cond.scale.0.weight" in checkpoint["state_dict"]  # the old layout
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = WorldModel.load_from_checkpoint(tmp_path / "old.ckpt")
    assert any("predates WorldModel.net" in line for line in said)
    for key, value in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    fresh = model()
    report = fresh.initialize_from(tmp_path / "old.ckpt")
    assert report["missing"] == report["ignored"] == [] and all(k.startswith("net.") for k in report["copied"])
    assert torch.equal(fresh.net.head.weight, m.net.head.weight)


def test_the_network_stands_alone_and_evaluation_imports_one_way() -> None:
    """WorldDenoiser is the whole network (export and quantization take ``model.net``); the
    evaluator reaches the model through its public methods and never imports it at run time."""
    import ast

    from lightning_film.models.world_net import WorldDenoiser

    m = model()
    assert isinstance(m.net, WorldDenoiser) and sum(p.numel() for p in m.net.parameters()) == sum(
        p.numel() for p in m.parameters()
    )
    x, t, ctx, a = inputs()
    perturb_(m)
    torch.testing.assert_close(m(x, t, ctx, a), m.net(x, m.objective.model_time(t), ctx, a), rtol=0, atol=0)
    models = REPO / "lightning_film" / "models"

    def runtime_imports(path: Path) -> set[str]:
        names, tree = set(), ast.parse(path.read_text())
        for node in tree.body:  # top level only: `if TYPE_CHECKING:` blocks are typing, not imports
            if isinstance(node, ast.ImportFrom):
                names.add(node.module or "")
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        return names

    assert "lightning_film.models.world_model" not in runtime_imports(models / "world_eval.py")
    assert not any(
        n.startswith("lightning") and not n.startswith("lightning_film")
        for n in runtime_imports(models / "world_net.py")
    )
    source = (models / "world_eval.py").read_text()
    assert "model._" not in source  # no private attribute of the model


ROWS = {  # the design notes' rows: normalizer, conditioner, objective, guidance
    "base": ("layernorm", "additive", "diffusion", 1.0),
    "filmcond": ("rmsnorm", "film", "diffusion", 1.0),
    "filmcond_pre": ("rmsnorm", "film", "diffusion", 1.0),
    "flow_clsfg": ("rmsnorm", "film", "flow", 2.0),
    "pretrain": ("rmsnorm", "film", "diffusion", 1.0),
}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_world_configs_build_their_row(name: str) -> None:
    import yaml

    config = yaml.safe_load((REPO / f"configs/world/{name}.yaml").read_text())
    assert config["trainer"]["default_root_dir"] == f"runs/world/{name}"
    assert config["model"]["class_path"] == "lightning_film.models.WorldModel"
    assert config["data"]["class_path"] == "lightning_film.data.world.WorldDataModule"
    args = config["model"]["init_args"]
    assert (name == "filmcond_pre") == ("init_from" in args)
    assert (
        args.pop("init_from", "runs/world/pretrain/checkpoints/last.ckpt")
        == "runs/world/pretrain/checkpoints/last.ckpt"
    )
    data = config["data"]["init_args"]
    assert not {"frame_size", "context_frames"} & set(args["net"])  # said once, under data (the CLI links them)
    net = WorldDenoiser(**args.pop("net"), frame_size=data["frame_size"], context_frames=data["context_frames"])
    hp = WorldModel(net, **args).hparams
    assert (hp.net["normalizer"], hp.net["conditioner"], hp.objective, hp.guidance_scale) == ROWS[name]
    assert hp.condition == ("none" if name == "pretrain" else "action")
    assert (hp.cond_dropout > 0) == (name == "flow_clsfg")


def test_cli_chains_pretraining_and_finetuning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_film.cli import main

    monkeypatch.setenv("LIGHTNING_FILM_CACHE", str(tmp_path / "cache"))
    shrink = {
        "trainer.max_steps": 2,
        "trainer.val_check_interval": 2,
        "trainer.limit_val_batches": 1,
        "trainer.enable_progress_bar": "false",
        "trainer.enable_model_summary": "false",
        "model.net.dim": 32,
        "model.net.depth": 1,
        "model.net.num_heads": 2,
        "model.sample_steps": 2,
        "model.kid_feature": "tiny",
        "model.max_eval_samples": 8,
        "model.kid_subset_size": 4,
        "model.rollout_steps": 2,
        "data.episodes": 10,
        "data.episode_length": 8,
        "data.frame_size": FRAME,
        "data.val_episodes": 2,
        "data.test_episodes": 2,
        "data.batch_size": 4,
        "data.max_eval_windows": 8,
    }
    args = [a for k, v in shrink.items() for a in (f"--{k}", str(v))]

    def run(command: str, name: str, *extra: str) -> Path:
        root = tmp_path / name
        config = str(REPO / f"configs/world/{name}.yaml")
        csv = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root)}}
        main(
            [
                command,
                "--config",
                config,
                "--trainer.default_root_dir",
                str(root),
                "--trainer.logger",
                json.dumps(csv),
                *args,
                *extra,
            ]
        )
        return root

    last = run("fit", "pretrain") / "checkpoints" / "last.ckpt"
    assert last.is_file()
    fine = run("fit", "filmcond_pre", "--model.init_from", str(last))
    assert (fine / "checkpoints" / "last.ckpt").is_file()
    run("test", "filmcond_pre", "--model.init_from", str(last), "--ckpt_path", "last")
    assert list(fine.glob("**/samples/next_frames.png")) and list(fine.glob("**/samples/rollout.png"))
    logged = "".join(p.read_text() for p in fine.glob("**/metrics.csv"))
    assert all(key in logged for key in ("test/kid_mean", "test/psnr", "test/rollout_psnr", "test/loss"))
    guided = run("fit", "flow_clsfg")
    assert (guided / "checkpoints" / "last.ckpt").is_file()


def test_noise_shift_reaches_the_objective_and_a_bad_one_is_one_line() -> None:
    shifted = model(noise_shift=16.0)
    plain = model()
    assert shifted.objective.shift == 16.0 and plain.objective.shift == 1.0
    moved = torch.logit(plain.objective.alpha_bar) - torch.logit(shifted.objective.alpha_bar)
    torch.testing.assert_close(moved, torch.full_like(moved, 2 * math.log(16.0)))
    with pytest.raises(ValueError, match=r"noise shift must be a number >= 1 \(1: the plain schedule\), got 0.5"):
        model(noise_shift=0.5)


def test_command_line_model_settings_win_over_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI lets a checkpoint's hyper-parameters overwrite the model config; an option typed
    on the command line at test time (--model.sample_steps) must still be the one used."""
    import yaml

    from lightning_film.cli import _cli_model_keys, main

    assert _cli_model_keys(["--model.sample_steps", "3", "--model.init_args.seed=1", "--model.help", "--data.x"]) == {
        "sample_steps",
        "seed",
    }
    monkeypatch.setenv("LIGHTNING_FILM_CACHE", str(tmp_path / "cache"))
    shrink = {
        "trainer.max_steps": 2,
        "trainer.limit_val_batches": 0,
        "trainer.enable_progress_bar": "false",
        "trainer.enable_model_summary": "false",
        "model.net.dim": 32,
        "model.net.depth": 1,
        "model.net.num_heads": 2,
        "model.sample_steps": 2,
        "model.kid_feature": "tiny",
        "model.max_eval_samples": 4,
        "model.kid_subset_size": 2,
        "model.rollout_steps": 1,
        "model.rollout_windows": 2,
        "data.episodes": 10,
        "data.episode_length": 8,
        "data.frame_size": FRAME,
        "data.val_episodes": 2,
        "data.test_episodes": 2,
        "data.batch_size": 4,
        "data.max_eval_windows": 4,
    }
    args = [a for k, v in shrink.items() for a in (f"--{k}", str(v))]
    config, root = str(REPO / "configs/world/filmcond.yaml"), tmp_path / "run"
    csv = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root), "name": "log"}}
    common = ["--config", config, "--trainer.default_root_dir", str(root), "--trainer.logger", json.dumps(csv), *args]
    main(["fit", *common])
    ckpt = root / "checkpoints" / "last.ckpt"
    main(["test", *common, "--ckpt_path", str(ckpt), "--model.sample_steps", "3"])
    used = yaml.safe_load(sorted(root.glob("log/version_*/hparams.yaml"))[-1].read_text())
    assert used["sample_steps"] == 3  # the checkpoint says 2
