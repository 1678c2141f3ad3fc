"""BEGAN's equilibrium: k_t, the convergence measure M, and learning-rate control.

    k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z_G))), 0, 1)
    M       = L(x) + |gamma L(x) - L(G(z_G))|

Everything stays on the device: no host sync per step. The lr controller reads
M back once per window (m_stall) and otherwise counts steps on the host.
"""

from __future__ import annotations

from typing import Optional

import torch

# Each lr-control scheme's (factor, every) when train.lr_decay_factor / lr_decay_every are unset.
LR_CONTROL_DEFAULTS = {"m_stall": (0.5, None), "decay": (0.95, 2000), "step": (0.5, 100000), "none": (1.0, None)}


def lr_schedule_params(train) -> tuple[float, Optional[int]]:
    """(factor, every) for the lr-control scheme, with the scheme's defaults filled in."""
    factor, every = LR_CONTROL_DEFAULTS[train.lr_control]
    if train.lr_decay_factor is not None:
        factor = train.lr_decay_factor
    if train.lr_decay_every is not None:
        every = train.lr_decay_every
    return factor, every


def balance(loss_real: torch.Tensor, loss_fake: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma L(x) - L(G(z)): positive when D reconstructs real images too well."""
    return gamma * loss_real - loss_fake


def update_k(k: torch.Tensor, loss_real: torch.Tensor, loss_fake: torch.Tensor, gamma: float, lambda_k: float):
    """k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1)."""
    return torch.clamp(k + lambda_k * balance(loss_real, loss_fake, gamma), 0.0, 1.0)


def convergence(loss_real: torch.Tensor, loss_fake: torch.Tensor, gamma: float) -> torch.Tensor:
    """M_global = L(x) + |gamma L(x) - L(G(z))|; falls as samples improve."""
    return loss_real + balance(loss_real, loss_fake, gamma).abs()


class LrControl:
    """The live lr = train.lr x `multiplier`; decides when the multiplier changes.

    m_stall (paper): every `m_stall_window` steps compare the window's mean M with
    the previous window's; unless it fell by more than `m_stall_eps` (a mean that did
    not fall is a stall), multiply by the factor (0.5). decay (Heumi/BEGAN-tensorflow, docs/design.md): x0.95 every
    2000 steps. step (carpedm20): x0.5 every 100k steps. A floor of `lr_min` holds for all of them.
    """

    def __init__(self, train):
        self.scheme = train.lr_control
        self.base_lr = float(train.lr)
        self.min_multiplier = float(train.lr_min) / self.base_lr
        self.factor, self.every = lr_schedule_params(train)
        self.window = int(train.m_stall_window)
        self.eps = float(train.m_stall_eps)
        self.multiplier = 1.0
        self.window_sum: Optional[torch.Tensor] = None  # sum of M over the current window (device)
        self.window_steps = 0
        self.previous_mean: Optional[float] = None

    @property
    def lr(self) -> float:
        return self.base_lr * self.multiplier

    def observe(self, step: int, m_value: torch.Tensor) -> bool:
        """Record M after `step` steps (1-based); True when the lr changed."""
        if self.scheme == "m_stall":
            return self._observe_m(m_value)
        if self.scheme in ("decay", "step") and step % self.every == 0:
            return self._scale()
        return False

    def _observe_m(self, m_value: torch.Tensor) -> bool:
        m_value = m_value.detach().float()
        self.window_sum = m_value.clone() if self.window_sum is None else self.window_sum + m_value
        self.window_steps += 1
        if self.window_steps < self.window:
            return False
        mean = float(self.window_sum) / self.window_steps  # the one host sync per window
        stalled = self.previous_mean is not None and mean >= (1.0 - self.eps) * self.previous_mean
        self.previous_mean, self.window_sum, self.window_steps = mean, None, 0
        return self._scale() if stalled else False

    def _scale(self) -> bool:
        new = max(self.multiplier * self.factor, self.min_multiplier)
        changed, self.multiplier = new != self.multiplier, new
        return changed

    def apply(self, *optimizers: torch.optim.Optimizer) -> None:
        """Set the live lr in place: Adam keeps its moments."""
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self.lr

    def state_dict(self) -> dict:
        window_sum = None if self.window_sum is None else self.window_sum.detach().cpu()
        return {
            "multiplier": self.multiplier,
            "window_sum": window_sum,
            "window_steps": self.window_steps,
            "previous_mean": self.previous_mean,
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.multiplier = float(state["multiplier"])
        self.window_sum = None if state["window_sum"] is None else state["window_sum"].to(device)
        self.window_steps = int(state["window_steps"])
        self.previous_mean = state["previous_mean"]
