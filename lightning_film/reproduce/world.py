"""``lightning-film reproduce world-kid`` and ``world-conditioning``: the world-model tables.

    lightning-film reproduce world-kid --preset quick            # the seed's four rows x seeds
    lightning-film reproduce world-conditioning --preset quick   # every conditioner (rmsnorm), every norm (film)

**world-kid** reproduces the seed's comparison (not its digits: its data is not ours): base
(LayerNorm + additive), filmcond (RMSNorm + FiLM), filmcond_pre (the same, finetuned from an
unconditional pretraining run made by the table itself) and flow_clsfg (FiLM + classifier-free
guidance, flow matching), each over several seeds at the same conditional-training budget
(the ``_pre`` row's pretraining steps are reported on top). The unconditional pretraining run is
tested too and shown as a reference row.

**world-conditioning** trains ``configs/world/filmcond.yaml`` with every registered conditioner
under RMSNorm, and with FiLM under every other registered normalizer, at equal budget; per row
it also reports parameters, forward GFLOPs of one denoiser call (``FlopCounterMode``) and the
training-step time against ``none`` (interleaved, same run). DiT's own ablation (ImageNet
256, FID-50K at 400K steps) is shown beside it as the reference ordering.

Every run is the real ``lightning-film fit`` + ``test`` (resumable; see
:mod:`lightning_film.reproduce.runner`). Results: ``benchmarks/results/world/<table>/<preset>/``
``results.md``, ``results.json`` and ``kid.png`` (bars: mean KID, error bars: std over seeds).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_film.errors import CommandParser
from lightning_film.io import write_atomic
from lightning_film.measure import interleaved, machine_info, paired_ratios, repeat_times, spread
from lightning_film.reproduce.report import (
    config_tree,
    fmt_mean_std,
    header,
    init_args,
    make_folder,
    mean_std,
    override_args,
    parse_override,
    report_basics,
)
from lightning_film.reproduce.runner import Run, execute_all

__all__ = ["KID_ROWS", "PRESETS", "Preset", "conditioning_runs", "kid_runs", "main_conditioning", "main_kid"]

CONFIGS = Path("configs/world")


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


PRESETS: dict[str, dict[str, Preset]] = {
    "world-kid": {
        "quick": Preset(seeds=(0, 1), max_steps=1000, pretrain_steps=1000, val_every=500, eval_samples=200,
                        kid_subset_size=100, sample_steps=20),
        "full": Preset(seeds=(0, 1, 2, 3, 4), max_steps=6000, pretrain_steps=6000, val_every=1000,
                       eval_samples=1000, kid_subset_size=500, sample_steps=50),
    },
    "world-conditioning": {
        "quick": Preset(seeds=(0,), max_steps=1000, pretrain_steps=0, val_every=500, eval_samples=200,
                        kid_subset_size=100, sample_steps=20),
        "full": Preset(seeds=(0, 1, 2), max_steps=6000, pretrain_steps=0, val_every=1000, eval_samples=1000,
                       kid_subset_size=500, sample_steps=50),
    },
}  # fmt: skip


@dataclass(frozen=True)
class KidRow:
    """A row of the seed's table: the config behind it and the seed's own KID."""

    name: str
    config: str
    normalization: str
    conditioning: str
    seed_kid: float | None
    pretrained: bool = False


KID_ROWS: tuple[KidRow, ...] = (
    KidRow("world_base", "base.yaml", "LayerNorm", "additive", 0.157),
    KidRow("world_filmcond", "filmcond.yaml", "RMSNorm", "FiLM", 0.128),
    KidRow("world_filmcond_pre", "filmcond_pre.yaml", "RMSNorm", "FiLM, from an unconditional pretrained model",
           0.106, pretrained=True),
    KidRow("world_flow_clsfg", "flow_clsfg.yaml", "RMSNorm", "FiLM + classifier-free guidance (flow matching)", 0.102),
)  # fmt: skip
PRETRAIN = KidRow("pretrain (reference)", "pretrain.yaml", "RMSNorm", "none: action always dropped", None)

#: DiT (Peebles & Xie), Table 4: ImageNet 256, FID-50K at 400K steps, XL/2 (lower is better).
DIT_FID = {"concat": 35.24, "cross_attention": 26.14, "adaln": 25.21, "adaln_zero": 19.47}


# -- runs ----------------------------------------------------------------------------------------------
def _budget(preset: Preset, seed: int, steps: int) -> list[str]:
    return [
        "--seed_everything", str(seed), "--data.seed", str(seed), "--model.seed", str(seed),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(min(preset.val_every, steps)),
        "--model.max_eval_samples", str(preset.eval_samples), "--model.kid_subset_size", str(preset.kid_subset_size),
        "--model.sample_steps", str(preset.sample_steps),
    ]  # fmt: skip


def kid_runs(preset: Preset, configs: Path, seeds: tuple[int, ...], overrides: list[tuple[str, str]]) -> list[Run]:
    """Per seed: the unconditional pretraining run, then the four rows (``_pre`` finetunes it)."""
    extra = override_args(overrides)
    runs = []
    for seed in seeds:
        pre_key = f"pretrain/seed{seed}"
        args = _budget(preset, seed, preset.pretrain_steps) + ["--model.init_from", "null", *extra]
        runs.append(Run(pre_key, configs / PRETRAIN.config, args, labels={"row": PRETRAIN.name, "seed": seed}))
        for row in KID_ROWS:
            run = Run(f"{row.name}/seed{seed}", configs / row.config, _budget(preset, seed, preset.max_steps) + extra,
                      labels={"row": row.name, "seed": seed})  # fmt: skip
            if row.pretrained:
                run.after = [pre_key]
                run.fit_args = ["--model.init_from", "{runs}/" + pre_key + "/checkpoints/last.ckpt"]
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
                "--model.normalizer", norm, "--model.conditioner", cond, "--model.init_from", "null", *extra,
            ]  # fmt: skip
            runs.append(Run(f"{norm}-{cond}/seed{seed}", configs / "filmcond.yaml", args,
                            labels={"row": f"{norm} + {cond}", "normalizer": norm, "conditioner": cond, "seed": seed}))  # fmt: skip
    return runs


# -- in-process measurements ---------------------------------------------------------------------------
def _model_args(config: Path, overrides: list[tuple[str, str]]) -> dict[str, Any]:
    args = init_args(config_tree(config, overrides), "model", "WorldModel", config)
    args["init_from"] = None
    return args


def model_costs(
    base_args: dict[str, Any], rows: list[tuple[str, str]], repeats: int, steps_per_repeat: int, batch_size: int
) -> dict[str, dict[str, Any]]:
    """Per (normalizer, conditioner): parameters, forward GFLOPs of one denoiser call (batch 1) and
    training-step time (loss, backward, AdamW) against ``rmsnorm + none``, interleaved."""
    from torch.utils.flop_counter import FlopCounterMode

    from lightning_film.models import WorldModel

    hp = {**base_args}
    k, c, s = hp.get("context_frames", 2), hp.get("channels", 3), hp.get("frame_size", 32)
    g = torch.Generator().manual_seed(0)
    batch = {
        "context": torch.randint(0, 256, (batch_size, k, c, s, s), generator=g, dtype=torch.uint8),
        "action": torch.randint(0, hp.get("num_actions", 5), (batch_size,), generator=g),
        "target": torch.randint(0, 256, (batch_size, c, s, s), generator=g, dtype=torch.uint8),
    }
    models, opts, out = {}, {}, {}
    for norm, cond in rows:
        name = f"{norm} + {cond}"
        torch.manual_seed(0)
        model = WorldModel(**{**hp, "normalizer": norm, "conditioner": cond})
        one = {key: v[:1] for key, v in batch.items()}
        context, action, target = model._batch(one)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(target.float() / 127.5 - 1, torch.full((1,), 0.5), context.float() / 127.5 - 1, action)
        out[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "forward_gflops": counter.get_total_flops() / 1e9,
        }
        models[name], opts[name] = model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step(name: str) -> None:
        models[name].loss(batch).backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)

    raw = interleaved({n: functools.partial(step, n) for n in models}, repeats, steps_per_repeat, warmup=2)
    base = "rmsnorm + none" if "rmsnorm + none" in raw else next(iter(raw))
    for name in models:
        out[name]["step_ms"] = 1000 * statistics.median(repeat_times(raw[name]))
        out[name]["step_ratio_vs_none"] = spread(paired_ratios(raw[name], raw[base]))
        out[name]["raw_step_s"] = raw[name]
    return out


def copy_baseline(config: Path, overrides: list[tuple[str, str]], preset: Preset) -> dict[str, float]:
    """KID and PSNR of "predicting" the last context frame, on the windows, features and KID
    subsets a run's ``test`` uses: the score of a model that knows what the room looks like but
    nothing about what moves. Real frames look real, so its KID is near 0; its PSNR is the bar
    a model's next frames must clear."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from lightning_film.data.world import WorldDataModule
    from lightning_film.metrics.kid import build_kid_feature, compute_kid, kid_metric, real_features

    tree = config_tree(config, overrides)
    model = init_args(tree, "model", "WorldModel", config)
    dm = WorldDataModule(**init_args(tree, "data", "WorldDataModule", config))
    dm.setup("test")
    last, truth, n = [], [], 0
    for batch in dm.test_dataloader():  # the same order as a run's test, first windows first
        take = min(len(batch["target"]), preset.eval_samples - n)
        if take <= 0:
            break
        last.append(batch["context"][:take, -1])  # (take, C, H, W) uint8
        truth.append(batch["target"][:take])
        n += take
    fake, real = torch.cat(last), torch.cat(truth)
    if fake.shape[1] == 1:  # the feature networks read RGB
        fake, real = fake.expand(-1, 3, -1, -1), real.expand(-1, 3, -1, -1)
    extractor = build_kid_feature(model.get("kid_feature", "inception"))
    metric = kid_metric(extractor, model.get("kid_subsets", 50), min(preset.kid_subset_size, n))
    metric.update(fake, real=False)
    metric.real_features.append(real_features(extractor, real, dm.dataset_key, "test"))
    kid_mean, kid_std = compute_kid(metric, seed=model.get("seed", 0))
    psnr = peak_signal_noise_ratio(fake.float(), real.float(), data_range=255.0)
    return {"kid_mean": float(kid_mean), "kid_std": float(kid_std), "psnr": float(psnr), "windows": n}


# -- reports -------------------------------------------------------------------------------------------
def _collect(results: dict[str, dict], metric: str) -> dict[str, list[float]]:
    by_row: dict[str, list[float]] = {}
    for result in results.values():
        if metric in result["test"]:
            by_row.setdefault(result["row"], []).append(result["test"][metric])
    return by_row


def _ranking(means: dict[str, float]) -> str:
    return " < ".join(sorted(means, key=means.get))


def _baseline_row(report: dict[str, Any], columns: int) -> str:
    b = report.get("baseline")
    if not b:
        return ""
    cells = ["copy the last context frame (no model)", f"{b['kid_mean']:.4f} ± {b['kid_std']:.4f} (subsets)",
             f"{b['psnr']:.2f}"]  # fmt: skip
    if columns == 6:
        cells = [cells[0], "–", "–", cells[1], cells[2], "–"]
    else:
        cells += ["–"] * (columns - len(cells))
    return "| " + " | ".join(cells) + " |"


def _baseline_note(report: dict[str, Any]) -> str:
    if not report.get("baseline"):
        return ""
    return (
        "- Baseline: the last context frame given as the next one, scored on the same test windows, features "
        "and KID subsets. Its frames are real frames, so its KID is near 0 and no generator beats it there; "
        "KID says how real the generated frames look, PSNR how close they are to what happened."
    )


def render_kid(report: dict[str, Any]) -> str:
    kid, psnr = report["kid"], report["psnr"]
    p = report["preset"]
    lines = [
        f"# World model: the seed's KID table (preset `{report['preset_name']}`)",
        "",
        *header(report),
        f"- Budget: {p['max_steps']} conditional-training steps per row; the `_pre` row starts from an "
        f"unconditional run of {p['pretrain_steps']} steps; seeds {report['seeds']}; KID over "
        f"{p['eval_samples']} held-out test frames (subset size {p['kid_subset_size']}), {p['sample_steps']} "
        f"sampling steps (preset values; the overrides below win); overrides {report['overrides'] or 'none'}",
        "",
        "| run | normalization | conditioning | KID (ours, mean ± std over seeds) | PSNR (dB) | KID (seed's data) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in (*KID_ROWS, PRETRAIN):
        seed_kid = f"{row.seed_kid:.3f}" if row.seed_kid is not None else "–"
        lines.append(
            f"| {row.name} | {row.normalization} | {row.conditioning} | {fmt_mean_std(kid.get(row.name), 4)} | "
            f"{fmt_mean_std(psnr.get(row.name), 2)} | {seed_kid} |"
        )
    lines += [
        _baseline_row(report, 6),
        "",
        _baseline_note(report),
        *report["verdict"],
        "",
        "Per-run metrics, curves and commands: `results.json`; plot: `kid.png`.",
        "",
    ]
    return "\n".join(lines)


def kid_verdict(kid: dict[str, list[float]]) -> list[str]:
    ours = {r.name: mean_std(kid[r.name])[0] for r in KID_ROWS if kid.get(r.name)}
    seed = {r.name: r.seed_kid for r in KID_ROWS if r.name in ours}
    if len(ours) < 2:
        return []
    lines = [
        f"- Our ordering (best first): {_ranking(ours)}.",
        f"- The seed's ordering: {_ranking(seed)}.",
    ]
    agree = _ranking(ours) == _ranking(seed)
    lines.append(
        "- The orderings agree." if agree else
        "- The orderings differ; the seed's numbers come from its own data and budget, ours from the built-in "
        "world at this preset's budget: read the std column before reading anything into a gap."
    )  # fmt: skip
    return lines


def render_conditioning(report: dict[str, Any]) -> str:
    kid, psnr, costs = report["kid"], report["psnr"], report["costs"]
    p = report["preset"]
    rows = sorted(costs, key=lambda r: mean_std(kid[r])[0] if kid.get(r) else float("inf"))
    lines = [
        f"# World model: conditioners and normalizers at equal budget (preset `{report['preset_name']}`)",
        "",
        *header(report),
        f"- Budget: {p['max_steps']} steps per row from `configs/world/filmcond.yaml`; seeds {report['seeds']}; "
        f"KID over {p['eval_samples']} test frames (subset {p['kid_subset_size']}), {p['sample_steps']} sampling "
        f"steps; overrides {report['overrides'] or 'none'}",
        "- Step time: loss + backward + fused AdamW (the models' optimizer) on one batch of random frames (timing does not depend on content), "
        f"all rows interleaved, {p['repeats']} repeats x {p['steps_per_repeat']} steps; ratio to rmsnorm + none "
        "per repeat (median, IQR). GFLOPs: one denoiser forward at batch 1 (`FlopCounterMode`).",
        "",
        "| row (best KID first) | KID (mean ± std) | PSNR (dB) | params | forward GFLOPs | step (ms) | step vs none | DiT FID-50K |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in rows:
        c = costs[name]
        r = c["step_ratio_vs_none"]
        cond = name.split(" + ")[1]
        dit = f"{DIT_FID[cond]:.2f}" if cond in DIT_FID and name.startswith("rmsnorm") else "–"
        lines.append(
            f"| {name} | {fmt_mean_std(kid.get(name), 4)} | {fmt_mean_std(psnr.get(name), 2)} | {c['params']:,} | "
            f"{c['forward_gflops']:.3f} | {c['step_ms']:.1f} | {r['median']:.3f} ({r['q1']:.3f}–{r['q3']:.3f}) | {dit} |"
        )
    ours = {c: mean_std(kid[f"rmsnorm + {c}"])[0] for c in DIT_FID if kid.get(f"rmsnorm + {c}")}
    lines += [_baseline_row(report, 8), "", _baseline_note(report)]
    if len(report["seeds"]) == 1:
        lines.append(
            "- One seed per row, so no spread here: `world-kid` at the same budget gives the seed-to-seed std of "
            "one config; read gaps smaller than it as noise (`--preset full` runs 3 seeds)."
        )
    if len(ours) == len(DIT_FID):
        agree = _ranking(ours) == _ranking(DIT_FID)
        lines += [
            f"- DiT's ordering of its four (best first): {_ranking(DIT_FID)}.",
            f"- Ours for the same four: {_ranking(ours)} — {'the same' if agree else 'a different'} ordering.",
        ]
    lines += ["", "Per-run metrics and commands: `results.json`; plot: `kid.png`.", ""]
    return "\n".join(lines)


def render_png(kid: dict[str, list[float]], order: list[str], title: str, reference: dict[str, float] | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in order if kid.get(n)]
    means = [mean_std(kid[n])[0] for n in names]
    stds = [mean_std(kid[n])[1] for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    x = range(len(names))
    ax.bar(x, means, yerr=stds, capsize=4, color="tab:blue", label="ours (mean ± std over seeds)")
    if reference:
        ref = [reference.get(n) for n in names]
        ax.scatter([i for i, r in zip(x, ref) if r is not None], [r for r in ref if r is not None],
                   color="tab:red", marker="D", zorder=3, label="seed's KID (its own data)")  # fmt: skip
        ax.legend()
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylabel("KID (lower is better)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


# -- the commands --------------------------------------------------------------------------------------
def _parser(table: str) -> argparse.ArgumentParser:
    parser = CommandParser(prog=f"lightning-film reproduce {table}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS[table]), default="quick")
    parser.add_argument("--configs", type=Path, default=CONFIGS, help="folder of the world configs")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the preset's seeds")
    parser.add_argument("--max-steps", type=int, help="override the preset's steps per run (and pretraining's)")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                        metavar="KEY=VALUE", help="a config override for every run, e.g. model.dim=64 (repeatable)")  # fmt: skip
    parser.add_argument("--runs", type=Path, default=Path("runs/reproduce") / table, help="where the runs live")
    parser.add_argument("--out", type=Path, help=f"results folder (default benchmarks/results/world/{table}/<preset>)")
    parser.add_argument("--repeats", type=int, help="timing repeats (default: the preset's)")
    return parser


def _setup(table: str, argv: list[str]) -> tuple[argparse.Namespace, Preset, tuple[int, ...], Path]:
    args = _parser(table).parse_args(argv)
    if not args.configs.is_dir():
        raise ValueError(
            f"config folder {str(args.configs)!r} does not exist; run from the repository root or pass --configs"
        )
    preset = PRESETS[table][args.preset]
    changes = {}
    if args.max_steps is not None:
        changes.update(max_steps=args.max_steps, pretrain_steps=args.max_steps if preset.pretrain_steps else 0)
    if args.repeats is not None:
        changes["repeats"] = args.repeats
    if any(v < 1 for k, v in changes.items() if k != "pretrain_steps"):
        raise ValueError(f"--max-steps and --repeats must be >= 1, got {changes}")
    preset = Preset(**{**asdict(preset), **changes})
    seeds = tuple(args.seeds) if args.seeds else preset.seeds
    out = make_folder(args.out or Path("benchmarks/results/world") / table / args.preset, "--out")
    make_folder(args.runs / args.preset, "--runs")
    return args, preset, seeds, out


def _execute(runs: list[Run], root: Path) -> dict[str, dict]:
    for run in runs:  # the pretrained checkpoint's path depends on where the runs live
        run.fit_args = [a.replace("{runs}", str(root)) for a in run.fit_args]
    return execute_all(runs, root)


def main_kid(argv: list[str]) -> None:
    """``lightning-film reproduce world-kid ...``"""
    start = time.perf_counter()
    args, preset, seeds, out = _setup("world-kid", argv)
    runs = kid_runs(preset, args.configs, seeds, args.overrides)
    root = args.runs / args.preset
    print(f"world-kid, preset {args.preset}: {len(runs)} runs into {root}")
    results = _execute(runs, root)
    print("scoring the copy-last-frame baseline on the same test windows ...")
    baseline = copy_baseline(args.configs / "filmcond.yaml", args.overrides, preset)
    kid, psnr = _collect(results, "test/kid_mean"), _collect(results, "test/psnr")
    report = {
        **report_basics("world-kid", argv, args, preset, seeds, machine_info()),
        "kid": kid, "psnr": psnr, "verdict": kid_verdict(kid), "baseline": baseline,
        "seed_kid": {r.name: r.seed_kid for r in KID_ROWS},
        "runs": results, "wall_s": time.perf_counter() - start,
    }  # fmt: skip
    order = [r.name for r in (*KID_ROWS, PRETRAIN)]
    write_atomic(out / "results.json", json.dumps(report, indent=1, default=str) + "\n")
    write_atomic(out / "results.md", render_kid(report))
    write_atomic(out / "kid.png", render_png(kid, order, "World model: the seed's four rows", report["seed_kid"]))
    print(render_kid(report))
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'kid.png'}", file=sys.stderr)


def main_conditioning(argv: list[str]) -> None:
    """``lightning-film reproduce world-conditioning ...``"""
    start = time.perf_counter()
    args, preset, seeds, out = _setup("world-conditioning", argv)
    runs = conditioning_runs(preset, args.configs, seeds, args.overrides)
    root = args.runs / args.preset
    print(f"world-conditioning, preset {args.preset}: {len(runs)} runs into {root}")
    results = _execute(runs, root)
    print("measuring parameters, FLOPs and step time of every row (interleaved) ...")
    base_args = _model_args(args.configs / "filmcond.yaml", args.overrides)
    batch = int(config_tree(args.configs / "filmcond.yaml", args.overrides)["data"]["init_args"].get("batch_size", 32))
    costs = model_costs(base_args, conditioning_rows(), preset.repeats, preset.steps_per_repeat, batch)
    baseline = copy_baseline(args.configs / "filmcond.yaml", args.overrides, preset)
    kid, psnr = _collect(results, "test/kid_mean"), _collect(results, "test/psnr")
    report = {
        **report_basics("world-conditioning", argv, args, preset, seeds, machine_info()),
        "kid": kid, "psnr": psnr, "costs": costs, "dit_fid": DIT_FID, "baseline": baseline,
        "runs": results, "wall_s": time.perf_counter() - start,
    }  # fmt: skip
    order = sorted(costs, key=lambda r: mean_std(kid[r])[0] if kid.get(r) else float("inf"))
    write_atomic(out / "results.json", json.dumps(report, indent=1, default=str) + "\n")
    write_atomic(out / "results.md", render_conditioning(report))
    write_atomic(out / "kid.png", render_png(kid, order, "World model: conditioner / normalizer at equal budget", None))
    print(render_conditioning(report))
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'kid.png'}", file=sys.stderr)
