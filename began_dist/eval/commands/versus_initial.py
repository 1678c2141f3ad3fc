"""A run's latest checkpoint against its own initial weights, on the same metrics: `make demo`'s last lines.

    python -m began_dist.eval.commands.versus_initial RUN_DIR [--metrics kid,swd] [--n 512]

Rebuilds the initial weights from the run's seed (as training did: the same seed before
the networks are built), scores them and the latest checkpoint on the same real sample and
latents, records the initial weights as step 0 in RUN_DIR/metric-<name>.jsonl (so the
report's metric curves start where training started), and prints one table. A metric
that is not below the initial weights' says the run has not yet learned what the metric
sees (docs/evaluation.md: a blurred mean scores worse than the initial noise in SWD).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import torch

from began_dist.data import build_dataset
from began_dist.eval.metrics import check_prerequisites, parse_metrics
from began_dist.eval.metrics.evaluate import evaluate_family, metric_path
from began_dist.families import get_family
from began_dist.train.runs import load_run


def initial_family(cfg):
    """The family exactly as training built it before step 1 (train/loop.py: seed, then the networks)."""
    torch.manual_seed(cfg.train.seed)
    family = get_family(cfg.model.family)(cfg, torch.device("cpu"))
    family.set_step(0)
    return family


def recorded(run_dir: str, name: str, step: int, n: int) -> Optional[dict]:
    """The last line of metric-<name>.jsonl for this step and n (`began-dist eval` wrote it), if any."""
    if not os.path.isfile(metric_path(run_dir, name)):
        return None
    with open(metric_path(run_dir, name)) as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    return next((line for line in reversed(lines) if line["step"] == step and line["n"] == n), None)


def compare(run_dir: str, metrics: list[str], n: int) -> tuple[int, list[dict], list[dict]]:
    """(latest step, its results, the initial weights' results), both recorded in the run directory.

    Metric sampling is seeded, so a line `began-dist eval` already wrote for the latest checkpoint at
    this n is the figure a new evaluation would give: it is reused, not recomputed.
    """
    check_prerequisites(metrics)
    cfg, family, step = load_run(run_dir)
    dataset, cache = build_dataset(cfg), {}  # one cache: both sides see the same real sample and z
    initial = evaluate_family(cfg, initial_family(cfg), dataset, 0, run_dir, metrics, n, cache)
    latest = {name: recorded(run_dir, name, step, n) for name in metrics}
    missing = [name for name, line in latest.items() if line is None]
    if missing:
        fresh = evaluate_family(cfg, family, dataset, step, run_dir, missing, n, cache)
        latest.update(zip(missing, fresh))
    return step, [latest[name] for name in metrics], initial


def table(step: int, latest: list[dict], initial: list[dict]) -> str:
    lines = [f"{'metric':8} {'initial weights':>16} {f'step {step}':>12} {'real vs real':>13}  ratio"]
    for now, start in zip(latest, initial):
        name = now["metric"]
        reference = next((now[k] for k in (f"{name}_floor", f"{name}_real") if k in now), float("nan"))
        ratio = now[name] / start[name] if start[name] else float("nan")
        lines.append(f"{name:8} {start[name]:16.4g} {now[name]:12.4g} {reference:13.4g}  {ratio:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--metrics", default="kid,swd", help="comma-separated metric names")
    parser.add_argument("--n", type=int, default=512, help="images per set (real and generated)")
    args = parser.parse_args(argv)
    step, latest, initial = compare(args.run_dir, parse_metrics(args.metrics), args.n)
    print(f"metrics on n={args.n} images, {os.path.basename(os.path.normpath(args.run_dir))}; lower is better")
    print(table(step, latest, initial))
    return 0


if __name__ == "__main__":
    sys.exit(main())
