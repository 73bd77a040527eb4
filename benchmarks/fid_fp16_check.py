"""How much does an fp16 copy of the FID Inception network change features and FID? (CPU, run once)

    .venv/bin/python benchmarks/fid_fp16_check.py [--n-set 200] [--n-feat 64] [--n-half 64]

* writes the fp16 copy to .cache/inception_default_1_fp16.pt (git-ignored) with
  eediff.eval.fid.save_inception_fp16;
* "fp16 storage": fp16 file upcast to float32 at load, float32 compute (what we ship/use);
* "fp16 compute": fp16 weights *and* fp16 activations (CPU half kernels; slow, so only
  on --n-half images, and no FID for it);
* data: Fashion-MNIST TEST split from the Debian package dataset-fashion-mnist,
  set A = test[0:n_set], set B = test[n_set:2*n_set]; feature comparison on A[:n_feat].

Writes results/fid_fp16_vs_fp32.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from eediff.eval.fid import (InceptionFeatures, StatsAccumulator, file_sha256, frechet_distance,
                             load_fashion_mnist, resolve_inception_path, save_inception_fp16)

ROOT = Path(__file__).resolve().parent.parent


def rel(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Relative error of a w.r.t. reference b: whole-matrix Frobenius and per-image stats."""
    per = ((a - b).norm(dim=1) / b.norm(dim=1)).numpy()
    return {"frobenius": float((a - b).norm() / b.norm()), "per_image_median": float(np.median(per)),
            "per_image_max": float(per.max())}


def stats(f: torch.Tensor):
    acc = StatsAccumulator(f.shape[1])
    acc.update(f)
    s = acc.stats()
    return s.mu, s.sigma


def timed(fn, *a):
    t = time.time()
    out = fn(*a)
    return out, time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-set", type=int, default=200)
    ap.add_argument("--n-feat", type=int, default=64)
    ap.add_argument("--n-half", type=int, default=64)
    ap.add_argument("--fp16-path", default=str(ROOT / ".cache" / "inception_default_1_fp16.pt"))
    ap.add_argument("--out", default=str(ROOT / "results" / "fid_fp16_vs_fp32.json"))
    a = ap.parse_args()

    src = resolve_inception_path(None)
    dst = save_inception_fp16(src, a.fp16_path)
    x, _ = load_fashion_mnist("test")
    set_a, set_b = x[: a.n_set], x[a.n_set: 2 * a.n_set]
    both = np.concatenate([set_a, set_b])

    f32_net = InceptionFeatures(src)
    f16s_net = InceptionFeatures(dst)  # fp16 file, upcast to float32
    f32, t32 = timed(f32_net, both)
    f16s, t16s = timed(f16s_net, both)
    del f16s_net
    f16c_net = InceptionFeatures(dst, compute_dtype=torch.float16)
    f16c, t16c = timed(f16c_net, set_a[: a.n_half])

    n = a.n_set
    fid32 = frechet_distance(*stats(f32[:n]), *stats(f32[n:]))
    fid16s = frechet_distance(*stats(f16s[:n]), *stats(f16s[n:]))
    res = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "data": f"Fashion-MNIST test split (Debian dataset-fashion-mnist); A=test[0:{n}], B=test[{n}:{2 * n}]",
        "inception_fp32": {"path": str(src), "bytes": os.path.getsize(src), "sha256": file_sha256(src)},
        "inception_fp16": {"path": os.path.relpath(dst, ROOT), "bytes": os.path.getsize(dst),
                           "sha256": file_sha256(dst),
                           "note": "default_1.pt has no classifier head (ends at 2048-d pool_3); whole net stored fp16"},
        "fp16_storage_fp32_compute": {
            "feature_rel_error_vs_fp32": rel(f16s[: a.n_feat], f32[: a.n_feat]) | {"n_images": a.n_feat},
            "fid_fp32": fid32, "fid_fp16_storage": fid16s,
            "fid_abs_diff": abs(fid16s - fid32), "fid_rel_diff": abs(fid16s - fid32) / fid32,
            "n_per_set": n,
        },
        "fp16_compute": {
            "feature_rel_error_vs_fp32": rel(f16c.to(torch.float64), f32[: a.n_half]) | {"n_images": a.n_half},
            "fid": "not measured (CPU half kernels ~15x slower than fp32)",
        },
        "seconds": {"fp32_features": round(t32, 1), "fp16_storage_features": round(t16s, 1),
                    "fp16_compute_features": round(t16c, 1),
                    "images_per_s_fp32": round(len(both) / t32, 2),
                    "images_per_s_fp16_compute": round(a.n_half / t16c, 2)},
        "fid_metric": "frechet_distance (eigh, float64) on float64 stats",
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or
                platform.machine(), "python": platform.python_version()},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
