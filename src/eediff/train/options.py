"""Resolving a run's options: defaults, then the run's saved config (on --resume), then --config FILE,
then the flags actually typed on the command line."""

from __future__ import annotations

import dataclasses
import json
import os
import typing

from ..config import ConfigError

# Options of one invocation, never read from or written to a run's config.json.
PER_INVOCATION = ("config", "resume", "resume_from", "overwrite")

# What --resume may change: the optimiser's hyper-parameters and the run's bookkeeping. Everything else
# (model, data and their order, seed, schedule, objective) defines what the checkpoint's state means, and a
# change would make the continued run no longer the one that was checkpointed.
SAFE_ON_RESUME = frozenset({
    "steps", "lr", "lr_schedule", "warmup_steps", "min_lr_ratio", "weight_decay", "adam_beta1", "adam_beta2", "grad_clip",
    "ema_decay", "max_minutes", "save_every", "keep_last", "log_every", "sample_every", "sample_n", "sample_sampler",
    "sample_steps", "vae", "export_fp16", "progress", "device", "precision", "compile", "compile_scope", "compile_mode", "data_on_device", "data_dir", "out",
    "eval_every", "eval_n", "eval_metric", "eval_reference", "eval_sampler", "inception", "eval_cache_dir", "plateau",
})


def _coerce(name: str, tp, value):
    args = typing.get_args(tp)
    if type(None) in args:
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
    if value is None:
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"option '{name}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"option '{name}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"option '{name}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):  # e.g. model_config given as a JSON object in the file
            return json.dumps(value)
        if not isinstance(value, str):
            raise ConfigError(f"option '{name}' must be a string, got {value!r}")
        return value
    return value


def read_options_file(path: str, cfg_cls) -> dict:
    if not os.path.exists(path):
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file '{path}' is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a JSON object of option values")
    hints = typing.get_type_hints(cfg_cls)
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    out = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in names:
            raise ConfigError(f"config file '{path}': unknown option '{key}' for this command")
        if name in PER_INVOCATION:
            continue
        out[name] = _coerce(name, hints[name], value)
    return out


def _run_of_other_command(path: str, cls) -> str | None:
    """"train" or "finetune" when the run folder's saved options fit that command and not ``cls`` (a resume
    pointed at the other command's run), else None (a file that fits neither is left to read_options_file)."""
    from ..config import FinetuneConfig, TrainConfig

    try:
        with open(path) as f:
            keys = {k.replace("-", "_") for k in json.load(f)}
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    for name, other in (("train", TrainConfig), ("finetune", FinetuneConfig)):
        fits = keys <= {f.name for f in dataclasses.fields(other)}
        if other is not cls and fits and not keys <= {f.name for f in dataclasses.fields(cls)}:
            return name
    return None


def resolve(cfg, explicit: set[str] | None = None):
    """The effective config. ``explicit`` = the fields given on the command line (None: all of them).

    Order (later wins): the dataclass defaults; the run directory's config.json when resuming; --config FILE;
    explicit flags. ``out`` and ``resume`` always come from the command line.
    """
    cls = type(cfg)
    given = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)}
    if explicit is None:
        explicit = set(given)
    values = {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
    if cfg.config is not None:  # the file may name the run directory
        file_values = read_options_file(cfg.config, cls)
    else:
        file_values = {}
    out_dir = given["out"] if "out" in explicit or "out" not in file_values else file_values["out"]
    saved = os.path.join(out_dir, "config.json")
    resume = given["resume"] or given["resume_from"] is not None
    if resume and os.path.isfile(saved):
        other = _run_of_other_command(saved, cls)
        if other:
            raise ConfigError(f"'{out_dir}' holds an `eediff {other}` run: resume it with `eediff {other} --out {out_dir} --resume`, "
                              "or give this command another --out")
        values.update(read_options_file(saved, cls))
    values.update(file_values)
    values.update({k: v for k, v in given.items() if k in explicit})
    values["out"] = out_dir
    values.update({k: given[k] for k in PER_INVOCATION})
    values["resume"] = resume
    return cls(**values)


def _same(name: str, a, b) -> bool:
    if name == "model_config" and isinstance(a, str) and isinstance(b, str):
        try:
            return json.loads(a or "{}") == json.loads(b or "{}")
        except json.JSONDecodeError:
            return a == b
    return a == b


def resume_changes(cfg, saved: dict) -> tuple[list[str], list[str]]:
    """(refused, allowed): the options of ``cfg`` that differ from a run's saved config.json, as 'name old -> new'
    text; refused ones would break the exact continuation of the run (see SAFE_ON_RESUME)."""
    refused, allowed = [], []
    for f in dataclasses.fields(cfg):
        if f.name in PER_INVOCATION or f.name not in saved:
            continue
        new, old = getattr(cfg, f.name), saved[f.name]
        if new is None or new == "auto" or _same(f.name, new, old):  # unset or 'auto': what the run recorded
            continue
        text = f"--{f.name.replace('_', '-')} {old} -> {new}"
        (allowed if f.name in SAFE_ON_RESUME else refused).append(text)
    return refused, allowed


def explicit_cli_fields() -> set[str] | None:
    """Names of the options typed on the command line of the running click command (None outside click).

    typer >= 0.20 carries its own copy of click (``typer._click``, whose ``get_current_context`` lives in
    ``typer._click.globals``); older ones use click itself.
    """
    import importlib

    for pkg in ("typer._click", "click"):
        try:
            ctx = importlib.import_module(pkg + ".globals").get_current_context(silent=True)
            source = importlib.import_module(pkg + ".core").ParameterSource
        except (ImportError, AttributeError):
            continue
        if ctx is not None:
            defaults = (source.DEFAULT, source.DEFAULT_MAP)
            return {name for name in ctx.params if ctx.get_parameter_source(name) not in defaults}
    return None


def changed_fields(cfg) -> set[str]:
    """Fallback for ``explicit``: the fields whose value differs from the dataclass default."""
    ref = type(cfg)()
    return {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(ref, f.name)}


def to_json(cfg) -> dict:
    d = dataclasses.asdict(cfg)
    for k in PER_INVOCATION:
        d.pop(k, None)
    return d
