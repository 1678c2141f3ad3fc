"""What a model family supplies, with BEGAN's choices as the defaults.

The training loop (train/loop.py), the evaluation commands (eval/) and the config layer
(config/) talk to a family only through the attributes and methods declared here
(docs/design.md, "The family interface"). A family is a subclass constructed as
`Family(cfg, device)`; defining one with a `name` registers it as `model.family=<name>`
and registers its config rules with the config layer. Shared helpers (`frozen`,
`adam_for`, `memory_format_for`) live here once.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Optional

import torch
from omegaconf import DictConfig

from began_dist.config import register_family_rules

# BEGAN's statistics: the defaults a family may replace.
LOGGED_LOSSES = ("L_x", "L_Gz", "L_D", "L_G", "M", "balance")  # averaged over each log interval
BEGAN_SCALARS = {  # stats.jsonl keys -> TensorBoard tags, in stats.jsonl order
    "L_x": "loss/L_x",
    "L_Gz": "loss/L_Gz",
    "L_D": "loss/L_D",
    "L_G": "loss/L_G",
    "k_t": "equilibrium/k_t",
    "M": "equilibrium/M",
    "balance": "equilibrium/balance",
}
BEGAN_SHOWN = ("M", "k_t", "L_x")  # the progress bar shows all but the last; the log line all

FAMILIES: dict[str, type[Family]] = {}  # model.family -> class, filled as each family module is imported


class Family:
    """A model family: its networks, optimisers, training step, checkpoint entries and what it logs."""

    name: str = ""  # the model.family value; a subclass that sets it is registered
    # -- config rules (config/validate.py reads these through its registry) ---------------------------
    config_defaults: dict = {}  # applied over the dataclasses' defaults, under the user's file and overrides
    config_sections: tuple[str, ...] = ()  # sections only this family reads (e.g. model.vaegan)
    meaningless_keys: tuple[str, ...] = ()  # keys this family ignores: refused unless at their defaults
    # -- what the loop reads ---------------------------------------------------------------------------
    latents_per_step: int = 2  # global latent batches one step draws
    latent_size: int  # size of one latent vector (set by __init__)
    needs_labels: bool = False  # True: train_step(real, z, labels=y) gets the images' labels (N, K)
    logged_losses: tuple[str, ...] = LOGGED_LOSSES  # stats averaged over each log interval
    scalar_tags: dict[str, str] = BEGAN_SCALARS  # stats.jsonl key -> TensorBoard tag, in stats.jsonl order
    progress_keys: tuple[str, ...] = BEGAN_SHOWN  # the stats the progress bar shows
    lr_monitor: str = "M"  # the stat train.lr_control=m_stall watches
    replicated_networks: tuple[str, ...] = ("G", "D")  # checkpoint entries whose weights agree across ranks
    honours_memory_format: bool = True  # builds its networks in train.memory_format (else NCHW, recorded so)
    optimizers: tuple[torch.optim.Optimizer, ...]  # the optimisers the lr controller drives

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            FAMILIES[cls.name] = cls
            register_family_rules(cls.name, cls)

    def __init__(self, cfg: DictConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.G_ema: Optional[torch.nn.Module] = None  # built by track_g_ema() when train.g_ema_half_life > 0

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> None:
        """The family's own refusals (ConfigError naming the field); BEGAN has none beyond the common ones."""

    # -- the step and its schedules ---------------------------------------------------------------------
    def train_step(self, real: torch.Tensor, latents: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict:
        """One step; returns a dict of device scalars holding at least `logged_losses`."""
        raise NotImplementedError

    def distribute(self, wrap) -> None:
        """Train through `wrap(network)` (DDP under Ray Train), one wrapper per network."""
        raise NotImplementedError

    def set_step(self, step: int) -> None:
        """Schedules that follow the step: the vanishing-residual carry falls from 1 to 0 over
        model.residual_steps (BEGAN paper, section 3.3)."""
        m = self.cfg.model
        if m.vanishing_residual:
            carry = max(0.0, 1.0 - step / m.residual_steps)
            for network in (self.G, self.D, self.G_ema):
                if network is not None:
                    network.set_carry(carry)

    # -- the moving average of G (train.g_ema_half_life) ------------------------------------------
    def track_g_ema(self) -> None:
        """Keep G_ema, an exponential moving average of G's weights, when train.g_ema_half_life > 0.

        Not part of BEGAN's objective: nothing in training reads it (the step, k_t and M are
        the paper's), but samples, metrics and latent commands use it. Averaging the weights
        over the last few hundred steps evens out the swings a GAN's generator makes at a high
        learning rate (Karras et al. 2018 and stylegan2-ada-pytorch's G_ema; docs/evaluation.md,
        "A moving average of G"). Call once G is built, before any step.
        """
        half_life = float(self.cfg.train.g_ema_half_life)
        if half_life > 0:
            self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
            self.g_ema_weight = 1.0 - 0.5 ** (1.0 / half_life)  # each step moves G_ema this far towards G

    @torch.no_grad()
    def update_g_ema(self) -> None:
        """After an optimiser step: G_ema <- G_ema + w (G - G_ema) for every parameter (a no-op when off)."""
        if self.G_ema is not None:
            torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), self.g_ema_weight)

    @property
    def G_sample(self) -> torch.nn.Module:
        """The generator samples and metrics use: G_ema when kept, else G."""
        return self.G if self.G_ema is None else self.G_ema

    # -- images ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.G_sample(z.to(self.device))

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """R(x), what the recon metric and the report measure: BEGAN's auto-encoder D."""
        return self.D(images.to(self.device))

    @torch.no_grad()
    def image_panels(self, real: torch.Tensor, fixed_z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named image batches for TensorBoard (images/<name>); G_fixed is also saved to samples/."""
        fake = self.generate(fixed_z)
        return {"G_fixed": fake, "D_real": self.D(real), "D_fake": self.D(fake)}

    def describe(self) -> str:
        """The family's part of the run's banner line (log.txt)."""
        return f"{self.shape()} nh={self.cfg.model.nh}, gamma {self.cfg.train.gamma}"

    def shape(self) -> str:
        m = self.cfg.model
        return f"{m.family} {m.image_size}px {m.arch} n={m.filters} nz={self.latent_size}"

    # -- checkpoints: the entries G, D, opt_G, opt_D, k_t (and G_ema) of docs/design.md ----------------------
    def state_dict(self) -> dict:
        ema = {} if self.G_ema is None else {"G_ema": self.G_ema.state_dict()}
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "k_t": self.k_t.detach().cpu(),
            **ema,
        }

    def load_state_dict(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.k_t = state["k_t"].to(self.device)
        if self.G_ema is not None:
            # A checkpoint written without the average (g_ema_half_life turned on later, a
            # Tune donor) starts it from G, as a new run starts it from G's initial weights.
            self.G_ema.load_state_dict(state.get("G_ema", state["G"]))


@contextlib.contextmanager
def frozen(*networks: torch.nn.Module):
    """`with frozen(net):` net's weights get no gradients (activations still pass them upstream)."""
    for network in networks:
        network.requires_grad_(False)
    try:
        yield
    finally:
        for network in networks:
            network.requires_grad_(True)


def adam_for(train: DictConfig, *networks: torch.nn.Module) -> tuple[torch.optim.Adam, ...]:
    """One Adam per network at train.lr with (train.beta1, train.beta2)."""
    return tuple(torch.optim.Adam(net.parameters(), lr=train.lr, betas=(train.beta1, train.beta2)) for net in networks)


MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def auto_memory_format(device: torch.device) -> str:
    """`train.memory_format=auto`'s rule: the layout of weights and activations on `device`.

    channels_last on both devices: cuDNN runs NHWC convs on tensor cores without
    transposes, and on the CPU oneDNN's NCHW path reorders every activation to a blocked
    layout and back, so channels_last measured 1.4-3x faster per 3x3 conv on an AVX2 CPU
    (n = 64, 16 to 64 px, 2 cores) and 3-16 % faster per step on an AVX-512 one
    (docs/performance.md). A device without either backend gets NCHW.
    """
    if device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available()):
        return "channels_last"
    return "contiguous"


def memory_format_for(device: torch.device, choice: str = "auto") -> torch.memory_format:
    """The torch layout of `train.memory_format=choice`; `auto` (not yet decided by the loop) applies the rule."""
    return MEMORY_FORMATS[auto_memory_format(device) if choice == "auto" else choice]
