#!/usr/bin/env python3
"""`finetune --distill` against the plain ASE fine-tune of the same base, schedule, recipe and steps.

Reads the distilled runs (DIR/NAME.metrics.jsonl, NAME.config.json, NAME = MODEL-KIND-distillW, as
benchmarks/device/distill.sh names them) and their table cells (DIR/tables_MODEL-distill.jsonl), and the plain
fine-tunes of results/converge/v2/MODEL-ft (KIND.metrics.jsonl and tables_MODEL.jsonl). Writes DIR/distill.json,
DIR/distill.md (per schedule: the distance at each --eval-every step and on every sampler, ÷ the base and ÷ the
fair baseline of the same sampler) and DIR/distill.png (distance against fine-tune steps, plain solid, distilled
dashed). A run taken further than the plain one (resumed with a larger --steps) may have its cells measured again
at step S in DIR/tables_MODEL-distill-S.jsonl: they are reported as rows of their own, "distilled at S".

    python benchmarks/distill_report.py --dir results/converge/v2/distill --into results/search.json

--into JSON: the rows go into that file's section ``finetuned[<DIR relative to its folder>]`` too (the fine-tuned
rows of results/search.json: schedule, compute saving, distance, the base's and the fair baseline's, the plain
fine-tune each is compared with), one row per run, sampler and measured step count.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

SAMPLERS = ("dpm-solver++-25", "ddim-50", "ddpm-100")


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip().endswith("}")]


def evals(rows: list[dict]) -> dict[int, float]:
    return {r["eval"]["step"]: r["eval"]["value"] for r in rows if "eval" in r}


def cells(rows: list[dict], n: int = 5000) -> list[dict]:
    return [r for r in rows if r.get("type") == "cell" and r.get("seed", 0) == 0 and r.get("n") == n]


def cell_row(rows: list[dict], kind: str, sampler: str, model_has: str = "") -> dict | None:
    got = [r for r in cells(rows) if r["kind"] == kind and r["sampler"] == sampler and model_has in r["model"]]
    return got[-1] if got else None


def cell_of(rows: list[dict], kind: str, sampler: str, model_has: str = "") -> float | None:
    r = cell_row(rows, kind, sampler, model_has)
    return None if r is None else r["fid"]


def parse_name(name: str) -> tuple[str, str, str, str]:
    """distill.sh's run name MODEL-KIND-distillW[-lnP] -> (MODEL, KIND, W, P or '')."""
    model, rest = name.split("-", 1)
    kind, _, w = rest.rpartition("-distill")
    w, _, ln = w.partition("-ln")
    return model, kind, w, ln


def search_rows(out: list[dict]) -> list[dict]:
    """results/search.json's fine-tuned rows of the distilled runs: one per run, sampler and measured step count
    (the plain run's steps, then each later table's), each compared with the plain fine-tune of its schedule."""
    rows = []
    for row in out:
        for sp, c in row["samplers"].items():
            cell = row["cells"].get(sp)
            for steps, fid in [(row["steps"], c["distill"]), *c["later"].items()]:
                if fid is None or cell is None:
                    continue
                rows.append({"model": row["model"], "kind": row["label"],
                             "schedule": row["schedule"], "compute_saving": cell["flop_reduction_pct"] / 100, "fid": fid,
                             "fid_full": c["base"], "fid_fair": c["fair"] if steps == row["steps"] else c["later_fair"].get(steps), "compared_with": f"{row['kind']} (plain fine-tune)",
                             "fid_compared": c["plain"] if steps == row["steps"] else None,
                             "ratio_base": fid / c["base"] if c["base"] else None,
                             "metric": cell["metric"], "n": cell["n"], "sampler": sp, "steps": steps, "plain_steps": row["steps"]})
    return rows


def merge_into(path: str, d: str, out: list[dict]) -> None:
    """``path``'s section ``finetuned[<d relative to path's folder>]`` holds :func:`search_rows` (the file's other
    keys and sections are kept), as finetune_report.py's fine-tunes do."""
    from finetune_report import merge_section

    merge_section(path, d, {"dir": d, "rows": search_rows(out)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", required=True, help="the distilled runs as distill.sh returned them")
    ap.add_argument("--plain-root", default="results/converge/v2", help="holds MODEL-ft/ with the plain fine-tunes")
    ap.add_argument("--into", default=None, metavar="JSON", help="also merge the rows into this results file (results/search.json)")
    a = ap.parse_args(argv)

    out = []
    for cfg_path in sorted(glob.glob(os.path.join(a.dir, "*-distill*.config.json"))):
        name = os.path.basename(cfg_path)[: -len(".config.json")]
        model, kind, w, ln = parse_name(name)
        cfg = json.load(open(cfg_path))
        plain_dir = os.path.join(a.plain_root, f"{model}-ft")
        plain_tables = read_jsonl(os.path.join(plain_dir, f"tables_{model}.jsonl"))
        dist_tables = read_jsonl(os.path.join(a.dir, f"tables_{model}-distill.jsonl"))
        plain_evals = evals(read_jsonl(os.path.join(plain_dir, f"{kind}.metrics.jsonl")))
        plain_cfg_path = os.path.join(plain_dir, f"{kind}.config.json")
        plain_cfg = json.load(open(plain_cfg_path)) if os.path.exists(plain_cfg_path) else {}
        # the recipe options a variant may change (benchmarks/device/distill_variants.sh), named where they differ
        differs = [f"--{k.replace('_', '-')} {cfg[k]}" for k in ("lr_schedule", "ema_decay")
                   if k in plain_cfg and k in cfg and cfg[k] != plain_cfg[k]]
        metrics = read_jsonl(os.path.join(a.dir, f"{name}.metrics.jsonl"))
        later = {}  # step -> that step's table cells (tables_MODEL-distill-STEP.jsonl)
        for p in glob.glob(os.path.join(a.dir, f"tables_{model}-distill-*.jsonl")):
            tail = os.path.basename(p)[len(f"tables_{model}-distill-"): -len(".jsonl")]
            if tail.isdigit():
                later[int(tail)] = read_jsonl(p)
        row = {"model": model, "kind": kind, "schedule": cfg["schedule"], "distill": float(w), "loss_norm": float(ln or 0),
               "label": kind + f" (--distill {w}" + (f", --loss-norm {ln}" if ln else "")
               + "".join(", " + d for d in differs) + ")",
               "steps": max(plain_evals, default=None),  # the plain run's length: the cells of tables_MODEL-distill.jsonl
               "trained": max((r.get("step", 0) for r in metrics), default=0),
               "plain_evals": plain_evals, "distill_evals": evals(metrics), "samplers": {}}
        # the saving of each sampler: from the plain run's steps' table, else from a later one (a run measured only there)
        row["cells"] = {sp: next((c for t in [dist_tables, *(later[s] for s in sorted(later))]
                                  if (c := cell_row(t, "fine-tuned", sp, f"/{name}/")) is not None), None) for sp in SAMPLERS}
        for sp in SAMPLERS:
            base = cell_of(plain_tables, "full", sp)
            fair = cell_of(plain_tables, "fair", sp)
            plain = cell_of(plain_tables, "fine-tuned", sp, f"/{model}-{kind}/")
            dist = cell_of(dist_tables, "fine-tuned", sp, f"/{name}/")
            row["samplers"][sp] = {"base": base, "fair": fair, "plain": plain, "distill": dist,
                                   "later": {s: cell_of(t, "fine-tuned", sp, f"/{name}/") for s, t in sorted(later.items())},
                                   # the fair baseline trained as far (distill.sh RUNS=MODEL:full, run MODEL-fair), where measured
                                   "later_fair": {s: cell_of(t, "fair", sp, f"/{model}-fair/") for s, t in sorted(later.items())}}
        out.append(row)
    if not out:
        raise SystemExit(f"no *-distill*.config.json in {a.dir}")
    json.dump({"rows": [{k: v for k, v in row.items() if k != "cells"} for row in out]}, open(os.path.join(a.dir, "distill.json"), "w"), indent=1)
    if a.into:
        merge_into(a.into, a.dir, out)

    f = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    r = lambda v, b: "—" if v is None or not b else f"{v / b:.2f}"  # noqa: E731
    md = ["# `finetune --distill` against the plain fine-tune (same base, schedule, recipe, steps)", "",
          "Classifier Fréchet distance of 5,000 images (seed 0) to the Fashion-MNIST test set; ÷ base / ÷ fair: against the "
          "base at full depth and the fair baseline (full depth, the same extra steps) on the same sampler.", "",
          "| model | schedule | steps (plain / distilled) | DPM-Solver++ 25 at each eval: plain → distilled |",
          "|---|---|---|---|"]
    for row in out:
        steps = sorted(set(row["plain_evals"]) | set(row["distill_evals"]))
        md.append(f"| {row['model']} | {row['label']} | {row['steps']} / {row['trained']} | "
                  + "; ".join(f"{s}: {f(row['plain_evals'].get(s))} → {f(row['distill_evals'].get(s))}" for s in steps) + " |")
    md += ["", "| model | schedule | sampler | base | fair | plain (÷ base / ÷ fair) | distilled (÷ base / ÷ fair) | distilled ÷ plain |",
           "|---|---|---|---|---|---|---|---|"]
    for row in out:
        for sp, c in row["samplers"].items():
            md.append(f"| {row['model']} | {row['label']} | {sp} | {f(c['base'])} | {f(c['fair'])} | "
                      f"{f(c['plain'])} ({r(c['plain'], c['base'])} / {r(c['plain'], c['fair'])}) | "
                      f"{f(c['distill'])} ({r(c['distill'], c['base'])} / {r(c['distill'], c['fair'])}) | {r(c['distill'], c['plain'])} |")
    longer = [(row, sp, s, v) for row in out for sp, c in row["samplers"].items() for s, v in c["later"].items() if v is not None]
    if longer:
        md += ["", "Distilled runs taken further (the plain fine-tune was not: ÷ plain compares unequal steps):", "",
               "| model | schedule | sampler | steps | distilled | ÷ base | ÷ fair, same steps | ÷ fair of the plain run's steps |",
               "|---|---|---|---|---|---|---|---|"]
        for row, sp, s, v in longer:
            c = row["samplers"][sp]
            fair_s = c["later_fair"].get(s)
            md.append(f"| {row['model']} | {row['label']} | {sp} | {s} | {f(v)} | {r(v, c['base'])} | "
                      f"{'—' if fair_s is None else f'{r(v, fair_s)} ({fair_s:.3f})'} | {r(v, c['fair'])} |")
    open(os.path.join(a.dir, "distill.md"), "w").write("\n".join(md) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    # one panel per model: each plain fine-tune once (solid, black shades), each run dashed, the base dotted
    models = sorted({row["model"] for row in out})
    fig, axes = plt.subplots(1, len(models), figsize=(6.4 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [row for row in out if row["model"] == model]
        for j, kind in enumerate(sorted({row["kind"] for row in rows})):
            pts = sorted(next(row for row in rows if row["kind"] == kind)["plain_evals"].items())
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", marker="o", color=str(0.45 * j), label=f"{kind} plain")
        for i, row in enumerate(rows):
            pts = sorted(row["distill_evals"].items())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", marker=".", color=f"C{i}", label=row["label"])
        base = rows[0]["samplers"]["dpm-solver++-25"]["base"]
        if base:
            ax.axhline(base, color="k", lw=0.8, ls=":", label="base, full depth")
        ax.set_title(model)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel("fine-tune steps")
        ax.set_ylabel("classifier FD (DPM-Solver++ 25, 5,000 images)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(a.dir, "distill.png"), dpi=120)
    print(open(os.path.join(a.dir, "distill.md")).read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
