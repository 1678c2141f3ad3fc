"""`began-dist report SWEEP_DIR`: one page about a Tune sweep (see began_dist/tune/sweep.py).

The results table (best first); M and SWD against each searched key, one point per
trial, because M alone is confounded across gamma and Nh; every trial's curves on
shared axes; the best trial's fixed-z samples over training.
"""

from __future__ import annotations

import csv
import html
import io
import time

import matplotlib.pyplot as plt
import yaml

from began_dist import storage
from began_dist.eval.reports import agreement
from began_dist.eval.reports import run as run_report
from began_dist.eval.reports.plots import figure_uri, run_plots
from began_dist.tune.spec import read_saved_spec

STATUS_MARKERS = {"done": "o", "stopped early": "x", "non-finite": "s"}


def is_sweep(path: str) -> bool:
    return storage.isfile(storage.join(path, "sweep.yaml")) and storage.isfile(storage.join(path, "results.csv"))


def _rows(sweep_dir: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(storage.read_text(storage.join(sweep_dir, "results.csv")), newline="")))


def _number(text: str):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _against(group: str, rows: list[dict], metric: str) -> str:
    """`metric` of each trial against its value of `group` (categorical for tied keys and lists)."""
    figure, axes = plt.subplots(figsize=(4.6, 3.0))
    xs = [_number(row[group]) for row in rows]
    categorical = any(x is None for x in xs)
    labels = sorted({row[group] for row in rows}) if categorical else []
    for status, marker in STATUS_MARKERS.items():
        points = [
            (labels.index(row[group]) if categorical else x, _number(row.get(metric)))
            for row, x in zip(rows, xs)
            if row["status"] == status and _number(row.get(metric)) is not None
        ]
        if points:
            axes.scatter(*zip(*points), marker=marker, label=status)
    if categorical:
        axes.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
    axes.set_xlabel(group)
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} against {group}", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return figure_uri(figure)


def _table(rows: list[dict]) -> str:
    columns = [key for key in rows[0] if key != "checkpoint"] if rows else []
    head = "<tr>" + "".join(f"<th>{html.escape(key)}</th>" for key in columns) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(key)))}</td>" for key in columns) + "</tr>" for row in rows
    )
    return f"<table class='summary'>{head}{body}</table>"


def _cell(text) -> str:
    value = _number(text)
    return f"{value:.4g}" if value is not None and "." in str(text) else str(text if text not in ("", None) else "-")


def render(sweep_dir: str) -> str:
    spec = read_saved_spec(storage.join(sweep_dir, "sweep.yaml"))
    rows = _rows(sweep_dir)
    title = f"Tune sweep report: {spec.name or storage.basename(sweep_dir)}"
    trials = [
        run_report.load(storage.join(sweep_dir, "trials", row["trial"]))
        for row in rows
        if storage.isfile(storage.join(sweep_dir, "trials", row["trial"], "config.yaml"))
    ]
    plotted = dict.fromkeys((spec.metric, "M", "swd"))
    plots = [_against(group, rows, metric) for group in spec.space for metric in plotted]
    curves, metrics = run_plots(trials)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{run_report.STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='meta'>{html.escape(storage.resolve(sweep_dir))}<br>objective {spec.metric} ({spec.mode}), "
        f"scheduler {html.escape(str(spec.scheduler))}, {len(rows)} trials; "
        f"written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
        "<h2>Results (best first)</h2>",
        _table(rows),
        agreement.sweep_note(rows, spec.metric, spec.mode),
        "<p class='note'>Last reported values. M is confounded across gamma and Nh (at equilibrium M is about "
        "L(x)); SWD (x1e3, lower is better) compares sample quality across them.</p>",
        "<h2>Objective and SWD against the searched keys</h2>",
        "<div class='grid'>" + "".join(f"<img src='{p}'>" for p in plots) + "</div>",
        "<h2>Every trial's curves</h2><div class='grid'>"
        + "".join(f"<img src='{c}'>" for c in curves + metrics)
        + "</div>",
    ]
    if rows and trials:
        best = next((run for run in trials if run.name == rows[0]["trial"]), trials[0])
        checkpoint = html.escape(rows[0].get("checkpoint") or "-")
        parts.append(f"<h2>Best trial {html.escape(best.name)}: fixed-z samples over training</h2>")
        parts.append(f"<p class='meta'>checkpoint {checkpoint}</p>{run_report.progression(best)}")
    spec_text = yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True)
    parts.append(f"<h2>Spec</h2><pre>{html.escape(spec_text)}</pre></body></html>")
    return "\n".join(parts)


def write_sweep_report(sweep_dir: str, out: str = "") -> str:
    out = out or storage.join(sweep_dir, "report.html")
    storage.write_text(out, render(sweep_dir))
    return out
