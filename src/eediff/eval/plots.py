"""FID against measured acceleration: the picture of an exit schedule's trade-off.

Used by ``eediff eval`` (one panel, ``<out>.png`` next to its JSON) and by ``benchmarks/tables_report.py``
(one panel per architecture). matplotlib draws; this module only decides what goes where.
"""

from __future__ import annotations

import math
import statistics
from typing import Callable

MARKERS = "o^sDvP*Xh<>"


def fid_vs_accel_axes(ax, rows: list[dict], group_of: Callable[[dict], str], marker_of: Callable[[dict], str],
                      metric_label: str = "FID", title: str = "", markers: dict[str, str] | None = None) -> None:
    """Draw ``rows`` (dicts with ``sampler``, ``fid_mean``, ``fid_std``, ``accel_pct``) on ``ax``.

    Colour = sampler; marker = ``markers[marker_of(row)]`` (assigned in order of appearance if not given); one text label per ``group_of(row)`` cluster, right of its
    rightmost point (labels per point overlap when several samplers land on one schedule). Rows without a
    measured Accel. are left out. The y axis is logarithmic: a schedule run without fine-tuning sits several
    times above the rest, and a linear axis would flatten the differences that matter.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import ScalarFormatter

    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("accel_pct") is not None]
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    colours = {sp: plt.cm.tab10(i % 10) for i, sp in enumerate(samplers)}
    kinds = list(dict.fromkeys(marker_of(r) for r in rows))
    markers = {k: (markers or {}).get(k) or MARKERS[i % len(MARKERS)] for i, k in enumerate(kinds)}
    clusters: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        x, y = r["accel_pct"], r["fid_mean"]
        ax.errorbar(x, y, yerr=r.get("fid_std") or None, marker=markers[marker_of(r)], color=colours[r["sampler"]],
                    linestyle="none", markersize=7, alpha=0.85)
        clusters.setdefault(group_of(r), []).append((x, y))
    for label, pts in clusters.items():
        y_mid = math.exp(statistics.fmean(math.log(max(p[1], 1e-9)) for p in pts))
        ax.annotate(label, (max(p[0] for p in pts), y_mid), fontsize=7, xytext=(6, -3), textcoords="offset points")
    handles = [Line2D([], [], color=colours[sp], marker="o", linestyle="none", label=sp) for sp in samplers]
    handles += [Line2D([], [], color="gray", marker=markers[k], linestyle="none", label=k) for k in kinds]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if rows and min(r["fid_mean"] for r in rows) > 0:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
    if rows:
        xs = [r["accel_pct"] for r in rows]
        ax.set_xlim(min(-2.0, min(xs) - 2), max(xs) + 9)
    ax.set_xlabel("measured Accel. (% less sampling time than full depth)")
    ax.set_ylabel(metric_label + (" (log scale)" if ax.get_yscale() == "log" else ""))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3, which="both")


def save_fid_vs_accel(panels: list[dict], path: str) -> None:
    """One panel per entry of ``panels`` (keyword arguments of ``fid_vs_accel_axes``), side by side, into a PNG
    (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write

    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(7.5 * n, 4.8), squeeze=False)
    for ax, kw in zip(axes[0], panels):
        fid_vs_accel_axes(ax, **kw)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def save_exit_depths(step_depths: list, num_blocks: int, path: str, title: str = "", unit_time=None) -> None:
    """Blocks run per model evaluation against t: the mean over rows, and the min–max band.

    ``step_depths``: (network time, mean, min, max) per evaluation (``GenerationResult.step_depths``);
    ``unit_time`` maps network time to t in [0, 1] (default: the network time as given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write

    conv = unit_time or (lambda v: v)
    rows = sorted((float(conv(t)), m, lo, hi) for t, m, lo, hi in step_depths)
    ts = [r[0] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.fill_between(ts, [r[2] for r in rows], [r[3] for r in rows], alpha=0.25, label="min–max over rows")
    ax.plot(ts, [r[1] for r in rows], marker=".", label="mean over rows")
    ax.set_xlabel("t (0 = data, 1 = noise)")
    ax.set_ylabel("blocks run")
    ax.set_ylim(0, num_blocks + 0.5)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def save_search_plot(report: dict, path: str) -> None:
    """``eediff search --plot``: the picture of a search report (``SearchResult.report()``, or its saved JSON).

    Left: every candidate of the search path, proxy against compute saving, with the chosen one starred and the
    confirmed FD ratios written beside the candidates that were sampled; the presets that fit the model
    (``report["references"]``) scored on the same proxy table, so a preset above the path is one the search beats
    at its own cost. Right: blocks run against t for the chosen schedule and the ``--saving-of`` schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..exits.schedule import ExitSchedule
    from ..io import atomic_write

    path_pts = report["path"]
    chosen = path_pts[report["chosen"]]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    ax.plot([100 * c["compute_saving"] for c in path_pts], [c["proxy"] for c in path_pts], marker=".", markersize=4,
            color="tab:blue", label=f"search path ({report.get('method', '')}, {len(path_pts)} candidates)")
    ax.plot([100 * chosen["compute_saving"]], [chosen["proxy"]], marker="*", markersize=15, color="tab:red", linestyle="none",
            label=f"chosen: {','.join(map(str, chosen['blocks']))}")
    for c in path_pts:
        if c.get("fid_ratio") is not None:
            ax.annotate(f"FD ×{c['fid_ratio']:.3f}", (100 * c["compute_saving"], c["proxy"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points", color="tab:red")
    refs = [r for r in report.get("references", []) if r.get("proxy") is not None]
    for r in refs:
        ax.plot([100 * r["compute_saving"]], [r["proxy"]], marker="x", markersize=8, color="tab:gray", linestyle="none")
        ax.annotate(r["name"], (100 * r["compute_saving"], r["proxy"]), fontsize=7, xytext=(5, -3), textcoords="offset points")
    if refs:
        ax.plot([], [], marker="x", color="tab:gray", linestyle="none", label="presets, same proxy")
    ax.set_xlabel("compute saving (% of the analytic FLOPs, this sampler's steps)")
    weighting = report.get("weighting", "")
    ax.set_ylabel(f"proxy ({weighting} weighting; lower is closer to full depth)")
    kind = "adapted" if report.get("adapted") else "zero-shot"
    ax.set_title(f"{report.get('arch', '')} · {report.get('sampler', '')} · {kind} proxy on {report.get('n', '?')} images", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")

    K = report["num_blocks"]
    ts = [i / 400 for i in range(401)]
    spec = report["schedule"]
    shown = [(ExitSchedule(spec.get("name", "searched"), tuple(spec["boundaries"]), tuple(spec["blocks"])), "tab:red")]
    other = next((r for r in report.get("references", []) if r["name"] == report.get("saving_of")), None)
    if other is not None:
        shown.append((ExitSchedule(other["name"], tuple(other["boundaries"]), tuple(other["blocks"])), "tab:gray"))
    for s, colour in shown:
        ax2.step(ts, [s.active_blocks(t, K) for t in ts], where="post", color=colour, label=s.name)
    ax2.set_xlabel("t (0 = data, 1 = noise)")
    ax2.set_ylabel("blocks run")
    ax2.set_ylim(0, K + 0.5)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
