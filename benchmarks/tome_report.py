"""The ToMe baseline beside the exit schedules: tables in the shape of the ASE paper's Tables 5–8 and the
FID-vs-Accel. plot with both.

    python benchmarks/tome_report.py --tome results/tome.json --tables results/gpu_tables.json --out-dir results
      -> results/tome.md, results/fid_vs_accel_tome.png

``tome.json`` comes from ``benchmarks/tome_eval.py`` (its own full-depth row, FID ratio against it);
the exit-schedule rows are read from ``gpu_tables.json`` (``benchmarks/tables_report.py``) for the same sampler.
"""

from __future__ import annotations

import argparse
import json
import os


def rows_for(tome: dict, tables: dict, arch: str) -> list[dict]:
    """One dict per table row: method, FLOP reduction %, Accel. %, FID, FID / full (of its own run)."""
    sampler = tome["sampler"]
    own = [r for r in tome["rows"] if r["model"] == arch]
    full = next(r["fid"] for r in own if r["tome"] is None)
    out = [{"method": "full depth (ToMe run)", "kind": "full", "flop": 0.0, "accel": 0.0, "fid": full, "ratio": 1.0, "device": tome["device"]}]
    for r in own:
        if r["tome"] is not None:
            t = r["tome"]
            out.append({"method": f"ToMe {t['schedule']}, ratio {t['ratio']}, {t['blocks']} blocks", "kind": "ToMe", "flop": 100 * r["flop_reduction"],
                        "accel": 100 * r["accel"], "fid": r["fid"], "ratio": r["fid"] / full, "device": tome["device"]})
    cells = [c for c in tables["table"] if c["arch"] == arch and c["sampler"] == sampler]
    base = next((c["fid_mean"] for c in cells if c["kind"] == "full"), None)
    for c in cells:
        if c["kind"] in ("fine-tuned", "full"):
            out.append({"method": f"ASE {c['schedule']} {c['kind']}" if c["kind"] != "full" else "full depth (ASE run)", "kind": c["kind"],
                        "flop": c["flop_reduction_pct"], "accel": c["accel_pct"], "fid": c["fid_mean"],
                        "ratio": c["fid_mean"] / base if base else float("nan"), "device": c["device"]})
    return out


def markdown(tome: dict, tables: dict, archs: list[str]) -> str:
    out = ["# Token merging (ToMe) beside the exit schedules", "",
           f"{tome['n']} images per row, {tome['sampler']}, FID against the Fashion-MNIST test set. ToMe: tomesd's "
           "bipartite soft matching before self-attention, unmerged after; F/R/B = merging in the front-most, back-most "
           "or both-end blocks. FID / full is against the full-depth row of the same run; Accel. = 1 − t/t(full), "
           "one batch of 1000, interleaved medians, on the device named in each row.", ""]
    for arch in archs:
        out += [f"## {arch}", "", "| method | FLOP red. | Accel. | FID | FID / full | device |", "|---|---|---|---|---|---|"]
        for r in rows_for(tome, tables, arch):
            out.append(f"| {r['method']} | {r['flop']:.1f}% | {r['accel']:.1f}% | {r['fid']:.2f} | {r['ratio']:.3f} | {r['device']} |")
        out.append("")
    out += ["Commands:", ""] + [f"- `{c}`" for c in tome["commands"]] + ["- `python benchmarks/tome_report.py`", ""]
    return "\n".join(out)


def plot(tome: dict, tables: dict, archs: list[str], path: str) -> None:
    from eediff.eval.plots import save_fid_vs_accel

    panels = []
    for arch in archs:
        rows = [{"sampler": tome["sampler"], "fid_mean": r["fid"], "fid_std": None, "accel_pct": r["accel"], "kind": r["kind"], "method": r["method"]}
                for r in rows_for(tome, tables, arch)]
        panels.append(dict(rows=rows, title=f"{arch}: ToMe vs ASE", marker_of=lambda r: r["kind"],
                           group_of=lambda r: r["method"].replace(", ratio ", " r").replace(" blocks", "b").replace("full depth ", "full "),
                           markers={"full": "o", "fine-tuned": "^", "ToMe": "D"}))
    save_fid_vs_accel(panels, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tome", default="results/tome.json")
    ap.add_argument("--tables", default="results/gpu_tables.json")
    ap.add_argument("--out-dir", default="results")
    a = ap.parse_args()
    with open(a.tome) as f:
        tome = json.load(f)
    with open(a.tables) as f:
        tables = json.load(f)
    archs = list(dict.fromkeys(r["model"] for r in tome["rows"]))
    with open(os.path.join(a.out_dir, "tome.md"), "w") as f:
        f.write(markdown(tome, tables, archs))
    plot(tome, tables, archs, os.path.join(a.out_dir, "fid_vs_accel_tome.png"))
    print(f"wrote {a.out_dir}/tome.md, {a.out_dir}/fid_vs_accel_tome.png")


if __name__ == "__main__":
    main()
