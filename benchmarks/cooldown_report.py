#!/usr/bin/env python3
"""The cosine cool-down of the base models against the plateau rule (benchmarks/device/cooldown.sh base).

Each base was continued from its shipped export twice, with the learning rate decayed to 0 by a cosine over N and
over 1.2 N steps. The rule of `--plateau 0.03` asks that 20% more training improve the distance by less than 3%:
here that is the end of the 1.2 N run against the end of the N run (two complete schedules, not the tail of one:
the last 20% of one cosine trains at a rate near 0, so its flatness says nothing). Reads DIR/cdSTEPS/MODEL/metrics.jsonl
and writes DIR/cooldown.{json,md,png}; --before MODEL=FD gives the export's own distance (measured with the same
seeds, sampler and n) for the gain the cool-down made.

    python benchmarks/cooldown_report.py --dir results/converge/v3 --before dit=0.963 --before uvit=0.349

With --ft FOLDER (the fine-tunes on the cooled bases, `cooldown.sh finetune`: FOLDER/tables_MODEL.jsonl as
benchmarks/gpu_tables.py wrote them, and FOLDER/MODEL-KIND/metrics.jsonl) it adds DIR/finetunes.md: every row's
distance, ÷ the cooled base's and ÷ the fair baseline's on the same sampler; a model whose tables did not come
back is reported from the runs' own DPM-Solver++ 25 evaluations against the cool-down's last one. With --into
results/search.json the fine-tuned rows also go into that file's `finetuned` section (model, schedule,
compute_saving, fid, fid_full, fid_fair, and the row each is compared with).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

from converge_report import read_rows
from finetune_report import merge_section, read_cells, saving_plot

PLATEAU = 0.03
LABEL = {"dit": "DiT (28 blocks, width 64)", "uvit": "U-ViT (13 blocks, width 96)"}


def evals(path: str) -> list[tuple[int, float]]:
    return sorted({r["eval"]["step"]: r["eval"]["value"] for r in read_rows(path) if "eval" in r}.items())


def report(dir_: str, before: dict[str, float], tag: str = "") -> dict:
    runs = {}
    for d in glob.glob(os.path.join(dir_, "cd*")):
        m = re.fullmatch(r"cd(\d+)" + re.escape(tag), os.path.basename(d))
        if m:
            runs[int(m.group(1))] = d
    if len(runs) < 2:
        raise SystemExit(f"{dir_}: needs two cool-down folders cdN{tag} and cdM{tag} (found {sorted(runs)})")
    lengths = sorted(runs)
    out = {"lengths": lengths, "tag": tag, "plateau": PLATEAU, "models": {}}
    for model in ("dit", "uvit"):
        curves = {n: evals(os.path.join(runs[n], model, "metrics.jsonl")) for n in lengths
                  if os.path.exists(os.path.join(runs[n], model, "metrics.jsonl"))}
        if not curves:
            continue
        ends = {n: c[-1] for n, c in curves.items() if c and c[-1][0] == n}  # a run measured at its last step
        row = {"curves": {str(n): c for n, c in curves.items()}, "end": {str(n): e[1] for n, e in ends.items()},
               "before": before.get(model)}
        short, long_ = lengths[0], lengths[-1]
        if short in ends and long_ in ends:
            gain = 1.0 - ends[long_][1] / ends[short][1]
            row["gain_longer"] = gain
            row["plateau_met"] = gain < PLATEAU
        if before.get(model) and long_ in ends:
            row["gain_cooldown"] = 1.0 - ends[long_][1] / before[model]
        out["models"][model] = row
    return out


ROWS = [("full", "cooled base, full depth"), ("fair", "fair baseline (full depth, same steps)"),
        ("fine-tuned", "fine-tuned"), ("zero-shot", "zero-shot on the cooled base")]


def finetunes(ft: str, rep: dict) -> dict:
    """{model: {"cells": [(row label, schedule, compute fraction, {sampler: fid}, row kind, {metric, n})], "source": ...}}
    of the fine-tunes in FT (see the module's docstring); the row kind is one of ROWS' keys."""
    out = {}
    for model in ("dit", "uvit"):
        tables = os.path.join(ft, f"tables_{model}.jsonl")
        cells = []
        if os.path.exists(tables):
            got: dict = {}
            for r in read_rows(tables):
                if r.get("type") != "cell" or "fid" not in r:
                    continue
                g = got.setdefault((r["kind"], r["schedule"]), {"fraction": r["compute_fraction"], "fid": {}, "measure": {}})
                g["fid"][r["sampler"]] = r["fid"]
                g["measure"] = {k: r[k] for k in ("metric", "n") if k in r}  # (one metric and n per table)
            for kind, label in ROWS:
                for (k, sched), v in got.items():
                    if k == kind:
                        cells.append((label if kind in ("full", "fair") else f"{sched} {label}", sched, v["fraction"], v["fid"], kind,
                                      v["measure"]))
            out[model] = {"cells": cells, "source": os.path.basename(tables)}
            continue
        runs = sorted(glob.glob(os.path.join(ft, f"{model}-*", "metrics.jsonl")))
        end = rep["models"].get(model, {}).get("end", {})
        if not runs or not end:
            continue
        base = end[max(end, key=int)]
        cells.append(("cooled base, full depth", "full", 1.0, {"dpm-solver++-25": base}, "full", {}))
        for m in runs:
            kind = os.path.basename(os.path.dirname(m))[len(model) + 1:]
            ev = evals(m)
            if ev:
                label = "fair baseline (full depth, same steps)" if kind == "full" else f"{kind} fine-tuned"
                cells.append((f"{label}, step {ev[-1][0]}", kind, None, {"dpm-solver++-25": ev[-1][1]},
                              "fair" if kind == "full" else "fine-tuned", {}))
        out[model] = {"cells": cells, "source": "the runs' own evaluations"}
    return out


def write_finetunes(dir_: str, fts: dict) -> None:
    lines = []
    for model, r in fts.items():
        samplers = list(dict.fromkeys(s for c in r["cells"] for s in c[3]))
        base = next((c[3] for c in r["cells"] if c[4] == "full"), {})
        fair = next((c[3] for c in r["cells"] if c[4] == "fair"), {})
        lines += [f"**{LABEL[model]}** ({r['source']}): distance / ÷ cooled base / ÷ fair baseline, same sampler", "",
                  "| row | FLOPs saved | " + " | ".join(samplers) + " |", "|---|---|" + "---|" * len(samplers)]
        for label, _, frac, fid, *_ in r["cells"]:
            def cell(s):
                if s not in fid:
                    return "—"
                rb = f"{fid[s] / base[s]:.2f}" if s in base else "—"
                rf = f"{fid[s] / fair[s]:.2f}" if s in fair else "—"
                return f"{fid[s]:.3f} / {rb} / {rf}"
            saved = "—" if frac is None else f"{100 * (1 - frac):.1f}%"
            lines.append(f"| {label} | {saved} | " + " | ".join(cell(s) for s in samplers) + " |")
        lines.append("")
    with open(os.path.join(dir_, "finetunes.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(dir_, "finetunes.json"), "w") as f:
        json.dump(fts, f, indent=1)
    print("\n".join(lines))


def hand_schedules(ft: str, model: str) -> set[str]:
    """The hand-written schedules among FT's runs (converge.sh HAND_MODEL: folders MODEL-hand-NAME)."""
    return {json.load(open(c))["schedule"] for c in glob.glob(os.path.join(ft, f"{model}-hand-*", "config.json"))}


def search_rows(fts: dict, hand: dict | None = None) -> list[dict]:
    """results/search.json's fine-tuned rows: one per fine-tuned cell and sampler, with the cooled base's and the
    fair baseline's distance, and what it is compared with: a preset with its own zero-shot row, a searched (or
    hand-written: ``hand``, {model: schedules}) schedule with the fine-tuned preset of the nearest compute saving
    (the same fine-tune budget). ``origin`` says which of the three a row's schedule is."""
    hand = hand or {}
    rows = []
    for model, r in fts.items():
        by_kind = lambda k: [c for c in r["cells"] if c[4] == k]
        base = next((c[3] for c in by_kind("full")), {})
        fair = next((c[3] for c in by_kind("fair")), {})
        presets = [c for c in by_kind("fine-tuned") if "," not in c[1] and c[2] is not None]
        for label, sched, frac, fid, _, measure in by_kind("fine-tuned"):
            if frac is None:  # (from a run's own evaluation: no compute fraction measured)
                continue
            if "," in sched and presets:  # searched: the fine-tuned preset nearest in compute
                other = min(presets, key=lambda c: abs(c[2] - frac))
                compared, ref = f"{other[1]} (fine-tuned, same steps)", other[3]
            else:
                zs = next((c for c in by_kind("zero-shot") if c[1] == sched), None)
                compared, ref = f"{sched} zero-shot", (zs[3] if zs else {})
            for sp, v in fid.items():
                origin = "hand-written" if sched in hand.get(model, ()) else "searched" if "," in sched else "preset"
                rows.append({"model": model, "kind": label, "schedule": sched, "origin": origin, "compute_saving": 1.0 - frac, "fid": v,
                             "fid_full": base.get(sp), "fid_fair": fair.get(sp), "compared_with": compared,
                             "fid_compared": ref.get(sp), "ratio_base": v / base[sp] if base.get(sp) else None,
                             **measure, "sampler": sp})
    return rows


def write(dir_: str, rep: dict) -> None:
    name = "cooldown" + rep.get("tag", "")
    with open(os.path.join(dir_, name + ".json"), "w") as f:
        json.dump(rep, f, indent=1)
    lengths = rep["lengths"]
    head = " | ".join(f"end of {n}-step cosine" for n in lengths)
    lines = [f"| model | export before | {head} | {lengths[-1]} vs {lengths[0]} steps | plateau (< 3%) |",
             "|---|---|" + "---|" * len(lengths) + "---|---|"]
    for model, r in rep["models"].items():
        ends = " | ".join(f"{r['end'][str(n)]:.3f}" if str(n) in r["end"] else "not finished" for n in lengths)
        gain = f"{100 * r['gain_longer']:+.1f}%" if "gain_longer" in r else "—"
        met = {True: "met", False: "not met"}.get(r.get("plateau_met"), "—")
        bef = f"{r['before']:.3f}" if r.get("before") else "—"
        lines.append(f"| {LABEL[model]} | {bef} | {ends} | {gain} improvement | {met} |")
    with open(os.path.join(dir_, name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(rep["models"]), figsize=(5 * len(rep["models"]), 3.6), squeeze=False)
    for ax, (model, r) in zip(axes[0], rep["models"].items()):
        for n, c in r["curves"].items():
            ax.plot([s for s, _ in c], [v for _, v in c], "o-", label=f"cosine over {n} steps")
        if r.get("before"):
            ax.axhline(r["before"], color="gray", ls="--", label="export before")
        ax.set_title(LABEL[model]); ax.set_xlabel("cool-down step"); ax.set_ylabel("classifier FD (5000, DPM-Solver++ 25)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(dir_, name + ".png"), dpi=110)
    print("\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="results/converge/v3")
    ap.add_argument("--before", action="append", default=[], metavar="MODEL=FD",
                    help="the export's distance before the cool-down (same seeds, sampler and n)")
    ap.add_argument("--tag", default="", help="the folders' suffix, as cooldown.sh names a changed EMA (e.g. -ema0.999w); "
                    "the files written are cooldownTAG.*")
    ap.add_argument("--ft", default=None, metavar="FOLDER", help="the fine-tunes on the cooled bases (tables, runs)")
    ap.add_argument("--into", default=None, metavar="JSON", help="with --ft: also keep the fine-tuned rows in this file's "
                    "'finetuned' section under FOLDER's path relative to the file's folder (results/search.json)")
    a = ap.parse_args(argv)
    before = {}
    for item in a.before:
        k, _, v = item.partition("=")
        if k not in LABEL or not v:
            raise SystemExit(f"--before {item!r}: give MODEL=FD with MODEL dit or uvit")
        before[k] = float(v)
    rep = report(a.dir, before, a.tag)
    write(a.dir, rep)
    if a.into and not a.ft:
        raise SystemExit("--into needs --ft FOLDER (the fine-tunes whose rows it keeps)")
    if a.ft:
        fts = finetunes(a.ft, rep)
        write_finetunes(a.dir, fts)
        hand = {m: hand_schedules(a.ft, m) for m in fts}
        for model in fts:  # every cell against FLOPs saved; hand-written schedules (converge.sh HAND_MODEL) apart
            tables = os.path.join(a.ft, f"tables_{model}.jsonl")
            if os.path.exists(tables):
                saving_plot(read_cells(tables), LABEL[model], os.path.join(a.ft, f"saving_vs_distance_{model}.png"), hand[model])
        if a.into:
            merge_section(a.into, a.ft, {"dir": a.ft, "rows": search_rows(fts, hand)})


if __name__ == "__main__":
    main()
