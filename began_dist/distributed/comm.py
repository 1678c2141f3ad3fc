"""Collective helpers for the per-worker loop: no-ops at world size 1.

The loop asks these, never torch.distributed directly, so the same code runs in
local mode (one process, no process group) and under Ray Train (a process group
set up by TorchTrainer: gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import time
from typing import Optional

import torch
import torch.distributed as dist


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if _initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def pick_device(choice: str = "auto") -> torch.device:
    """CUDA (this worker's local GPU) when asked for or present, else the CPU."""
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    device = torch.device("cuda", local_rank() % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks, in place; every rank then holds the same value."""
    if _initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks that autograd sees through (its backward sums the gradients too); identity at world size 1.

    For batch statistics in a loss: computed from all-reduced sums, they are the global batch's on every rank,
    and under DDP's gradient averaging each weight gets exactly the one-worker gradient.
    """
    if not (_initialized() and dist.get_world_size() > 1):
        return tensor
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor)


def wrap_ddp(module: torch.nn.Module, device: torch.device, bucket_cap_mb: float = 4.0) -> torch.nn.Module:
    """`module` in its own DistributedDataParallel when there are several ranks, else itself.

    Buffers are not broadcast: the only buffer (the residual carry) follows the step on every rank.
    `bucket_cap_mb` is DDP's gradient bucket size (run.bucket_cap_mb, default 4; DDP's own default is 25).
    """
    if not (_initialized() and dist.get_world_size() > 1):
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel
    no_buffer_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else {"broadcast_buffers": False}
    )
    return ddp(module, device_ids=device_ids, bucket_cap_mb=bucket_cap_mb, **no_buffer_sync)


class GradientSync:
    """The DDP wrappers of one run with their communication hooks (run.grad_compression), and what they sent.

    One DDP per network, each with its own hook state (PyTorch's DDP communication hooks,
    torch.distributed.algorithms.ddp_comm_hooks): `none` all-reduces fp32 buckets
    (default_hooks.allreduce_hook, which PyTorch documents as giving DDP's own results), `fp16`/`bf16`
    cast each bucket for the all-reduce and back (default_hooks), `powersgd` sends a
    rank-`powersgd_rank` factorisation of each layer's gradient after `powersgd_start_step` backward
    passes, with error feedback (powerSGD_hook; Vogels et al. 2019). At world size 1 nothing is
    wrapped and the options do nothing.

    Every hook is wrapped to measure (docs/performance.md, "Communication: what is logged"):
    `bytes_sent`, what each rank handed to the all-reduces (the bucket sizes; PowerSGD: its own
    count of the elements it sends), and `wait_s`, the time this rank waited on communication:
    per backward pass, from the end of the pass's computation (an autograd final callback) until
    the last of its hooks' futures completed, 0 when communication finished first.
    """

    def __init__(self, device: torch.device, compression: str = "none", bucket_cap_mb: float = 4.0,
                 powersgd_rank: int = 1, powersgd_start_step: int = 1000, powersgd_min_rate: float = 2.0):
        self.device, self.compression, self.bucket_cap_mb = device, compression, bucket_cap_mb
        self.powersgd = dict(
            matrix_approximation_rank=powersgd_rank,
            start_powerSGD_iter=powersgd_start_step,
            min_compression_rate=powersgd_min_rate,
        )
        self.states: dict = {}  # network name -> PowerSGDState
        self.layouts: dict = {}  # network name -> _BucketLayout (PowerSGD's state per parameter)
        self.bytes_sent = 0
        self.wait_s = 0.0
        self._pass: Optional[_Pass] = None  # the backward pass whose buckets are being sent
        self._passes: list[_Pass] = []  # passes whose wait is not yet added to wait_s
        self._taken = (0, 0.0)  # bytes_sent, wait_s at the last interval_stats

    def wrap(self, module: torch.nn.Module, name: str) -> torch.nn.Module:
        wrapped = wrap_ddp(module, self.device, self.bucket_cap_mb)
        if wrapped is module:
            return wrapped
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

        if self.compression == "powersgd":
            state = self.states[name] = powerSGD_hook.PowerSGDState(process_group=None, **self.powersgd)
            self.layouts[name] = _BucketLayout(module, state)
            hook = self.layouts[name].wrap(powerSGD_hook.powerSGD_hook)
        else:
            state = None
            hooks = {"none": default_hooks.allreduce_hook, "fp16": default_hooks.fp16_compress_hook,
                     "bf16": default_hooks.bf16_compress_hook}
            hook = hooks[self.compression]
        wrapped.register_comm_hook(state, self._counting(hook))
        return wrapped

    def _counting(self, hook):
        element = {"fp16": 2, "bf16": 2}.get(self.compression, 4)

        def counted(state, bucket):
            if self._pass is None:  # the first bucket of a backward pass (of every network it trains)
                self._pass = self._open_pass()
            if state is None or state.iter < state.start_powerSGD_iter:
                self.bytes_sent += bucket.buffer().numel() * element
                future = hook(state, bucket)
            else:
                before = state.total_numel_after_compression
                future = hook(state, bucket)
                self.bytes_sent += (state.total_numel_after_compression - before) * element
            self._pass.done.append(future.then(lambda _: time.perf_counter()))  # when its result is there
            return future

        return counted

    def _open_pass(self) -> _Pass:
        """A new backward pass: earlier ones are settled, and the pass closes when its computation ends."""
        self._settle()
        opened = _Pass()
        self._passes.append(opened)

        def computed():  # autograd's final callbacks run in order: this one before DDP's own, which waits
            opened.computed = time.perf_counter()
            self._pass = None

        torch.autograd.Variable._execution_engine.queue_callback(computed)
        return opened

    def _settle(self) -> None:
        """Add the wait of every finished pass to wait_s (each hook's future has completed once its
        backward returned; their `then` stamps follow within microseconds, so waiting is safe)."""
        for finished in self._passes:
            if finished.computed is not None:
                last = max(future.wait() for future in finished.done)
                self.wait_s += max(0.0, last - finished.computed)
        self._passes = [p for p in self._passes if p.computed is None]

    def interval_stats(self, steps: int) -> dict:
        """Collective: per step since the last call, the bytes this rank handed to the all-reduces
        (`comm_bytes`) and the seconds it waited on communication, the mean over ranks (`comm_wait_s`)
        and the longest-waiting rank's (`comm_wait_max_s`). Zeros at world size 1."""
        self._settle()
        sent, waited = self.bytes_sent - self._taken[0], self.wait_s - self._taken[1]
        self._taken = (self.bytes_sent, self.wait_s)
        per_rank = torch.zeros(world_size(), dtype=torch.float64, device=self.device)  # NCCL: on the GPU
        per_rank[rank()] = waited / max(steps, 1)
        if _initialized() and dist.get_world_size() > 1:
            dist.all_reduce(per_rank)
        return {"comm_bytes": sent / max(steps, 1), "comm_wait_s": per_rank.mean().item(),
                "comm_wait_max_s": per_rank.max().item()}

    # -- PowerSGD's state in checkpoints: tensors and numbers only (weights_only=True) ------------------
    def state_dict(self) -> dict:
        """Collective (every rank calls it): PowerSGD's state of every network, {} without PowerSGD.

        Stored per parameter name, not per DDP bucket: a new process starts with one bucket and
        rebuilds them after its first pass, so bucket indices do not survive a resume. P and Q are
        the same on every rank (they are all-reduced); the error feedback is each rank's own, so it
        is gathered, in rank order.
        """
        saved: dict = {}
        for name, state in self.states.items():
            pieces = self.layouts[name].pieces()
            _, keys, pos, has_gauss, cached = state.rng.get_state()
            saved[name] = {
                "iter": state.iter,
                "p": pieces["p"],
                "q": pieces["q"],
                "error": gather_objects(pieces["error"]),
                "rng": {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached": float(cached)},
            }
        return {"world_size": world_size(), **saved} if saved else {}

    def load_state_dict(self, saved: dict) -> list[str]:
        """Restore what `state_dict` wrote; returns log lines (e.g. error feedback reset on a new worker count)."""
        notes = []
        for name, state in self.states.items():
            if name not in saved:
                if saved:
                    notes.append(f"run.grad_compression=powersgd: no saved state for {name}; it starts afresh")
                continue
            entry = saved[name]
            state.iter = int(entry["iter"])
            rng = entry["rng"]
            state.rng.set_state(("MT19937", rng["keys"].numpy().astype("uint32"), rng["pos"], rng["has_gauss"],
                                 rng["cached"]))
            if int(saved["world_size"]) == world_size():
                error = entry["error"][rank()]
            else:
                error = mean_error(entry["error"])
                notes.append(
                    f"run.grad_compression=powersgd: {name}'s error feedback was saved by {saved['world_size']} "
                    f"workers, this run has {world_size()}: each rank starts from their mean (P, Q and the step "
                    "count kept), which gives the same all-reduced gradients"
                )
            self.layouts[name].restore({"p": entry["p"], "q": entry["q"], "error": error})
        return notes


def mean_error(per_rank: list[dict]) -> dict:
    """PowerSGD's error feedback for a new worker count: the saved ranks' mean, on every rank.

    Both of PowerSGD's all-reduces are sums of linear maps of each rank's input M_r = g_r + e_r
    (gradient plus error feedback), and P's orthogonalisation does not see scale, so the
    compressed mean gradient depends on the ranks' inputs only through their mean (Vogels et al.
    2019, Algorithm 1). The data-parallel rule keeps the mean gradient whatever the count, so a
    mean error on every rank keeps each step's update (up to float summation order).
    """
    names = set.intersection(*(set(error) for error in per_rank)) if per_rank else set()
    return {name: torch.stack([error[name] for error in per_rank]).mean(0) for name in sorted(names)}


class _Pass:
    """One backward pass's communication: when its computation ended, when each hook's result was there."""

    def __init__(self):
        self.computed: Optional[float] = None
        self.done: list = []  # futures of perf_counter stamps


class _BucketLayout:
    """PowerSGD's per-bucket state of one network, kept valid when DDP's buckets change.

    powerSGD_hook keys its error feedback and P/Q memories by bucket index, each a flat
    tensor over the bucket's parameters (P and Q only for the layers it compresses, grouped
    by shape). DDP starts every process with one bucket and rebuilds them after the first
    pass, so after a resume the same index holds other parameters. Before each compressed
    call this splits the state into per-parameter pieces whenever a bucket's parameters
    differ from those its state was built for, and reassembles it for the current bucket.
    """

    def __init__(self, module: torch.nn.Module, state):
        self.state, self.device = state, next(module.parameters()).device
        self.names = {id(p): name for name, p in module.named_parameters()}
        self.shapes = {name: p.shape for name, p in module.named_parameters()}
        self.built: dict[int, list[str]] = {}  # bucket index -> the parameters its state was built for
        self.loose: dict = {"p": {}, "q": {}, "error": {}}  # per-parameter pieces not in any bucket's state

    def wrap(self, hook):
        def laid_out(state, bucket):
            if state.iter >= state.start_powerSGD_iter:
                self._lay_out(bucket.index(), [self.names[id(p)] for p in bucket.parameters()])
            return hook(state, bucket)

        return laid_out

    def _rank(self, name: str) -> tuple[int, int, int]:
        """(n, m, r) of a parameter's matrix view, r = 0 when PowerSGD sends it uncompressed."""
        shape = self.shapes[name]
        n = shape[0] if len(shape) else 1
        m = max(1, math.prod(shape) // max(n, 1))
        r = min(n, m, self.state.matrix_approximation_rank)
        worth = n * m > (n + m) * r * self.state.min_compression_rate
        return n, m, r if worth else 0

    def _compressed(self, names: list[str]) -> list[str]:
        """The compressed parameters in the order of their P and Q pieces: grouped by matrix shape."""
        groups: dict = {}
        for name in names:
            n, m, r = self._rank(name)
            if r:
                groups.setdefault((n, m), []).append(name)
        return [name for group in groups.values() for name in group]

    def _split(self) -> None:
        """Every bucket's state into per-parameter pieces (`loose`)."""
        s = self.state
        for index, names in self.built.items():
            flat = {"error": s.error_dict.pop(index, None), "p": s.p_memory_dict.pop(index, None),
                    "q": s.q_memory_dict.pop(index, None)}
            sizes = {"error": [(n, math.prod(self.shapes[n])) for n in names]}
            compressed = self._compressed(names)
            sizes["p"] = [(n, self._rank(n)[0] * self._rank(n)[2]) for n in compressed]
            sizes["q"] = [(n, self._rank(n)[1] * self._rank(n)[2]) for n in compressed]
            for kind, tensor in flat.items():
                if tensor is not None:
                    pieces = tensor.split([size for _, size in sizes[kind]])
                    self.loose[kind].update((n, piece.clone()) for (n, _), piece in zip(sizes[kind], pieces))
        self.built.clear()

    def _lay_out(self, index: int, names: list[str]) -> None:
        if self.built.get(index) == names:
            return
        if index in self.built:  # DDP rebuilt its buckets: everything goes back to pieces first
            self._split()
        s, compressed = self.state, self._compressed(names)
        for kind, members, target in (("error", names, s.error_dict), ("p", compressed, s.p_memory_dict),
                                      ("q", compressed, s.q_memory_dict)):
            if members and all(n in self.loose[kind] for n in members):
                target[index] = torch.cat([self.loose[kind].pop(n).flatten() for n in members])
        self.built[index] = names

    def pieces(self) -> dict:
        """The state per parameter name, on the CPU (for a checkpoint); the buckets' state stays as it is."""
        built, loose = dict(self.built), {kind: dict(pieces) for kind, pieces in self.loose.items()}
        saved = {"error": dict(self.state.error_dict), "p": dict(self.state.p_memory_dict),
                 "q": dict(self.state.q_memory_dict)}
        self._split()
        result = {kind: {n: t.cpu() for n, t in pieces.items()} for kind, pieces in self.loose.items()}
        self.built, self.loose = built, loose
        self.state.error_dict, self.state.p_memory_dict, self.state.q_memory_dict = (
            saved["error"], saved["p"], saved["q"])
        return result

    def restore(self, pieces: dict) -> None:
        """Per-parameter state from a checkpoint; each bucket takes its share on its next compressed call."""
        s = self.state
        s.error_dict, s.p_memory_dict, s.q_memory_dict = {}, {}, {}
        self.built.clear()
        self.loose = {kind: {n: t.to(self.device) for n, t in pieces.get(kind, {}).items()}
                      for kind in ("p", "q", "error")}


def replica_digests(tensors: list[torch.Tensor]) -> list[str]:
    """A SHA-256 of `tensors` from every rank (rank order): equal digests = bit-identical replicas."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return gather_objects(digest.hexdigest())


def broadcast_object(value):
    """Rank 0's `value` on every rank (`value` itself at world size 1)."""
    if not (_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value) -> list:
    """`value` from every rank, in rank order (a one-item list at world size 1)."""
    if not (_initialized() and dist.get_world_size() > 1):
        return [value]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered

