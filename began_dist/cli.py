"""`began-dist`: the command line.

One process (local mode; CUDA when present, else the CPU):
    began-dist train --config configs/demo_glyphs32.yaml run.dir=runs/demo
    began-dist train --resume runs/demo train.steps=4000
    began-dist sample runs/demo --n 64

Exit codes: 0 done; 2 refused input (before any work); 3 stopped on a non-finite
loss (last good checkpoint kept); 130 interrupted (checkpoint saved).
"""

from __future__ import annotations

import argparse
import os
import sys

from omegaconf import OmegaConf

from began_dist.config import ConfigError, load_config, resolve_run_dir
from began_dist.data import DataError, check_source
from began_dist.train import state as ckpt

EXIT_OK, EXIT_REFUSED, EXIT_NON_FINITE, EXIT_INTERRUPTED = 0, 2, 3, 130
WORKER_ALIASES = {  # flag -> config key (Contract: aliases of run.*)
    "workers": "run.workers",
    "gpus_per_worker": "run.gpus_per_worker",
    "cpus_per_worker": "run.cpus_per_worker",
    "address": "run.address",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="began-dist", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (local mode, or Ray Train with --workers N)")
    train.add_argument("overrides", nargs="*", help="dotted key=value config overrides, e.g. train.gamma=0.4")
    train.add_argument("--config", help="YAML config file (merged over the defaults)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--workers", type=int, help="alias of run.workers (0 = local mode)")
    train.add_argument("--gpus-per-worker", type=float, help="alias of run.gpus_per_worker")
    train.add_argument("--cpus-per-worker", type=float, help="alias of run.cpus_per_worker")
    train.add_argument("--address", help="alias of run.address (an existing Ray cluster)")

    sample = commands.add_parser("sample", help="sample grids and interpolations from a run's checkpoint")
    sample.add_argument("run_dir")
    sample.add_argument("--out", help="output directory (default RUN_DIR/samples/step-XXXXXXXX)")
    sample.add_argument("--n", type=int, default=64, help="images in the sample grid")
    sample.add_argument("--checkpoint", type=int, help="step of the checkpoint (default: the latest)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the latents")
    return parser


def _overrides(args) -> list[str]:
    given = {key: getattr(args, flag) for flag, key in WORKER_ALIASES.items() if getattr(args, flag) is not None}
    return list(args.overrides) + [f"{key}={value}" for key, value in given.items()]


def prepare_train(args):
    """Resolve and check everything a run needs; refuse (ConfigError/DataError) before creating anything."""
    if args.resume:
        run_dir = os.path.abspath(args.resume)
        saved = os.path.join(run_dir, "config.yaml")
        if not os.path.isfile(saved):
            raise ConfigError(f"--resume {args.resume}: no config.yaml there; is it a run directory?")
        if args.config:
            raise ConfigError("--config cannot be combined with --resume (the run's config.yaml is used)")
        cfg = load_config(saved, _overrides(args))
        cfg.run.dir = run_dir
        _check_resume(cfg, OmegaConf.load(saved), run_dir)
    else:
        cfg = load_config(args.config, _overrides(args))
        run_dir = resolve_run_dir(cfg)
        if ckpt.list_checkpoints(run_dir):
            raise ConfigError(f"run.dir={run_dir}: already has checkpoints; continue it with --resume {run_dir}")
    if cfg.train.compile or cfg.train.precision != "fp32":
        raise ConfigError("train.compile / train.precision: only compile=false, precision=fp32 are available yet")
    if cfg.run.workers > 0:
        raise ConfigError(f"run.workers={cfg.run.workers}: the Ray Train backend is not built yet; use 0 (local)")
    check_source(cfg)
    return cfg


def _check_resume(cfg, saved, run_dir: str) -> None:
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        raise ConfigError(f"--resume {run_dir}: no checkpoint to resume from")
    if OmegaConf.to_container(saved.model) != OmegaConf.to_container(cfg.model):
        raise ConfigError("model.*: cannot change on resume (the checkpoint's networks have the saved shapes)")
    last_step = found[-1][0]
    if cfg.train.steps <= last_step:
        raise ConfigError(f"train.steps={cfg.train.steps}: the run is already at step {last_step}; give more steps")


def run_train(args) -> int:
    from began_dist.train.loop import Interrupted, NonFiniteLoss, train_loop

    cfg = prepare_train(args)
    os.makedirs(cfg.run.dir, exist_ok=True)
    try:
        result = train_loop(OmegaConf.to_container(cfg, resolve=True))
    except NonFiniteLoss as error:
        print(f"began-dist: {error}", file=sys.stderr)
        return EXIT_NON_FINITE
    except Interrupted as error:
        print(f"began-dist: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    run_dir = result["run_dir"]
    print(f"samples:     {os.path.join(run_dir, 'samples')}")
    print(f"tensorboard: tensorboard --logdir {os.path.join(run_dir, 'tb')}")
    return EXIT_OK


def run_sample(args) -> int:
    from began_dist.eval.sample import write_samples

    try:
        paths = write_samples(args.run_dir, args.out, args.n, args.seed, step=args.checkpoint)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    for path in paths:
        print(path)
    return EXIT_OK


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "train" or any(item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "train":
        args.overrides = list(args.overrides) + extra  # key=value items after a flag
    try:
        return {"train": run_train, "sample": run_sample}[args.command](args)
    except (ConfigError, DataError) as error:
        print(f"began-dist: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
