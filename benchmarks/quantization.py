"""What quantization costs and buys on the trained byte model: bits per byte, size, CPU speed, Core ML.

    python -m benchmarks.quantization [--ckpt runs/byte/nibble_acc/checkpoints/last.ckpt --qat-steps 200
                                       --repeats 5 --out benchmarks/results --packages runs/quant/benchmark]

On the checkpoint ``lightning-film fit --config configs/byte/nibble_acc.yaml`` writes, in one run:

1. **Metric damage**: val and test bits per byte (all of both splits, per corpus too) of the float model
   and of torchao post-training quantized copies: ``int8`` (every Linear / Embedding per channel),
   ``int4_film`` (the seeds' plan: conditioner projections int4 per group of 32, the rest int8) and
   ``int4`` (everything int4 per group of 32).
2. **PTQ vs QAT** (``--qat-steps`` > 0): from the checkpoint, ``--qat-steps`` more training steps in
   float (then int4 PTQ) against the same steps with int4 fake quantization (then converted);
   same data, same learning rate.
3. **Size**: bytes of each state dict as torch stores it (torchao keeps int4 unpacked in int8 on CPU)
   and as the bit widths pack it (bits per weight plus an fp16 scale per group or channel).
4. **CPU inference speed** of each torchao variant as a ratio of forward time to float's, one window
   (1 x 128, the deployment shape) and a batch (32 x 128), interleaved (lightning_film.measure),
   medians of per-repeat ratios with their range.
5. **Core ML packages** of the float model per compression (fp16, int8, int4_film, int4, palettize4)
   and of the torchao ``int4_film`` copy as it is: package size, op histogram, weight storage, warnings.

Writes ``quantization.md`` and ``quantization.json`` into ``--out``; packages go to ``--packages``.
CPU timings on a shared machine: read ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_film.data.bytes import ByteDataModule
from lightning_film.io import write_atomic
from lightning_film.measure import interleaved, machine_info, paired_ratios, repeat_times, spread
from lightning_film.quantization import Scheme, plan, quantize, size_bytes

PROG = "python -m benchmarks.quantization"
VARIANTS = ("float", "int8", "int4_film", "int4")
COREML = ("fp16", "int8", "int4_film", "int4", "palettize4")
GROUP = 32


def silent_trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)  # fmt: skip


def evaluate(model: pl.LightningModule, dm: ByteDataModule) -> dict[str, float]:
    """val and test bits per byte (total and per corpus) over the whole splits."""
    out = {}
    for run in ("validate", "test"):
        result = getattr(silent_trainer(), run)(model, datamodule=dm, verbose=False)[0]
        out.update({k: float(v) for k, v in result.items() if "/bpb" in k})
    return out


def quantized(model: pl.LightningModule, label: str) -> pl.LightningModule:
    q = copy.deepcopy(model).eval()
    if label != "float":
        quantize(q, Scheme.parse(label, group_size=GROUP))
    return q


def dynamic_int8(model: pl.LightningModule) -> pl.LightningModule:
    """Reference for speed: int8 weights and dynamically quantized int8 activations on every Linear."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    q = copy.deepcopy(model).eval()
    quantize_(q, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear))
    return q


def speed(models: dict[str, torch.nn.Module], seq: int, repeats: int, steps: int) -> dict:
    """Forward-time ratio to float per variant, for one window and for a batch."""
    out = {}
    for batch in (1, 32):
        g = torch.Generator().manual_seed(0)
        ids = [torch.randint(0, hi, (batch, seq), generator=g) for hi in (256, 16, 256)]

        def step(m: torch.nn.Module, ids: list[torch.Tensor] = ids):
            def run() -> None:
                with torch.inference_mode():
                    m(*ids)

            return run

        raw = interleaved({k: step(m) for k, m in models.items()}, repeats, steps, warmup=2)
        out[f"{batch}x{seq}"] = {
            "median_s": {k: spread(repeat_times(v))["median"] for k, v in raw.items()},
            "ratio_to_float": {k: spread(paired_ratios(v, raw["float"])) for k, v in raw.items() if k != "float"},
            "raw_step_s": raw,
        }
    return out


def qat_vs_ptq(model: pl.LightningModule, dm: ByteDataModule, steps: int) -> dict:
    """``steps`` more steps in float then int4 PTQ, vs the same steps with int4 QAT then convert."""
    from lightning_film.callbacks import QuantizationCallback

    arms = {}
    for arm in ("float_then_ptq", "qat"):
        pl.seed_everything(0, verbose=False)
        m = copy.deepcopy(model).train()
        m.hparams.update(lr=3e-4, warmup_steps=10, max_lr_steps=None)  # a fine-tune: same for both arms
        callbacks = [QuantizationCallback("qat", "int4", group_size=GROUP, evaluate=False)] if arm == "qat" else []
        start = time.perf_counter()
        silent_trainer(max_steps=steps, limit_val_batches=0, callbacks=callbacks, gradient_clip_val=1.0).fit(m, dm)
        seconds = time.perf_counter() - start
        q = callbacks[0].quantized_model if callbacks else quantized(m, "int4")
        arms[arm] = {"train_s": seconds, "float": evaluate(m.eval(), dm), "int4": evaluate(q, dm)}
    return arms


def coreml(model: pl.LightningModule, folder: Path) -> dict:
    from lightning_film.export import export_coreml

    out = {}
    for weights in COREML:
        start = time.perf_counter()
        report = export_coreml(model, folder / f"byte-{weights}.mlpackage", weights=weights, group_size=GROUP)
        out[weights] = summarize(report, time.perf_counter() - start)
    start = time.perf_counter()
    report = export_coreml(quantized(model, "int4_film"), folder / "byte-torchao-int4_film.mlpackage")
    out["torchao int4_film"] = summarize(report, time.perf_counter() - start)
    return out


def summarize(report: dict, seconds: float) -> dict:
    return {
        "path": report["path"], "seconds": seconds, "size_bytes": report["size_bytes"],
        "op_count": report["op_count"], "op_histogram": report["op_histogram"],
        "weight_storage": report["weight_storage"], "warnings": report["warnings"],
        "inputs": report["inputs"], "outputs": report["outputs"],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="runs/byte/nibble_acc/checkpoints/last.ckpt")
    p.add_argument("--qat-steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps-per-repeat", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--packages", default="runs/quant/benchmark")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine a second thread oversubscribes the "
                   "cores and turns a sub-millisecond forward into ~100 ms)")
    args = p.parse_args(argv)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|treespec).*")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    from lightning_film.export import load_checkpoint_model

    started = time.perf_counter()
    model = load_checkpoint_model(args.ckpt)
    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    data_args = {k: v for k, v in ckpt["datamodule_hyper_parameters"].items() if not k.startswith("_")}
    dm = ByteDataModule(**data_args)
    dm.setup("fit")
    seq = model.hparams.seq_len

    models = {label: quantized(model, label) for label in VARIANTS}
    models["int8_dyn"] = dynamic_int8(model)
    entries = {label: plan(model, Scheme.parse(label, group_size=GROUP)) for label in VARIANTS if label != "float"}
    print("scoring", ", ".join(VARIANTS), file=sys.stderr)
    scores = {label: evaluate(m, dm) for label, m in models.items()}
    sizes = {label: size_bytes(m, entries.get(label)) for label, m in models.items() if label in VARIANTS}
    print("timing", file=sys.stderr)
    timing = speed(models, seq, args.repeats, args.steps_per_repeat)
    qat = {}
    if args.qat_steps > 0:
        print(f"PTQ vs QAT: {args.qat_steps} steps each", file=sys.stderr)
        qat = qat_vs_ptq(model, dm, args.qat_steps)
    print("Core ML", file=sys.stderr)
    packages = coreml(model, Path(args.packages))

    result = {
        "command": " ".join([PROG, *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(extra_packages=("torchao", "coremltools", "lightning")),
        "checkpoint": {"path": args.ckpt, "global_step": ckpt.get("global_step"), "model": dict(model.hparams)},
        "data": data_args, "group_size": GROUP,
        "schemes": {label: Scheme.parse(label).as_dict() for label in VARIANTS if label != "float"},
        "quantized_modules": {label: [e.as_dict() for e in es] for label, es in entries.items()},
        "scores": scores, "sizes": sizes, "speed": timing, "qat_steps": args.qat_steps, "qat_vs_ptq": qat,
        "coreml": packages, "seconds": time.perf_counter() - started,
    }  # fmt: skip
    out = Path(args.out)
    write_atomic(out / "quantization.json", json.dumps(result, indent=1, default=str) + "\n")
    write_atomic(out / "quantization.md", markdown(result))
    print(f"wrote {out / 'quantization.md'} and {out / 'quantization.json'}", file=sys.stderr)


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f}"


def markdown(r: dict) -> str:
    m, hp = r["machine"], r["checkpoint"]["model"]
    lines = [
        "# Quantization of the byte model: bits per byte, size, CPU speed, Core ML packages", "",
        f"Command: `{r['command']}`  ", f"Date: {r['date']}  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads, load average "
        f"{m['load_average_1_5_15']} at the end; torch {m['torch']}, torchao {m.get('torchao')}, "
        f"coremltools {m.get('coremltools')}  ",
        f"Checkpoint: `{r['checkpoint']['path']}` (step {r['checkpoint']['global_step']}; ByteLM "
        f"{hp['variant']}, dim {hp['dim']}, depth {hp['depth']}, seq_len {hp['seq_len']}, embed_conditioner "
        f"{hp['embed_conditioner']}, block_conditioner {hp['block_conditioner']})  ",
        f"Data: {', '.join(r['data']['sources'])}; all {len(r['scores'])} variants scored on the whole val and "
        f"test splits. int4 groups of {r['group_size']} (a row they do not divide gets the largest common "
        f"divisor: the FiLM projections read 48 features, groups of 16).", "",
        "## Bits per byte and size (torchao post-training quantization)", "",
        "| variant | roles | val bpb | test bpb | test bpb change | stored MB | packed MB |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    base = r["scores"]["float"]["test/bpb"]
    for label, s in r["scores"].items():
        if label == "int8_dyn":
            roles, size = "every Linear: int8 weights + dynamic int8 activations; embeddings fp32", None
        else:
            roles = "fp32" if label == "float" else ", ".join(f"{k} {v}" for k, v in r["schemes"][label]["roles"].items())
            size = r["sizes"][label]
        lines.append(
            f"| {label} | {roles} | {s['val/bpb']:.4f} | {s['test/bpb']:.4f} | {100 * (s['test/bpb'] / base - 1):+.2f}% "
            + (f"| {_mb(size['stored'])} | {_mb(size['packed'])} |" if size else "| - | - |")
        )
    corpora = sorted(k.split("/")[-1] for k in r["scores"]["float"] if k.startswith("test/bpb/"))
    lines += ["", "Per corpus (test bpb): " + "; ".join(
        f"{c}: " + ", ".join(f"{label} {s[f'test/bpb/{c}']:.4f}" for label, s in r["scores"].items()) for c in corpora
    ), ""]  # fmt: skip
    lines += [
        "**stored**: `torch.save(state_dict)` bytes (torchao keeps int4 values unpacked in int8 on CPU, with fp32 "
        "scales); **packed**: what the bit widths imply (bits per weight, one fp16 scale per group or channel, "
        "other tensors as stored), which is what Core ML reaches below.", "",
        "## CPU inference speed (forward time as a ratio to float; > 1 is slower)", "",
        "| variant | " + " | ".join(f"{shape} ratio (range)" for shape in r["speed"]) + " |",
        "|---|" + "---|" * len(r["speed"]),
    ]  # fmt: skip
    lines.append("| float | " + " | ".join(f"1 ({1e3 * t['median_s']['float']:.1f} ms)" for t in r["speed"].values()) + " |")
    for label in (*VARIANTS[1:], "int8_dyn"):
        cells = []
        for t in r["speed"].values():
            s = t["ratio_to_float"][label]
            cells.append(f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}; {1e3 * t['median_s'][label]:.1f} ms)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ratios = [t["ratio_to_float"][label]["median"] for t in r["speed"].values() for label in VARIANTS[1:]]
    lines += [
        "", f"Weight-only variants run at {min(ratios):.2f}-{max(ratios):.2f}x float's time here: torchao 0.18's "
        "`IntxWeightOnlyConfig` tensors dequantize the whole weight at every call, then run the float matmul "
        "(there is no fused low-bit CPU kernel for them on x86), so on this machine they save memory, not "
        "time. `int8_dyn` (`Int8DynamicActivationInt8WeightConfig` on every Linear, embeddings left in "
        "float; not a role format, measured for reference) quantizes activations too and runs int8 matmuls. "
        "The speed the int4/int8 formats are for is the Neural Engine's, which cannot be measured on Linux.", "",
    ]  # fmt: skip
    if r["qat_vs_ptq"]:
        q = r["qat_vs_ptq"]
        lines += [
            f"## PTQ vs QAT at int4 ({r['qat_steps']} more steps from the checkpoint, lr 3e-4)", "",
            "| arm | test bpb of its float weights | test bpb at int4 | train s |", "|---|---|---|---|",
        ]  # fmt: skip
        for arm, v in q.items():
            lines.append(f"| {arm} | {v['float']['test/bpb']:.4f} | {v['int4']['test/bpb']:.4f} | {v['train_s']:.0f} |")
        lines.append("")
    lines += [
        "## Core ML packages (fp16 compute, CPU_AND_NE, iOS18; weights compressed per role)", "",
        "| compression | package MB | weights MB | weight storage | ops | top ops | warnings |", "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, c in r["coreml"].items():
        top = ", ".join(f"{k} {v}" for k, v in list(c["op_histogram"].items())[:6])
        storage = ", ".join(f"{k} {v}" for k, v in c["weight_storage"].items())
        lines.append(
            f"| {name} | {_mb(c['size_bytes']['total'])} | {_mb(c['size_bytes']['weights'])} | {storage} | "
            f"{c['op_count']} | {top} | {len(c['warnings'])} |"
        )
    first = next(iter(r["coreml"].values()))
    shapes = ", ".join(f"{i['name']} {tuple(i['shape'])} {i['dtype']}" for i in first["inputs"])
    outs = ", ".join(f"{o['name']} {tuple(o['shape'])} {o['dtype']}" for o in first["outputs"])
    lines += ["", f"Inputs: {shapes} -> {outs}. Warnings of the fp16 package:", ""]
    lines += [f"- {w}" for w in first["warnings"]]
    lines += ["", f"Total run time {r['seconds'] / 60:.1f} min. Raw numbers: `quantization.json`.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
