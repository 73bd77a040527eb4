"""DeeDiff models compared on the CPU: the threshold for a layer saving, then the classifier Fréchet distance of
``-n`` images per model (same seeds and labels for every model), beside a full-depth model. A smaller, CPU-sized
form of ``deediff_eval.py`` (no timing, no Inception), for deciding between two DeeDiff fine-tunes of one backbone.

    python benchmarks/deediff_cpu_check.py --models new=runs/dd-dit/final-fp16.safetensors,shipped=dit-fmnist-deediff \
        --full dit-fmnist --target-saving 0.4 -n 500 --out results/deediff/cpu_check_dit.json

Every DeeDiff model is calibrated here to the same target (``eediff calibrate``'s function, ``--calib-n`` images),
so the comparison is at equal layer saving; the saving each set realised is reported with its distance.
``--scheduled ase-D4=dit-fmnist-D4:D4-DiT`` adds a model sampled at a fixed exit schedule (an ASE fine-tune; repeat
the flag for more).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from two_stage import pairs, write


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="", help="LABEL=MODEL,... (DeeDiff checkpoints or shipped names)")
    ap.add_argument("--full", default=None, help="a model sampled at full depth beside them (the base)")
    ap.add_argument("--scheduled", action="append", default=[], help="LABEL=MODEL:SCHEDULE sampled at a fixed exit schedule "
                    "beside them (an ASE fine-tune at its preset; SCHEDULE may be a comma list); repeat for more")
    ap.add_argument("--target-saving", type=float, default=0.4)
    ap.add_argument("--calib-n", type=int, default=256)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--sampler", default="dpm-solver++")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--work", default=".cache/deediff_cpu_check")
    ap.add_argument("--reference", default="fashion-mnist:test", help="DATASET:SPLIT or an .npz of uint8 images the distances are measured against")
    ap.add_argument("--cache-dir", default=".cache/fid")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    from eediff.config import FidConfig
    from eediff.diffusion.sampling import SamplerConfig
    from eediff.eval.calibrate import calibrate
    from eediff.eval.evaluate import run_fid
    from eediff.exits.deediff import DeeDiffExit
    from eediff.exits.schedule import get_schedule
    from eediff.generate import generate, to_uint8
    from eediff.zoo import resolve_model

    sampler = SamplerConfig(a.sampler, a.steps)
    os.makedirs(a.work, exist_ok=True)
    out = {"command": "python " + " ".join(sys.argv), "sampler": f"{a.sampler}-{a.steps}", "n": a.n, "device": "cpu",
           "metric": "fd-classifier", "reference": a.reference, "target_saving": a.target_saving, "rows": []}

    def measure(label, model, process, **kw):
        t0 = time.perf_counter()
        res = generate(model, process, sampler, n=a.n, batch_size=a.batch_size, seed=0, device="cpu", progress=False, **kw)
        path = os.path.join(a.work, f"{label}.npz")
        np.savez(path, arr_0=to_uint8(res.images))
        fd = run_fid(FidConfig(images=path, reference=a.reference, metric="fd-classifier", cache_dir=a.cache_dir, device="cpu"))
        row = {"label": label, "fd": fd, "layers_saved": res.layers_saved, "flop_reduction": 1 - res.compute_fraction,
               "seconds": time.perf_counter() - t0}
        print(f"{label}: FD {fd:.3f}, layers saved {100 * res.layers_saved:.1f}%, FLOP cut {100 * (1 - res.compute_fraction):.1f}% "
              f"({row['seconds']:.0f} s)", flush=True)
        return row

    if a.full:
        b = resolve_model(a.full)
        out["rows"].append({"model": a.full, "kind": "full depth", **measure("full", b.model.eval(), b.process, schedule=get_schedule("full"))})
    for entry in a.scheduled:
        label, eq, spec = entry.partition("=")
        name, _, sched = spec.rpartition(":")
        if not (eq and label and name and sched):
            ap.error(f"--scheduled '{entry}' is not LABEL=MODEL:SCHEDULE (e.g. ase-D4=dit-fmnist-D4:D4-DiT)")
        loaded = resolve_model(name)
        out["rows"].append({"model": name, "kind": "schedule", "schedule": sched,
                            **measure(label, loaded.model.eval(), loaded.process, schedule=get_schedule(sched))})
    for label, spec in pairs(a.models).items():
        loaded = resolve_model(spec)
        m = loaded.model.eval()
        c = calibrate(m, loaded.process, sampler, a.target_saving, n=a.calib_n, batch_size=a.batch_size, device="cpu", check=False)
        print(f"{label}: tau {c['tau']:.4f} for {a.target_saving:.2f} of the layers (recorded {c['recorded_saving']:.3f})", flush=True)
        out["rows"].append({"model": spec, "kind": "deediff", "tau": c["tau"], "recorded_saving": c["recorded_saving"],
                            **measure(label, m, loaded.process, policy=DeeDiffExit(m, c["tau"]))})
    write(a.out, out)
    return out


if __name__ == "__main__":
    main()
