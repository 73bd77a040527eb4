"""Forward noising processes and their time conventions.

Each process answers three questions for the rest of the code:
- ``unit_time(t_model)``: the normalised original training time in [0, 1] (what exit schedules key on),
- ``model_time(u)``: the value the network is fed for a normalised time u,
- ``scheduler_config()``: the noise schedule handed to diffusers schedulers, whose integer index ``i``
  the process maps to the network with ``index_to_model_time``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch


@dataclass(frozen=True)
class DiscreteVP:
    """DDPM with linear betas (DiT: T = 1000, 1e-4 .. 0.02). The network takes the integer index."""

    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    kind: str = "discrete"

    def unit_time(self, t_model: float) -> float:
        return t_model / self.num_train_timesteps

    def model_time(self, u: float) -> float:
        return u * self.num_train_timesteps

    def index_to_model_time(self, index: float) -> float:
        return float(index)

    def scheduler_config(self) -> dict:
        return dict(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule="linear",
            beta_start=self.beta_start,
            beta_end=self.beta_end,
        )

    def alphas_cumprod(self) -> torch.Tensor:
        betas = torch.linspace(self.beta_start, self.beta_end, self.num_train_timesteps, dtype=torch.float64)
        return torch.cumprod(1 - betas, 0)

    def sde(self) -> "ContinuousVP":
        """The continuous VP-SDE this chain discretises (beta(t) = T * beta_i), for Euler–Maruyama."""
        T = self.num_train_timesteps
        return ContinuousVP(beta_min=self.beta_start * T, beta_max=self.beta_end * T, time_scale=float(T))

    def perturb(self, x0: torch.Tensor, index: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        acp = self.alphas_cumprod().to(x0.device)[index].float().view(-1, *[1] * (x0.dim() - 1))
        return acp.sqrt() * x0 + (1 - acp).sqrt() * noise


@dataclass(frozen=True)
class ContinuousVP:
    """VP-SDE with linear beta(t) = beta_min + t (beta_max - beta_min), t in [eps, 1] (U-ViT: network takes 999 t)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    eps: float = 1e-3
    time_scale: float = 999.0
    grid_size: int = 1000  # diffusers schedulers see this many grid points t_i = eps + (1 - eps) i / (grid_size - 1)
    kind: str = "continuous"

    def beta(self, t: float) -> float:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        """Signal and noise scale of x_t = alpha x_0 + sigma eps."""
        lmc = self.log_mean_coeff(t)
        return math.exp(lmc), math.sqrt(-math.expm1(2 * lmc))

    def unit_time(self, t_model: float) -> float:
        return t_model / self.time_scale

    def model_time(self, u: float) -> float:
        return u * self.time_scale

    def grid_time(self, index: float) -> float:
        return self.eps + (1 - self.eps) * float(index) / (self.grid_size - 1)

    def index_to_model_time(self, index: float) -> float:
        return self.model_time(self.grid_time(index))

    def scheduler_config(self) -> dict:
        # diffusers' discrete schedulers only ever use alphas_cumprod at the grid indices (and their
        # interpolation for sigma-based ones). Making alphas_cumprod[i] = alpha(t_i)^2 exactly, via
        # trained_betas, turns them into solvers of this continuous process on that grid.
        t = torch.tensor([self.grid_time(i) for i in range(self.grid_size)], dtype=torch.float64)
        acp = torch.exp(2 * self.log_mean_coeff(t))
        betas = 1 - acp / torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
        return dict(num_train_timesteps=self.grid_size, trained_betas=betas.tolist())

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        lmc = self.log_mean_coeff(t.double())
        alpha = torch.exp(lmc).float().view(-1, *[1] * (x0.dim() - 1))
        sigma = torch.sqrt(-torch.expm1(2 * lmc)).float().view(-1, *[1] * (x0.dim() - 1))
        return alpha * x0 + sigma * noise


Process = Union[DiscreteVP, ContinuousVP]
