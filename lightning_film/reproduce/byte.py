"""``lightning-film reproduce byte``: the byte-model table (byte vs nibble vs nibble_acc).

    lightning-film reproduce byte --preset quick        # 3 variants x 3 seeds x 600 steps
    lightning-film reproduce byte --preset full         # 3 variants x 5 seeds x 3000 steps

Every variant trains from the same config (``configs/byte/nibble_acc.yaml`` with
``--model.variant``), at the same budget (steps x batch x window), over the same seeds; each
run is the real ``lightning-film fit`` + ``test`` (see :mod:`lightning_film.reproduce.runner`),
so finished runs are not redone and a killed table continues where it stopped.

Then, in this process, the three models are built at the config's size and timed interleaved
on one real batch (training step and inference forward; ratios against ``byte`` per repeat),
and their parameters are counted. Written to ``--out`` (default
``benchmarks/results/byte/<preset>/``): ``results.md`` (the tables, the command, date and
machine), ``results.json`` (everything behind them, every run's result included) and
``val_curves.png``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_film.measure import interleaved, paired_ratios, repeat_times, spread
from lightning_film.reproduce.byte_report import BASELINE, analyse, cost_notes, render_markdown, render_png, summarize
from lightning_film.reproduce.report import add_override_option, config_tree, init_args, override_args
from lightning_film.reproduce.runner import Run
from lightning_film.reproduce.table import Plan, Table

__all__ = ["PRESETS", "TABLE", "Preset", "build_runs", "build_variant", "config_parts", "model_facts", "throughput"]

VARIANTS = ("byte", "nibble", "nibble_acc")
CONFIG = Path("configs/byte/nibble_acc.yaml")


@dataclass(frozen=True)
class Preset:
    """A table's budget: seeds, training steps per run, validation interval, timing repeats."""

    seeds: tuple[int, ...]
    max_steps: int
    val_every: int
    repeats: int = 7
    steps_per_repeat: int = 3


PRESETS: dict[str, Preset] = {
    "quick": Preset(seeds=(0, 1, 2), max_steps=600, val_every=150),
    "full": Preset(seeds=(0, 1, 2, 3, 4), max_steps=3000, val_every=300),
}


# -- the runs -----------------------------------------------------------------------------------------
def build_runs(
    preset: Preset, config: Path, variants: tuple[str, ...], seeds: tuple[int, ...], overrides: list[tuple[str, str]]
) -> list[Run]:
    """One run per (variant, seed): the config with that variant, seed and the preset's budget."""
    runs = []
    for variant in variants:
        for seed in seeds:
            args = [
                "--model.net.variant",
                variant,
                "--seed_everything",
                str(seed),
                "--data.seed",
                str(seed),
                "--trainer.max_steps",
                str(preset.max_steps),
                "--trainer.val_check_interval",
                str(preset.val_every),
                *override_args(overrides),
            ]
            runs.append(Run(f"{variant}/seed{seed}", config, args, labels={"variant": variant, "seed": seed}))
    return runs


# -- the models, measured in this process ---------------------------------------------------------------
def config_parts(config: Path, overrides: list[tuple[str, str]]) -> tuple[dict, dict]:
    """(model init_args, data init_args) of a ByteLM config with the overrides applied."""
    tree = config_tree(config, overrides)
    return init_args(tree, "model", "ByteLM", config), init_args(tree, "data", "ByteDataModule", config)


def build_variant(model_args: dict, variant: str, seed: int = 0):
    """``ByteLM`` from a config's model arguments, its network's ``variant`` replaced, its weights
    drawn from ``seed``."""
    from lightning_film.models import ByteLM, ByteNet

    torch.manual_seed(seed)
    return ByteLM(**{**model_args, "net": ByteNet(**{**model_args.get("net", {}), "variant": variant})})


def model_facts(model_args: dict, variants: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Parameters per variant: the model, the embedding, and the embedding's parts."""
    facts = {}
    for variant in variants:
        model = build_variant(model_args, variant)
        embed = model.net.embed
        parts = {name: sum(p.numel() for p in child.parameters()) for name, child in embed.named_children()}
        facts[variant] = {
            "params": sum(p.numel() for p in model.parameters()),
            "embedding_params": sum(p.numel() for p in embed.parameters()),
            **{f"embedding/{name}": n for name, n in parts.items()},
        }
    return facts


def throughput(
    model_args: dict, data_args: dict, variants: tuple[str, ...], repeats: int, steps_per_repeat: int
) -> dict[str, Any]:
    """Training-step and inference tokens/s of each variant on one real batch, timed interleaved.

    A training step is forward, masked cross-entropy, backward and AdamW; inference is a
    no-grad forward over the same windows. Ratios are tokens/s against ``byte``, per repeat.
    """
    from lightning_film.data.bytes import ByteDataModule

    dm = ByteDataModule(**data_args)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    tokens = int(batch["mask"].numel())
    models = {v: build_variant(model_args, v) for v in variants}
    for model in models.values():
        model.rare_table.copy_(dm.rare_table)
    opts = {v: torch.optim.AdamW(m.parameters(), lr=1e-4) for v, m in models.items()}

    def train(v: str) -> None:
        mask = batch["mask"]
        loss = (models[v].nll(batch) * mask).sum() / mask.sum()
        loss.backward()
        opts[v].step()
        opts[v].zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer(v: str) -> None:
        models[v](batch["bytes"][:, :-1], batch["nibbles"], batch["acc"])

    out: dict[str, Any] = {"tokens_per_step": tokens, "raw_s": {}}
    for kind, fn in (("train", train), ("infer", infer)):
        for m in models.values():
            m.train(kind == "train")
        raw = interleaved({v: functools.partial(fn, v) for v in variants}, repeats, steps_per_repeat, warmup=2)
        out["raw_s"][kind] = raw
        for v in variants:
            per_repeat = repeat_times(raw[v])
            ratios = paired_ratios(raw[BASELINE], raw[v]) if BASELINE in raw else [float("nan")]
            out.setdefault(v, {})[f"{kind}_tokens_per_s"] = tokens / statistics.median(per_repeat)
            out[v][f"{kind}_ratio"] = spread(ratios)  # tokens/s of v over byte's, same repeat
    return out


# -- the command -----------------------------------------------------------------------------------------
def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=CONFIG, help="the ByteLM config all variants start from")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--max-steps", type=int, help="override the preset's steps per run")
    add_override_option(parser, "a config override for every run, e.g. model.net.dim=64 (repeatable)")


def _plan(args: argparse.Namespace) -> Plan:
    if not args.config.is_file():
        raise ValueError(f"config {str(args.config)!r} does not exist; run from the repository root or pass --config")
    preset = PRESETS[args.preset]
    if args.max_steps is not None or args.repeats is not None:
        changes = {k: v for k, v in (("max_steps", args.max_steps), ("repeats", args.repeats)) if v is not None}
        if any(v < 1 for v in changes.values()):
            raise ValueError(f"--max-steps and --repeats must be >= 1, got {changes}")
        preset = Preset(
            **{**asdict(preset), **changes, "val_every": min(preset.val_every, changes.get("max_steps", 10**9))}
        )
    config_parts(args.config, args.overrides)  # a config of the other model fails here, before any training
    seeds = tuple(args.seeds) if args.seeds else preset.seeds
    runs = build_runs(preset, args.config, tuple(args.variants), seeds, args.overrides)
    return Plan(preset, seeds, runs, f"byte table, preset {args.preset}")


def _measure(args: argparse.Namespace, plan: Plan, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The variants timed interleaved and their parameters counted, at the config's size."""
    variants, preset = tuple(args.variants), plan.preset
    model_args, data_args = config_parts(args.config, args.overrides)
    print(f"timing {', '.join(variants)} interleaved ({preset.repeats} repeats) ...")
    speed = throughput(model_args, data_args, variants, preset.repeats, preset.steps_per_repeat)
    facts = model_facts(model_args, variants)
    return {
        "variants": list(variants),
        "config": str(args.config),
        "model": model_args,
        "data": data_args,
        "summary": summarize(results, variants),
        "facts": facts,
        "cost_notes": cost_notes(facts, model_args),
        "throughput": speed,
    }


TABLE = Table(
    name="byte",
    description=__doc__.split("\n\n")[0],
    presets=PRESETS,
    published="benchmarks/results/byte",
    add_options=_add_options,
    plan=_plan,
    measure=_measure,
    analyse=analyse,
    render=render_markdown,
    plot=render_png,
    plot_name="val_curves.png",
)
