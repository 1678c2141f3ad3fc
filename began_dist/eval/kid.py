"""kid: kernel inception distance on the features of a small glyph classifier trained in this repo.

No downloaded weights: `python -m began_dist.eval.kid` trains the feature net (GlyphNet) to
recognise glyph identity across the faces of the bundled Noto Sans CJK. It trains on the
JP, KR, TC and HK faces (regular and mono) with random affine jitter, holds out the SC
faces that the glyph data is drawn in, prints the held-out accuracy and stores it with
the weights and their sha256:

    python -m began_dist.eval.kid                       # rebuilds the shipped began_dist/eval/glyphnet.pt (+ .json)
    BEGAN_DIST_KID_NET=/path/glyphnet.pt began-dist eval RUN_DIR --metrics kid

The package ships one such net (began_dist/eval/glyphnet.pt, its sha256 and held-out accuracy in
glyphnet.pt.json and docs/evaluation.md), so KID works on a fresh clone without the training run.

KID is the unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / d + 1)^3 over 100 random
subsets of up to 1000 (stylegan2-ada's formula); `kid_real` is the same between two real
samples. Every line records the net's sha256 and held-out accuracy: compare KID only
between lines with the same sha256. A net below MIN_ACCURACY is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from began_dist.data import sources
from began_dist.eval.metrics.registry import MetricContext, register

INPUT_PX = 32  # the net sees 32 px grayscale; other sizes are resized
TRAIN_FACES = (0, 1, 3, 4, 5, 6, 8, 9)  # Noto Sans CJK: JP, KR, TC, HK, and their Mono variants
HELDOUT_FACES = (2, 7)  # SC and Mono SC: the faces of the glyph data
MIN_ACCURACY = 0.8  # held-out accuracy below which the net is refused as a feature extractor
SUBSETS, MAX_SUBSET = 100, 1000


SHIPPED_NET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "glyphnet.pt")  # setup.py package_data


def default_path() -> str:
    return os.environ.get("BEGAN_DIST_KID_NET") or SHIPPED_NET


class GlyphNet(nn.Module):
    """Three conv blocks, global average pooling, a 128-d feature, a linear classifier."""

    def __init__(self, classes: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(4 * width, classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> (N, 128) features (grayscale, resized to 32 px)."""
        x = images.float().div(255.0).mean(dim=1, keepdim=True)
        if x.shape[-1] != INPUT_PX:
            x = F.interpolate(x, size=(INPUT_PX, INPUT_PX), mode="bilinear", antialias=True, align_corners=False)
        return self.body(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


# -- training the feature net ---------------------------------------------------------------
def glyph_sets(classes: int, faces: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (len(faces) * classes, 1, 32, 32) renderings of the first `classes` ideographs, and their labels."""
    path = sources.default_font()
    _, chars = sources.render_glyphs(INPUT_PX, classes, path, HELDOUT_FACES[0])
    images = [sources.render_glyphs(INPUT_PX, classes, path, face, chars=chars)[0] for face in faces]
    tensor = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).contiguous()
    return tensor, torch.arange(classes).repeat(len(faces))


def jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random scale 0.85-1.1, rotation +-6 degrees, shift +-2 px (uint8 in, uint8 out)."""
    n = len(images)
    scale = torch.empty(n).uniform_(0.85, 1.1, generator=generator)
    angle = torch.empty(n).uniform_(-0.1, 0.1, generator=generator)
    shift = torch.empty(n, 2).uniform_(-2 / 16, 2 / 16, generator=generator)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, align_corners=False).round().clamp(0, 255).to(torch.uint8)


def accuracy(net: GlyphNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        predicted = torch.cat([net(chunk).argmax(1) for chunk in images.split(512)])
    return float((predicted == labels).float().mean())


def train_net(classes: int = 1000, steps: int = 1500, batch: int = 256, seed: int = 0) -> tuple[GlyphNet, dict]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = glyph_sets(classes, TRAIN_FACES)
    test_x, test_y = glyph_sets(classes, HELDOUT_FACES)
    net = GlyphNet(classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for step in range(1, steps + 1):
        pick = torch.randint(len(train_x), (batch,), generator=generator)
        loss = F.cross_entropy(net(jitter(train_x[pick], generator)), train_y[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0 or step == steps:
            print(f"step {step}: loss {loss.item():.3f}", file=sys.stderr, flush=True)
    net.eval()
    info = {
        "classes": classes,
        "steps": steps,
        "seed": seed,
        "train_faces": list(TRAIN_FACES),
        "heldout_faces": list(HELDOUT_FACES),
        "heldout_accuracy": accuracy(net, test_x, test_y),
        "train_accuracy": accuracy(net, train_x, train_y),
    }
    return net, info


def save_net(net: GlyphNet, info: dict, path: str) -> dict:
    """Write the weights and PATH.json (info + sha256 of the weights file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"state": net.state_dict(), "info": info}, path)
    info = {**info, "sha256": _sha256(path)}
    with open(path + ".json", "w") as handle:
        json.dump(info, handle, indent=1)
    return info


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def load_net(path: str) -> tuple[GlyphNet, dict]:
    """The feature net at `path`, checked against the sha256 in PATH.json and the accuracy floor."""
    if not (os.path.isfile(path) and os.path.isfile(path + ".json")):
        raise FileNotFoundError(f"kid: no feature net at {path}; train it with `python -m began_dist.eval.kid`")
    with open(path + ".json") as handle:
        info = json.load(handle)
    if _sha256(path) != info["sha256"]:
        raise FileNotFoundError(f"kid: {path} does not match the sha256 in {path}.json; train it again")
    if info["heldout_accuracy"] < MIN_ACCURACY:
        raise FileNotFoundError(
            f"kid: {path} has held-out accuracy {info['heldout_accuracy']:.3f} < {MIN_ACCURACY}; train it longer"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = GlyphNet(info["classes"])
    net.load_state_dict(state["state"])
    return net.eval(), info


# -- the metric -----------------------------------------------------------------------------
def kid(x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """Unbiased MMD^2, cubic polynomial kernel, averaged over random subsets (stylegan2-ada)."""
    n, m = x.shape[1], min(len(x), len(y), MAX_SUBSET)
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(SUBSETS):
        a_x, a_y = x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)]
        a = (a_x @ a_x.T / n + 1) ** 3 + (a_y @ a_y.T / n + 1) ** 3
        b = (a_x @ a_y.T / n + 1) ** 3
        total += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(total / SUBSETS / m)


def _features(net: GlyphNet, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([net.features(chunk) for chunk in images.split(512)]).double().numpy()


@register("kid", prerequisite=lambda: load_net(default_path()))
def kid_metric(ctx: MetricContext) -> dict:
    key = ("kid_real", ctx.n, ctx.seed)
    if key not in ctx.cache:
        net, info = load_net(default_path())
        real = _features(net, ctx.real(0))
        ctx.cache[key] = (net, info, real, kid(real, _features(net, ctx.real(1)), ctx.seed))
    net, info, real, floor = ctx.cache[key]
    return {
        "kid": kid(real, _features(net, ctx.fake()), ctx.seed),
        "kid_real": floor,
        "kid_net_sha256": info["sha256"],
        "kid_net_accuracy": info["heldout_accuracy"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="train the KID feature net (glyph identity across font faces)")
    parser.add_argument("--out", default=SHIPPED_NET, help="weights file; PATH.json gets accuracy and sha256")
    parser.add_argument("--classes", type=int, default=1000, help="ideographs to tell apart")
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    net, info = train_net(args.classes, args.steps, seed=args.seed)
    info = save_net(net, info, args.out)
    print(f"held-out accuracy {info['heldout_accuracy']:.4f} (train {info['train_accuracy']:.4f}) on faces "
          f"{info['heldout_faces']}; sha256 {info['sha256']}; wrote {args.out}")  # fmt: skip
    return 0 if info["heldout_accuracy"] >= MIN_ACCURACY else 1


if __name__ == "__main__":
    sys.exit(main())
