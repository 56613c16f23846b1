"""The quant table's runs: its presets (seeds, each model's steps and QAT arm) and, per model and
seed, the ``lightning-film`` runs: ``film``, ``film_tanh`` and the QAT arm continuing ``film``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lightning_film.errors import UsageError
from lightning_film.reproduce.quant_specs import CONDITIONERS, GROUP, QAT_WEIGHTS, SPECS
from lightning_film.reproduce.report import override_args
from lightning_film.reproduce.runner import Run

__all__ = ["PRESETS", "QAT_START", "Budget", "Preset", "build_runs", "check_qat_starts", "qat_start"]


#: the ``film`` run's extra checkpoint, where the QAT arm starts (Lightning fills in the step)
QAT_START = "qat_start_{step}"


@dataclass(frozen=True)
class Budget:
    """A model's runs: training steps, the QAT arm's final steps (0: no QAT arm), validation interval,
    and model settings of the test (the world model's sampled windows, KID subset, sampler steps)."""

    steps: int
    qat_steps: int
    val_every: int
    test_settings: tuple[tuple[str, int], ...] = ()


def _world_test(samples: int, kid_subset: int, sample_steps: int) -> tuple[tuple[str, int], ...]:
    return (("max_eval_samples", samples), ("kid_subset_size", kid_subset), ("sample_steps", sample_steps))


@dataclass(frozen=True)
class Preset:
    """The table's budget: seeds, each model's runs, CPU timing repeats."""

    seeds: tuple[int, ...]
    byte: Budget
    world: Budget
    repeats: int
    steps_per_repeat: int


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        seeds=(0,),
        byte=Budget(600, 200, 150),
        world=Budget(1000, 200, 500, _world_test(100, 50, 20)),
        repeats=5,
        steps_per_repeat=5,
    ),
    "full": Preset(
        seeds=(0, 1, 2),
        byte=Budget(3000, 600, 300),
        world=Budget(6000, 1000, 1000, _world_test(500, 250, 50)),
        repeats=7,
        steps_per_repeat=5,
    ),
}


def qat_start(budget: Budget) -> str:
    """File name of the ``film`` run's checkpoint the QAT arm starts from."""
    return QAT_START.format(step=budget.steps - budget.qat_steps) + ".ckpt"


def _callback(class_path: str, **init: object) -> list[str]:
    """Command-line arguments that append one callback to the config's list."""
    return [f"--trainer.callbacks+={class_path}", *(f"--trainer.callbacks.{k}={v}" for k, v in init.items())]


def build_runs(
    preset: Preset,
    models: tuple[str, ...],
    seeds: tuple[int, ...],
    configs: dict[str, Path],
    overrides: dict[str, list[tuple[str, str]]],
    root: Path,
) -> list[Run]:
    """Per model and seed: ``film``, ``film_tanh`` and (``qat_steps`` > 0) ``film_qat_int4``, which
    continues the ``film`` run (in ``root``) from its checkpoint ``qat_steps`` before the end."""
    runs = []
    for model in models:
        spec, budget = SPECS[model], getattr(preset, model)
        for seed in seeds:
            base = [
                "--seed_everything",
                str(seed),
                *(a for o in spec.seed_options for a in (f"--{o}", str(seed))),
                "--trainer.max_steps",
                str(budget.steps),
                # a validation (and so last.ckpt) at the last step, whatever it is, also for the QAT arm
                "--trainer.val_check_interval",
                str(math.gcd(budget.steps, budget.val_every)),
                *(a for k, v in budget.test_settings for a in (f"--model.{k}", str(v))),
            ]
            extra = override_args(overrides.get(model, []))
            labels = {"model": model, "seed": seed}
            for cond in CONDITIONERS:
                args = [*base, f"--{spec.conditioner_option}", cond, *extra]
                run = Run(f"{model}/{cond}/seed{seed}", configs[model], args, labels={**labels, "conditioner": cond})
                if cond == "film" and budget.qat_steps:
                    run.fit_args = _callback(
                        "lightning.pytorch.callbacks.ModelCheckpoint",
                        filename=QAT_START,
                        auto_insert_metric_name="false",
                        every_n_train_steps=budget.steps - budget.qat_steps,
                        save_top_k=-1,
                    )
                runs.append(run)
            if budget.qat_steps:
                film = f"{model}/film/seed{seed}"
                start = root / film / "checkpoints" / qat_start(budget)
                runs.append(
                    Run(
                        f"{model}/film_qat_{QAT_WEIGHTS}/seed{seed}",
                        configs[model],
                        [*base, f"--{spec.conditioner_option}", "film", *extra],
                        fit_args=[
                            "--ckpt_path",
                            str(start),
                            *_callback(
                                "lightning_film.callbacks.QuantizationCallback",
                                mode="qat",
                                weights=QAT_WEIGHTS,
                                group_size=GROUP,
                                evaluate="false",
                            ),
                        ],
                        labels={**labels, "conditioner": "film", "qat": QAT_WEIGHTS, "qat_from": str(start)},
                        after=[film],
                    )
                )
    return runs


def check_qat_starts(runs: list[Run], root: Path) -> None:
    """A QAT arm still to run whose ``film`` run finished without the checkpoint it starts from (that
    run had another --max-steps or --qat-steps): one line now, not a failed fit later."""
    for run in runs:
        start = Path(run.labels.get("qat_from", ""))
        pending = not (root / run.key / "result.json").is_file()
        if "qat" in run.labels and pending and (root / run.after[0] / "result.json").is_file() and not start.is_file():
            raise UsageError(
                f"reproduce quant: run {run.after[0]!r} finished without {start.name}, where the QAT arm starts (it "
                f"ran with another --max-steps or --qat-steps); remove {str(root / run.after[0])!r} to train it "
                "again, or use another --runs folder"
            )
