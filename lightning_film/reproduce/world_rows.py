"""The world tables' rows and columns: which config and change each row is, the published numbers
beside them (DiT, Nano World Model), and the metrics shown and compared over seeds."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BY_KEY",
    "DIT_FID",
    "KID_REFERENCE",
    "KID_ROWS",
    "METRICS",
    "NANOWM",
    "NANOWM_NOTE",
    "NONE_ROW",
    "PAIRED",
    "PRETRAIN",
    "PRETRAIN_HALF",
    "RECIPE_REFERENCE",
    "RECIPE_ROWS",
    "KidRow",
    "Metric",
    "RecipeRow",
]


@dataclass(frozen=True)
class KidRow:
    """A row of the seed's table: the config behind it and the seed's own KID; ``pretrained``: finetuned
    from an unconditional run; ``split``: that run and the finetune share the other rows' budget (half
    each) instead of the pretraining coming on top."""

    name: str
    config: str
    normalization: str
    conditioning: str
    seed_kid: float | None
    pretrained: bool = False
    split: bool = False


KID_ROWS: tuple[KidRow, ...] = (
    KidRow("world_base", "base.yaml", "LayerNorm", "additive", 0.157),
    KidRow("world_filmcond", "filmcond.yaml", "RMSNorm", "FiLM", 0.128),
    KidRow(
        "world_filmcond_pre",
        "filmcond_pre.yaml",
        "RMSNorm",
        "FiLM, from an unconditional pretrained model",
        0.106,
        pretrained=True,
    ),
    KidRow(
        "world_filmcond_pre_half",
        "filmcond_pre.yaml",
        "RMSNorm",
        "FiLM, half the steps unconditional + half finetuned: the other rows' total",
        None,
        pretrained=True,
        split=True,
    ),
    KidRow("world_flow_clsfg", "flow_clsfg.yaml", "RMSNorm", "FiLM + classifier-free guidance (flow matching)", 0.102),
)
PRETRAIN = KidRow("pretrain (reference)", "pretrain.yaml", "RMSNorm", "none: action always dropped", None)
#: the split row's own pretraining run: half the conditional budget
PRETRAIN_HALF = KidRow("pretrain, half budget", "pretrain.yaml", "RMSNorm", "none: action always dropped", None)
KID_REFERENCE = "world_filmcond"
NONE_ROW = "rmsnorm + none"

#: DiT (Peebles & Xie), Table 4: ImageNet 256, FID-50K at 400K steps, XL/2 (lower is better).
DIT_FID = {"concat": 35.24, "cross_attention": 26.14, "adaln": 25.21, "adaln_zero": 19.47}
#: Nano World Model's action-injection ablation: NanoWM-B/2 on RT-1, 50k steps, (PSNR dB, FID).
NANOWM = {
    "additive": (23.07, 42.27),
    "adaln": (23.19, 43.62),
    "film": (23.20, 40.62),
    "cross_attention": (20.82, 51.12),
}
NANOWM_NOTE = (
    "Nano World Model (NanoWM-B/2, RT-1, 50k steps), action injection, PSNR / FID: additive 23.07 / 42.27, "
    "adaLN 23.19 / 43.62, FiLM 23.20 / 40.62, cross-attention 20.82 / 51.12; on PushT (2-D actions) all five "
    "land within 0.32 dB and additive is best"
)


@dataclass(frozen=True)
class RecipeRow:
    """A row of the recipe table: one change to ``configs/world/filmcond.yaml`` as shipped."""

    name: str
    change: str
    args: tuple[str, ...] = ()


#: The shipped recipe and one change at a time; every row at the preset's steps (equal wall time:
#: none of these changes the cost of a step) unless the row is about the budget itself.
RECIPE_ROWS: tuple[RecipeRow, ...] = (
    RecipeRow("shipped", "configs/world/filmcond.yaml as shipped (noise_shift 16, v, DDIM, film)"),
    RecipeRow(
        "noise_shift 1", "the plain cosine schedule (the recipe before this table)", ("--model.noise_shift", "1")
    ),
    RecipeRow("noise_shift 4", "a smaller shift", ("--model.noise_shift", "4")),
    RecipeRow("noise_shift 64", "a larger shift", ("--model.noise_shift", "64")),
    RecipeRow("1500 steps", "the old budget (fewer steps, less wall time)", ("--trainer.max_steps", "1500")),
    RecipeRow(
        "flow",
        "rectified flow (velocity, Euler) at the same shift",
        ("--model.objective", "flow", "--model.prediction", "null", "--model.sampler", "euler"),
    ),
    RecipeRow(
        "adaln",
        "adaln: SiLU(c) into the projections, so time and action interact",
        ("--model.net.conditioner", "adaln"),
    ),
)
RECIPE_REFERENCE = "shipped"


@dataclass(frozen=True)
class Metric:
    """A column: its key (a logged ``test/`` metric or a derived one), header, digits, which way is better."""

    key: str
    name: str
    digits: int
    higher_is_better: bool | None


METRICS = (
    Metric("test/kid_mean", "KID", 4, False),
    Metric("test/psnr", "PSNR (dB)", 2, True),
    Metric("psnr_vs_copy", "PSNR − copy (dB)", 2, True),
    Metric("test/agent_acc", "agent acc", 3, True),
    Metric("test/agent_acc_wrong", "agent acc, wrong action", 3, None),  # low: the model obeys the action
    Metric("test/rollout_agent_acc", "rollout agent acc", 3, True),
)
BY_KEY = {m.key: m for m in METRICS}
#: compared pair by pair (the rest are shown, not tested)
PAIRED = ("test/kid_mean", "test/psnr", "test/agent_acc", "test/rollout_agent_acc")
