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
Nothing here is a test: timings on a shared machine are only meaningful as ratios
measured in the same run, so every figure comes with its spread and the load average.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
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
from benchmarks.reference_step import reference_step  # noqa: E402

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
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="ours, on GPU")
    parser.add_argument("--compile", action="store_true", help="ours with train.compile=true")
    parser.add_argument("--nchw", action="store_true", help="ours without channels_last")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--profile", action="store_true", help="also profile one step of each (torch.profiler)")
    parser.add_argument("--seed", type=int, default=0)
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
        start = time.perf_counter()
        a @ b
        synchronize(device)
        samples.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return samples


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


def bench_one(args, device: torch.device, size: int, arch: str, order: str, ceiling: float) -> dict:
    """Both steps of one (size, arch, order), from the same weights and batch."""
    cfg = make_config(args, size, arch, order)
    torch.manual_seed(args.seed)
    ours = BeganFamily(cfg, device)
    if args.nchw:
        ours.memory_format = torch.contiguous_format
        for net in (ours.G, ours.D):
            net.to(memory_format=torch.contiguous_format)
    # The reference starts from our initial weights, in the plain NCHW layout.
    G = copy.deepcopy(ours.G).to(memory_format=torch.contiguous_format)
    D = copy.deepcopy(ours.D).to(memory_format=torch.contiguous_format)
    adam = dict(lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2))
    opt_G, opt_D = torch.optim.Adam(G.parameters(), **adam), torch.optim.Adam(D.parameters(), **adam)
    real = torch.rand(args.batch, args.channels, size, size, device=device) * 2 - 1
    z = torch.rand(2, args.batch, args.latent, device=device) * 2 - 1
    k_ref = torch.zeros((), device=device)
    ours_z = z[: ours.latents_per_step]

    def ref_step():
        reference_step(G, D, opt_G, opt_D, k_ref, real, z[0], z[1], ours.gamma, ours.lambda_k, order)
        synchronize(device)

    def our_step():
        ours.train_step(real, ours_z)
        synchronize(device)

    f_G, f_D = forward_flops_per_image(ours.G, ours.D, args.batch, args.latent, device)
    result = dict(size=size, arch=arch, order=order, f_G=f_G, f_D=f_D)
    result["flops_ref"], result["flops_ours"] = count_flops(ref_step), count_flops(our_step)
    a, b = NECESSARY[order]
    result["flops_necessary"] = args.batch * (a * f_G + b * f_D)
    for _ in range(args.warmup):  # the last warm-up step of each also measures its peak memory
        result["mem_ref_mb"], result["mem_ours_mb"] = peak_memory_mb(ref_step, device), peak_memory_mb(our_step, device)
    times, cpu_times = {"ref": [], "ours": []}, {"ref": [], "ours": []}
    for i in range(args.repeats):
        pair = (("ref", ref_step), ("ours", our_step))
        for name, step in pair if i % 2 == 0 else pair[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    result["t_ref"], result["t_ours"] = times["ref"], times["ours"]
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


def print_table(args, results: list[dict], matmul: list[float], loads: tuple, device: torch.device) -> None:
    ceiling = statistics.median(matmul)
    print(
        f"\ndevice {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, "
        f"n={args.filters}, nz=nh={args.latent}, r={args.convs}, {args.channels} channels; ours: "
        f"{'NCHW' if args.nchw else 'channels_last'}{', compiled' if args.compile else ''}, {args.precision}"
    )
    print(
        f"matmul 2048^3 fp32: {ceiling:.1f} GFLOP/s median of {len(matmul)} (min {min(matmul):.1f}, "
        f"max {max(matmul):.1f}); load average before {loads[0]}, after {loads[1]}"
    )
    print(
        f"timed: median of {args.repeats} interleaved steps each after {args.warmup + 1} warm-up; "
        "+-% = half the min..max range; GF = GFLOP per step;\n"
        "cpu-s ratio = ref / ours in this process's CPU seconds (robust to other load, counts spin-waits)\n"
    )
    header = (
        f"{'px':>3} {'arch':6} {'order':12} {'f_G':>5} {'f_D':>5} {'GF ref':>7} {'GF ours':>7} {'GF need':>7} "
        f"{'ref img/s':>13} {'ours img/s':>13} {'ours/ref':>13} {'ref GF/s':>8} {'ref/mm':>6} "
        f"{'need GF/s':>9} {'need/mm':>7} {'cpu-s ratio':>11} {'mem ref':>7} {'mem ours':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        t_ref, t_ours = statistics.median(r["t_ref"]), statistics.median(r["t_ours"])
        ref_gfs = r["flops_ref"] / t_ref / 1e9
        need_gfs = r["flops_necessary"] / t_ours / 1e9
        ratio = statistics.median(r["pair_ratios"])
        ref_ips = f"{args.batch / t_ref:.2f}+-{spread(r['t_ref'])}"
        our_ips = f"{args.batch / t_ours:.2f}+-{spread(r['t_ours'])}"
        ratio_text = f"{ratio:.2f}x+-{spread(r['pair_ratios'])}"
        print(
            f"{r['size']:>3} {r['arch']:6} {r['order']:12} {r['f_G'] / 1e9:5.3f} {r['f_D'] / 1e9:5.3f} "
            f"{r['flops_ref'] / 1e9:7.1f} {r['flops_ours'] / 1e9:7.1f} {r['flops_necessary'] / 1e9:7.1f} "
            f"{ref_ips:>13} {our_ips:>13} {ratio_text:>13} "
            f"{ref_gfs:8.1f} {ref_gfs / ceiling:6.2f} {need_gfs:9.1f} {need_gfs / ceiling:7.2f} "
            f"{r['cpu_ratio']:10.2f}x {r['mem_ref_mb']:6.0f}M {r['mem_ours_mb']:7.0f}M"
        )
    print("\nsimultaneous / alternating (ours, images/s):")
    by_key = {(r["size"], r["arch"], r["order"]): r for r in results}
    for (size, arch, order), r in by_key.items():
        other = by_key.get((size, arch, "alternating"))
        if order == "simultaneous" and other:
            speedup = statistics.median(other["t_ours"]) / statistics.median(r["t_ours"])
            print(f"  {size:>3} px {arch:6} {speedup:.2f}x")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    if args.warmup < 1 or args.repeats < 1:
        raise SystemExit("--warmup and --repeats must be >= 1")
    if args.precision != "fp32" and device.type != "cuda":
        raise SystemExit("--precision bf16/fp16 needs a CUDA device")
    loads = [" ".join(f"{x:.2f}" for x in os.getloadavg())]
    matmul = matmul_gflops(device, args.matmul_repeats)
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
    print_table(args, results, matmul, tuple(loads), device)


if __name__ == "__main__":
    main()
