"""Sampling loops over diffusers schedulers, plus the Euler–Maruyama step diffusers does not offer.

Samplers know nothing about exits: they call ``model_fn(x, t_model, y)`` with the value the network is fed
for time, and whatever decides depth lives inside ``model_fn`` (see ``Denoiser``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import EediffError
from .process import ContinuousVP, DiscreteVP


class SamplerError(EediffError):
    """Unknown or unusable sampler; one-line message."""


ModelFn = Callable[[torch.Tensor, float, "torch.Tensor | None"], torch.Tensor]


@dataclass
class SamplerConfig:
    sampler: str = "ddim"
    steps: int = 50
    # diffusers' timestep_spacing; "linspace" includes the last training step (999) and ends at 0,
    # as the official DiT respacing does.
    timestep_spacing: str = "linspace"
    # further constructor options of the diffusers scheduler (e.g. {"use_karras_sigmas": True}); the model's
    # noise process and epsilon prediction always win over the same keys here
    options: dict | None = None

    @classmethod
    def from_scheduler(cls, scheduler, steps: int) -> "SamplerConfig":
        """The sampler of a diffusers scheduler instance: its class and its options (not its noise schedule)."""
        cfg = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
        spacing = cfg.pop("timestep_spacing", "linspace")
        return cls(type(scheduler).__name__, steps, spacing, cfg)


# name -> (diffusers class name, extra constructor kwargs)
SAMPLERS: dict[str, tuple[str, dict]] = {
    "ddpm": ("DDPMScheduler", dict(clip_sample=False)),
    "ddim": ("DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=True)),
    "dpm-solver++": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2)),
    "euler-maruyama": ("", {}),
}


def _scheduler_class(name: str):
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise SamplerError(
            f"unknown sampler '{name}': use one of {', '.join(SAMPLERS)} or a diffusers scheduler class name such as EulerDiscreteScheduler"
        )
    return cls


def check_sampler_name(name: str) -> None:
    """A one-line SamplerError, before any work, unless ``name`` is one of SAMPLERS or a diffusers scheduler class."""
    if name not in SAMPLERS:
        _scheduler_class(name)


def make_scheduler(cfg: SamplerConfig, process, learned_sigma: bool):
    """A fresh diffusers scheduler for ``cfg`` on ``process`` (never shared between calls)."""
    if cfg.sampler == "euler-maruyama":
        raise SamplerError("euler-maruyama is not a diffusers scheduler; call sample_loop")
    cls_name, extra = SAMPLERS.get(cfg.sampler, (cfg.sampler, {}))
    cls = _scheduler_class(cls_name)
    owned = dict(process.scheduler_config(), prediction_type="epsilon")
    noise_keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    user = {k: v for k, v in (cfg.options or {}).items() if k not in owned and k not in noise_keys}
    kwargs = dict(owned, timestep_spacing=cfg.timestep_spacing, **{**extra, **user})
    if cls_name == "DDPMScheduler":
        kwargs["variance_type"] = "learned_range" if learned_sigma else "fixed_small"
    accepted = inspect.signature(cls.__init__).parameters
    if "trained_betas" in kwargs and "trained_betas" not in accepted:
        raise SamplerError(f"{cls_name} cannot take this process's noise schedule (no trained_betas): pick another sampler")
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})


def takes_learned_variance(scheduler) -> bool:
    return getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")


def sample_loop(
    model_fn: ModelFn,
    process,
    cfg: SamplerConfig,
    noise: torch.Tensor,
    y: torch.Tensor | None = None,
    generators: Sequence[torch.Generator] | None = None,
    learned_sigma: bool = False,
    progress: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Integrate from ``noise`` (B, C, H, W) to data. ``generators`` (one per image) drive any step noise,
    so an image does not depend on the batch it is in. ``progress()`` is called once per model evaluation.
    """
    if cfg.steps < 1:
        raise SamplerError(f"steps must be at least 1, got {cfg.steps}")
    if cfg.sampler == "euler-maruyama":
        return euler_maruyama(model_fn, process, cfg.steps, noise, y, generators, progress)
    scheduler = make_scheduler(cfg, process, learned_sigma)
    scheduler.set_timesteps(cfg.steps)
    C = noise.shape[1]
    keep_variance = takes_learned_variance(scheduler)
    step_params = inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": list(generators)} if generators is not None and "generator" in step_params else {}
    x = noise * scheduler.init_noise_sigma
    # scheduler.timesteps lives on the host: reading a step's value never waits for the device.
    for s in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, s)
        out = model_fn(x_in, process.index_to_model_time(s.item()), y)  # (B, C or 2C, H, W)
        if not keep_variance:
            out = out[:, :C]
        x = scheduler.step(out, s, x, **step_kwargs).prev_sample
        if progress is not None:
            progress()
    return x


def euler_maruyama(model_fn, process, steps, noise, y=None, generators=None, progress=None) -> torch.Tensor:
    """Euler–Maruyama on the reverse VP-SDE for an eps-prediction network (as baofff/U-ViT ``sde.py``).

    Grid: [0, linspace(eps, 1, steps)], integrated from 1 down to 0; the model is evaluated at the
    ``steps`` points of linspace(eps, 1, steps); the last step (eps -> 0) adds no noise.
    Reverse drift: f - g^2 score = -beta/2 x + beta eps_hat / sigma(t); diffusion g = sqrt(beta).
    Written here because diffusers only has ScoreSdeVpScheduler, deprecated, whose ``score`` argument is eps.
    A discrete DDPM process is run through its continuous limit (beta(t) = T beta_i).
    """
    sde = process.sde() if isinstance(process, DiscreteVP) else process
    assert isinstance(sde, ContinuousVP)
    C = noise.shape[1]
    grid = [0.0] + torch.linspace(sde.eps, 1.0, steps, dtype=torch.float64).tolist()
    x = noise
    for s, t in reversed(list(zip(grid[:-1], grid[1:]))):
        beta = sde.beta(t)
        _, sigma = sde.alpha_sigma(t)
        eps_hat = model_fn(x, sde.model_time(t), y)[:, :C]
        dt = s - t  # negative
        drift = -0.5 * beta * x + (beta / sigma) * eps_hat
        x = x + drift * dt
        if s != 0:
            x = x + (beta * -dt) ** 0.5 * per_image_randn(x, generators)
        if progress is not None:
            progress()
    return x


def per_image_randn(like: torch.Tensor, generators: Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, image i drawn from ``generators[i]``."""
    if generators is None:
        return torch.randn_like(like)
    return torch.stack(
        [torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype) for g in generators]
    )


class Denoiser:
    """The network with its parameterisation: exit policy, classifier-free guidance, time mapping.

    Called as ``denoiser(x, t_model, y)`` with the network time of the step (a float, or a (B,) tensor when
    the rows sit at different steps): asks the exit policy for every row's depth, with the normalised
    training time passed explicitly, and combines conditional and unconditional passes for CFG. Both halves
    of a guided batch get the depth of their row (a per-sample policy may give them different ones).
    """

    def __init__(self, model, process, policy=None, cfg_scale: float = 1.0, cfg_channels: int | None = None,
                 record: list | None = None):
        self.model = model
        self.process = process
        self.policy = policy
        self.cfg_scale = cfg_scale
        self.cfg_channels = cfg_channels  # None = every latent channel; 3 = the official DiT code's behaviour
        # record: the caller's list that receives (t_model, blocks each row ran) per call (kept on the device)
        self.record = record

    def depths(self, t_model, batch: int) -> torch.Tensor | None:
        """(batch,) blocks per row on the host, or None (no policy: every block)."""
        if self.policy is None:
            return None
        t = torch.as_tensor(t_model, dtype=torch.float64).cpu().expand(batch)
        return self.policy.depth(self.process.unit_time(t))

    def _inputs(self, x: torch.Tensor, t_model, y: torch.Tensor | None):
        """(x, t, y, guided): the network's inputs, both halves of a guided batch stacked."""
        B = x.shape[0]
        if isinstance(t_model, (int, float)):  # one time for the batch: filled on the device, no host-to-device copy
            t = torch.full((B,), float(t_model), dtype=torch.float32, device=x.device)
        else:
            t = torch.as_tensor(t_model, dtype=torch.float32).to(x.device).expand(B)
        guided = self.cfg_scale != 1.0 and y is not None
        if guided:
            null = torch.full_like(y, self.model.num_classes)
            x, y, t = torch.cat([x, x]), torch.cat([y, null]), torch.cat([t, t])
        return x, t.contiguous(), y, guided

    def _guide(self, out: torch.Tensor, B: int) -> torch.Tensor:
        cond, uncond = out[:B], out[B:]
        c = self.cfg_channels or self.model.in_channels
        eps = uncond[:, :c] + self.cfg_scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([eps, cond[:, c:]], dim=1)

    def at_depths(self, x: torch.Tensor, t_model, y: torch.Tensor | None, depths):
        """``(k, prediction with every row at depth k)`` for each k in ``depths``, the blocks run once for all of
        them (``backbone.forward_depths``; each equals this denoiser's output under a fixed depth k, bit for
        bit). The exit policy is not asked: the caller names the depths. A generator, as forward_depths is."""
        from ..models.backbone import forward_depths

        B = x.shape[0]
        x, t, y, guided = self._inputs(x, t_model, y)
        for k, out in forward_depths(self.model, x, t, y, depths):
            yield k, (self._guide(out, B) if guided else out)

    def __call__(self, x: torch.Tensor, t_model, y: torch.Tensor | None = None) -> torch.Tensor:
        B = x.shape[0]
        k = self.depths(t_model, B)
        x, t, y, guided = self._inputs(x, t_model, y)
        if guided:
            k = None if k is None else torch.cat([k, k])
        exits = self.policy if hasattr(self.policy, "exit_after") else None  # a per-sample policy decides after each block
        if exits is not None or self.record is not None:
            ran = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
            out = self.model(x, t, y, active_blocks=k, exits=exits, depth_out=ran)
            if self.record is not None:
                self.record.append((t_model, ran))
        else:
            out = self.model(x, t, y, active_blocks=k)  # (B or 2B, C_out, H, W)
        return self._guide(out, B) if guided else out
