#!/usr/bin/env python3
"""Which band of t does a truncated fine-tune's distance come from? Sample with the fine-tune at its schedule, but
with the base model at full depth inside one band of t; the distance that swap takes away is that band's share.

    python benchmarks/band_swap.py --base dit-fmnist --finetuned dit-fmnist-D4 --schedule D4-DiT \\
        --bands "0.8-1;0.6-0.8;0.4-0.6;0.2-0.4" -n 1000 --out results/converge/v3/band_swap_dit.json

Every row samples the same seeds and labels with the same sampler, so the rows differ only in the network that
runs inside the band. Rows: the base at full depth, the fine-tune at its schedule, and one row per band with the
base swapped in there (each also gives its compute: the band's steps cost the full depth). The distance is the
classifier Fréchet distance against the test split (`--metric fd-classifier` of `eediff eval`); n below the
5,000 of the GPU tables gives larger absolute values (the estimator's bias), so compare rows, not files.
A model switch by time is a measurement device here, not a feature: no library samples with two networks.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import torch
from torch import nn

from eediff.config import EvalConfig
from eediff.diffusion.sampling import SamplerConfig
from eediff.eval import fid
from eediff.eval.classifier import ClassifierFeatures
from eediff.eval.evaluate import reference
from eediff.exits.schedule import get_schedule
from eediff.generate import generate, to_uint8
from eediff.io import write_atomic
from eediff.zoo import resolve_model


def in_band(u, lo: float, hi: float):
    """u in [lo, hi), the top band closed at 1 (u a float or a tensor of unit times)."""
    return (u >= lo) & ((u < hi) | (hi >= 1.0))


class BandSwap(nn.Module):
    """``finetuned`` at the depth the exit policy gives, except rows whose unit time lies in [lo, hi): those run
    ``base`` at full depth. Exposes the fine-tune's attributes, so the sampler and the policy see one model."""

    def __init__(self, base: nn.Module, finetuned: nn.Module, lo: float, hi: float, time_scale: float):
        super().__init__()
        self.base, self.finetuned, self.lo, self.hi, self.time_scale = base, finetuned, lo, hi, time_scale

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.finetuned, name)

    def forward(self, x, t, y=None, active_blocks=None, **kw):
        u = t.double() / self.time_scale
        inside = in_band(u, self.lo, self.hi)  # (B,) rows the base answers
        if not inside.any():
            return self.finetuned(x, t, y, active_blocks=active_blocks, **kw)
        if inside.all():
            return self.base(x, t, y, **kw)
        out = self.finetuned(x, t, y, active_blocks=active_blocks, **kw)
        out[inside] = self.base(x[inside], t[inside], None if y is None else y[inside], **kw)
        return out


def parse_bands(spec: str) -> list[tuple[float, float]]:
    bands = []
    for part in spec.split(";"):
        lo, _, hi = part.partition("-")
        try:
            lo_f, hi_f = float(lo), float(hi)
        except ValueError:
            raise SystemExit(f"--bands {part!r}: give LO-HI pairs of unit time, e.g. '0.8-1;0.6-0.8'") from None
        if not 0.0 <= lo_f < hi_f <= 1.0:
            raise SystemExit(f"--bands {part!r}: needs 0 <= LO < HI <= 1")
        bands.append((lo_f, hi_f))
    return bands


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the base model (zoo name or file), run at full depth")
    ap.add_argument("--finetuned", required=True, help="the truncated fine-tune (zoo name or file)")
    ap.add_argument("--schedule", required=True, help="the fine-tune's exit schedule (preset name or file)")
    ap.add_argument("--bands", default="0.8-1;0.6-0.8;0.4-0.6;0.2-0.4")
    ap.add_argument("--sampler", default="dpm-solver++")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", default="fashion-mnist:test")
    ap.add_argument("--cache-dir", default=".cache/fid")
    ap.add_argument("--out", required=True, help="JSON; the Markdown table goes next to it")
    a = ap.parse_args(argv)
    bands = parse_bands(a.bands)
    torch.manual_seed(a.seed)
    base, ft = resolve_model(a.base), resolve_model(a.finetuned)
    bm, fm = base.model.float().eval(), ft.model.float().eval()
    schedule = get_schedule(a.schedule)
    process = ft.process
    sampler = SamplerConfig(a.sampler, a.steps)
    features = ClassifierFeatures()
    ref = reference(EvalConfig(reference=a.reference, cache_dir=a.cache_dir), features)  # (eval's statistics, cached)
    rows = []

    def measure(label, model, sched, band=None):
        t0 = time.time()
        with torch.no_grad():
            res = generate(model, process, sampler, n=a.n, batch_size=a.batch_size, seed=a.seed, schedule=sched, progress=False)
        d = fid.fid_against_stats(to_uint8(res.images), ref, features, backend="eigh")
        # the band's steps ran the full depth: the compute of the row from the recorded per-step depths
        depths = [(t, mean) for t, mean, *_ in res.step_depths]
        full = fm.num_exit_blocks
        frac_blocks = sum(full if band and in_band(process.unit_time(t), *band) else m
                          for t, m in depths) / (full * len(depths)) if depths else None
        rows.append({"row": label, "band": band, "fd": d, "blocks_fraction": frac_blocks, "seconds": time.time() - t0})
        print(f"{label:48s} FD {d:8.3f}  blocks {frac_blocks if frac_blocks is None else round(frac_blocks, 3)}  "
              f"({time.time() - t0:.0f} s)", flush=True)

    measure("base, full depth", bm, None)
    measure(f"fine-tune at {schedule.name}", fm, schedule)
    for lo, hi in bands:
        measure(f"fine-tune, base at full depth for t in [{lo:g}, {hi:g}]", BandSwap(bm, fm, lo, hi, 1.0 / process.unit_time(1.0)),
                schedule, (lo, hi))
    b, f = rows[0]["fd"], rows[1]["fd"]
    for r in rows[2:]:
        r["share_of_gap"] = (f - r["fd"]) / (f - b) if f != b else None
    out = {"base": a.base, "finetuned": a.finetuned, "schedule": schedule.name, "sampler": f"{a.sampler}-{a.steps}", "n": a.n,
           "seed": a.seed, "metric": "fd-classifier", "reference": a.reference, "rows": rows,
           "command": shlex.join(["python", "benchmarks/band_swap.py", *(sys.argv[1:] if argv is None else argv)])}
    write_atomic(a.out, json.dumps(out, indent=1))
    lines = [f"# Where the distance of `{a.finetuned}` at {schedule.name} comes from ({a.sampler} {a.steps}, n = {a.n})", "",
             f"Command: `{out['command']}`", "", "| row | classifier FD | ÷ base | share of the gap removed | blocks run |",
             "|---|---|---|---|---|"]
    for r in rows:
        share = "" if r.get("share_of_gap") is None else f"{100 * r['share_of_gap']:.0f}%"
        blocks = "" if r["blocks_fraction"] is None else f"{100 * r['blocks_fraction']:.1f}%"
        lines.append(f"| {r['row']} | {r['fd']:.3f} | {r['fd'] / b:.2f} | {share} | {blocks} |")
    write_atomic(os.path.splitext(a.out)[0] + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
