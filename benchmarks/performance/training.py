"""Training-side sections: normalizers, conditioners, the whole step (vs x-transformers, compiled,
FLOP utilisation against the measured matmul peak) and scaling with sequence length and width.

Legend: B batch, N tokens, D width, Dc conditioning width.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.performance.common import Settings, Shape, count_params, log, op_profile, summary, time_interleaved
from lightning_film import Conditioner, Conditioning, Transformer, build_normalizer, list_conditioners, list_normalizers
from lightning_film.measure import repeat_times

MM_SIZES = (512, 1024, 2048)
NORM_SHAPES = ((32, 128, 128), (32, 64, 128), (16, 256, 256))
#: normalizer specs besides the registered names: the definition op by op, and torch's own op
NORM_EXTRA = {"rmsnorm (reference)": {"name": "rmsnorm", "implementation": "reference"}}
TARGET_CONDITIONERS = ("film", "adaln", "adaln_zero")


def matmul_fns(sizes: tuple[int, ...] = MM_SIZES) -> dict[str, Callable[[], object]]:
    """fp32 square ``torch.mm`` per size: timed beside the steps, their best rate is the peak."""
    g = torch.Generator().manual_seed(0)
    mats = {n: (torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)) for n in sizes}
    return {f"mm/{n}": functools.partial(torch.mm, *mats[n]) for n in sizes}


def matmul_peak(raw: dict[str, list[list[float]]]) -> dict[str, Any]:
    rates = {
        int(k.split("/")[1]): 2 * int(k.split("/")[1]) ** 3 / statistics.median(repeat_times(v))
        for k, v in raw.items()
        if k.startswith("mm/")
    }
    return {"flops_per_s": max(rates.values()), "by_size": rates}


# -- 1. normalizers -----------------------------------------------------------------------------
def norms_section(s: Settings) -> dict[str, Any]:
    """Forward + backward of every normalizer vs layernorm, at the models' shapes, interleaved."""
    specs: dict[str, Any] = {name: name for name in list_normalizers()}
    specs.update(NORM_EXTRA)
    shapes = [(2, 8, 16)] if s.quick else NORM_SHAPES
    rows = []
    for shape in shapes:
        d = shape[-1]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g).requires_grad_()
        dy = torch.randn(shape, generator=g)
        fns = {}
        for name, spec in specs.items():
            norm = build_normalizer(spec, d)

            fns[name] = functools.partial(_norm_step, norm, x, dy)
        fns["F.rms_norm"] = functools.partial(_torch_rms_norm, x, dy, torch.ones(d, requires_grad=True))
        raw = time_interleaved(fns, s)
        for name, stats in summary(raw, "layernorm").items():
            rows.append({"shape": list(shape), "normalizer": name, "ms": 1e3 * stats["s"], "ratio": stats["ratio"]})
        log(f"norms {shape}: done")
    return {"rows": rows}


def _norm_step(norm: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> None:
    x.grad = None
    norm(x).backward(dy)
    norm.zero_grad(set_to_none=True)


def _torch_rms_norm(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor) -> None:
    x.grad = None
    F.rms_norm(x, (x.shape[-1],), weight, 1e-6).backward(dy)
    weight.grad = None


# -- 2. conditioners ----------------------------------------------------------------------------
def build_transformer(
    shape: Shape, conditioner: str, normalizer: Any = "rmsnorm", activation: str = "gelu"
) -> Transformer:
    torch.manual_seed(0)
    return Transformer(
        shape.dim,
        shape.depth,
        shape.heads,
        shape.cond_dim,
        normalizer=normalizer,
        conditioner=conditioner,
        causal=shape.causal,
        activation=activation,
    )


def _inputs(shape: Shape) -> tuple[torch.Tensor, torch.Tensor, Conditioning, Conditioning]:
    """Tokens, targets (B, N, D), two signals as vector + tokens, and per-token (B, N, Dc) conditioning."""
    g = torch.Generator().manual_seed(1)
    b, n, d, dc = shape.batch, shape.seq, shape.dim, shape.cond_dim
    x, target = torch.randn(b, n, d, generator=g), torch.randn(b, n, d, generator=g)
    signals = Conditioning.from_signals([torch.randn(b, dc, generator=g), torch.randn(b, dc, generator=g)])
    return x, target, signals, Conditioning(per_token=torch.randn(b, n, dc, generator=g))


def _modulating(model: Transformer) -> bool:
    base = (Conditioner.modulate, Conditioner.gate)
    return any((type(c).modulate, type(c).gate) != base for c in model.conditioners())


def train_step_fn(
    model: nn.Module, call: Callable[[], torch.Tensor], target: torch.Tensor, fused: bool = False, bf16: bool = False
):
    """A step closure: forward, MSE loss, backward, AdamW (``fused``: torch's fused CPU kernel;
    ``bf16``: forward and loss under ``torch.autocast("cpu", torch.bfloat16)``, as bf16-mixed does)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if fused else {}))
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        with autocast():
            loss = F.mse_loss(call(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def forward_flops(model: nn.Module, call: Callable[[], torch.Tensor]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def conditioners_section(s: Settings, shapes: list[Shape]) -> dict[str, Any]:
    """Every conditioner vs ``none`` at each shape: parameters, forward FLOPs, step-time ratio."""
    out = {}
    for shape in shapes:
        x, target, signals, per_token = _inputs(shape)
        fns, info = {}, {}
        for name in list_conditioners():
            model = build_transformer(shape, name)
            kind = "tokens" if model.final_cond.reads_tokens else "none" if name == "none" else "vector"
            runs = [(name, kind, signals)]
            if _modulating(model):
                runs.append((f"{name}/per_token", "per_token", per_token))
            for case, kind, cond in runs:
                m = model if case == name else build_transformer(shape, name)
                call = functools.partial(m, x, cond)
                fns[case] = train_step_fn(m, call, target)
                info[case] = {
                    "conditioner": name,
                    "conditioning": kind,
                    "params": count_params(m),
                    "forward_flops": forward_flops(m, call),
                }
        # 17 models per shape: two steps per repeat keep the section near a minute per shape
        raw = time_interleaved(fns, Settings(**{**vars(s), "steps_per_repeat": min(2, s.steps_per_repeat)}))
        rows = []
        base = info["none"]
        for case, stats in summary(raw, "none").items():
            i = info[case]
            rows.append(
                {
                    "id": case,
                    **i,
                    "params_added": i["params"] - base["params"],
                    "forward_flops_added": i["forward_flops"] - base["forward_flops"],
                    "flops_per_token": i["forward_flops"] / shape.tokens,
                    "ms": 1e3 * stats["s"],
                    "ratio": stats["ratio"],
                }
            )
        log(f"conditioners at the {shape.name} shape: done")
        fused = _fused_optimizer_ratios(s, shape, x, target, signals)
        profile = _profile_pair(s, shape, x, target, signals)
        out[shape.name] = {"shape": vars(shape), "rows": rows, "fused_adamw": fused, "profile": profile}
    return out


def _fused_optimizer_ratios(s: Settings, shape: Shape, x, target, signals) -> dict[str, Any]:
    """The target conditioners vs none again, each with torch's fused AdamW (fewer per-tensor ops)."""
    fns = {}
    for name in ("none", *TARGET_CONDITIONERS):
        model = build_transformer(shape, name)
        fns[name] = train_step_fn(model, functools.partial(model, x, signals), target, fused=True)
    stats = summary(time_interleaved(fns, s), "none")
    return {name: {"ms": 1e3 * v["s"], "ratio": v["ratio"]} for name, v in stats.items()}


def _profile_pair(s: Settings, shape: Shape, x, target, signals) -> dict[str, Any]:
    """Where film's extra time goes: thread CPU time by op category, none vs film (one thread)."""
    out = {}
    for name in ("none", "film"):
        model = build_transformer(shape, name)
        out[name] = op_profile(train_step_fn(model, functools.partial(model, x, signals), target), 1 if s.quick else 3)
    return out


# -- 3. the whole step: ours vs x-transformers, compiled, utilisation ---------------------------
def _x_transformers_decoder(shape: Shape, norm: str) -> nn.Module:
    try:
        from x_transformers import Decoder
    except ImportError as err:
        raise ImportError(
            "the step section compares with x-transformers, which is not installed; "
            "pip install 'lightning_film[bench]' (or leave the section out: --sections norms,conditioners,...)"
        ) from err

    torch.manual_seed(0)
    options = {"use_rmsnorm": True} if norm == "rmsnorm" else {}
    return Decoder(
        dim=shape.dim,
        depth=shape.depth,
        heads=shape.heads,
        attn_dim_head=shape.dim // shape.heads,
        ff_mult=4,
        attn_flash=True,
        **options,
    )


def step_section(s: Settings, shapes: list[Shape]) -> dict[str, Any]:
    """Ours (unconditioned) vs an x-transformers Decoder of the same size, per norm; ours compiled;
    FLOPs per step (FlopCounterMode, forward + backward) against the matmul peak of the same run."""
    out: dict[str, Any] = {}
    for shape in shapes:
        g = torch.Generator().manual_seed(2)
        x, target = (
            torch.randn(shape.batch, shape.seq, shape.dim, generator=g),
            torch.randn(shape.batch, shape.seq, shape.dim, generator=g),
        )
        cases: dict[str, tuple[nn.Module, Callable[[], torch.Tensor]]] = {}
        for norm in ("layernorm", "rmsnorm"):
            ours = build_transformer(shape, "none", norm)
            cases[f"ours/{norm}"] = (ours, functools.partial(ours, x, Conditioning()))
            if shape.name == "byte" or norm == "rmsnorm":  # the wider shape keeps the run near 10 minutes
                tanh = build_transformer(shape, "none", norm, activation="gelu_tanh")  # DiT's activation
                cases[f"ours/{norm} (tanh GELU)"] = (tanh, functools.partial(tanh, x, Conditioning()))
            theirs = _x_transformers_decoder(shape, norm)
            cases[f"x_transformers/{norm}"] = (theirs, functools.partial(theirs, x))
        if shape.name == "byte":
            ref = build_transformer(shape, "none", NORM_EXTRA["rmsnorm (reference)"])
            cases["ours/rmsnorm (reference)"] = (ref, functools.partial(ref, x, Conditioning()))
        compiled = {}
        if s.compile and shape.name == "byte":
            whole = build_transformer(shape, "none", "rmsnorm")
            whole.compile()
            compiled["ours/rmsnorm compiled"] = whole
            # regional: each block compiled on its own; the blocks share one code object, so dynamo
            # compiles the first and reuses it for the others (torch's "regional compilation" recipe)
            regional = build_transformer(shape, "none", "rmsnorm")
            for block in regional.blocks:
                block.compile()
            compiled["ours/rmsnorm regional compiled"] = regional
        for name, model in compiled.items():
            cases[name] = (model, functools.partial(model, x, Conditioning()))
        fns = {name: train_step_fn(m, call, target) for name, (m, call) in cases.items()}
        flops = {name: _step_flops(m, call, target) for name, (m, call) in cases.items() if name not in compiled}
        # the same models trained under bf16 autocast (fresh copies: their own optimizer state)
        for norm in ("layernorm", "rmsnorm"):
            ours16 = build_transformer(shape, "none", norm)
            cases[f"ours/{norm} bf16"] = (ours16, functools.partial(ours16, x, Conditioning()))
        theirs16 = _x_transformers_decoder(shape, "rmsnorm")
        cases["x_transformers/rmsnorm bf16"] = (theirs16, functools.partial(theirs16, x))
        for name in ("ours/layernorm", "ours/rmsnorm", "x_transformers/rmsnorm"):
            fns[f"{name} bf16"] = train_step_fn(*cases[f"{name} bf16"], target, bf16=True)
            flops[f"{name} bf16"] = flops[name]
        compile_s, compile_error = {}, None
        for name in compiled:
            start = time.perf_counter()
            try:
                fns[name]()  # compiles forward and backward
            except Exception as err:  # a missing compiler must not cost the rest of the run
                compile_error = f"{type(err).__name__}: {str(err)[:300]}"
                log(f"torch.compile failed, its row is left out: {compile_error}")
                del fns[name], cases[name]
            else:
                compile_s[name] = time.perf_counter() - start
                flops[name] = flops["ours/rmsnorm"]
                log(f"{name}: the {shape.name} transformer compiled in {compile_s[name]:.0f} s")
        fns.update(matmul_fns((256, 512) if s.quick else MM_SIZES))
        raw = time_interleaved(fns, s)
        peak = matmul_peak(raw)
        stats = summary(raw, "ours/rmsnorm")
        rows = []
        for name in cases:
            t = stats[name]["s"]
            rows.append(
                {
                    "model": name,
                    "params": count_params(cases[name][0]),
                    "ms": 1e3 * t,
                    "tokens_per_s": shape.tokens / t,
                    "flops": flops[name],
                    "utilisation": flops[name] / t / peak["flops_per_s"],
                }
            )
        vs = {}
        for norm in ("layernorm", "rmsnorm"):
            for ours_case in [c for c in (f"ours/{norm}", f"ours/{norm} (tanh GELU)") if c in raw]:
                label = norm if ours_case == f"ours/{norm}" else f"{norm}, ours tanh GELU"
                # x-transformers' step time / ours = our tokens/s over theirs
                vs[label] = summary({k: raw[k] for k in (ours_case, f"x_transformers/{norm}")}, ours_case)[
                    f"x_transformers/{norm}"
                ]["ratio"]
        vs["rmsnorm, both bf16 autocast"] = summary(
            {k: raw[k] for k in ("ours/rmsnorm bf16", "x_transformers/rmsnorm bf16")}, "ours/rmsnorm bf16"
        )["x_transformers/rmsnorm bf16"]["ratio"]
        for name in [n for n in compiled if n in raw]:
            how = name.removeprefix("ours/rmsnorm ")
            vs[f"rmsnorm, ours {how}"] = summary({k: raw[k] for k in (name, "x_transformers/rmsnorm")}, name)[
                "x_transformers/rmsnorm"
            ]["ratio"]
            vs[f"{how} over eager (ours, rmsnorm)"] = summary({k: raw[k] for k in ("ours/rmsnorm", name)}, name)[
                "ours/rmsnorm"
            ]["ratio"]
        # the RMSNorm target is a model step, not the op alone: rmsnorm step time / layernorm's
        rms_vs_layernorm = {
            precision: summary(
                {k: raw[k] for k in (f"ours/rmsnorm{tag}", f"ours/layernorm{tag}")}, f"ours/layernorm{tag}"
            )[f"ours/rmsnorm{tag}"]["ratio"]
            for precision, tag in (("fp32", ""), ("bf16 autocast", " bf16"))
        }
        profiles = {}
        for bf16 in (False, True):  # under autocast the casts are ops of their own
            for name in ("ours/rmsnorm", "x_transformers/rmsnorm"):
                m, call = cases[name]
                step = train_step_fn(m, call, target, bf16=bf16)
                profiles[f"{name} bf16" if bf16 else name] = op_profile(step, 1 if s.quick else 2)
        out[shape.name] = {
            "shape": vars(shape),
            "rows": rows,
            "ours_over_x_transformers": vs,
            "rmsnorm_over_layernorm": rms_vs_layernorm,
            "peak": peak,
            "compile_s": compile_s,
            "compile_error": compile_error,
            "profile": profiles,
        }
        log(f"whole step at the {shape.name} shape: done")
    return out


def _step_flops(model: nn.Module, call: Callable[[], torch.Tensor], target: torch.Tensor) -> int:
    """FLOPs of forward + backward (matmuls and attention, as FlopCounterMode counts them)."""
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(call(), target).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# -- 4. scaling of the byte model ---------------------------------------------------------------
def _byte_lm(shape: Shape, dim: int, seq: int) -> nn.Module:
    from lightning_film.models import ByteLM, ByteNet

    args = {k: v for k, v in shape.extra.items() if k in ("variant", "nibble_dim", "acc_dim", "mlp_ratio", "depth")}
    torch.manual_seed(0)
    return ByteLM(ByteNet(**args, dim=dim, num_heads=max(1, dim // 32), seq_len=seq))


def _byte_batch(batch: int, seq: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "bytes": torch.randint(0, 256, (batch, seq + 1), generator=g),
        "nibbles": torch.randint(0, 16, (batch, seq), generator=g),
        "acc": torch.randint(0, 256, (batch, seq), generator=g),
        "mask": torch.ones(batch, seq, dtype=torch.bool),
    }


def byte_step_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """The byte model's training step: masked cross-entropy, backward, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mask = batch["mask"]

    def step() -> None:
        ((model.nll(batch) * mask).sum() / mask.sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _byte_flops(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    with FlopCounterMode(display=False) as counter:
        mask = batch["mask"]
        ((model.nll(batch) * mask).sum() / mask.sum()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def scaling_section(s: Settings, shape: Shape) -> dict[str, Any]:
    """Byte-model step time vs N (D fixed) and vs D (N fixed), interleaved within each sweep."""
    out = {}
    sweeps = {"seq": [(shape.dim, n) for n in s.seq_lens], "width": [(d, shape.seq) for d in s.widths]}
    for sweep, points in sweeps.items():
        fns, flops = {}, {}
        for dim, seq in points:
            model, batch = _byte_lm(shape, dim, seq), _byte_batch(shape.batch, seq)
            key = f"{sweep}={seq if sweep == 'seq' else dim}"
            fns[key] = byte_step_fn(model, batch)
            flops[key] = _byte_flops(model, batch)
        fns.update(matmul_fns((256, 512) if s.quick else MM_SIZES))
        # one step per repeat: the widest model takes seconds per step
        raw = time_interleaved(
            fns, Settings(**{**vars(s), "repeats": max(2, s.repeats // 2), "steps_per_repeat": 1, "warmup": 1})
        )
        peak = matmul_peak(raw)
        rows = []
        for (dim, seq), key in zip(points, [k for k in fns if k.startswith(sweep)]):
            t = statistics.median(repeat_times(raw[key]))
            rows.append(
                {
                    "dim": dim,
                    "seq": seq,
                    "ms": 1e3 * t,
                    "tokens_per_s": shape.batch * seq / t,
                    "flops": flops[key],
                    "utilisation": flops[key] / t / peak["flops_per_s"],
                }
            )
        out[sweep] = {"rows": rows, "peak": peak}
        log(f"scaling vs {sweep}: done")
    return out
