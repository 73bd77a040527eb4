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
