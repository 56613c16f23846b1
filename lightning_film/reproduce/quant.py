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

import copy
import functools
import io
import json
import logging
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_film.errors import CommandParser, UsageError
from lightning_film.io import write_atomic
from lightning_film.measure import interleaved, machine_info, paired_ratios, repeat_times, spread
from lightning_film.reproduce.report import (
    add_common_options,
    config_tree,
    header,
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
from lightning_film.reproduce.stats import compare, fmt_ci, fmt_p, holm, paired, paired_section

__all__ = [
    "COREML", "MODELS", "PRESETS", "REFERENCE", "SPECS", "SPEED_NOTE", "VARIANTS", "Budget", "MetricSpec", "Preset",
    "add_scores", "analyse", "assess_checkpoint", "build_runs", "change", "claim_verdict", "coreml_packages", "coreml_table",
    "corpus_table", "forward_speed", "main", "paired_comparisons", "quantized_copy", "quiet_trainers", "score", "speed_table", "summarize",
    "variant_table",
]  # fmt: skip

MODELS = ("byte", "world")
CONDITIONERS = ("film", "film_tanh")
#: torchao post-training variants, by role (:data:`lightning_film.quantization.PRESETS`), float first.
VARIANTS = ("float", "int8", "int4_film", "int4")
#: int8 weights and dynamically quantized int8 activations on every Linear: not a role format, a
#: reference for CPU speed (the only variant here with int8 matmuls).
REFERENCE = "int8_dyn"
COREML = ("fp16", "int8", "int4_film", "int4", "palettize4")
QAT_WEIGHTS = "int4"
GROUP = 32
SCALE_BOUND = 0.5  # film_tanh's default bound: gamma in (0.5, 1.5)
#: the ``film`` run's extra checkpoint, where the QAT arm starts (Lightning fills in the step)
QAT_START = "qat_start_{step}"


@dataclass(frozen=True)
class MetricSpec:
    """A test metric: its logged key, how it reads, and how a change is shown (% or difference)."""

    key: str
    name: str
    lower_is_better: bool
    relative: bool
    digits: int


@dataclass(frozen=True)
class ModelSpec:
    """A model of the table: its config and class, the option that picks its FiLM conditioner, the
    options a run's seed sets, its test metrics."""

    config: Path
    model_class: str
    conditioner_option: str
    seed_options: tuple[str, ...]
    metrics: tuple[MetricSpec, ...]
    title: str


SPECS: dict[str, ModelSpec] = {
    "byte": ModelSpec(Path("configs/byte/nibble_acc.yaml"), "ByteLM", "model.embed_conditioner", ("data.seed",),
                      (MetricSpec("test/bpb", "test bpb", True, True, 4),),
                      "Byte model (ByteLM nibble_acc: FiLM modulates the byte embedding)"),
    "world": ModelSpec(Path("configs/world/filmcond.yaml"), "WorldModel", "model.conditioner",
                       ("data.seed", "model.seed"),
                       (MetricSpec("test/loss", "test loss", True, True, 4),
                        MetricSpec("test/psnr", "PSNR (dB)", False, False, 2),
                        MetricSpec("test/kid_mean", "KID", True, False, 4)),
                       "World model (WorldModel filmcond: FiLM on time + action in every block)"),
}  # fmt: skip


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
    "quick": Preset(seeds=(0,), byte=Budget(600, 200, 150), world=Budget(1000, 200, 500, _world_test(100, 50, 20)),
                    repeats=5, steps_per_repeat=5),
    "full": Preset(seeds=(0, 1, 2), byte=Budget(3000, 600, 300),
                   world=Budget(6000, 1000, 1000, _world_test(500, 250, 50)), repeats=7, steps_per_repeat=5),
}  # fmt: skip


# -- the runs -----------------------------------------------------------------------------------------
def _qat_start(budget: Budget) -> str:
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
                "--seed_everything", str(seed), *(a for o in spec.seed_options for a in (f"--{o}", str(seed))),
                "--trainer.max_steps", str(budget.steps),
                # a validation (and so last.ckpt) at the last step, whatever it is, also for the QAT arm
                "--trainer.val_check_interval", str(math.gcd(budget.steps, budget.val_every)),
                *(a for k, v in budget.test_settings for a in (f"--model.{k}", str(v))),
            ]  # fmt: skip
            extra = override_args(overrides.get(model, []))
            labels = {"model": model, "seed": seed}
            for cond in CONDITIONERS:
                args = [*base, f"--{spec.conditioner_option}", cond, *extra]
                run = Run(f"{model}/{cond}/seed{seed}", configs[model], args, labels={**labels, "conditioner": cond})
                if cond == "film" and budget.qat_steps:
                    run.fit_args = _callback(
                        "lightning.pytorch.callbacks.ModelCheckpoint", filename=QAT_START, auto_insert_metric_name="false",
                        every_n_train_steps=budget.steps - budget.qat_steps, save_top_k=-1,
                    )  # fmt: skip
                runs.append(run)
            if budget.qat_steps:
                film = f"{model}/film/seed{seed}"
                start = root / film / "checkpoints" / _qat_start(budget)
                runs.append(Run(
                    f"{model}/film_qat_{QAT_WEIGHTS}/seed{seed}", configs[model],
                    [*base, f"--{spec.conditioner_option}", "film", *extra],
                    fit_args=["--ckpt_path", str(start), *_callback(
                        "lightning_film.callbacks.QuantizationCallback", mode="qat", weights=QAT_WEIGHTS,
                        group_size=GROUP, evaluate="false")],
                    labels={**labels, "conditioner": "film", "qat": QAT_WEIGHTS, "qat_from": str(start)},
                    after=[film],
                ))  # fmt: skip
    return runs


def _check_qat_starts(runs: list[Run], root: Path) -> None:
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


# -- one checkpoint, in this process ---------------------------------------------------------------------
def load_for_scoring(ckpt: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(model, its data module, facts) of a ``lightning-film fit`` checkpoint, read weights only;
    the data module is rebuilt from the checkpoint's own data settings."""
    from lightning_film.checkpoints import load_model, loaded_class, read_checkpoint, trusted_hyper_parameters

    model = load_model(ckpt)
    checkpoint = read_checkpoint(ckpt)
    hp = checkpoint.get("datamodule_hyper_parameters") or {}
    class_path = str(hp.get("_class_path") or "") if isinstance(hp, dict) else ""
    # looked up among imported modules, never imported: a checkpoint does not choose code
    data_class = loaded_class(class_path)
    if data_class is None:
        raise UsageError(
            f"checkpoint {str(ckpt)!r} does not name a data module of lightning_film ({class_path or 'none saved'}); "
            "score checkpoints written by lightning-film fit"
        )
    data_args = trusted_hyper_parameters(checkpoint, ckpt, section="datamodule_hyper_parameters")
    facts = {
        "path": str(ckpt), "global_step": checkpoint.get("global_step"), "model_class": type(model).__name__,
        "model": {k: v for k, v in model.hparams.items() if not k.startswith("_")}, "data": data_args,
    }  # fmt: skip
    return model, data_class(**data_args), facts


def quantized_copy(model: nn.Module, label: str, group_size: int = GROUP) -> nn.Module:
    """An eval-mode copy of ``model``: as it is (``float``), torchao-quantized per role (a
    :data:`VARIANTS` preset) or :data:`REFERENCE`; ``model`` is not changed."""
    from lightning_film.quantization import Scheme, quantize
    from lightning_film.quantization.torchao import require_torchao

    q = copy.deepcopy(model).eval()
    if label == REFERENCE:
        ao = require_torchao("int8 dynamic quantization")
        ao.quantize_(q, ao.Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
    elif label != "float":
        quantize(q, Scheme.parse(label, group_size=group_size))
    return q


def score(model: nn.Module, datamodule: Any, root: Path) -> dict[str, float]:
    """``model``'s test metrics on ``datamodule``'s test split (what ``lightning-film test`` logs), from a
    silent one-device Trainer; what the model writes itself (world sample sheets) goes under ``root``."""
    import lightning.pytorch as pl

    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)  # fmt: skip
    return {
        k: float(v) for result in trainer.test(model, datamodule=datamodule, verbose=False) for k, v in result.items()
    }


def _forward(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    with torch.inference_mode():
        module(*inputs)


def forward_speed(
    models: dict[str, nn.Module], batch_sizes: tuple[int, ...], repeats: int, steps_per_repeat: int
) -> dict[str, Any]:
    """Inference-step forward time of each model (``float`` among them) and its ratio to ``float``'s
    per repeat (> 1: slower), on the export's fixed-shape inputs (byte: B x seq_len ids; world: one
    denoiser call on B frames), all models interleaved."""
    from lightning_film.export import inference_step

    out: dict[str, Any] = {}
    for batch in batch_sizes:
        steps = {label: inference_step(m, batch_size=batch) for label, m in models.items()}
        inputs = steps["float"].example()
        calls = {label: functools.partial(_forward, s.module, inputs) for label, s in steps.items()}
        raw = interleaved(calls, repeats, steps_per_repeat, warmup=2)
        out[f"batch {batch}"] = {
            "inputs": {spec.name: list(spec.shape) for spec in steps["float"].inputs},
            "median_s": {k: statistics.median(repeat_times(v)) for k, v in raw.items()},
            "ratio_to_float": {k: spread(paired_ratios(v, raw["float"])) for k, v in raw.items()},
            "raw_step_s": raw,
        }
    return out


def coreml_packages(model: nn.Module, folder: Path, compressions: tuple[str, ...], name: str,
                    group_size: int = GROUP) -> dict[str, Any]:  # fmt: skip
    """Export ``model``'s float weights to ``folder/<name>-<compression>.mlpackage`` per compression:
    size, weight storage, op counts and Neural Engine warnings of each package."""
    from lightning_film.export import export_coreml

    out = {}
    for weights in compressions:
        start = time.perf_counter()
        report = export_coreml(model, folder / f"{name}-{weights}.mlpackage", weights=weights, group_size=group_size)
        keep = ("path", "size_bytes", "op_count", "op_histogram", "weight_storage", "warnings", "inputs", "outputs")
        out[weights] = {"seconds": time.perf_counter() - start, **{k: report[k] for k in keep}}
    return out


def assess_checkpoint(
    ckpt: Path,
    work: Path,
    variants: tuple[str, ...] = VARIANTS,
    repeats: int = 0,
    steps_per_repeat: int = 5,
    coreml: tuple[str, ...] = (),
    group_size: int = GROUP,
    known: dict[str, dict[str, float]] | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Quantize ``ckpt``'s model per variant and score every copy on the test split (``known``: scores
    already measured, by variant, e.g. the run's own test of its float model); with ``repeats`` time
    them against ``float`` (batch 1 and the data's batch size); with ``coreml`` export the float
    weights per compression into ``work/coreml``. Sample sheets go to ``work/scored``."""
    from lightning_film.quantization import Scheme, plan, size_bytes

    if "float" not in variants:
        raise ValueError(f"variants must include 'float' (the reference), got {variants}")
    model, dm, facts = load_for_scoring(ckpt)
    copies = {label: quantized_copy(model, label, group_size) for label in variants}
    entries = {
        label: plan(model, Scheme.parse(label, group_size=group_size)) for label in variants if label in VARIANTS[1:]
    }
    out: dict[str, Any] = {
        "checkpoint": facts, "group_size": group_size,
        "schemes": {label: Scheme.parse(label, group_size=group_size).as_dict() for label in entries},
        "quantized_modules": {label: [e.as_dict() for e in es] for label, es in entries.items()},
        "sizes": {label: size_bytes(copies[label], entries.get(label)) for label in variants if label != REFERENCE},
    }  # fmt: skip
    if repeats:
        batches = tuple(dict.fromkeys((1, int(facts["data"].get("batch_size") or 1))))
        say(f"  timing {', '.join(variants)} ({repeats} repeats, batch {' and '.join(map(str, batches))})")
        out["speed"] = forward_speed(copies, batches, repeats, steps_per_repeat)
    out["scores"], out["scored_here"] = dict(known or {}), []
    for label, q in copies.items():
        if label not in out["scores"]:
            say(f"  scoring {label} on the test split")
            out["scores"][label] = score(q, dm, work / "scored" / label)
            out["scored_here"].append(label)
    if coreml:
        say(f"  Core ML: {', '.join(coreml)}")
        out["coreml"] = coreml_packages(model, work / "coreml", coreml, type(model).__name__.lower(), group_size)
    return out


def _assessed(
    ckpt: Path, work: Path, job: dict[str, Any], known: dict[str, dict[str, float]], say: Callable[[str], None]
) -> dict[str, Any]:
    """:func:`assess_checkpoint`, or its saved result while the checkpoint and ``job`` are unchanged."""
    if not ckpt.is_file():
        raise UsageError(f"{str(ckpt)!r} is missing: its run finished but has no last checkpoint to quantize")
    stat = ckpt.stat()
    key = {"checkpoint": str(ckpt.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, **job}
    path = work / "assessment.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            say(f"  assessed before, read from {path}")
            return saved
    job = {**job, "variants": tuple(job["variants"]), "coreml": tuple(job["coreml"])}
    result = {"key": key, **assess_checkpoint(ckpt, work, known=known, say=say, **job)}
    write_atomic(path, json.dumps(result, indent=1, default=str) + "\n")
    return json.loads(path.read_text())  # as JSON reads it back: the same whether assessed now or before


# -- summaries -----------------------------------------------------------------------------------------
def change(metric: MetricSpec, value: float, reference: float) -> float:
    """``value`` against ``reference``: percent for relative metrics, else the difference."""
    return 100 * (value / reference - 1) if metric.relative else value - reference


def add_scores(variants: dict[str, Any], scores: dict[str, dict[str, float]], metrics: tuple[MetricSpec, ...]) -> None:
    """Append one checkpoint's ``scores`` (variant -> score key -> value) to ``variants``: variant -> key
    -> {"values": [...], "changes": [...]}, the change against this checkpoint's float, for ``metrics``."""
    by_key = {m.key: m for m in metrics}
    for label, s in scores.items():
        cells = variants.setdefault(label, {})
        for k, value in s.items():
            cell = cells.setdefault(k, {"values": [], "changes": []})
            cell["values"].append(value)
            if k in by_key:
                cell["changes"].append(change(by_key[k], value, scores["float"][k]))


def summarize(assessments: dict[str, dict], runs: dict[str, dict], models: tuple[str, ...]) -> dict[str, Any]:
    """``table``: model -> conditioner -> variant -> score key -> {"values": over seeds, "changes": vs that
    seed's float (for the model's metrics)}; ``qat``: model -> arm (``ptq``, ``qat``) -> ``float`` /
    ``int4`` -> metric -> values over seeds (empty for a model without a QAT arm)."""
    table: dict[str, Any] = {m: {} for m in models}
    qat: dict[str, Any] = {m: {} for m in models}
    for key, a in assessments.items():
        run, scores = runs[key], a["scores"]
        model, metrics = run["model"], SPECS[run["model"]].metrics
        if "qat" not in run:
            add_scores(table[model].setdefault(run["conditioner"], {}), scores, metrics)
            continue
        arms = {"ptq": assessments[f"{model}/film/seed{run['seed']}"]["scores"], "qat": scores}
        for arm, s in arms.items():
            for part in ("float", QAT_WEIGHTS):
                for m in metrics:
                    qat[model].setdefault(arm, {}).setdefault(part, {}).setdefault(m.key, []).append(s[part][m.key])
    return {"table": table, "qat": qat}


def _fmt(values: list[float], digits: int, signed: bool = False, unit: str = "") -> str:
    return fmt_ci(values, digits, signed, unit)  # mean ± 95% CI half-width; one seed: the value alone


def _unit(metric: MetricSpec) -> str:
    return "%" if metric.relative else ""


def _change_digits(metric: MetricSpec) -> int:
    return 3 if metric.relative else metric.digits


def claim_verdict(summary: dict[str, Any], models: tuple[str, ...], seeds: int) -> list[str]:
    """film vs film_tanh at ``int4_film`` and ``int4``: what quantization costs each (> 0: worse than its
    own float), which loses less, and whether a paired t-test over the seeds (Holm-adjusted over these
    comparisons) establishes the gap: the verdict, then a table."""
    found: list[tuple[str, MetricSpec, str, dict, dict]] = []
    for model in models:
        table = summary["table"][model]
        if not all(c in table for c in CONDITIONERS):
            continue
        for metric in SPECS[model].metrics:
            sign = 1 if metric.lower_is_better else -1
            for scheme in ("int4_film", "int4"):
                cost = {c: [sign * x for x in table[c][scheme][metric.key]["changes"]] for c in CONDITIONERS}
                test = paired(dict(enumerate(cost["film"])), dict(enumerate(cost["film_tanh"])))  # film - film_tanh
                found.append((model, metric, scheme, cost, test))
    if not found:
        return []
    holm([t for *_, t in found])
    rows: list[str] = []
    hints, firm = {"film": 0, "film_tanh": 0, "neither": 0}, {"film": 0, "film_tanh": 0, "neither": 0}
    for model, metric, scheme, cost, test in found:
        digits, unit, table = _change_digits(metric), _unit(metric), summary["table"][model]
        less = "film_tanh" if test["diff"] > 0 else "film" if test["diff"] < 0 else "neither"
        hints[less] += 1
        firm[less] += test["verdict"] == "established"
        judged = "one seed: no test" if test["p"] is None else f"{test['verdict']} (Holm p {fmt_p(test['p_holm'])})"
        cells = []
        for c in CONDITIONERS:
            before, after = (statistics.fmean(table[c][v][metric.key]["values"]) for v in ("float", scheme))
            cells += [f"{before:.{metric.digits}f} → {after:.{metric.digits}f}", _fmt(cost[c], digits, True, unit)]
        rows.append(f"| {model} | {metric.name} | {scheme} | " + " | ".join(cells) + f" | {less} | {judged} |")
    total, one = len(rows), seeds < 2 or all(t["p"] is None for *_, t in found)
    if one:
        head = (
            "**Verdict on the seed's claim (a bounded gamma survives low bits): not established by this preset.** "
            f"With one seed, film_tanh lost less in {hints['film_tanh']} of {total} comparisons and film in "
            f"{hints['film']}: single measurements, their direction a hint at most (the `full` preset runs 3 seeds)."
        )
    elif firm["film_tanh"] and not firm["film"]:
        head = (f"**Verdict on the seed's claim: supported**: film_tanh loses less, established by the paired test, "
                f"in {firm['film_tanh']} of {total} comparisons, film in none.")  # fmt: skip
    elif firm["film"] and not firm["film_tanh"]:
        head = (f"**Verdict on the seed's claim: contradicted**: film loses less, established by the paired test, "
                f"in {firm['film']} of {total} comparisons, film_tanh in none.")  # fmt: skip
    elif firm["film"] or firm["film_tanh"]:
        head = (f"**Verdict on the seed's claim: mixed**: established by the paired test, film_tanh loses less in "
                f"{firm['film_tanh']} of {total} comparisons, film in {firm['film']}.")  # fmt: skip
    else:
        head = (f"**Verdict on the seed's claim: not shown**: the paired test establishes no gap (on average "
                f"film_tanh lost less in {hints['film_tanh']} of {total} comparisons, film in {hints['film']}).")  # fmt: skip
    return [
        head,
        "",
        "| model | metric | scheme | film: float → quantized | film: cost | film_tanh: float → quantized | "
        "film_tanh: cost | loses less | paired test of the costs |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
        *rows,
        "",
        "**cost**: the quantized model against its own float (% for bpb and loss, a difference for PSNR and KID), "
        "signed so that > 0 is worse, mean ± 95% CI half-width over seeds; `int4_film` puts only the conditioner's "
        "projections (FiLM's gamma and beta) at int4, so it tests the claim most directly; `int4` quantizes "
        "everything. The paired test compares the two costs seed by seed, Holm-adjusted over this table's rows.",
    ]


def paired_comparisons(summary: dict[str, Any], models: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """Per model, metric and conditioner: every quantized variant against the same runs' float; and the
    QAT arm's int4 against PTQ's int4. Paired by seed, Holm-adjusted over the whole table."""
    found = []
    for model in models:
        for m in SPECS[model].metrics:
            label = f"{model} {m.name}"
            for cond, variants in summary["table"][model].items():
                rows = {f"{cond} {v}": dict(zip(seeds, c[m.key]["values"])) for v, c in variants.items()}
                found += compare(rows, reference=f"{cond} float", metric=label)
            arms = summary["qat"][model]
            if arms:
                rows = {
                    f"{arm} {QAT_WEIGHTS}": dict(zip(seeds, arms[arm][QAT_WEIGHTS][m.key])) for arm in ("qat", "ptq")
                }
                found += compare(rows, reference=f"ptq {QAT_WEIGHTS}", metric=label)
    return holm(found)


def analyse(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with what its summary implies: the claim's verdict and the paired comparisons."""
    models, seeds = report["models"], report["seeds"]
    return {**report, "verdict": claim_verdict(report["summary"], tuple(models), len(seeds)),
            "stats": {"paired": paired_comparisons(report["summary"], models, seeds)}}  # fmt: skip


# -- the report -----------------------------------------------------------------------------------------
def _mb(n: float) -> str:
    return f"{n / 1e6:.3f}"


def _roles(schemes: dict[str, Any], label: str) -> str:
    if label == "float":
        return "fp32"
    if label == REFERENCE:
        return "every Linear: int8 weights + dynamic int8 activations"
    roles = schemes[label]["roles"]
    return ", ".join(f"{k} {v}" for k, v in roles.items())


def variant_table(
    metrics: tuple[MetricSpec, ...], table: dict[str, Any], sizes: dict[str, Any], schemes: dict[str, Any]
) -> list[str]:
    """Rows (conditioner, variant) of ``table`` (conditioner -> :func:`add_scores`' variants): each
    metric with its change against the same checkpoint's float, and the sizes of ``sizes``."""
    lines = [
        "| conditioner | variant | roles | "
        + " | ".join(f"{m.name} | vs float" for m in metrics)
        + " | stored MB | packed MB |",
        "|---|---|---|" + "---:|---:|" * len(metrics) + "---:|---:|",
    ]
    for cond, variants in table.items():
        for label, cells in variants.items():
            row = [cond, label, _roles(schemes, label)]
            for m in metrics:
                c = cells[m.key]
                row += [
                    _fmt(c["values"], m.digits),
                    "–" if label == "float" else _fmt(c["changes"], _change_digits(m), True, _unit(m)),
                ]
            size = sizes.get(label)
            row += [_mb(size["stored"]), _mb(size["packed"])] if size else ["–", "–"]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def corpus_table(table: dict[str, Any]) -> list[str]:
    """Byte model: test bpb per corpus, per (conditioner, variant), mean over seeds."""
    keys = sorted({k for variants in table.values() for cells in variants.values() for k in cells if k.count("/") == 2})
    if len(keys) < 2:  # one corpus: the main table says it all
        return []
    lines = ["| conditioner | variant | " + " | ".join(k.split("/", 2)[2] for k in keys) + " |",
             "|---|---|" + "---:|" * len(keys)]  # fmt: skip
    for cond, variants in table.items():
        for label, cells in variants.items():
            lines.append(f"| {cond} | {label} | " + " | ".join(_fmt(cells[k]["values"], 4) for k in keys) + " |")
    return ["Test bpb per corpus:", "", *lines, ""]


def speed_table(speed: dict[str, Any]) -> list[str]:
    """Forward time ratio to float per variant and batch: median (IQR; median ms)."""
    shapes = list(speed)
    labels = list(next(iter(speed.values()))["ratio_to_float"])
    lines = [
        "| variant | " + " | ".join(f"{s}: ratio (IQR; ms)" for s in shapes) + " |",
        "|---|" + "---:|" * len(shapes),
    ]
    for label in labels:
        cells = []
        for s in shapes:
            r, ms = speed[s]["ratio_to_float"][label], 1e3 * speed[s]["median_s"][label]
            cells.append(
                f"1 ({ms:.2f} ms)"
                if label == "float"
                else f"{r['median']:.2f} ({r['q1']:.2f}–{r['q3']:.2f}; {ms:.2f} ms)"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def coreml_table(packages: dict[str, Any], first: str = "compression") -> list[str]:
    """Package size, weight storage and op count per compression."""
    lines = [
        f"| {first} | package MB | weights MB | weight storage | ops | warnings |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for name, c in packages.items():
        storage = ", ".join(f"{k} {v}" for k, v in c["weight_storage"].items())
        lines.append(f"| {name} | {_mb(c['size_bytes']['total'])} | {_mb(c['size_bytes']['weights'])} | {storage} | "
                     f"{c['op_count']} | {len(c['warnings'])} |")  # fmt: skip
    return lines


SPEED_NOTE = (
    "Weight-only torchao variants (`IntxWeightOnlyConfig`, torchao 0.18) dequantize the whole weight at every "
    "call and then run the float matmul (no fused low-bit CPU kernel on x86), so on this CPU they save memory, "
    "not time; `int8_dyn` quantizes activations too and runs int8 matmuls. The speed the int4/int8 formats are "
    "for is the Neural Engine's, which cannot be measured on Linux."
)


def qat_section(report: dict[str, Any]) -> list[str]:
    """PTQ vs QAT per model and metric: each arm's float weights, its int4 model, and the changes."""
    models = [m for m in report["models"] if report["summary"]["qat"][m]]
    if not models:
        return []
    lines = [
        f"## PTQ vs QAT at {QAT_WEIGHTS}",
        "",
        "`ptq`: the `film` run, float to the end, then int4 post-training quantization. `qat`: the same run's "
        "last steps again from its checkpoint, with int4 fake quantization, then converted (torchao's convert "
        "step: the same int4 per-group quantization of the QAT-trained weights). Same data, steps and "
        "learning rates; the float column scores each arm's weights unquantized.",
        "",
        "| model | arm | fake-quantized steps | metric | float weights | int4 | int4 vs its float | int4 vs ptq's float |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for model in models:
        arms = report["summary"]["qat"][model]
        for arm, parts in arms.items():
            steps = report["preset"][model]["qat_steps"] if arm != "ptq" else 0
            for m in SPECS[model].metrics:
                own, quantized, ptq = parts["float"][m.key], parts[QAT_WEIGHTS][m.key], arms["ptq"]["float"][m.key]
                digits, unit = _change_digits(m), _unit(m)
                vs_own = _fmt([change(m, a, b) for a, b in zip(quantized, own)], digits, True, unit)
                vs_ptq = _fmt([change(m, a, b) for a, b in zip(quantized, ptq)], digits, True, unit)
                lines.append(f"| {model} | {arm} | {steps} | {m.name} | {_fmt(own, m.digits)} | "
                             f"{_fmt(quantized, m.digits)} | {vs_own} | {vs_ptq} |")  # fmt: skip
    return [*lines, ""]


def render_markdown(report: dict[str, Any]) -> str:
    p, models = report["preset"], report["models"]
    budgets = "; ".join(
        f"{m}: {p[m]['steps']} steps"
        + (f", QAT arm = the last {p[m]['qat_steps']} again with int4 fake quantization" if p[m]["qat_steps"] else "")
        for m in models
    )
    lines = [
        f"# Quantization of both models: metric damage, CPU speed, Core ML size (preset `{report['preset_name']}`)",
        "",
        *header(report),
        f"- Budget per run: {budgets}; seeds {report['seeds']}; configs "
        + ", ".join(f"`{report['configs'][m]}`" for m in models)
        + f"; overrides {report['overrides'] or 'none'}",
        f"- torchao {report['machine'].get('torchao')}, coremltools {report['machine'].get('coremltools')}; int4 "
        f"groups of {report['group_size']} (a row they do not divide: the largest common divisor). Every variant "
        "is scored on the whole test split (world: KID and PSNR over the first `max_eval_samples` test windows; "
        "the test loss covers every test window and is the least noisy world metric). Test settings: "
        + "; ".join(
            f"{m}: " + ", ".join(f"{k} {v}" for k, v in p[m]["test_settings"]) for m in models if p[m]["test_settings"]
        )  # fmt: skip
        + " (the preset's; overrides replace them).",
        "- Float scores: each run's own `lightning-film test`; the quantized copies are scored here the same way "
        "(a silent Trainer's `test` on the checkpoint's own data settings; for the float checkpoint this gives the "
        "same numbers, tested).",
        "",
    ]
    for model in models:
        table = report["summary"]["table"][model]
        rows = variant_table(SPECS[model].metrics, table, report["sizes"][model], report["schemes"])
        lines += [f"## {SPECS[model].title}", "", *rows, ""]
        if model == "byte":
            lines += corpus_table(table)
    lines += [
        "**vs float**: against the same run's float model (% for bpb and loss; a difference for PSNR and KID), "
        f"mean ± 95% CI half-width over the {len(report['seeds'])} seed(s) (Student t; one seed: the value alone, "
        "no interval). **stored**: `torch.save(state_dict)` bytes (torchao keeps int4 unpacked in int8 "
        "on CPU); **packed**: what the bit widths imply (bits per weight + one fp16 scale per group or channel), "
        "which is what Core ML reaches below.",
        "",
        f"## film vs film_tanh at int4: does a bounded gamma survive low bits? (film_tanh: gamma = 1 + "
        f"{SCALE_BOUND} tanh(s), in ({1 - SCALE_BOUND}, {1 + SCALE_BOUND}); film: gamma = 1 + s, unbounded)",
        "",
        *report["verdict"],
        "",
    ]
    lines += qat_section(report)
    digits = {f"{model} {m.name}": m.digits for model in models for m in SPECS[model].metrics}
    lines += paired_section(report["stats"]["paired"], digits)
    lines += ["## CPU inference speed (forward time as a ratio to float; > 1 is slower)", ""]
    for model in models:
        speed = report["speed"].get(model)
        if speed:
            shapes = "; ".join(
                f"{s}: " + ", ".join(f"{k} {tuple(v)}" for k, v in t["inputs"].items()) for s, t in speed.items()
            )
            lines += [f"**{model}** ({shapes})", "", *speed_table(speed), ""]
    lines += [
        f"Timing: the variants side by side, {p['repeats']} repeats x {p['steps_per_repeat']} forwards each, "
        "interleaved round-robin after a warm-up; a ratio is against float in the same repeat (median, IQR). "
        "**CPU timings on a shared machine: read the ratios, not the milliseconds.** " + SPEED_NOTE,
        "",
        "## Core ML packages (float `film` weights, fp16 compute, CPU_AND_NE, iOS18; compression per role)",
        "",
    ]
    for model in models:
        if report["coreml"].get(model):
            lines += [f"**{model}**", "", *coreml_table(report["coreml"][model]), ""]
    lines += [
        "Packages are converted, saved and read back; Core ML cannot run them on Linux. Their paths, op "
        "histograms and warnings: `results.json`. Plot: `quant.png`.",
        "",
    ]
    return "\n".join(lines)


def render_png(report: dict[str, Any]) -> bytes:
    """Per model metric: change vs float per variant, film vs film_tanh (mean, std over seeds), with
    the QAT arm's int4 beside int4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(model, m) for model in report["models"] for m in SPECS[model].metrics]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    fig.subplots_adjust(top=0.78, wspace=0.35)
    for ax, (model, metric) in zip(axes[0], panels):
        table = report["summary"]["table"][model]
        for i, cond in enumerate(table):
            stats = [mean_std(table[cond][label][metric.key]["changes"]) for label in VARIANTS]
            ax.errorbar([x + 0.06 * i for x in range(len(VARIANTS))], [s[0] for s in stats],
                        yerr=[s[1] for s in stats], marker="o", capsize=3, label=cond)  # fmt: skip
        ax.set_xticks(range(len(VARIANTS)), VARIANTS)
        for arm, parts in report["summary"]["qat"][model].items():
            if arm != "ptq" and "film" in table:
                base = table["film"]["float"][metric.key]["values"]
                hurt = [change(metric, a, b) for a, b in zip(parts["int4"][metric.key], base)]
                ax.errorbar([VARIANTS.index(QAT_WEIGHTS) + 0.12], [mean_std(hurt)[0]], yerr=[mean_std(hurt)[1]],
                            marker="*", ms=11, ls="none", capsize=3, label=f"{arm}, vs film float")  # fmt: skip
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{model}: {metric.name}")
        ax.set_ylabel(f"change vs float ({'%' if metric.relative else 'difference'}; "
                      f"{'lower' if metric.lower_is_better else 'higher'} is better)")  # fmt: skip
        ax.grid(alpha=0.3)
    # the panels share their series: one legend for all, under the title
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 0.93), fontsize=9)
    fig.suptitle(f"torchao quantization damage, film vs film_tanh (preset {report['preset_name']})")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# -- the command -----------------------------------------------------------------------------------------
def _parser() -> CommandParser:
    p = CommandParser(prog="lightning-film reproduce quant", description=__doc__.split("\n\n")[0])
    add_common_options(p, PRESETS, "benchmarks/results/quant")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    for model in MODELS:
        p.add_argument(f"--{model}-config", type=Path, default=SPECS[model].config, help=f"the {model} model's config")
    p.add_argument("--seeds", nargs="+", type=int, help="override the preset's seeds")
    p.add_argument("--max-steps", type=int, help="override both models' training steps per run")
    p.add_argument("--qat-steps", type=int, help="override both models' QAT steps (0: no QAT arm)")
    p.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[], metavar="KEY=VALUE",
                   help="a config override for every run of both models, e.g. trainer.limit_val_batches=2")  # fmt: skip
    for model in MODELS:
        p.add_argument(f"--{model}-set", action="append", type=parse_override, default=[], metavar="KEY=VALUE",
                       help=f"a config override for the {model} model's runs only, e.g. model.dim=64")  # fmt: skip
    p.add_argument("--coreml", nargs="+", choices=COREML, default=list(COREML), help="Core ML compressions")
    p.add_argument("--runs", type=Path, default=Path("runs/reproduce/quant"), help="where the runs live")
    p.add_argument("--repeats", type=int, help="timing repeats (default: the preset's)")
    p.add_argument("--threads", type=int, help="torch threads for this process's scoring and timing (default torch's)")
    p.add_argument("--render-only", action="store_true",
                   help="re-render --out's results.md/json from the runs stored in its results.json; trains nothing")  # fmt: skip
    return p


def _preset(args: Any) -> Preset:
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


def _check_setup(args: Any) -> None:
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
            init_args(config_tree(config, [*args.overrides, *getattr(args, f"{model}_set")]), "model",
                      SPECS[model].model_class, config)  # fmt: skip
        except ValueError as err:
            raise UsageError(f"reproduce quant: --{model}-config {err}") from None
    require_torchao("reproduce quant")
    if args.coreml:
        require("coremltools", "coreml", "reproduce quant's Core ML packages")


def quiet_trainers() -> None:
    """The in-process Trainers' banners and data-loader hints are noise between progress lines."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|GPU available but not used|treespec).*")


def _job(run: Run, first_seed: int, preset: Preset, coreml: tuple[str, ...]) -> dict[str, Any]:
    """What to measure on a run's checkpoint: every variant of ``film`` and ``film_tanh``, float and int4
    of the QAT arm; timing, the int8_dyn reference and Core ML on the first seed's ``film`` only."""
    labels = run.labels
    reference = labels["conditioner"] == "film" and "qat" not in labels and labels["seed"] == first_seed
    variants = ("float", QAT_WEIGHTS) if "qat" in labels else VARIANTS + ((REFERENCE,) if reference else ())
    return {
        "variants": list(variants), "repeats": preset.repeats if reference else 0,
        "steps_per_repeat": preset.steps_per_repeat, "coreml": list(coreml) if reference else [], "group_size": GROUP,
    }  # fmt: skip


def main(argv: list[str]) -> None:
    """``lightning-film reproduce quant ...``"""
    args = _parser().parse_args(argv)
    if args.render_only:
        print(rerender(results_folder(args.out, args.runs, args.preset), analyse, render_markdown))
        return
    models = tuple(args.models)
    _check_setup(args)
    preset = _preset(args)
    seeds = tuple(args.seeds) if args.seeds else preset.seeds
    root = args.runs / args.preset
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    configs = {m: getattr(args, f"{m}_config") for m in MODELS}
    overrides = {m: [*args.overrides, *getattr(args, f"{m}_set")] for m in MODELS}

    start = time.perf_counter()
    runs = build_runs(preset, models, seeds, configs, overrides, root)
    _check_qat_starts(runs, root)
    print_plan(f"quant table, preset {args.preset} ({', '.join(models)})", runs, root)
    if args.plan:
        return
    out = make_folder(results_folder(args.out, args.runs, args.preset), "--out")
    make_folder(root, "--runs")
    results = execute_all(runs, root)
    quiet_trainers()
    assessments = {}
    for i, run in enumerate(runs, 1):
        job = _job(run, seeds[0], preset, tuple(args.coreml))
        print(f"[{i}/{len(runs)}] {run.key}: quantizing and scoring {', '.join(job['variants'])}")
        # float: the run's own `lightning-film test` of this checkpoint, the evaluation the copies get here
        known = {"float": results[run.key]["test"]}
        assessments[run.key] = _assessed(root / run.key / "checkpoints" / "last.ckpt", root / run.key / "quant", job,
                                         known, print)  # fmt: skip

    summary = summarize(assessments, results, models)
    first = {m: assessments[f"{m}/film/seed{seeds[0]}"] for m in models}
    basics = report_basics(
        "quant", argv, args, preset, seeds, machine_info(extra_packages=("torchao", "coremltools", "lightning"))
    )
    report = analyse(
        {
            **basics,
            "models": list(models),
            "configs": {m: str(configs[m]) for m in models},
            "overrides": basics["overrides"] + [f"{m}: {k}={v}" for m in models for k, v in getattr(args, f"{m}_set")],
            "group_size": GROUP,
            "qat_weights": QAT_WEIGHTS,
            "schemes": first[models[0]]["schemes"],
            "summary": summary,
            "sizes": {m: first[m]["sizes"] for m in models},
            "speed": {m: first[m].get("speed") for m in models},
            "coreml": {m: first[m].get("coreml") for m in models},
            "assessments": assessments,
            "runs": results,
            "wall_s": time.perf_counter() - start,
        }
    )
    markdown = render_markdown(report)
    files = {"results.md": markdown, "results.json": json.dumps(report, indent=1, default=str) + "\n",
             "quant.png": render_png(report)}  # fmt: skip
    for name, content in files.items():
        write_atomic(out / name, content)
    print(markdown)
    print("wrote " + ", ".join(str(out / name) for name in files), file=sys.stderr)
