"""eediff's exits beside diffusers' own speed-ups, cache-dit and ToMe, on the same trained model.

    python benchmarks/peers.py generate --work /tmp/peers --out /tmp/peers/partial.json       # GPU
    python benchmarks/peers.py fid --work /tmp/peers --partial /tmp/peers/partial.json --inception inception_fp16.pt \
        --out results/peers.json                                                                # + peers.md, peers.png

The shipped Fashion-MNIST DiT (``dit-fmnist``; its ASE fine-tune ``dit-fmnist-D4`` for the tuned row) is
exported to a diffusers ``DiTTransformer2DModel`` (``eediff.diffusers.to_diffusers``, the same function)
and sampled in the unmodified ``DiTPipeline`` (``PixelSpace`` as its identity VAE), DPM-Solver++ 25 steps,
no guidance (``DiTPipeline`` hard-codes ImageNet's null label 1000), the same seeds and labels for every row.
Rows that do not run in diffusers (ToMe, eediff's own sampler and fast path) are timed against full depth in
their own runtime. Every row reports:
  * ``compute``: attention and MLP calls actually run (rows through each block's ``attn1.to_out`` and
    ``ff.net[2]``, counted by forward hooks: the same count for every method) relative to full depth;
    analytic FLOPs for the native rows;
  * ``time_s``: one call of ``--time-batch`` images, median of ``--time-repeats``, the rows interleaved;
  * ``speedup``: full depth's time in the same runtime / the row's time.
A peer that fails is kept as a row with the reason.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import traceback

import numpy as np
import torch
from two_stage import parser, write


class _Counter:
    """Rows through every block's attention output projection and MLP output (forward hooks)."""

    def __init__(self, transformer):
        self.rows = 0
        self.handles = []
        for b in transformer.transformer_blocks:
            for m in (b.attn1.to_out[0], b.ff.net[2]):
                self.handles.append(m.register_forward_hook(self._count))

    def _count(self, module, args, out):
        self.rows += args[0].shape[0]


def _labels(n: int, offset: int = 0) -> list[int]:
    return [(offset + i) % 10 for i in range(n)]


def diffusers_rows() -> list[tuple]:
    """(name, set-up) of every row that runs in DiTPipeline; set-up(pipe) applies the method, or raises."""
    import diffusers.hooks as H
    from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context

    import eediff.diffusers as ed
    from eediff.exits.schedule import get_schedule

    def exits(schedule):
        return lambda pipe: ed.apply_early_exit(pipe.transformer, ed.ExitConfig(schedule=schedule))

    def with_context(apply):
        def setup(pipe):
            apply(pipe.transformer)

            def before_call():  # a new trajectory: fresh cache state
                HookRegistry.check_if_exists_or_initialize(pipe.transformer).reset_stateful_hooks()
                # DiTTransformer2DModel has no CacheMixin and DiTPipeline never enters a cache_context; without one
                # these hooks refuse to run ("No cache context is set"), so the context is set here, by hand
                _set_cache_context(pipe.transformer, CacheContext("cond"))
            pipe._before_call = before_call
        return setup

    def pab(pipe):
        seen = {"t": 999}
        pipe.transformer.register_forward_pre_hook(lambda m, args, kw: seen.__setitem__("t", int(kw["timestep"].flatten()[0])), with_kwargs=True)
        # DiTPipeline has no `current_timestep`: PAB reads the timestep recorded by the pre-hook above
        H.apply_pyramid_attention_broadcast(pipe.transformer, H.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800), current_timestep_callback=lambda: seen["t"]))

    def cache_dit(pipe):
        import cache_dit

        cache_dit.enable_cache(pipe)

    d4 = get_schedule("D4-DiT")
    ts = [i / 25 for i in range(25)]
    skip = round(28 - d4.mean_blocks(28, ts))  # layer skip with about D4's mean depth, at every step
    rows = [
        ("diffusers, full depth", "dit-fmnist", lambda pipe: None),
        ("eediff exits D4-DiT (base weights)", "dit-fmnist", exits("D4-DiT")),
        ("eediff exits D4-DiT (ASE fine-tune)", "dit-fmnist-D4", exits("D4-DiT")),
        ("eediff exits D6-DiT (base weights)", "dit-fmnist", exits("D6-DiT")),
    ]
    for th in (0.05, 0.1, 0.2):
        rows.append((f"diffusers FirstBlockCache threshold {th}", "dit-fmnist",
                     with_context(lambda tr, th=th: H.apply_first_block_cache(tr, H.FirstBlockCacheConfig(threshold=th)))))
    ids = [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"]
    rows.append(("diffusers TaylorSeer (default identifiers)", "dit-fmnist", with_context(lambda tr: H.apply_taylorseer_cache(tr, H.TaylorSeerCacheConfig()))))
    for interval in (3, 5):
        rows.append((f"diffusers TaylorSeer interval {interval} (attn1+ff)", "dit-fmnist",
                     with_context(lambda tr, i=interval: H.apply_taylorseer_cache(tr, H.TaylorSeerCacheConfig(cache_interval=i, cache_identifiers=ids)))))
    rows.append((f"diffusers layer skip: last {skip} blocks, every step", "dit-fmnist",
                 lambda pipe: H.apply_layer_skip(pipe.transformer, H.LayerSkipConfig(indices=list(range(28 - skip, 28)), fqn="transformer_blocks"))))
    rows.append(("diffusers PyramidAttentionBroadcast (attention every 2nd step, t in 100..800)", "dit-fmnist", pab))
    rows.append(("diffusers MagCache", "dit-fmnist", with_context(lambda tr: H.apply_mag_cache(tr, H.MagCacheConfig()))))
    rows.append(("cache-dit DBCache (defaults)", "dit-fmnist", cache_dit))
    return rows


def generate_stage(a) -> dict:
    from diffusers import DiTPipeline

    import eediff.diffusers as ed
    from eediff.diffusion.sampling import SamplerConfig, make_scheduler
    from eediff.generate import generate, to_uint8
    from eediff.tome import ToMeConfig, apply_tome
    from eediff.zoo import resolve_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    os.makedirs(a.work, exist_ok=True)
    sampler = SamplerConfig(a.sampler, a.steps)
    out = {"command": "python " + " ".join(sys.argv), "sampler": f"{a.sampler}-{a.steps}", "n": a.n, "time_batch": a.time_batch,
           "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "rows": []}
    models = {name: resolve_model(name) for name in ("dit-fmnist", "dit-fmnist-D4")}
    runners = []  # (row dict, fn(n, offset) -> uint8 images, counter or None)

    for name, ckpt, setup in diffusers_rows():
        row = {"method": name, "runtime": "diffusers DiTPipeline (fp32)", "checkpoint": ckpt}
        try:
            tr, _ = ed.to_diffusers(models[ckpt].model.float())
            sched = make_scheduler(sampler, models[ckpt].process, learned_sigma=False)
            pipe = DiTPipeline(transformer=tr.to(device), vae=ed.PixelSpace().to(device), scheduler=sched)
            pipe.set_progress_bar_config(disable=True)
            counter = _Counter(tr)
            setup(pipe)

            def fn(n, offset, pipe=pipe):
                getattr(pipe, "_before_call", lambda: None)()
                g = torch.Generator(device).manual_seed(a.seed + offset)
                x = pipe(class_labels=_labels(n, offset), num_inference_steps=a.steps, guidance_scale=1.0, generator=g, output_type="pt").images
                return x  # [0, 1]

            fn(8, 0)  # does it run at all?
            runners.append((row, fn, counter))
        except Exception as e:  # a peer that cannot run on this model stays in the table, with the reason
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            traceback.print_exc(limit=2)
            out["rows"].append(row)
            print(f"{name}: FAILED {row['error']}", flush=True)

    amp = torch.bfloat16 if device == "cuda" else None
    for name, ckpt, schedule, tome, fast in [
        ("eediff sampler, full depth", "dit-fmnist", "full", None, False),
        ("eediff sampler, ToMe ratio 0.5, schedule B, 14 blocks", "dit-fmnist", "full", ToMeConfig(ratio=0.5, schedule="B", blocks=14), False),
        ("eediff sampler, ToMe ratio 0.25, schedule B, 14 blocks", "dit-fmnist", "full", ToMeConfig(ratio=0.25, schedule="B", blocks=14), False),
        ("eediff sampler, D4-DiT (ASE fine-tune)", "dit-fmnist-D4", "D4-DiT", None, False),
        ("eediff fast path (bf16, CUDA graphs), full depth", "dit-fmnist", "full", None, True),
        ("eediff fast path (bf16, CUDA graphs), D4-DiT (ASE fine-tune)", "dit-fmnist-D4", "D4-DiT", None, True),
    ]:
        if fast and device != "cuda":
            continue
        from eediff.fast import apply_fast_path
        from eediff.models.registry import model_from_config

        src = models[ckpt].model
        m = model_from_config(src.arch, src.config.__dict__)
        m.load_state_dict(src.state_dict())
        m = m.to(device).float().eval()
        if tome is not None:
            apply_tome(m, tome)
        if fast:
            apply_fast_path(m)
        row = {"method": name, "runtime": "eediff fast path" if fast else "eediff sampler (fp32)", "checkpoint": ckpt}

        def fn(n, offset, m=m, ckpt=ckpt, schedule=schedule, fast=fast, row=row):
            res = generate(m, models[ckpt].process, sampler, n=n, batch_size=n, seed=a.seed, seed_offset=offset, schedule=schedule,
                           device=device, autocast_dtype=amp if fast else None, progress=False)
            row["compute"] = res.compute_fraction  # analytic FLOPs (merged tokens counted) against full depth
            return (res.images + 1) / 2

        fn(8, 0)
        runners.append((row, fn, None))

    # timing: every row, one call of --time-batch images, interleaved, median of --time-repeats
    times = {id(r): [] for r, _, _ in runners}
    for r, fn, _ in runners:
        fn(a.time_batch, 0)  # warm-up (compiles, graphs, caches)
    for _ in range(a.time_repeats):
        for r, fn, _ in runners:
            if device == "cuda":
                torch.cuda.synchronize()
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn(a.time_batch, 0)
                e.record()
                e.synchronize()
                times[id(r)].append(s.elapsed_time(e) / 1000)
            else:
                import time

                t0 = time.perf_counter()
                fn(a.time_batch, 0)
                times[id(r)].append(time.perf_counter() - t0)
    full_time = {}
    for r, _, _ in runners:
        r["time_s"] = statistics.median(times[id(r)])
        r["time_spread_s"] = [min(times[id(r)]), max(times[id(r)])]
        if r["method"] in ("diffusers, full depth", "eediff sampler, full depth", "eediff fast path (bf16, CUDA graphs), full depth"):
            full_time[r["runtime"]] = r["time_s"]

    # images for FID, with the block calls counted
    for j, (r, fn, counter) in enumerate(runners):
        if counter is not None:
            counter.rows = 0
        imgs = []
        for off in range(0, a.n, a.batch_size):
            imgs.append(fn(min(a.batch_size, a.n - off), off).float().clamp(0, 1).cpu())
        x = torch.cat(imgs) * 2 - 1
        path = os.path.join(a.work, f"peer-{j}.npz")
        np.savez(path, arr_0=to_uint8(x))
        r["images"] = path
        if counter is not None:
            r["compute"] = counter.rows / (2 * 28 * a.steps * a.n)
        r["speedup"] = full_time[r["runtime"]] / r["time_s"] if r["runtime"] in full_time else None
        out["rows"].append(r)
        print(f"{r['method']}: {r['time_s'] * 1000:.1f} ms per {a.time_batch} images, speed-up {r['speedup'] or float('nan'):.2f}x, "
              f"compute {100 * r.get('compute', float('nan')):.1f}%", flush=True)
    return out


def fid_stage(a) -> dict:
    from eediff.config import FidConfig
    from eediff.eval.evaluate import run_fid

    with open(a.partial) as f:
        part = json.load(f)
    for r in part["rows"]:
        if "images" in r:
            r["fid"] = run_fid(FidConfig(images=os.path.join(a.work, os.path.basename(r["images"])), reference=a.reference,
                                         metric=a.metric, inception=a.inception, cache_dir=a.cache_dir, device=a.device))
            print(f"  {r['method']}: {a.metric} {r['fid']:.2f}", flush=True)
    part["commands"] = [part.pop("command"), "python " + " ".join(sys.argv)]
    part["metric"] = a.metric
    report(part, os.path.splitext(a.out)[0])
    return part


def short_label(method: str) -> str:
    """A few words for the plot."""
    m = method.replace("diffusers ", "").replace("eediff exits ", "ASE ").replace("eediff sampler, ", "").replace("eediff fast path (bf16, CUDA graphs), ", "fast ")
    for a, b in (("FirstBlockCache threshold", "FBC"), ("(ASE fine-tune)", "tuned"), ("(base weights)", "untuned"), ("full depth", "full"),
                 (" (attn1+ff)", ""), ("TaylorSeer interval ", "TaylorSeer i"), ("TaylorSeer (default identifiers)", "TaylorSeer default (no-op)"),
                 ("PyramidAttentionBroadcast (attention every 2nd step, t in 100..800)", "PAB"), (", schedule B, 14 blocks", " B14"),
                 ("ToMe ratio ", "ToMe "), ("layer skip: last 8 blocks, every step", "layer skip 8"), ("cache-dit DBCache (defaults)", "cache-dit")):
        m = m.replace(a, b)
    return m


def report(part: dict, stem: str) -> None:
    """peers.md (the table) and peers.png (FID against measured speed-up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = {r["runtime"]: r.get("fid") for r in part["rows"] if r["method"].endswith("full depth")}
    lines = [f"# eediff beside diffusers' speed-ups, cache-dit and ToMe ({part['device']})", "",
             f"Shipped Fashion-MNIST DiT, {part['sampler']}, {part['n']} images per row, {part['metric'].upper()} against the test set; "
             f"time = one call of {part['time_batch']} images, median, rows interleaved; speed-up against full depth in the same runtime; "
             "compute = attention + MLP calls run (counted) or analytic FLOPs (eediff sampler rows).", "",
             "| method | runtime | FID | FID / full | compute | time (s) | speed-up |", "|---|---|---|---|---|---|---|"]
    for r in part["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['runtime']} | fails: {r['error']} | | | | |")
            continue
        ratio = r["fid"] / full[r["runtime"]] if full.get(r["runtime"]) else float("nan")
        lines.append(f"| {r['method']} | {r['runtime']} | {r['fid']:.2f} | {ratio:.3f} | {100 * (r.get('compute') or float('nan')):.1f}% | "
                     f"{r['time_s']:.3f} | {r['speedup']:.2f}x |")
    lines += ["", "Commands:", ""] + [f"    {c}" for c in part["commands"]]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    good = [r for r in part["rows"] if "error" not in r and r.get("speedup") is not None]
    full_fid = min(r["fid"] for r in good)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for panel, ax in enumerate(axes):
        rows = good if panel == 0 else [r for r in good if r["fid"] <= 1.12 * full_fid]
        for k, r in enumerate(rows):
            colour = "tab:blue" if "ToMe" in r["method"] else "tab:red" if r["method"].startswith("eediff") else "tab:gray"
            marker = {"diffusers DiTPipeline (fp32)": "o", "eediff sampler (fp32)": "s", "eediff fast path": "^"}.get(r["runtime"], "o")
            ax.scatter(r["speedup"], r["fid"], marker=marker, c=colour, s=40, zorder=3)
            ax.annotate(short_label(r["method"]), (r["speedup"], r["fid"]), fontsize=6.5, xytext=(4, 4 if k % 2 else -9), textcoords="offset points")
        if panel == 0:
            ax.set_yscale("log")
        ax.set_xlabel("measured speed-up vs full depth in the same runtime")
        ax.set_ylabel(part["metric"].upper() + (" (log scale)" if panel == 0 else ""))
        ax.set_title("all rows" if panel == 0 else f"rows within 12% of full depth's {part['metric'].upper()}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"Fashion-MNIST DiT, {part['sampler']}: eediff (red), ToMe (blue), diffusers / cache-dit (gray); "
                 "o diffusers DiTPipeline, s eediff sampler, ^ eediff fast path", fontsize=9)
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=130)


if __name__ == "__main__":
    ap = parser()
    ap.add_argument("--time-batch", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    write(a.out, generate_stage(a) if a.stage == "generate" else fid_stage(a))
