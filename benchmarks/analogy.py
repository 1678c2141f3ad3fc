"""Style analogies on four-font glyphs: does z(c1, A) - z(c1, B) + z(c2, B) decode to c2 in font A?

    python benchmarks/analogy.py                          # prepare, train (60 CPU-minutes), evaluate
    python benchmarks/analogy.py --cpu-minutes 5 --out runs/analogy-small
    python benchmarks/analogy.py --eval-only --out runs/analogy
    python benchmarks/analogy.py --cpu-minutes 10 --out runs/analogy-kl1 train.vaegan.kl_weight=1

Trailing key=value arguments override the run's config when it starts (a resumed run keeps
its own config, so they only matter for a new OUT).

Glyphs of the characters all fonts share are rendered in up to four clearly different
fonts (Noto Sans CJK SC, WenQuanYi Micro Hei, TW-Kai, TW-Sung; missing ones are named
and left out). A seeded split keeps `--heldout` characters out of training. A VAE-GAN
(configs/seed002_vaegan_glyphs.yaml, made smaller to fit the budget, with KL weight 4: the
seed's 1 ties the copy baseline, docs/latent.md) trains with the
project's own `began-dist train` on one thread, in chunks, until its CPU time reaches
`--cpu-minutes`. Then, over `--quads` random held-out quadruples (c1 != c2, A != B):

    model     G(mu(c1, A) - mu(c1, B) + mu(c2, B))     the latent analogy
    pixel     x(c1, A) - x(c1, B) + x(c2, B), clipped  the same arithmetic on pixels
    copy      x(c2, B)                                  the third input: right character, wrong font
    recon     G(mu(c2, A))                              the model's own ceiling (not an analogy)
    scaled    G(mu(c2, B) + s (mu(c1, A) - mu(c1, B)))  s from OFFSET_SCALES, fitted on training characters
    no offset G(mu(c2, B))                              the third input's reconstruction (s = 0)

each scored against the true rendering x(c2, A) by mean L1 (pixels in [-1, 1]) and SWD
x1e3 (the analogy set against the true set). Also reconstruction L1 on held-out and on
training characters. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from began_dist.data import sources  # noqa: E402
from began_dist.data.prepare import PrepareOptions, prepare  # noqa: E402
from began_dist.eval.metrics.recon import reconstruction_l1  # noqa: E402
from began_dist.eval.metrics.swd import swd  # noqa: E402
from began_dist.images import save_grid, to_uint8  # noqa: E402
from began_dist.train import state as ckpt  # noqa: E402
from began_dist.train.runs import load_run  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "seed002_vaegan_glyphs.yaml")
FONTS = (  # name, file, face, Debian package
    ("Noto Sans CJK SC", None, 2, "pip noto-cjk-sans-otc"),
    ("WenQuanYi Micro Hei", "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0, "fonts-wqy-microhei"),
    ("TW-Kai", "/usr/share/fonts/truetype/cns11643/TW-Kai-98_1.ttf", 0, "fonts-cns11643-kai"),
    ("TW-Sung", "/usr/share/fonts/truetype/cns11643/TW-Sung-98_1.ttf", 0, "fonts-cns11643-sung"),
)
SMALL = [  # fits the CPU budget: half the seed's widths, one conv per scale; a beta-VAE's KL weight
    "model.filters=16",
    "model.convs_per_scale=1",
    "train.vaegan.kl_weight=4",
    "train.log_every=50",
    "train.sample_every=500",
    "train.checkpoint_every=500",
]
FIRST_CHUNK = 100  # steps trained before the speed is known
ACCOUNT = "budget.json"  # in OUT: the training account, kept across interruptions
MAX_CHUNK = 200  # steps per training process (the budget is checked between processes)
# CPU seconds a training process spends before its first step (imports, data) beyond what the
# per-step average already carries; kept in reserve so a short last chunk stays within the budget
# (a 60-minute run without it ended at 60.2).
CHUNK_START_CPU_S = 20.0
OFFSET_SCALES = (0.25, 0.5, 0.75, 1.0)  # the grid for the scaled-offset row, fitted on training characters


def available_fonts() -> list[tuple[str, str, int]]:
    found = []
    for name, path, face, package in FONTS:
        path = path or sources.default_font()
        if os.path.isfile(path):
            found.append((name, path, face))
        else:
            print(f"MISSING font {name} ({path}); install {package}", file=sys.stderr)
    if len(found) < 2:
        sys.exit("analogy: fewer than two fonts; nothing to compare")
    return found


def split_characters(fonts, train_count: int, heldout_count: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint training and held-out code points, drawn from the characters every font has."""
    shared = np.array(sources.parse_charset("common", [(path, face) for _, path, face in fonts]))
    order = np.random.default_rng(seed).permutation(len(shared))
    return sorted(shared[order[:train_count]].tolist()), sorted(shared[order[train_count:][:heldout_count]].tolist())


def prepare_training_set(out: str, fonts, codes: list[int], size: int) -> str:
    data_dir = os.path.join(out, "data")
    if os.path.isfile(os.path.join(data_dir, "manifest.json")):
        return data_dir
    charset = os.path.join(out, "train_chars.txt")
    with open(charset, "w", encoding="utf-8") as handle:
        handle.write("".join(map(chr, codes)))
    spec = ",".join(f"{path}:{face}" for _, path, face in fonts)
    prepare("glyphs", data_dir, PrepareOptions(size=size, shards=2, fonts=spec, charset=charset, jobs=1))
    return data_dir


def train_chunk(run_dir: str, data_dir: str, steps: int, extra: list[str]) -> float:
    """Train (or resume) to `steps` total on one thread; returns the CPU seconds it took."""
    if ckpt.list_checkpoints(run_dir):
        command = ["--resume", run_dir, f"train.steps={steps}"]
    else:
        command = [
            "--config",
            CONFIG,
            *SMALL,
            "data.source=shards",
            f"data.path={data_dir}",
            f"run.dir={run_dir}",
            f"train.steps={steps}",
            *extra,
        ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=REPO)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, "-m", "began_dist", "train", *command], check=True, env=env, stdout=subprocess.DEVNULL
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def train(out: str, run_dir: str, data_dir: str, cpu_minutes: float, wall_minutes: float, extra: list[str]) -> dict:
    """Train in chunks until the CPU budget (or the wall-clock cap) is spent; the step count follows the speed.

    The account (steps, CPU and wall seconds) lives in OUT/budget.json, so an interrupted
    benchmark continues both the run (exact resume) and its account.
    """
    account = read_account(out)
    while True:
        per_step = account["cpu_s"] / account["steps"] if account["steps"] else None
        wall_per_step = account["wall_s"] / account["steps"] if account["steps"] else 0.0
        left = cpu_minutes * 60 - account["cpu_s"] - CHUNK_START_CPU_S
        wall_left = wall_minutes * 60 - account["wall_s"]
        chunk = FIRST_CHUNK if per_step is None else min(MAX_CHUNK, int(left / per_step))
        if wall_per_step:
            chunk = min(chunk, int(wall_left / wall_per_step))
        if chunk < 1:
            return account
        started = time.time()
        account["cpu_s"] += train_chunk(run_dir, data_dir, account["steps"] + chunk, extra)
        account["steps"] += chunk
        account["wall_s"] += time.time() - started
        with open(os.path.join(out, ACCOUNT), "w") as handle:
            json.dump(account, handle)
        print(
            f"  {account['steps']} steps, {account['cpu_s'] / 60:.1f} CPU-min, {account['wall_s'] / 60:.1f} wall-min",
            file=sys.stderr,
        )


def read_account(out: str) -> dict:
    """The training account so far: steps, CPU seconds, wall seconds."""
    path = os.path.join(out, ACCOUNT)
    if not os.path.isfile(path):
        return {"steps": 0, "cpu_s": 0.0, "wall_s": 0.0}
    with open(path) as handle:
        return json.load(handle)


def render_all(fonts, codes: list[int], size: int) -> torch.Tensor:
    """(fonts, chars, 1, H, W) in [-1, 1]."""
    stacks = [sources.render_font_glyphs(codes, path, face, size)[0] for _, path, face in fonts]
    return torch.from_numpy(np.stack(stacks)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1


def quadruples(chars: int, fonts: int, count: int, seed: int) -> np.ndarray:
    """(count, 4) rows (c1, c2, A, B) with c1 != c2 and A != B."""
    rng = np.random.default_rng(seed)
    c1 = rng.integers(0, chars, count)
    c2 = (c1 + rng.integers(1, chars, count)) % chars
    a = rng.integers(0, fonts, count)
    b = (a + rng.integers(1, fonts, count)) % fonts
    return np.stack([c1, c2, a, b], axis=1)


def evaluate(run_dir: str, glyphs: torch.Tensor, train_glyphs: torch.Tensor, quads: np.ndarray, figure: str) -> dict:
    _, family, step = load_run(run_dir)
    latents = encode_all(family, glyphs)
    scale = fit_offset_scale(family, train_glyphs, len(quads))
    c1, c2, a, b = (torch.from_numpy(column) for column in quads.T)
    truth = glyphs[a, c2]
    offset = latents[a, c1] - latents[b, c1]
    scaled = f"model, offset x{scale:g}: G(z(c2,B) + s (z(c1,A) - z(c1,B)))"
    candidates = {
        "model: G(z(c1,A) - z(c1,B) + z(c2,B))": family.decode(offset + latents[b, c2]),
        "pixel: x(c1,A) - x(c1,B) + x(c2,B)": glyphs[a, c1] - glyphs[b, c1] + glyphs[b, c2],
        "copy: x(c2,B)": glyphs[b, c2],
        "recon (ceiling): G(z(c2,A))": family.decode(latents[a, c2]),
        scaled: family.decode(scale * offset + latents[b, c2]),
        "no offset: G(z(c2,B))": family.decode(latents[b, c2]),
    }
    rows, per_quad = {}, {}
    for name, images in candidates.items():
        images = images.clamp(-1, 1)
        per_quad[name] = (images - truth).abs().flatten(1).mean(1)  # one L1 per quadruple
        rows[name] = (mean_and_error(per_quad[name]), swd(to_uint8(images), to_uint8(truth))["swd"])
    model, pixel, copy, _, _, no_offset = per_quad
    pairs = [(model, pixel), (model, copy), (scaled, pixel), (scaled, copy), (scaled, no_offset)]
    gaps = {  # paired differences over the same quadruples
        f"{short(first)} L1 minus {short(second)} L1": mean_and_error(per_quad[first] - per_quad[second])
        for first, second in pairs
    }
    shown = torch.stack(
        [glyphs[a, c1], glyphs[b, c1], glyphs[b, c2], *[c.clamp(-1, 1) for c in candidates.values()], truth], dim=1
    )[:12]
    save_grid(shown.flatten(0, 1), figure, shown.shape[1], scale=2)
    return {
        "step": step,
        "rows": rows,
        "gaps": gaps,
        "recon_heldout": reconstruction_l1(family, to_uint8(glyphs.flatten(0, 1))),  # the recon metric's own
        "recon_train": reconstruction_l1(family, to_uint8(train_glyphs.flatten(0, 1))),
    }


def encode_all(family, glyphs: torch.Tensor) -> torch.Tensor:
    """(fonts, chars, Nz): the posterior means (a sampled z scores worse: +0.02 L1 on runs/analogy)."""
    return torch.stack([family.encode(font_glyphs) for font_glyphs in glyphs])


def fit_offset_scale(family, train_glyphs: torch.Tensor, count: int) -> float:
    """The s in G(z(c2,B) + s (z(c1,A) - z(c1,B))) with the lowest L1 on quadruples of TRAINING characters.

    Fitted there, never on the held-out quadruples the table reports, so the scaled row
    is not tuned on its own test set.
    """
    latents = encode_all(family, train_glyphs)
    c1, c2, a, b = (torch.from_numpy(column) for column in quadruples(train_glyphs.shape[1], len(latents), count, 1).T)
    truth = train_glyphs[a, c2]

    def l1(scale: float) -> float:
        decoded = family.decode(latents[b, c2] + scale * (latents[a, c1] - latents[b, c1])).clamp(-1, 1)
        return float((decoded - truth).abs().mean())

    return min(OFFSET_SCALES, key=l1)


def short(name: str) -> str:
    """A candidate's label without its formula."""
    return name.split(":")[0]


def mean_and_error(values: torch.Tensor) -> tuple[float, float]:
    """(mean, standard error of the mean) over quadruples."""
    return float(values.mean()), float(values.std() / len(values) ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/analogy", help="work directory (data, run, figure)")
    parser.add_argument("--size", type=int, default=32, help="glyph size, pixels")
    parser.add_argument("--train-chars", type=int, default=3000, help="training characters (x every font)")
    parser.add_argument("--heldout", type=int, default=200, help="held-out characters")
    parser.add_argument("--quads", type=int, default=2000, help="held-out (c1, c2, A, B) quadruples")
    parser.add_argument("--cpu-minutes", type=float, default=60.0, help="training budget, CPU-minutes (cap: 60)")
    parser.add_argument("--wall-minutes", type=float, default=600.0, help="stop training after this wall time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-only", action="store_true", help="evaluate the run already in OUT/run")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for the run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    fonts = available_fonts()
    print(f"fonts: {', '.join(name for name, _, _ in fonts)}", file=sys.stderr)
    train_codes, heldout_codes = split_characters(fonts, args.train_chars, args.heldout, args.seed)
    run_dir = os.path.abspath(os.path.join(args.out, "run"))
    budget = read_account(args.out)
    if not args.eval_only:
        data_dir = prepare_training_set(args.out, fonts, train_codes, args.size)
        budget = train(args.out, run_dir, data_dir, args.cpu_minutes, args.wall_minutes, args.overrides)
    glyphs = render_all(fonts, heldout_codes, args.size)
    train_glyphs = render_all(fonts, train_codes[: args.heldout], args.size)
    quads = quadruples(len(heldout_codes), len(fonts), args.quads, args.seed)
    result = evaluate(run_dir, glyphs, train_glyphs, quads, os.path.join(args.out, "analogies.png"))
    print_table(args, fonts, budget, result)


def print_table(args, fonts, budget: dict, result: dict) -> None:
    print(
        f"fonts: {', '.join(name for name, _, _ in fonts)}; {args.size} px; {args.train_chars} training and "
        f"{args.heldout} held-out characters; {args.quads} held-out quadruples"
    )
    print(
        f"training: step {result['step']}, {budget['cpu_s'] / 60:.1f} CPU-minutes, {budget['wall_s'] / 60:.1f} "
        f"wall minutes, 1 thread, load average {os.getloadavg()[0]:.1f} at the end"
    )
    print()
    print("| decode of the analogy | L1 to x(c2, A) (+- s.e.) | SWD x1e3 |")
    print("|---|---|---|")
    for name, ((l1, error), swd_value) in result["rows"].items():
        print(f"| {name} | {l1:.4f} +- {error:.4f} | {swd_value:.1f} |")
    print()
    for name, (gap, error) in result["gaps"].items():
        print(f"{name}, paired over quadruples: {gap:+.4f} +- {error:.4f}")
    print(
        f"reconstruction L1: held-out characters {result['recon_heldout']:.4f}, "
        f"training characters {result['recon_train']:.4f}"
    )


if __name__ == "__main__":
    main()
