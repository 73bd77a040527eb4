#!/usr/bin/env python3
"""Training speed of the base models, one optimizer step at a time, for several ways of running it, in one run.

For each variant (--compile-scope blocks / model / eager, batch size) a Trainer is built exactly as
`eediff train` builds it, warmed up (compilation included), then timed over --steps optimizer steps with
device events (median of --repeats timings of one step each; host-side work included, as in training).
Reports steps/s, images/s and achieved TFLOP/s (the model's analytic forward FLOPs x 3 for forward and
backward), the share of each step the GPU was busy (its kernels' summed device time from torch.profiler
over the step's wall time: a low share means launch- or host-bound), and the ten most expensive GPU
kernels of the first variant. The results are written after every variant (a run cut short keeps them).

    python benchmarks/train_speed.py --arch DiT --model-config '{"hidden_size":64,"depth":28,"num_heads":2,"patch_size":2}' \
        --variants blocks:512,model:512,model/reduce-overhead:512,model:1024 --out results/train_speed_dit_h200.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from eediff.config import TrainConfig
from eediff.data import load_dataset
from eediff.eval.timing import profile_kernels, time_fn
from eediff.train.loop import Trainer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="DiT")
    ap.add_argument("--model-config", default='{"hidden_size":64,"depth":28,"num_heads":2,"patch_size":2}')
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--variants", default="blocks:512,model:512,eager:512,blocks:1024,model:1024",
                    help="comma-separated SCOPE[/MODE]:BATCH, SCOPE = blocks | model (--compile --compile-scope) | eager, "
                         "MODE = a --compile-mode (default: default), e.g. model/reduce-overhead:512")
    ap.add_argument("--warmup", type=int, default=20, help="steps before timing (compilation happens here)")
    ap.add_argument("--repeats", type=int, default=30, help="timed steps (median reported)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True, help="GPU busy share of every variant, top GPU kernels of the first")
    ap.add_argument("--out", required=True, help="JSON results (Markdown written next to it)")
    a = ap.parse_args(argv)
    data = load_dataset(a.dataset)
    rows = []
    res = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
           "arch": a.arch, "model_config": json.loads(a.model_config), "rows": rows, "command": "python benchmarks/train_speed.py "
           f"--arch {a.arch} --model-config '{a.model_config}' --variants {a.variants} --out {a.out}"}
    for i, spec in enumerate(a.variants.split(",")):
        scope, batch = spec.split(":")
        scope, _, mode = scope.partition("/")
        name = scope + (f"/{mode}" if mode else "")
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(arch=a.arch, model_config=a.model_config, dataset=a.dataset, batch_size=int(batch), steps=10**6,
                              lr=3e-4, compile=scope != "eager", compile_scope="model" if scope == "model" else "blocks",
                              compile_mode=mode or "default",
                              out=os.path.join(tmp, "run"), sample_every=-1, progress=False, device=a.device)
            t0 = time.perf_counter()
            try:
                tr = Trainer(cfg, "train", data=data)
                setup = time.perf_counter() - t0
                r = time_fn(tr.step, tr.device, warmup=a.warmup, repeats=a.repeats)  # device events around each step on GPU
            except Exception as e:  # a way of compiling that fails here is a result too; the other variants still run
                rows.append({"scope": name, "batch": int(batch), "error": f"{type(e).__name__}: {e}"[:300]})
                print(f"{name:>6} B={batch:>5}  failed: {rows[-1]['error']}", flush=True)
                write(res, a)
                continue
            wall = time.perf_counter() - t0 - setup
            med = r["median_s"]
            flops = 3 * tr.model.flops() * int(batch)
            row = {"scope": name, "batch": int(batch), "ms_per_step": 1e3 * med, "steps_per_s": 1 / med, "images_per_s": int(batch) / med,
                   "tflops": flops / med / 1e12, "spread_ms": 1e3 * (r["max_s"] - r["min_s"]), "setup_s": setup,
                   "warmup_and_timing_s": wall}
            if tr.device.type == "cuda":  # the host's share: one step's Python and launches, from an idle GPU
                host = []
                for _ in range(10):
                    torch.cuda.synchronize()
                    h0 = time.perf_counter()
                    tr.step()
                    host.append(time.perf_counter() - h0)
                torch.cuda.synchronize()
                row["host_ms_per_step"] = 1e3 * sorted(host)[len(host) // 2]
            if a.profile and tr.device.type == "cuda":
                prof = profile_kernels(tr.step, repeats=5, unit="step")
                row["gpu_busy_ms_per_step"] = prof["busy_ms_per_step"]
                row["gpu_busy_share"] = prof["busy_ms_per_step"] / row["ms_per_step"]
                if i == 0:
                    row["top_kernels"] = prof["kernels"][:10]
            rows.append(row)
            busy = f", GPU busy {100 * row['gpu_busy_share']:.0f}%, host {row['host_ms_per_step']:.1f} ms" if "gpu_busy_share" in row else ""
            print(f"{name:>6} B={batch:>5}  {row['ms_per_step']:8.2f} ms/step  {row['images_per_s']:9.0f} img/s  {row['tflops']:6.2f} TFLOP/s"
                  f"{busy}  (set-up {setup:.0f} s, warm-up and timing {wall:.0f} s)", flush=True)
            del tr
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        write(res, a)


def write(res: dict, a) -> None:
    rows = res["rows"]
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    lines = [f"Training speed, {a.arch} {a.model_config}, {res['device']}, torch {res['torch']}; median of {a.repeats} steps after {a.warmup}.", "",
             "| compile | batch | ms/step | steps/s | images/s | TFLOP/s | GPU busy | host ms/step |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['scope']} | {r['batch']} | failed: {r['error'][:80]} | | | | | |" if "error" in r else
              f"| {r['scope']} | {r['batch']} | {r['ms_per_step']:.2f} | {r['steps_per_s']:.1f} | {r['images_per_s']:.0f} | {r['tflops']:.2f} | "
              + (f"{100 * r['gpu_busy_share']:.0f}% | {r['host_ms_per_step']:.1f} |" if "gpu_busy_share" in r else "— | — |") for r in rows]
    if rows and "top_kernels" in rows[0]:
        lines += ["", f"Top GPU kernels, {rows[0]['scope']} B={rows[0]['batch']} (ms per step, calls per step):", "",
                  "| kernel | ms | calls |", "|---|---|---|"]
        lines += [f"| `{k['kernel']}` | {k['ms_per_step']:.2f} | {k['calls_per_step']:.0f} |" for k in rows[0]["top_kernels"]]
    lines += ["", f"Command: `{res['command']}`"]
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
