"""``lightning-film export --ckpt PATH --to coreml [...]``: a checkpoint -> ``.mlpackage`` + report.

    lightning-film export --ckpt runs/byte/nibble_acc/checkpoints/last.ckpt --to coreml
    lightning-film export --ckpt last.ckpt --to coreml --weights int4_film --out ship/byte.mlpackage
    lightning-film export --ckpt last.ckpt --to coreml --weights int8 --roles conditioner=int4,embedding=fp16
    lightning-film export --ckpt last.ckpt --to coreml --layout ane    # channels-first, 1x1 convs (Neural Engine)

The checkpoint is only read. Mistakes (a missing checkpoint, an unknown format, role or target,
int4 for a target without it, an unwritable folder, a missing extra) are one line and exit 2.
"""

from __future__ import annotations

from lightning_film.errors import CommandParser
from lightning_film.export.ane_layout import LAYOUTS
from lightning_film.export.steps import ExportError
from lightning_film.user_modules import IMPORTS_HELP, import_user_modules

__all__ = ["EXPORTERS", "export_command"]

#: --to choices
EXPORTERS: tuple[str, ...] = ("coreml",)


def _parser() -> CommandParser:
    p = CommandParser(
        prog="lightning-film export",
        description="Export a checkpoint's inference step (fixed shapes) for deployment; writes the package and a "
        "JSON report beside it.",
    )
    p.add_argument("--ckpt", required=True, help="the checkpoint to export (read only)")
    p.add_argument("--to", required=True, metavar="FORMAT", help=f"one of: {', '.join(EXPORTERS)}")
    p.add_argument(
        "--out", default=None, help="the .mlpackage to write (default: <run>/export/<ckpt>-<weights>.mlpackage)"
    )
    p.add_argument(
        "--weights",
        default="fp16",
        help="compression: fp16, int8 (per channel), int4 (per block), int4_film (conditioner int4, rest int8), "
        "palettize4, or role=format,... (roles: conditioner, backbone, embedding, head)",
    )
    p.add_argument(
        "--roles", default=None, help="per-role overrides of --weights, e.g. conditioner=int4,embedding=fp16"
    )
    p.add_argument("--group-size", type=int, default=32, help="int4 block length (default 32)")
    p.add_argument(
        "--target", default="iOS18", help="deployment target (iOS16, iOS17, iOS18, macOS15, ...); int4 needs iOS18"
    )
    p.add_argument("--batch-size", type=int, default=1, help="fixed batch size (default 1)")
    p.add_argument(
        "--seq-len", type=int, default=None, help="fixed window for sequence models (default: the model's context)"
    )
    p.add_argument("--model", default=None, help="model class path when the checkpoint does not name it")
    p.add_argument("--imports", action="append", default=[], metavar="MODULE", help=IMPORTS_HELP)
    p.add_argument(
        "--layout",
        default="default",
        help="default (the model as it is) or ane (rebuilt for the Neural Engine: channels-first (B, C, 1, S), "
        "linears as 1x1 convolutions, attention per head, fp16-safe eps; same weights, inputs and outputs)",
    )
    return p


def export_command(argv: list[str]) -> None:
    """Run ``lightning-film export`` with ``argv`` (the arguments after ``export``)."""
    args = _parser().parse_args(argv)
    import_user_modules(
        [m for spec in args.imports for m in spec.split(",")]
    )  # the checkpoint may name their conditioners
    if args.to not in EXPORTERS:
        raise ExportError(f"export: unknown format --to {args.to!r}; accepted: {', '.join(EXPORTERS)}")
    if args.layout not in LAYOUTS:
        raise ExportError(f"export: unknown --layout {args.layout!r}; accepted: {', '.join(LAYOUTS)}")
    from lightning_film.export.coreml import export_checkpoint, report_path

    report = export_checkpoint(
        args.ckpt,
        args.out,
        model_class=args.model,
        weights=args.weights,
        roles=args.roles,
        group_size=args.group_size,
        deployment_target=args.target,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        layout=args.layout,
    )
    size = report["size_bytes"]["total"]
    shapes = ", ".join(f"{i['name']} {tuple(i['shape'])}" for i in report["inputs"])
    print(
        f"wrote {report['path']} ({size / 1e6:.2f} MB; {report['compression']['label']}; layout {args.layout}; "
        f"weights {report['weight_storage']})"
    )
    outputs = ", ".join(f"{o['name']} {tuple(o['shape'])}" for o in report["outputs"])
    print(f"  inputs: {shapes} -> {outputs}")
    print(f"  report: {report_path(report['path'])} ({report['op_count']} ops, {len(report['warnings'])} warning(s))")
    for warning in report["warnings"]:
        print(f"  warning: {warning}")
