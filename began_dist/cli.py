"""`began-dist`: the command line.

One process (local mode; CUDA when present, else the CPU):
    began-dist train --config configs/demo_glyphs32.yaml run.dir=runs/demo
    began-dist train --resume runs/demo train.steps=4000
    began-dist sample runs/demo --n 64
    began-dist eval runs/demo --metrics swd,msssim,ndb,recon --checkpoint all --n 2048
    began-dist report runs/demo [runs/other ...]
Latent tools (any family; --latent encoder|invert):
    began-dist interpolate runs/vaegan 酪 鉸 --steps 10
    began-dist arithmetic runs/vaegan --triples began_dist/eval/triples_default.txt
Sharded datasets (docs/data.md), then train with data.source=shards data.path=DIR:
    began-dist prepare data/img_align_celeba data/celeba64 --format arrow --size 64 --shards 16
    began-dist prepare --verify data/celeba64
Ray Train on this machine (a local Ray cluster on 127.0.0.1) or on a cluster:
    began-dist train --config C.yaml --workers 2 run.dir=runs/ddp
    began-dist train --config C.yaml --workers 8 --gpus-per-worker 1 --address auto run.dir=/shared/runs/x
    began-dist train --resume /shared/runs/x --workers 4
Multi-generator BEGAN (docs/multigen.md):
    began-dist train --config configs/multigen_crs.yaml run.dir=runs/mg
    began-dist decompose runs/mg
Ray Tune sweeps (tune/*.yaml; docs/tune.md):
    began-dist tune tune/gamma.yaml run.dir=runs/gamma [tune.num_samples=2] [train.steps=4000]
    began-dist tune tune/gamma.yaml run.dir=runs/gamma --resume

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

    prepare = commands.add_parser("prepare", help="write a sharded dataset (Arrow/HDF5), or --verify one")
    prepare.add_argument("source", nargs="?", help="folder, archive, HDF5 file, or glyphs|shapes|shapes4|cns|...")
    prepare.add_argument("out", nargs="?", help="output dataset directory (shapes, shapes4: OUT/train and OUT/heldout)")
    prepare.add_argument("--verify", metavar="DATASET_DIR", help="recompute the checksums of DATASET_DIR's shards")
    prepare.add_argument("--format", choices=("arrow", "hdf5"), default="arrow", help="shard file format")
    prepare.add_argument("--size", type=int, default=64, help="output image height = width, pixels")
    prepare.add_argument("--shards", type=int, default=1, help="number of shard files")
    prepare.add_argument("--kind", help="source kind (default: inferred from SOURCE)")
    prepare.add_argument("--crop", help="carpedm20|center160|center|none (celeba default carpedm20, else center)")
    prepare.add_argument("--channels", type=int, default=0, help="1 or 3 (default: the source's own)")
    prepare.add_argument("--fonts", default="", help="glyphs: font files PATH[:FACE],... (default bundled Noto)")
    prepare.add_argument("--charset", default="", help="glyphs: hex RANGE (4E00-9FFF), a FILE of chars, or common")
    prepare.add_argument("--source-size", type=int, default=0, help="hdf5-flat: H of the flattened source rows")
    prepare.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted in the manifest)")
    prepare.add_argument("--max-pixels", type=int, default=0, help="refuse image files declaring more pixels "
                         "(decompression bombs; default Pillow's 89478485)")
    prepare.add_argument("--jobs", type=int, default=0, help="worker processes (0: auto)")
    prepare.add_argument("--limit", type=int, default=0, help="keep only the first N items (0 = all)")
    prepare.add_argument("--workers", type=int, default=0, help="write shards as N Ray tasks on any host (0: here)")
    prepare.add_argument("--address", default="", help="with --workers: the Ray cluster (default: a local one)")

    evaluate = commands.add_parser("eval", help="sample-quality metrics of checkpoints (metric-<name>.jsonl, tb/)")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--metrics", help="comma-separated metric names (default: swd,msssim,ndb,recon)")
    evaluate.add_argument("--checkpoint", default="latest", help="STEP, 'latest' or 'all'")
    evaluate.add_argument("--n", type=int, default=2048, help="images per set (real and generated)")

    tune = commands.add_parser("tune", help="a Ray Tune sweep of training runs (tune/*.yaml)")
    tune.add_argument("spec", metavar="SPEC", help="sweep spec YAML (base, space, scheduler, metric, ...)")
    tune.add_argument("overrides", nargs="*", help="tune.<key>=value for the spec, dotted key=value for the base")
    tune.add_argument("--address", help="alias of run.address (an existing Ray cluster)")
    tune.add_argument("--resume", action="store_true", help="continue the interrupted sweep in run.dir")

    interpolate = commands.add_parser("interpolate", help="slerp between the latents of two real images (+ mirror)")
    interpolate.add_argument("run_dir")
    interpolate.add_argument("a", metavar="A", help="an image file, or one character rendered as the run's glyphs")
    interpolate.add_argument("b", metavar="B", help="an image file, or one character")
    interpolate.add_argument("--steps", type=int, default=10, help="decoded images from A's to B's reconstruction")
    _latent_options(interpolate)

    arithmetic = commands.add_parser("arithmetic", help='"A - B + C" in latent space, the seed-002 figure')
    arithmetic.add_argument("run_dir")
    arithmetic.add_argument("--triples", help="file of triples (default: the bundled triples_default.txt)")
    _latent_options(arithmetic)

    decompose = commands.add_parser("decompose", help="multigen: parts of real images, recombinations, each G_k")
    decompose.add_argument("run_dir")
    decompose.add_argument("--out", help="output directory (default RUN_DIR/decompose/step-XXXXXXXX)")
    decompose.add_argument("--checkpoint", type=int, help="step of the checkpoint (default: the latest)")
    decompose.add_argument("--seed", type=int, default=0, help="seed of the latents and the real images picked")

    report = commands.add_parser("report", help="RUN_DIR/report.html: curves, metrics, samples, config")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one run, or several side by side")
    report.add_argument("--out", help="output file (default: RUN_DIR/report.html of the first run)")
    return parser


def _check_invert_steps(args) -> None:
    if args.invert_steps < 1:
        raise ConfigError(f"--invert-steps {args.invert_steps}: must be at least 1")


def _latent_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--latent", choices=("encoder", "invert"), default="encoder",
                         help="encoder (vaegan: E; BEGAN: D's encoder) or invert (Adam on |x - G(z_r)|)")
    command.add_argument("--out", help="output directory (default RUN_DIR/latent)")
    command.add_argument("--checkpoint", type=int, help="step of the checkpoint (default: the latest)")
    command.add_argument("--invert-steps", type=int, default=300, help="Adam steps per z_r inversion")


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
        _check_resume(cfg, load_config(saved), run_dir)  # compared as resolved, the same way as cfg
    else:
        cfg = load_config(args.config, _overrides(args))
        run_dir = resolve_run_dir(cfg)
        if ckpt.list_checkpoints(run_dir):
            raise ConfigError(f"run.dir={run_dir}: already has checkpoints; continue it with --resume {run_dir}")
    if cfg.train.precision != "fp32" and cfg.train.device == "auto":
        import torch  # deferred: the other commands start faster without it

        if not (torch.cuda.is_available() or (cfg.run.workers > 0 and cfg.run.gpus_per_worker > 0)):
            raise ConfigError(f"train.precision={cfg.train.precision}: mixed precision needs a GPU; no CUDA device")
    check_source(cfg)
    check_eval_files(cfg)
    return cfg


def check_eval_files(cfg) -> None:
    """The feature nets train.eval_metrics needs, checked before any cluster work or training step."""
    if not cfg.train.eval_every:
        return
    from began_dist.eval.metrics import check_prerequisites, parse_metrics

    try:
        check_prerequisites(parse_metrics(cfg.train.eval_metrics))
    except FileNotFoundError as error:
        raise ConfigError(f"train.eval_metrics={cfg.train.eval_metrics}: {error}") from None


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
        if cfg.run.workers > 0:
            from began_dist.distributed.ray_train import run_on_ray

            result = run_on_ray(cfg)
            if result.get("status") == "non_finite":
                raise NonFiniteLoss(result["error"])
        else:
            result = train_loop(OmegaConf.to_container(cfg, resolve=True))
    except NonFiniteLoss as error:
        print(f"began-dist: {error}", file=sys.stderr)
        return EXIT_NON_FINITE
    except Interrupted as error:
        print(f"began-dist: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    run_dir = cfg.run.dir
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


def run_eval(args) -> int:
    from began_dist.eval.evaluate import evaluate_run, summary

    if args.n < 2:
        raise ConfigError(f"--n {args.n}: must be at least 2")
    try:
        results = evaluate_run(args.run_dir, args.metrics, args.checkpoint, args.n)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    for step in sorted({result["step"] for result in results}):
        print(f"step {step}: {summary([r for r in results if r['step'] == step])}")
    return EXIT_OK


def run_interpolate(args) -> int:
    from began_dist.eval.interpolate import write_interpolation

    if args.steps < 2:
        raise ConfigError(f"--steps {args.steps}: must be at least 2")
    _check_invert_steps(args)
    return _print_paths(write_interpolation, args.run_dir, args.a, args.b, args.steps, args.latent, args.out,
                        args.checkpoint, args.invert_steps)


def run_arithmetic(args) -> int:
    from began_dist.eval.arithmetic import DEFAULT_TRIPLES, write_arithmetic

    _check_invert_steps(args)
    return _print_paths(write_arithmetic, args.run_dir, args.triples or DEFAULT_TRIPLES, args.latent, args.out,
                        args.checkpoint, args.invert_steps)


def _print_paths(write, *args) -> int:
    """Run a latent command's writer and print the files it wrote."""
    try:
        paths = write(*args)
    except FileNotFoundError as error:  # no run or no checkpoint there
        raise ConfigError(str(error)) from None
    for path in paths:
        print(path)
    return EXIT_OK


def run_report(args) -> int:
    from began_dist.eval.report import write_report

    try:
        print(write_report(args.run_dirs, args.out))
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    return EXIT_OK


def run_decompose(args) -> int:
    from began_dist.eval.decompose import decompose

    try:
        paths = decompose(args.run_dir, args.out, args.checkpoint, args.seed)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(str(error)) from None
    for path in paths:
        print(path)
    return EXIT_OK


def run_tune(args) -> int:
    from began_dist.tune.spec import load_spec
    from began_dist.tune.sweep import (
        SweepInterrupted,
        best_line,
        default_sweep_dir,
        format_table,
        prepare_sweep_dir,
        run_sweep,
        trial_base,
    )

    overrides = list(args.overrides) + ([f"run.address={args.address}"] if args.address else [])
    spec, base = load_spec(args.spec, overrides)
    if args.resume and not base.run.dir:
        raise ConfigError("--resume: give the sweep's directory as run.dir=SWEEP_DIR")
    base.run.dir = base.run.dir or default_sweep_dir(spec)
    resolve_run_dir(base)
    base = trial_base(spec, base)
    check_eval_files(base)
    spec, base = prepare_sweep_dir(spec, base, args.resume)
    try:
        rows = run_sweep(spec, base, args.resume)
    except SweepInterrupted as error:
        print(f"began-dist: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(format_table(rows))
    print(best_line(spec, rows) or "no trial reported the objective")
    print(f"results: {os.path.join(base.run.dir, 'results.csv')}")
    print(f"report:  began-dist report {base.run.dir}")
    return EXIT_OK


def run_prepare(args) -> int:
    from began_dist.data import prepare as prep

    if args.verify:
        if args.source or args.out:
            raise DataError("prepare --verify DATASET_DIR takes no SOURCE or OUT")
        return EXIT_OK if prep.verify(args.verify) else EXIT_REFUSED
    if not (args.source and args.out):
        raise DataError("prepare: give SOURCE and OUT (or --verify DATASET_DIR)")
    names = ("format", "size", "shards", "kind", "crop", "channels", "fonts", "charset", "source_size", "skip_bad",
             "jobs", "limit", "max_pixels")
    options = prep.PrepareOptions(**{name: getattr(args, name) or prep.PrepareOptions.__dataclass_fields__[name]
                                     .default for name in names})
    runner = None
    if args.workers > 0:
        from began_dist.distributed.ray_prepare import ray_runner

        runner = ray_runner(args.workers, args.address)
    prep.prepare(args.source, args.out, options, runner)
    return EXIT_OK


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command not in ("train", "tune") or any(item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("train", "tune"):
        args.overrides = list(args.overrides) + extra  # key=value items after a flag
    try:
        run = {
            "train": run_train,
            "sample": run_sample,
            "prepare": run_prepare,
            "eval": run_eval,
            "report": run_report,
            "tune": run_tune,
            "interpolate": run_interpolate,
            "arithmetic": run_arithmetic,
            "decompose": run_decompose,
        }
        return run[args.command](args)
    except (ConfigError, DataError) as error:
        print(f"began-dist: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
