"""Export a model's inference step to a Core ML ``.mlpackage`` for the Neural Engine, with a report.

    step = inference_step(model)                             # fixed shapes (export/steps.py)
    ep = torch.export.export(step, example).run_decompositions(...)
    mlmodel = ct.convert(ep, fp16 compute, CPU_AND_NE, minimum_deployment_target)
    mlmodel = ct.optimize.coreml.linear_quantize_weights / palettize_weights   # per role
    <out>.mlpackage + <out>.json                              # written whole or not at all

Weight compression is chosen per role like the quantization callback (``weights="int4_film"``:
conditioner projections int4 per block, the rest int8 per channel; ``fp16``, ``int8``, ``int4``,
``palettize4`` or any mapping). Every Linear / Embedding weight of a compressed role is named to
coremltools explicitly with ``weight_threshold=0``: its default threshold (2048 elements) would
silently leave small FiLM projections in fp16. A model already quantized by torchao (the
QuantizationCallback's copy) goes through as it is: its int8 / int4 weights stay int8 / int4.

``layout="ane"`` exports the step rebuilt for the Neural Engine (:mod:`lightning_film.export.ane_layout`:
channels-first, 1x1 convolutions, attention per head) instead of the model as it is; same inputs and
output, same roles for compression.

The converter needs ``run_decompositions`` (it refuses the training dialect); ``addcmul`` (FiLM's
``beta + h * gamma``) is decomposed for it and ``alias`` nodes (a full slice) are dropped. The
exported program is checked against the PyTorch module before conversion. Core ML cannot run on
Linux, so the package is read back (:mod:`lightning_film.export.report`), not executed.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lightning_film
from lightning_film.checkpoints import load_model
from lightning_film.export.ane_layout import LAYOUTS, ane_inference_step, weight_roles
from lightning_film.export.report import read_package
from lightning_film.export.steps import ExportError, InferenceStep, inference_step
from lightning_film.io import atomic_path, folder_problem, write_atomic
from lightning_film.quantization.config import Scheme, effective_group_size, parse_roles
from lightning_film.quantization.extras import require
from lightning_film.quantization.roles import role_weights

__all__ = [
    "MIN_TARGET",
    "check_output",
    "check_target",
    "compression_scheme",
    "deployment_targets",
    "export_checkpoint",
    "export_coreml",
    "load_checkpoint_model",
    "report_path",
]

#: The oldest deployment target each weight format needs (int4 blocks: iOS 18 / macOS 15).
MIN_TARGET: dict[str, str] = {"fp16": "iOS15", "int8": "iOS16", "palettize4": "iOS16", "int4": "iOS18"}


def deployment_targets() -> list[str]:
    """Deployment target names coremltools knows (``iOS18``, ``macOS15``, ...)."""
    ct = require("coremltools", "coreml", "Core ML export")
    return list(ct.target.__members__)


def report_path(package: str | Path) -> Path:
    """The JSON report beside a package: ``model.mlpackage`` -> ``model.json``."""
    return Path(package).with_suffix(".json")


def compression_scheme(weights: Any = "fp16", roles: Any = None, group_size: int = 32) -> Scheme:
    """``weights`` (preset, mapping or text) with ``roles`` (``"conditioner=int4,..."`` or a mapping)
    overriding single roles, as a Core ML :class:`Scheme`."""
    try:
        base = parse_roles(weights, "coreml")
        if roles:
            text = roles if isinstance(roles, str) else ",".join(f"{k}={v}" for k, v in dict(roles).items())
            named = [item.partition("=")[0].strip() for item in text.split(",") if item.strip()]
            override = parse_roles(text, "coreml")
            base.update({r: override[r] for r in (override if "*" in named else named)})
            weights = base
        return Scheme.parse(weights, "coreml", group_size)
    except ValueError as err:
        raise ExportError(str(err)) from None


def check_target(ct: Any, name: str, scheme: Scheme) -> Any:
    """The coremltools target called ``name``, if it has every format ``scheme`` asks for."""
    members = ct.target.__members__
    if name not in members:
        raise ExportError(f"unknown deployment target {name!r}; accepted: {', '.join(members)}")
    target = members[name]
    for fmt in sorted(set(scheme.roles.values())):
        need = members[MIN_TARGET[fmt]]
        if int(target) < int(need):
            roles = [r for r, f in scheme.roles.items() if f == fmt]
            raise ExportError(
                f"{fmt} weights ({', '.join(roles)}) need deployment target {MIN_TARGET[fmt]} / its macOS "
                f"equivalent or newer; {name} lacks them: raise --target or choose another format"
            )
    return target


def check_output(out: str | Path) -> Path:
    """``out`` as a Path, once it is known to be a ``.mlpackage`` in a folder we can write to."""
    path = Path(out)
    if path.suffix != ".mlpackage":
        raise ExportError(f"the output must be a .mlpackage path, got {str(out)!r}")
    problem = folder_problem(path.parent)
    try:
        if problem is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path.parent):
                pass
    except OSError as err:
        problem = err.strerror or str(err)
    if problem:
        raise ExportError(f"cannot write to the output folder {str(path.parent)!r}: {problem}")
    return path


@contextmanager
def _quiet_progress():
    """coremltools draws a tqdm bar per pass (its modules bind ``tqdm`` at import, so the
    TQDM_DISABLE variable comes too late); a command prints its own summary instead. Also drops
    coremltools' notices about its own deprecated registry and torch's pytree API."""
    import sys
    from functools import partial

    from tqdm import tqdm

    quiet = partial(tqdm, disable=True)
    patched = []
    for name, module in list(sys.modules.items()):
        if name.startswith("coremltools"):
            for attr in ("tqdm", "_tqdm"):
                if getattr(module, attr, None) is tqdm:
                    patched.append((module, attr))
                    setattr(module, attr, quiet)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="coremltools")
            warnings.filterwarnings("ignore", message=".*treespec.*", category=FutureWarning)
            yield
    finally:
        for module, attr in patched:
            setattr(module, attr, tqdm)


def _torchao_quantized(model: nn.Module) -> bool:
    return any(type(p).__module__.startswith("torchao") for p in model.parameters())


def _export(step: InferenceStep, example: tuple[torch.Tensor, ...]) -> Any:
    """torch.export with fixed shapes, decomposed for coremltools, checked against the module."""
    try:
        ep = torch.export.export(step.module, example, strict=False)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"torch.export could not capture {type(step.module).__name__}: {first}") from err
    ep = ep.run_decompositions(torch._decomp.get_decompositions([torch.ops.aten.addcmul]))
    for node in list(ep.graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            ep.graph.erase_node(node)
    ep.graph_module.recompile()
    for node in ep.graph.nodes:
        values = node.meta.get("val")
        for value in values if isinstance(values, (tuple, list)) else [values]:
            if isinstance(value, torch.Tensor) and not all(isinstance(d, int) for d in value.shape):
                where = "input" if node.op == "placeholder" else f"{node.name} (from {_module_of(ep, node.name)})"
                raise ExportError(
                    f"{where} has a data-dependent shape {tuple(value.shape)}; the Neural Engine runs fixed shapes "
                    f"only: keep every shape independent of the values (mask instead of indexing)"
                )
    return ep


def _module_of(ep: Any, op: str) -> str:
    """The module (fqn and class) that produced the first graph node of ``op``, for error messages."""
    for node in ep.graph.nodes:
        target = getattr(node.target, "__name__", str(node.target))
        if node.name == op or target.split(".")[0] == op or node.name.rstrip("_0123456789") == op:
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                fqn, cls = list(stack.values())[-1]
                cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
                return f"module {fqn.removeprefix('L__self__').strip('._') or '<root>'} ({cls_name.rsplit('.', 1)[-1]})"
            return "the top-level forward"
    return "an unknown module"


def _convert(ct: Any, ep: Any, step: InferenceStep, target: Any) -> Any:
    np_types = {torch.int32: "int32", torch.float32: "float32", torch.float16: "float16"}
    import numpy as np

    inputs = [ct.TensorType(name=s.name, shape=s.shape, dtype=getattr(np, np_types[s.dtype])) for s in step.inputs]
    try:
        return ct.convert(
            ep,
            inputs=inputs,
            outputs=[ct.TensorType(name=step.output)],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16,
            compute_units=ct.ComputeUnit.CPU_AND_NE,
            minimum_deployment_target=target,
        )
    except Exception as err:
        text = str(err)
        match = re.search(r"Unsupported fx node (\S+?),|convert function for op '([^']+)'", text)
        if match:
            op = match.group(1) or match.group(2)
            raise ExportError(
                f"coremltools cannot convert op {op!r} (from {_module_of(ep, op)}): {text.splitlines()[0]}"
            ) from err
        raise ExportError(
            f"coremltools failed to convert {type(step.module).__name__}: {type(err).__name__}: {text.splitlines()[0] if text else ''}"
        ) from err


def _op_config(ct: Any, fmt: str, length: int, group_size: int) -> tuple[Any, int | None]:
    opt = ct.optimize.coreml
    if fmt == "int8":
        return opt.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0
        ), None
    if fmt == "int4":
        g = effective_group_size(length, group_size)
        if g is None:
            return opt.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int4", granularity="per_channel", weight_threshold=0
            ), None
        return opt.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=g, weight_threshold=0
        ), g
    return opt.OpPalettizerConfig(mode="kmeans", nbits=4, granularity="per_tensor", weight_threshold=0), None


def _compress(ct: Any, mlmodel: Any, ep: Any, step: InferenceStep, scheme: Scheme) -> tuple[Any, list[dict], list[str]]:
    """Compress every Linear / Embedding weight of a compressed role; returns the model, what was
    compressed (param, role, const, format, block) and notes (weights left in fp16, and why)."""
    roles = {w.fqn + ".weight": w.role for w in role_weights(step.module)}
    roles.update(weight_roles(step.module))  # layout "ane": its convolutions
    consts = {op.name: op for op in mlmodel._mil_program.functions["main"].operations if op.op_type == "const"}
    by_format: dict[str, dict[str, Any]] = {}
    done, notes = [], []
    for placeholder, param in ep.graph_signature.inputs_to_parameters.items():
        role = roles.get(param)
        fmt = scheme.roles.get(role, "fp16") if role else "fp16"
        if fmt == "fp16":
            continue
        name = next((n for n in (f"{placeholder}_to_fp16", placeholder) if n in consts), None)
        if name is None:
            notes.append(
                f"{param} ({role}): no constant of its own in the program (shared or folded); left as converted"
            )
            continue
        values = consts[name].val.val
        if not values.any():
            notes.append(f"{param} ({role}): all zeros (an untrained zero-initialised projection); left in fp16")
            continue
        # blocks run along the input channels: axis 1 of a linear (out, in) or conv (out, in, 1, 1) weight
        config, block = _op_config(ct, fmt, int(values.shape[1]), scheme.group_size)
        by_format.setdefault("palettize" if fmt == "palettize4" else "linear", {})[name] = config
        done.append({"param": param, "role": role, "const": name, "format": fmt, "block_size": block})
    if not done and scheme.quantized_roles:
        notes.append(
            f"no weight compressed: the model has no trained weights in roles {', '.join(scheme.quantized_roles)}"
        )
    opt = ct.optimize.coreml
    if "linear" in by_format:
        mlmodel = opt.linear_quantize_weights(mlmodel, opt.OptimizationConfig(op_name_configs=by_format["linear"]))
    if "palettize" in by_format:
        require("sklearn", "coreml", "4-bit palettization (k-means)")
        mlmodel = opt.palettize_weights(mlmodel, opt.OptimizationConfig(op_name_configs=by_format["palettize"]))
    return mlmodel, done, notes


def export_coreml(
    model: nn.Module,
    out: str | Path,
    weights: Any = "fp16",
    roles: Any = None,
    group_size: int = 32,
    deployment_target: str = "iOS18",
    batch_size: int = 1,
    seq_len: int | None = None,
    source: str | None = None,
    layout: str = "default",
) -> dict[str, Any]:
    """Export ``model``'s inference step to ``out`` (a ``.mlpackage``) and its report beside it
    (:func:`report_path`); returns the report. ``model`` itself is not changed (a copy is exported);
    a failure leaves neither a package nor a report, and an earlier export at ``out`` intact.

    Args:
        weights, roles, group_size: the compression per role (:func:`compression_scheme`).
        deployment_target: a coremltools target name (``iOS18``, ``macOS15``, ...).
        batch_size, seq_len: the fixed input shapes (``seq_len``: ByteLM's window, default its context).
        source: recorded in the report (the checkpoint path, say).
        layout: ``"default"`` (the model as it is) or ``"ane"`` (rebuilt for the Neural Engine,
            :func:`~lightning_film.export.ane_layout.to_ane_layout`).
    """
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; accepted: {', '.join(LAYOUTS)}")
    ct = require("coremltools", "coreml", "Core ML export")
    scheme = compression_scheme(weights, roles, group_size)
    target = check_target(ct, deployment_target, scheme)
    out = check_output(out)
    _check_report_slot(out)
    # the exported graph is the fp32 model, whatever precision context the caller trains under
    # (a bf16 autocast would trace bf16 casts into it); the example inputs are made on the CPU
    with _quiet_progress(), torch.autocast("cpu", enabled=False):
        return _export_coreml(ct, model, out, scheme, target, deployment_target, batch_size, seq_len, source, layout)


def _check_report_slot(out: Path) -> None:
    """The report goes beside the package (``model.json``): refuse to replace a file there that is
    not a report of an earlier export (someone's own ``model.json``)."""
    path = report_path(out)
    if not path.exists():
        return
    try:
        ours = json.loads(path.read_text()).get("format") == "mlprogram"
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError):
        ours = False
    if not ours:
        raise ExportError(
            f"--out {str(out)!r}: its report would replace {str(path)!r}, which is not an export report; choose "
            f"another --out or move that file"
        )


def _export_coreml(
    ct: Any,
    model: nn.Module,
    out: Path,
    scheme: Scheme,
    target: Any,
    deployment_target: str,
    batch_size: int,
    seq_len: int | None,
    source: str | None,
    layout: str = "default",
) -> dict[str, Any]:
    # a model trained on a GPU is exported from a CPU copy: the example inputs, the check against
    # the exported program and coremltools all run on the CPU
    work = copy.deepcopy(model).cpu().eval()
    if _torchao_quantized(work) and scheme.quantized_roles:
        raise ExportError(
            "this model is already quantized by torchao; export it with weights='fp16' (its weights stay as they are)"
        )
    if any(type(m).__module__.startswith("torchao.quantization.qat") for m in work.modules()):
        from lightning_film.quantization.torchao import strip_fake_quant

        strip_fake_quant(work)  # QAT-trained weights, exported as plain weights and compressed below
    if layout == "ane" and _torchao_quantized(work):
        raise ExportError(
            "layout 'ane' rebuilds linears as convolutions from float weights, which a torchao-quantized model no "
            "longer has; export the float model with layout 'ane' and weights int8 / int4 (Core ML compression)"
        )
    step = (
        ane_inference_step(work, batch_size, seq_len) if layout == "ane" else inference_step(work, batch_size, seq_len)
    )
    example = step.example()
    with torch.no_grad():
        expected = step.module(*example)
        ep = _export(step, example)
        got = ep.module()(*example)
    mlmodel = _convert(ct, ep, step, target)
    mlmodel, compressed, notes = _compress(ct, mlmodel, ep, step, scheme)
    by_const = {c["const"]: c for c in compressed}
    with atomic_path(out, directory=True) as tmp:
        inner = tmp / out.name
        mlmodel.save(str(inner))
        for child in inner.iterdir():
            shutil.move(str(child), tmp / child.name)
        inner.rmdir()
        tmp.chmod(0o755)  # mkdtemp's 0700 is for the work in progress, not the result
        report = read_package(tmp)
        report["path"] = str(out)
        for w in report["weights"]:
            origin = by_const.get(re.sub(r"_(quantized|palettized)$", "", w["name"]))
            if origin is not None:
                w.update(param=origin["param"], role=origin["role"])
        report = {
            "model": type(model).__name__,
            "source": source,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "format": "mlprogram",
            "compute_precision": "fp16",
            "compute_units": "CPU_AND_NE",
            "deployment_target": deployment_target,
            "layout": {"name": layout, "notes": list(getattr(step.module, "notes", []))},
            "compression": {
                **scheme.as_dict(),
                "compressed": compressed,
                "notes": notes,
                "torchao_quantized": _torchao_quantized(work),
            },
            "export_check_max_abs_diff": float((expected.float() - got.float()).abs().max()),
            "versions": {
                "torch": torch.__version__,
                "coremltools": ct.__version__,
                "lightning_film": lightning_film.__version__,
            },
            **report,
        }
        if report["export_check_max_abs_diff"] > 1e-3:
            report["warnings"].insert(
                0,
                f"the exported program differs from the PyTorch module by "
                f"{report['export_check_max_abs_diff']:.3g} (max abs) before conversion",
            )
        write_atomic(report_path(out), json.dumps(report, indent=2) + "\n")
    return report


def load_checkpoint_model(path: str | Path, model_class: str | None = None) -> nn.Module:
    """The LightningModule saved in checkpoint ``path``, through the checkpoint gate
    (:func:`lightning_film.checkpoints.load_model`)."""
    return load_model(path, model_class)


def export_checkpoint(
    ckpt: str | Path, out: str | Path | None = None, model_class: str | None = None, **kwargs: Any
) -> dict:
    """:func:`export_coreml` of the model in checkpoint ``ckpt`` (never written to). ``out`` defaults
    to ``<run>/export/<ckpt name>-<weights label>.mlpackage`` beside the run's checkpoints folder."""
    model = load_checkpoint_model(ckpt, model_class)  # as given: Path() would fold a URL's "//"
    ckpt = Path(ckpt)
    if out is None:
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        label = compression_scheme(
            kwargs.get("weights", "fp16"), kwargs.get("roles"), kwargs.get("group_size", 32)
        ).label
        suffix = "-ane" if kwargs.get("layout") == "ane" else ""
        out = run / "export" / f"{ckpt.stem}-{label}{suffix}.mlpackage"
    return export_coreml(model, out, source=str(ckpt), **kwargs)
