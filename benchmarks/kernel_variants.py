"""The fast path's DiT block kernels, one component at a time: kernels (fused / fp8) x attention (cudnn / sdpa)
x row kernels (triton / inductor), DiT-XL/2 random weights, B=64, one forward; median of CUDA-event timings
(warm-up first) and the rel. error against eager fp32, plus each variant's ten most expensive kernels from
torch.profiler (CUDA time per forward), all in one run.

    python benchmarks/kernel_variants.py --out results/kernel_variants_h200.json
    python benchmarks/kernel_variants.py --md-from results/kernel_variants_h200.json   # its Markdown table again
"""

import argparse
import copy
import itertools
import json
import os

import torch

from eediff import triton_ops
from eediff.bench import _random_diffusers_dit
from eediff.eval.timing import time_fn, top_kernels
from eediff.fast import FastPathConfig, apply_fast_path
from eediff.kernels import TOKEN_GEMMS
from eediff.models.dit import DiT, from_diffusers_state_dict


def write_md(res: dict, path: str) -> None:
    """The results as a Markdown table (× compiled diffusers when that row was timed in the same run)."""
    peer = next((r["ms"] for r in res["rows"] if r["variant"].startswith("diffusers")), None)
    lines = [f"# Fast-path block kernels, one component at a time ({res['device']}, torch {res['torch']})", "",
             f"Command: `{res['command']}` ({res['model']}, random weights, B={res['batch']}, one forward, median of 20 CUDA-event "
             "timings after warm-up; every row in the same run).", "",
             "| variant | ms / forward | × compiled diffusers | rel. err vs fp32 | top kernels (ms per forward) |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        top = "; ".join(f"{k['kernel'][:40]} {k['ms_per_forward']:.2f}" for k in r["top_kernels"][:4]) or "—"
        ratio = f"{peer / r['ms']:.2f}" if peer else "—"
        lines.append(f"| {r['variant']} | {r['ms']:.2f} | {ratio} | {r['rel_err_vs_fp32']:.1e} | {top} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="JSON results (Markdown written next to it)")
    ap.add_argument("--md-from", help="write the Markdown table of this JSON results file and stop")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--attention", default="cudnn,sdpa", help="attention backends of the fused / fp8 variants")
    ap.add_argument("--row-kernels", default="triton,inductor", help="row kernels of the fused / fp8 variants")
    ap.add_argument("--diffusers-compile", action="store_true", help="time compiled diffusers first, in the same run")
    ap.add_argument("--batched-adaln", action="store_true", help="also time fused and fp8 (cuDNN attention, Triton rows) with "
                                                                  "every block's adaLN projection in one GEMM (FastPathConfig.batched_adaln)")
    ap.add_argument("--quant-chunk", default="", help="';'-separated CHUNK:WARPS: fp8 (cuDNN attention, Triton rows) with the "
                                                      "GELU + quantise pass (rows of 4608) on the chunked kernel, e.g. '1024:4;2048:8'")
    ap.add_argument("--quant-split", default="", help="';'-separated ROWS:WARPS: fp8 (cuDNN attention, Triton rows; with "
                                                      "--fast-accum, fast accumulation too) with the GELU + quantise pass on the "
                                                      "split-row kernel (4608 = 4096 + 512, no padded lanes), e.g. '1:4;2:8'")
    ap.add_argument("--fast-accum", action="store_true", help="also time fp8 (cuDNN attention, Triton rows) with the GEMMs' fast "
                                                               "accumulation (FastPathConfig.fp8_fast_accum)")
    ap.add_argument("--fp8-subsets", default="", help="';'-separated token-GEMM subsets timed as extra fp8 variants (cuDNN "
                                                      "attention, Triton rows), e.g. 'qkv,proj;qkv,proj,fc1'")
    ap.add_argument("--mlp-epilogue", action="store_true", help="also time fp8 (cuDNN attention, Triton rows; with and, with "
                                                                 "--fast-accum, without fast accumulation) with the MLP's GELU + "
                                                                 "quantisation in fc1's epilogue (FastPathConfig.fp8_mlp='epilogue')")
    ap.add_argument("--gemm-launch", default="", help="with --mlp-epilogue: the Triton GEMMs' launch, as benchmarks/fp8_mlp.py's "
                                                       "--launch takes one (e.g. its fastest_launch); default triton_gemm.LAUNCH")
    ap.add_argument("--precise-math", action="store_true", help="also time fused and fp8 (cuDNN attention, Triton rows; fp8 with "
                                                                 "--fast-accum's setting) with triton_ops.FAST_MATH off")
    a = ap.parse_args()
    if a.gemm_launch:
        from fp8_mlp import parse_launches

        from eediff import triton_gemm

        (triton_gemm.LAUNCH,) = parse_launches(a.gemm_launch)
    if a.md_from:
        return write_md(json.load(open(a.md_from)), a.md_from.rsplit(".", 1)[0] + ".md")
    if not a.out:
        ap.error("--out is required (or --md-from)")
    dm = _random_diffusers_dit("DiT-XL/2", False)
    config, sd = from_diffusers_state_dict({k: v.cpu() for k, v in dm.state_dict().items()}, dict(dm.config))
    eager = DiT(config)
    eager.load_state_dict(sd)
    eager = eager.eval().cuda()
    B = a.batch
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(B, 4, 32, 32, device="cuda", generator=g)
    t = torch.randint(0, 1000, (B,), device="cuda", generator=g).float()
    y = torch.randint(0, 1000, (B,), device="cuda", generator=g)
    with torch.no_grad():
        ref = eager(x, t, y)
    ap_att = a.attention.split(",")
    variants = [("inductor", "cudnn", "triton")] + list(itertools.product(["fused", "fp8"], ap_att, a.row_kernels.split(",")))
    variants = [(*v, TOKEN_GEMMS, False, None, False, False) for v in variants]
    variants += [("fp8", "cudnn", "triton", tuple(sub.split(",")), False, None, False, False) for sub in a.fp8_subsets.split(";") if sub]
    variants += [(k, "cudnn", "triton", TOKEN_GEMMS, True, None, False, False) for k in ("fused", "fp8") if a.batched_adaln]
    # the GELU + quantise pass's launch for the MLP's rows, (rows, warps, chunk) as triton_ops.quant_launch gives it
    pairs = lambda specs: [tuple(int(v) for v in spec.split(":")) for spec in specs.split(";") if spec]  # noqa: E731  'A:B;C:D'
    variants += [("fp8", "cudnn", "triton", TOKEN_GEMMS, False, (1, warps, chunk), False, False) for chunk, warps in pairs(a.quant_chunk)]
    variants += [("fp8", "cudnn", "triton", TOKEN_GEMMS, False, (rows, warps, triton_ops.SPLIT), a.fast_accum, False)
                 for rows, warps in pairs(a.quant_split)]
    variants += [("fp8", "cudnn", "triton", TOKEN_GEMMS, False, None, True, False)] if a.fast_accum else []
    # the row kernels with triton_ops.FAST_MATH off (a division per element, tanh from exp), beside the default
    variants += [(k, "cudnn", "triton", TOKEN_GEMMS, False, None, a.fast_accum and k == "fp8", True)
                 for k in ("fused", "fp8") if a.precise_math]
    variants = [(*v, "rows") for v in variants]  # the fp8 MLP's mode (FastPathConfig.fp8_mlp) last
    variants += [("fp8", "cudnn", "triton", TOKEN_GEMMS, False, None, fast, False, "epilogue")
                 for fast in sorted({False, a.fast_accum}) if a.mlp_epilogue]
    rows = []
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": B, "model": "DiT-XL/2", "rows": rows,
           "command": f"python benchmarks/kernel_variants.py --out results/{os.path.basename(a.out)}"
                      + ("" if a.attention == "cudnn,sdpa" else f" --attention {a.attention}")
                      + ("" if a.row_kernels == "triton,inductor" else f" --row-kernels {a.row_kernels}") + (" --diffusers-compile" if a.diffusers_compile else "")
                      + (f" --fp8-subsets '{a.fp8_subsets}'" if a.fp8_subsets else "") + (" --batched-adaln" if a.batched_adaln else "")
                      + (f" --quant-chunk '{a.quant_chunk}'" if a.quant_chunk else "") + (f" --quant-split '{a.quant_split}'" if a.quant_split else "")
                      + (" --fast-accum" if a.fast_accum else "") + (" --precise-math" if a.precise_math else "")
                      + (" --mlp-epilogue" if a.mlp_epilogue else "") + (f" --gemm-launch {a.gemm_launch}" if a.gemm_launch else "")}
    if a.diffusers_compile:  # the strongest peer, in the same run
        c = torch.compile(copy.deepcopy(dm).cuda().to(torch.bfloat16))
        fn = lambda: c(x.bfloat16(), timestep=t.long(), class_labels=y).sample  # noqa: E731
        with torch.no_grad():
            err = ((fn().float() - ref).norm() / ref.norm()).item()
            ms = time_fn(fn, "cuda", warmup=3, repeats=20)["median_s"] * 1e3
        rows.append({"variant": "diffusers bf16 + torch.compile (default)", "ms": ms, "rel_err_vs_fp32": err, "top_kernels": []})
        print(f"{rows[-1]['variant']:50s} {ms:7.2f} ms  rel.err {err:.1e}", flush=True)
        del c
    default_quant_launch, default_fast_math = triton_ops.quant_launch, triton_ops.FAST_MATH
    for kern, attn, rk, gemms, batched, launch, fast, precise, mlp in variants:
        triton_ops.FAST_MATH = default_fast_math and not precise  # read by the row kernels at every launch (restored below)
        # another quantise launch for the MLP's rows (K > 2048), the default launch for the others: the op
        # reads its launch from triton_ops.quant_launch at every call (an experiment's override, restored below)
        triton_ops.quant_launch = default_quant_launch if launch is None else (
            lambda K, c=launch: c if K > 2048 else default_quant_launch(K))
        m = copy.deepcopy(eager)
        h = apply_fast_path(m, FastPathConfig(kernels=kern, attention=attn, row_kernels=rk, fp8_gemms=gemms, batched_adaln=batched,
                                              fp8_fast_accum=fast, fp8_mlp=mlp))
        fn = lambda m=m: m(x, t, y)  # noqa: E731
        with torch.no_grad():
            err = ((fn() - ref).norm() / ref.norm()).item()
            ms = time_fn(fn, "cuda", warmup=3, repeats=20)["median_s"] * 1e3
            top = top_kernels(fn, unit="forward")
        name = "inductor" if kern == "inductor" else f"{kern}, attention={attn}, row kernels={rk}"
        if kern == "fp8" and gemms != TOKEN_GEMMS:
            name += f", fp8 GEMMs={'+'.join(gemms)}"
        if batched:
            name += ", batched adaLN"
        if launch is not None and launch[2] == triton_ops.SPLIT:
            name += f", split-row GELU + quantise ({launch[0]} rows x {launch[1]} warps)"
        elif launch is not None:
            name += f", chunked GELU + quantise ({launch[2]} x {launch[1]} warps)"
        if fast:
            name += ", fast accumulation"
        if precise:
            name += ", precise row math"
        if mlp == "epilogue":
            name += ", MLP epilogue (GELU + group quantisation in fc1, gated residual in fc2)"
        rows.append({"variant": name, "kernels": kern, "attention": attn, "row_kernels": rk, "fp8_gemms": list(gemms), "batched_adaln": batched,
                     "quant_launch": launch, "fp8_fast_accum": fast, "precise_row_math": precise, "fp8_mlp": mlp, "ms": ms, "rel_err_vs_fp32": err, "top_kernels": top})
        print(f"{name:50s} {ms:7.2f} ms  rel.err {err:.1e}", flush=True)
        for k in top[:6]:
            print(f"      {k['ms_per_forward']:6.2f} ms  x{k['calls_per_forward']:5.0f}  {k['kernel'][:80]}", flush=True)
        h.remove()
        del m, h
        torch.cuda.empty_cache()
        json.dump(res, open(a.out, "w"), indent=2)  # after every variant: a run cut short keeps what it measured
        write_md(res, a.out.rsplit(".", 1)[0] + ".md")
    triton_ops.quant_launch, triton_ops.FAST_MATH = default_quant_launch, default_fast_math


if __name__ == "__main__":
    main()
