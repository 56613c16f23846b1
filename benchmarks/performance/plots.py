"""The performance plots (``performance.png``, ``performance_scaling.png``) from the JSON result of a run."""

from __future__ import annotations

import io
from typing import Any


def render_pngs(res: dict[str, Any]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pngs = {}
    title = f"{res['machine']['cpu']}, {res['machine']['torch_threads']} threads, torch {res['machine']['torch']}"
    panels = [p for p in ("norms", "conditioners", "step") if res.get(p)]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 6))
        axes = [axes] if len(panels) == 1 else list(axes)
        for ax, panel in zip(axes, panels):
            {"norms": _plot_norms, "conditioners": _plot_conditioners, "step": _plot_step}[panel](ax, res[panel])
        fig.suptitle(title)
        fig.tight_layout()
        pngs["performance.png"] = _png(fig, plt)
    if res.get("scaling"):
        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        for ax, (sweep, key, label) in zip(
            axes, (("seq", "seq", "N (tokens per sequence)"), ("width", "dim", "D (width)"))
        ):
            rows = res["scaling"][sweep]["rows"]
            xs, ys = [r[key] for r in rows], [r["ms"] for r in rows]
            ax.loglog(xs, ys, "o-", label="measured step time", color="tab:blue")
            for slope, style in ((1, ":"), (2, "--")):
                anchor = 0 if slope == 1 else len(xs) - 1
                ax.loglog(
                    xs,
                    [ys[anchor] * (x / xs[anchor]) ** slope for x in xs],
                    style,
                    color="grey",
                    label=f"slope {slope} ({'linear' if slope == 1 else 'quadratic'})",
                )
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.minorticks_off()
            ax.set_xlabel(label)
            ax.set_ylabel("training step (ms)")
            twin = ax.twinx()
            twin.plot(xs, [100 * r["utilisation"] for r in rows], "s--", color="tab:orange", label="% of matmul peak")
            twin.set_ylabel("% of the fp32 matmul peak", color="tab:orange")
            twin.set_ylim(0, 100)
            ax.legend(loc="upper left", fontsize=8)
        axes[0].set_title("vs sequence length (attention: N² at large N)")
        axes[1].set_title("vs width (matmuls: D²)")
        fig.suptitle("byte model training step, " + title)
        fig.tight_layout()
        pngs["performance_scaling.png"] = _png(fig, plt)
    return pngs


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _plot_norms(ax, sec) -> None:
    rows = sec["rows"]
    labels = [f"{r['normalizer']} {tuple(r['shape'])}" for r in rows]
    med = [r["ratio"]["median"] for r in rows]
    ax.barh(range(len(rows)), med, color=["tab:green" if r["normalizer"] == "rmsnorm" else "tab:blue" for r in rows])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("forward+backward time / layernorm")
    ax.set_title("normalizers")


def _plot_conditioners(ax, sec) -> None:
    labels, vals, colours = [], [], []
    for i, (shape, s) in enumerate(sec.items()):
        for r in s["rows"]:
            labels.append(f"{shape}: {r['id']}")
            vals.append(r["ratio"]["median"])
            colours.append(("tab:blue", "tab:purple")[i % 2])
    ax.barh(range(len(vals)), vals, color=colours)
    ax.axvline(1.03, color="red", linewidth=0.8, linestyle="--")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(vals)), labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("training-step time / none (red: the 3% target)")
    ax.set_title("conditioners")


def _plot_step(ax, sec) -> None:
    names, cats = [], []
    for shape, s in sec.items():
        for model, p in s["profile"].items():
            names.append(f"{shape}: {model}")
            cats.append(p["categories_s"])
    keys = list(dict.fromkeys(k for c in cats for k in c))
    left = [0.0] * len(names)
    for k in keys:
        vals = [1e3 * c.get(k, 0.0) for c in cats]
        ax.barh(range(len(names)), vals, left=left, label=k)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("thread CPU ms per training step (one thread)")
    ax.legend(fontsize=7)
    ax.set_title("where the step's time goes")
