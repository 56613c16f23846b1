"""``lightning-film reproduce quant``: what int8 and int4 weights cost both models, and what they buy.

    lightning-film reproduce quant --preset quick     # 1 seed; byte 600 steps, world 1000 steps
    lightning-film reproduce quant --preset full      # 3 seeds; byte 3000 steps, world 6000 steps

The runs (the real ``lightning-film fit`` + ``test``, resumable: see :mod:`lightning_film.reproduce.runner`),
per model and seed, all at the model's budget:

- ``film``: the float model with FiLM (byte: ``configs/byte/nibble_acc.yaml``, where FiLM modulates the
  byte embedding, ``model.embed_conditioner``; world: ``configs/world/filmcond.yaml``, FiLM in every
  block, ``model.conditioner``). It also keeps its checkpoint ``qat_steps`` before the end.
- ``film_tanh``: the same with the bounded ``film_tanh`` (gamma = 1 + 0.5 tanh(s)), the seed's
  candidate for low bits.
- ``film_qat_int4``: the ``film`` run's last ``qat_steps`` again, from that checkpoint, with int4 fake
  quantization (torchao QAT, every role int4 per group of 32), then converted. Against it stands
  ``film`` itself: float to the end, then int4 post-training quantization (same steps, data, rates).

Then, in this process, each run's last checkpoint (read weights only) is quantized with torchao per
role (:data:`VARIANTS`: ``int8``; ``int4_film``, the conditioner's projections int4 and the rest int8;
``int4``, everything int4) and scored on the test split: byte bits per byte (all, per corpus); world
test loss, PSNR and KID of sampled next frames. The ``film`` model's variants (and ``int8_dyn``, int8
activations too, for reference) are timed on the CPU against float (interleaved forwards; ratios per
repeat, median and IQR), and its float weights go to Core ML per compression (:data:`COREML`; the
packages are written and read back, not run: Core ML does not run on Linux). A checkpoint's
assessment is kept beside it (``<run>/quant/assessment.json``) and read back while the checkpoint and
the settings are unchanged.

Results: ``benchmarks/results/quant/<preset>/`` ``results.md``, ``results.json`` and ``quant.png``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lightning_film.errors import UsageError
from lightning_film.reproduce.quant_assess import assessed, quiet_trainers
from lightning_film.reproduce.quant_report import render_markdown, render_png
from lightning_film.reproduce.quant_runs import PRESETS, Budget, Preset, build_runs, check_qat_starts
from lightning_film.reproduce.quant_specs import COREML, GROUP, MODELS, QAT_WEIGHTS, REFERENCE, SPECS, VARIANTS
from lightning_film.reproduce.quant_summary import analyse, summarize
from lightning_film.reproduce.report import add_override_option, config_tree, init_args
from lightning_film.reproduce.runner import Run
from lightning_film.reproduce.table import Plan, Table

__all__ = ["PRESETS", "TABLE", "Budget", "Preset", "build_runs"]


# -- the command -----------------------------------------------------------------------------------------
def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    for model in MODELS:
        p.add_argument(f"--{model}-config", type=Path, default=SPECS[model].config, help=f"the {model} model's config")
    p.add_argument("--max-steps", type=int, help="override both models' training steps per run")
    p.add_argument("--qat-steps", type=int, help="override both models' QAT steps (0: no QAT arm)")
    add_override_option(p, "a config override for every run of both models, e.g. trainer.limit_val_batches=2")
    for model in MODELS:
        add_override_option(
            p,
            f"a config override for the {model} model's runs only, e.g. model.net.dim=64",
            flag=f"--{model}-set",
            dest=f"{model}_set",
        )
    p.add_argument("--coreml", nargs="+", choices=COREML, default=list(COREML), help="Core ML compressions")
    p.add_argument("--threads", type=int, help="torch threads for this process's scoring and timing (default torch's)")


def _preset(args: argparse.Namespace) -> Preset:
    preset = PRESETS[args.preset]
    for model in MODELS:
        budget = getattr(preset, model)
        steps = budget.steps if args.max_steps is None else args.max_steps
        qat = budget.qat_steps if args.qat_steps is None else args.qat_steps
        if steps < 1 or not 0 <= qat < steps:
            raise UsageError(
                f"reproduce quant: need --max-steps >= 1 and 0 <= --qat-steps < the training steps ({model}: "
                f"{steps} steps, {qat} QAT steps)"
            )
        preset = replace(preset, **{model: replace(budget, steps=steps, qat_steps=qat)})
    if args.repeats is not None:
        if args.repeats < 1:
            raise UsageError(f"reproduce quant: --repeats must be >= 1, got {args.repeats}")
        preset = replace(preset, repeats=args.repeats)
    return preset


def _check_setup(args: argparse.Namespace) -> None:
    """Fail in one line before any training: a missing config or one of the other model, no torchao
    or coremltools."""
    from lightning_film.quantization.extras import require
    from lightning_film.quantization.torchao import require_torchao

    for model in args.models:
        config = getattr(args, f"{model}_config")
        if not config.is_file():
            raise UsageError(
                f"reproduce quant: config {str(config)!r} does not exist; run from the repository root or pass "
                f"--{model}-config"
            )
        try:
            init_args(
                config_tree(config, [*args.overrides, *getattr(args, f"{model}_set")]),
                "model",
                SPECS[model].model_class,
                config,
            )
        except ValueError as err:
            raise UsageError(f"reproduce quant: --{model}-config {err}") from None
    require_torchao("reproduce quant")
    if args.coreml:
        require("coremltools", "coreml", "reproduce quant's Core ML packages")


def _job(run: Run, first_seed: int, preset: Preset, coreml: tuple[str, ...]) -> dict[str, Any]:
    """What to measure on a run's checkpoint: every variant of ``film`` and ``film_tanh``, float and int4
    of the QAT arm; timing, the int8_dyn reference and Core ML on the first seed's ``film`` only."""
    labels = run.labels
    reference = labels["conditioner"] == "film" and "qat" not in labels and labels["seed"] == first_seed
    variants = ("float", QAT_WEIGHTS) if "qat" in labels else VARIANTS + ((REFERENCE,) if reference else ())
    return {
        "variants": list(variants),
        "repeats": preset.repeats if reference else 0,
        "steps_per_repeat": preset.steps_per_repeat,
        "coreml": list(coreml) if reference else [],
        "group_size": GROUP,
    }


def _plan(args: argparse.Namespace) -> Plan:
    models = tuple(args.models)
    _check_setup(args)
    preset = _preset(args)
    seeds = tuple(args.seeds) if args.seeds else preset.seeds
    root = args.runs / args.preset
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    runs = build_runs(preset, models, seeds, _configs(args), _overrides(args), root)
    check_qat_starts(runs, root)
    return Plan(preset, seeds, runs, f"quant table, preset {args.preset} ({', '.join(models)})")


def _configs(args: argparse.Namespace) -> dict[str, Path]:
    return {m: getattr(args, f"{m}_config") for m in MODELS}


def _overrides(args: argparse.Namespace) -> dict[str, list[tuple[str, str]]]:
    return {m: [*args.overrides, *getattr(args, f"{m}_set")] for m in MODELS}


def _measure(args: argparse.Namespace, plan: Plan, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every run's checkpoint quantized, scored (and the first seed's ``film`` timed and exported)."""
    models, root, first_seed = tuple(args.models), args.runs / args.preset, plan.seeds[0]
    quiet_trainers()
    assessments = {}
    for i, run in enumerate(plan.runs, 1):
        job = _job(run, first_seed, plan.preset, tuple(args.coreml))
        print(f"[{i}/{len(plan.runs)}] {run.key}: quantizing and scoring {', '.join(job['variants'])}")
        # float: the run's own `lightning-film test` of this checkpoint, the evaluation the copies get here
        known = {"float": results[run.key]["test"]}
        assessments[run.key] = assessed(
            root / run.key / "checkpoints" / "last.ckpt", root / run.key / "quant", job, known, print
        )
    first = {m: assessments[f"{m}/film/seed{first_seed}"] for m in models}
    configs = _configs(args)
    return {
        "models": list(models),
        "configs": {m: str(configs[m]) for m in models},
        "overrides": [f"{k}={v}" for k, v in args.overrides]
        + [f"{m}: {k}={v}" for m in models for k, v in getattr(args, f"{m}_set")],
        "group_size": GROUP,
        "qat_weights": QAT_WEIGHTS,
        "schemes": first[models[0]]["schemes"],
        "summary": summarize(assessments, results, models),
        "sizes": {m: first[m]["sizes"] for m in models},
        "speed": {m: first[m].get("speed") for m in models},
        "coreml": {m: first[m].get("coreml") for m in models},
        "assessments": assessments,
    }


TABLE = Table(
    name="quant",
    description=__doc__.split("\n\n")[0],
    presets=PRESETS,
    published="benchmarks/results/quant",
    add_options=_add_options,
    plan=_plan,
    measure=_measure,
    analyse=analyse,
    render=render_markdown,
    plot=render_png,
    plot_name="quant.png",
    packages=("torchao", "coremltools", "lightning"),
)
