"""Which of a DiT block's token GEMMs costs the fp8 path its quality: the shipped model sampled with fp8 on
every GEMM but one (FastPathConfig.fp8_gemms), against bf16, by classifier FD. Runs on a CPU
(torch._scaled_mm's CPU kernel computes the same e4m3 products as the GPU's; the row passes are the torch ops).

    python benchmarks/fp8_ablation.py --out results/fp8_ablation_cpu.json      # about 25 minutes on 2 cores
    # bf16, fp8, and fp8 with bias correction calibrated on 64 images of their own seeds (eval --fp8-calibrate 64)
    python benchmarks/fp8_ablation.py --bias-correction 64 --out results/fp8_bias_correction_cpu.json
    python benchmarks/fp8_ablation.py --bias-correction 64 --model dit-fmnist --schedule full --out results/fp8_bias_correction_base_cpu.json
    # bf16, fp8, and fp8 with SmoothQuant balancing (FastPathConfig.fp8_smooth) at each alpha, with and without
    # fc2's smoothing, calibrated on 32 images of their own seeds; plus each variant's error of one forward vs fp32
    python benchmarks/fp8_ablation.py --smooth 32 --alphas 0.5,0.8 --model dit-fmnist --schedule full --out results/fp8_smooth_cpu_base.json
"""

import argparse
import copy
import json
import time

import torch

from eediff.data import load_dataset
from eediff.diffusion.sampling import SamplerConfig
from eediff.eval import classifier, fid
from eediff.generate import generate, to_uint8
from eediff.eval.evaluate import calibrate_fp8
from eediff.exits.schedule import get_schedule
from eediff.kernels import TOKEN_GEMMS, apply_kernels
from eediff.zoo import resolve_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="dit-fmnist-D4")
    ap.add_argument("--schedule", default="D4-DiT")
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--cache-dir", default=".cache/fid")
    ap.add_argument("--bias-correction", type=int, default=0, metavar="N",
                    help="instead of the per-GEMM rows: bf16, fp8, and fp8 with its biases corrected on N calibration images")
    ap.add_argument("--smooth", type=int, default=0, metavar="N",
                    help="instead of the per-GEMM rows: bf16, fp8, and fp8 smoothed (fp8_smooth) with maxima from N calibration images")
    ap.add_argument("--alphas", default="0.5,0.8", help="--smooth: the fp8_smooth_alpha values")
    ap.add_argument("--no-fc2-rows", action="store_true", help="--smooth: leave out the rows that smooth qkv, proj, fc1 only")
    ap.add_argument("--forward-error-only", action="store_true", help="--smooth: only the one-forward errors, no sampling")
    a = ap.parse_args()
    feat = classifier.ClassifierFeatures(device="cpu")
    ref = fid.reference_stats("fashion-mnist", "test", "uint8-full", lambda: load_dataset("fashion-mnist", "test").data, a.cache_dir, features=feat)
    loaded = resolve_model(a.model)
    rows = []
    sampler = SamplerConfig("dpm-solver++", 25)
    variants = [("none (bf16, kernels=fused)", (), False)]
    amax, alphas = None, [float(v) for v in a.alphas.split(",")]
    if a.smooth:  # what calibrate_fp8(stat="amax") does: the bf16 model's input maxima on seeds of their own
        amax = calibrate_fp8(copy.deepcopy(loaded.model).eval(), loaded.process, sampler, [get_schedule(a.schedule)], a.smooth,
                             a.smooth, "cpu", stat="amax")
        variants += [("all (kernels=fp8)", TOKEN_GEMMS, False)]
        for al in alphas:
            variants += [(f"all, smoothed alpha={al}", TOKEN_GEMMS, ("smooth", al, TOKEN_GEMMS))]
            if not a.no_fc2_rows:
                variants += [(f"all, smoothed alpha={al}, fc2 not smoothed", TOKEN_GEMMS, ("smooth", al, ("qkv", "proj", "fc1")))]
        errs = forward_errors(loaded, get_schedule(a.schedule), variants, amax)
        for name, e in errs.items():
            print(f"{name:44s} one-forward relative error vs fp32: {e['mean']:.4f}  {e['per_t']}", flush=True)
        if a.forward_error_only:
            return
    elif a.bias_correction:
        variants += [("all (kernels=fp8)", TOKEN_GEMMS, False), (f"all, bias corrected ({a.bias_correction} calibration images)", TOKEN_GEMMS, True)]
    else:
        variants += [(f"all but {g}", tuple(x for x in TOKEN_GEMMS if x != g), False) for g in TOKEN_GEMMS]
        variants += [("all (kernels=fp8)", TOKEN_GEMMS, False)]
    for name, gemms, correct in variants:
        m = copy.deepcopy(loaded.model).eval()
        means = None
        if correct is True:  # what `eediff eval --fp8-calibrate N` does: the bf16 model's mean GEMM inputs on seeds of their own
            means = calibrate_fp8(m, loaded.process, sampler, [get_schedule(a.schedule)], a.bias_correction, a.bias_correction, "cpu")
        m.bfloat16()
        apply_kernels(m, "fp8", row_kernels="inductor", fp8_gemms=gemms, fp8_input_means=means, **smooth_args(correct, amax))
        t0 = time.time()
        res = generate(m, loaded.process, sampler, n=a.n, batch_size=250, seed=0, schedule=a.schedule,
                       device="cpu", progress=False, autocast_dtype=torch.bfloat16)
        v = fid.fid_against_stats(to_uint8(res.images), ref, feat, backend="eigh")
        rows.append({"variant": name, "fp8_gemms": list(gemms), "fd_classifier": v, "seconds": time.time() - t0})
        if a.smooth:
            rows[-1].update(smooth=correct[1:] if isinstance(correct, tuple) else None, forward_rel_error_vs_fp32=errs[name])
        print(f"{name:28s} classifier FD {v:.3f}  ({time.time() - t0:.0f} s)", flush=True)
        json.dump({"model": a.model, "schedule": a.schedule, "n": a.n, "sampler": "dpm-solver++-25", "rows": rows,
                   "command": f"python benchmarks/fp8_ablation.py --out {a.out} --model {a.model} --schedule {a.schedule} -n {a.n}"
                              + (f" --bias-correction {a.bias_correction}" if a.bias_correction else "")
                              + (f" --smooth {a.smooth} --alphas {a.alphas}" + (" --no-fc2-rows" if a.no_fc2_rows else "") if a.smooth else ""),
                   "calibration": (f"{a.smooth} images, seeds from eval.evaluate.CALIBRATION_SEED" if a.smooth else None)},
                  open(a.out, "w"), indent=2)


def smooth_args(variant, amax) -> dict:
    """apply_kernels' smoothing arguments of a variant (("smooth", alpha, gemms), or none)."""
    if not isinstance(variant, tuple):
        return {}
    _, alpha, gemms = variant
    return dict(fp8_smooth=amax, fp8_smooth_alpha=alpha, fp8_smooth_gemms=gemms)


@torch.no_grad()
def forward_errors(loaded, schedule, variants, amax, n: int = 64, ts=(50, 250, 500, 750, 950)) -> dict:
    """Each variant's relative error (||out - ref|| / ||ref||) of one forward against the fp32 model, on ``n``
    Fashion-MNIST test images noised to each of ``ts`` (at the schedule's depth there, the noise of seed 0)."""
    data = load_dataset("fashion-mnist", "test")
    x0, y = data.batch(torch.arange(n))  # (n, 1, 28, 28) in [-1, 1], (n,) labels
    y = y.long()
    g = torch.Generator().manual_seed(0)
    K = loaded.model.num_exit_blocks
    inputs = []
    for t in ts:
        idx = torch.full((n,), t, dtype=torch.long)
        xt = loaded.process.perturb(x0, idx, torch.randn(x0.shape, generator=g))
        inputs.append((t, xt, idx.float(), schedule.active_blocks(t / 1000, K)))
    ref_model = copy.deepcopy(loaded.model).eval().float()
    refs = [ref_model(xt, tt, y, active_blocks=k) for _, xt, tt, k in inputs]
    out = {}
    for name, gemms, correct in variants:
        m = copy.deepcopy(loaded.model).eval().bfloat16()
        apply_kernels(m, "fp8", row_kernels="inductor", fp8_gemms=gemms, **smooth_args(correct, amax))
        per_t = {}
        for (t, xt, tt, k), ref in zip(inputs, refs):
            o = m(xt.bfloat16(), tt, y, active_blocks=k).float()
            per_t[t] = round(((o - ref).norm() / ref.norm()).item(), 5)
        out[name] = {"mean": sum(per_t.values()) / len(per_t), "per_t": per_t}
    return out


if __name__ == "__main__":
    main()
