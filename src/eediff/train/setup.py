"""Before a run: option checks, the accelerator, and the model a run trains (built from the data's shape)."""

from __future__ import annotations

import dataclasses
import json
import math

import torch

from ..config import ConfigError, TrainBaseConfig, TrainConfig
from ..data import DataError, ImageData
from ..models import registry

# torch.compile modes --compile-mode takes (max-autotune also captures CUDA graphs: reduce-overhead is that choice)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def build_train_model(cfg: TrainConfig, data: ImageData):
    try:
        overrides = json.loads(cfg.model_config or "{}")
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model-config is not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(overrides, dict):
        raise ConfigError("--model-config must be a JSON object of constructor fields")
    if cfg.model is not None:
        if cfg.model not in registry.REGISTRY:
            raise registry.ModelError(f"unknown model '{cfg.model}': choose one of {', '.join(sorted(registry.REGISTRY))}")
        name, arch = cfg.model, registry.REGISTRY[cfg.model][0]
    else:
        name = arch = cfg.arch
    C, H, W = data.shape
    if H != W:
        raise DataError(f"images are {H}x{W}: only square images are supported")
    labelled = data.labels is not None and data.num_classes > 0
    fields = registry.config_for_data(arch, H, C, data.num_classes if labelled else 0, cfg.label_dropout)
    fields.update(overrides)
    torch.manual_seed(cfg.seed)  # initialisation depends on the seed only
    return registry.build_model(name, **fields)


def check_model_data(model, data: ImageData) -> None:
    C, H, _ = data.shape
    if (model.in_channels, model.input_size) != (C, H):
        raise DataError(
            f"the data are {C}x{H}x{H} but the model takes {model.in_channels}x{model.input_size}x{model.input_size}: "
            "pick matching data (--image-size, latents) or model"
        )
    if data.labels is not None and data.num_classes > max(model.num_classes, 1) and model.num_classes > 0:
        raise DataError(f"the data have {data.num_classes} classes but the model only {model.num_classes}")


def make_accelerator(cfg: TrainBaseConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown --device '{cfg.device}': use cpu, cuda or auto")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is visible: use --device cpu")
    cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    if cfg.precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"unknown --precision '{cfg.precision}': use bf16, fp32 or auto")
    mp = "bf16" if cfg.precision == "bf16" or (cfg.precision == "auto" and not cpu) else "no"
    AcceleratorState._reset_state()  # allows several runs (with other precisions) in one Python process
    return Accelerator(cpu=cpu, mixed_precision=mp)


def validate(cfg: TrainBaseConfig, command: str) -> None:
    """Cheap option checks, before any data or model is loaded."""
    if command == "finetune":
        if not cfg.init:
            raise ConfigError("finetune needs --init CHECKPOINT (the trained model to adapt)")
        method = getattr(cfg, "method", "ase")
        if method not in ("ase", "deediff"):
            raise ConfigError(f"unknown --method '{method}': use ase or deediff")
        if method == "ase" and not cfg.schedule:
            raise ConfigError("finetune needs --schedule (e.g. D4-DiT; see `eediff schedules`)")
        if method == "deediff":
            if cfg.schedule not in (None, "full"):
                raise ConfigError("--method deediff trains at full depth: leave out --schedule (an ASE cap is given at sampling, "
                                  "`eediff sample --schedule`)")
            if cfg.deediff_ual not in ("paper", "code"):
                raise ConfigError(f"unknown --deediff-ual '{cfg.deediff_ual}': use paper or code")
            if cfg.deediff_form not in ("paper", "pixel"):
                raise ConfigError(f"unknown --deediff-form '{cfg.deediff_form}': use paper or pixel")
            for flag, v in (("--deediff-lambda", cfg.deediff_lambda), ("--deediff-beta", cfg.deediff_beta)):
                if not (math.isfinite(v) and v >= 0):
                    raise ConfigError(f"{flag} {v}: give a finite weight >= 0")
        w = getattr(cfg, "distill", 0.0)
        if not (math.isfinite(w) and 0 <= w <= 1):
            raise ConfigError(f"--distill {w}: give a weight in [0, 1] (0 = off)")
        if w > 0 and method != "ase":
            raise ConfigError("--distill trains the rows an ASE schedule cuts: it does not combine with --method deediff")
        p = getattr(cfg, "loss_norm", 0.0)
        if not (math.isfinite(p) and 0 <= p <= 1):
            raise ConfigError(f"--loss-norm {p}: give an exponent in [0, 1] (1: every noise level alike, 0 = off)")
        if p > 0 and method != "ase":
            raise ConfigError("--loss-norm weights an ASE fine-tune's loss: it does not combine with --method deediff")
    checks = [
        (cfg.steps >= 1, "--steps must be at least 1"),
        (cfg.batch_size >= 1, "--batch-size must be at least 1"),
        (math.isfinite(cfg.lr) and 0 < cfg.lr <= 1, f"--lr {cfg.lr} is not a usable AdamW learning rate: give a finite value in (0, 1]"),
        (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0, f"--weight-decay {cfg.weight_decay}: give a finite value >= 0"),
        (0 <= cfg.adam_beta1 < 1 and 0 <= cfg.adam_beta2 < 1, "--adam-beta1 and --adam-beta2 must be in [0, 1)"),
        (math.isfinite(cfg.grad_clip) and cfg.grad_clip >= 0, f"--grad-clip {cfg.grad_clip}: give a finite value >= 0 (0 = off)"),
        (0 <= cfg.seed < 2**40, f"--seed {cfg.seed} is out of range: use 0 <= seed < 2**40"),
        (cfg.sample_n >= 1 and cfg.sample_steps >= 1, "--sample-n and --sample-steps must be at least 1"),
        (cfg.lr_schedule in ("constant", "cosine", "auto"), f"unknown --lr-schedule '{cfg.lr_schedule}': use constant, cosine or auto"),
        (0 <= cfg.ema_decay <= 1, "--ema-decay must be in [0, 1]"),
        (math.isfinite(cfg.max_minutes) and cfg.max_minutes >= 0, f"--max-minutes {cfg.max_minutes}: give a finite value >= 0 (0 = no limit)"),
        (cfg.depth_grouping in ("group", "batch"), f"unknown --depth-grouping '{cfg.depth_grouping}': use group or batch"),
        (cfg.depth_sampling in ("schedule", "uniform"), f"unknown --depth-sampling '{cfg.depth_sampling}': use schedule or uniform"),
        (cfg.depth_sampling == "schedule" or getattr(cfg, "method", "ase") == "ase",
         "--depth-sampling uniform trains the exits of an ASE model: it does not combine with --method deediff"),
        (cfg.reweight_unit in ("step", "epoch"), f"unknown --reweight-unit '{cfg.reweight_unit}': use step or epoch"),
        (math.isfinite(cfg.reweight_gamma) and cfg.reweight_gamma >= 0 and (cfg.reweight_cycle or 0) >= 0,
         "--reweight-gamma (finite) and --reweight-cycle must be >= 0"),
        (cfg.data_on_device in ("auto", "yes", "no"), f"unknown --data-on-device '{cfg.data_on_device}': use yes, no or auto"),
        (cfg.log_every >= 1 and cfg.save_every >= 1, "--log-every and --save-every must be at least 1"),
        (cfg.warmup_steps >= 0 and cfg.keep_last >= 1, "--warmup-steps must be >= 0 and --keep-last >= 1"),
        (0 <= cfg.min_lr_ratio <= 1, "--min-lr-ratio must be in [0, 1]"),
        (cfg.eval_every >= 0 and cfg.eval_n >= 2, "--eval-every must be >= 0 and --eval-n at least 2"),
        (cfg.eval_metric in ("fd-classifier", "fid"), f"unknown --eval-metric '{cfg.eval_metric}': use fd-classifier or fid"),
        (math.isfinite(cfg.plateau) and 0 <= cfg.plateau < 1, f"--plateau {cfg.plateau}: give a fraction in [0, 1), e.g. 0.03"),
        (cfg.plateau == 0 or cfg.eval_every > 0, "--plateau needs --eval-every N (the measurements it compares)"),
        (cfg.compile_scope in ("blocks", "model"), f"unknown --compile-scope '{cfg.compile_scope}': use blocks or model"),
        (cfg.compile_mode in COMPILE_MODES, f"unknown --compile-mode '{cfg.compile_mode}': use one of {', '.join(COMPILE_MODES)}"),
        (cfg.compile_mode != "reduce-overhead" or cfg.compile_scope == "model",
         "--compile-mode reduce-overhead captures CUDA graphs of fixed shapes, and compiled blocks see a different row count at "
         "every step: add --compile-scope model (full depth, or an exit schedule with --depth-grouping batch)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    if cfg.eval_every:
        from ..eval.evaluate import parse_sampler

        parse_sampler(cfg.eval_sampler)  # a one-line error for a bad NAME-STEPS or an unknown sampler
    if cfg.vae is not None:  # it decodes the sample grids: refused now, not at the first grid
        from ..io import check_vae_folder

        check_vae_folder(cfg.vae)
    from ..diffusion.sampling import check_sampler_name

    check_sampler_name(cfg.sample_sampler)  # refused now, not after the run when its last grid is drawn


def resolve_auto(cfg: TrainBaseConfig, command: str, model) -> TrainBaseConfig:
    """Resolve the 'auto' / unset options (the result is what config.json records)."""
    changes = {}
    if command == "finetune" and getattr(cfg, "method", "ase") == "deediff" and cfg.schedule is None:
        changes["schedule"] = "full"
    if cfg.reweight_cycle is None:
        changes["reweight_cycle"] = cfg.steps // 2 if command == "finetune" else 0
    if cfg.lr_schedule == "auto":
        changes["lr_schedule"] = registry.default_lr_schedule(model)
    return dataclasses.replace(cfg, **changes)
