#!/usr/bin/env python3
"""Fine-tunes of one converged base model, side by side (benchmarks/device/converge.sh finetune).

Reads DIR/KIND.metrics.jsonl and DIR/KIND.config.json of every fine-tune (KIND: a preset such as D4-U-ViT,
``full`` for the fair baseline, ``search-X`` for a schedule ``eediff search`` found, whose
DIR/search-X.schedule.json / .report.json came back with it), and optional extra cells measured later
(``--cells``: gpu_tables JSON lines). Writes DIR/finetunes.{json,md}: for every fine-tune its schedule, the
compute saving on DPM-Solver++ 25 (the analytic FLOPs over that sampler's steps, from a search report's
proxy table), its --eval-every distances (the training run's own, sampled with the schedule it was tuned
for), and the final distance against the base model's and against the fair baseline's.

    python benchmarks/finetune_report.py --dir results/converge/uvit-ft --model U-ViT \\
        --base-curve results/converge/converge.json --base-key uvit --cells results/converge/uvit-ft/cpu_ddim50.jsonl
"""

from __future__ import annotations

import argparse
import glob
import json
import os

from converge_report import read_rows
from search_eval import spearman

from eediff.exits.schedule import get_schedule
from eediff.exits.search import ProxyTable


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--model", required=True, help="label, e.g. U-ViT")
    ap.add_argument("--base-curve", required=True, help="converge.json of benchmarks/converge_report.py")
    ap.add_argument("--base-key", required=True, help="dit | uvit")
    ap.add_argument("--base-last", type=int, default=15, help="the base's distance: the mean of its last N measurements")
    ap.add_argument("--cells", default=None, help="gpu_tables JSON lines measured on these fine-tunes (other samplers)")
    a = ap.parse_args(argv)

    reports = sorted(glob.glob(os.path.join(a.dir, "search-*.report.json")))
    if not reports:
        raise SystemExit(f"{a.dir}: no search-*.report.json (its proxy table gives the sampler's steps for the compute savings)")
    with open(reports[0]) as f:
        table = ProxyTable.from_dict(json.load(f)["proxy_table"])
    with open(a.base_curve) as f:
        base = json.load(f)[a.base_key]
    last = base["evals"][-a.base_last:]
    base_fd = sum(e["value"] for e in last) / len(last)
    base_sd = (sum((e["value"] - base_fd) ** 2 for e in last) / (len(last) - 1)) ** 0.5

    rows = []
    for mpath in sorted(glob.glob(os.path.join(a.dir, "*.metrics.jsonl"))):
        kind = os.path.basename(mpath)[: -len(".metrics.jsonl")]
        with open(mpath.replace(".metrics.jsonl", ".config.json")) as f:
            conf = json.load(f)
        evals = [r["eval"] for r in read_rows(mpath) if "eval" in r]
        sched_file = os.path.join(a.dir, f"{kind}.schedule.json")
        sched = get_schedule(sched_file if os.path.exists(sched_file) else conf["schedule"])
        compared = None
        if kind.startswith("search-"):
            with open(os.path.join(a.dir, f"{kind}.report.json")) as f:
                compared = json.load(f).get("saving_of")
        rows.append({"model": a.model, "kind": kind, "schedule": sched.name, "blocks": list(sched.blocks or []),
                     "boundaries": list(sched.boundaries), "compute_saving": table.compute_saving(sched),
                     "proxy_zero_shot": table.proxy(sched), "steps": conf["steps"], "evals": [{"step": e["step"], "value": e["value"]} for e in evals],
                     "fid": evals[-1]["value"], "metric": evals[-1]["metric"], "n": evals[-1]["n"], "sampler": evals[-1]["sampler"],
                     "compared_with": compared})
    fair = next((r["fid"] for r in rows if r["kind"] == "full"), None)
    for r in rows:
        r["fid_full"], r["ratio_base"] = base_fd, r["fid"] / base_fd
        r["ratio_fair"] = r["fid"] / fair if fair else None
    rows.sort(key=lambda r: (r["kind"] != "full", r["compute_saving"], r["kind"]))  # the fair baseline first

    cut = [r for r in rows if r["compute_saving"] > 0]
    rho = spearman([r["proxy_zero_shot"] for r in cut], [r["fid"] for r in cut])  # does the zero-shot proxy rank the fine-tunes?
    cells = []
    if a.cells:
        cells = [c for c in read_rows(a.cells) if c.get("type") == "cell"]
    out = {"model": a.model, "spearman_zero_shot_proxy_vs_finetuned": rho, "base": {"fd_mean_last": base_fd, "fd_sd_last": base_sd, "last_n": len(last),
                                      "steps": [last[0]["step"], last[-1]["step"]]}, "fair_fd": fair, "rows": rows, "cells": cells}
    with open(os.path.join(a.dir, "finetunes.json"), "w") as f:
        json.dump(out, f, indent=1)

    r0 = rows[0]
    lines = [f"{a.model}: every fine-tune {r0['steps']} steps from the converged base; {r0['metric']} of {r0['n']} images, "
             f"{r0['sampler']}, sampled with the schedule each was tuned for. Base: mean of its last {len(last)} measurements "
             f"(steps {last[0]['step']}–{last[-1]['step']}), {base_fd:.3f} ± {base_sd:.3f} (s.d.).", "",
             "| fine-tuned for | blocks (t: 0 → 1) | compared with | compute saving | zero-shot proxy | distance at 1k / 3k / 5k steps | / base | / fair baseline |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        by = {e["step"]: e["value"] for e in r["evals"]}
        curve = " / ".join(f"{by[s]:.3f}" if s in by else "—" for s in (1000, 3000, r["steps"]))
        label = "fair baseline (full)" if r["kind"] == "full" else r["kind"]
        lines.append(f"| {label} | {','.join(map(str, r['blocks'])) or 'all'} | {r['compared_with'] or '—'} | {100 * r['compute_saving']:.1f}% | "
                     f"{r['proxy_zero_shot']:.3f} | {curve} | {r['ratio_base']:.2f} | {r['ratio_fair']:.2f} |")
    lines += ["", f"Spearman rank correlation of the zero-shot proxy (DPM-Solver++ 25, the search's table) with the distance "
              f"after fine-tuning, over the {len(cut)} truncated schedules: {'—' if rho is None else f'{rho:.2f}'}."]
    if cells:
        c0 = cells[0]
        lines += ["", f"Other cells (`gpu_tables.py`, {c0['metric']}, {c0['device']}):", "",
                  "| model | schedule | sampler | n | distance | FLOPs saved |", "|---|---|---|---|---|---|"]
        for c in cells:
            name = os.path.basename(c["model"])
            name = os.path.basename(os.path.dirname(c["model"])) if name.startswith("final") else name  # a run folder's export
            lines.append(f"| {c['kind']} ({name}) | {c['schedule']} | {c['sampler']} | {c['n']} | "
                         f"{c['fid']:.3f} | {c['flop_reduction_pct']:.1f}% |")
    with open(os.path.join(a.dir, "finetunes.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
