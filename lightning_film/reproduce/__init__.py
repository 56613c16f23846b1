"""``lightning-film reproduce TABLE``: one command per results table, resumable.

    lightning-film reproduce byte --preset quick
    lightning-film reproduce world-kid --preset quick
    lightning-film reproduce world-recipe --preset quick
    lightning-film reproduce world-conditioning --preset quick

Each table trains its runs through the real ``lightning-film fit``/``test`` (finished runs are
read, not redone; see :mod:`lightning_film.reproduce.runner`) and writes a markdown table, the
JSON behind it and a plot under ``benchmarks/results/``. Every table has one shape, runs -> scores ->
summary -> render (:mod:`lightning_film.reproduce.table`); a table's module defines what is its own
(``byte``, ``world``, ``quant``), beside its summary and markdown (``*_report``) and what it measures in
this process (``world_measure``; ``quant_specs``, ``quant_assess``, ``quant_deploy``, ``quant_summary``).
"""

from __future__ import annotations

import argparse
import importlib

from lightning_film.errors import CommandParser, UsageError

__all__ = ["TABLES", "reproduce_command"]

#: table name -> (one-line help, "module:its Table"), imported only when that table runs.
TABLES: dict[str, tuple[str, str]] = {
    "byte": (
        "byte vs nibble vs nibble_acc byte LMs: test bpb per corpus, cost, speed",
        "lightning_film.reproduce.byte:TABLE",
    ),
    "world-kid": (
        "the seed's world-model rows (base, filmcond, filmcond_pre[_half], flow_clsfg): KID, control, over seeds",
        "lightning_film.reproduce.world:KID",
    ),
    "world-recipe": (
        "the world model's training recipe, one change at a time: control, PSNR, KID, over seeds",
        "lightning_film.reproduce.world:RECIPE",
    ),
    "world-conditioning": (
        "every conditioner (rmsnorm) and normalizer (film) in the world model: KID, cost",
        "lightning_film.reproduce.world:CONDITIONING",
    ),
    "quant": (
        "both models at float/int8/int4 (PTQ, QAT), film vs film_tanh: damage, CPU speed, Core ML size",
        "lightning_film.reproduce.quant:TABLE",
    ),
}


def reproduce_command(argv: list[str]) -> None:
    """Dispatch ``lightning-film reproduce TABLE [options]`` to the table's own parser."""
    epilog = "tables:\n" + "\n".join(f"  {name:<20} {help_}" for name, (help_, _) in TABLES.items())
    parser = CommandParser(
        prog="lightning-film reproduce",
        description="Train and score one results table (see 'lightning-film reproduce TABLE --help').",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("table", choices=sorted(TABLES), metavar="TABLE", help=f"one of: {', '.join(TABLES)}")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the table's options")
    if argv and argv[0] not in TABLES and not argv[0].startswith("-"):
        raise UsageError(f"reproduce: unknown table {argv[0]!r}; tables: {', '.join(TABLES)}")
    if not argv or (argv[0] not in TABLES and argv[0] not in ("-h", "--help")):
        raise UsageError(f"reproduce: name a table first (reproduce TABLE [options]); tables: {', '.join(TABLES)}")
    args = parser.parse_args(argv)
    from lightning_film.reproduce.table import run_table

    module, _, name = TABLES[args.table][1].partition(":")
    run_table(getattr(importlib.import_module(module), name), args.options)
