#!/usr/bin/env python3
"""Fine-tunes of one base model, side by side (benchmarks/device/converge.sh finetune).

Reads DIR/KIND.metrics.jsonl and DIR/KIND.config.json of every fine-tune (KIND: a preset such as D4-U-ViT,
``full`` for the fair baseline, ``search-X`` for a schedule ``eediff search`` found, whose
DIR/search-X.schedule.json / .report.json came back with it; ``asearch-X`` likewise, found with ``--adapted``), and
optional extra cells measured later
(``--cells``: gpu_tables JSON lines). Writes DIR/finetunes.{json,md}: for every fine-tune its schedule, the
compute saving on DPM-Solver++ 25 (the analytic FLOPs over that sampler's steps, from a search report's
proxy table), its --eval-every distances (the training run's own, sampled with the schedule it was tuned
for), and the final distance against the base model's and against the fair baseline's.

    python benchmarks/finetune_report.py --dir results/converge/uvit-ft --model U-ViT \\
        --base-curve results/converge/converge.json --base-key uvit --cells results/converge/uvit-ft/cpu_ddim50.jsonl
    python benchmarks/finetune_report.py --dir results/converge/uvit-shipped-svp --model U-ViT \\
        --base-fd results/converge/uvit-shipped-asearch/base_fd.json --base-label "the shipped base (uvit-fmnist)" \\
        --curve-steps 1000,2000,3000 --repeat results/converge/uvit-shipped-svp-seed1 --into results/search.json

DIR/finetunes.png draws every fine-tune's distance against its steps (the --repeat folders dashed); with
--cells, DIR/saving_vs_distance.png draws every cell's distance ÷ the base's (same sampler) against its FLOPs
saved, one panel per sampler: presets and searched schedules, fine-tuned and zero-shot, and the fair baseline.
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
    base_src = ap.add_mutually_exclusive_group(required=True)
    base_src.add_argument("--base-curve", help="converge.json of benchmarks/converge_report.py (with --base-key)")
    base_src.add_argument("--base-fd", help="`eediff eval` JSON of the base at full depth (the same metric, n and sampler)")
    base_src.add_argument("--base-from-cells", action="store_true",
                          help="the base's distance is the full-depth cell of --cells on the sampler of the runs' own evaluations")
    ap.add_argument("--base-key", default=None, help="dit | uvit (with --base-curve)")
    ap.add_argument("--base-last", type=int, default=15, help="the base's distance: the mean of its last N measurements")
    ap.add_argument("--base-label", default="the converged base", help="what the base is, for the table's caption")
    ap.add_argument("--curve-steps", default="1000,3000", help="the --eval-every steps shown before the final one")
    ap.add_argument("--into", default=None, metavar="JSON",
                    help="also keep the rows in this file's 'finetuned' section under DIR's path relative to the file's "
                         "folder (results/search.json: the searched schedules after fine-tuning beside the zero-shot rows, "
                         "e.g. 'converge/v2/dit-ft'); replaces an earlier entry of DIR")
    ap.add_argument("--repeat", action="append", default=[], metavar="DIR",
                    help="fine-tunes of the same kinds under another training seed: drawn dashed in the plot")
    ap.add_argument("--cells", default=None, help="gpu_tables JSON lines measured on these fine-tunes (other samplers)")
    a = ap.parse_args(argv)

    reports = sorted(glob.glob(os.path.join(a.dir, "*search-*.report.json")))
    if not reports:
        raise SystemExit(f"{a.dir}: no search-*.report.json (its proxy table gives the sampler's steps for the compute savings)")
    with open(reports[0]) as f:
        rep = json.load(f)
    table = ProxyTable.from_dict(rep["proxy_table"])
    # a search with --adapted measured its proxy on the model fine-tuned at every depth, not on the base
    proxy_kind = "adapted" if rep.get("adapted") else "zero-shot"
    if a.base_curve:
        if not a.base_key:
            raise SystemExit("--base-curve needs --base-key (dit | uvit)")
        with open(a.base_curve) as f:
            last = json.load(f)[a.base_key]["evals"][-a.base_last:]
        base_fd = sum(e["value"] for e in last) / len(last)
        base_sd = (sum((e["value"] - base_fd) ** 2 for e in last) / (len(last) - 1)) ** 0.5
        base_note = f"mean of its last {len(last)} measurements (steps {last[0]['step']}–{last[-1]['step']}), {base_fd:.3f} ± {base_sd:.3f} (s.d.)"
        base_info = {"fd_mean_last": base_fd, "fd_sd_last": base_sd, "last_n": len(last), "steps": [last[0]["step"], last[-1]["step"]]}
    elif a.base_from_cells:
        if not a.cells:
            raise SystemExit("--base-from-cells needs --cells (gpu_tables JSON lines with the base's full-depth cell)")
        base_fd, base_note, base_info = base_from_cells(read_cells(a.cells), a.cells, a.dir)
    else:
        with open(a.base_fd) as f:
            ev = json.load(f)
        full = next((r for r in ev["rows"] if r["schedule"] == "full"), None)
        if full is None:
            raise SystemExit(f"{a.base_fd}: no full-depth row (measure it with `eediff eval --schedules full`)")
        base_fd = full["fid_mean"]
        base_note = f"{ev['metric']} {base_fd:.3f} at full depth ({full['n']} images, seeds {full['seeds']}, {full['sampler']}-{full['steps']})"
        base_info = {"fd": base_fd, "n": full["n"], "seeds": full["seeds"], "command": ev.get("command")}

    rows = []
    for mpath in sorted(glob.glob(os.path.join(a.dir, "*.metrics.jsonl"))):
        kind = os.path.basename(mpath)[: -len(".metrics.jsonl")]
        with open(mpath.replace(".metrics.jsonl", ".config.json")) as f:
            conf = json.load(f)
        evals = [r["eval"] for r in read_rows(mpath) if "eval" in r]
        sched_file = os.path.join(a.dir, f"{kind}.schedule.json")
        sched = get_schedule(sched_file if os.path.exists(sched_file) else conf["schedule"])
        compared = None
        if "search-" in kind:
            with open(os.path.join(a.dir, f"{kind}.report.json")) as f:
                compared = json.load(f).get("saving_of")
        rows.append({"model": a.model, "kind": kind, "schedule": sched.name, "blocks": list(sched.blocks or []),
                     "boundaries": list(sched.boundaries), "compute_saving": table.compute_saving(sched),
                     "proxy": table.proxy(sched), "proxy_kind": proxy_kind, "steps": conf["steps"], "evals": [{"step": e["step"], "value": e["value"]} for e in evals],
                     "fid": evals[-1]["value"], "metric": evals[-1]["metric"], "n": evals[-1]["n"], "sampler": evals[-1]["sampler"],
                     "compared_with": compared})
    fair = next((r["fid"] for r in rows if r["kind"] == "full"), None)
    for r in rows:
        r["fid_full"], r["ratio_base"] = base_fd, r["fid"] / base_fd
        r["ratio_fair"] = r["fid"] / fair if fair else None
    rows.sort(key=lambda r: (r["kind"] != "full", r["compute_saving"], r["kind"]))  # the fair baseline first

    cut = [r for r in rows if r["compute_saving"] > 0]
    rho = spearman([r["proxy"] for r in cut], [r["fid"] for r in cut])  # does the proxy rank the fine-tunes?
    cells = read_cells(a.cells) if a.cells else []
    out = {"model": a.model, f"spearman_{proxy_kind.replace('-', '_')}_proxy_vs_finetuned": rho, "proxy_from": reports[0], "base": base_info, "fair_fd": fair, "rows": rows, "cells": cells}
    with open(os.path.join(a.dir, "finetunes.json"), "w") as f:
        json.dump(out, f, indent=1)

    r0 = rows[0]
    shown = [int(x) for x in a.curve_steps.split(",") if x] + [r0["steps"]]
    lines = [f"{a.model}: every fine-tune {r0['steps']} steps from {a.base_label}; {r0['metric']} of {r0['n']} images, "
             f"{r0['sampler']}, sampled with the schedule each was tuned for. Base: {base_note}.", "",
             f"| fine-tuned for | blocks (t: 0 → 1) | compared with | compute saving | {proxy_kind} proxy | distance at "
             f"{' / '.join(f'{x / 1000:g}k' for x in shown)} steps | / base | / fair baseline |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        by = {e["step"]: e["value"] for e in r["evals"]}
        curve = " / ".join(f"{by[s]:.3f}" if s in by else "—" for s in shown)
        label = "fair baseline (full)" if r["kind"] == "full" else r["kind"]
        fair_s = "—" if r["ratio_fair"] is None else f"{r['ratio_fair']:.2f}"
        lines.append(f"| {label} | {','.join(map(str, r['blocks'])) or 'all'} | {r['compared_with'] or '—'} | {100 * r['compute_saving']:.1f}% | "
                     f"{r['proxy']:.4g} | {curve} | {r['ratio_base']:.2f} | {fair_s} |")
    lines += ["", f"Spearman rank correlation of the {proxy_kind} proxy (DPM-Solver++ 25, the table of {os.path.basename(reports[0])}) with the distance "
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
        lines += by_sampler(cells)
    with open(os.path.join(a.dir, "finetunes.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(rows, a, os.path.join(a.dir, "finetunes.png"), base_fd)
    if cells:
        saving_plot(cells, a.model, os.path.join(a.dir, "saving_vs_distance.png"))
    if a.into:
        merge_into(a.into, a.dir, out)
    print("\n".join(lines))


def read_cells(path: str) -> list[dict]:
    """The measured cells of a gpu_tables JSON-lines file (not its header, timing or skip lines)."""
    return [c for c in read_rows(path) if c.get("type") == "cell"]


def base_from_cells(cells: list[dict], cells_path: str, d: str) -> tuple[float, str, dict]:
    """The base's full-depth cell (gpu_tables kind ``full``) on the sampler, metric and n of the runs' own
    --eval-every measurements, so that both sides of the ratio are the same measurement."""
    ev = next((r["eval"] for m in sorted(glob.glob(os.path.join(d, "*.metrics.jsonl"))) for r in read_rows(m) if "eval" in r), None)
    if ev is None:
        raise SystemExit(f"{d}: no --eval-every measurement in any *.metrics.jsonl")
    full = [c for c in cells if c.get("kind") == "full" and c["sampler"] == ev["sampler"] and c["n"] == ev["n"] and c["metric"] == ev["metric"]]
    if not full:
        raise SystemExit(f"{cells_path}: no full-depth cell on {ev['sampler']} with {ev['n']} images of {ev['metric']}")
    c = full[-1]
    note = f"{c['metric_name']} {c['fid']:.3f} at full depth ({c['n']} images, seed {c['seed']}, {c['sampler']}; {c['device']})"
    return c["fid"], note, {"fd": c["fid"], "n": c["n"], "seeds": [c["seed"]], "sampler": c["sampler"], "model": c["model"]}


def by_sampler(cells: list[dict]) -> list[str]:
    """Every gpu_tables row against the base at full depth and the fair baseline on the same sampler: one
    column of distances and ratios per sampler (the comparison under DDPM, DDIM and DPM-Solver)."""
    samplers = list(dict.fromkeys(c["sampler"] for c in cells))
    get = {(c["row"], c["sampler"]): c for c in cells}
    ref = {"base": row_by_sampler(cells, "full"), "fair": row_by_sampler(cells, "fair baseline (full)")}
    if not ref["base"]:
        return []
    lines = ["", "The same against the base at full depth and the fair baseline, sampler by sampler (distance, / base, / fair):", "",
             "| row | FLOPs saved (most over the samplers) | " + " | ".join(samplers) + " |", "|---|---|" + "---|" * len(samplers)]
    for row in dict.fromkeys(c["row"] for c in cells):
        cs = [get.get((row, s)) for s in samplers]
        cut = max(c["flop_reduction_pct"] for c in cs if c)
        parts = []
        for s, c in zip(samplers, cs):
            if c is None:
                parts.append("—")
                continue
            rb = c["fid"] / ref["base"][s] if s in ref["base"] else None
            rf = c["fid"] / ref["fair"][s] if s in ref["fair"] else None
            parts.append(f"{c['fid']:.3f}" + (f" / {rb:.2f}" if rb else "") + (f" / {rf:.2f}" if rf else ""))
        lines.append(f"| {row} | {cut:.1f}% | " + " | ".join(parts) + " |")
    return lines


def row_by_sampler(cells: list[dict], row: str) -> dict[str, float]:
    """{sampler: distance} of one gpu_tables row (``full`` is the base at full depth); the last cell where a
    row has several (extra seeds)."""
    return {c["sampler"]: c["fid"] for c in cells if c["row"] == row}


def merge_into(path: str, d: str, out: dict) -> None:
    """``path``'s section ``finetuned[<d relative to path's folder>]`` (two run folders of one name, say
    converge/uvit-ft and converge/v2/uvit-ft, keep an entry each): one row per fine-tune with the schedule, its compute saving,
    its distance (``fid``, whatever the metric), the base's (``fid_full``), the fair baseline's and the preset
    it is compared with. Written atomically; the file's other keys are kept."""
    keep = ("model", "kind", "blocks", "boundaries", "compute_saving", "fid", "fid_full", "compared_with", "ratio_base",
            "ratio_fair", "metric", "n", "sampler", "steps", "proxy", "proxy_kind")
    rows = [{k: r[k] for k in keep} | {"fid_fair": out["fair_fd"]} for r in out["rows"]]
    merge_section(path, d, {"dir": d, "base": out["base"], "rows": rows})


def merge_section(path: str, d: str, entry: dict) -> None:
    """Set ``path``'s ``finetuned[<d relative to path's folder>]`` to ``entry``, keeping the file's other keys
    (written atomically)."""
    from two_stage import write

    with open(path) as f:
        res = json.load(f)
    key = os.path.relpath(os.path.abspath(d), os.path.dirname(os.path.abspath(path)))
    res.setdefault("finetuned", {})[key] = entry
    write(path, res)


def curves(d: str) -> dict[str, tuple[int, list[tuple[int, float]]]]:
    """{kind: (training seed, [(step, distance), ...])} of the fine-tunes in folder ``d``."""
    out = {}
    for mpath in sorted(glob.glob(os.path.join(d, "*.metrics.jsonl"))):
        kind = os.path.basename(mpath)[: -len(".metrics.jsonl")]
        with open(mpath.replace(".metrics.jsonl", ".config.json")) as f:
            seed = json.load(f).get("seed", 0)
        out[kind] = (seed, [(r["eval"]["step"], r["eval"]["value"]) for r in read_rows(mpath) if "eval" in r])
    return out


def plot(rows, a, path: str, base_fd: float) -> None:
    """Every fine-tune's distance against its steps (log y), one colour per kind; --repeat folders dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 3.8))
    colour = {}
    for r in rows:
        label = "fair baseline (full)" if r["kind"] == "full" else f"{r['kind']} ({100 * r['compute_saving']:.1f}% saved)"
        (line,) = ax.plot([e["step"] for e in r["evals"]], [e["value"] for e in r["evals"]], "o-", ms=3, label=label)
        colour[r["kind"]] = line.get_color()
    for d in a.repeat:
        for kind, (seed, pts) in curves(d).items():
            if pts:
                ax.plot(*zip(*pts), "s--", ms=3, color=colour.get(kind, "gray"), label=f"{kind}, training seed {seed}")
    ax.axhline(base_fd, color="black", lw=0.8, ls=":", label="base, full depth")
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning steps")
    r0 = rows[0]
    ax.set_ylabel(f"{r0['metric']} ({r0['n']} images)")
    ax.set_title(f"{a.model}: fine-tunes side by side, {r0['sampler']}, each with its own schedule", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: the curves fill them
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def saving_points(cells: list[dict], hand=()) -> dict[str, list[tuple[str, str, float, float]]]:
    """{sampler: [(family, label, FLOPs saved %, distance ÷ the base's full-depth cell on that sampler)]};
    family: "preset" / "searched" (a schedule given as blocks, as ``eediff search`` writes it) / "hand-written" (the
    block lists in ``hand``) + " fine-tuned" or " zero-shot", or "fair baseline". Samplers without a base cell are
    left out."""
    base = row_by_sampler(cells, "full")
    out: dict[str, list] = {}
    for c in cells:
        s = c["sampler"]
        if s not in base or c.get("kind") == "full":
            continue
        if c.get("kind") == "fair":
            fam, label = "fair baseline", "fair baseline"
        else:
            searched = "," in c["schedule"]  # a searched schedule is recorded as its blocks, a preset by name
            fam = ("hand-written" if c["schedule"] in hand else "searched" if searched else "preset") + \
                (" fine-tuned" if c.get("kind") == "fine-tuned" else " zero-shot")
            label = c["schedule"].split("-")[0] if not searched else f"{c['flop_reduction_pct']:.0f}%"
        out.setdefault(s, []).append((fam, label, c["flop_reduction_pct"], c["fid"] / base[s]))
    return out


def saving_plot(cells: list[dict], model: str, path: str, hand=()) -> None:
    """One panel per sampler: distance ÷ base (log) against FLOPs saved; fine-tuned filled, zero-shot hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = saving_points(cells, hand)
    if not pts:
        return
    style = {"preset fine-tuned": ("o", "tab:blue", True), "searched fine-tuned": ("*", "tab:red", True),
             "preset zero-shot": ("o", "tab:blue", False), "searched zero-shot": ("*", "tab:red", False),
             "hand-written fine-tuned": ("D", "tab:green", True), "hand-written zero-shot": ("D", "tab:green", False),
             "fair baseline": ("s", "black", True)}
    fig, axes = plt.subplots(1, len(pts), figsize=(3.6 * len(pts), 3.4), sharey=True, squeeze=False)
    for ax, (sampler, ps) in zip(axes[0], pts.items()):
        for fam, (marker, colour, filled) in style.items():
            sel = [p for p in ps if p[0] == fam]
            if not sel:
                continue
            ax.scatter([p[2] for p in sel], [p[3] for p in sel], marker=marker, s=60 if marker == "*" else 30, label=fam,
                       color=colour if filled else "none", edgecolors=colour)
            if fam.endswith("fine-tuned") and not fam.startswith("hand"):
                for p in sel:  # presets labelled above, searched schedules below (they sit at the same savings)
                    ax.annotate(p[1], (p[2], p[3]), fontsize=6, xytext=(-6, 6) if fam.startswith("preset") else (4, -9),
                                textcoords="offset points")
        ax.axhline(1.0, color="gray", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("FLOPs saved (%)")
        ax.set_title(sampler, fontsize=8)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("distance ÷ base at full depth")
    axes[0][-1].legend(fontsize=6, loc="upper left")
    fig.suptitle(f"{model}: every measured cell, same sampler as the base (dotted: the base)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
