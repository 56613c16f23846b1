"""``lightning-film reproduce world-kid`` and ``world-conditioning``: the world-model tables.

    lightning-film reproduce world-kid --preset quick            # the seed's rows (and a same-total pretrained row) x seeds
    lightning-film reproduce world-conditioning --preset quick   # every conditioner (rmsnorm), every norm (film)

**world-kid** reproduces the seed's comparison (not its digits: its data is not ours): base
(LayerNorm + additive), filmcond (RMSNorm + FiLM), filmcond_pre (the same, finetuned from an
unconditional pretraining run made by the table itself) and flow_clsfg (FiLM + classifier-free
guidance, flow matching), each over several seeds at the same conditional-training budget
(the ``_pre`` row's pretraining steps are reported on top; ``_pre_half`` pretrains and finetunes
half the budget each, the same total as the rows from scratch). The unconditional pretraining run
is tested too and shown as a reference row. Every row: mean ± 95% CI over seeds, and paired
comparisons against ``world_filmcond`` (:mod:`lightning_film.reproduce.world_report`).

**world-conditioning** trains ``configs/world/filmcond.yaml`` with every registered conditioner
under RMSNorm, and with FiLM under every other registered normalizer, at equal budget; per row
it also reports parameters, forward GFLOPs of one denoiser call (``FlopCounterMode``) and the
training-step time against ``none`` (interleaved, same run). DiT's own ablation (ImageNet
256, FID-50K at 400K steps) and Nano World Model's action-injection ablation (RT-1, PSNR / FID)
are shown beside it as reference orderings; whether ``none`` comes out clearly worst (every other
row better by the paired test) is computed.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_film.errors import CommandParser
from lightning_film.io import write_atomic
from lightning_film.measure import interleaved, machine_info, paired_ratios, repeat_times, spread
from lightning_film.reproduce.report import (
    add_common_options,
    config_tree,
    init_args,
    make_folder,
    mean_std,
    override_args,
    parse_override,
    report_basics,
    rerender,
    results_folder,
)
from lightning_film.reproduce.runner import Run, execute_all, print_plan
from lightning_film.reproduce.world_report import (  # noqa: F401  (re-exported)
    DIT_FID,
    KID_REFERENCE,
    KID_ROWS,
    NANOWM,
    NONE_ROW,
    PRETRAIN,
    PRETRAIN_HALF,
    RECIPE_REFERENCE,
    RECIPE_ROWS,
    RecipeRow,
    analyse,
    kid_verdict,
    render_conditioning,
    render_kid,
    render_recipe,
)

__all__ = ["KID_ROWS", "PRESETS", "RECIPE_ROWS", "Preset", "RecipeRow", "conditioning_runs", "copy_baseline", "kid_runs",
           "main_conditioning", "main_kid", "main_recipe", "recipe_runs", "render_conditioning", "render_kid",
           "render_recipe"]  # fmt: skip

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
    # quick: the shipped configs' own budget (4000 steps, 512 test windows), three seeds
    "world-kid": {
        "quick": Preset(seeds=(0, 1, 2), max_steps=4000, pretrain_steps=4000, val_every=1000, eval_samples=512,
                        kid_subset_size=100, sample_steps=20),
        "full": Preset(seeds=(0, 1, 2, 3, 4), max_steps=12000, pretrain_steps=12000, val_every=2000,
                       eval_samples=1000, kid_subset_size=500, sample_steps=50),
    },
    "world-recipe": {
        "quick": Preset(seeds=(0, 1, 2), max_steps=4000, pretrain_steps=0, val_every=1000, eval_samples=512,
                        kid_subset_size=100, sample_steps=20),
    },
    "world-conditioning": {
        "quick": Preset(seeds=(0, 1, 2), max_steps=4000, pretrain_steps=0, val_every=1000, eval_samples=512,
                        kid_subset_size=100, sample_steps=20),
        "full": Preset(seeds=(0, 1, 2, 3, 4), max_steps=12000, pretrain_steps=0, val_every=2000, eval_samples=1000,
                       kid_subset_size=500, sample_steps=50),
    },
}  # fmt: skip


# -- runs ----------------------------------------------------------------------------------------------
def _budget(preset: Preset, seed: int, steps: int) -> list[str]:
    return [
        "--seed_everything", str(seed), "--data.seed", str(seed), "--model.seed", str(seed),
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(min(preset.val_every, steps)),
        "--model.max_eval_samples", str(preset.eval_samples), "--model.kid_subset_size", str(preset.kid_subset_size),
        "--model.sample_steps", str(preset.sample_steps),
    ]  # fmt: skip


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
            run = Run(f"{row.name}/seed{seed}", configs / row.config, _budget(preset, seed, steps) + extra,
                      labels={"row": row.name, "seed": seed})  # fmt: skip
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
                "--model.normalizer", norm, "--model.conditioner", cond, "--model.init_from", "null", *extra,
            ]  # fmt: skip
            runs.append(Run(f"{norm}-{cond}/seed{seed}", configs / "filmcond.yaml", args,
                            labels={"row": f"{norm} + {cond}", "normalizer": norm, "conditioner": cond, "seed": seed}))  # fmt: skip
    return runs


def recipe_runs(preset: Preset, configs: Path, seeds: tuple[int, ...], overrides: list[tuple[str, str]]) -> list[Run]:
    extra = override_args(overrides)
    return [
        Run(
            f"{row.name}/seed{seed}",
            configs / "filmcond.yaml",
            [*_budget(preset, seed, preset.max_steps), *row.args, "--model.init_from", "null", *extra],
            labels={"row": row.name, "change": row.change, "seed": seed},
        )  # fmt: skip
        for row in RECIPE_ROWS
        for seed in seeds
    ]


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
        context, action, target = model.unpack_batch(one)
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


# -- reports (the tables themselves: world_report) -----------------------------------------------------
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
    add_common_options(parser, PRESETS[table], f"benchmarks/results/world/{table}")
    parser.add_argument("--configs", type=Path, default=CONFIGS, help="folder of the world configs")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the preset's seeds")
    parser.add_argument("--max-steps", type=int, help="override the preset's steps per run (and pretraining's)")
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                        metavar="KEY=VALUE", help="a config override for every run, e.g. model.dim=64 (repeatable)")  # fmt: skip
    parser.add_argument("--runs", type=Path, default=Path("runs/reproduce") / table, help="where the runs live")
    parser.add_argument("--repeats", type=int, help="timing repeats (default: the preset's)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (each a subprocess; set OMP_NUM_THREADS so they share the cores)")  # fmt: skip
    parser.add_argument("--rows", nargs="+", metavar="ROW", help="run only these rows (names as in the table)")
    parser.add_argument("--finished-only", action="store_true",
                        help="score and render the runs that have finished in --runs, train none (say how many are missing)")  # fmt: skip
    parser.add_argument(
        "--runs-note", help="where and how the runs were made, when not by this command here (a header line)"
    )
    parser.add_argument("--render-only", action="store_true",
                        help="re-render --out's results.md/json from the runs stored in its results.json; trains nothing")  # fmt: skip
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
    return args, preset, seeds, results_folder(args.out, args.runs, args.preset)


def _select(runs: list[Run], rows: list[str] | None, finished_only: bool, root: Path) -> list[Run]:
    """``--rows`` (a chosen run's ``after`` runs come along) and ``--finished-only`` (a table cut
    short, say by a budget that ran out: what finished, and no more)."""
    if rows:
        known = list(dict.fromkeys(r.labels["row"] for r in runs))
        unknown = [r for r in rows if r not in known]
        if unknown:
            raise ValueError(f"--rows: unknown row(s) {unknown}; this table's rows: {', '.join(known)}")
        keep = {r.key for r in runs if r.labels["row"] in rows}
        keep |= {k for r in runs if r.key in keep for k in r.after}
        runs = [r for r in runs if r.key in keep]
    if finished_only:
        done = [r for r in runs if (root / r.key / "result.json").is_file()]
        missing = [r.key for r in runs if r not in done]
        print(f"--finished-only: {len(done)} of {len(runs)} runs finished; not run: {', '.join(missing) or 'none'}")
        runs = done
    return runs


def _execute(runs: list[Run], root: Path, jobs: int = 1) -> dict[str, dict]:
    for run in runs:  # the pretrained checkpoint's path depends on where the runs live
        run.fit_args = [a.replace("{runs}", str(root)) for a in run.fit_args]
    return execute_all(runs, root, jobs=jobs)


def _collect(results: dict[str, dict], metric: str) -> dict[str, list[float]]:
    by_row: dict[str, list[float]] = {}
    for result in results.values():
        if metric in result["test"]:
            by_row.setdefault(result["row"], []).append(result["test"][metric])
    return by_row


def analyse_kid(report: dict[str, Any]) -> dict[str, Any]:
    """The world-kid report's derived parts: KID and PSNR per row, the orderings, the statistics."""
    kid, psnr = _collect(report["runs"], "test/kid_mean"), _collect(report["runs"], "test/psnr")
    return analyse({**report, "kid": kid, "psnr": psnr, "verdict": kid_verdict(kid)}, KID_REFERENCE)


def analyse_recipe(report: dict[str, Any]) -> dict[str, Any]:
    return analyse(report, RECIPE_REFERENCE)


def analyse_conditioning(report: dict[str, Any]) -> dict[str, Any]:
    kid, psnr = _collect(report["runs"], "test/kid_mean"), _collect(report["runs"], "test/psnr")
    return analyse({**report, "kid": kid, "psnr": psnr, "dit_fid": DIT_FID, "nanowm": NANOWM}, NONE_ROW)


def _render_only(table: str, argv: list[str]) -> bool:
    """``--render-only``: re-render the table from its results.json, train nothing (True when done)."""
    args = _parser(table).parse_args(argv)
    if not args.render_only:
        return False
    analyse_, render = {
        "world-kid": (analyse_kid, render_kid),
        "world-recipe": (analyse_recipe, render_recipe),
        "world-conditioning": (analyse_conditioning, render_conditioning),
    }[table]
    print(rerender(results_folder(args.out, args.runs, args.preset), analyse_, render))
    return True


def _run_table(
    table: str, argv: list[str], plan: Callable[..., list[Run]]
) -> tuple[dict[str, Any], Path, Any] | None:
    """The steps every world table shares: parse, select and run its runs, score the copy
    baseline. Returns (the report's common part, the results folder, the parsed arguments), or
    None after ``--plan``."""
    start = time.perf_counter()
    args, preset, seeds, out = _setup(table, argv)
    root = args.runs / args.preset
    runs = _select(plan(preset, args.configs, seeds, args.overrides), args.rows, args.finished_only, root)
    print_plan(f"{table}, preset {args.preset}", runs, root)
    if args.plan:
        return None
    make_folder(out, "--out")
    make_folder(root, "--runs")
    results = _execute(runs, root, args.jobs)
    print("scoring the copy-last-frame baseline on the same test windows ...")
    baseline = copy_baseline(args.configs / "filmcond.yaml", args.overrides, preset)
    basics = report_basics(table, argv, args, preset, seeds, machine_info())
    return {**basics, "baseline": baseline, "runs": results, "wall_s": time.perf_counter() - start}, out, args


def _write(out: Path, report: dict[str, Any], markdown: str, png: bytes | None) -> None:
    write_atomic(out / "results.json", json.dumps(report, indent=1, default=str) + "\n")
    write_atomic(out / "results.md", markdown)
    if png is not None:
        write_atomic(out / "kid.png", png)
    print(markdown)
    print(
        f"wrote {out / 'results.md'}, {out / 'results.json'}" + (f", {out / 'kid.png'}" if png else ""), file=sys.stderr
    )


def main_kid(argv: list[str]) -> None:
    """``lightning-film reproduce world-kid ...``"""
    if _render_only("world-kid", argv):
        return
    ran = _run_table("world-kid", argv, kid_runs)
    if ran is None:  # --plan
        return
    common, out, _ = ran
    report = analyse_kid({**common, "seed_kid": {r.name: r.seed_kid for r in KID_ROWS}})
    order = [r.name for r in (*KID_ROWS, PRETRAIN, PRETRAIN_HALF)]
    png = render_png(report["kid"], order, "World model: the seed's rows", report["seed_kid"])
    _write(out, report, render_kid(report), png)


def main_conditioning(argv: list[str]) -> None:
    """``lightning-film reproduce world-conditioning ...``"""
    if _render_only("world-conditioning", argv):
        return
    ran = _run_table("world-conditioning", argv, conditioning_runs)
    if ran is None:  # --plan
        return
    common, out, args = ran
    print("measuring parameters, FLOPs and step time of every row (interleaved) ...")
    start, preset = time.perf_counter(), Preset(**common["preset"])
    base_args = _model_args(args.configs / "filmcond.yaml", args.overrides)
    batch = int(config_tree(args.configs / "filmcond.yaml", args.overrides)["data"]["init_args"].get("batch_size", 32))
    costs = model_costs(base_args, conditioning_rows(), preset.repeats, preset.steps_per_repeat, batch)
    report = analyse_conditioning({**common, "costs": costs, "wall_s": common["wall_s"] + time.perf_counter() - start})
    kid = report["kid"]
    order = sorted(costs, key=lambda r: mean_std(kid[r])[0] if kid.get(r) else float("inf"))
    png = render_png(kid, order, "World model: conditioner / normalizer at equal budget", None)
    _write(out, report, render_conditioning(report), png)


def main_recipe(argv: list[str]) -> None:
    """``lightning-film reproduce world-recipe ...``"""
    if _render_only("world-recipe", argv):
        return
    ran = _run_table("world-recipe", argv, recipe_runs)
    if ran is None:  # --plan
        return
    common, out, _ = ran
    report = analyse_recipe({**common, "rows": [asdict(r) for r in RECIPE_ROWS]})
    _write(out, report, render_recipe(report), None)
