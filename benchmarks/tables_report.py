#!/usr/bin/env python3
"""Paper-style tables from the JSONL files of ``benchmarks/gpu_tables.py``.

Writes into ``--out-dir`` (default ``results/``):
- ``gpu_tables.json``: every cell, timing, unfinished skip, the aggregated table rows, the commands and devices;
- ``gpu_tables.md``: one table per architecture (rows: full, then per schedule the zero-shot and the fine-tuned
  row, then the fair baseline; per sampler "FID mean ± std (k seeds)" and the measured Accel.; the analytic
  FLOP reduction per schedule), then the goal check and the commands;
- ``fid_vs_accel.png``: FID against measured Accel., one marker per table cell.

    python benchmarks/tables_report.py out/dit.jsonl out/uvit.jsonl --out-dir results
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys

DASH = "—"
KIND_ORDER = {"full": 0, "zero-shot": 1, "fine-tuned": 2, "fair": 3}


def read_records(paths: list[str]) -> list[dict]:
    out = []
    for p in paths:
        with open(p) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill
                    pass
    return out


def _sched_key(name: str):
    m = re.match(r"D(\d+)", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def collect(records: list[dict]) -> dict:
    cells = {}
    for r in records:
        if r.get("type") == "cell":
            cells[r["key"]] = r  # the last copy of a cell wins
    timings = {}
    for r in records:
        if r.get("type") == "timing":
            timings[(r["arch"], r["sampler"])] = r
    skips = {r["key"]: r for r in records if r.get("type") == "skip" and r["key"] not in cells}
    headers = [r for r in records if r.get("type") == "header"]
    return {"cells": list(cells.values()), "timings": list(timings.values()), "timing_by": timings,
            "skips": list(skips.values()), "headers": headers}


def aggregate(data: dict) -> list[dict]:
    """One entry per (arch, row, sampler): FID over seeds, Accel. from the sampler's timing line."""
    groups: dict[tuple, list[dict]] = {}
    for c in data["cells"]:
        groups.setdefault((c["arch"], c["row"], c["kind"], c["schedule"], c["sampler"]), []).append(c)
    rows = []
    for (arch, row, kind, sched, sampler), cs in groups.items():
        cs = sorted(cs, key=lambda c: c["seed"])
        fids = [c["fid"] for c in cs]
        t = data["timing_by"].get((arch, sampler))
        ts = None if t is None else t["schedules"].get(sched)
        rows.append({
            "arch": arch, "row": row, "kind": kind, "schedule": sched, "sampler": sampler, "steps": cs[0]["steps"],
            "model": cs[0]["model"], "seeds": [c["seed"] for c in cs], "n": cs[0]["n"], "fid": fids,
            "fid_mean": statistics.fmean(fids), "fid_std": statistics.stdev(fids) if len(fids) > 1 else 0.0,
            "flop_reduction_pct": cs[0]["flop_reduction_pct"], "mean_blocks": cs[0]["mean_blocks"],
            "accel_pct": None if ts is None else ts["accel_pct"],
            "timing_flop_reduction_pct": None if ts is None else ts["flop_reduction_pct"],
            "images_per_s": None if ts is None else ts["images_per_s"],
            "achieved_tflops": None if ts is None else ts["achieved_tflops"],
            "metric": cs[0]["metric"], "metric_name": cs[0].get("metric_name", cs[0]["metric"]), "device": cs[0]["device"],
        })
    return rows


def _fmt_fid(r) -> str:
    if r is None:
        return DASH
    k = len(r["fid"])
    return f"{r['fid_mean']:.2f} ± {r['fid_std']:.2f} ({k} seed{'s' if k > 1 else ''})"


def _fmt_accel(r) -> str:
    return DASH if r is None or r["accel_pct"] is None else f"{r['accel_pct']:.1f}%"


def _row_order(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(row label, kind, schedule): full, then per schedule (D1..D6) zero-shot and fine-tuned, then the fair baseline."""
    seen = {(r["row"], r["kind"], r["schedule"]) for r in rows}
    return sorted(seen, key=lambda x: (x[1] == "fair", x[1] != "full", _sched_key(x[2]), KIND_ORDER[x[1]], x[0]))


def _check(value, limit) -> str:
    if value is None:
        return DASH
    return f"{value:.3f} {'✅' if value <= limit else '❌'}"


def goal_checks(arch: str, rows: list[dict], timings: dict, samplers: list[str]) -> list[str]:
    cell = {(r["kind"], r["schedule"], r["sampler"]): r for r in rows}
    ft_scheds = sorted({r["schedule"] for r in rows if r["kind"] == "fine-tuned"}, key=_sched_key)
    d4 = next((s for s in ft_scheds if s.startswith("D4")), ft_scheds[0] if ft_scheds else None)
    d6 = next((s for s in ft_scheds if s.startswith("D6")), None)
    has_fair = any(r["kind"] == "fair" for r in rows)

    def ratio(sched, base_kind, sp):
        a, b = cell.get(("fine-tuned", sched, sp)), cell.get((base_kind, "full", sp))
        return None if a is None or b is None or b["fid_mean"] == 0 else a["fid_mean"] / b["fid_mean"]

    out = [f"Goal check ({arch}):", "", "| check | target | " + " | ".join(samplers) + " |", "|---|---|" + "---|" * len(samplers)]
    for base_kind, label in [("full", "full"), ("fair", "fair baseline")] if has_fair else [("full", "full")]:
        if d4:
            out.append(f"| FID({d4} fine-tuned) / FID({label}) | ≤ 1.00 | " + " | ".join(_check(ratio(d4, base_kind, sp), 1.00) for sp in samplers) + " |")
        if d6:
            out.append(f"| FID({d6} fine-tuned) / FID({label}) | ≤ 1.05 | " + " | ".join(_check(ratio(d6, base_kind, sp), 1.05) for sp in samplers) + " |")
    scheds = sorted({r["schedule"] for r in rows if r["schedule"] != "full"}, key=_sched_key)
    for s in scheds:
        vals = []
        for sp in samplers:
            t = timings.get((arch, sp))
            ts = None if t is None else t["schedules"].get(s)
            if ts is None:
                vals.append(DASH)
            else:
                d = abs(ts["accel_pct"] - ts["flop_reduction_pct"])
                vals.append(f"{d:.1f} pts {'✅' if d <= 2 else '❌'} ({ts['accel_pct']:.1f} vs {ts['flop_reduction_pct']:.1f})")
        out.append(f"| \\|Accel. − FLOP reduction\\| {s} | ≤ 2 pts | " + " | ".join(vals) + " |")
    return out


def markdown(data: dict, agg: list[dict], commands: list[str]) -> str:
    out = ["# Paper-style tables: FID and measured acceleration", ""]
    for arch in dict.fromkeys(r["arch"] for r in agg):
        rows = [r for r in agg if r["arch"] == arch]
        samplers = list(dict.fromkeys(c["sampler"] for c in data["cells"] if c["arch"] == arch))
        cell = {(r["kind"], r["schedule"], r["sampler"]): r for r in rows}
        metric = rows[0]["metric_name"]
        metric_short = "FID" if rows[0]["metric"] == "fid" else metric
        devices = sorted({r["device"] for r in rows})
        ns = sorted({r["n"] for r in rows})
        out += [f"## {arch}", "", f"{metric if metric == metric_short else metric + ' (' + metric_short + ')'} of {', '.join(map(str, ns))} images per cell against "
                f"{data['cells'][0].get('reference', '?')}; Accel. = 1 − t(schedule)/t(full), measured on {', '.join(devices)} "
                f"(one batch, median of repeats; the same for every model of a schedule). FLOP reduction: analytic, per sampler "
                f"(the timesteps a sampler visits decide it).", ""]
        out.append("| row | FLOP red. | " + " | ".join(f"{sp} {metric_short} | {sp} Accel." for sp in samplers) + " |")
        out.append("|---|---|" + "---|---|" * len(samplers))
        for label, kind, sched in _row_order(rows):
            flops = sorted({round(cell[(kind, sched, sp)]["flop_reduction_pct"], 1) for sp in samplers if (kind, sched, sp) in cell})
            fl = DASH if not flops else f"{flops[0]:.1f}%" if len(flops) == 1 else f"{flops[0]:.1f}–{flops[-1]:.1f}%"
            vals = []
            for sp in samplers:
                r = cell.get((kind, sched, sp))
                vals += [_fmt_fid(r), _fmt_accel(r)]
            out.append(f"| {label} | {fl} | " + " | ".join(vals) + " |")
        out += [""] + goal_checks(arch, rows, data["timing_by"], samplers) + [""]
        tim = [t for t in data["timings"] if t["arch"] == arch]
        if tim:
            out += ["Timing (one batch, median s; images/s; achieved TFLOP/s):", ""]
            for t in tim:
                out.append(f"- {t['sampler']} batch {t['batch']}, {t['repeats']} repeats: " + "; ".join(
                    f"{k} {v['median_s']:.3f}s, {v['images_per_s']:.1f} img/s, {v['achieved_tflops']:.2f} TFLOP/s" for k, v in t["schedules"].items()))
            out.append("")
        sk = [s for s in data["skips"] if s["arch"] == arch]
        if sk:
            out += ["Not run (deadline): " + "; ".join(f"{s['row']} {s['sampler']} seed {s['seed']}" for s in sk), ""]
        hdr = [h for h in data["headers"] if h.get("arch") == arch]
        out += ["Commands and devices:", ""]
        for h in hdr:
            out.append(f"- `{h['command']}` on {h['device']} ({h['date']})")
        out.append("")
    if commands:
        out += ["Commands:", ""] + [f"- `{c}`" for c in commands] + [""]
    return "\n".join(out)


def plot(agg: list[dict], path: str) -> None:
    """One FID-vs-Accel. panel per architecture; marker = table row kind; the zero-shot rows of many schedules
    (U-ViT D1..D6 land on one spot) share one label."""
    from eediff.eval.plots import save_fid_vs_accel

    names = {"full": "full", "zero-shot": "zero-shot", "fine-tuned": "fine-tuned", "fair": "fair baseline"}
    panels = []
    for arch in dict.fromkeys(r["arch"] for r in agg):
        rows = [dict(r, accel_pct=0.0 if r["accel_pct"] is None and r["schedule"] == "full" else r["accel_pct"])
                for r in agg if r["arch"] == arch]
        zs = sorted({r["schedule"] for r in rows if r["kind"] == "zero-shot" and r["accel_pct"] is not None}, key=_sched_key)
        zs_label = f"{zs[0].split('-')[0]}…{zs[-1].split('-')[0]} zero-shot" if len(zs) > 4 else None

        def group(r, zs_label=zs_label):
            if r["kind"] == "zero-shot" and zs_label:
                return zs_label
            return names[r["kind"]] if r["schedule"] == "full" or r["kind"] == "fair" else f"{r['schedule'].split('-')[0]} {names[r['kind']]}"

        panels.append(dict(rows=rows, group_of=group, marker_of=lambda r: r["kind"], title=arch,
                           markers={"full": "o", "zero-shot": "x", "fine-tuned": "^", "fair": "s"},
                           metric_label="FID" if rows[0]["metric"] == "fid" else rows[0]["metric_name"]))
    save_fid_vs_accel(panels, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("jsonl", nargs="+", help="JSONL files written by benchmarks/gpu_tables.py")
    p.add_argument("--out-dir", default="results")
    p.add_argument("--command", action="append", default=[], help="a command line to record (besides the JSONL headers)")
    args = p.parse_args(argv)
    data = collect(read_records(args.jsonl))
    if not data["cells"]:
        print("no finished cells in " + ", ".join(args.jsonl), file=sys.stderr)
        return 1
    agg = aggregate(data)
    os.makedirs(args.out_dir, exist_ok=True)
    commands = list(dict.fromkeys(args.command))
    summary = {"cells": data["cells"], "timings": data["timings"], "not_run": data["skips"], "headers": data["headers"],
               "table": agg, "commands": commands + list(dict.fromkeys(h["command"] for h in data["headers"])),
               "devices": sorted({c["device"] for c in data["cells"]}), "sources": args.jsonl}
    with open(os.path.join(args.out_dir, "gpu_tables.json"), "w") as f:
        json.dump(summary, f, indent=1)
    md = markdown(data, agg, commands)
    with open(os.path.join(args.out_dir, "gpu_tables.md"), "w") as f:
        f.write(md)
    plot(agg, os.path.join(args.out_dir, "fid_vs_accel.png"))
    print(f"wrote {args.out_dir}/gpu_tables.json, gpu_tables.md, fid_vs_accel.png ({len(data['cells'])} cells, {len(agg)} table cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
