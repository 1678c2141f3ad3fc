"""The BEGAN family: networks, optimisers, k_t, and one training step.

The step does the work the math needs and no more (the paper's section 3.4; benchmarks/step_speed.py):
  alternating   (1) D step on one D forward over cat(real, G(z_D)), G under no_grad;
                (2) G step with a fresh z through D with D's weights frozen.
                4 f_G + 8 f_D per image, against 4 f_G + 9 f_D for a plain port.
  simultaneous  one G forward and one D forward per image serve both losses, and one
                backward gives both gradients: D's fake half runs with weights whose
                gradient is scaled by -k_t on the way back (`ScaleGrad`), so D receives
                grad(L(x) - k_t L(G(z))) while G receives grad L(G(z)).
                3 f_G + 6 f_D per image, against 3 f_G + 9 f_D.
Speed options, none of which changes the math: channels_last activations and weights
(`memory_format_for`), `train.compile` (torch.compile per network, eager fallback),
`train.precision` bf16/fp16 autocast on GPU (fp16 with a GradScaler, checkpointed), and
bf16 on CPUs with native bf16 (`cpu_has_bf16`).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch
from torch.func import functional_call

from began_dist.distributed import comm
from began_dist.families.base import Family, adam_for, frozen, memory_format_for
from began_dist.families.equilibrium import balance, convergence, update_k
from began_dist.models.began import build_networks

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (avx512_bf16 or AMX): oneDNN's bf16 convs then run
    about 1.8x faster than fp32 (docs/performance.md); elsewhere it emulates bf16, slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own CPU checks
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def reconstruction_loss(autoencoder, images: torch.Tensor) -> torch.Tensor:
    """L(v) = mean |v - D(v)| over pixels, channels and batch (L1, eta = 1), in fp32."""
    return (autoencoder(images).float() - images.float()).abs().mean()


class ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by `scale` (a device tensor)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale.to(grad.dtype), None


class WeightGradScaled(torch.nn.Module):
    """`module(x)` whose parameters' gradients from this call are scaled by `scale`.

    Activation gradients pass unscaled, so what lies upstream of `x` sees the plain
    gradient of the loss; only the module's own weight gradients are reweighted.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        params = {name: ScaleGrad.apply(p, scale) for name, p in self.module.named_parameters()}
        return functional_call(self.module, params, (x,))


class CompiledOrEager:
    """Calls `torch.compile(module)`; if compiling fails (now or at a later call), warns once
    and calls `module` eagerly from then on. With `enabled=False` it is just `module`."""

    def __init__(self, module, enabled: bool, name: str):
        self.module, self.name, self.compiled = module, name, None
        if enabled:
            try:
                self.compiled = torch.compile(module)
            except Exception as error:  # no compiler for this platform or Python
                self._fall_back(error)

    def _fall_back(self, error: Exception) -> None:
        self.compiled = None
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        log.warning(
            "train.compile: compiling %s failed (%s: %s); running it eagerly",
            self.name,
            type(error).__name__,
            first_line,
        )

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as error:
                self._fall_back(error)
        return self.module(*args)


class BeganFamily(Family):
    name = "began"
    latents_per_step_by_order = {"alternating": 2, "simultaneous": 1}

    def __init__(self, cfg, device: torch.device):
        super().__init__(cfg, device)
        self.gamma, self.lambda_k = float(cfg.train.gamma), float(cfg.train.lambda_k)
        self.order = cfg.train.update_order
        self.latents_per_step = self.latents_per_step_by_order[self.order]
        self.latent_size = cfg.model.nz
        self.memory_format = memory_format_for(device, cfg.train.memory_format)
        self.compile = bool(cfg.train.compile)
        self.G, self.D = (net.to(device, memory_format=self.memory_format) for net in build_networks(cfg.model))
        # The modules each phase trains through: G and D themselves, or their DDP wrappers
        # (`distribute`). The frozen network of a phase is always called unwrapped, so it
        # neither all-reduces nor waits for gradients it will never get.
        self.G_train, self.D_train = self.G, self.D
        self._build_calls()
        self.opt_G, self.opt_D = adam_for(cfg.train, self.G, self.D)
        self.track_g_ema()
        self.optimizers = (self.opt_G, self.opt_D)
        self.k_t = torch.zeros((), device=device)  # k_0 = 0
        self.autocast_dtype = AUTOCAST_DTYPES[cfg.train.precision]
        cpu_bf16 = cfg.train.precision == "bf16" and device.type == "cpu" and cpu_has_bf16()
        if self.autocast_dtype is not None and device.type != "cuda" and not cpu_bf16:
            raise ValueError(
                f"train.precision={cfg.train.precision}: needs a CUDA device, or bf16 on a CPU with avx512_bf16 or AMX"
            )
        # fp16 gradients underflow without a loss scale; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")

    def _build_calls(self) -> None:
        """The callables the step runs: each network as trained or frozen, compiled when asked."""
        self._G_train = CompiledOrEager(self.G_train, self.compile, "G")
        self._G_frozen = CompiledOrEager(self.G, self.compile, "G (no grad)")
        self._D_train = CompiledOrEager(self.D_train, self.compile, "D")
        self._D_frozen = CompiledOrEager(self.D, self.compile, "D (frozen)")
        self._D_fake = CompiledOrEager(WeightGradScaled(self.D), self.compile, "D (fake half)")

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- the step -------------------------------------------------------------------------
    def train_step(self, real: torch.Tensor, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        real = real.contiguous(memory_format=self.memory_format)
        if self.order == "alternating":
            z_D, z_G = latents
            with torch.no_grad(), self._autocast():
                fake_D = self._G_frozen(z_D).to(real.dtype)  # G is not back-propagated in the D phase
            loss_real, loss_D = self._d_phase(real, fake_D)
            self.scaler.step(self.opt_D)
            loss_G = self._g_phase(z_G)
            self.scaler.step(self.opt_G)
        else:
            loss_real, loss_G, loss_D = self._simultaneous(real, latents[0])
            self.scaler.step(self.opt_D)
            self.scaler.step(self.opt_G)
        self.scaler.update()
        self.update_g_ema()
        return self._equilibrium(loss_real, loss_G, loss_D)

    def _d_phase(self, real: torch.Tensor, fake: torch.Tensor):
        """(1) D step: minimise L_D = L(x) - k_t L(G(z_D)); G is not back-propagated (fake is detached)."""
        n = real.shape[0]
        both = torch.cat([real, fake])  # one forward: D has no batch statistics, so this equals two
        with self._autocast():
            error = (self._D_train(both).float() - both).abs()
            loss_real, loss_fake = error[:n].mean(), error[n:].mean()
            loss_D = loss_real - self.k_t * loss_fake
        self.opt_D.zero_grad(set_to_none=True)
        self.scaler.scale(loss_D).backward()
        return loss_real.detach(), loss_D.detach()

    def _g_phase(self, z_G: torch.Tensor) -> torch.Tensor:
        """(2) G step: minimise L_G = L(G(z_G)); D is frozen, so no D weight gradients are computed."""
        with frozen(self.D):
            with self._autocast():
                loss_G = reconstruction_loss(self._D_frozen, self._G_train(z_G))
            self.opt_G.zero_grad(set_to_none=True)
            self.scaler.scale(loss_G).backward()
        return loss_G.detach()

    def _simultaneous(self, real: torch.Tensor, z: torch.Tensor):
        """(1)+(2) at the current weights from one z (carpedm20-TF), in one backward.

        Backward of L(x) + L(G(z)), with D's weight gradients on the fake half scaled by
        -k_t: D gets grad(L(x) - k_t L(G(z))) = grad L_D, and G gets grad L(G(z)) = grad L_G.
        """
        with self._autocast():
            fake = self._G_train(z)
            loss_real = reconstruction_loss(self._D_train, real)
            loss_fake = (self._D_fake(fake, -self.k_t).float() - fake.float()).abs().mean()
        self.opt_D.zero_grad(set_to_none=True)
        self.opt_G.zero_grad(set_to_none=True)
        self.scaler.scale(loss_real + loss_fake).backward()
        loss_real, loss_fake = loss_real.detach(), loss_fake.detach()
        return loss_real, loss_fake, loss_real - self.k_t * loss_fake

    def _equilibrium(self, loss_real, loss_G, loss_D) -> dict[str, torch.Tensor]:
        """(3) equilibrium: k_t += lambda_k (gamma L(x) - L(G(z_G))), from all-reduced losses."""
        losses = comm.all_reduce_mean(torch.stack([loss_real, loss_G, loss_D]))
        loss_real, loss_G, loss_D = losses.unbind()
        self.k_t = update_k(self.k_t, loss_real, loss_G, self.gamma, self.lambda_k)
        return {
            "L_x": loss_real,
            "L_Gz": loss_G,
            "L_D": loss_D,
            "L_G": loss_G,
            "k_t": self.k_t,
            "M": convergence(loss_real, loss_G, self.gamma),
            "balance": balance(loss_real, loss_G, self.gamma),
        }

    # -- distribution, checkpoints (schedules, sampling: base.Family) ---------------------
    def distribute(self, wrap) -> None:
        """Train through `wrap(network)` (e.g. DDP), one wrapper per network."""
        self.G_train, self.D_train = wrap(self.G), wrap(self.D)
        self._build_calls()

    def state_dict(self) -> dict:
        scaler = {"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}
        return {**super().state_dict(), **scaler}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.scaler.is_enabled() and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
