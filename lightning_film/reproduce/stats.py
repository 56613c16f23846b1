"""Is a gap between two rows real? Confidence intervals over seeds and paired tests, for every table.

- :func:`interval`: a row's mean and the 95% confidence interval of it (Student t over the seeds);
  one seed has no interval (``half`` is ``None``; never a fake ``± 0``).
- :func:`compare`: paired comparisons of rows over the seeds both share (a paired t-test on the
  per-seed differences): the mean difference, its 95% CI, the p-value and a verdict word,
  ``established`` (the CI excludes 0: p < 0.05), ``not established``, or ``n/a`` (< 2 shared seeds).
- :func:`holm`: Holm's step-down correction over one table's comparisons (the verdict then reads
  the adjusted p, so the family of pairs keeps its 5% error rate; an established pair's
  unadjusted CI excludes 0 too).
- :func:`fmt_ci` and :func:`paired_section`: the cells and the markdown section all tables share.

The t distribution's degrees of freedom are always a whole number here (seeds - 1), so its CDF has
a closed form (Abramowitz & Stegun 26.7.3-4) and needs no scipy; the tests check it against
``scipy.stats``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "LEVEL",
    "compare",
    "fmt_ci",
    "fmt_p",
    "holm",
    "interval",
    "paired",
    "paired_section",
    "t_cdf_abs",
    "t_quantile",
    "two_sided_p",
]

LEVEL = 0.95


def t_cdf_abs(t: float, df: int) -> float:
    """P(|T| <= t) for Student's T with ``df`` (a whole number >= 1) degrees of freedom, t >= 0."""
    if df < 1 or df != int(df):
        raise ValueError(f"df must be a whole number >= 1, got {df}")
    if math.isinf(t):
        return 1.0
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, total, term = math.cos(theta) ** 2, 1.0, 1.0
    if df % 2:  # odd: 2/pi (theta + sin cos (1 + 2/3 c2 + 2*4/(3*5) c2^2 + ...))
        if df == 1:
            return 2 * theta / math.pi
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * c2
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    for k in range(1, df // 2):  # even: sin (1 + 1/2 c2 + 1*3/(2*4) c2^2 + ...)
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return math.sin(theta) * total


def two_sided_p(t: float, df: int) -> float:
    return max(0.0, 1.0 - t_cdf_abs(abs(t), df))


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| <= t) = ``level`` (0.95 -> the 97.5% quantile), by bisection."""
    lo, hi = 0.0, 1.0
    while t_cdf_abs(hi, df) < level:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf_abs(mid, df) < level else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


def interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean and 95% CI over seeds: {"n", "mean", "half", "low", "high"}; ``half`` etc. ``None`` for one seed."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "half": None, "low": None, "high": None}
    mean = statistics.fmean(values)
    if n < 2:
        return {"n": 1, "mean": mean, "half": None, "low": None, "high": None}
    half = t_quantile(LEVEL, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return {"n": n, "mean": mean, "half": half, "low": mean - half, "high": mean + half}


def _verdict(p: float | None) -> str:
    return "n/a" if p is None else "established" if p < 1 - LEVEL else "not established"


def paired(a: Mapping[Any, float], b: Mapping[Any, float]) -> dict[str, Any]:
    """``a - b`` over the seeds (keys) both have: paired t-test. {"seeds", "n", "diff", "half", "low",
    "high", "t", "p", "verdict"}; fewer than 2 shared seeds: no test (``p`` ``None``, verdict ``n/a``)."""
    seeds = [s for s in a if s in b]
    diffs = [a[s] - b[s] for s in seeds]
    out = {"seeds": seeds, **interval(diffs), "t": None, "p": None}
    out["diff"] = out.pop("mean")
    if len(diffs) >= 2:
        sd = statistics.stdev(diffs)
        if sd > 0:
            out["t"] = out["diff"] / (sd / math.sqrt(len(diffs)))
            out["p"] = two_sided_p(out["t"], len(diffs) - 1)
        else:  # every seed moved by exactly the same amount: no noise to weigh it against
            out["t"], out["p"] = (0.0, 1.0) if out["diff"] == 0 else (math.copysign(math.inf, out["diff"]), 0.0)
    out["verdict"] = _verdict(out["p"])
    return out


def compare(
    rows: Mapping[str, Mapping[Any, float]], reference: str | None = None, metric: str = ""
) -> list[dict[str, Any]]:
    """Paired comparisons of ``rows`` (name -> seed -> value): each row against ``reference``
    (``row - reference``), or without one every pair (``later - earlier``)."""
    names = [n for n in rows if rows[n]]
    if reference is not None:
        pairs = [(n, reference) for n in names if n != reference] if reference in names else []
    else:
        pairs = [(b, a) for i, a in enumerate(names) for b in names[i + 1 :]]
    return [{"metric": metric, "a": a, "b": b, **paired(rows[a], rows[b])} for a, b in pairs]


def holm(comparisons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Holm-adjust the p-values of one table's comparisons (``p_holm``) and take the verdict from it."""
    tested = sorted((c for c in comparisons if c["p"] is not None), key=lambda c: c["p"])
    running = 0.0
    for i, c in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - i) * c["p"]))
        c["p_holm"] = running
    for c in comparisons:
        c.setdefault("p_holm", None)
        c["verdict"] = _verdict(c["p_holm"])
    return comparisons


def fmt_ci(values: Sequence[float] | None, digits: int = 3, signed: bool = False, unit: str = "") -> str:
    """``mean ± 95% CI half-width``; one seed: the value alone; none: ``–``."""
    if not values:
        return "–"
    ci = interval(values)
    mean = f"{ci['mean']:+.{digits}f}" if signed else f"{ci['mean']:.{digits}f}"
    return mean + unit + (f" ± {ci['half']:.{digits}f}{unit}" if ci["half"] is not None else "")


def fmt_p(p: float | None) -> str:
    return "–" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def paired_section(
    comparisons: list[dict[str, Any]], digits: Mapping[str, int] | int = 3, names: Mapping[str, str] | None = None
) -> list[str]:
    """The "Paired comparisons" markdown section of a table: one line per comparison (already
    :func:`holm`-adjusted) and the note on how to read it."""
    if not comparisons:
        return []
    lines = [
        "## Paired comparisons",
        "",
        f"Per pair, over the seeds both rows share: the mean per-seed difference (first − second), its "
        f"{LEVEL:.0%} CI (paired t), the p-value and the same p Holm-adjusted over all {len(comparisons)} "
        "comparisons of this table. **established**: Holm-adjusted p < 0.05 (the difference's CI excludes 0); "
        "**not established**: the seeds do not separate the rows; **n/a**: fewer than 2 shared seeds, no test.",
        "",
        "| metric | first − second | seeds | difference | 95% CI | p | p (Holm) | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in comparisons:
        d = digits if isinstance(digits, int) else digits.get(c["metric"], 3)
        diff = "–" if c["diff"] is None else f"{c['diff']:+.{d}f}"
        ci = "–" if c["half"] is None else f"[{c['low']:+.{d}f}, {c['high']:+.{d}f}]"
        metric = (names or {}).get(c["metric"], c["metric"])
        lines.append(
            f"| {metric} | {c['a']} − {c['b']} | {c['n']} | {diff} | {ci} | {fmt_p(c['p'])} | "
            f"{fmt_p(c['p_holm'])} | {c['verdict']} |"
        )
    return [*lines, ""]
