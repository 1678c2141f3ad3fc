"""Does M agree with an evaluation metric? Spearman's rank correlation within a run and across a sweep.

The paper (section 3.4.1) offers M as a measure of convergence that tracks image quality;
docs/evaluation.md and docs/tune.md test that against KID and SWD. Within one run, M is the
mean of the logged M over the `M_WINDOW` steps up to each evaluated checkpoint (one logged M
is one step's value, noisy); across a sweep, each trial's last reported M and metric.
"""

from __future__ import annotations

import html
import math
from typing import Optional

M_WINDOW = 100  # steps of logged M averaged at each checkpoint


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank (as Spearman's rho needs)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            out[i] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks; nan for fewer than 3 pairs or a constant side."""
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} values against {len(b)}")
    if len(a) < 3:
        return math.nan
    ra, rb = ranks(a), ranks(b)
    mean_a, mean_b = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - mean_a) * (y - mean_b) for x, y in zip(ra, rb))
    norm = math.sqrt(sum((x - mean_a) ** 2 for x in ra) * sum((y - mean_b) ** 2 for y in rb))
    return cov / norm if norm else math.nan


def m_at_checkpoints(stats: list[dict], steps: list[int], window: int = M_WINDOW) -> list[Optional[float]]:
    """Mean logged M over (step - window, step] for each step; None where nothing was logged."""
    means = []
    for step in steps:
        values = [row["M"] for row in stats if "M" in row and step - window < row["step"] <= step]
        means.append(sum(values) / len(values) if values else None)
    return means


def within_run(stats: list[dict], metric_rows: list[dict], metric: str) -> tuple[int, float]:
    """(checkpoints compared, Spearman(M, metric)) over a run's evaluated checkpoints after step 0."""
    rows = [row for row in metric_rows if row.get("step", 0) > 0 and metric in row]
    means = m_at_checkpoints(stats, [row["step"] for row in rows])
    pairs = [(m, row[metric]) for m, row in zip(means, rows) if m is not None]
    return len(pairs), spearman([m for m, _ in pairs], [v for _, v in pairs]) if pairs else math.nan


def describe(rho: float, count: int, what: str, unit: str = "checkpoints") -> str:
    if math.isnan(rho):
        return f"Spearman(M, {what}): too few {unit} ({count})"
    return f"Spearman(M, {what}) over {count} {unit}: {rho:.2f}"


def run_note(stats: list[dict], metrics: dict[str, list[dict]]) -> str:
    """One line per lower-is-better quality metric of a run: does M rank its checkpoints the same way?"""
    lines = []
    for name in ("kid", "swd", "fid"):
        if name in metrics:
            count, rho = within_run(stats, metrics[name], name)
            lines.append(html.escape(describe(rho, count, name)))
    if not lines:
        return ""
    return (
        "<p class='note'>" + "<br>".join(lines) + f"<br>(M averaged over the {M_WINDOW} steps up to each checkpoint; "
        "1 = M orders the checkpoints as the metric does; docs/evaluation.md)</p>"
    )


def sweep_note(rows: list[dict], metric: str, mode: str) -> str:
    """Across trials: Spearman of last M against the objective, and whether M's best trial is the objective's."""
    if metric == "M":
        return ""
    usable = [row for row in rows if _float(row.get("M")) is not None and _float(row.get(metric)) is not None]
    if len(usable) < 2:
        return ""
    m_values, values = [_float(row["M"]) for row in usable], [_float(row[metric]) for row in usable]
    sign = 1 if mode == "min" else -1
    by_m = min(usable, key=lambda row: _float(row["M"]))["trial"]
    by_metric = min(usable, key=lambda row: sign * _float(row[metric]))["trial"]
    rho = spearman(m_values, [sign * v for v in values])
    verdict = "the same trial" if by_m == by_metric else f"{by_m}, where {metric} picks {by_metric}"
    return (
        f"<p class='note'>{html.escape(describe(rho, len(usable), metric, 'trials'))}; "
        f"lowest M picks {html.escape(verdict)}.</p>"
    )


def _float(text) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value
