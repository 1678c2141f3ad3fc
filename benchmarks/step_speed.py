"""Speed, FLOPs and memory of one BEGAN training step: ours against a plain port, in one run.

    python benchmarks/step_speed.py                        # 32 and 64 px, both orders and archs
    python benchmarks/step_speed.py --sizes 32 --repeats 7 # quicker, tighter medians
    python benchmarks/step_speed.py --compile              # our step with train.compile=true
    python benchmarks/step_speed.py --nchw                 # our step without channels_last
    python benchmarks/step_speed.py --device cuda --precision bf16

For every (size, arch, update order) the script builds our `BeganFamily` and the plain
`reference_step` (benchmarks/reference_step.py) from the same initial weights and the
same batch, counts the FLOPs of one step of each with FlopCounterMode, then times the
two steps interleaved (ref, ours, ours, ref, ...) so both see the same machine load.
The ceiling is a 2048^3 fp32 matmul timed in the same process before and after.

Necessary FLOPs per image (f_G, f_D: forward FLOPs of G and D per image):
    alternating   4 f_G + 8 f_D      simultaneous  3 f_G + 6 f_D
The reference does 4 f_G + 9 f_D (alternating) and 3 f_G + 9 f_D (simultaneous).
f_G and f_D are counted on the layers as the paper writes them (upsample, then a 3x3 conv),
which the plain port runs; ours runs each upsample + conv as one transposed conv with fewer
FLOPs (`upsample_conv`), so its counted FLOPs (GF ours) fall below the necessary ones.
Nothing here is a test: timings on a shared machine are only meaningful as ratios
measured in the same run, so every figure comes with its spread and the load average.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import statistics
import sys
import time

import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from began_dist.config import Config  # noqa: E402
from began_dist.families.began import BeganFamily  # noqa: E402
from began_dist.models.began import build_networks, plain_upsample  # noqa: E402
from benchmarks.reference_step import reference_step  # noqa: E402

# What every timing reads: wall time, or this process's CPU time with --clock cpu (`run`).
clock = time.perf_counter
NECESSARY = {"alternating": (4, 8), "simultaneous": (3, 6)}  # (x f_G, x f_D) per image
REFERENCE = {"alternating": (4, 9), "simultaneous": (3, 9)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="image sizes, pixels")
    parser.add_argument("--archs", nargs="+", default=["repeat", "skip"], help="model.arch values")
    parser.add_argument("--orders", nargs="+", default=["alternating", "simultaneous"], help="update orders")
    parser.add_argument("--batch", type=int, default=16, help="images per step")
    parser.add_argument("--filters", type=int, default=64, help="n")
    parser.add_argument("--latent", type=int, default=64, help="Nz = Nh")
    parser.add_argument("--convs", type=int, default=2, help="r: convs per scale")
    parser.add_argument("--channels", type=int, default=3, help="image channels")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each after the FLOP-counting one, >= 1")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps of each (interleaved)")
    parser.add_argument("--matmul-repeats", type=int, default=5, help="timed 2048^3 matmuls, before and after")
    parser.add_argument("--conv-repeats", type=int, default=3, help="timed passes of each conv shape and layout")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="ours, on GPU")
    parser.add_argument("--compile", action="store_true", help="ours with train.compile=true")
    parser.add_argument("--nchw", action="store_true", help="ours without channels_last")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        metavar="LAYOUT[-bf16]",
        help="more versions of our step timed in the same interleaving: nchw, cl, nchw-bf16, cl-bf16 "
        "(bf16: torch.autocast around our step, also on the CPU)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help="cpu: time in this process's CPU seconds, with --threads 1 (the one thread's running time, "
        "nearly free of other processes' load; with more threads it counts spin-waits)",
    )
    parser.add_argument("--profile", action="store_true", help="also profile one step of each (torch.profiler)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH as JSON")
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, repeats: int, n: int = 2048) -> list[float]:
    """fp32 n^3 matmul GFLOP/s samples: the machine's ceiling for dense work."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    samples = []
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        a @ b
        synchronize(device)
        samples.append(2 * n**3 / (clock() - start) / 1e9)
    return samples


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what oneDNN's fp32/bf16 kernels use


def machine_line(device: torch.device) -> str:
    """The processor the figures come from: CPU model and the vector flags that decide oneDNN's kernels
    (from /proc/cpuinfo), and torch's own CPU capability; or the GPU's name."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"gpu: {props.name} (sm {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown":
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux
        pass
    marks = " ".join(f"{flag}{'+' if flag in flags else '-'}" for flag in CPU_FLAGS)
    capability = torch.backends.cpu.get_cpu_capability()
    return f"cpu: {model}; flags {marks}; torch capability {capability}, oneDNN {torch.backends.mkldnn.is_available()}"


def conv_shapes(net: torch.nn.Module, example: torch.Tensor) -> list[tuple]:
    """(input shape, out channels, stride) of every Conv2d `net` runs on `example`, in call order."""
    shapes, hooks = [], []
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            hooks.append(
                module.register_forward_hook(
                    lambda mod, inputs, out: shapes.append((tuple(inputs[0].shape), mod.out_channels, mod.stride[0]))
                )
            )
    try:
        with torch.no_grad():
            net(example)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def conv_rates(shape: tuple, device: torch.device, repeats: int) -> dict:
    """GFLOP/s of one 3x3 conv (padding 1) of `shape`, fp32: forward, and backward (input and
    weight gradients, 2x the forward's FLOPs), in NCHW and in channels_last; medians of `repeats`."""
    (batch, c_in, height, width), c_out, stride = shape
    conv = torch.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1).to(device)
    x = torch.randn(batch, c_in, height, width, device=device)
    out_hw = (height + 2 - 3) // stride + 1
    flops = 2 * batch * c_out * out_hw * out_hw * c_in * 9
    rates = {}
    for layout, fmt in (("nchw", torch.contiguous_format), ("cl", torch.channels_last)):
        conv.to(memory_format=fmt)
        xi = x.contiguous(memory_format=fmt).requires_grad_(True)
        params = (xi, conv.weight, conv.bias)
        grad_out = torch.randn(batch, c_out, out_hw, out_hw, device=device).contiguous(memory_format=fmt)
        fwd, bwd = [], []
        for i in range(repeats + 1):  # the first of each is a warm-up (oneDNN builds its kernels)
            synchronize(device)
            start = clock()
            out = conv(xi)
            synchronize(device)
            middle = clock()
            torch.autograd.grad(out, params, grad_out)
            synchronize(device)
            if i:
                fwd.append(flops / (middle - start) / 1e9)
                bwd.append(2 * flops / (clock() - middle) / 1e9)
        rates[layout] = (statistics.median(fwd), statistics.median(bwd))
    return {"flops": flops, **rates}


def conv_ceiling(args, device: torch.device, size: int, arch: str, cache: dict) -> dict:
    """The best 3x3 conv throughput at the model's own layer shapes (batch `args.batch`, fp32).

    Every conv of G and D is timed once forward and once backward in both layouts (unique shapes
    once, cached across rows). The ceiling is the rate of one forward and one backward of every
    conv of G and D with each shape, direction, in its faster layout; `nchw` and `cl` are the same
    with every conv in that one layout, and `peak` the fastest single conv measured.
    """
    cfg = make_config(args, size, arch, "alternating")
    G, D = (plain_upsample(net.to(device)) for net in build_networks(cfg.model))  # the paper's conv shapes
    z = torch.rand(args.batch, args.latent, device=device)
    shapes = conv_shapes(G, z) + conv_shapes(D, torch.rand(args.batch, args.channels, size, size, device=device))
    totals = {"flops": 0.0, "best": 0.0, "nchw": 0.0, "cl": 0.0}
    peak = 0.0
    for shape in shapes:
        if shape not in cache:
            cache[shape] = conv_rates(shape, device, args.conv_repeats)
        r = cache[shape]
        f = r["flops"]
        totals["flops"] += 3 * f  # forward + backward
        for layout in ("nchw", "cl"):
            totals[layout] += f / r[layout][0] + 2 * f / r[layout][1]
        totals["best"] += f / max(r["nchw"][0], r["cl"][0]) + 2 * f / max(r["nchw"][1], r["cl"][1])
        peak = max(peak, *r["nchw"], *r["cl"])
    return {key: totals["flops"] / totals[key] for key in ("best", "nchw", "cl")} | {"peak": peak}


def print_conv_table(cache: dict) -> None:
    print("\n3x3 conv GFLOP/s at the model's layer shapes (fp32, median; bwd = input + weight gradients):")
    header = (
        f"  {'input (N,C,H,W)':>20} {'out':>4} {'s':>1} {'GF fwd':>6} "
        f"{'fwd NCHW':>8} {'fwd CL':>8} {'bwd NCHW':>8} {'bwd CL':>8}"
    )
    print(header)
    for ((n, c, h, w), c_out, stride), r in sorted(cache.items(), key=lambda item: (item[0][0][2], item[0][0][1])):
        print(
            f"  {str((n, c, h, w)):>20} {c_out:4d} {stride:1d} {r['flops'] / 1e9:6.2f} "
            f"{r['nchw'][0]:8.1f} {r['cl'][0]:8.1f} {r['nchw'][1]:8.1f} {r['cl'][1]:8.1f}"
        )


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_memory_mb(step, device: torch.device) -> float:
    """Peak memory one call of `step` adds: cuda max_memory_allocated, or the CPU's RSS high-water mark
    (VmHWM after resetting it through /proc/self/clear_refs). NaN where neither is available."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS grows with what the step allocates
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        base = _status_kib("VmRSS")
    except (OSError, AttributeError):  # not Linux/glibc
        step()
        return float("nan")
    step()
    return (_status_kib("VmHWM") - base) / 1024


def count_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def forward_flops_per_image(G, D, batch: int, latent: int, device: torch.device) -> tuple[float, float]:
    """(f_G, f_D): forward FLOPs of G and D per image."""
    with torch.no_grad():
        z = torch.rand(batch, latent, device=device) * 2 - 1
        f_G = count_flops(lambda: G(z))
        images = G(z)
        f_D = count_flops(lambda: D(images))
    return f_G / batch, f_D / batch


def profile_step(step, name: str, ceiling: float, rows: int = 8) -> None:
    """Where one step's time goes: the ops with FLOPs (inclusive time, GFLOP/s, share of the matmul
    ceiling) and the ops with the most self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, with_flops=True) as prof:
        step()
    events = prof.key_averages()
    total_us = sum(e.self_cpu_time_total for e in events)
    print(f"\n  profile {name}: {total_us / 1e3:.0f} ms of op time")
    print(f"    {'op (with FLOPs)':34} {'calls':>5} {'ms':>8} {'share':>6} {'GFLOP':>7} {'GFLOP/s':>8} {'/matmul':>7}")
    for e in sorted((e for e in events if e.flops), key=lambda e: -e.cpu_time_total)[:rows]:
        rate = e.flops / max(e.cpu_time_total, 1) / 1e3
        print(
            f"    {e.key:34} {e.count:5d} {e.cpu_time_total / 1e3:8.1f} {e.cpu_time_total / total_us:6.1%} "
            f"{e.flops / 1e9:7.2f} {rate:8.1f} {rate / ceiling:7.2f}"
        )
    print(f"    {'op (self time)':34} {'calls':>5} {'ms':>8} {'share':>6}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]:
        print(f"    {e.key:34} {e.count:5d} {e.self_cpu_time_total / 1e3:8.1f} {e.self_cpu_time_total / total_us:6.1%}")


def make_config(args, size: int, arch: str, order: str):
    cfg = OmegaConf.structured(Config)
    m, t = cfg.model, cfg.train
    m.image_size, m.arch, m.channels, m.filters = size, arch, args.channels, args.filters
    m.nz = m.nh = args.latent
    m.convs_per_scale = args.convs
    t.update_order, t.batch_size, t.compile, t.precision = order, args.batch, args.compile, args.precision
    return cfg


LAYOUTS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}


def variant_family(cfg, device: torch.device, seed: int, variant: str) -> BeganFamily:
    """Our step as `variant` ("" = as configured, "nchw", "cl", "nchw-bf16", "cl-bf16", "unfused"), from seed `seed`.

    "unfused" upsamples, then convs, as before the decoder's upsample convs ran as one op.

    bf16 sets the family's autocast dtype directly: train.precision refuses bf16 on the CPU, and
    this is how the benchmark measures what it would do there (docs/performance.md).
    """
    torch.manual_seed(seed)
    family = BeganFamily(cfg, device)
    if variant == "unfused":
        for net in (family.G, family.D):
            plain_upsample(net)
        return family
    layout, _, precision = variant.partition("-")
    if layout:
        if layout not in LAYOUTS or precision not in ("", "fp32", "bf16"):
            raise SystemExit(f"--variants {variant}: expected unfused, or nchw|cl optionally -bf16")
        family.memory_format = LAYOUTS[layout]
        for net in (family.G, family.D):
            net.to(memory_format=family.memory_format)
    if precision == "bf16":
        family.autocast_dtype = torch.bfloat16
    return family


def bench_one(args, device: torch.device, size: int, arch: str, order: str, ceiling: float) -> dict:
    """Both steps of one (size, arch, order) and any --variants of ours, from the same weights and batch."""
    cfg = make_config(args, size, arch, order)
    ours = variant_family(cfg, device, args.seed, "nchw" if args.nchw else "")
    variants = {name: variant_family(cfg, device, args.seed, name) for name in args.variants}
    # The reference starts from our initial weights, in the plain NCHW layout, upsampling then convolving.
    G = plain_upsample(copy.deepcopy(ours.G).to(memory_format=torch.contiguous_format))
    D = plain_upsample(copy.deepcopy(ours.D).to(memory_format=torch.contiguous_format))
    adam = dict(lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
    opt_G, opt_D = torch.optim.Adam(G.parameters(), **adam), torch.optim.Adam(D.parameters(), **adam)
    real = torch.rand(args.batch, args.channels, size, size, device=device) * 2 - 1
    z = torch.rand(2, args.batch, args.latent, device=device) * 2 - 1
    k_ref = torch.zeros((), device=device)
    ours_z = z[: ours.latents_per_step]

    def ref_step():
        reference_step(G, D, opt_G, opt_D, k_ref, real, z[0], z[1], ours.gamma, ours.lambda_k, order)
        synchronize(device)

    def step_of(family):
        def step():
            family.train_step(real, ours_z)
            synchronize(device)

        return step

    our_step = step_of(ours)
    steps = {"ref": ref_step, "ours": our_step, **{name: step_of(family) for name, family in variants.items()}}

    # Necessary FLOPs are the paper's layers as written (3x3 convs on upsampled maps): the plain networks'
    f_G, f_D = forward_flops_per_image(G, D, args.batch, args.latent, device)
    result = dict(size=size, arch=arch, order=order, f_G=f_G, f_D=f_D)
    result["flops_ref"], result["flops_ours"] = count_flops(ref_step), count_flops(our_step)
    a, b = NECESSARY[order]
    result["flops_necessary"] = args.batch * (a * f_G + b * f_D)
    for family in variants.values():
        step_of(family)()  # the untimed first step ours and the reference had while their FLOPs were counted
    for _ in range(args.warmup):  # the last warm-up step of each also measures its peak memory
        mems = {name: peak_memory_mb(step, device) for name, step in steps.items()}
    result["mem_ref_mb"], result["mem_ours_mb"] = mems["ref"], mems["ours"]
    times, cpu_times = {name: [] for name in steps}, {name: [] for name in steps}
    order_of_steps = list(steps.items())
    for i in range(args.repeats):
        # ref, ours, ... then ..., ours, ref: every step sees the same load on average
        for name, step in order_of_steps if i % 2 == 0 else order_of_steps[::-1]:
            start, cpu_start = clock(), time.process_time()
            step()
            times[name].append(clock() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    result["t_ref"], result["t_ours"] = times["ref"], times["ours"]
    result["variants"] = {
        name: {
            "t": times[name],
            "mem_mb": mems[name],
            # per interleaved round: ours' time / the variant's (> 1: the variant is faster)
            "speedup_over_ours": [o / v for o, v in zip(times["ours"], times[name])],
            "cpu_speedup_over_ours": statistics.median(cpu_times["ours"]) / statistics.median(cpu_times[name]),
        }
        for name in variants
    }
    # CPU seconds of this process: less sensitive to other processes than wall time on a shared machine
    result["cpu_ratio"] = statistics.median(cpu_times["ref"]) / statistics.median(cpu_times["ours"])
    if args.profile:
        for name, step in (("reference", ref_step), ("ours", our_step)):
            profile_step(step, f"{name} {size} px {arch} {order}", ceiling)
    result["pair_ratios"] = [r / o for r, o in zip(times["ref"], times["ours"])]
    return result


def spread(values: list[float]) -> str:
    """Spread of samples as +-% of the median (half the min..max range)."""
    median = statistics.median(values)
    return f"{50 * (max(values) - min(values)) / median:.0f}%"


def print_table(args, summary: dict) -> None:
    results, matmul, loads = summary["results"], summary["matmul"], summary["loads"]
    print_conv_table(summary["conv_shapes"])
    mm = statistics.median(matmul)
    print(
        f"\n{summary['machine']}\ndevice {summary['device']}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; batch {args.batch}, n={args.filters}, nz=nh={args.latent}, r={args.convs}, {args.channels} "
        f"channels; ours: {'NCHW' if args.nchw else 'channels_last'}{', compiled' if args.compile else ''}, "
        f"{args.precision}; clock: {'CPU seconds' if args.clock == 'cpu' else 'wall'}"
    )
    print(
        f"matmul 2048^3 fp32: {mm:.1f} GFLOP/s median of {len(matmul)} (min {min(matmul):.1f}, "
        f"max {max(matmul):.1f}); load average before {loads[0]}, after {loads[1]}"
    )
    for key, c in summary["conv"].items():
        print(
            f"conv ceiling {key}: {c['best']:.1f} GFLOP/s (all NCHW {c['nchw']:.1f}, all channels_last "
            f"{c['cl']:.1f}, fastest single conv {c['peak']:.1f})"
        )
    print(
        f"timed: median of {args.repeats} interleaved steps each after {args.warmup + 1} warm-up; "
        "+-% = half the min..max range; GF = GFLOP per step;\n"
        "ceil = the higher of the matmul and the conv ceiling of the row's model (each conv shape in its faster "
        "layout);\nGF need counts the paper's layers as written (upsample, then conv); ours fuses each upsample + conv "
        "into one transposed conv (GF ours), so need GF/s can pass the ceiling;\n"
        "cpu-s ratio = ref / ours in this process's CPU seconds (robust to other load, counts spin-waits)\n"
    )
    header = (
        f"{'px':>3} {'arch':6} {'order':12} {'f_G':>5} {'f_D':>5} {'GF ref':>7} {'GF ours':>7} {'GF need':>7} "
        f"{'ref img/s':>13} {'ours img/s':>13} {'ours/ref':>13} {'ceil':>6} {'ref GF/s':>8} {'/ceil':>5} "
        f"{'need GF/s':>9} {'/ceil':>5} {'cpu-s ratio':>11} {'mem ref':>7} {'mem ours':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ceiling = r["ceiling"]
        ratio = statistics.median(r["pair_ratios"])
        ref_ips = f"{args.batch / r['t_ref_median']:.2f}+-{spread(r['t_ref'])}"
        our_ips = f"{args.batch / r['t_ours_median']:.2f}+-{spread(r['t_ours'])}"
        ratio_text = f"{ratio:.2f}x+-{spread(r['pair_ratios'])}"
        print(
            f"{r['size']:>3} {r['arch']:6} {r['order']:12} {r['f_G'] / 1e9:5.3f} {r['f_D'] / 1e9:5.3f} "
            f"{r['flops_ref'] / 1e9:7.1f} {r['flops_ours'] / 1e9:7.1f} {r['flops_necessary'] / 1e9:7.1f} "
            f"{ref_ips:>13} {our_ips:>13} {ratio_text:>13} {ceiling:6.1f} "
            f"{r['ref_gflops']:8.1f} {r['ref_gflops'] / ceiling:5.2f} {r['need_gflops']:9.1f} "
            f"{r['need_gflops'] / ceiling:5.2f} {r['cpu_ratio']:10.2f}x "
            f"{r['mem_ref_mb']:6.0f}M {r['mem_ours_mb']:7.0f}M"
        )
    variant_rows = [(r, name, v) for r in results for name, v in r.get("variants", {}).items()]
    if variant_rows:
        print("\nvariants of ours, timed in the same interleaving (speedup = ours' time / the variant's):")
        for r, name, v in variant_rows:
            t = statistics.median(v["t"])
            print(
                f"  {r['size']:>3} px {r['arch']:6} {r['order']:12} {name:10} {args.batch / t:7.2f} img/s "
                f"speedup {statistics.median(v['speedup_over_ours']):.2f}x+-{spread(v['speedup_over_ours'])} "
                f"(cpu-s {v['cpu_speedup_over_ours']:.2f}x), need GF/s {r['flops_necessary'] / t / 1e9:6.1f}, "
                f"vs ref per FLOP {r['flops_necessary'] / t / r['ref_gflops'] / 1e9:.2f}, mem {v['mem_mb']:.0f}M"
            )
    print("\nsimultaneous / alternating (ours, images/s):")
    by_key = {(r["size"], r["arch"], r["order"]): r for r in results}
    for (size, arch, order), r in by_key.items():
        other = by_key.get((size, arch, "alternating"))
        if order == "simultaneous" and other:
            print(f"  {size:>3} px {arch:6} {other['t_ours_median'] / r['t_ours_median']:.2f}x")


def select_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def run(args) -> dict:
    """Every (size, arch, order) of `args`, with the matmul and conv ceilings: a JSON-able summary."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    if args.warmup < 1 or args.repeats < 1:
        raise SystemExit("--warmup and --repeats must be >= 1")
    if args.precision != "fp32" and device.type != "cuda":
        raise SystemExit("--precision bf16/fp16 needs a CUDA device")
    if args.clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise SystemExit("--clock cpu needs the CPU and --threads 1")
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    loads = [" ".join(f"{x:.2f}" for x in os.getloadavg())]
    matmul = matmul_gflops(device, args.matmul_repeats)
    conv_cache, conv = {}, {}
    for size in args.sizes:
        for arch in args.archs:
            conv[f"{size} px {arch}"] = conv_ceiling(args, device, size, arch, conv_cache)
    results = []
    for size in args.sizes:
        for arch in args.archs:
            for order in args.orders:
                started = time.perf_counter()
                results.append(bench_one(args, device, size, arch, order, statistics.median(matmul)))
                r = results[-1]
                ratio = statistics.median(r["pair_ratios"])
                print(
                    f"  {size} px {arch} {order}: ours/ref {ratio:.2f}x, cpu-s {r['cpu_ratio']:.2f}x "
                    f"({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    matmul += matmul_gflops(device, args.matmul_repeats)
    loads.append(" ".join(f"{x:.2f}" for x in os.getloadavg()))
    for r in results:
        r["t_ref_median"], r["t_ours_median"] = statistics.median(r["t_ref"]), statistics.median(r["t_ours"])
        r["ref_gflops"] = r["flops_ref"] / r["t_ref_median"] / 1e9
        r["need_gflops"] = r["flops_necessary"] / r["t_ours_median"] / 1e9
        r["ours_over_ref"] = statistics.median(r["pair_ratios"])
        r["ceiling"] = max(statistics.median(matmul), conv[f"{r['size']} px {r['arch']}"]["best"])
    return {
        "machine": machine_line(device),
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "args": vars(args),
        "matmul": matmul,
        "conv": conv,
        "conv_shapes": conv_cache,
        "loads": loads,
        "results": results,
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    summary = run(args)
    print_table(args, summary)
    if args.json:
        with open(args.json, "w") as handle:
            # conv shapes are tuple keys: JSON gets them as strings
            json.dump({**summary, "conv_shapes": {str(k): v for k, v in summary["conv_shapes"].items()}}, handle)
    return summary


if __name__ == "__main__":
    main()
