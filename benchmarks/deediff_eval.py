"""DeeDiff on the shipped Fashion-MNIST models: calibrated thresholds, layer saving, time saving, FID.

Two stages, so that the GPU run that trains and samples need not carry the Inception network:

    python benchmarks/deediff_eval.py generate --models DiT=runs/dd-dit/final.safetensors,U-ViT=runs/dd-uvit/final.safetensors \
        --base DiT=dit-fmnist,U-ViT=uvit-fmnist --ase DiT=dit-fmnist-D4:D4-DiT,U-ViT=uvit-fmnist-D4:D4-U-ViT \
        --work /tmp/dd --out results/deediff_partial.json
    python benchmarks/deediff_eval.py fid --work /tmp/dd --partial results/deediff_partial.json \
        --inception inception_fp16.pt --out results/deediff.json

``generate``: per DeeDiff model, τ calibrated on 256 images for each target layer saving (`eediff calibrate`'s
function), then ``-n`` images at each τ and at full depth (τ = 0), the base model at full depth and the ASE
fine-tune at its schedule (same sampler, seeds and labels), saved as uint8 .npz; the realised layer saving of
each set; and the sampling time of full depth against each τ (and the ASE schedule) at batch 1 and 64,
interleaved in the same run (``measure_speed``: warm-up, median of repeats, CUDA events), every variant eager
with bf16 autocast (per-layer exits run compiled-free and graph-free, so full depth is timed the same way).
``fid``: Inception FID of every set against the Fashion-MNIST test set; writes one row per (model, τ, sampler).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch
from two_stage import pairs, parser, write


def generate_stage(a) -> dict:
    from eediff.config import autocast_dtype, resolve_device
    from eediff.diffusion.sampling import SamplerConfig
    from eediff.eval.calibrate import calibrate
    from eediff.eval.evaluate import measure_speed
    from eediff.exits.deediff import DeeDiffExit
    from eediff.exits.schedule import get_schedule
    from eediff.generate import generate, to_uint8
    from eediff.zoo import resolve_model

    device = resolve_device(a.device)
    amp = autocast_dtype("auto", device)
    sampler = SamplerConfig(a.sampler, a.steps)
    os.makedirs(a.work, exist_ok=True)
    out = {"command": "python " + " ".join(sys.argv), "sampler": f"{a.sampler}-{a.steps}", "n": a.n, "device":
           torch.cuda.get_device_name() if device.startswith("cuda") else "cpu", "models": {}}
    targets = [float(v) for v in a.targets.split(",")]
    bases, ases = pairs(a.base), pairs(a.ase)

    def images(model, process, label, **kw):
        t0 = time.perf_counter()
        res = generate(model, process, sampler, n=a.n, batch_size=a.batch_size, seed=0, device=device, autocast_dtype=amp,
                       progress=False, **kw)
        path = os.path.join(a.work, f"{label}.npz")
        np.savez(path, arr_0=to_uint8(res.images))
        print(f"  {label}: {a.n} images in {time.perf_counter() - t0:.1f} s, layers saved {100 * res.layers_saved:.1f}%, "
              f"FLOP cut {100 * (1 - res.compute_fraction):.1f}%", flush=True)
        return {"images": path, "layers_saved": res.layers_saved, "flop_reduction": 1 - res.compute_fraction,
                "step_depths": res.step_depths}

    for arch, path in pairs(a.models).items():
        loaded = resolve_model(path)
        m, proc = loaded.model.to(device), loaded.process
        rec = {"checkpoint": path, "calibration": [], "sets": {}}
        for target in targets:
            c = calibrate(m, proc, sampler, target, n=256, batch_size=256, device=device, autocast_dtype=amp)
            print(f"{arch}: target {target:.2f} -> tau {c['tau']:.4f} (recorded {c['recorded_saving']:.3f}, realised {c['realised_saving']:.3f})", flush=True)
            rec["calibration"].append(c)
        taus = [c["tau"] for c in rec["calibration"]]
        rec["sets"]["full"] = images(m, proc, f"{arch}-full", schedule=get_schedule("full"))
        for j, tau in enumerate(taus):
            rec["sets"][f"tau{j}"] = {"tau": tau, **images(m, proc, f"{arch}-tau{j}", policy=DeeDiffExit(m, tau))}
        if arch in bases:
            b = resolve_model(bases[arch])
            rec["sets"]["base full"] = images(b.model.to(device), b.process, f"{arch}-base-full", schedule=get_schedule("full"))
        ase = None
        if arch in ases:
            name, sched = ases[arch].split(":")
            ase = resolve_model(name)
            rec["sets"][f"ASE {sched}"] = {"schedule": sched, "model": name,
                                           **images(ase.model.to(device), ase.process, f"{arch}-ase", schedule=get_schedule(sched))}
        # time: full depth against every threshold (same weights), interleaved, at batch 1 and 64
        variants = [get_schedule("full")] + [DeeDiffExit(m, tau) for tau in taus]
        rec["timing"] = {}
        for batch in (1, 64):
            sp = measure_speed(m, proc, sampler, variants, batch=batch, repeats=a.time_repeats, device=device, autocast=amp)
            full = sp["median_s"]["full"]
            rec["timing"][str(batch)] = {"median_s": sp["median_s"], "time_saved": {v.name: 1 - sp["median_s"][v.name] / full for v in variants}}
            if ase is not None:  # the ASE fine-tune at its schedule, against the same model at full depth, same way
                sa = measure_speed(ase.model, ase.process, sampler, [get_schedule("full"), get_schedule(sched)], batch=batch,
                                   repeats=a.time_repeats, device=device, autocast=amp)
                rec["timing"][str(batch)]["ase_time_saved"] = 1 - sa["median_s"][sched] / sa["median_s"]["full"]
            print(f"{arch} batch {batch}: " + ", ".join(f"{k} {v:.3f}" for k, v in rec["timing"][str(batch)]["time_saved"].items()), flush=True)
        out["models"][arch] = rec
    return out


def fid_stage(a) -> dict:
    from eediff.config import FidConfig
    from eediff.eval.evaluate import run_fid

    with open(a.partial) as f:
        part = json.load(f)
    fid_of = {}

    def fid(path):
        if path not in fid_of:
            local = os.path.join(a.work, os.path.basename(path))
            fid_of[path] = run_fid(FidConfig(images=local, reference=a.reference, metric=a.metric, inception=a.inception,
                                             cache_dir=a.cache_dir, device=a.device))
            print(f"  FID {os.path.basename(path)}: {fid_of[path]:.2f}", flush=True)
        return fid_of[path]

    rows = []
    for arch, rec in part["models"].items():
        sets = rec["sets"]
        fid_full = fid(sets["full"]["images"])
        fid_base = fid(sets["base full"]["images"]) if "base full" in sets else None
        for key, s in sets.items():
            s["fid"] = fid(s["images"])
        t1, t64 = rec["timing"]["1"]["time_saved"], rec["timing"]["64"]["time_saved"]
        for j, c in enumerate(rec["calibration"]):
            s = sets[f"tau{j}"]
            name = f"deediff-tau{c['tau']:g}"
            rows.append({"model": arch, "checkpoint": rec["checkpoint"], "tau": c["tau"], "target_saving": c["target_saving"],
                         "sampler": part["sampler"], "layers_saved": s["layers_saved"], "flop_reduction": s["flop_reduction"],
                         "time_saved_b1": t1.get(name), "time_saved_b64": t64.get(name), "fid": s["fid"], "fid_full": fid_full,
                         "fid_base": fid_base, "fid_ratio": s["fid"] / fid_full})
        for key, s in sets.items():
            if key.startswith("ASE"):
                rows.append({"model": arch, "method": key, "checkpoint": s["model"], "sampler": part["sampler"],
                             "layers_saved": s["layers_saved"], "flop_reduction": s["flop_reduction"],
                             "time_saved_b1": rec["timing"]["1"].get("ase_time_saved"),
                             "time_saved_b64": rec["timing"]["64"].get("ase_time_saved"), "fid": s["fid"], "fid_full": fid_base,
                             "fid_ratio": s["fid"] / fid_base if fid_base else None})
    return {"commands": [part["command"], "python " + " ".join(sys.argv)], "n": part["n"], "device": part["device"], "metric": a.metric,
            "rows": rows, "generation": part}


if __name__ == "__main__":
    ap = parser()
    ap.add_argument("--models", default="")
    ap.add_argument("--base", default="")
    ap.add_argument("--ase", default="")
    ap.add_argument("--targets", default="0.3,0.4,0.5")
    a = ap.parse_args()
    write(a.out, generate_stage(a) if a.stage == "generate" else fid_stage(a))
