#!/usr/bin/env python3
"""The fp8 DiT block's MLP three ways, at DiT-XL/2's B=64 shapes (16384 tokens, width 1152, hidden 4608), on
the GPU: median time (CUDA events after warm-up, inputs rotated over three sets so that L2 does not hold
them), achieved TFLOP/s and the relative error against the fp32 MLP, every row in the same run.

- ``bf16``: fc1 with bias + tanh-GELU in cuBLASLt's epilogue, fc2 (the ``fused`` block's MLP);
- ``fp8 rows``: fc1 as a row-scaled ``torch._scaled_mm``, the GELU + row quantisation kernel, fc2 row-scaled
  (the ``fp8`` block's MLP today), with and without fast accumulation;
- ``fp8 epilogue``: ``triton_gemm``'s fc1 with GELU + group quantisation in its epilogue and its group-scaled
  fc2 with the gated residual in its epilogue, for each ``--launch`` (``triton_gemm.GemmLaunch``).

Every MLP row includes the block's last gated residual (res + gate * MLP(x); the others in one addcmul pass),
since the fused fc2 does it in its epilogue. The error is that of MLP(x) (zero residual, unit gates).

Each fp8 variant's two GEMMs are also timed alone (``fc1``, ``fc2`` rows), which shows whether the Triton
GEMMs keep up with cuBLAS's: the fused path saves the quantise pass only if they do.

    python benchmarks/fp8_mlp.py --out results/fp8_mlp_h200.json
    python benchmarks/fp8_mlp.py --tiny --out /tmp/fp8_mlp.json     # CPU smoke run (the torch references)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import torch
import torch.nn.functional as F

from eediff import triton_gemm as tg
from eediff.eval.timing import time_fn
from eediff.kernels import _fp8_gemm, _gelu_linear, quantize_weight
from eediff.triton_ops import act_quant, act_quant_ref

# block_m,block_n,block_k,group_m,warps,stages[,tma]: pointer loads, then the same tiles through TMA descriptors
LAUNCHES = ("128,128,128,8,8,4;128,128,128,8,8,3;128,64,128,8,4,4;64,128,128,8,4,4;128,256,128,8,8,3;"
            "128,128,128,8,8,4,1;128,128,128,8,8,3,1;128,256,128,8,8,3,1;64,128,128,8,4,4,1")


def parse_launches(spec: str) -> list[tg.GemmLaunch]:
    """'bm,bn,bk,group_m,warps,stages[,tma];...' -> GemmLaunch list (one line error on a bad entry)."""
    out = []
    for part in filter(None, spec.split(";")):
        try:
            v = [int(x) for x in part.split(",")]
            if len(v) not in (6, 7) or min(v[:6]) < 1 or v[6:] not in ([], [0], [1]):
                raise ValueError
            out.append(tg.GemmLaunch(*v[:6], tma=bool(v[6:] and v[6])))
        except ValueError:
            raise SystemExit(f"--launch: '{part}' is not six integers block_m,block_n,block_k,group_m,warps,stages "
                             "and an optional 0 / 1 (TMA loads)")
    return out


def make_sets(M, D, H, device, n=3, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    w1 = torch.randn(H, D, device=device, generator=g) / D**0.5
    w2 = torch.randn(D, H, device=device, generator=g) / H**0.5
    b1, b2 = torch.randn(H, device=device, generator=g) * 0.1, torch.randn(D, device=device, generator=g) * 0.1
    fc1, fc2 = (*quantize_weight(w1), b1.bfloat16()), (*quantize_weight(w2), b2.bfloat16())
    sets = []
    B = max(1, M // 256)  # images of 256 tokens (DiT-XL/2 at 256 px)
    for _ in range(n):
        x = torch.randn(M, D, device=device, generator=g)
        res = torch.randn(M, D, device=device, generator=g).bfloat16()  # the residual stream h
        gate = torch.randn(B, D, device=device, generator=g).bfloat16()  # the block's gate, per image
        sets.append((x.bfloat16(), *act_quant_ref(x, False), res, gate))
    return (w1, b1, w2, b2), fc1, fc2, sets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--dim", type=int, default=1152)
    ap.add_argument("--hidden", type=int, default=4608)
    ap.add_argument("--launch", default=LAUNCHES, help="';'-separated block_m,block_n,block_k,group_m,warps,stages[,tma 0/1]")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--tiny", action="store_true", help="a CPU smoke run: 256 tokens, width 64, hidden 256")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.tiny:
        a.tokens, a.dim, a.hidden, a.repeats = 256, 64, 256, 3
    M, D, H = a.tokens, a.dim, a.hidden
    if not tg.supports(D, H):
        raise SystemExit(f"--dim {D} / --hidden {H}: the fused kernels need the hidden width in groups of {tg.GROUP} and the width a multiple of 32")
    launches = parse_launches(a.launch)
    (w1, b1, w2, b2), fc1, fc2, sets = make_sets(M, D, H, device)
    B = sets[0][4].shape[0]
    T = M // B
    x0 = sets[0][0].float()
    # the error is measured on the MLP's output: one call with a zero residual and unit gates (out = MLP(x))
    zero, ones = torch.zeros_like(sets[0][3]), torch.ones_like(sets[0][4])
    ref = F.linear(F.gelu(F.linear(x0, w1, b1), approximate="tanh"), w2, b2)
    flops = 2 * M * D * H * 2
    lin1 = torch.nn.Linear(D, H, device=device, dtype=torch.bfloat16)  # the bf16 MLP's fc1 (its GELU epilogue takes a Linear)
    lin1.weight.data, lin1.bias.data = w1.bfloat16(), b1.bfloat16()
    w2b, b2b = w2.bfloat16(), b2.bfloat16()
    rows, k = [], [0]

    def nxt():
        k[0] = (k[0] + 1) % len(sets)
        return sets[k[0]]

    def rec(variant, part, fn, out=None, launch=None):
        t = time_fn(fn, device, warmup=3, repeats=a.repeats)["median_s"]
        err = None if out is None else ((out.float() - ref).norm() / ref.norm()).item()
        row = {"variant": variant, "part": part, "ms": 1e3 * t, "tflops": (flops if part == "MLP" else flops / 2) / t / 1e12, "rel_err_vs_fp32": err}
        if launch is not None:  # as --launch takes it
            row["launch"] = ",".join(str(int(v)) for v in dataclasses.astuple(launch))
        rows.append(row)
        print(json.dumps(row), flush=True)

    def gated(res, gate, y):  # the block's last gated residual, one pass (addcmul): res + gate(image) * y
        return torch.addcmul(res.view(B, T, D), gate.unsqueeze(1), y.view(B, T, D)).view(M, D)

    def bf16_mlp(x, qx, sx, res, gate):
        return gated(res, gate, F.linear(_gelu_linear(x, lin1), w2b, b2b))

    x_, qx_, sx_ = sets[0][:3]
    rec("bf16 (GELU in cuBLASLt's epilogue), + gated residual", "MLP", lambda: bf16_mlp(*nxt()), bf16_mlp(x_, qx_, sx_, zero, ones))
    for fast in (False, True):
        name = "fp8 rows (_scaled_mm, GELU + row quantise kernel, _scaled_mm, gated residual)" + (", fast accumulation" if fast else "")

        def rows_mlp(x, qx, sx, res, gate, fast=fast):
            f = _fp8_gemm(qx, sx, fc1[0], fc1[1], fc1[2], fast)
            return gated(res, gate, _fp8_gemm(*act_quant(f, True), fc2[0], fc2[1], fc2[2], fast))

        rec(name, "MLP", lambda: rows_mlp(*nxt()), rows_mlp(x_, qx_, sx_, zero, ones))
        rec(name, "fc1", lambda: _fp8_gemm(*nxt()[1:3], fc1[0], fc1[1], fc1[2], fast))
        hq = act_quant(_fp8_gemm(qx_, sx_, fc1[0], fc1[1], fc1[2], fast), True)
        rec(name, "fc2", lambda: _fp8_gemm(*hq, fc2[0], fc2[1], fc2[2], fast))
    for L in launches:
        tg.LAUNCH = L
        name = (f"fp8 epilogue (Triton; tile {L.block_m}x{L.block_n}x{L.block_k}, group_m {L.group_m}, {L.warps} warps, "
                f"{L.stages} stages{', TMA' if L.tma else ''})")

        out_buf = torch.empty(M, D, device=device, dtype=torch.bfloat16)  # the block's output (its input, in place)

        def epi_mlp(x, qx, sx, res, gate):
            tg.fp8_group_scaled_mm_residual_(*tg.fp8_fc1_gelu_quant(qx, sx, *fc1), *fc2, res, gate, T, out_buf)
            return out_buf

        try:
            out = epi_mlp(x_, qx_, sx_, zero, ones).clone()
            rec(name, "MLP", lambda: epi_mlp(*nxt()), out, L)
            rec(name, "fc1", lambda: tg.fp8_fc1_gelu_quant(*nxt()[1:3], *fc1))
            hq = tg.fp8_fc1_gelu_quant(qx_, sx_, *fc1)
            rec(name, "fc2", lambda: tg.fp8_group_scaled_mm_residual_(*hq, *fc2, sets[0][3], sets[0][4], T, out_buf))
        except Exception as e:  # a launch the GPU cannot take (shared memory, registers): recorded, the sweep goes on
            rows.append({"variant": name, "part": "MLP", "error": f"{type(e).__name__}: {str(e)[:200]}"})
            print(rows[-1], flush=True)
    tg.LAUNCH = tg.GemmLaunch()
    dev = torch.cuda.get_device_name() if device == "cuda" else "CPU (torch references, not the kernels)"
    res = {"device": dev, "torch": torch.__version__, "tokens": M, "dim": D, "hidden": H, "mlp_gflop": flops / 1e9,
           "command": "python benchmarks/fp8_mlp.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    base = next(r["ms"] for r in rows if r["part"] == "MLP" and r["variant"].startswith("fp8 rows") and "fast" in r["variant"])
    md = [f"# fp8 MLP, {dev} (torch {torch.__version__}): {M} tokens, {D} -> {H} -> {D}", "",
          f"Command: `{res['command']}`. Median of {a.repeats} timings after warm-up (CUDA events on a GPU); inputs rotated over three sets.", "",
          "| variant | part | ms | × fp8 rows (fast acc.) MLP | TFLOP/s | rel. err vs fp32 |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['variant']} | {r['part']} | failed: {r['error']} | | | |")
            continue
        ratio = f"{base / r['ms']:.2f}" if r["part"] == "MLP" else ""
        err = "" if r["rel_err_vs_fp32"] is None else f"{r['rel_err_vs_fp32']:.1e}"
        md.append(f"| {r['variant']} | {r['part']} | {r['ms']:.3f} | {ratio} | {r['tflops']:.0f} | {err} |")
    best = min((r for r in rows if "launch" in r), key=lambda r: r["ms"], default=None)
    if best is not None:
        res["fastest_launch"] = best["launch"]
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        md += ["", f"Fastest epilogue launch: `--launch {best['launch']}` ({best['ms']:.3f} ms, {base / best['ms']:.2f}× the row path)."]
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
