"""What quantization costs and buys on one trained checkpoint: test metrics, size, CPU speed, Core ML.

    python -m benchmarks.quantization [--ckpt runs/byte/nibble_acc/checkpoints/last.ckpt --repeats 5
                                       --out benchmarks/results --work runs/quant/benchmark]

Any ``lightning-film fit`` checkpoint (ByteLM or WorldModel): torchao post-training copies (``float``,
``int8``, ``int4_film``, ``int4`` and the ``int8_dyn`` reference) scored on the test split, their sizes,
their forward time on the CPU as a ratio to float's, and Core ML packages of the float weights per
compression. The measuring is :func:`lightning_film.reproduce.quant_assess.assess_checkpoint`, what
``lightning-film reproduce quant`` runs on the checkpoints it trains itself (it adds film vs
film_tanh and PTQ vs QAT, for both models). Writes ``quantization.md`` and ``quantization.json`` into
``--out``; packages and sample sheets go to ``--work``. CPU timings on a shared machine: read ratios.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from lightning_film.io import write_atomic
from lightning_film.measure import machine_info
from lightning_film.reproduce import quant_assess, quant_report, quant_specs, quant_summary

PROG = "python -m benchmarks.quantization"
#: the model class a checkpoint holds -> its metrics in the reproduce table
KINDS = {"ByteLM": "byte", "WorldModel": "world"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="runs/byte/nibble_acc/checkpoints/last.ckpt")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps-per-repeat", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--work", default="runs/quant/benchmark", help="Core ML packages and sample sheets")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine a second thread oversubscribes the "
        "cores and turns a sub-millisecond forward into ~100 ms)",
    )
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    quant_assess.quiet_trainers()

    started = time.perf_counter()
    variants = (*quant_specs.VARIANTS, quant_specs.REFERENCE)
    result = quant_assess.assess_checkpoint(
        Path(args.ckpt),
        Path(args.work),
        variants,
        args.repeats,
        args.steps_per_repeat,
        quant_specs.COREML,
        say=lambda line: print(line, file=sys.stderr),
    )
    result.update(
        command=" ".join([PROG, *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=machine_info(extra_packages=("torchao", "coremltools", "lightning")),
        seconds=time.perf_counter() - started,
    )
    out = Path(args.out)
    write_atomic(out / "quantization.json", json.dumps(result, indent=1, default=str) + "\n")
    write_atomic(out / "quantization.md", markdown(result))
    print(f"wrote {out / 'quantization.md'} and {out / 'quantization.json'}", file=sys.stderr)


def markdown(r: dict) -> str:
    m, ckpt = r["machine"], r["checkpoint"]
    hp = ckpt["model"]
    kind = KINDS.get(ckpt["model_class"], "byte")
    conditioner = str(hp.get("embed_conditioner") or hp.get("conditioner") or "model")
    table: dict = {conditioner: {}}
    quant_summary.add_scores(table[conditioner], r["scores"], quant_specs.SPECS[kind].metrics)
    lines = [
        f"# Quantization of one checkpoint ({ckpt['model_class']}): test metrics, size, CPU speed, Core ML",
        "",
        f"Command: `{r['command']}`  ",
        f"Date: {r['date']}  ",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads, load average "
        f"{m['load_average_1_5_15']} at the end; torch {m['torch']}, torchao {m.get('torchao')}, "
        f"coremltools {m.get('coremltools')}  ",
        f"Checkpoint: `{ckpt['path']}` (step {ckpt['global_step']}; {ckpt['model_class']} "
        + ", ".join(
            f"{k} {v}"
            for k, v in hp.items()
            if k in ("variant", "dim", "depth", "seq_len", "normalizer", "embed_conditioner", "conditioner")
        )
        + f"). int4 groups of {r['group_size']}.",
        "",
        "## Test metrics and size (torchao post-training quantization)",
        "",
        *quant_report.variant_table(quant_specs.SPECS[kind].metrics, table, r["sizes"], r["schemes"]),
        "",
        *quant_report.corpus_table(table),
        "## CPU inference speed (forward time as a ratio to float; > 1 is slower)",
        "",
        *quant_report.speed_table(r["speed"]),
        "",
        quant_report.SPEED_NOTE,
        "",
        "## Core ML packages of the float weights (fp16 compute, CPU_AND_NE, iOS18; compression per role)",
        "",
        *quant_report.coreml_table(r["coreml"]),
        "",
        f"Total run time {r['seconds'] / 60:.1f} min. Raw numbers: `quantization.json`. For both models, film vs "
        "film_tanh and PTQ vs QAT: `lightning-film reproduce quant` (benchmarks/results/quant/).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
