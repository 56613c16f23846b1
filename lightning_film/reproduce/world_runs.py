"""The world tables' runs: the presets (seeds, steps, evaluation size) and, per table, the
``lightning-film`` runs that fill its rows."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from lightning_film.reproduce.report import override_args
from lightning_film.reproduce.runner import Run
from lightning_film.reproduce.world_rows import KID_ROWS, PRETRAIN, PRETRAIN_HALF, RECIPE_ROWS

__all__ = ["FULL", "PRESETS", "QUICK", "Preset", "conditioning_rows", "conditioning_runs", "kid_runs", "recipe_runs"]


@dataclass(frozen=True)
class Preset:
    """Budget of a world table: seeds, conditional steps, pretraining steps, evaluation size."""

    seeds: tuple[int, ...]
    max_steps: int
    pretrain_steps: int
    val_every: int
    eval_samples: int
    kid_subset_size: int
    sample_steps: int
    repeats: int = 5
    steps_per_repeat: int = 3


#: quick: the shipped configs' own budget (4000 steps, 512 test windows), three seeds
QUICK = Preset((0, 1, 2), 4000, 0, val_every=1000, eval_samples=512, kid_subset_size=100, sample_steps=20)
FULL = Preset((0, 1, 2, 3, 4), 12000, 0, val_every=2000, eval_samples=1000, kid_subset_size=500, sample_steps=50)
PRESETS: dict[str, dict[str, Preset]] = {
    # world-kid pretrains as long as it finetunes
    "world-kid": {"quick": replace(QUICK, pretrain_steps=4000), "full": replace(FULL, pretrain_steps=12000)},
    "world-recipe": {"quick": QUICK},
    "world-conditioning": {"quick": QUICK, "full": FULL},
}


def _budget(preset: Preset, seed: int, steps: int) -> list[str]:
    return [
        "--seed_everything",
        str(seed),
        "--data.seed",
        str(seed),
        "--model.seed",
        str(seed),
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        str(min(preset.val_every, steps)),
        "--model.max_eval_samples",
        str(preset.eval_samples),
        "--model.kid_subset_size",
        str(preset.kid_subset_size),
        "--model.sample_steps",
        str(preset.sample_steps),
    ]


def kid_runs(preset: Preset, configs: Path, seeds: tuple[int, ...], overrides: list[tuple[str, str]]) -> list[Run]:
    """Per seed: the unconditional pretraining runs (the preset's steps; half the conditional budget),
    then the rows: ``_pre`` finetunes the first for the whole budget (more steps in total), ``_pre_half``
    the second for the other half (the same total as the rows trained from scratch)."""
    extra, half = override_args(overrides), preset.max_steps // 2
    runs = []
    for seed in seeds:
        pre = {False: f"pretrain/seed{seed}", True: f"pretrain_half/seed{seed}"}
        for split, row, steps in ((False, PRETRAIN, preset.pretrain_steps), (True, PRETRAIN_HALF, half)):
            args = _budget(preset, seed, steps) + ["--model.init_from", "null", *extra]
            runs.append(Run(pre[split], configs / row.config, args, labels={"row": row.name, "seed": seed}))
        for row in KID_ROWS:
            steps = preset.max_steps - half if row.split else preset.max_steps
            run = Run(
                f"{row.name}/seed{seed}",
                configs / row.config,
                _budget(preset, seed, steps) + extra,
                labels={"row": row.name, "seed": seed},
            )
            if row.pretrained:
                run.after = [pre[row.split]]
                run.fit_args = ["--model.init_from", "{runs}/" + pre[row.split] + "/checkpoints/last.ckpt"]
                run.test_args = ["--model.init_from", "null"]  # the test loads the finetuned checkpoint
            else:
                run.args += ["--model.init_from", "null"]
            runs.append(run)
    return runs


def conditioning_rows() -> list[tuple[str, str]]:
    """(normalizer, conditioner) rows: every conditioner with rmsnorm, film with every other norm."""
    from lightning_film.registry import list_conditioners, list_normalizers

    rows = [("rmsnorm", c) for c in list_conditioners()]
    rows += [(n, "film") for n in list_normalizers() if n not in ("rmsnorm", "identity")]
    return rows


def conditioning_runs(
    preset: Preset, configs: Path, seeds: tuple[int, ...], overrides: list[tuple[str, str]]
) -> list[Run]:
    extra = override_args(overrides)
    runs = []
    for norm, cond in conditioning_rows():
        for seed in seeds:
            args = _budget(preset, seed, preset.max_steps) + [
                "--model.net.normalizer",
                norm,
                "--model.net.conditioner",
                cond,
                "--model.init_from",
                "null",
                *extra,
            ]
            runs.append(
                Run(
                    f"{norm}-{cond}/seed{seed}",
                    configs / "filmcond.yaml",
                    args,
                    labels={"row": f"{norm} + {cond}", "normalizer": norm, "conditioner": cond, "seed": seed},
                )
            )
    return runs


def recipe_runs(preset: Preset, configs: Path, seeds: tuple[int, ...], overrides: list[tuple[str, str]]) -> list[Run]:
    extra = override_args(overrides)
    return [
        Run(
            f"{row.name}/seed{seed}",
            configs / "filmcond.yaml",
            [*_budget(preset, seed, preset.max_steps), *row.args, "--model.init_from", "null", *extra],
            labels={"row": row.name, "change": row.change, "seed": seed},
        )
        for row in RECIPE_ROWS
        for seed in seeds
    ]
