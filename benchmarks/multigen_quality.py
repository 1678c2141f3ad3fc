"""Multi-generator BEGAN on the CRS shapes: how well runs decompose, and what they make of the unseen cross.

    began-dist prepare shapes runs/data/crs32 --size 32 --shards 4
    OMP_NUM_THREADS=1 began-dist train --config configs/seed000_multigen_crs.yaml run.dir=runs/mg/seed000
    OMP_NUM_THREADS=1 began-dist train --config configs/multigen_crs.yaml run.dir=runs/mg/ours
    python benchmarks/multigen_quality.py runs/mg/seed000 runs/mg/ours [--n 1024]

Per run (its latest checkpoint), on a table:
  IoU x / IoU sq   mean IoU of each generator's part G_k(E(x)_k) (ink > 0.5) with the true
                   component mask, over training-split images that contain the component
  L1 mean          mean |mean generated cross - mean held-out cross| (ink, 0..1)
  var px           generated / true pixel variance, summed over pixels (G_cross(z) alone
                   against crosses alone, which training never showed)
  var size/thick   the same ratio for each image's measured arm length and bar width
  empty            fraction of generated crosses with no ink at all
  SWD              G_cross samples vs held-out crosses (x1e3), beside the floor of two
                   disjoint held-out samples
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from began_dist.data import sources  # noqa: E402
from began_dist.eval.commands.decompose import (  # noqa: E402
    component_iou,
    heldout_crosses,
    heldout_statistics,
    write_overview,
)
from began_dist.eval.metrics.swd import swd  # noqa: E402
from began_dist.train.runs import load_run  # noqa: E402

CROSS = 0  # CRS labels are y = [cross, square]
COLUMNS = {  # result key -> table header
    "steps": "steps",
    "train_s": "train s",
    "iou_cross": "IoU x",
    "iou_square": "IoU sq",
    "l1_mean": "L1 mean",
    "var_ratio_pixels": "var px",
    "var_ratio_size": "var size",
    "var_ratio_thickness": "var thick",
    "empty_fraction": "empty",
    "swd": "SWD",
}


def training_split(size: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, S, S), labels (N, 2) and masks (N, 2, S, S) of square+cross and square."""
    images, labels, masks = sources.crs_render(sources.crs_grid(["square+cross", "square"], count), size)
    return torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels), torch.from_numpy(masks)


def train_seconds(run_dir: str) -> float:
    with open(os.path.join(run_dir, "stats.jsonl")) as handle:
        return json.loads(handle.readlines()[-1])["time_s"]


def measure(run_dir: str, n: int, heldout: torch.Tensor) -> dict:
    cfg, family, step = load_run(run_dir)
    images, labels, masks = training_split(cfg.model.image_size, n)
    iou = component_iou(family, images, labels, masks)
    stats = heldout_statistics(family, CROSS, heldout[:n])
    return {"steps": step, "train_s": train_seconds(run_dir), "iou_cross": iou[0], "iou_square": iou[1], **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--n", type=int, default=1024, help="images per set")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--figure", help="write an overview PNG of the last run (parts, G_cross alone, real crosses)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = load_run(args.run_dirs[0])[0].model.image_size
    crosses = heldout_crosses(size, 0)  # all 11,760
    order = torch.randperm(len(crosses), generator=torch.Generator().manual_seed(0))
    heldout, second = crosses[order[: args.n]], crosses[order[args.n : 2 * args.n]]
    floor = swd(heldout, second)["swd"]
    rows = {os.path.basename(os.path.normpath(run)): measure(run, args.n, heldout) for run in args.run_dirs}
    name_width = max(len(name) for name in rows) + 2
    print(f"{'run':<{name_width}}" + "".join(f"{header:>10}" for header in COLUMNS.values()))
    for name, row in rows.items():
        print(f"{name:<{name_width}}" + "".join(f"{row[key]:>10.4g}" for key in COLUMNS))
    print(f"SWD floor (held-out crosses vs held-out crosses, n={args.n}): {floor:.4g}")
    if args.figure:
        _, family, _ = load_run(args.run_dirs[-1])
        images, labels, _ = training_split(size, 64)
        mixed = torch.tensor([0, 32, 13, 45])  # square+cross and square alone in turn
        print(write_overview(family, images[mixed], labels[mixed], heldout, args.figure, CROSS))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "swd_floor": floor, "n": args.n}, handle, indent=1)


if __name__ == "__main__":
    main()
