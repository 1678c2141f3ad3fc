"""Quality per CPU-minute: the demo recipe, the recipe before it and the plain reference step, on 32 px glyphs.

    python benchmarks/quality_budget.py                      # 10 minutes of training each (the headline figure)
    python benchmarks/quality_budget.py --minutes 2.5 --n 1024
    python benchmarks/quality_budget.py --recipe configs/demo_glyphs32.yaml --config configs/glyphs32_before.yaml

Three trainers: "before, ours" is the training loop's own step (`Trainer`: our BEGAN step, lr
control, the non-finite guard) on `--config` (the demo recipe before issue 22's sweep);
"before, reference" is `benchmarks/reference_step.py` (a plain port, constant lr) on the same
config, from the same initial weights, data order and latents (train.seed); "recipe, ours" is
the training loop's step on `--recipe` (today's demo recipe), from the same seed. They train in
alternating slices of a few seconds until each has had the budget, so all see the same machine
load. Then every generator, and each config's initial weights, is scored on the same real
sample: SWD x1e3 (with the real-vs-real floor), KID on the shipped GlyphNet's features (with
real-vs-real) and MS-SSIM, next to M (mean over the last 100 steps) and the steps each managed.
The load average is printed: on a shared machine the steps done, not the wall time, are what moved.
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
from began_dist.models.began import plain_upsample  # noqa: E402
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


def ours(config: dict, name: str) -> tuple[Timed, object]:
    """The training loop's step, and the dataset it built (shared with the reference and the metrics)."""
    trainer = Trainer(config, device=torch.device("cpu"))
    trainer.lr_control.apply(*trainer.family.optimizers)

    def step() -> dict:
        return dict(zip(LOGGED_LOSSES, trainer._one_step()))

    return Timed(name, trainer.family, step), trainer.dataset


def reference(cfg, dataset) -> Timed:
    torch.manual_seed(cfg.train.seed)  # as Trainer: the same initial weights
    family = get_family(cfg.model.family)(cfg, torch.device("cpu"))
    for net in (family.G, family.D):
        plain_upsample(net)  # a plain port upsamples, then convolves
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

    return Timed("before, reference step", family, step)


def initial(cfg, name: str) -> Timed:
    torch.manual_seed(cfg.train.seed)
    return Timed(f"{name}, initial weights", get_family(cfg.model.family)(cfg, torch.device("cpu")), None)


def train_interleaved(trainers: list[Timed], budget_s: float) -> None:
    while min(t.seconds for t in trainers) < budget_s:
        behind = min(trainers, key=lambda t: t.seconds)
        behind.run_for(min(SLICE_S, budget_s - behind.seconds))
        print(f"  {behind.name}: {behind.steps} steps in {behind.seconds:.0f} s", file=sys.stderr, flush=True)


def score(cfg, dataset, timed: Timed, n: int, cache: dict) -> dict:
    ctx = MetricContext(cfg, timed.family, dataset, timed.steps, n, cache=cache)
    return {**compute("swd", ctx), **compute("kid", ctx), **compute("msssim", ctx)}


def describe(cfg) -> str:
    m, t = cfg.model, cfg.train
    return (
        f"{m.image_size} px, {cfg.data.glyphs} glyphs, {m.arch}, n={m.filters}, r={m.convs_per_scale}, nz={m.nz}, "
        f"nh={m.nh}, vanishing residual {m.vanishing_residual}, batch {t.batch_size}, lr {t.lr:g}, "
        f"gamma {t.gamma}, lambda_k {t.lambda_k}"
    )


def table(configs: dict, rows: list[tuple[Timed, dict]], budget_s: float, loads: list[tuple[float, ...]]) -> str:
    lines = [f"{name}: {describe(cfg)}" for name, cfg in configs.items()]
    lines += [
        f"{budget_s / 60:g} min of training each on {torch.get_num_threads()} threads; "
        f"load average (1/5/15 min) before {loads[0][0]:.1f}/{loads[0][1]:.1f}/{loads[0][2]:.1f}, "
        f"after {loads[1][0]:.1f}/{loads[1][1]:.1f}/{loads[1][2]:.1f}; metrics on n={rows[0][1]['n']} images "
        f"of the before config's glyphs; KID net sha256 {rows[0][1]['kid_net_sha256'][:12]}",
        "",
        "| trainer | steps | steps/s | M (last 100) | SWD x1e3 | SWD floor | KID | KID real | MS-SSIM (real) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for timed, result in rows:
        rate = f"{timed.steps / timed.seconds:.2f}" if timed.seconds else "-"
        m_mean = f"{sum(timed.m_values) / len(timed.m_values):.4f}" if timed.m_values else "-"
        lines.append(
            f"| {timed.name} | {timed.steps} | {rate} | {m_mean} | {result['swd']:.1f} | {result['swd_floor']:.1f} "
            f"| {result['kid']:.4g} | {result['kid_real']:.3g} | {result['msssim']:.3f} ({result['msssim_real']:.3f}) |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    parser.add_argument("--config", default="configs/glyphs32_before.yaml", help="the recipe before (32 px glyphs)")
    parser.add_argument("--recipe", default="configs/demo_glyphs32.yaml", help="the recipe to compare (same size)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall minutes of training for each trainer")
    parser.add_argument("--n", type=int, default=2048, help="images per set for the metrics")
    args = parser.parse_args(argv)
    loads = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as run_dir:  # the Trainer wants a run directory; nothing is kept
        overrides = [*args.overrides, "train.steps=100000000"]
        cfg = load_config(args.config, [*overrides, f"run.dir={run_dir}/before"])
        new = load_config(args.recipe, [*overrides, f"run.dir={run_dir}/recipe"])
        before_timed, dataset = ours(to_container(cfg), "before, ours (Trainer step)")
        recipe_timed, _ = ours(to_container(new), "recipe, ours (Trainer step)")
        trainers = [before_timed, reference(cfg, dataset), recipe_timed]
        train_interleaved(trainers, args.minutes * 60)
        loads.append(os.getloadavg())
        cache: dict = {}  # one real sample (the before config's glyphs) scores every generator
        scored = [initial(cfg, "before"), *trainers[:2], initial(new, "recipe"), recipe_timed]
        rows = [(timed, score(cfg, dataset, timed, args.n, cache)) for timed in scored]
    print(table({"before": cfg, "recipe": new}, rows, args.minutes * 60, loads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
