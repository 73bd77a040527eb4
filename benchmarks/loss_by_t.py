#!/usr/bin/env python3
"""Where in t does a schedule (and its fine-tune) lose accuracy? ε-prediction error against the noise level.

For each (model, schedule) entry, the same test images, the same noise and the same times: the mean squared
error of the predicted ε at t in ``--bins`` equal bins of [0, 1] (bin centres; for DiT the nearest training
index), with the depth the schedule gives at that t. Zero-shot and fine-tuned models at the same schedule, and
the fine-tuned weights at full depth, side by side, show whether a fine-tune lost accuracy where it was cut
(t → 1, shallow) or where it still runs every block (t → 0). CPU is enough: a few thousand forward passes.

    python benchmarks/loss_by_t.py --arch U-ViT --n 256 --out results/loss_by_t_uvit.json
    python benchmarks/loss_by_t.py --arch DiT   --n 256 --out results/loss_by_t_dit.json

Writes the JSON (per entry: t, depth, ε-MSE per bin) and a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

import torch

from eediff.data import load_dataset
from eediff.exits.schedule import get_schedule
from eediff.io import atomic_write, write_atomic
from eediff.train.losses import DiffusionObjective
from eediff.zoo import resolve_model

ENTRIES = {
    # label: (shipped model, schedule)
    "DiT": [("dit-fmnist, full depth", "dit-fmnist", "full"),
            ("dit-fmnist, D4-DiT zero-shot", "dit-fmnist", "D4-DiT"),
            ("dit-fmnist-D4, D4-DiT (fine-tuned)", "dit-fmnist-D4", "D4-DiT"),
            ("dit-fmnist-D4 at full depth", "dit-fmnist-D4", "full")],
    "U-ViT": [("uvit-fmnist, full depth", "uvit-fmnist", "full"),
              ("uvit-fmnist, D4-U-ViT zero-shot", "uvit-fmnist", "D4-U-ViT"),
              ("uvit-fmnist-D4, D4-U-ViT (fine-tuned)", "uvit-fmnist-D4", "D4-U-ViT"),
              ("uvit-fmnist-D4 at full depth", "uvit-fmnist-D4", "full")],
}


@torch.no_grad()
def eps_mse_by_t(model, process, schedule, x0, y, noise, t_units, batch: int) -> list[dict]:
    """ε-MSE (mean over images and pixels) at each unit time, the network run at the schedule's depth."""
    obj = DiffusionObjective(process, model.learn_sigma, model.in_channels, "cpu")
    K = model.num_exit_blocks
    sched = get_schedule(schedule).check(K)
    out = []
    for tu in t_units:
        if obj.discrete:
            idx = min(int(round(tu * obj.T)), obj.T - 1)
            t = torch.full((x0.shape[0],), idx, dtype=torch.long)
            t_unit = idx / obj.T
        else:
            t_unit = max(tu, process.eps)
            t = torch.full((x0.shape[0],), t_unit, dtype=torch.float64)
        k = int(sched.active_blocks(t_unit, K))
        se = []
        for lo in range(0, x0.shape[0], batch):
            sl = slice(lo, lo + batch)
            x_t = obj.perturb(x0[sl], t[sl], noise[sl])
            pred = model(x_t, obj.model_time(t[sl]), None if y is None else y[sl], active_blocks=k)[:, : model.in_channels]
            se.append(((pred - noise[sl]) ** 2).flatten(1).mean(1))
        out.append({"t": t_unit, "depth": k, "eps_mse": float(torch.cat(se).mean())})
    return out


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    base = result["entries"][0]
    for e in result["entries"]:
        ts = [r["t"] for r in e["bins"]]
        a.plot(ts, [r["eps_mse"] for r in e["bins"]], marker=".", label=e["label"])
        b.plot(ts, [r["eps_mse"] / q["eps_mse"] for r, q in zip(e["bins"], base["bins"])], marker=".", label=e["label"])
    a.set_yscale("log")
    a.set_xlabel("t (0 = data, 1 = noise)")
    a.set_ylabel("ε-prediction MSE (log scale)")
    b.set_yscale("log")
    b.axhline(1.0, color="gray", lw=0.8)
    b.set_xlabel("t (0 = data, 1 = noise)")
    b.set_ylabel(f"ratio to '{base['label']}' (log scale)")
    for ax in (a, b):
        ax.grid(alpha=0.3, which="both")
    b.legend(fontsize=7)
    fig.suptitle(f"{result['arch']}: ε error by noise level, {result['n']} Fashion-MNIST test images, same noise "
                 f"(python {os.path.basename(sys.argv[0])})", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(ENTRIES), required=True)
    p.add_argument("--n", type=int, default=256, help="test images (the first n of a fixed permutation)")
    p.add_argument("--bins", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True, help="JSON path; the PNG goes next to it")
    p.add_argument("--only-base", action="store_true", help="of the shipped rows, only the base at full depth (the first)")
    p.add_argument("--entry", action="append", default=[], metavar="LABEL;MODEL;SCHEDULE",
                   help="one more (model, schedule) after the shipped ones: a checkpoint path or zoo name (repeatable)")
    args = p.parse_args(argv)
    extra = []
    for e in args.entry:
        parts = e.split(";")
        if len(parts) != 3 or not all(x.strip() for x in parts):
            p.error(f"--entry '{e}': give LABEL;MODEL;SCHEDULE, e.g. 'plain D4;runs/d4/final.safetensors;D4-U-ViT'")
        extra.append(tuple(x.strip() for x in parts))
    data = load_dataset("fashion-mnist", "test", args.data_dir)
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(data), generator=g)[: args.n]
    x0, y = data.batch(idx)
    noise = torch.randn(x0.shape, generator=g)
    t_units = [(i + 0.5) / args.bins for i in range(args.bins)]
    entries = []
    start = time.time()
    for label, name, sched in ENTRIES[args.arch][: 1 if args.only_base else None] + extra:
        loaded = resolve_model(name)
        model = loaded.model.float().eval()
        bins = eps_mse_by_t(model, loaded.process, sched, x0, y, noise, t_units, args.batch)
        entries.append({"label": label, "model": name, "schedule": sched, "bins": bins})
        print(f"{label:45s} " + " ".join(f"{r['eps_mse']:.4f}" for r in bins), flush=True)
    result = {"arch": args.arch, "n": args.n, "bins": args.bins, "seed": args.seed, "entries": entries,
              "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
              "seconds": round(time.time() - start, 1), "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/loss_by_t.py " + shlex.join(sys.argv[1:] if argv is None else argv)}
    write_atomic(args.out, json.dumps(result, indent=1))
    plot(result, os.path.splitext(args.out)[0] + ".png")
    print(f"wrote {args.out} and {os.path.splitext(args.out)[0]}.png ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
