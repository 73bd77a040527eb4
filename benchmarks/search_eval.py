"""Searched exit schedules (`eediff search`) against the ASE presets at the same compute, on the shipped base models.

    python benchmarks/search_eval.py generate --work /tmp/search --out /tmp/search/partial.json
    python benchmarks/search_eval.py fid --work /tmp/search --partial /tmp/search/partial.json \
        --inception inception_fp16.pt --out results/search.json

``generate`` (GPU; about a minute for both models with the defaults): per model (``--models ARCH=NAME``), the
proxy table is measured once on ``--search-n`` images (seeds 0.., the search batch), with the measured
propagation so that every weighting can be scored from it. For every weighting in ``--weightings`` and every
target (the compute saving of each preset of ``--presets`` on this sampler, D4 and D6 of the model's
architecture by default, then ``--targets``) each path of ``--methods`` (exact and greedy) gives a schedule.
Then ``-n`` images (seeds 10**6 + i, disjoint from the search batch; the same seeds and labels for every
schedule) are sampled at full depth, with every preset and with every searched schedule, and saved as uint8
.npz; every row carries the proxy of its schedule under every weighting (presets included, so that the
proxy's agreement with FID can be measured), its compute saving as ``generate`` reports it, and the preset it
is compared with.
``fid``: the FID of every set against the reference, ``fid_full`` of the row's checkpoint at full depth, the
Spearman rank correlation between proxy and FID over all rows and per model (one per weighting; a schedule
that several searches found counts once), a Markdown table next to ``--out``. CPU smoke run: ``generate -n 64 --search-n 16 --steps 5 --device cpu``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np
import torch
from two_stage import pairs, parser, write

EVAL_SEED = 10**6  # image i of every evaluated set; the search batch uses seeds 0 .. search_n - 1


def preset_names(spec: str, arch: str) -> list[str]:
    """'auto' -> the D4 and D6 presets of ``arch``; else ';'-separated schedule specs."""
    if spec == "auto":
        return [f"D4-{arch}", f"D6-{arch}"]
    return [s.strip() for s in spec.split(";") if s.strip()]


def generate_stage(a) -> dict:
    from eediff.config import autocast_dtype, resolve_device
    from eediff.diffusion.sampling import SamplerConfig
    from eediff.exits import search as S
    from eediff.exits.schedule import get_schedule
    from eediff.generate import generate, to_uint8
    from eediff.zoo import resolve_model

    device = resolve_device(a.device)
    amp = autocast_dtype("auto", device)
    sampler = SamplerConfig(a.sampler, a.steps)
    weightings = [w.strip() for w in a.weightings.split(",") if w.strip()]
    targets = [float(v) for v in a.targets.split(",") if v.strip()]
    os.makedirs(a.work, exist_ok=True)
    out = {"command": "python " + " ".join(sys.argv), "sampler": f"{a.sampler}-{a.steps}", "n": a.n, "search_n": a.search_n,
           "eval_seed": EVAL_SEED, "intervals": a.intervals, "weightings": weightings, "default_weighting": S.DEFAULT_WEIGHTING,
           "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu", "rows": [], "tables": {}}
    methods = [v.strip() for v in a.methods.split(",") if v.strip()]
    bad = [v for v in methods if v not in S.SEARCH_PATHS]
    if bad:
        raise SystemExit(f"--methods: unknown {', '.join(bad)}: use {' and/or '.join(S.SEARCH_PATHS)}")
    start = time.perf_counter()
    for arch, name in pairs(a.models).items():
        loaded = resolve_model(name)
        m, proc = loaded.model.to(device).eval(), loaded.process
        K = m.num_exit_blocks
        t0 = time.perf_counter()
        table = S.measure_proxy(m, proc, sampler, n=a.search_n, batch_size=a.search_n, seed=0, weighting="propagated",
                                device=device, progress=False)
        print(f"{arch}: proxy table ({len(table.t_unit)} steps x {K} depths, {a.search_n} images) in {time.perf_counter() - t0:.1f} s", flush=True)
        out["tables"][arch] = table.to_dict()
        boundaries = S.equal_boundaries(a.intervals)
        presets = [get_schedule(p).check(K) for p in preset_names(a.presets, m.arch)]
        # (schedule, kind, weighting, target, compared_with, method)
        todo = [(get_schedule("full"), "full", None, None, None, None)] + [(p, "preset", None, None, None, None) for p in presets]
        aims = [(table.compute_saving(p), p.name) for p in presets] + [(t, None) for t in targets]
        for method in methods:
            for w in weightings:
                for target, preset in aims:
                    path = S.SEARCH_PATHS[method](table, boundaries, stop_saving=target, weighting=w)
                    label = f"{method}({w})@{preset or f'{target:.2f}'}"
                    todo.append((path[-1].schedule(boundaries, label), "searched", w, target, preset, method))
        made: dict = {}  # blocks -> (images path, compute saving): a schedule found twice is sampled once
        for j, (sched, kind, w, target, preset, method) in enumerate(todo):
            key = (sched.boundaries, sched.blocks)
            if key not in made:
                res = generate(m, proc, sampler, n=a.n, batch_size=a.batch_size, seed=EVAL_SEED, schedule=sched, device=device,
                               autocast_dtype=amp, progress=False)
                path = os.path.join(a.work, f"{arch}-{j}.npz")
                np.savez(path, arr_0=to_uint8(res.images))
                made[key] = (path, 1 - res.compute_fraction)
            path, saving = made[key]
            proxies = {v: table.proxy(sched, v) for v in S.WEIGHTINGS}
            row = {"model": arch, "checkpoint": name, "schedule": sched.name, "kind": kind, "weighting": w, "target_saving": target,
                   "method": method,
                   "blocks": None if sched.blocks is None else list(sched.blocks), "boundaries": list(sched.boundaries),
                   "compute_saving": saving, "proxy": proxies[S.DEFAULT_WEIGHTING], "proxies": proxies, "compared_with": preset,
                   "images": path, "sampler": out["sampler"]}
            out["rows"].append(row)
            print(f"  {sched.name:28s} {'all' if sched.blocks is None else ','.join(map(str, sched.blocks)):32s} saving "
                  f"{100 * saving:5.1f}%  proxy " + " ".join(f"{v} {p:.4g}" for v, p in proxies.items()), flush=True)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def ranks(xs: list[float]) -> list[float]:
    """Ranks 1..n, ties given their mean rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for q in order[i:j + 1]:
            r[q] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Pearson correlation of the ranks (None for fewer than 3 pairs or a constant side)."""
    pairs_ = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if len(pairs_) < 3:
        return None
    rx, ry = ranks([p[0] for p in pairs_]), ranks([p[1] for p in pairs_])
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((u - mx) * (v - my) for u, v in zip(rx, ry))
    sxx, syy = sum((u - mx) ** 2 for u in rx), sum((v - my) ** 2 for v in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def distinct(rows: list[dict]) -> list[dict]:
    """One row per (model, schedule): a schedule found by several searches is one point, not several."""
    seen: dict = {}
    for r in rows:
        seen.setdefault((r["model"], tuple(r["boundaries"]), None if r["blocks"] is None else tuple(r["blocks"])), r)
    return list(seen.values())


def spearman_table(rows: list[dict]) -> dict:
    """{weighting: {"all": rho, model: rho, ...}} over the distinct schedules (full depth and presets included)."""
    rows = distinct(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    out = {}
    for w in rows[0]["proxies"] if rows else []:
        rho = {"all": spearman([r["proxies"][w] for r in rows], [r["fid"] for r in rows])}
        for mdl in models:
            mine = [r for r in rows if r["model"] == mdl]
            rho[mdl] = spearman([r["proxies"][w] for r in mine], [r["fid"] for r in mine])
        out[w] = rho
    return out


def fid_stage(a) -> dict:
    from eediff.config import FidConfig
    from eediff.eval.evaluate import run_fid

    with open(a.partial) as f:
        part = json.load(f)
    done: dict = {}
    for r in part["rows"]:
        images = os.path.join(a.work, os.path.basename(r["images"]))
        if images not in done:
            done[images] = run_fid(FidConfig(images=images, reference=a.reference, metric=a.metric, inception=a.inception,
                                             cache_dir=a.cache_dir, device=a.device))
        r["fid"] = done[images]
        print(f"  {r['model']} {r['schedule']}: {a.metric} {r['fid']:.2f}", flush=True)
    full = {r["model"]: r["fid"] for r in part["rows"] if r["kind"] == "full"}
    for r in part["rows"]:
        r["fid_full"] = full.get(r["model"])
        r["fid_ratio"] = r["fid"] / r["fid_full"] if r["fid_full"] else None
    part["spearman"] = spearman_table(part["rows"])
    part["commands"] = [part.pop("command"), "python " + " ".join(sys.argv)]
    part["metric"] = a.metric
    return part


def markdown(res: dict) -> str:
    metric = "FID" if res.get("metric", "fid") == "fid" else res["metric"]
    ws = list(res["rows"][0]["proxies"]) if res["rows"] else []
    out = [f"Searched exit schedules vs the presets, {res['sampler']}, {res['n']} images per row (seeds from {res['eval_seed']}), "
           f"search batch {res['search_n']} images, {res['intervals']} intervals; {metric} on {res['device']}.", "",
           "| model | schedule | blocks (t: 0 → 1) | compared with | compute saving | " + " | ".join(f"proxy ({w})" for w in ws)
           + f" | {metric} | {metric} / full |", "|---|---|---|---|---|" + "---|" * len(ws) + "---|---|"]
    for r in res["rows"]:
        fid = r.get("fid")
        ratio = r.get("fid_ratio")
        out.append(f"| {r['model']} | {r['schedule']} | {'all' if r['blocks'] is None else ','.join(map(str, r['blocks']))} | "
                   f"{r['compared_with'] or '—'} | {100 * r['compute_saving']:.1f}% | "
                   + " | ".join(f"{r['proxies'][w]:.4g}" for w in ws)
                   + f" | {'—' if fid is None else f'{fid:.2f}'} | {'—' if ratio is None else f'{ratio:.3f}'} |")
    if res.get("spearman"):
        out += ["", f"Spearman rank correlation of proxy and {metric} over the distinct schedules (full depth and presets included):", ""]
        for w, rho in res["spearman"].items():
            out.append(f"- {w}: " + ", ".join(f"{k} {'—' if v is None else f'{v:.3f}'}" for k, v in rho.items()))
    out += ["", "Commands: " + "; ".join(f"`{c}`" for c in res.get("commands", [res.get("command", "")])), ""]
    return "\n".join(out)


if __name__ == "__main__":
    ap = parser()
    ap.add_argument("--models", default="DiT=dit-fmnist,U-ViT=uvit-fmnist", help="ARCH=MODEL pairs; a fine-tune such as DiT-D4=dit-fmnist-D4 may be added")
    ap.add_argument("--presets", default="auto", help="auto (D4 and D6 of the model's architecture) or ';'-separated schedules")
    ap.add_argument("--targets", default="0.4", help="more compute savings to search for, comma-separated")
    ap.add_argument("--weightings", default="step,propagated,uniform", help="proxy weightings to search with")
    ap.add_argument("--methods", default="exact,greedy", help="search paths (eediff search --method): exact and/or greedy")
    ap.add_argument("--search-n", type=int, default=256, help="images of the search batch")
    ap.add_argument("--intervals", type=int, default=10)
    a = ap.parse_args()
    res = generate_stage(a) if a.stage == "generate" else fid_stage(a)
    if a.stage == "fid" and os.path.exists(a.out):  # rows that benchmarks/finetune_report.py --into keeps there
        with open(a.out) as f:
            res["finetuned"] = json.load(f).get("finetuned", {})
    write(a.out, res)
    if a.stage == "fid":
        md = os.path.splitext(a.out)[0] + ".md"
        with open(md, "w") as f:
            f.write(markdown(res))
        print(f"wrote {md}")
