"""`eediff calibrate`: the DeeDiff threshold τ that gives a target layer saving, stored with the model.

The uncertainty of every block of every row is recorded along full-depth sampling trajectories of a
calibration batch (the sampler and step count of later use); for a threshold τ a row would leave after the
first block whose uncertainty is below τ, so the layer saving of τ is 1 − mean(depth) / K over those
records, and τ is found by bisection. A check run then samples the same batch with τ and reports the saving
that is realised (exits change the trajectory, so it can differ a little from the recorded one).
"""

from __future__ import annotations

import json

import torch

from ..diffusion.sampling import SamplerConfig
from ..exits.deediff import DeeDiffError, DeeDiffExit, RecordingExit, calibrate_tau, heads_of
from ..io import atomic_write, read_safetensors


def calibrate(model, process, sampler: SamplerConfig, target_saving: float, n: int = 256, batch_size: int = 256, seed: int = 0,
              cap=None, cfg_scale: float = 1.0, device="cpu", autocast_dtype=None, check: bool = True) -> dict:
    from ..generate import generate

    if heads_of(model) is None:
        raise DeeDiffError("this model has no DeeDiff heads: fine-tune it with `eediff finetune --method deediff` first")
    rec = RecordingExit(model, cap=cap)
    kw = dict(n=n, batch_size=batch_size, seed=seed, cfg_scale=cfg_scale, device=device, autocast_dtype=autocast_dtype, progress=False)
    generate(model, process, sampler, policy=rec, **kw)
    u = torch.cat([r.cpu() for r in rec.records], dim=1)  # (K - 1, rows x evaluations)
    caps = None
    if cap is not None:  # each row's ASE depth at its timestep bounds where it can be
        t_unit = process.unit_time(torch.cat([t.cpu() for t in rec.times]).double())
        caps = rec.depth(t_unit.clamp(0, 1))
        u = torch.nan_to_num(u, nan=1.0)  # blocks past a row's cap were never run: no exit there (the cap ends it)
    tau, saving = calibrate_tau(u, target_saving, cap=caps)
    out = {"tau": tau, "target_saving": target_saving, "recorded_saving": saving, "records": u.shape[1]}
    if check:
        res = generate(model, process, sampler, policy=DeeDiffExit(model, tau, cap=cap), **kw)
        out["realised_saving"] = res.layers_saved
    return out


def store_tau(src: str, dst: str, tau: float) -> None:
    """Copy an eediff checkpoint with its DeeDiff threshold set to ``tau`` (atomic; tensors untouched)."""
    from safetensors.torch import save_file

    tensors, meta = read_safetensors(src)
    if "deediff" not in meta:
        raise DeeDiffError(f"'{src}' carries no DeeDiff heads: nothing to calibrate")
    d = json.loads(meta["deediff"])
    d["tau"] = tau
    meta = {**meta, "deediff": json.dumps(d)}
    atomic_write(dst, lambda tmp: save_file(tensors, tmp, metadata=meta))
