"""`began-dist eval` and `train.eval_every`: metrics of checkpoints, appended to the run directory.

Each evaluated checkpoint adds one line per metric to RUN_DIR/metric-<name>.jsonl
({"metric", "step", "n", "time_s", <values>}) and TensorBoard scalars
metrics/<value name> at that step (RUN_DIR/tb).
"""

from __future__ import annotations

import json
from typing import Optional, Union

from torch.utils.tensorboard import SummaryWriter

from began_dist import storage
from began_dist.config import ConfigError
from began_dist.data import build_dataset
from began_dist.eval.metrics import DEFAULT_METRICS, MetricContext, compute, parse_metrics
from began_dist.train import state as ckpt
from began_dist.train.logging import truncate_stats
from began_dist.train.runs import best_step, load_run, metric_path

RECORD_KEYS = ("metric", "step", "n", "time_s")  # bookkeeping, not plotted


def checkpoint_steps(run_dir: str, checkpoint: Union[str, int, None]) -> list[int]:
    """Steps to evaluate: None/'latest' -> the newest, 'all' -> every one, 'best' -> the best scored one
    (train.runs.best_step), an int -> that one."""
    found = [step for step, _ in ckpt.list_checkpoints(run_dir)]
    if not found:
        raise FileNotFoundError(f"{run_dir}: no checkpoints to evaluate")
    if checkpoint in (None, "latest"):
        return found[-1:]
    if checkpoint == "all":
        return found
    if checkpoint == "best":
        return [best_step(run_dir, found)[0]]
    if not str(checkpoint).isdigit():
        raise ConfigError(f"--checkpoint {checkpoint!r}: give a step, 'latest', 'best' or 'all'")
    step = int(checkpoint)
    if step not in found:
        raise FileNotFoundError(f"{run_dir}: no checkpoint at step {step} (have {found})")
    return [step]


def record(run_dir: str, results: list[dict], writer: Optional[SummaryWriter] = None) -> None:
    """Append each result to its metric-<name>.jsonl and write its values to TensorBoard."""
    own_writer = writer is None
    mirror = storage.LocalMirror(storage.join(run_dir, "tb")) if own_writer else None
    writer = writer or SummaryWriter(mirror.local)
    try:
        for result in results:
            storage.append_text(metric_path(run_dir, result["metric"]), json.dumps(result) + "\n")
            for key, value in result.items():
                if key not in RECORD_KEYS and isinstance(value, (int, float)):  # not e.g. kid_net_sha256
                    writer.add_scalar(f"metrics/{key}", value, result["step"])
        writer.flush()
    finally:
        if own_writer:
            writer.close()
            mirror.close()  # an object-store run directory: the event file goes up to RUN_DIR/tb


def evaluate_family(
    cfg,
    family,
    dataset,
    step: int,
    run_dir: str,
    metrics: list[str],
    n: int,
    cache: Optional[dict] = None,
    writer: Optional[SummaryWriter] = None,
) -> list[dict]:
    """Run `metrics` on a family's current weights and record them as step `step`."""
    ctx = MetricContext(cfg, family, dataset, step, n, cache=cache if cache is not None else {})
    results = [compute(name, ctx) for name in metrics]
    record(run_dir, results, writer)
    return results


def evaluate_run(
    run_dir: str, metrics: Optional[str] = None, checkpoint: Union[str, int, None] = None, n: int = 2048
) -> list[dict]:
    """`began-dist eval`: evaluate the chosen checkpoints of a run (default metrics: DEFAULT_METRICS).

    The real-side work (real descriptors, floors, k-means bins) is done once and shared by the checkpoints.
    The metrics' feature nets were checked by the preflight (train/preflight.py, `began-dist eval`).
    """
    names = parse_metrics(metrics) if metrics else list(DEFAULT_METRICS)
    steps = checkpoint_steps(run_dir, checkpoint)
    cache: dict = {}
    dataset, results = None, []
    for step in steps:
        cfg, family, step = load_run(run_dir, step)
        dataset = dataset or build_dataset(cfg)
        results += evaluate_family(cfg, family, dataset, step, run_dir, names, n, cache)
    return results


def summary(results: list[dict]) -> str:
    """'swd 12.3 (floor 4.1), msssim 0.09, ...': the headline value of each result."""
    parts = []
    for result in results:
        name = result["metric"]
        text = f"{name} {result[name]:.4g}"
        for reference in (f"{name}_floor", f"{name}_real"):
            if reference in result:
                text += f" ({reference.split('_')[-1]} {result[reference]:.4g})"
        parts.append(text)
    return ", ".join(parts)


def truncate_metrics(run_dir: str, last_step: int) -> None:
    """On resume: drop metric lines after the checkpoint's step, as stats.jsonl is cut back."""
    for path in storage.glob(run_dir, "metric-*.jsonl"):
        truncate_stats(path, last_step)
