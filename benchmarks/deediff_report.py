"""Markdown table and picture of `results/deediff.json` (from benchmarks/deediff_eval.py).

    python benchmarks/deediff_report.py results/deediff.json --out-dir results
writes results/deediff.md and results/deediff.png: FID against the layers saved (left) and against the
measured time saved at batch 64 (right), DeeDiff thresholds beside the ASE fine-tune, per architecture.
"""

from __future__ import annotations

import argparse
import json
import os


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--out-dir", default="results")
    a = ap.parse_args()
    with open(a.json) as f:
        d = json.load(f)
    rows = d["rows"]
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"# DeeDiff on the shipped Fashion-MNIST models ({d['device']}, {d['n']} images per cell, Inception FID)", "",
             "Commands: " + "; ".join(f"`{c}`" for c in d["commands"]), "",
             "| model | exits | layers saved | FLOP cut | time saved, batch 1 | time saved, batch 64 | FID | FID / own full depth | FID / base |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next((s for s in rows if s["model"] == r["model"] and s.get("fid_base")), {}).get("fid_base")
        exits = r.get("method") or f"DeeDiff τ = {r['tau']:.4f} (target {100 * r['target_saving']:.0f}%)"
        own = "—" if "tau" not in r else f"{r['fid'] / r['fid_full']:.3f}"
        vs_base = "—" if not base else f"{r['fid'] / base:.3f}"
        lines.append(f"| {r['model']} | {exits} | {pct(r['layers_saved'])} | {pct(r['flop_reduction'])} | {pct(r['time_saved_b1'])} | "
                     f"{pct(r['time_saved_b64'])} | {r['fid']:.2f} | {own} | {vs_base} |")
    for arch in dict.fromkeys(r["model"] for r in rows):
        r = next(r for r in rows if r["model"] == arch and "tau" in r)
        lines.append(f"\n{arch}: full depth of the DeeDiff fine-tune FID {r['fid_full']:.2f}; base model at full depth {r['fid_base']:.2f}.")
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "deediff.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, key, label in ((axes[0], "layers_saved", "schedulable blocks saved (%)"), (axes[1], "time_saved_b64", "measured time saved at batch 64 (%)")):
        for arch, color in zip(archs, ("tab:blue", "tab:orange")):
            dd = [r for r in rows if r["model"] == arch and "tau" in r]
            ase = [r for r in rows if r["model"] == arch and "method" in r]
            ax.plot([100 * r[key] for r in dd], [r["fid"] for r in dd], "o-", color=color, label=f"{arch} DeeDiff (τ for 30/40/50%)")
            ax.plot([100 * r[key] for r in ase], [r["fid"] for r in ase], "s", color=color, markersize=9, label=f"{arch} ASE D4 fine-tune")
            ax.plot([0], [dd[0]["fid_full"]], "x", color=color, markersize=9, label=f"{arch} DeeDiff fine-tune, full depth")
            ax.plot([0], [dd[0]["fid_base"]], "*", color=color, markersize=11, label=f"{arch} base, full depth")
        ax.axvline(0, color="gray", lw=0.5)
        ax.set_xlabel(label)
        ax.set_ylabel("FID (5,000 images)")
    axes[0].set_title("quality against the compute the exits skip")
    axes[1].set_title("quality against the wall clock they save (eager, bf16)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(os.path.join(a.out_dir, "deediff.png"), dpi=120)
    print(f"wrote {a.out_dir}/deediff.md and deediff.png")


if __name__ == "__main__":
    main()
