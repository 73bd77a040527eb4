#!/usr/bin/env python3
"""The fast path's Triton row kernels (eediff/triton_ops.py) over rows per program x warps, at DiT-XL/2's
B=64 shapes (16384 token rows of 1152, the MLP's 4608), on the GPU: median time (triton.testing.do_bench,
inputs rotated over three sets so that the 50 MB L2 does not hold them), achieved GB/s over the bytes each
kernel must move, and which launch is fastest against the default (``triton_ops.row_launch``); for the
quantise pass also the chunked kernel (one row per program, ``--chunks`` values at a time) and the split-row
kernel (``--split``: a row as a power-of-two piece and a padded rest, rows per program x warps). ``--math
precise,fast`` times every launch with each setting of ``triton_ops.FAST_MATH`` (a division per element and tanh
from exp, or the row's reciprocal and tanh.approx), in the same run.

    python benchmarks/row_kernels.py --out results/row_kernels_h200.json
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from eediff import triton_ops as T


def cases(M: int, D: int, F: int, device: str = "cuda"):
    """name -> (make inputs for one set, launch(inputs, rows, warps), bytes moved, padded row width)."""

    def ln(has_res, quant):
        def make(g):
            B, N = max(1, M // 256), min(M, 256)
            x = torch.randn(B, N, D, device=device, generator=g).bfloat16()
            r = torch.randn(B, N, D, device=device, generator=g).bfloat16()
            m = torch.randn(B, 6 * D, device=device, generator=g).bfloat16()
            outs = T._ln_modulate_outputs(x, r if has_res else None, quant)
            return x, r, m, outs

        def launch(inp, rows, warps):
            x, r, m, (h, y, s) = inp
            B, N, _ = x.shape
            T.launch_ln_modulate(x, r, m[:, 2 * D:], m[:, :D], m[:, D:], h, y, s, N, D, m.stride(0), 1e-6, has_res, quant, rows, warps)

        moved = M * D * 2 * (1 + has_res) + M * D * (1 if quant else 2) + (M * D * 2 if has_res else 0) + (M * 4 if quant else 0)
        return make, launch, moved, D

    def aq(K, gelu):
        def make(g):
            x = torch.randn(M, K, device=device, generator=g).bfloat16()
            return x, T._act_quant_outputs(x)

        def launch(inp, rows, warps, chunk=0):
            x, (q, s) = inp
            T.launch_act_quant(x, q, s, gelu, rows, warps, chunk)

        return make, launch, M * K * 2 + M * K + M * 4, K

    return {
        "ln_modulate (LN1: LN + modulation, bf16 out)": ln(False, False),
        "ln_modulate (LN2: gated residual + LN + modulation)": ln(True, False),
        "ln_modulate (LN2, fp8 out + row scales)": ln(True, True),
        "act_quant (attention out, K=1152)": aq(D, False),
        "act_quant (GELU + quantise, K=4608)": aq(F, True),
    }


def launch_name(r: dict) -> str:
    c = r.get("chunk")
    return f"{r['rows']}, {r['warps']}" + (", split" if c == T.SPLIT else f", chunk {c}" if c else "")


def main(argv=None):
    from triton.testing import do_bench

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,2,4,8,16")
    ap.add_argument("--warps", default="1,2,4,8,16")
    ap.add_argument("--chunks", default="256,512,1024,2048", help="act_quant only: the chunked kernel's widths (one row per program)")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--split", action=argparse.BooleanOptionalAction, default=True,
                    help="act_quant: also the split-row kernel (a row as a power-of-two piece and a padded rest)")
    ap.add_argument("--only", default="", help="time only the cases whose name contains this, e.g. act_quant")
    ap.add_argument("--math", default="fast", help="','-separated settings of triton_ops.FAST_MATH to time: precise, fast")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    M, D, F = a.tokens, 1152, 4608
    g = torch.Generator(device="cuda").manual_seed(0)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens": M, "cases": [],
           # every option as given, the output under results/ where the committed file lies
           "command": f"python benchmarks/row_kernels.py --out results/{os.path.basename(a.out)} --rows {a.rows} --warps {a.warps} "
                      f"--chunks {a.chunks} --tokens {a.tokens} --math {a.math}" + (f" --only '{a.only}'" if a.only else "") + ("" if a.split else " --no-split")}
    modes = [m.strip() for m in a.math.split(",") if m.strip()]
    if not modes or any(m not in ("precise", "fast") for m in modes):
        raise SystemExit(f"--math '{a.math}': give precise, fast or both (comma-separated)")
    for (name, (make, launch, moved, width)), mode in [(c, m) for c in cases(M, D, F).items() for m in modes]:
        if a.only not in name:
            continue
        T.FAST_MATH = mode == "fast"
        sets = [make(g) for _ in range(3)]
        block = 1 << (width - 1).bit_length()
        # the launch the op makes: act_quant's from quant_launch (rows, warps, chunk), the LayerNorm rows' from row_launch
        default = T.quant_launch(width) if name.startswith("act_quant") else (*T.row_launch(block), 0)
        grid = [(r, w) for r in [int(v) for v in a.rows.split(",")] for w in [int(v) for v in a.warps.split(",")]
                if 4 <= r * block // (32 * w) <= 128 or (r, w, 0) == default]  # 4..128 values per thread: the rest spill or idle
        grid = [(r, w, 0) for r, w in grid]
        if name.startswith("act_quant"):  # the chunked kernel: one row per program, CHUNK values at a time
            grid += [(1, w, c) for c in [int(v) for v in a.chunks.split(",")] for w in [int(v) for v in a.warps.split(",")]
                     if (c < block and 2 <= c // (32 * w) <= 32) or (1, w, c) == default]
            if a.split and T.split_blocks(width)[1]:  # the split-row kernel: rows per program x warps, as the row kernel
                held = sum(T.split_blocks(width))
                grid += [(r, w, T.SPLIT) for r in [int(v) for v in a.rows.split(",")] for w in [int(v) for v in a.warps.split(",")]
                         if 4 <= r * held // (32 * w) <= 128]
        rows_out = []
        for rows, warps, chunk in grid:
            i = [0]

            def fn():
                launch(sets[i[0] % 3], rows, warps, *([chunk] if chunk else []))
                i[0] += 1
            try:
                ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
            except Exception as e:  # a launch the compiler refuses (too many registers, ...)
                rows_out.append({"rows": rows, "warps": warps, "chunk": chunk, "error": f"{type(e).__name__}: {e}"[:200]})
                continue
            rows_out.append({"rows": rows, "warps": warps, "chunk": chunk, "us": ms * 1e3, "gb_s": moved / ms / 1e6})
        ok = [r for r in rows_out if "us" in r]
        best = min(ok, key=lambda r: r["us"])
        dflt = next(r for r in ok if (r["rows"], r["warps"], r["chunk"]) == default)
        res["cases"].append({"case": name, "math": mode, "bytes": moved, "default": dflt, "best": best, "all": rows_out})
        print(f"{name:55s} {mode:7s} default {launch_name(dflt)} {dflt['us']:7.1f} us {dflt['gb_s']:6.0f} GB/s | best {launch_name(best)} "
              f"{best['us']:7.1f} us {best['gb_s']:6.0f} GB/s", flush=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    lines = [f"Row kernels, {res['device']}, {M} token rows; median of triton.testing.do_bench, three input sets rotated.", "",
             "| kernel | math | MB moved | default (rows, warps) | µs | GB/s | best (rows, warps[, chunk]) | µs | GB/s |", "|---|---|---|---|---|---|---|---|---|"]
    for c in res["cases"]:
        d, b = c["default"], c["best"]
        lines.append(f"| {c['case']} | {c.get('math', 'precise')} | {c['bytes'] / 1e6:.0f} | {launch_name(d)} | {d['us']:.1f} | {d['gb_s']:.0f} | "
                     f"{launch_name(b)} | {b['us']:.1f} | {b['gb_s']:.0f} |")
    lines += ["", f"Command: `{res['command']}`"]
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
