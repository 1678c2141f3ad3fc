"""`began-dist report RUN_DIR [RUN_DIR ...]`: a self-contained HTML page about one run, or several side by side.

Reads what a run directory says about itself (config.yaml, stats.jsonl,
metric-<name>.jsonl, samples/step-XXXXXXXX.png, checkpoints/) and writes one
HTML file with every image embedded: a summary table; curves of L(x), L(G(z)),
k_t, M and lr; every metric over steps with its real-data reference; the fixed-z
grid at several steps and an animated GIF of its progression; held-out images
and their reconstructions; the config (for several runs, the keys that differ).
Several runs share each plot, one colour per run.
"""

from __future__ import annotations

import html
import json
import re
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from omegaconf import OmegaConf

from began_dist import storage
from began_dist.data import load_examples
from began_dist.data.dataset import to_model_range
from began_dist.eval.metrics.recon import heldout_images
from began_dist.eval.reports import agreement
from began_dist.eval.reports.embed import figure_html, gif_uri, grid_figure, open_image, png_uri, shown_width
from began_dist.eval.reports.plots import METRICS, metric_names, run_plots
from began_dist.images import grid_image
from began_dist.train import state as ckpt
from began_dist.train.runs import load_run

PROGRESSION_STEPS = 6  # fixed-z grids shown as stills
RECON_IMAGES = 16
_STEP_PNG = re.compile(r"step-(\d+)\.png$")


@dataclass
class Run:
    path: str
    name: str
    config: dict
    config_text: str
    stats: list[dict]
    metrics: dict[str, list[dict]] = field(default_factory=dict)
    samples: list[tuple[int, str]] = field(default_factory=list)


def _jsonl(path: str) -> list[dict]:
    rows = []
    for line in storage.read_text(path).splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a torn last line
    return rows


def _by_step(rows: list[dict]) -> list[dict]:
    """One row per step (the last written wins), in step order."""
    return sorted({row["step"]: row for row in rows if "step" in row}.values(), key=lambda row: row["step"])


def load(run_dir: str) -> Run:
    config_path = storage.join(run_dir, "config.yaml")
    if not storage.isfile(config_path):
        raise FileNotFoundError(f"{run_dir}: no config.yaml; is it a run directory?")
    text = storage.read_text(config_path)
    stats_path = storage.join(run_dir, "stats.jsonl")
    run = Run(
        path=run_dir,
        name=storage.basename(run_dir),
        config=OmegaConf.to_container(OmegaConf.create(text)),
        config_text=text,
        stats=_by_step(_jsonl(stats_path)) if storage.isfile(stats_path) else [],
    )
    for path in storage.glob(run_dir, "metric-*.jsonl"):
        name = storage.basename(path)[len("metric-") : -len(".jsonl")]
        run.metrics[name] = _by_step(_jsonl(path))
    for path in storage.glob(storage.join(run_dir, "samples"), "step-*.png"):
        match = _STEP_PNG.search(path)
        if match:
            run.samples.append((int(match.group(1)), path))
    run.samples.sort()
    return run


# -- sections -------------------------------------------------------------------------------
def _last(rows: list[dict], key: str) -> str:
    for row in reversed(rows):
        if key in row:
            return f"{row[key]:.4g}"
    return "&ndash;"


def _summary(runs: list[Run]) -> str:
    head = ["run", "family", "size", "gamma", "steps", "M", "k_t", "images/s", "train time"]
    names = metric_names(runs)
    head += [f"{name} ({METRICS[name][3]})" if name in METRICS else name for name in names]
    rows = []
    for run in runs:
        model, train = run.config.get("model", {}), run.config.get("train", {})
        last = run.stats[-1] if run.stats else {}
        cells = [
            html.escape(run.name),
            model.get("family", "?"),
            f"{model.get('image_size', '?')} px",
            str(train.get("gamma", "?")),
            f"{last.get('step', 0)} / {train.get('steps', '?')}",
            _last(run.stats, "M"),
            _last(run.stats, "k_t"),
            _last(run.stats, "images_per_s"),
            f"{last.get('time_s', 0) / 60:.1f} min",
        ]
        for name in names:
            rows_of = run.metrics.get(name, [])
            _, headline, reference, _ = METRICS.get(name, (name, name, "", ""))
            cells.append(
                f"{_last(rows_of, headline)} ({_last(rows_of, reference)})" if reference else _last(rows_of, headline)
            )
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    return f"<table class='summary'>{header}{''.join(rows)}</table>"


def progression(run: Run) -> str:
    if not run.samples:
        return "<p class='note'>No sample grids yet (samples/step-XXXXXXXX.png, written every train.sample_every).</p>"
    count = len(run.samples)
    shown = min(PROGRESSION_STEPS, count)
    picks = sorted({round(i * (count - 1) / max(1, shown - 1)) for i in range(shown)})
    stills = [grid_figure(run.samples[i][1], f"step {run.samples[i][0]}") for i in picks]
    gif = gif_uri([path for _, path in run.samples])
    if gif:
        width = shown_width(open_image(run.samples[-1][1]))
        stills.append(figure_html(gif, f"animation, {count} grids", width_px=width))
    return "<div class='row'>" + "".join(stills) + "</div>"


def _reconstructions(run: Run) -> str:
    if not ckpt.list_checkpoints(run.path):
        return "<p class='note'>No checkpoint to reconstruct with.</p>"
    cfg, family, step = load_run(run.path)
    images = heldout_images(cfg, RECON_IMAGES)
    which = "held-out"
    if images is None:
        images, which = load_examples(cfg, RECON_IMAGES), "training"
    x = to_model_range(images, family.device)
    with torch.no_grad():
        pairs = torch.cat([x, family.reconstruct(x)]).cpu()
    picture = grid_image(pairs, columns=RECON_IMAGES, scale=3 if cfg.model.image_size <= 32 else 2)
    return figure_html(png_uri(picture), f"step {step}: {which} images (top) and their reconstructions D(x) (bottom)")


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config(runs: list[Run]) -> str:
    if len(runs) == 1:
        return f"<pre>{html.escape(runs[0].config_text)}</pre>"
    flat = [_flatten(run.config) for run in runs]
    keys = sorted({k for f in flat for k in f if k != "run.dir" and len({repr(g.get(k)) for g in flat}) > 1})
    head = "<tr><th>key</th>" + "".join(f"<th>{html.escape(run.name)}</th>" for run in runs) + "</tr>"
    body = "".join(
        f"<tr><td>{k}</td>" + "".join(f"<td>{html.escape(str(f.get(k, '')))}</td>" for f in flat) + "</tr>"
        for k in keys
    )
    full = "".join(
        f"<details><summary>{html.escape(run.name)}: config.yaml</summary>"
        f"<pre>{html.escape(run.config_text)}</pre></details>"
        for run in runs
    )
    return f"<h3>Keys that differ</h3><table class='summary'>{head}{body}</table>{full}"


STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 24px auto; max-width: 1500px;
       padding: 0 16px; color: #222; background: #fafafa; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 17px; margin-top: 30px; border-bottom: 1px solid #ddd; }
h3 { font-size: 14px; } .meta, .note { color: #666; font-size: 13px; }
table.summary { border-collapse: collapse; font-size: 13px; background: #fff; }
table.summary td, table.summary th { border: 1px solid #ddd; padding: 4px 8px; text-align: left; }
table.summary td { white-space: nowrap; }
table.summary th { background: #f0f0f0; font-weight: 600; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 10px; }
.grid img { width: 100%; background: #fff; border: 1px solid #e4e4e4; }
.row { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; text-align: center; margin-top: 3px; }
img.pixel { image-rendering: pixelated; border: 1px solid #ccc; }
img.recon { image-rendering: pixelated; max-width: 100%; border: 1px solid #ccc; }
pre { background: #fff; border: 1px solid #ddd; padding: 10px; font-size: 12px; overflow-x: auto; }
details { margin: 6px 0; }
"""


def render(runs: list[Run]) -> str:
    curves, metrics = run_plots(runs)
    title = "BEGAN run report: " + ", ".join(run.name for run in runs)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='meta'>{'<br>'.join(html.escape(storage.resolve(run.path)) for run in runs)}<br>"
        f"written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
        "<h2>Summary</h2>",
        _summary(runs),
        "<p class='note'>Metric cells: latest value (reference in brackets). M = L(x) + |gamma L(x) - L(G(z))| "
        "tracks convergence within one configuration; SWD compares across gamma and model size.</p>",
        "<h2>Training curves</h2><div class='grid'>" + "".join(f"<img src='{c}'>" for c in curves) + "</div>",
        "<h2>Sample-quality metrics</h2>",
    ]
    if metrics:
        parts.append("<div class='grid'>" + "".join(f"<img src='{m}'>" for m in metrics) + "</div>")
        parts += [agreement.run_note(run.stats, run.metrics) for run in runs]
    else:
        parts.append(
            "<p class='note'>No metric-*.jsonl yet: run <code>began-dist eval RUN_DIR</code> "
            "or train with <code>train.eval_every</code>.</p>"
        )
    if len(runs) > 1:
        latest = [
            grid_figure(run.samples[-1][1], f"{html.escape(run.name)}, step {run.samples[-1][0]}")
            for run in runs
            if run.samples
        ]
        parts.append("<h2>Latest fixed-z samples, side by side</h2><div class='row'>" + "".join(latest) + "</div>")
    for run in runs:
        label = f" &middot; {html.escape(run.name)}" if len(runs) > 1 else ""
        parts.append(f"<h2>Fixed-z samples over training{label}</h2>{progression(run)}")
        parts.append(f"<h2>Reconstructions{label}</h2>{_reconstructions(run).replace('pixel', 'recon')}")
    parts.append(f"<h2>Config</h2>{_config(runs)}</body></html>")
    return "\n".join(parts)


def write_report(run_dirs: list[str], out: Optional[str] = None) -> str:
    """Write the report of one or several runs, or of a sweep; returns its path (default: the first's report.html)."""
    from began_dist.eval.reports.sweep import is_sweep, write_sweep_report

    if len(run_dirs) == 1 and is_sweep(run_dirs[0]):
        return write_sweep_report(run_dirs[0], out or "")
    runs = [load(run_dir) for run_dir in run_dirs]
    out = out or storage.join(run_dirs[0], "report.html")
    storage.write_text(out, render(runs))
    return out
