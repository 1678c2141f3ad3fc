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

Exit codes (EXIT_CODES, from the run's Status): 0 done; 1 failed; 2 refused input
(before any work); 3 stopped on a non-finite loss (last good checkpoint kept);
4 storage error; 130 interrupted (checkpoint saved).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from began_dist import families, storage  # noqa: F401  (families: registers their config rules, docs/design.md)
from began_dist.config import ConfigError
from began_dist.data import DataError
from began_dist.train.result import Status

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_NON_FINITE, EXIT_STORAGE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_CODES = {  # how a run ended -> the process's exit code (this module's docstring): the one table
    Status.done: EXIT_OK,
    Status.failed: EXIT_FAILED,
    Status.refused: EXIT_REFUSED,
    Status.non_finite: EXIT_NON_FINITE,
    Status.storage_error: EXIT_STORAGE,
    Status.interrupted: EXIT_INTERRUPTED,
}
PREPARE_HELP = {  # flag help of `prepare`; the flags and their defaults come from data.prepare.PrepareOptions
    "format": ("shard file format", ("arrow", "hdf5")),
    "size": ("output image height = width, pixels", None),
    "shards": ("number of shard files", None),
    "kind": ("source kind (default: inferred from SOURCE)", None),
    "crop": ("carpedm20|center160|center|none (celeba default carpedm20, else center)", None),
    "channels": ("1 or 3 (default: the source's own)", None),
    "fonts": ("glyphs: font files PATH[:FACE],... (default bundled Noto)", None),
    "charset": ("glyphs: hex RANGE (4E00-9FFF), a FILE of chars, or common", None),
    "source_size": ("hdf5-flat: H of the flattened source rows", None),
    "skip_bad": ("skip unreadable images (counted in the manifest)", None),
    "max_pixels": ("refuse image files declaring more pixels (decompression bombs; default Pillow's 89478485)", None),
    "jobs": ("worker processes (0: auto)", None),
    "limit": ("keep only the first N items (0 = all)", None),
}
WORKER_ALIASES = {  # flag -> config key (aliases of run.*, docs/design.md)
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
    sample.add_argument("--checkpoint", type=checkpoint_choice, help=CHECKPOINT_HELP)
    sample.add_argument("--seed", type=int, default=0, help="seed of the latents")

    prepare = commands.add_parser("prepare", help="write a sharded dataset (Arrow/HDF5), or --verify one")
    prepare.add_argument("source", nargs="?", help="folder, archive, HDF5 file, or glyphs|shapes|shapes4|cns|...")
    prepare.add_argument("out", nargs="?", help="output dataset directory (shapes, shapes4: OUT/train and OUT/heldout)")
    prepare.add_argument("--verify", metavar="DATASET_DIR", help="recompute the checksums of DATASET_DIR's shards")
    _prepare_options(prepare)

    evaluate = commands.add_parser("eval", help="sample-quality metrics of checkpoints (metric-<name>.jsonl, tb/)")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--metrics", help="comma-separated metric names (default: swd,msssim,ndb,recon)")
    evaluate.add_argument("--checkpoint", default="latest", help="STEP, 'latest', 'best' or 'all'")
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
    decompose.add_argument("--checkpoint", type=checkpoint_choice, help=CHECKPOINT_HELP)
    decompose.add_argument("--seed", type=int, default=0, help="seed of the latents and the real images picked")

    report = commands.add_parser("report", help="RUN_DIR/report.html: curves, metrics, samples, config")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one run, or several side by side")
    report.add_argument("--out", help="output file (default: RUN_DIR/report.html of the first run)")
    return parser


CHECKPOINT_HELP = "STEP, 'latest' (the default) or 'best' (by the recorded KID, SWD and NDB; docs/evaluation.md)"


def checkpoint_choice(text: str):
    """A --checkpoint value: a step, 'latest' or 'best' (argparse refuses anything else, naming the flag)."""
    if text in ("latest", "best"):
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a step, 'latest' or 'best'")
    return int(text)


def _prepare_options(command: argparse.ArgumentParser) -> None:
    """One flag per PrepareOptions field, with the dataclass's default (the one source of defaults), and
    --workers/--address for preparing on a Ray cluster."""
    from began_dist.data.prepare import PrepareOptions

    for option in dataclasses.fields(PrepareOptions):
        help_text, choices = PREPARE_HELP.get(option.name, ("", None))
        flag = "--" + option.name.replace("_", "-")
        if isinstance(option.default, bool):
            command.add_argument(flag, action="store_true", default=option.default, help=help_text)
        else:
            command.add_argument(flag, type=type(option.default), default=option.default, choices=choices,
                                 help=help_text)
    # where the shards are written, not what they hold: not PrepareOptions fields
    command.add_argument("--workers", type=int, default=0, help="write shards as N Ray tasks on any host (0: here)")
    command.add_argument("--address", default="", help="with --workers: the Ray cluster (default: a local one)")


def _check_invert_steps(args) -> None:
    if args.invert_steps < 1:
        raise ConfigError(f"--invert-steps {args.invert_steps}: must be at least 1")


def _latent_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--latent", choices=("encoder", "invert"), default="encoder",
                         help="encoder (vaegan: E; BEGAN: D's encoder) or invert (Adam on |x - G(z_r)|)")
    command.add_argument("--out", help="output directory (default RUN_DIR/latent)")
    command.add_argument("--checkpoint", type=checkpoint_choice, help=CHECKPOINT_HELP)
    command.add_argument("--invert-steps", type=int, default=300, help="Adam steps per z_r inversion")


def _overrides(args) -> list[str]:
    given = {key: getattr(args, flag) for flag, key in WORKER_ALIASES.items() if getattr(args, flag) is not None}
    return list(args.overrides) + [f"{key}={value}" for key, value in given.items()]


def run_train(args) -> int:
    from began_dist.launch import launch
    from began_dist.train.preflight import train_config

    result = launch(train_config(args.config, _overrides(args), args.resume))
    if result.status is not Status.done:
        print(f"began-dist: {result.message}", file=sys.stderr)
        return EXIT_CODES[result.status]
    print(f"samples:     {storage.join(result.run_dir, 'samples')}")
    print(f"tensorboard: tensorboard --logdir {storage.join(result.run_dir, 'tb')}")
    return EXIT_OK


def run_sample(args) -> int:
    from began_dist.eval.commands.sample import write_samples

    try:
        paths = write_samples(args.run_dir, args.out, args.n, args.seed, step=args.checkpoint)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    for path in paths:
        print(path)
    return EXIT_OK


def run_eval(args) -> int:
    from began_dist.eval.metrics import DEFAULT_METRICS
    from began_dist.eval.metrics.evaluate import evaluate_run, summary
    from began_dist.train.preflight import check_metrics

    if args.n < 2:
        raise ConfigError(f"--n {args.n}: must be at least 2")
    check_metrics(args.metrics or ",".join(DEFAULT_METRICS), "--metrics")
    try:
        results = evaluate_run(args.run_dir, args.metrics, args.checkpoint, args.n)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    for step in sorted({result["step"] for result in results}):
        print(f"step {step}: {summary([r for r in results if r['step'] == step])}")
    return EXIT_OK


def run_interpolate(args) -> int:
    from began_dist.eval.commands.interpolate import write_interpolation

    if args.steps < 2:
        raise ConfigError(f"--steps {args.steps}: must be at least 2")
    _check_invert_steps(args)
    return _print_paths(write_interpolation, args.run_dir, args.a, args.b, args.steps, args.latent, args.out,
                        args.checkpoint, args.invert_steps)


def run_arithmetic(args) -> int:
    from began_dist.eval.commands.arithmetic import DEFAULT_TRIPLES, write_arithmetic

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
    from began_dist.eval.reports.run import write_report

    try:
        print(write_report(args.run_dirs, args.out))
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    return EXIT_OK


def run_decompose(args) -> int:
    from began_dist.eval.commands.decompose import decompose

    try:
        paths = decompose(args.run_dir, args.out, args.checkpoint, args.seed)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(str(error)) from None
    for path in paths:
        print(path)
    return EXIT_OK


def run_tune(args) -> int:
    from began_dist.tune.sweep import main as tune_main

    overrides = list(args.overrides) + ([f"run.address={args.address}"] if args.address else [])
    return EXIT_CODES[tune_main(args.spec, overrides, args.resume)]


def run_prepare(args) -> int:
    from began_dist.data import prepare as prep

    if args.verify:
        if args.source or args.out:
            raise DataError("prepare --verify DATASET_DIR takes no SOURCE or OUT")
        return EXIT_OK if prep.verify(args.verify) else EXIT_REFUSED
    if not (args.source and args.out):
        raise DataError("prepare: give SOURCE and OUT (or --verify DATASET_DIR)")
    options = prep.PrepareOptions(**{option.name: getattr(args, option.name)
                                     for option in dataclasses.fields(prep.PrepareOptions)})
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
