"""Quality per CPU-minute: our BEGAN against the plain reference step, for the same wall time, on 32 px glyphs.

    python benchmarks/quality_budget.py                      # 10 minutes of training each (the headline figure)
    python benchmarks/quality_budget.py --minutes 2.5 --n 1024
    python benchmarks/quality_budget.py --config configs/demo_glyphs32.yaml train.gamma=0.7

Both trainers start from the same initial weights, data order and latents (train.seed):
"ours" is the training loop's own step (`Trainer`: our BEGAN step, lr control, the
non-finite guard); "reference" is `benchmarks/reference_step.py` (a plain port, constant
lr). They train in alternating slices of a few seconds until each has had the budget,
so both see the same machine load. Then both generators are scored on the same real
sample: SWD x1e3 (with the real-vs-real floor) and MS-SSIM, next to M (mean over the
last 100 steps) and the steps each managed. The load average is printed: on a shared
machine the steps done, not the wall time, are what moved.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import deque

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from began_dist.config import load_config, to_container  # noqa: E402
from began_dist.data.dataset import to_model_range  # noqa: E402
from began_dist.data.sampler import GlobalBatchSampler, LatentSource  # noqa: E402
from began_dist.eval.metrics import MetricContext, compute  # noqa: E402
from began_dist.families import get_family  # noqa: E402
from began_dist.families.base import LOGGED_LOSSES  # noqa: E402
from began_dist.families.equilibrium import convergence  # noqa: E402
from began_dist.train.loop import Trainer  # noqa: E402
from benchmarks.reference_step import reference_step  # noqa: E402

SLICE_S = 5.0  # wall seconds per turn of each trainer
M_WINDOW = 100  # steps averaged for the reported M


class Timed:
    """A trainer behind a step function, with its own clock, step count and recent M values."""

    def __init__(self, name: str, family, step):
        self.name, self.family, self.step = name, family, step
        self.steps, self.seconds, self.m_values = 0, 0.0, deque(maxlen=M_WINDOW)

    def run_for(self, seconds: float) -> None:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            self.m_values.append(float(self.step()["M"]))
            self.steps += 1
        self.seconds += time.perf_counter() - started


def ours(config: dict) -> tuple[Timed, object]:
    """The training loop's step, and the dataset it built (shared with the reference and the metrics)."""
    trainer = Trainer(config, device=torch.device("cpu"))
    trainer.lr_control.apply(*trainer.family.optimizers)

    def step() -> dict:
        return dict(zip(LOGGED_LOSSES, trainer._one_step()))

    return Timed("ours (Trainer step)", trainer.family, step), trainer.dataset


def reference(cfg, dataset) -> Timed:
    torch.manual_seed(cfg.train.seed)  # as Trainer: the same initial weights
    family = get_family(cfg.model.family)(cfg, torch.device("cpu"))
    t = cfg.train
    sampler = GlobalBatchSampler(len(dataset), t.batch_size, t.seed)
    latents = LatentSource(t.seed, family.latent_size, t.batch_size)
    k_t = torch.zeros(())

    def step() -> dict:
        nonlocal k_t
        real = to_model_range(dataset.batch(sampler.next_indices()), family.device)
        z_D, z_G = latents.next(2, family.device)
        out = reference_step(family.G, family.D, family.opt_G, family.opt_D, k_t, real, z_D, z_G, t.gamma, t.lambda_k)
        k_t = out["k_t"]
        return {"M": convergence(out["L_x"], out["L_Gz"], t.gamma)}

    return Timed("reference step", family, step)


def initial(cfg) -> Timed:
    torch.manual_seed(cfg.train.seed)
    return Timed("initial weights", get_family(cfg.model.family)(cfg, torch.device("cpu")), None)


def train_interleaved(trainers: list[Timed], budget_s: float) -> None:
    while min(t.seconds for t in trainers) < budget_s:
        behind = min(trainers, key=lambda t: t.seconds)
        behind.run_for(min(SLICE_S, budget_s - behind.seconds))
        print(f"  {behind.name}: {behind.steps} steps in {behind.seconds:.0f} s", file=sys.stderr, flush=True)


def score(cfg, dataset, timed: Timed, n: int, cache: dict) -> dict:
    ctx = MetricContext(cfg, timed.family, dataset, timed.steps, n, cache=cache)
    return {**compute("swd", ctx), **compute("msssim", ctx)}


def table(cfg, rows: list[tuple[Timed, dict]], budget_s: float, loads: list[tuple[float, ...]]) -> str:
    m = cfg.model
    lines = [
        f"{m.image_size} px glyphs, n={m.filters}, nz={m.nz}, nh={m.nh}, batch {cfg.train.batch_size}, "
        f"gamma {cfg.train.gamma}; {budget_s / 60:g} min of training each on {torch.get_num_threads()} threads; "
        f"load average (1/5/15 min) before {loads[0][0]:.1f}/{loads[0][1]:.1f}/{loads[0][2]:.1f}, "
        f"after {loads[1][0]:.1f}/{loads[1][1]:.1f}/{loads[1][2]:.1f}; metrics on n={rows[0][1]['n']} images",
        "",
        "| trainer | steps | steps/s | M (last 100) | SWD x1e3 | SWD floor | MS-SSIM (real) |",
        "|---|---|---|---|---|---|---|",
    ]
    for timed, result in rows:
        rate = f"{timed.steps / timed.seconds:.2f}" if timed.seconds else "-"
        m_mean = f"{sum(timed.m_values) / len(timed.m_values):.4f}" if timed.m_values else "-"
        lines.append(
            f"| {timed.name} | {timed.steps} | {rate} | {m_mean} | {result['swd']:.1f} | {result['swd_floor']:.1f} "
            f"| {result['msssim']:.3f} ({result['msssim_real']:.3f}) |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    parser.add_argument("--config", default="configs/demo_glyphs32.yaml", help="run config (32 px glyphs)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall minutes of training for each trainer")
    parser.add_argument("--n", type=int, default=2048, help="images per set for the metrics")
    args = parser.parse_args(argv)
    loads = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as run_dir:  # the Trainer wants a run directory; nothing is kept
        cfg = load_config(args.config, [*args.overrides, "train.steps=100000000", f"run.dir={run_dir}"])
        ours_timed, dataset = ours(to_container(cfg))
        trainers = [ours_timed, reference(cfg, dataset)]
        train_interleaved(trainers, args.minutes * 60)
        loads.append(os.getloadavg())
        cache: dict = {}
        rows = [(timed, score(cfg, dataset, timed, args.n, cache)) for timed in [initial(cfg), *trainers]]
    print(table(cfg, rows, args.minutes * 60, loads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
