"""A run directory's trained model: the newest (or a named) checkpoint, loaded into its family.

Next to the checkpoint files (train/state.py), one layer up because it builds the family
the checkpoint's config names (docs/design.md, layers). Every command that reads a trained
run (sample, eval, interpolate, arithmetic, decompose, report) loads it here.
"""

from __future__ import annotations

import json
import math
from typing import Union

import torch

from began_dist import storage
from began_dist.config import from_container
from began_dist.families import get_family
from began_dist.train import state as ckpt

# `--checkpoint best` weighs these metrics (lower is better for each) by rank: on the glyph runs KID
# alone once picked a checkpoint whose samples had collapsed onto a few shapes, which SWD and NDB
# both marked (docs/evaluation.md, "Commands").
BEST_BY = ("kid", "swd", "ndb")


def metric_path(run_dir: str, name: str) -> str:
    """RUN_DIR/metric-<name>.jsonl: one line per evaluated checkpoint (eval/metrics/evaluate.py writes them)."""
    return storage.join(run_dir, f"metric-{name}.jsonl")


def _scores(path: str, name: str, steps: list[int]) -> dict[int, float]:
    """step -> recorded `name` of the checkpoints at `steps`: per step the row with the most images (the
    later one on a tie). A line that is not a JSON object with a finite number there (an append cut
    short, a NaN) is no score."""
    rows: dict[int, tuple[int, float]] = {}
    for line in storage.read_text(path).splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict):
            continue
        value = row.get(name)
        if row.get("step") not in steps or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        n = row["n"] if isinstance(row.get("n"), int) else 0
        if n >= rows.get(row["step"], (0, 0.0))[0]:
            rows[row["step"]] = (n, float(value))
    return {step: value for step, (_, value) in rows.items()}


def best_step(run_dir: str, steps: list[int]) -> tuple[int, dict[str, float]]:
    """(step, its scores): of the checkpoints at `steps` scored with every metric of BEST_BY the run has
    recorded, the one with the lowest sum of ranks (1 = lowest value), ties to the lower score of the
    first metric."""
    scores = {}
    for name in BEST_BY:
        path = metric_path(run_dir, name)
        if storage.exists(path) and (found := _scores(path, name, steps)):
            scores[name] = found
    common = sorted(set(steps).intersection(*scores.values())) if scores else []
    if not common:
        raise FileNotFoundError(
            f"{run_dir}: --checkpoint best needs scores of its checkpoints (metric-kid/swd/ndb.jsonl rows for "
            f"one of steps {steps}); score them with `began-dist eval {run_dir} --metrics kid,swd,ndb "
            "--checkpoint all`, or train with train.eval_every"
        )
    rank_sum = dict.fromkeys(common, 0)
    for values in scores.values():
        ordered = sorted(values[s] for s in common)
        for s in common:
            rank_sum[s] += ordered.index(values[s]) + 1  # equal values share the lower rank
    first = next(iter(scores))
    step = min(common, key=lambda s: (rank_sum[s], scores[first][s], s))
    return step, {name: values[step] for name, values in scores.items()}


def load_run(run_dir: str, step: Union[int, str, None] = None, device: str = "cpu"):
    """(config, family with the checkpoint's weights, step) of a run directory; `step` may be a step,
    None or 'latest' (the newest), or 'best' (`best_step`)."""
    found = dict(ckpt.list_checkpoints(run_dir))
    if not found:
        raise FileNotFoundError(f"{run_dir}: no checkpoints to sample from")
    if step == "best":
        step = best_step(run_dir, sorted(found))[0]
    elif step == "latest":
        step = None
    if step is not None and step not in found:
        raise FileNotFoundError(f"{run_dir}: no checkpoint at step {step} (have {sorted(found)})")
    step = max(found) if step is None else step
    state = ckpt.load_checkpoint(found[step])
    cfg = from_container(state["config"])
    family = get_family(cfg.model.family)(cfg, torch.device(device))
    family.load_state_dict(state)
    family.set_step(step)
    return cfg, family, step
