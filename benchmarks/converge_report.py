#!/usr/bin/env python3
"""Training curves of the base models trained towards the --plateau rule (benchmarks/device/converge.sh).

Reads results/converge/{dit,uvit}-partN.metrics.jsonl (part N + 1 continues part N's EMA export with a fresh
optimizer, so its steps are offset by part N's last step) and writes results/converge/converge.{json,md,png}:
the eval rows (classifier Fréchet distance of 5000 EMA samples, DPM-Solver++ 25, fixed seeds) against total
steps, the plateau rule's gain at each (`eediff.train.loop.plateau_gain`: the log-log trend of the evals of
the last doubling of total steps, extrapolated to 20% more steps; a continued part's own --plateau would
count from its first step, so the rule is applied here), where it is first met, and the training speed.
Training is counted in images seen, as steps of batch 512 (a part at batch 1024 counts each step twice).

    python benchmarks/converge_report.py --dir results/converge
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re

from eediff.train.loop import plateau_gain

PLATEAU = 0.03  # --plateau 0.03: 20% more steps improve the distance by less than 3%
BATCH = 512  # the unit of training: steps of this many images


def read_rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().endswith("}")]


def curve(dir_: str, model: str, start: int = 0) -> dict:
    """The eval rows of MODEL's parts in DIR_ on one axis of total steps; START: steps trained before part 1
    (part 1 continued an export that had them)."""
    parts = sorted(glob.glob(os.path.join(dir_, f"{model}-part*.metrics.jsonl")), key=lambda p: int(re.search(r"part(\d+)", p).group(1)))
    offset, evals, speed, bounds = start, [], [], []
    for p in parts:
        rows = read_rows(p)
        steps = [r for r in rows if "loss" in r]
        with open(p.replace(".metrics.jsonl", ".config.json")) as f:
            conf = json.load(f)
        # training is counted in images seen, as steps of batch 512: a part at another batch size counts its
        # steps x batch / 512, so that "20% more training" means 20% more images whatever the batch
        scale = conf["batch_size"] / BATCH
        for r in rows:
            if "eval" in r:
                evals.append({"step": round(offset + scale * r["eval"]["step"]), "value": r["eval"]["value"], "part": len(bounds) + 1})
        speed += [r["steps_per_s"] * scale for r in steps[2:]]  # past the compile
        last = scale * max(r["step"] for r in steps)
        bounds.append({"part": len(bounds) + 1, "from": round(offset), "to": round(offset + last), "last_loss": steps[-1]["loss"],
                       "lr": conf.get("lr"), "batch_size": conf["batch_size"]})
        offset += last
    for i, e in enumerate(evals):
        e["plateau_gain"] = plateau_gain(evals[: i + 1])
    speed.sort()
    plateau = next((e for e in evals if e["plateau_gain"] is not None and e["plateau_gain"] < PLATEAU), None)
    return {"model": model, "parts": bounds, "evals": evals, "median_steps_per_s": speed[len(speed) // 2] if speed else None,
            "plateau_at": plateau and plateau["step"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="results/converge")
    ap.add_argument("--start", action="append", default=[], metavar="MODEL=STEPS",
                    help="steps (as batch 512) that MODEL (dit / uvit) had before part 1, e.g. dit=3000 when part 1 "
                         "continued the shipped 3000-step export; repeatable")
    a = ap.parse_args(argv)
    start = {}
    for s in a.start:
        m, _, n = s.partition("=")
        if m not in ("dit", "uvit") or not n.isdigit():
            ap.error(f"--start {s!r}: give MODEL=STEPS with MODEL dit or uvit, e.g. --start dit=3000")
        start[m] = int(n)
    out = {m: curve(a.dir, m, start.get(m, 0)) for m in ("dit", "uvit")}
    with open(os.path.join(a.dir, "converge.json"), "w") as f:
        json.dump(out, f, indent=1)
    names = {"dit": "DiT (28 blocks, width 64)", "uvit": "U-ViT (13 blocks, width 96)"}
    lines = ["| model | total steps | classifier FD (5000, DPM-Solver++ 25) | trend: gain for 20% more steps | part |", "|---|---|---|---|---|"]
    for m, c in out.items():
        for e in c["evals"]:
            g = "—" if e["plateau_gain"] is None else f"{100 * e['plateau_gain']:.1f}%"
            lines.append(f"| {names[m]} | {e['step']} | {e['value']:.3f} | {g} | {e['part']} |")
    lines += ["", "| model | parts (total steps) | median steps/s (as B=512, both models on one H200) | last loss | plateau (total steps) |",
              "|---|---|---|---|---|"]
    for m, c in out.items():
        spans = ", ".join("%d–%d (lr %g%s)" % (b["from"], b["to"], b["lr"], "" if b["batch_size"] == BATCH else f", batch {b['batch_size']}")
                          for b in c["parts"])
        lines.append(f"| {names[m]} | {spans} | {c['median_steps_per_s']:.1f} | {c['parts'][-1]['last_loss']:.4f} | {c['plateau_at'] or 'not reached'} |")
    with open(os.path.join(a.dir, "converge_tables.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for m, c in out.items():
        (line,) = ax.plot([e["step"] for e in c["evals"]], [e["value"] for e in c["evals"]], "o-", label=names[m])
        for b in (b for b in c["parts"] if b["from"] > 0):
            ax.axvline(b["from"], color="gray", lw=0.6, ls=":")
        if c["plateau_at"]:
            e = next(e for e in c["evals"] if e["step"] == c["plateau_at"])
            ax.plot([e["step"]], [e["value"]], "*", ms=14, mec="black", color=line.get_color(), zorder=5,
                    label=f"{names[m].split(' ')[0]}: plateau rule met ({e['step']} steps)")
    ax.set_yscale("log")
    ax.set_xlabel("training steps (as batch 512: images seen / 512)")
    ax.set_ylabel("classifier FD (5000 EMA samples)")
    ax.set_title("Base models towards the plateau (dotted: a part continues an EMA export)", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(a.dir, "converge.png"), dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
