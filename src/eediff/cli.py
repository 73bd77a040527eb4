"""Command-line interface. Every command's flags are generated from its config dataclass."""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import shlex
import sys
import typing
import warnings
from typing import Callable

import typer

from .config import (
    BenchConfig, CalibrateConfig, EncodeConfig, EvalConfig, ExportConfig, ExportDataConfig, FidConfig, FinetuneConfig, SampleConfig,
    SearchConfig, TrainConfig, autocast_dtype, resolve_device,
)
from .errors import EediffError
from .zoo import resolve_model

app = typer.Typer(add_completion=False, no_args_is_help=True, help="eediff: early-exit diffusion transformers (ASE).")


def _version(value: bool) -> None:
    if value:
        import platform

        import torch

        from . import __version__

        typer.echo(f"eediff {__version__} (torch {torch.__version__}, python {platform.python_version()})")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit")) -> None:
    """eediff: early-exit diffusion transformers (ASE)."""


class UserError(EediffError):
    """Bad input found by the CLI itself: printed as one line, exit code 2."""


def dataclass_command(cfg_cls, name: str, help: str):
    """Register ``fn(cfg)`` as a typer command whose options are exactly ``cfg_cls``'s fields."""

    def decorator(fn: Callable):
        hints = typing.get_type_hints(cfg_cls)
        params = []
        # the command's own options first; a shared group (ToMeOptions) after them, under its own heading
        panels = {f.name: getattr(base, "HELP_PANEL") for base in cfg_cls.__mro__[1:] if dataclasses.is_dataclass(base)
                  and hasattr(base, "HELP_PANEL") for f in dataclasses.fields(base)}
        for f in sorted(dataclasses.fields(cfg_cls), key=lambda f: f.name in panels):
            tp = hints[f.name]
            args = typing.get_args(tp)
            if type(None) in args:  # Optional[X]
                tp = next(a for a in args if a is not type(None))
            elif f.default is None:
                tp = typing.Optional[tp]
            flag = "--" + f.name.replace("_", "-")
            decls = [flag] if tp is not bool else [f"{flag}/--no-{flag[2:]}"]
            if f.metadata.get("short"):
                decls.append(f.metadata["short"])
            decls += list(f.metadata.get("aliases", ()))
            params.append(
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=typer.Option(f.default, *decls, help=f.metadata.get("help", ""), rich_help_panel=panels.get(f.name)),
                    annotation=typing.Optional[tp] if f.default is None else tp,
                )
            )

        def command(**kwargs):
            try:
                fn(cfg_cls(**kwargs))
            except EediffError as e:  # the user's to fix: one line, exit 2; anything else is a bug and keeps its traceback
                _fail(str(e))
            except KeyboardInterrupt as e:  # Ctrl-C: what the command saved is said by the exception (Interrupted)
                typer.secho(f"interrupted: {e}" if str(e) else "interrupted", err=True, fg=typer.colors.RED)
                raise typer.Exit(130) from None

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__ = name.replace("-", "_")
        command.__doc__ = help
        app.command(name=name, help=help)(command)
        return fn

    return decorator


def _error_line(msg: str) -> None:
    typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)


def _fail(msg: str) -> None:
    _error_line(msg)
    raise typer.Exit(2)


def _input_paths(*specs) -> tuple[str, ...]:
    """The files behind model specs (a shipped name or the default model included), for ``_check_output``."""
    from .zoo import SHIPPED, file_of

    out = []
    for spec in specs:
        if spec is None:
            out += [file_of(n) for n in SHIPPED]
        elif spec in SHIPPED:
            out.append(file_of(spec))
        else:
            out.append(spec)
    return tuple(out)


def _check_output(path: str, exts: tuple[str, ...], inputs: tuple = (), overwrite: bool = False, flag: str = "--out") -> None:
    """An output path that cannot destroy an input, replace a file unasked or be written in the wrong format."""
    if os.path.isdir(path):
        raise UserError(f"{flag} '{path}' is a folder: give a file name ending in {' or '.join(exts)}")
    if not path.lower().endswith(exts):
        raise UserError(f"{flag} '{path}' must end in {' or '.join(exts)} (the format follows the extension)")
    for src in inputs:
        if src and os.path.exists(src) and os.path.exists(path) and os.path.samefile(src, path):
            raise UserError(f"{flag} '{path}' is the input '{src}': writing it would destroy it; choose another file")
    if os.path.exists(path) and not overwrite:
        raise UserError(f"{flag} '{path}' already exists: pass --overwrite to replace it, or choose another file")
    _check_writable(os.path.dirname(path), flag, path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):  # made when the file is written: said now, so that a mistyped path does not go unseen
        typer.echo(f"note: {flag}'s folder '{os.path.dirname(path)}' does not exist; it will be created", err=True)


def _check_writable(folder: str, flag: str, path: str) -> None:
    """Refuse, before any work, an output nothing can be written to (a parent that is a file, a read-only folder)."""
    from .io import unwritable

    why = unwritable(folder)
    if why:
        raise UserError(f"{flag} '{path}' cannot be written: {why}; choose another path")


def _check_counts(*flags: tuple[str, int]) -> None:
    """Each (flag, value) a count of at least 1, or a one-line refusal naming the first flag that is not."""
    for flag, value in flags:
        if value < 1:
            raise UserError(f"{flag} {value}: it counts images, steps or runs and must be at least 1")


def _check_number(name: str, value: float, lo: float, hi: float, what: str = "") -> None:
    """A finite number in [lo, hi], or a one-line refusal naming the flag and the range."""
    if not (math.isfinite(value) and lo <= value <= hi):
        raise UserError(f"{name} {value} is not usable: give a finite value in [{lo:g}, {hi:g}]{what}")


def _parse_labels(s: str) -> list[int] | None:
    if not s.strip():
        return None
    try:
        return [int(v) for v in s.split(",")]
    except ValueError:
        raise UserError(f"--class-labels '{s}' must be comma-separated integers") from None


@dataclass_command(SampleConfig, "sample", "Sample an image grid, with an exit schedule, through any sampler.")
def sample_cmd(cfg) -> None:
    import torch

    from .diffusion.sampling import SamplerConfig, SAMPLERS, _scheduler_class
    from .exits.deediff import DeeDiffExit, heads_of
    from .exits.schedule import get_schedule, search_record
    from .data import class_names
    from .generate import generate, save_grid, save_npz

    _check_counts(("-n", cfg.n), ("--batch-size", cfg.batch_size), ("--steps", cfg.steps), ("--compare-repeats", cfg.compare_repeats))
    if not (math.isfinite(cfg.cfg) and 0 <= cfg.cfg <= 100):
        raise UserError(f"--cfg {cfg.cfg} is not a usable guidance scale: give a finite value in [0, 100] (1 = off)")
    if not 0 <= cfg.seed < 2**63 - cfg.n:
        raise UserError(f"--seed {cfg.seed} is out of range: use 0 <= seed < 2**63 - n")
    if cfg.tau is not None and not cfg.tau >= 0:  # NaN fails too; inf (leave at the first block) is allowed
        raise UserError(f"--tau {cfg.tau} is not a threshold: give a number >= 0")
    if cfg.sampler not in SAMPLERS:
        _scheduler_class(cfg.sampler)  # raises a one-line SamplerError for unknown names
    inputs = _input_paths(cfg.model) + (cfg.vae, cfg.schedule)
    _check_output(cfg.out, (".png", ".jpg", ".jpeg"), inputs, cfg.overwrite)
    if cfg.save_npz:
        _check_output(os.path.splitext(cfg.out)[0] + ".npz", (".npz",), inputs, cfg.overwrite, flag="--save-npz")
    if cfg.exit_plot:
        _check_output(cfg.exit_plot, (".png",), inputs + (cfg.out,), cfg.overwrite, flag="--exit-plot")
    device = resolve_device(cfg.device)
    loaded = resolve_model(cfg.model)
    model = loaded.model
    schedule = get_schedule(cfg.schedule) if cfg.schedule is not None else (loaded.tuned_for or get_schedule("full"))
    schedule.check(model.num_exit_blocks)
    if not 0 <= cfg.cfg_channels <= model.in_channels:
        raise UserError(f"--cfg-channels {cfg.cfg_channels}: this model has {model.in_channels} channel{'' if model.in_channels == 1 else 's'} (0 = all of them)")
    grid = getattr(loaded.process, "num_train_timesteps", None) or getattr(loaded.process, "grid_size", None)
    if cfg.sampler != "euler-maruyama" and grid and cfg.steps > grid:
        raise UserError(f"--steps {cfg.steps} is more than the {grid} training timesteps the sampler can use: give at most {grid}")
    if schedule.zero_block_warning():
        typer.echo(schedule.zero_block_warning(), err=True)
    if cfg.latents and cfg.vae is not None:
        raise UserError("--latents writes the undecoded latents and --vae decodes them: pass only one of them")
    if cfg.latents and model.in_channels != 4:
        raise UserError(f"--latents is for latent models (4 input channels); this model samples {model.in_channels}-channel "
                        "images, written as they are: drop --latents")
    vae = None
    if cfg.vae is not None:
        from .io import load_vae

        vae = load_vae(cfg.vae).to(device)
    elif model.in_channels == 4 and not cfg.latents:  # DiT-XL/2, U-ViT-L/2 and -H/2: Stable Diffusion VAE latents
        raise UserError("this is a latent model (4 input channels): pass --vae FOLDER with a diffusers AutoencoderKL, "
                        "or --latents to write the undecoded latents")
    if cfg.tome_config() is not None:  # before sampling (and before any fast path, which would compile it in)
        from .tome import apply_tome

        apply_tome(model, cfg.tome_config())
    policy = None  # per-sample exits when the model carries DeeDiff heads; else the schedule decides
    if heads_of(model) is not None and cfg.deediff:
        policy = DeeDiffExit(model, cfg.tau, cap=schedule if cfg.schedule is not None else None)
    elif cfg.tau is not None:
        raise UserError("--tau is the DeeDiff threshold: this model has no DeeDiff heads (fine-tune it with --method deediff)")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=r"__array__ implementation")
        res = generate(
            model, loaded.process, SamplerConfig(cfg.sampler, cfg.steps), n=cfg.n, batch_size=cfg.batch_size, seed=cfg.seed,
            schedule=schedule, cfg_scale=cfg.cfg, cfg_channels=cfg.cfg_channels or None,
            class_labels=_parse_labels(cfg.class_labels), vae=vae, device=device,
            autocast_dtype=autocast_dtype(cfg.precision, device), tuned_for=loaded.tuned_for, progress=cfg.progress, policy=policy,
        )
    names = class_names(loaded.meta.get("dataset", "")) if cfg.label_grid and not cfg.latents and res.labels is not None else None
    save_grid(res.images[:, :3] if vae is None and cfg.latents else res.images, cfg.out, labels=res.labels if names else None, class_names=names)
    if vae is None and cfg.latents:
        typer.echo(f"note: {cfg.out} shows latent channels 0-2 as RGB, clipped to [-1, 1]: not decoded images")
    if cfg.exit_plot:
        from .eval.plots import save_exit_depths

        save_exit_depths(res.step_depths, model.num_exit_blocks, cfg.exit_plot, unit_time=loaded.process.unit_time,
                         title=f"{os.path.basename(loaded.source)}: {policy.name if policy else schedule.name}, {cfg.sampler} x{cfg.steps}")
    exits = policy if policy is not None else schedule
    compare = cfg.compare_full and (policy is not None or not schedule.is_full(model.num_exit_blocks))
    if cfg.compare_full and not compare:  # said, not skipped in silence: the user asked for a number
        typer.echo("note: --compare-full skipped: this schedule already runs every block, so there is no speed-up to measure", err=True)
    if compare:
        from .eval.evaluate import measure_speed
        from .eval.timing import time_cut

        m = min(cfg.n, cfg.batch_size, 8)
        full = get_schedule("full")
        speed = measure_speed(model, loaded.process, SamplerConfig(cfg.sampler, cfg.steps), [full, exits], batch=m,
                              repeats=cfg.compare_repeats, device=device, autocast=autocast_dtype(cfg.precision, device),
                              cfg_scale=cfg.cfg, vae=vae, warmup=torch.device(device).type == "cuda")  # on the CPU the grid was the warm-up
        t_full, t_s = speed["median_s"][full.name], speed["median_s"][exits.name]
        tc = time_cut(speed["times_s"][exits.name], speed["times_s"][full.name])
    if cfg.save_npz:
        save_npz(res.images, res.labels, os.path.splitext(cfg.out)[0] + ".npz")
    typer.echo(f"model: {loaded.source}  ({model.arch}, {model.num_exit_blocks} schedulable blocks)")
    if policy is not None:
        lo, hi = min(d[2] for d in res.step_depths), max(d[3] for d in res.step_depths)
        typer.echo(f"exits: DeeDiff per sample, tau {policy.tau:g}" + (f", capped by {policy.cap.name}" if policy.cap else "")
                   + f"  sampler: {cfg.sampler} x{cfg.steps}")
        typer.echo(f"layers saved: {100 * res.layers_saved:.1f}% (blocks per row and step: mean {res.mean_blocks:.2f}, range {lo}..{hi})")
    else:
        typer.echo(f"schedule: {schedule.name}  sampler: {cfg.sampler} x{cfg.steps}")
        rec = search_record(cfg.schedule)
        if rec and rec.get("sampler") not in (None, f"{cfg.sampler}-{cfg.steps}") and rec.get("compute_saving") is not None:
            typer.echo(f"note: this schedule was searched for {rec['sampler']} (compute saving {100 * rec['compute_saving']:.1f}%); "
                       f"with {cfg.sampler}-{cfg.steps} its steps fall elsewhere in t and it saves "
                       f"{100 * (1 - res.compute_fraction):.1f}%: search with --sampler {cfg.sampler} --steps {cfg.steps} for this sampler",
                       err=True)
    typer.echo(
        f"mean blocks per step: {res.mean_blocks:.2f} / {res.num_blocks}   compute fraction: {res.compute_fraction:.3f} "
        f"(analytic FLOP reduction {100 * (1 - res.compute_fraction):.1f}%)"
    )
    if cfg.tome_ratio > 0:
        typer.echo(f"token merging: {100 * cfg.tome_ratio:.0f}% of the patch tokens before attention in "
                   f"{cfg.tome_blocks or 'all'} blocks (schedule {cfg.tome_schedule.upper()}); counted in the compute fraction")
    typer.echo(f"wall-clock: {res.seconds:.2f} s for {cfg.n} images ({cfg.n / res.seconds:.2f} images/s, "
               f"{1000 * res.tflops_per_s:.1f} GFLOP/s achieved by the network) on {device}")
    if compare:
        cut, flop_cut, lo, hi = tc["cut_pct"], 100 * (1 - res.compute_fraction), tc["per_run_min_pct"], tc["per_run_max_pct"]
        if not tc["measurable"]:  # the machine's noise is larger than the effect: no number to trust
            typer.echo(f"speed-up vs full depth: not measurable on this machine: the per-run time cuts ({lo:.0f}..{hi:.0f}% "
                       f"over {cfg.compare_repeats} interleaved runs of {m} images) spread wider than their median ({cut:.0f}%); "
                       f"analytic FLOP cut {flop_cut:.1f}%")
        else:
            typer.echo(f"speed-up vs full depth: {cut:.1f}% less time ({t_full:.2f} s -> {t_s:.2f} s for {m} images, "
                       f"median of {cfg.compare_repeats} interleaved runs; per run {lo:.0f}..{hi:.0f}%), "
                       f"analytic FLOP cut {flop_cut:.1f}%")
    written = [cfg.out] + ([os.path.splitext(cfg.out)[0] + ".npz"] if cfg.save_npz else []) + ([cfg.exit_plot] if cfg.exit_plot else [])
    typer.echo(f"wrote {', '.join(written)}")


@app.command("models", help="List the shipped models: name, architecture, exits, size (packed and unpacked).")
def models_cmd(
    path: str = typer.Option(None, "--path", metavar="NAME",
                             help="print the safetensors file of this shipped model (unpacked into the cache first "
                                  "if it is packed), for tools that take a file"),
) -> None:
    from .zoo import SHIPPED, available, info

    if path is not None:
        from .zoo import path as zoo_path

        if path not in SHIPPED or not available(path):
            _fail(f"--path {path!r} is not a shipped model; give one of: {', '.join(n for n in SHIPPED if available(n))}")
        try:
            typer.echo(zoo_path(path))
        except EediffError as e:
            _fail(str(e))
        return
    typer.echo(f"{'name':<22} {'arch':<6} {'last run':>8}  {'exits':<24} {'stored':<39} {'unpacked'}")
    for i, name in enumerate(n for n in SHIPPED if available(n)):
        try:
            r = info(name)
        except EediffError as e:
            _fail(str(e))
        how = "plain" if r["stored"].endswith(".safetensors") else "packed" + (f", delta of {r['delta_of']}" if r["delta_of"] else "")
        cache = "" if how == "plain" else (" (in the cache)" if r["unpacked"] else " (on first use)")
        typer.echo(f"{name + (' *' if i == 0 else ''):<22} {r['arch']:<6} {r['trained_steps'] or '?':>8}  {r['exits']:<24} "
                   f"{r['stored_bytes'] / 1e6:5.2f} MB {how:<30} {r['bytes'] / 1e6:5.2f} MB{cache}")
    typer.echo("* the default of `eediff sample`; last run: the steps of the run that wrote the file (a continued or fine-tuned "
               "model counts only its own; the whole history is in src/eediff/zoo/README.md); use any name as --model or --init")


@app.command("schedules", help="List exit schedules with their mean compute fraction.")
def schedules_cmd(
    model: str = typer.Option(None, help="compute fractions for this model (default: DiT-XL/2 for DiT presets, U-ViT-S/4 (6 decoder blocks) for U-ViT presets)"),
    plot: str = typer.Option(None, help="draw depth vs t for every preset into this PNG"),
    steps: int = typer.Option(1000, help="average over this many uniformly spaced training timesteps"),
    overwrite: bool = typer.Option(False, help="replace --plot if it exists"),
) -> None:
    from .exits.schedule import PRESETS
    from .models.registry import build_model

    try:
        if steps < 1:
            raise UserError("--steps must be at least 1")
        if plot:
            _check_output(plot, (".png",), _input_paths(model) if model else (), overwrite, flag="--plot")
        custom = resolve_model(model).model if model else None
    except EediffError as e:
        _fail(str(e))
    ts = [i / steps for i in range(steps)]
    models = {}
    typer.echo(f"{'schedule':<12} {'model':<12} {'blocks (t: 0 -> 1)':<42} {'mean blocks':>11} {'compute':>8} {'FLOP cut':>8}")
    rows = []
    for name, s in PRESETS.items():
        if custom is not None:
            m = custom
        else:
            ref = "U-ViT-S/4" if "U-ViT" in name else "DiT-XL/2"
            if ref not in models:
                import torch

                with torch.device("meta"):  # only the analytic FLOP count is needed: allocate nothing
                    models[ref] = build_model(ref)
            m = models[ref]
        K = m.num_exit_blocks
        if s.blocks is not None and (max(s.blocks) > K or s.ref_blocks not in (None, K)):
            continue  # a preset defined for another depth
        frac = s.compute_fraction(m.flops, K, ts)
        mb = s.mean_blocks(K, ts)
        blocks = "all" if s.blocks is None else ",".join(map(str, s.blocks))
        label = (model or ("U-ViT-S/4" if "U-ViT" in name else "DiT-XL/2"))[:12]
        typer.echo(f"{name:<12} {label:<12} {blocks:<42} {mb:>11.2f} {frac:>8.3f} {100 * (1 - frac):>7.1f}%")
        rows.append((name, s, K))
    if plot:
        _plot_schedules(rows, plot)
        typer.echo(f"wrote {plot}")


def _plot_schedules(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, s, K in rows:
        ax = axes[1] if "U-ViT" in name else axes[0]
        if s.blocks is None:
            continue
        xs, ys = [], []
        for lo, hi, k in zip(s.boundaries, s.boundaries[1:], s.blocks):
            xs += [lo, hi]
            ys += [k, k]
        ax.plot(xs, ys, label=name)
    axes[0].set(title="DiT (28 blocks)", xlabel="t (0 = data, 1 = noise)", ylabel="blocks run")
    axes[1].set(title="U-ViT (6 decoder blocks)", xlabel="t (0 = data, 1 = noise)", ylabel="decoder blocks run in full")
    for ax in axes:
        if ax.lines:  # with --model only one family's presets fit: the other panel stays empty, without a legend
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---- training, ASE fine-tuning and data (eediff.train) ------------------------------------------------


def _train_or_finetune(cfg, command: str) -> None:
    from .train.loop import run
    from .train.options import changed_fields, explicit_cli_fields, resolve

    explicit = explicit_cli_fields()
    cfg = resolve(cfg, explicit if explicit is not None else changed_fields(cfg))
    summary = run(cfg, command)  # a TrainError is an EediffError: one line, exit 2
    import torch.distributed as dist

    # a multi-process run (accelerate / torchrun) ends its process group itself: gloo's worker threads left to
    # the interpreter's shutdown abort the process ("terminate called without an active exception"). Only
    # after a run that ended normally on every process (run() has passed its last barrier): after an error
    # the other processes may still be in a collective, and tearing down would hang them.
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if summary.final_path:
        loss = "n/a" if summary.last_loss is None else f"{summary.last_loss:.4f}"
        done = summary.step - summary.start_step
        span = f"steps {summary.start_step} -> {summary.step} ({done} this run)" if summary.start_step else f"{done} steps"
        typer.echo(f"{command}: {span} in {summary.seconds:.1f} s, last loss {loss}")
        typer.echo(f"wrote {summary.final_path}  (EMA weights; sample it with: eediff sample --model {summary.final_path})")


@dataclass_command(TrainConfig, "train", "Train a DiT or U-ViT from scratch (resumable; multi-process through accelerate/torchrun).")
def train_cmd(cfg) -> None:
    _train_or_finetune(cfg, "train")


@dataclass_command(FinetuneConfig, "finetune", "ASE fine-tuning (Algorithm 1) of a trained model for an exit schedule.")
def finetune_cmd(cfg) -> None:
    _train_or_finetune(cfg, "finetune")


@dataclass_command(ExportDataConfig, "export-data", "Write a data set as one compressed uint8 .npz (images + labels).")
def export_data_cmd(cfg) -> None:
    from .data import balanced_subset, load_dataset, save_npz

    _check_output(cfg.out, (".npz",), (cfg.dataset,), cfg.overwrite)
    if cfg.per_class < 0:
        raise UserError(f"--per-class {cfg.per_class}: give the number of examples kept of each class (>= 1), or 0 for all")
    data = load_dataset(cfg.dataset, cfg.split, cfg.data_dir, cfg.image_size)
    if cfg.per_class > 0:
        data = balanced_subset(data, cfg.per_class)
    save_npz(data, cfg.out)
    typer.echo(f"wrote {cfg.out}: {len(data)} images {'x'.join(map(str, data.shape))}, {data.num_classes} classes ({os.path.getsize(cfg.out) / 2**20:.1f} MiB)")


@dataclass_command(ExportConfig, "export", "Write an eediff DiT as a diffusers DiTTransformer2DModel folder (early exits via eediff.diffusers).")
def export_cmd(cfg) -> None:
    from .diffusers import save_diffusers

    if not cfg.out:
        raise UserError("--out is required: the diffusers folder to write, e.g. --out exported/transformer")
    loaded = resolve_model(cfg.model)
    if os.path.exists(loaded.source) and os.path.exists(cfg.out) and os.path.samefile(loaded.source, cfg.out):
        raise UserError(f"--out '{cfg.out}' is the input: choose a new folder")
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise UserError(f"--out '{cfg.out}' is a file: give the folder to write the diffusers model to")
    _check_writable(os.path.dirname(os.path.abspath(cfg.out)), "--out", cfg.out)  # the folder is first written beside it
    facts = save_diffusers(loaded, cfg.out, overwrite=cfg.overwrite)
    tuned = f"; tuned for {loaded.tuned_for.name} (exit_schedule.json)" if loaded.tuned_for is not None else ""
    shift = ("" if facts["time_feature_error"] == 0 else
             f"; load it with eediff.diffusers.load_transformer (restores the time shift {facts['time_freq_shift']}; "
             f"a plain from_pretrained differs by up to {facts['time_feature_error']:.2f} in the time features)")
    labels = ("" if facts["num_classes"] >= 1000 else
              f"; its {facts['num_classes']} classes keep labels 0..{facts['num_classes'] - 1}, and label 1000 is the null class "
              "DiTPipeline's guidance passes")
    typer.echo(f"wrote {cfg.out}{tuned}{shift}{labels}")


@dataclass_command(EncodeConfig, "encode", "Encode images with a VAE into latent shards for latent-model training.")
def encode_cmd(cfg) -> None:
    from .train.encode import encode_latents

    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise UserError(f"--out '{cfg.out}' is a file: give the folder the latent shards go to")
    _check_writable(cfg.out, "--out", cfg.out)
    earlier = sorted(f for f in os.listdir(cfg.out) if f.startswith("latents-")) if os.path.isdir(cfg.out) else []
    if earlier and not cfg.overwrite:
        raise UserError(f"--out '{cfg.out}' already holds latent shards ({earlier[0]}, ...): pass --overwrite to replace them, "
                        "or choose another folder")
    res = encode_latents(cfg, progress=True)
    for name in earlier:  # --overwrite: an earlier encode's shards beyond the new ones would be read as data
        if os.path.join(cfg.out, name) not in res["shards"]:
            os.unlink(os.path.join(cfg.out, name))
    typer.echo(f"wrote {res['count']} latents in {len(res['shards'])} shard(s) to {cfg.out} (scaling factor {res['scaling_factor']})")


@dataclass_command(BenchConfig, "bench", "DiT speed: eager vs fast path vs diffusers, exits vs FLOPs, end to end (GPU).")
def bench_cmd(cfg) -> None:
    from .bench import run_bench, write_results

    _check_output(cfg.out, (".json",), (), cfg.overwrite)
    _check_output(cfg.out.rsplit(".", 1)[0] + ".md", (".md",), (), cfg.overwrite, flag="--out (its Markdown table)")
    res = run_bench(cfg, log=typer.echo)
    res["command"] = "eediff bench " + shlex.join(sys.argv[2:])
    write_results(res, cfg.out)
    typer.echo(f"wrote {cfg.out}")


@dataclass_command(CalibrateConfig, "calibrate", "DeeDiff: find the exit threshold tau for a target layer saving and store it with the model.")
def calibrate_cmd(cfg) -> None:
    from .diffusion.sampling import SamplerConfig
    from .eval.calibrate import calibrate, store_tau
    from .zoo import SHIPPED

    if cfg.model is None:
        raise UserError("calibrate needs --model CHECKPOINT (a DeeDiff fine-tune, from `eediff finetune --method deediff`)")
    if cfg.out is None and cfg.model in SHIPPED:
        raise UserError(f"--model {cfg.model} is a shipped model, which is never changed in place: pass --out FILE.safetensors "
                        "for the calibrated copy")
    if cfg.out is None and not cfg.model.endswith(".safetensors"):
        raise UserError(f"--model {cfg.model} is not a .safetensors file, the only kind updated in place: pass --out FILE.safetensors")
    if cfg.out is not None:
        _check_output(cfg.out, (".safetensors",), _input_paths(cfg.model), cfg.overwrite)
    _check_number("--target-saving", cfg.target_saving, 0, 1, " (a fraction of the blocks)")
    _check_number("--cfg", cfg.cfg, 0, 100, " (1 = off)")
    _check_counts(("-n", cfg.n), ("--batch-size", cfg.batch_size), ("--steps", cfg.steps))
    device = resolve_device(cfg.device)
    loaded = resolve_model(cfg.model)
    res = calibrate(loaded.model, loaded.process, SamplerConfig(cfg.sampler, cfg.steps), cfg.target_saving, n=cfg.n,
                    batch_size=cfg.batch_size, seed=cfg.seed, cap=cfg.schedule, cfg_scale=cfg.cfg, device=device,
                    autocast_dtype=autocast_dtype(cfg.precision, device))
    out = cfg.out or cfg.model
    store_tau(loaded.source, out, res["tau"])
    typer.echo(f"tau {res['tau']:.4f}: layer saving {100 * res['recorded_saving']:.1f}% on the recorded full-depth trajectories "
               f"({res['records']} row-evaluations), {100 * res['realised_saving']:.1f}% when sampling with it "
               f"({cfg.sampler} x{cfg.steps}, {cfg.n} images); target {100 * cfg.target_saving:.1f}%")
    typer.echo(f"wrote {out}")


@dataclass_command(EvalConfig, "eval", "FID and measured Accel. of exit schedules vs full depth, paper-table style.")
def eval_cmd(cfg) -> None:
    from .eval.evaluate import run_eval

    inputs = (_input_paths(cfg.model) + ((cfg.baseline,) if cfg.baseline else ()) + (cfg.reference.partition(":")[0], cfg.inception)
              + tuple((cfg.schedules or "").split(";")))  # a schedule file is an input too
    _check_output(cfg.out, (".json",), inputs, cfg.overwrite)
    stem = cfg.out.rsplit(".", 1)[0]
    _check_output(stem + ".md", (".md",), inputs, cfg.overwrite, flag="--out (its Markdown table)")
    _check_output(stem + ".png", (".png",), inputs, cfg.overwrite, flag="--out (its plot)")
    _check_number("--cfg", cfg.cfg, 0, 100, " (1 = off)")
    if cfg.time_repeats < 1 or cfg.time_batch < 0:
        raise UserError("--time-repeats must be at least 1 and --time-batch >= 0 (0 = --batch-size)")
    run_eval(cfg, log=typer.echo)
    typer.echo(f"wrote {cfg.out}, and a .md table and a .png plot next to it")


@dataclass_command(SearchConfig, "search", "Search an exit schedule for a model and sampler: a proxy along full-depth trajectories, its best schedule at each compute.")
def search_cmd(cfg) -> None:
    from .exits.search import run_search

    inputs = _input_paths(cfg.model) + (cfg.adapted, cfg.saving_of, cfg.reference.partition(":")[0], cfg.inception)
    _check_output(cfg.out, (".json",), inputs=inputs, overwrite=cfg.overwrite)
    if cfg.report:
        _check_output(cfg.report, (".json",), inputs=inputs, overwrite=cfg.overwrite, flag="--report")
    if cfg.plot:
        _check_output(cfg.plot, (".png",), inputs=inputs, overwrite=cfg.overwrite, flag="--plot")
    res = run_search(cfg, log=typer.echo)
    best, s = res.best, res.settings
    typer.echo(f"model: {s['model']}  ({s['arch']}, {s['num_blocks']} schedulable blocks)  sampler: {s['sampler']}  "
               f"proxy on {s['n']} images, {len(res.table.t_unit)} steps, {len(res.path)} candidates on the {s['method']} path")
    typer.echo(f"schedule '{s['name']}': {','.join(map(str, best.blocks))} over {s['intervals']} intervals of t (0 -> 1)")
    target = (f"FD ratio at most {cfg.max_fid_ratio:g}" if cfg.max_fid_ratio is not None else
              f"target {100 * s['target_saving']:.1f}%" + (f", the saving of {cfg.saving_of}" if cfg.saving_of else ""))
    typer.echo(f"compute saving: {100 * best.compute_saving:.1f}% of the analytic FLOPs ({target}), proxy {best.proxy:.4g}")
    if res.chosen == 0:
        typer.echo(f"note: no candidate that saves compute keeps the FD ratio at most {cfg.max_fid_ratio:g}: the schedule is full depth")
    if best.fid is not None:
        conf = s["confirmation"]
        typer.echo(f"confirmed: {conf['metric']} {best.fid:.3f} vs {res.path[0].fid:.3f} at full depth (ratio {best.fid_ratio:.3f}) on "
                   f"{conf['n']} held-out images; {len(conf['evaluated'])} candidates evaluated")
    else:
        typer.echo("not confirmed by FID/FD (pass --confirm, or use --max-fid-ratio)")
    if not cfg.adapted:  # measured: the zero-shot proxy can rank schedules the opposite way from their fine-tuned quality
        typer.echo("note: a zero-shot search; for a schedule you will fine-tune, search with --adapted (a copy fine-tuned at every "
                   "depth: eediff finetune --schedule full --depth-sampling uniform)")
    written = [cfg.out] + [p for p in (cfg.report, cfg.plot) if p]
    typer.echo(f"wrote {', '.join(written)}  (use the schedule with: eediff sample --schedule {cfg.out})")


@dataclass_command(FidConfig, "fid", "FID (or the cheap classifier distance) of an image set against a reference data set.")
def fid_cmd(cfg) -> None:
    from .eval.evaluate import run_fid

    value = run_fid(cfg)
    typer.echo(f"{'FID' if cfg.metric == 'fid' else 'FD-FMNIST-Classifier'}: {value:.4f}  ({cfg.images} vs {cfg.reference})")


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr, as the CLI's notes and errors are (not Python's file:line + source)."""
    print(f"warning: {message}", file=file or sys.stderr)


def main() -> None:
    # diffusers' schedulers trip a numpy 2 deprecation on every set_timesteps; it is not ours to fix
    warnings.filterwarnings("ignore", message=r"__array__ implementation")
    warnings.showwarning = _warning_line
    try:
        rc = app(standalone_mode=False)
    except Exception as e:
        # a usage error (unknown flag, bad value) as one line like every other error. typer ships its own copy of click,
        # so its UsageError class is private: it is recognised by the interface every click exception has.
        if type(e).__name__ == "Abort":  # Ctrl-C at a prompt or before a command started
            typer.secho("interrupted", err=True, fg=typer.colors.RED)
            sys.exit(130)
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        if e.format_message():  # (no arguments at all: the help was printed, nothing more to say)
            _error_line(f"{e.format_message()}{hint}")
        sys.exit(e.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
