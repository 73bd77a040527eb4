"""Which of a DiT block's token GEMMs costs the fp8 path its quality: the shipped model sampled with fp8 on
every GEMM but one (FastPathConfig.fp8_gemms), against bf16, by classifier FD. Runs on a CPU
(torch._scaled_mm's CPU kernel computes the same e4m3 products as the GPU's; the row passes are the torch ops).

    python benchmarks/fp8_ablation.py --out results/fp8_ablation_cpu.json      # about 25 minutes on 2 cores
    # bf16, fp8, and fp8 with bias correction calibrated on 64 images of their own seeds (eval --fp8-calibrate 64)
    python benchmarks/fp8_ablation.py --bias-correction 64 --out results/fp8_bias_correction_cpu.json
    python benchmarks/fp8_ablation.py --bias-correction 64 --model dit-fmnist --schedule full --out results/fp8_bias_correction_base_cpu.json
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
    a = ap.parse_args()
    feat = classifier.ClassifierFeatures(device="cpu")
    ref = fid.reference_stats("fashion-mnist", "test", "uint8-full", lambda: load_dataset("fashion-mnist", "test").data, a.cache_dir, features=feat)
    loaded = resolve_model(a.model)
    rows = []
    sampler = SamplerConfig("dpm-solver++", 25)
    variants = [("none (bf16, kernels=fused)", (), False)]
    if a.bias_correction:
        variants += [("all (kernels=fp8)", TOKEN_GEMMS, False), (f"all, bias corrected ({a.bias_correction} calibration images)", TOKEN_GEMMS, True)]
    else:
        variants += [(f"all but {g}", tuple(x for x in TOKEN_GEMMS if x != g), False) for g in TOKEN_GEMMS]
        variants += [("all (kernels=fp8)", TOKEN_GEMMS, False)]
    for name, gemms, correct in variants:
        m = copy.deepcopy(loaded.model).eval()
        means = None
        if correct:  # what `eediff eval --fp8-calibrate N` does: the bf16 model's mean GEMM inputs on seeds of their own
            means = calibrate_fp8(m, loaded.process, sampler, [get_schedule(a.schedule)], a.bias_correction, a.bias_correction, "cpu")
        m.bfloat16()
        apply_kernels(m, "fp8", row_kernels="inductor", fp8_gemms=gemms, fp8_input_means=means)
        t0 = time.time()
        res = generate(m, loaded.process, sampler, n=a.n, batch_size=250, seed=0, schedule=a.schedule,
                       device="cpu", progress=False, autocast_dtype=torch.bfloat16)
        v = fid.fid_against_stats(to_uint8(res.images), ref, feat, backend="eigh")
        rows.append({"variant": name, "fp8_gemms": list(gemms), "fd_classifier": v, "seconds": time.time() - t0})
        print(f"{name:28s} classifier FD {v:.3f}  ({time.time() - t0:.0f} s)", flush=True)
        json.dump({"model": a.model, "schedule": a.schedule, "n": a.n, "sampler": "dpm-solver++-25", "rows": rows,
                   "command": f"python benchmarks/fp8_ablation.py --out {a.out} --model {a.model} --schedule {a.schedule} -n {a.n}"
                              + (f" --bias-correction {a.bias_correction}" if a.bias_correction else "")}, open(a.out, "w"), indent=2)


if __name__ == "__main__":
    main()
