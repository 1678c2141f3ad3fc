"""The report's plots (matplotlib): training curves and metrics over steps, one colour per run."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from began_dist.eval.reports.embed import data_uri  # noqa: E402

if TYPE_CHECKING:
    from began_dist.eval.reports.run import Run

CURVES = (  # (panel title, [(stats.jsonl key, label)], log-scale y)
    ("Reconstruction losses", [("L_x", "L(x)"), ("L_Gz", "L(G(z))")], False),
    ("Convergence measure M", [("M", "M")], False),
    ("Equilibrium term k_t", [("k_t", "k_t")], False),
    ("Learning rate", [("lr_G", "lr")], True),
    ("VAE-GAN: pixel L1 of G(z~)", [("L_pix", "L_pix")], False),  # vaegan's keys: BEGAN runs have none
    ("VAE-GAN: KL and feature losses", [("L_kl", "KL"), ("L_feat", "L_feat")], True),
)
METRICS = {  # metric -> (panel title, headline key, reference key, what the reference is)
    "swd": ("SWD x1e3 (lower is better)", "swd", "swd_floor", "real vs real floor"),
    "msssim": ("MS-SSIM of pairs (lower = more diverse)", "msssim", "msssim_real", "real pairs"),
    "ndb": ("NDB / K: share of different bins (lower is better)", "ndb", "ndb_real", "second real sample"),
    "recon": ("L1 reconstruction of held-out images", "recon", "recon_train", "training images"),
    "kid": ("KID on GlyphNet features (lower is better)", "kid", "kid_real", "real vs real"),
}
COLOURS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def figure_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return data_uri(buffer.getvalue(), "image/png")


def panel(title: str, runs: list[Run], series, log_y: bool = False) -> Optional[str]:
    """One plot; `series(run)` yields (steps, values, label, line style) for a run. None when nothing to plot."""
    figure, axes = plt.subplots(figsize=(4.6, 3.0))
    plotted = False
    for i, run in enumerate(runs):
        colour = COLOURS[i % len(COLOURS)] if len(runs) > 1 else None  # one colour per run
        for steps, values, label, style in series(run):
            if not steps:
                continue
            name = f"{run.name}: {label}" if len(runs) > 1 else label
            marker = "o" if len(steps) < 12 else None
            axes.plot(steps, values, style, color=colour, marker=marker, markersize=3, linewidth=1.3, label=name)
            plotted = True
    if not plotted:
        plt.close(figure)
        return None
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("step", fontsize=9)
    axes.tick_params(labelsize=8)
    axes.grid(alpha=0.3)
    if log_y:
        axes.set_yscale("log")
    else:
        axes.ticklabel_format(axis="y", useOffset=False)
    axes.legend(fontsize=7, frameon=False)
    return figure_uri(figure)


def _curve(key: str, label: str, style: str):
    def series(run: Run):
        rows = [row for row in run.stats if key in row]
        yield [row["step"] for row in rows], [row[key] for row in rows], label, style

    return series


def _metric_series(name: str):
    _, headline, reference, reference_label = METRICS.get(name, (name, name, "", ""))

    def series(run: Run):
        rows = run.metrics.get(name, [])
        for key, label, style in ((headline, name, "-"), (reference, reference_label, "--")):
            kept = [row for row in rows if key in row]
            yield [row["step"] for row in kept], [row[key] for row in kept], label, style

    return series


def run_plots(runs: list[Run]) -> tuple[list[str], list[str]]:
    curves = []
    for title, keys, log_y in CURVES:

        def series(run: Run, keys=keys):
            for (key, label), style in zip(keys, ("-", ":")):
                yield from _curve(key, label, style)(run)

        curves.append(panel(title, runs, series, log_y))
    names = metric_names(runs)
    metrics = [panel(METRICS.get(name, (name,))[0], runs, _metric_series(name)) for name in names]
    return [c for c in curves if c], [m for m in metrics if m]


def metric_names(runs: list[Run]) -> list[str]:
    """Metrics any run has: the built-in ones in their order, then others by name."""
    order = list(METRICS)
    found = {name for run in runs for name in run.metrics}
    return sorted(found, key=lambda name: (order.index(name) if name in order else len(order), name))
