"""Read a saved ``.mlpackage`` back (on Linux, without running it) and report what is in it.

Core ML models only *run* on macOS; the ML program inside a package is a protobuf that any machine
can read. :func:`read_package` reports the package size, the op histogram, every stored weight with
its storage type (``fp16``, ``int8``, ``int4``, ``palettized4``), the inputs and outputs with their
shapes, and :func:`ane_warnings` flags what is known to keep a model off the Neural Engine or to
break fp16 there. Everything is read from the package on disk, not from the converter's memory.
"""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path
from typing import Any

from lightning_film.quantization.extras import require

__all__ = ["FP16_MAX", "FP16_MIN_NORMAL", "ane_warnings", "package_size", "read_package"]

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 6.103515625e-05
#: storage names of the constexpr ops' quantized data types
_QUANT_NAMES = {"INT8": "int8", "UINT8": "uint8", "INT4": "int4", "UINT4": "uint4"}


def package_size(path: str | Path) -> dict[str, int]:
    """Bytes of the whole package and of its weight file(s)."""
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    return {
        "total": sum(p.stat().st_size for p in files),
        "weights": sum(p.stat().st_size for p in files if p.parent.name == "weights"),
    }


def _dtype_name(ct: Any, dtype: int) -> str:
    return ct.proto.MIL_pb2.DataType.Name(dtype)


def _tensor(ct: Any, value_type: Any) -> tuple[str, list[int]]:
    t = value_type.tensorType
    return _dtype_name(ct, t.dataType), [int(d.constant.size) if d.HasField("constant") else -1 for d in t.dimensions]


def _scalar(ct: Any, value: Any) -> float | None:
    """A float scalar stored inline (fp16 or fp32), else None."""
    if not value.HasField("immediateValue") or not value.type.HasField("tensorType"):
        return None
    dtype, shape = _tensor(ct, value.type)
    if shape not in ([], [1]):
        return None
    tensor = value.immediateValue.tensor
    if dtype == "FLOAT32" and tensor.floats.values:
        return float(tensor.floats.values[0])
    if dtype == "FLOAT16" and tensor.bytes.values:
        return float(struct.unpack("<e", tensor.bytes.values[:2])[0])
    return None


def _operations(block: Any) -> list[Any]:
    ops = []
    for op in block.operations:
        ops.append(op)
        for inner in op.blocks:
            ops.extend(_operations(inner))
    return ops


def read_package(path: str | Path) -> dict[str, Any]:
    """The report of a saved ``.mlpackage`` (see the module docstring)."""
    ct = require("coremltools", "coreml", "reading a Core ML package")
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    program = spec.mlProgram
    function = program.functions["main"]
    ops = _operations(function.block_specializations[function.opset])
    types: dict[str, tuple[str, list[int]]] = {}
    for op in ops:
        for out in op.outputs:
            if out.type.HasField("tensorType"):
                types[out.name] = _tensor(ct, out.type)
    weights, scalars = [], {}
    for op in ops:
        name = op.outputs[0].name if op.outputs else ""
        if op.type == "const":
            value = op.attributes["val"]
            if value.WhichOneof("value") == "blobFileValue":
                dtype, shape = types.get(name, ("?", []))
                weights.append({"name": name, "shape": shape, "storage": dtype.lower()})
            else:
                scalar = _scalar(ct, value)
                if scalar is not None:
                    scalars[name] = scalar
        elif op.type.startswith("constexpr_"):
            weights.append(
                {"name": name, "shape": types.get(name, ("?", []))[1], "storage": _constexpr_storage(ct, op)}
            )
    desc = spec.description
    outputs = [
        {"name": o.name, "shape": types.get(o.name, ("?", []))[1], "dtype": types.get(o.name, ("?", []))[0]}
        for o in desc.output
    ]
    inputs = [
        {
            "name": i.name,
            "shape": [int(s) for s in i.type.multiArrayType.shape],
            "dtype": ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(i.type.multiArrayType.dataType),
        }
        for i in desc.input
    ]
    histogram = Counter(op.type for op in ops)
    storage = Counter(w["storage"] for w in weights)
    return {
        "path": str(path),
        "size_bytes": package_size(path),
        "spec_version": spec.specificationVersion,
        "opset": function.opset,
        "inputs": inputs,
        "outputs": outputs,
        "op_histogram": dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        "op_count": sum(histogram.values()),
        "weights": weights,
        "weight_storage": dict(sorted(storage.items())),
        "warnings": ane_warnings(ops, types, scalars, inputs),
    }


def _constexpr_storage(ct: Any, op: Any) -> str:
    """int8 / int4 (blockwise or affine quantized), palettized<bits> (look-up table), or the op."""

    def arg_dtype(key: str) -> str | None:
        if key not in op.inputs or not op.inputs[key].arguments:
            return None
        arg = op.inputs[key].arguments[0]
        if arg.HasField("value") and arg.value.type.HasField("tensorType"):
            return _tensor(ct, arg.value.type)[0]
        return None

    if op.type == "constexpr_lut_to_dense":
        indices = arg_dtype("indices") or ""
        bits = "".join(c for c in indices if c.isdigit())
        return f"palettized{bits}" if bits else "palettized"
    for key in ("data", "quantized_data"):
        dtype = arg_dtype(key)
        if dtype is not None:
            return _QUANT_NAMES.get(dtype, dtype.lower())
    return op.type


def ane_warnings(
    ops: list[Any], types: dict[str, tuple[str, list[int]]], scalars: dict[str, float], inputs: list[dict[str, Any]]
) -> list[str]:
    """What keeps this program (partly) off the Neural Engine, or risks fp16 there; heuristics from
    Apple's published guidance, each naming the ops it is about."""
    found: list[str] = []
    compute = [op for op in ops if op.type != "const" and not op.type.startswith("constexpr_")]
    high_rank = sorted({op.type for op in compute for o in op.outputs if len(types.get(o.name, ("", []))[1]) > 5})
    if high_rank:
        found.append(
            f"tensors of rank > 5 ({', '.join(high_rank)}): the Neural Engine handles rank <= 5; these run on the CPU"
        )
    int_ops = Counter(
        op.type
        for op in compute
        for o in op.outputs[:1]
        if types.get(o.name, ("", []))[0].startswith(("INT", "UINT", "BOOL"))
    )
    if int_ops:
        listed = ", ".join(f"{k} x{v}" for k, v in sorted(int_ops.items()))
        found.append(
            f"integer/bool ops ({listed}): the Neural Engine computes in fp16, so index arithmetic runs on the "
            f"CPU (a round trip per call)"
        )
    fp32 = Counter(op.type for op in compute for o in op.outputs[:1] if types.get(o.name, ("", []))[0] == "FLOAT32")
    if fp32:
        found.append(f"ops computing in fp32 ({', '.join(sorted(fp32))}): only fp16 runs on the Neural Engine")
    trig = sorted({op.type for op in compute if op.type in ("sin", "cos")})
    if trig:
        found.append(
            f"{'/'.join(trig)} (a timestep embedding?): arguments in the hundreds lose their fractional part in fp16 "
            f"(spacing 0.5 at 1000); compute such embeddings on the host or scale time to [0, 1]"
        )
    if any(op.type == "exp" for op in compute):
        found.append("exp: overflows fp16 for inputs above 11.09 (e.g. film_exp's gamma); bounded film_tanh avoids it")
    tiny = sorted(n for n, v in scalars.items() if "eps" in n and 0 < abs(v) < FP16_MIN_NORMAL)
    if tiny:
        smallest = min(abs(scalars[n]) for n in tiny)
        found.append(
            f"{len(tiny)} norm epsilon(s) ({', '.join(tiny[:3])}{', ...' if len(tiny) > 3 else ''}) as small as "
            f"{smallest:.3g}: subnormal in fp16 (smallest normal {FP16_MIN_NORMAL:.3g}), which the Neural Engine "
            f"may flush to 0; fp16-safe norms use eps >= {FP16_MIN_NORMAL:.3g}"
        )
    huge = sorted(n for n, v in scalars.items() if FP16_MAX < abs(v) < float("inf"))
    if huge:
        found.append(
            f"constants beyond fp16's range ({', '.join(huge)}): they become inf on the Neural Engine (max {FP16_MAX:g})"
        )
    ranks = {len(i["shape"]) for i in inputs}
    linear_ranks = {len(types.get(op.outputs[0].name, ("", []))[1]) for op in compute if op.type == "linear"}
    if 3 in linear_ranks:
        found.append(
            "linear layers on (B, S, C) tensors: Apple's guidance for transformers on the Neural Engine is a "
            "channels-first (B, C, 1, S) layout with 1x1 convolutions; this layout runs there, with extra "
            f"transposes (input ranks: {sorted(ranks)})"
        )
    return found
