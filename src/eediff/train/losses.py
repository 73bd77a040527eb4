"""Diffusion training objectives, time sampling and ASE's time-dependent loss weight λ(t).

- Discrete DDPM (DiT): the network gets the integer index i in 0..T-1, ``t_unit = i / T``. A network with
  learned σ (``learn_sigma``: 2C output channels, "learned range" variance) is trained with the hybrid loss of
  Nichol & Dhariwal (2021), as the official DiT code does: ε-MSE plus the variational bound term computed on
  a stop-gradient mean, so the bound trains only the variance. Otherwise plain ε-MSE.
- Continuous VP-SDE (U-ViT): t ~ U(eps, 1), the network gets ``999 t`` (``process.model_time``), ε-MSE.

Losses are returned per example (mean over pixels), so the caller can weight them by λ(t).
"""

from __future__ import annotations

import math

import torch

from ..config import ConfigError
from ..diffusion.process import ContinuousVP, DiscreteVP
from ..exits.schedule import ExitSchedule

_LOG2 = math.log(2.0)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.dim() - 1))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) of data in [-1, 1] quantised to 256 levels under N(mean, e^(2 log_scale)), elementwise, in nats.

    The two outer bins extend to -inf / +inf (their log-probabilities come from ``log_ndtr``, exact in
    the tails); an inner bin's probability is floored at 1e-12 before the log.
    """
    inv_std = torch.exp(-log_scale)
    half_bin = 1.0 / 255.0
    upper = inv_std * (x - mean + half_bin)
    lower = inv_std * (x - mean - half_bin)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)  # log(1 - Φ(lower))
    log_mid = torch.log((torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_mid))


class DiffusionObjective:
    """Samples training times and computes per-example losses for one model and its noise process."""

    def __init__(self, process, learn_sigma: bool, in_channels: int, device):
        self.process = process
        self.learn_sigma = learn_sigma
        self.C = in_channels
        self.device = torch.device(device)
        self.discrete = isinstance(process, DiscreteVP)
        if self.discrete:
            T = process.num_train_timesteps
            self.T = T
            betas = torch.linspace(process.beta_start, process.beta_end, T, dtype=torch.float64)
            acp = process.alphas_cumprod()
            acp_prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
            post_var = betas * (1 - acp_prev) / (1 - acp)
            f = lambda v: v.float().to(self.device)  # noqa: E731
            # (the same float32 values DiscreteVP.perturb computes: acp is indexed in float64, then cast)
            self.acp = f(acp)
            self.sqrt_recip_acp = f(torch.sqrt(1.0 / acp))
            self.sqrt_recipm1_acp = f(torch.sqrt(1.0 / acp - 1))
            self.post_coef_x0 = f(betas * torch.sqrt(acp_prev) / (1 - acp))
            self.post_coef_xt = f((1 - acp_prev) * torch.sqrt(1 - betas) / (1 - acp))
            # the posterior variance is 0 at i = 0: its log is clipped to the value at i = 1
            self.post_logvar = f(torch.log(torch.cat([post_var[1:2], post_var[1:]])))
            self.log_betas = f(torch.log(betas))
        elif not isinstance(process, ContinuousVP):
            raise TypeError(f"unsupported noise process {type(process).__name__}")

    # ---- time ------------------------------------------------------------------------------------
    def sample_time(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(t for the process, t_unit in [0, 1]) on the CPU: an integer index (discrete) or a float t."""
        if self.discrete:
            idx = torch.randint(0, self.T, (n,), generator=generator)
            return idx, idx.double() / self.T
        eps = self.process.eps
        t = eps + (1 - eps) * torch.rand(n, generator=generator, dtype=torch.float64)
        return t, t

    def time_intervals(self, schedule: ExitSchedule) -> list[tuple[float, float, float]]:
        """The schedule's intervals in process time: (lo, hi, probability of a uniform training time)."""
        bounds = schedule.boundaries if schedule.blocks is not None else (0.0, 1.0)
        out = []
        if self.discrete:
            for lo, hi in zip(bounds, bounds[1:]):
                a = math.ceil(lo * self.T - 1e-9)
                b = self.T if hi >= 1 else math.ceil(hi * self.T - 1e-9)
                if b > a:
                    out.append((a, b, (b - a) / self.T))
        else:
            eps = self.process.eps
            for lo, hi in zip(bounds, bounds[1:]):
                a, b = max(lo, eps), hi
                if b > a:
                    out.append((a, b, (b - a) / (1 - eps)))
        return out

    def sample_time_in(self, n: int, lo: float, hi: float, generator: torch.Generator):
        if self.discrete:
            idx = torch.randint(int(lo), int(hi), (n,), generator=generator)
            return idx, idx.double() / self.T
        t = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
        return t, t

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the network is fed (float32): the index (discrete) or 999 t (continuous)."""
        if self.discrete:
            return t.float()
        return (t * self.process.time_scale).float()

    def grid_unit_times(self, n: int = 1000) -> torch.Tensor:
        """Unit times at which a uniform training time is evaluated for averages (the λ normaliser)."""
        if self.discrete:
            return torch.arange(self.T, dtype=torch.float64) / self.T
        eps = self.process.eps
        return eps + (1 - eps) * (torch.arange(n, dtype=torch.float64) + 0.5) / n

    # ---- forward process --------------------------------------------------------------------------
    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            acp = _bcast(self.acp[t], x0)
            return acp.sqrt() * x0 + (1 - acp).sqrt() * noise
        return self.process.perturb(x0, t, noise)

    # ---- loss ------------------------------------------------------------------------------------
    def loss(self, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
             t_host: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example loss (B,), float32: ε-MSE against ``noise`` (the added noise, or the target of
        ``finetune --distill``), plus the VLB term for learned-σ discrete models (from x0, not ``noise``).

        ``t_host`` (the same times on the CPU) lets the decoder term be computed only for the rows with
        t = 0 without asking the device which rows those are.
        """
        out = out.float()
        C = self.C
        eps_hat = out[:, :C]
        mse = mean_flat((noise - eps_hat) ** 2)
        if not (self.learn_sigma and self.discrete) or out.shape[1] != 2 * C:
            return mse
        return mse + self.vlb(out, x0, x_t, t, t_host)

    def vlb(self, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, t_host: torch.Tensor | None = None) -> torch.Tensor:
        """Variational bound term in bits per dimension, with the mean's gradient stopped (trains σ only):
        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, the discretised decoder NLL -log p(x_0 | x_1) at t = 0."""
        C = self.C
        eps_sg, v = out[:, :C].detach(), out[:, C:]
        b = lambda table: _bcast(table[t], x0)  # noqa: E731
        true_mean = b(self.post_coef_x0) * x0 + b(self.post_coef_xt) * x_t
        true_logvar = b(self.post_logvar)
        pred_x0 = b(self.sqrt_recip_acp) * x_t - b(self.sqrt_recipm1_acp) * eps_sg
        model_mean = b(self.post_coef_x0) * pred_x0 + b(self.post_coef_xt) * x_t
        frac = (v + 1) / 2  # learned interpolation between the two bounds on the log variance
        model_logvar = frac * b(self.log_betas) + (1 - frac) * true_logvar
        kl = mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / _LOG2
        if t_host is None:
            rows = torch.nonzero(t == 0).flatten()  # (a device sync; the trainer passes t_host)
        else:
            rows = torch.nonzero(t_host == 0).flatten()
            if rows.numel() == 0:
                return kl
            rows = rows.pin_memory().to(t.device, non_blocking=True) if t.device.type == "cuda" else rows
        if rows.numel() == 0:
            return kl
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0[rows], model_mean[rows], 0.5 * model_logvar[rows])) / _LOG2
        return kl.index_copy(0, rows, nll)


class TimeWeight:
    """ASE's time-dependent loss weight λ(t) with the re-weighting cycle C (Algorithm 1, Appendix A.3).

    The paper says: "we propose a novel fine-tuning algorithm that focuses on updating minimal information
    near time t → 0 while updating unseen information near time t → 1. To force the differential
    information update, we leverage two different techniques: Exponential Moving Average (EMA) and weighted
    coefficient of λ(t)", and Algorithm 1 multiplies each example's loss by λ(t) and sets λ(t) ← 1 once
    "epoch > C". It gives no formula for λ, and the released code uses λ ≡ 1. Ours:

        λ(t) = (1 + γ (1 − k(t)/K)) / Z,      Z = E_t[1 + γ (1 − k(t)/K)]  (t as sampled in training)

    where k(t) is the number of blocks the schedule runs at t and K the model's schedulable blocks. A
    timestep keeps weight ∝ 1 where the full network runs (t → 0, "minimal information" to update) and
    gains up to 1 + γ (1 − k/K) where blocks were cut (t → 1, the truncated networks' "unseen
    information"). Dividing by Z keeps the mean weight 1, so the effective learning rate is unchanged
    and only its distribution over t moves. γ = 0, or the full schedule, gives λ ≡ 1.

    The reset: λ is applied while ``progress < C`` and is 1 from then on, ``progress`` being the number of
    optimizer steps done (``unit='step'``) or of full epochs done (``unit='epoch'``; the paper's
    "epoch > C" with 1-based epochs). C = 0 means λ ≡ 1 throughout.
    """

    def __init__(self, schedule: ExitSchedule, num_blocks: int, gamma: float, cycle: int, unit: str = "step", grid: torch.Tensor | None = None):
        if unit not in ("step", "epoch"):
            raise ConfigError(f"--reweight-unit must be 'step' or 'epoch', got '{unit}'")
        if gamma < 0 or cycle < 0:
            raise ConfigError(f"--reweight-gamma and --reweight-cycle must be >= 0, got {gamma} and {cycle}")
        self.schedule, self.K, self.gamma, self.cycle, self.unit = schedule, num_blocks, float(gamma), int(cycle), unit
        grid = grid if grid is not None else torch.arange(1000, dtype=torch.float64) / 1000
        self.Z = float(self.raw(grid).mean())

    def raw(self, t_unit: torch.Tensor) -> torch.Tensor:
        k = self.schedule.active_blocks(t_unit, self.K).double()
        return 1.0 + self.gamma * (1.0 - k / self.K)

    def weight(self, t_unit: torch.Tensor) -> torch.Tensor:
        """λ(t) while re-weighting is on (float64, CPU tensors in, same out)."""
        return self.raw(t_unit) / self.Z

    def active(self, step: int, epoch: int) -> bool:
        progress = step if self.unit == "step" else epoch
        return self.gamma > 0 and progress < self.cycle

    def __call__(self, t_unit: torch.Tensor, step: int, epoch: int = 0) -> torch.Tensor:
        if not self.active(step, epoch):
            return torch.ones_like(t_unit, dtype=torch.float64)
        return self.weight(t_unit)


class LossNorm:
    """``finetune --loss-norm p``: each example's loss weighted by m(t)^-p, m(t) the --init model's own mean loss at t.

    An ε-prediction loss falls by orders of magnitude from t → 0 to t → 1 (the shipped models: 0.23 to 4e-5,
    ``results/loss_by_t_*.json``), so the noise levels where an exit schedule cuts blocks, and where a
    fine-tune's error stays 1.5–4× its base's, add almost nothing to the loss, yet an ε error there weighs
    (σ/α)² times more in the x0 the sampler builds on. Dividing by the base's loss m(t) (p = 1) counts every
    level alike (EDM's reason for its λ(σ): a loss of equal size at every noise level); on the shipped U-ViT
    that spreads the weights 8,300-fold and leaves t < 0.6 almost untrained, so p < 1 tempers it (p = 0.5: 91-fold):

        ν(t) = m(t)^-p / Z,      Z = E_t[m(t)^-p]  (t as sampled in training: the mean weight stays 1)

    m is measured at bin centres and interpolated linearly in log m (ends held). No library weights a
    diffusion loss by a measured per-t reference, hence this small class.
    """

    def __init__(self, t_unit: list[float], mean_loss: list[float], grid: torch.Tensor, power: float = 1.0):
        t = torch.as_tensor(t_unit, dtype=torch.float64)
        m = torch.as_tensor(mean_loss, dtype=torch.float64)
        if t.ndim != 1 or t.numel() < 2 or m.shape != t.shape or not bool((t[1:] > t[:-1]).all()):
            raise ConfigError("loss_norm.json: give increasing t_unit and a mean_loss of the same length (at least 2): "
                              "delete the file to measure it again")
        if not bool(torch.isfinite(m).all() & (m > 0).all()):
            raise ConfigError("loss_norm.json: every mean_loss must be finite and > 0: delete the file to measure it again")
        self.t, self.m, self.power = t, m, float(power)
        self.Z = float(self.inverse(grid).mean())

    def inverse(self, t_unit: torch.Tensor) -> torch.Tensor:
        """m(t)^-p (float64, CPU), m interpolated in log between the bins, held past the ends."""
        x = t_unit.double().clamp(float(self.t[0]), float(self.t[-1]))
        i = torch.searchsorted(self.t, x, right=True).clamp(1, self.t.numel() - 1)
        lo, hi = self.t[i - 1], self.t[i]
        w = (x - lo) / (hi - lo)
        logm = torch.log(self.m)
        return torch.exp(-self.power * (logm[i - 1] + w * (logm[i] - logm[i - 1])))

    def __call__(self, t_unit: torch.Tensor) -> torch.Tensor:
        return self.inverse(t_unit) / self.Z

    def to_json(self) -> dict:
        return {"t_unit": self.t.tolist(), "mean_loss": self.m.tolist()}
