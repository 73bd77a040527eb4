"""Wall clock of per-sample exits (DeeDiff) against full depth, at DiT-XL/2 size and on the shipped models.

    python benchmarks/deediff_speed.py --out results/deediff_speed.json

1. DiT-XL/2 (random weights; time does not depend on them), DeeDiff heads with random weights, the fast path
   (bf16, compiled blocks). τ is calibrated on the recorded uncertainties of the timed batch for a target
   layer saving; one forward pass is timed (warm-up, median of repeats, CUDA events) at full depth on the fast
   path's CUDA graph, through the exit path with τ = 0 (every block: the cost of the machinery) and with
   the calibrated τ; on the fast path the exit path's stages are CUDA graphs too (per block and working rows). Reported: the layers saved (the blocks the rows actually ran) and the time saved.
2. The shipped DeeDiff models (`dit-fmnist-deediff`, `uvit-fmnist-deediff`, their stored τ): sampling
   (DPM-Solver++ 25) at batch 1 and 64, full depth against DeeDiff, eager bf16 and on the fast path.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def xl_part(a, log) -> list[dict]:
    import eediff
    from eediff.eval.timing import time_fn
    from eediff.exits.deediff import DeeDiffConfig, DeeDiffExit, RecordingExit, apply_deediff, calibrate_tau
    from eediff.fast import FastPathConfig, apply_fast_path

    torch.manual_seed(0)
    m = eediff.build_model(a.model, input_size=32, num_classes=1000)
    apply_deediff(m, DeeDiffConfig())
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.02)
    m = m.cuda()
    handle = apply_fast_path(m, FastPathConfig(row_bucket=a.row_bucket))
    K = m.num_exit_blocks
    rows = []
    for B in [int(b) for b in a.batch_sizes.split(",")]:
        g = torch.Generator(device="cuda").manual_seed(B)
        x = torch.randn(B, 4, 32, 32, device="cuda", generator=g)
        t = torch.rand(B, device="cuda", generator=g) * 999
        y = torch.randint(0, 1000, (B,), device="cuda", generator=g)
        with torch.no_grad():
            rec = RecordingExit(m)
            m(x, t, y, exits=rec)
            tau, _ = calibrate_tau(torch.cat([r.cpu() for r in rec.records], 1), a.target)
            pol0, pol = DeeDiffExit(m, 0.0, row_bucket=a.row_bucket), DeeDiffExit(m, tau, row_bucket=a.row_bucket)
            depth = torch.empty(B, dtype=torch.long, device="cuda")
            m(x, t, y, exits=pol, depth_out=depth)
            saved = 1 - depth.double().mean().item() / K
            flop = sum(m.flops(int(k)) for k in depth.cpu()) / (B * m.flops(K))
            t_full = time_fn(lambda: m(x, t, y), "cuda", warmup=3, repeats=a.repeats)["median_s"]
            t_zero = time_fn(lambda: m(x, t, y, exits=pol0), "cuda", warmup=3, repeats=a.repeats)["median_s"]
            t_tau = time_fn(lambda: m(x, t, y, exits=pol), "cuda", warmup=3, repeats=a.repeats)["median_s"]
        r = {"model": a.model, "batch": B, "tau": tau, "layers_saved": saved, "flop_reduction": 1 - flop,
             "full_graph_ms": t_full * 1e3, "exit_path_tau0_ms": t_zero * 1e3, "exit_path_tau_ms": t_tau * 1e3,
             "time_saved_vs_full": 1 - t_tau / t_full, "time_saved_vs_tau0": 1 - t_tau / t_zero,
             "realised_over_layer_saving": (1 - t_tau / t_full) / saved if saved > 0 else None,
             "graphs": handle.graph_count(), "stats": dict(handle.stats)}
        rows.append(r)
        log(f"{a.model} B={B}: layers saved {100 * saved:.1f}%, full {t_full * 1e3:.2f} ms (graph), exit path tau=0 {t_zero * 1e3:.2f} ms, "
            f"tau {tau:.3f} {t_tau * 1e3:.2f} ms -> time saved {100 * r['time_saved_vs_full']:.1f}% "
            f"({r['realised_over_layer_saving']:.2f} of the layer saving)")
    handle.remove()
    return rows


def shipped_part(a, log) -> list[dict]:
    from eediff.diffusion.sampling import SamplerConfig
    from eediff.eval.evaluate import measure_speed
    from eediff.exits.deediff import DeeDiffExit
    from eediff.exits.schedule import get_schedule
    from eediff.fast import FastPathConfig, apply_fast_path
    from eediff.generate import generate
    from eediff.zoo import resolve_model

    rows = []
    sampler = SamplerConfig("dpm-solver++", 25)
    for name in a.shipped.split(","):
        loaded = resolve_model(name)
        m = loaded.model.cuda()
        for mode in ("eager bf16", "fast path"):
            handle = apply_fast_path(m, FastPathConfig(row_bucket=a.row_bucket)) if mode == "fast path" else None
            amp = torch.bfloat16 if handle is None else None
            pol = DeeDiffExit(m, row_bucket=a.row_bucket)
            for B in (1, 64):
                res = generate(m, loaded.process, sampler, n=B, batch_size=B, policy=pol, device="cuda", autocast_dtype=amp, progress=False)
                sp = measure_speed(m, loaded.process, sampler, [get_schedule("full"), pol], batch=B, repeats=a.repeats_sampling,
                                   device="cuda", autocast=amp)
                t_full, t_dd = sp["median_s"]["full"], sp["median_s"][pol.name]
                r = {"model": name, "mode": mode, "batch": B, "tau": pol.tau, "layers_saved": res.layers_saved,
                     "full_s": t_full, "deediff_s": t_dd, "time_saved": 1 - t_dd / t_full,
                     "graphs": None if handle is None else handle.graph_count()}
                rows.append(r)
                log(f"{name} {mode} B={B}: layers saved {100 * res.layers_saved:.1f}%, full {t_full * 1e3:.1f} ms, "
                    f"DeeDiff {t_dd * 1e3:.1f} ms -> time saved {100 * r['time_saved']:.1f}%")
            if handle is not None:
                handle.remove()
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="DiT-XL/2")
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--target", type=float, default=0.4)
    ap.add_argument("--row-bucket", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--repeats-sampling", type=int, default=3)
    ap.add_argument("--shipped", default="dit-fmnist-deediff,uvit-fmnist-deediff")
    ap.add_argument("--skip-xl", action="store_true")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = {"command": "python " + " ".join(sys.argv), "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:6.1f}s] {s}", flush=True)  # noqa: E731
    from eediff.io import write_atomic

    def save():
        write_atomic(a.out, json.dumps(out, indent=1))

    if not a.skip_xl:
        out["xl"] = xl_part(a, log)
        save()
    out["shipped"] = shipped_part(a, log)
    save()
    print(f"wrote {a.out}")
