"""Token-merging rows in the shape of the ASE paper's Tables 5–8, on the shipped base models.

    python benchmarks/tome_eval.py generate --models DiT=dit-fmnist,U-ViT=uvit-fmnist --work /tmp/tome --out /tmp/tome/partial.json
    python benchmarks/tome_eval.py fid --work /tmp/tome --partial /tmp/tome/partial.json --inception inception_fp16.pt \
        --out results/tome.json

``generate``: for every model and ToMe setting (``--ratios`` x ``--schedules`` x ``--blocks``, plus no merging),
``-n`` images with the same sampler, seeds and labels, saved as uint8 .npz, the analytic FLOP reduction
(merged tokens counted), and the measured Accel.: full depth without merging against each setting, one batch,
interleaved, median of repeats (``measure_speed``). ``fid``: Inception FID of each set against the test set.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
from two_stage import pairs, parser, write


def settings(a, num_blocks: int) -> list[dict]:
    blocks = [int(b) if b != "half" else num_blocks // 2 for b in a.blocks.split(",")]
    return [{"ratio": float(r), "schedule": s, "blocks": b} for r in a.ratios.split(",") for s in a.schedules.split(",") for b in blocks]


def generate_stage(a) -> dict:
    from eediff.config import autocast_dtype, resolve_device
    from eediff.diffusion.sampling import SamplerConfig
    from eediff.eval.timing import time_fn
    from eediff.exits.schedule import get_schedule
    from eediff.generate import generate, to_uint8
    from eediff.tome import ToMeConfig, apply_tome
    from eediff.zoo import resolve_model

    device = resolve_device(a.device)
    amp = autocast_dtype("auto", device)
    sampler = SamplerConfig(a.sampler, a.steps)
    os.makedirs(a.work, exist_ok=True)
    out = {"command": "python " + " ".join(sys.argv), "sampler": f"{a.sampler}-{a.steps}", "n": a.n, "rows": [],
           "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"}
    full = get_schedule("full")
    for arch, name in pairs(a.models).items():
        loaded = resolve_model(name)
        m, proc = loaded.model.to(device), loaded.process
        run = lambda: generate(m, proc, sampler, n=a.time_batch, batch_size=a.time_batch, schedule=full,  # noqa: E731
                               device=device, autocast_dtype=amp, progress=False)
        t_full = time_fn(run, device, warmup=1, repeats=a.time_repeats)["median_s"]
        for j, st in enumerate([None] + settings(a, len(m.attentions()))):
            h = None if st is None else apply_tome(m, ToMeConfig(**st))
            res = generate(m, proc, sampler, n=a.n, batch_size=a.batch_size, seed=0, schedule=full, device=device,
                           autocast_dtype=amp, progress=False)
            path = os.path.join(a.work, f"{arch}-{j}.npz")
            np.savez(path, arr_0=to_uint8(res.images))
            t = time_fn(run, device, warmup=1, repeats=a.time_repeats)["median_s"] if st is not None else t_full
            if h is not None:
                h.remove()
            row = {"model": arch, "checkpoint": name, "tome": st, "images": path, "flop_reduction": 1 - res.compute_fraction,
                   "accel": 1 - t / t_full, "sampler": out["sampler"]}
            out["rows"].append(row)
            print(f"{arch} {st}: FLOP cut {100 * row['flop_reduction']:.1f}%, Accel. {100 * row['accel']:.1f}%", flush=True)
    return out


def fid_stage(a) -> dict:
    from eediff.config import FidConfig
    from eediff.eval.evaluate import run_fid

    with open(a.partial) as f:
        part = json.load(f)
    for r in part["rows"]:
        r["fid"] = run_fid(FidConfig(images=os.path.join(a.work, os.path.basename(r["images"])), reference=a.reference,
                                     metric=a.metric, inception=a.inception, cache_dir=a.cache_dir, device=a.device))
        print(f"  {r['model']} {r['tome']}: {a.metric} {r['fid']:.2f}", flush=True)
    base = {r["model"]: r["fid"] for r in part["rows"] if r["tome"] is None}
    for r in part["rows"]:
        r["fid_ratio"] = r["fid"] / base[r["model"]]
    part["commands"] = [part.pop("command"), "python " + " ".join(sys.argv)]
    part["metric"] = a.metric
    return part


if __name__ == "__main__":
    ap = parser()
    ap.add_argument("--models", default="DiT=dit-fmnist,U-ViT=uvit-fmnist")
    ap.add_argument("--ratios", default="0.25,0.5")
    ap.add_argument("--schedules", default="F,R,B")
    ap.add_argument("--blocks", default="half", help="comma list of block counts; 'half' = half the compute blocks")
    ap.add_argument("--time-batch", type=int, default=1000)
    a = ap.parse_args()
    write(a.out, generate_stage(a) if a.stage == "generate" else fid_stage(a))
