"""``performance.md`` from the JSON result of a run (nothing is measured here; the plots: ``plots.py``)."""

from __future__ import annotations

import math
from typing import Any

TARGET_NORM_SHAPES = ([32, 128, 128], [32, 64, 128])  # the byte and world models' (B, N, D)


def _r(r: dict[str, float]) -> str:
    return f"**{r['median']:.3f}** | {r['q1']:.3f}–{r['q3']:.3f} | {r['min']:.3f}–{r['max']:.3f}"


def _load(values: list[float] | None) -> str:
    return "n/a" if values is None else ", ".join(f"{v:.2f}" for v in values)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# Performance: the CPU training path, what conditioning costs, inference, scaling",
        "",
        "Written by `benchmarks/performance/`; do not edit by hand. Raw numbers: `performance.json`; plots: "
        "`performance.png`, `performance_scaling.png`.",
        "",
        f"- Command: `{res['command']}`" + (" (**quick smoke run: tiny shapes, not results**)" if res["quick"] else ""),
        f"- Date: {res['date']}; commit {res.get('commit', 'not recorded')}; wall time {res['wall_s']:.0f} s",
        f"- Machine: {m['cpu']}, {m['cpu_count']} cores, {m['platform']}; **CPU timings**",
        f"- Software: Python {m['python']}, torch {m['torch']}, **{m['torch_threads']} threads**, "
        f"x-transformers {m.get('x_transformers')}",
        f"- Load average (1, 5, 15 min): {_load(res['load_average_at_start'])} at the start, "
        f"{_load(res['load_average_at_end'])} at the end (above the thread count: other work shared the cores, "
        "and absolute times inflate; the paired ratios much less)",
        "- Timing: every comparison is timed interleaved (`lightning_film.measure.interleaved`: round-robin, start "
        f"rotated per repeat, GC paused), {res['settings']['repeats']} repeats x {res['settings']['steps_per_repeat']} "
        f"steps, {res['settings']['warmup']} warm-up steps dropped; a repeat's time is the median of its steps; a "
        "ratio is taken per repeat against the baseline of the same repeat; the median over repeats is reported with "
        "its IQR and min–max. A training step is forward, loss, backward and an AdamW step (torch's default "
        "single-tensor AdamW unless said otherwise). The C allocator is glibc's default (see the allocator section).",
        '- Op profiles ("where the time goes") are thread CPU time per aten op under one thread '
        "(`time.thread_time` in a `TorchDispatchMode`): they do not count time spent waiting for a core.",
    ]
    lines += _targets(res)
    lines += _norms(res.get("norms"))
    lines += _conditioners(res.get("conditioners"))
    lines += _step(res.get("step"))
    lines += _inference(res.get("inference"))
    lines += _scaling(res.get("scaling"))
    lines += _allocator(res.get("allocator"))
    lines += _precision(res.get("precision"))
    return "\n".join(lines) + "\n"


# -- the summary of targets -----------------------------------------------------------------------
def _targets(res: dict[str, Any]) -> list[str]:
    rows = []
    norms = res.get("norms")
    if norms:
        worst = {}
        for r in norms["rows"]:
            if r["normalizer"] == "rmsnorm":
                worst[tuple(r["shape"])] = r["ratio"]["median"]
        at_models = [v for k, v in worst.items() if list(k) in TARGET_NORM_SHAPES]
        rows.append(
            (
                "rmsnorm forward+backward no slower than layernorm, the op alone (byte and world shapes)",
                ", ".join(f"{tuple(k)}: {v:.3f}x" for k, v in worst.items()),
                _verdict(bool(at_models) and max(at_models) <= 1.0),
            )
        )
    conds = res.get("conditioners")
    if conds:
        for shape, sec in conds.items():
            got = {r["conditioner"]: r["ratio"]["median"] for r in sec["rows"] if r["conditioning"] == "vector"}
            fused = {k: v["ratio"]["median"] for k, v in sec["fused_adamw"].items() if k != "none"}
            # the verdict reads the fused AdamW step: the optimizer both models train with
            vals = [fused[k] for k in ("film", "adaln", "adaln_zero") if k in fused]
            rows.append(
                (
                    f"film, adaln, adaln_zero <= 1.03x `none` (vector, {shape} shape)",
                    "with fused AdamW (the models' optimizer): "
                    + ", ".join(f"{k} {v:.3f}" for k, v in fused.items())
                    + "; with single-tensor AdamW: "
                    + ", ".join(f"{k} {got[k]:.3f}" for k in ("film", "adaln", "adaln_zero") if k in got),
                    _verdict(bool(vals) and max(vals) <= 1.03)
                    + ("" if max(vals, default=0) <= 1.03 else f" (worst by {100 * (max(vals) - 1.03):.1f} points)"),
                )
            )
    step = res.get("step")
    if step:
        for shape, sec in step.items():
            vs = sec["ours_over_x_transformers"]
            # the shipped default (rmsnorm, exact GELU) in fp32 and, where measured, under bf16 autocast
            default = min(vs[n]["median"] for n in ("rmsnorm", "rmsnorm, both bf16 autocast") if n in vs)
            verdict = _verdict(default >= 1.05)
            rows.append(
                (
                    f"ours >= 1.05x x-transformers tokens/s ({shape} shape)",
                    "; ".join(f"{k}: {v['median']:.3f}x" for k, v in vs.items() if "over eager" not in k),
                    verdict,
                )
            )
            rms = sec.get("rmsnorm_over_layernorm")  # absent in results written before it was measured
            if rms:
                worst = max(v["median"] for v in rms.values())
                within = worst > 1.0 and all(v["q1"] <= 1.0 for v in rms.values())  # 1 inside every IQR
                rows.append(
                    (
                        f"rmsnorm model step no slower than layernorm ({shape} shape, step time ratio)",
                        "; ".join(f"{k}: {v['median']:.3f}x (IQR {v['q1']:.3f}-{v['q3']:.3f})" for k, v in rms.items()),
                        _verdict(worst <= 1.0) + (" (1 within the IQR)" if within else ""),
                    )
                )
            fp32 = [r for r in sec["rows"] if r["model"].startswith("ours") and not r["model"].endswith("bf16")]
            best = max(fp32, key=lambda r: r["utilisation"])
            rows.append(
                (
                    f">= 80% of the fp32 matmul peak ({shape} shape; peak {sec['peak']['flops_per_s'] / 1e9:.0f} GFLOP/s)",
                    f"{100 * best['utilisation']:.0f}% ({best['model']})",
                    _verdict(best["utilisation"] >= 0.8),
                )
            )
    scaling = res.get("scaling")
    if scaling:
        reached = [r for r in scaling["width"]["rows"] if r["utilisation"] >= 0.8]
        rows.append(
            (
                "... the width at which the byte model's step reaches 80%",
                f"D = {reached[0]['dim']}"
                if reached
                else f"not within D <= {scaling['width']['rows'][-1]['dim']} (best "
                f"{100 * max(r['utilisation'] for r in scaling['width']['rows']):.0f}%)",
                "",
            )
        )
    inf = res.get("inference")
    if inf:
        b = inf["byte_sampling"]
        rows.append(
            (
                "byte sampling with the KV cache vs without",
                f"{b['cache_speedup']['median']:.2f}x faster; greedy bytes identical: {b['greedy_identical']}",
                _verdict(b["greedy_identical"]),
            )
        )
        kid = inf.get("kid")
        if kid and "skipped" not in kid:
            rows.append(
                (
                    f"KID of {kid['frames']} generated frames <= 120 s (cached real features)",
                    f"{kid['total_s']:.0f} s ({kid['feature']} features)",
                    _verdict(kid["total_s"] <= 120)
                    if kid["frames"] >= 1000 and kid["feature"] == "inception"
                    else "not measured at 1,000 Inception frames",
                )
            )
    out = ["", "## Targets", "", "| target | measured (median ratios) | |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return out


# -- sections -------------------------------------------------------------------------------------
def _norms(sec: dict[str, Any] | None) -> list[str]:
    if not sec:
        return []
    out = [
        "",
        "## 1. Normalizers: forward + backward vs layernorm",
        "",
        '`rmsnorm` (the registered default, `implementation="auto"`): on the CPU in eager mode a hand-derived '
        "backward on LayerNorm's fused kernel (mean 0, RMSNorm's rstd, plus one matrix-vector product for the "
        "term of LayerNorm's mean subtraction); `rmsnorm (reference)`: the definition op by op (autograd's "
        "backward); `F.rms_norm`: torch's op, whose CPU backward is a chain of elementwise ops.",
        "",
        "| shape (B, N, D) | normalizer | ms | ratio to layernorm | IQR | min–max |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in sec["rows"]:
        out.append(f"| {tuple(r['shape'])} | `{r['normalizer']}` | {r['ms']:.3f} | {_r(r['ratio'])} |")
    return out


def _profile_table(profiles: dict[str, dict[str, Any]]) -> list[str]:
    names = list(profiles)
    cats = list(dict.fromkeys(c for p in profiles.values() for c in p["categories_s"]))
    out = ["| op category | " + " | ".join(f"{n} (ms)" for n in names) + " |", "|---|" + "---:|" * len(names)]
    for c in cats:
        out.append(
            f"| {c} | " + " | ".join(f"{1e3 * profiles[n]['categories_s'].get(c, 0.0):.2f}" for n in names) + " |"
        )
    out.append("| **total** | " + " | ".join(f"**{1e3 * profiles[n]['total_s']:.2f}**" for n in names) + " |")
    out.append("| aten ops per step | " + " | ".join(f"{profiles[n]['ops_per_step']:.0f}" for n in names) + " |")
    return out


def _conditioners(sec: dict[str, Any] | None) -> list[str]:
    if not sec:
        return []
    out = ["", "## 2. Conditioners vs `none` (rmsnorm)"]
    for name, s in sec.items():
        sh = s["shape"]
        out += [
            "",
            f"### {name} shape: B {sh['batch']}, N {sh['seq']}, D {sh['dim']}, depth {sh['depth']}, heads "
            f"{sh['heads']}, Dc {sh['cond_dim']}, {'causal' if sh['causal'] else 'bidirectional'}",
            "",
            "Vector rows: `Conditioning.from_signals([a, b])` (token readers get the two as tokens); `per_token` rows: "
            "(B, N, Dc). Forward FLOPs from `FlopCounterMode` (matmuls and attention).",
            "",
            "| conditioner | conditioning | params | added | forward GFLOP | FLOPs/token | step (ms) | step ratio "
            "| IQR | min–max |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in s["rows"]:
            out.append(
                f"| `{r['conditioner']}` | {r['conditioning']} | {r['params']:,} | {r['params_added']:,} | "
                f"{r['forward_flops'] / 1e9:.3f} | {r['flops_per_token'] / 1e6:.2f} M | {r['ms']:.1f} | {_r(r['ratio'])} |"
            )
        out += [
            "",
            "With torch's fused AdamW (`AdamW(fused=True)`: one kernel for all tensors, so the conditioners' "
            "extra parameter tensors cost less per step):",
            "",
            "| conditioner | step (ms) | step ratio | IQR | min–max |",
            "|---|---:|---:|---:|---:|",
        ]
        for k, v in s["fused_adamw"].items():
            out.append(f"| `{k}` | {v['ms']:.1f} | {_r(v['ratio'])} |")
        out += ["", "Where the time goes, `none` vs `film` (thread CPU ms per step, one thread):", ""]
        out += _profile_table(s["profile"])
    return out


def _step(sec: dict[str, Any] | None) -> list[str]:
    if not sec:
        return []
    out = ["", "## 3. The whole step: ours vs x-transformers, compiled, FLOP utilisation"]
    for name, s in sec.items():
        sh, peak = s["shape"], s["peak"]
        out += [
            "",
            f"### {name} shape: B {sh['batch']}, N {sh['seq']}, D {sh['dim']}, depth {sh['depth']}, heads {sh['heads']}, "
            "causal, unconditioned, MSE loss",
            "",
            f"fp32 matmul peak measured in this run (square `torch.mm`, interleaved with the steps): "
            f"**{peak['flops_per_s'] / 1e9:.1f} GFLOP/s** ("
            + ", ".join(f"{n}²: {v / 1e9:.1f}" for n, v in peak["by_size"].items())
            + "). x-transformers: `Decoder(dim, depth, heads, attn_dim_head=dim // heads, ff_mult=4, attn_flash=True)`"
            " (+ `use_rmsnorm=True`); ours has biases on q/k/v and the attention output, theirs not. Their MLP's "
            "GELU is the exact (erf) one, as ours by default; the `(tanh GELU)` rows use DiT's tanh approximation "
            '(`activation="gelu_tanh"`). The `bf16` rows train the same models under `torch.autocast("cpu", '
            "torch.bfloat16)` (as `--trainer.precision bf16-mixed`); their share of the fp32 matmul peak is not a "
            "utilisation.",
            "",
            "| model | params | step (ms) | tokens/s | GFLOP/step | GFLOP/s | of matmul peak |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in s["rows"]:
            out.append(
                f"| {r['model']} | {r['params']:,} | {r['ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['flops'] / 1e9:.2f} | "
                f"{r['flops'] / r['ms'] * 1e3 / 1e9:.1f} | {100 * r['utilisation']:.0f}% |"
            )
        out += [
            "",
            "| tokens/s ratio (per repeat, > 1: ours faster) | median | IQR | min–max |",
            "|---|---:|---:|---:|",
        ]
        for k, v in s["ours_over_x_transformers"].items():
            label = k if "over eager" in k else f"ours / x-transformers, {k}"
            out.append(f"| {label} | {_r(v)} |")
        if s.get("rmsnorm_over_layernorm"):
            out += [
                "",
                "| step time ratio (per repeat, < 1: rmsnorm faster) | median | IQR | min–max |",
                "|---|---:|---:|---:|",
            ]
            out += [f"| ours rmsnorm / ours layernorm, {k} | {_r(v)} |" for k, v in s["rmsnorm_over_layernorm"].items()]
        out += _compile_lines(s)
        if s.get("compile_error"):
            out += ["", f"`torch.compile` failed here, so its row is missing: `{s['compile_error']}`"]
        out += [
            "",
            "Where the time goes, ours vs x-transformers, rmsnorm, fp32 and under bf16 autocast (thread CPU ms per step, one thread):",
            "",
        ]
        out += _profile_table(s["profile"])
    return out


def _compile_lines(s: dict[str, Any]) -> list[str]:
    """Compile time of each compiled row, and the steps it takes to earn it back."""
    compile_s = s.get("compile_s") or {}
    if isinstance(compile_s, (int, float)):  # results written before the regional row
        compile_s = {"ours/rmsnorm compiled": compile_s}
    rows = {r["model"]: r for r in s["rows"]}
    eager = rows.get("ours/rmsnorm")
    out = []
    for name, seconds in compile_s.items():
        if name not in rows or eager is None:
            continue
        saved_ms = eager["ms"] - rows[name]["ms"]
        even = f"earned back after **{seconds * 1e3 / saved_ms:,.0f} steps**" if saved_ms > 0 else "never earned back"
        out += [
            "",
            f"`{name}`: `torch.compile` (inductor, default mode) took **{seconds:.0f} s** (first step, forward and "
            f"backward); it saves {saved_ms:.1f} ms per step against eager (median step times above), so it is "
            f"{even}.",
        ]
    return out


def _inference(sec: dict[str, Any] | None) -> list[str]:
    if not sec:
        return []
    b = sec["byte_sampling"]
    out = [
        "",
        "## 4. Inference",
        "",
        f"### Byte model sampling (greedy, prompt {b['prompt']!r}, seq_len {b['seq_len']}, untrained weights)",
        "",
        "Within the context the cache feeds one byte per step; beyond it the window slides, every position "
        "changes, and both paths re-run the whole window (the cache gives the same bytes, so it cannot help there).",
        "",
        "| case | new bytes | s | bytes/s |",
        "|---|---:|---:|---:|",
    ]
    out += [f"| {r['case']} | {r['new_bytes']} | {r['s']:.3f} | {r['bytes_per_s']:,.1f} |" for r in b["rows"]]
    c = b["cache_speedup"]
    out += [
        "",
        f"Cache speedup within the context: **{c['median']:.2f}x** (IQR {c['q1']:.2f}–{c['q3']:.2f}, min–max "
        f"{c['min']:.2f}–{c['max']:.2f}); greedy bytes with and without the cache identical: "
        f"**{b['greedy_identical']}**.",
    ]
    w = sec.get("world_sampling")
    if w:
        out += [
            "",
            f"### World model: `sample_next` frames/s (batch {w['batch']}, untrained weights, config "
            "`configs/world/base.yaml` sizes)",
            "",
            "| sampler / steps | denoiser calls | s per batch | frames/s |",
            "|---|---:|---:|---:|",
        ]
        out += [f"| {r['case']} | {r['denoiser_calls']} | {r['s']:.3f} | {r['frames_per_s']:,.1f} |" for r in w["rows"]]
    k = sec.get("kid")
    if k and "skipped" in k:
        out += ["", f"### KID: skipped ({k['skipped']})"]
    elif k:
        out += [
            "",
            f"### KID of {k['frames']} generated frames ({k['feature']} features, {k['sampler']} {k['steps']} steps)",
            "",
            f"Sampling {k['sample_s']:.1f} s + features {k['features_s']:.1f} s ({k['features_per_s']:.1f} frames/s) + "
            f"cached real features and KID {k['kid_s']:.1f} s = **{k['total_s']:.1f} s** (not timed: making the real "
            f"features ready beforehand, {k['real_features_s']:.1f} s: "
            + (
                "read from the cache of an earlier run)."
                if k["real_features_s"] < 2
                else "computed and cached in this run)."
            ),
        ]
    return out


def _slopes(rows: list[dict[str, Any]], key: str) -> list[float | None]:
    out: list[float | None] = [None]
    for a, b in zip(rows, rows[1:]):
        out.append(math.log(b["ms"] / a["ms"]) / math.log(b[key] / a[key]))
    return out


def _scaling(sec: dict[str, Any] | None) -> list[str]:
    if not sec:
        return []
    out = [
        "",
        "## 5. Scaling of the byte model's step (B fixed)",
        "",
        "Local slope = d log(step time) / d log(N or D) between neighbouring points. Expected: vs N, 1 while the "
        "per-token matmuls dominate, rising towards 2 as attention (N² per sequence) takes over; vs D, towards 2 "
        "(matmuls, D²) from 1 at small D (per-token elementwise work and attention, N² D).",
        "",
    ]
    for sweep, key in (("seq", "seq"), ("width", "dim")):
        rows = sec[sweep]["rows"]
        out += [
            f"| {'N' if key == 'seq' else 'D'} | step (ms) | tokens/s | GFLOP/step | of matmul peak | local slope |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r, sl in zip(rows, _slopes(rows, key)):
            out.append(
                f"| {r[key]} | {r['ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['flops'] / 1e9:.2f} | "
                f"{100 * r['utilisation']:.0f}% | {'' if sl is None else f'{sl:.2f}'} |"
            )
        out.append("")
    return out


def _allocator(sec: dict[str, Any] | None) -> list[str]:
    if not sec:
        return []
    r = sec["default_over_reuse"]
    return [
        "",
        "## 6. The C allocator",
        "",
        "The byte model's step in fresh processes, alternating glibc's default `malloc` settings and "
        "`lightning_film.callbacks.cpu_memory.reuse_freed_memory()` (freed memory kept for reuse instead of being "
        "unmapped and page-faulted in again next step).",
        "",
        "| malloc | step (ms) | minor page faults per step |",
        "|---|---:|---:|",
        *(f"| {m} | {sec['step_ms'][m]:.1f} | {sec['minor_faults_per_step'][m]:,.0f} |" for m in sec["step_ms"]),
        "",
        "Default / reuse step time, per process pair: " + ", ".join(f"{v:.3f}" for v in r) + ".",
    ]


def _precision(sec: dict[str, Any] | None) -> list[str]:
    if not sec:
        return []
    n, g = sec["matmul_size"], sec["matmul_gflops"]
    rows = [
        f"| matmul {n}^3 | {1000 * sec['matmul']['matmul fp32']['s']:.2f} | {1000 * sec['matmul']['matmul bf16']['s']:.2f} "
        f"| {_r(sec['matmul']['matmul bf16']['ratio'])} | {1 / sec['matmul']['matmul bf16']['ratio']['median']:.2f}x |"
    ]
    for name, st in sec["models"].items():
        rows.append(
            f"| {name} model training step | {1000 * st['fp32']['s']:.1f} | {1000 * st['bf16']['s']:.1f} | "
            f"{_r(st['bf16']['ratio'])} | {1 / st['bf16']['ratio']['median']:.2f}x |"
        )
    return [
        "",
        "## 7. bf16 mixed precision",
        "",
        "What `--trainer.precision bf16-mixed` runs (`lightning-film`'s default where the chip has bf16 units): "
        '`torch.autocast("cpu", torch.bfloat16)` around the step, weights and optimizer state in fp32, attention '
        "on the CPU, normalizer statistics, losses and the diffusion arithmetic in fp32 (`tests/test_bf16.py`). "
        "Each model's step (forward, loss, backward, fused AdamW) at its config's shape, fp32 and bf16 on identical "
        "copies, interleaved. Speed only; quality at equal steps, paired by seed, is trained by the tables: "
        "`benchmarks/results/byte/quick-bf16/paired.md` and "
        "`benchmarks/results/world/world-conditioning/quick-bf16/paired.md`.",
        "",
        f"Matmul rates: fp32 {g['matmul fp32']:.0f} GFLOP/s, bf16 {g['matmul bf16']:.0f} GFLOP/s.",
        "",
        "| case | fp32 (ms) | bf16 (ms) | bf16 / fp32 | IQR | min–max | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
