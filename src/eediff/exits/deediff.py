"""DeeDiff (Tang et al., 2023; as AdaDiff at ECCV 2024): uncertainty-aware early exit, decided per sample.

An uncertainty estimation module (UEM) after every schedulable block but the last estimates how far that
block's prediction ε_i, read through the backbone's own output head, is from the truth; at inference a row
leaves after the first block whose estimated uncertainty is below τ. Two forms:

- ``paper`` (default): u_i = sigmoid(w_hᵀ mean_tokens(h_i) + w_tᵀ emb(t) + b), a linear layer over the
  layer's image tokens together with a sinusoidal embedding of the network time; one scalar per row;
- ``pixel`` (the authors' released code): Linear(D -> p·p·C) + sigmoid on each image token of the
  *detached* hidden state, unpatchified to a per-pixel certainty map c_i; no time input; a row's
  uncertainty is 1 − mean(c_i).

The heads are attached with ``apply_deediff(model, DeeDiffConfig())`` (a handle; ``remove()`` detaches
them) as the submodule ``uem``, so they train, checkpoint and resume with the model; they are saved with
it under ``uem.*`` and an official checkpoint, which has none, still loads unchanged.

Training losses (``deediff_losses``), with the detached pseudo-uncertainty û_i = tanh(|ε_i − ε|) (ε the
noise the example was made with):

- L_u = Σ_i mean((u_i − mean_pixels û_i)²) (``pixel``: mean((c_i − (1 − û_i))²) per pixel, the code's
  certainty target);
- L_UAL, ``paper`` weighting: Σ_i mean_rows((1 − u_i) · ‖ε_i − ε‖²); ``code`` weighting: Σ_i w_i ‖ε_i − ε‖²
  with w_i = the batch-mean certainty of layer i, normalised so that Σ_i w_i = 1. In both, u_i enters as a
  detached weight (a gradient through it would only teach the UEM to claim certainty);
- L = L_simple + λ L_u + β L_UAL.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import EediffError
from ..models.layers import timestep_embedding, unpatchify
from .schedule import ExitSchedule, get_schedule

FORMS = ("paper", "pixel")


class DeeDiffError(EediffError):
    """A DeeDiff option or model that cannot be used; one-line message."""


@dataclass
class DeeDiffConfig:
    form: str = "paper"  # paper | pixel (the authors' per-pixel certainty)
    time_dim: int = 128  # sinusoidal timestep embedding fed to the paper form
    tau: float = 0.5  # exit threshold on the uncertainty, in (0, 1); `eediff calibrate` sets it

    def __post_init__(self):
        if self.form not in FORMS:
            raise DeeDiffError(f"unknown DeeDiff form '{self.form}': use paper or pixel")
        if not self.tau >= 0:
            raise DeeDiffError(f"DeeDiff threshold tau must be >= 0, got {self.tau}")


class PaperUEM(nn.Module):
    """u = sigmoid(w_hᵀ mean_tokens(h) + w_tᵀ emb(t) + b): (n, L, D), (n,) -> (n,)."""

    def __init__(self, dim: int, time_dim: int):
        super().__init__()
        self.time_dim = time_dim
        self.token = nn.Linear(dim, 1, bias=True)
        self.time = nn.Linear(time_dim, 1, bias=False)

    def forward(self, h: torch.Tensor, t_model: torch.Tensor):
        emb = timestep_embedding(t_model, self.time_dim).to(h.dtype)  # (n, time_dim)
        logit = self.token(h.mean(1)).squeeze(-1) + self.time(emb).squeeze(-1)  # (n,)
        return torch.sigmoid(logit), None


class PixelUEM(nn.Module):
    """Per-pixel certainty from the detached tokens: (n, L, D) -> u (n,), certainty map (n, C, H, W)."""

    def __init__(self, dim: int, patch_size: int, channels: int):
        super().__init__()
        self.patch_size, self.channels = patch_size, channels
        self.proj = nn.Linear(dim, patch_size * patch_size * channels)

    def forward(self, h: torch.Tensor, t_model: torch.Tensor):
        cert = torch.sigmoid(self.proj(h.detach()))  # (n, L, p*p*C)
        cert = unpatchify(cert, self.patch_size, self.channels)  # (n, C, H, W)
        return 1 - cert.mean(dim=(1, 2, 3)), cert


class DeeDiffHeads(nn.Module):
    """One UEM after each schedulable block but the last (leaving after the last block is full depth)."""

    def __init__(self, cfg: DeeDiffConfig, dim: int, num_blocks: int, patch_size: int, channels: int):
        super().__init__()
        self.cfg = cfg
        make = (lambda: PaperUEM(dim, cfg.time_dim)) if cfg.form == "paper" else (lambda: PixelUEM(dim, patch_size, channels))
        self.uems = nn.ModuleList([make() for _ in range(num_blocks - 1)])
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Zero weights: u = 0.5 everywhere before training (neither exit-happy nor exit-shy)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, i: int, h: torch.Tensor, t_model: torch.Tensor):
        """(uncertainty (n,), certainty map or None) after block i."""
        return self.uems[i](h, t_model)


@dataclass
class DeeDiffHandle:
    model: nn.Module
    heads: DeeDiffHeads

    def remove(self) -> None:
        if getattr(self.model, "uem", None) is self.heads:
            del self.model.uem


def apply_deediff(model: nn.Module, cfg: DeeDiffConfig | None = None) -> DeeDiffHandle:
    """Attach fresh UEMs (zero-initialised) to ``model`` as its submodule ``uem``."""
    cfg = cfg or DeeDiffConfig()
    if heads_of(model) is not None:
        raise DeeDiffError("this model already carries DeeDiff heads")
    p = next(model.parameters())
    heads = DeeDiffHeads(cfg, model.hidden_size, model.num_exit_blocks, model.patch_size, model.in_channels)
    model.uem = heads.to(device=p.device, dtype=p.dtype)
    return DeeDiffHandle(model, heads)


def heads_of(model) -> DeeDiffHeads | None:
    h = getattr(model, "uem", None)
    return h if isinstance(h, DeeDiffHeads) else None


def config_to_meta(heads: DeeDiffHeads) -> dict:
    return asdict(heads.cfg)


# ---- training ----------------------------------------------------------------------------------------
def layer_outputs(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None):
    """One pass over all blocks: the final output, and for every block i but the last the output a row
    leaving there gets (``head`` after the dropped-block path of the rest: U-ViT fuses the remaining skips)
    with its UEM's (uncertainty (B,), certainty map or None)."""
    heads = heads_of(model)
    if heads is None:
        raise DeeDiffError("the model carries no DeeDiff heads: apply_deediff(model, DeeDiffConfig()) first")
    K, B = model.num_exit_blocks, x.shape[0]
    s = model.embed(x, t, y)
    exits = []
    for i in range(K):
        s = model.run_block(i, s, B)
        if i < K - 1:
            u, cert = heads(i, model.image_tokens(s), t)
            e = s
            for j in range(i + 1, K):
                e = model.run_block(j, e, 0)
            exits.append((model.head(e), u, cert))
    return model.head(s), exits


def deediff_losses(exits, noise: torch.Tensor, channels: int, ual: str = "paper") -> tuple[torch.Tensor, torch.Tensor]:
    """(L_u, L_UAL) summed over the exits; ``exits`` from :func:`layer_outputs`, ``noise`` (B, C, H, W)."""
    if ual not in ("paper", "code"):
        raise DeeDiffError(f"unknown L_UAL weighting '{ual}': use paper or code")
    wide = lambda v: v if v.dtype == torch.float64 else v.float()  # noqa: E731 -- losses in fp32 under bf16 autocast
    l_u = wide(noise).new_zeros(())
    mses, weights = [], []
    for out, u, cert in exits:
        err = wide(out[:, :channels]) - wide(noise)  # (B, C, H, W)
        target = torch.tanh(err.abs()).detach()  # pseudo-uncertainty û_i, per pixel
        if cert is None:
            l_u = l_u + F.mse_loss(wide(u), target.mean(dim=(1, 2, 3)))
        else:
            l_u = l_u + F.mse_loss(wide(cert), 1 - target)
        mses.append(err.pow(2).mean(dim=(1, 2, 3)))  # (B,)
        weights.append(1 - wide(u.detach()))  # (B,) the detached certainty 1 − u_i
    if ual == "paper":
        l_ual = sum((w * m).mean() for w, m in zip(weights, mses))
    else:
        w = torch.stack([w.mean() for w in weights])
        w = w / w.sum().clamp_min(1e-12)
        l_ual = sum(wi * m.mean() for wi, m in zip(w, mses))
    return l_u, l_ual


# ---- inference ------------------------------------------------------------------------------------------
class DeeDiffExit:
    """Per-row exits: a row leaves after the first block whose uncertainty is below ``tau``; ``cap`` (an
    ASE schedule) bounds each row's depth by its timestep (DeeDiff inside an ASE budget).

    The decision after block i is ``u_i < tau``. For the paper form it is taken on the logit, with the time
    terms of every block computed once per call (``prepare``): per block one mean over the tokens, one
    matrix-vector product, an add and a compare, all on the device.
    """

    def __init__(self, model, tau: float | None = None, cap: "ExitSchedule | str | None" = None, row_bucket: int = 1):
        self.row_bucket = row_bucket  # the forward pass rounds the working rows up to a multiple of this
        heads = heads_of(model)
        if heads is None:
            raise DeeDiffError("this model has no DeeDiff heads: fine-tune it with `eediff finetune --method deediff` first")
        self.heads = heads
        self.tau = heads.cfg.tau if tau is None else float(tau)
        if not self.tau >= 0:
            raise DeeDiffError(f"--tau must be >= 0, got {self.tau}")
        self.num_blocks = model.num_exit_blocks
        self.cap = None if cap is None else get_schedule(cap).check(self.num_blocks)
        self.name = f"deediff-tau{self.tau:g}" + ("" if self.cap is None else f"-cap-{self.cap.name}")
        # u < tau  <=>  logit < log(tau / (1 - tau)) (sigmoid is increasing); tau >= 1 leaves always, tau = 0 never
        self._paper = heads.cfg.form == "paper"
        self._logit_tau = math.inf if self.tau >= 1 else (-math.inf if self.tau <= 0 else math.log(self.tau / (1 - self.tau)))

    def depth(self, t_unit: torch.Tensor) -> torch.Tensor:
        t_unit = torch.as_tensor(t_unit, dtype=torch.float64)
        if self.cap is None:
            return torch.full(t_unit.shape, self.num_blocks, dtype=torch.long)
        return self.cap.active_blocks(t_unit, self.num_blocks)

    graphable = True  # the decision is pure device work: the fast path may capture it

    def ctx_width(self) -> int:
        return self.num_blocks - 1 if self._paper else 1

    def prepare(self, t_model: torch.Tensor) -> torch.Tensor:
        """(B,) network time -> (B, K - 1): paper form, every block's time term plus bias; else t itself."""
        if not self._paper:
            return t_model.unsqueeze(1)
        uems = self.heads.uems
        w = torch.cat([m.time.weight for m in uems])  # (K - 1, time_dim)
        b = torch.cat([m.token.bias for m in uems])  # (K - 1,)
        emb = timestep_embedding(t_model, uems[0].time_dim).to(w.dtype)  # (B, time_dim)
        return torch.addmm(b, emb, w.t())  # (B, K - 1)

    def exit_after(self, i: int, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        if not self._paper:
            u, _ = self.heads(i, h, ctx[:, 0])
            return u < self.tau
        token = self.heads.uems[i].token
        logit = torch.mv(h.mean(1), token.weight[0].to(h.dtype)) + ctx[:, i].to(h.dtype)  # (n,)
        return logit < self._logit_tau  # (n,) on the device: no host read


class RecordingExit(DeeDiffExit):
    """Never exits; records every block's uncertainty of every row, and its network time (calibration).

    Rows are recorded by their position in the batch (carried in the per-row context, which the forward
    pass reorders with the rows), so a column of a record is one row across all blocks."""

    def __init__(self, model, cap=None):
        super().__init__(model, tau=0.0, cap=cap)
        self.records: list[torch.Tensor] = []  # one (K - 1, B) tensor per model call
        self.times: list[torch.Tensor] = []  # one (B,) tensor of network times per model call

    graphable = False  # it appends to host-side lists

    def ctx_width(self) -> int:
        return 2

    def prepare(self, t_model: torch.Tensor) -> torch.Tensor:
        B = t_model.shape[0]
        self.records.append(torch.full((self.num_blocks - 1, B), float("nan"), device=t_model.device))
        self.times.append(t_model.detach().float().clone())
        return torch.stack([t_model.float(), torch.arange(B, device=t_model.device, dtype=torch.float32)], 1)

    def exit_after(self, i: int, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        u, _ = self.heads(i, h, ctx[:, 0])
        self.records[-1][i, ctx[:, 1].long()] = u.float()
        return torch.zeros(u.shape, dtype=torch.bool, device=u.device)


def exit_depths(u: torch.Tensor, tau: float, cap: torch.Tensor | None = None) -> torch.Tensor:
    """Blocks run by rows with uncertainties u (K - 1, ...) at threshold tau: first i with u_i < tau, + 1
    (K if none), at most ``cap`` (the rows' ASE depths) when given."""
    below = u < tau
    first = torch.where(below.any(0), below.float().argmax(0), torch.full(below.shape[1:], u.shape[0], device=u.device))
    depth = first.long() + 1
    return depth if cap is None else torch.minimum(depth, cap.to(depth.device))


def calibrate_tau(u: torch.Tensor, target_saving: float, tol: float = 1e-4, cap: torch.Tensor | None = None) -> tuple[float, float]:
    """The threshold whose layer saving 1 − mean(depth) / K on recorded uncertainties u (K - 1, M) is
    closest to ``target_saving`` (bisection; saving grows with tau). Returns (tau, saving)."""
    if not 0 <= target_saving < 1:
        raise DeeDiffError(f"--target-saving must be in [0, 1), got {target_saving}")
    K = u.shape[0] + 1
    saving = lambda tau: 1 - exit_depths(u, tau, cap).double().mean().item() / K  # noqa: E731
    lo, hi = 0.0, 1.0 + 1e-6
    for _ in range(60):
        mid = (lo + hi) / 2
        if saving(mid) < target_saving:
            lo = mid
        else:
            hi = mid
        if hi - lo < tol * 1e-3:
            break
    best = min((lo, hi), key=lambda tau: abs(saving(tau) - target_saving))
    return best, saving(best)
