"""Loading and saving models safely.

Formats read: eediff safetensors (config, process and tuned schedule in the metadata), official
facebookresearch/DiT ``.pt`` and baofff/U-ViT ``.pth`` state dicts (``torch.load(weights_only=True)``, so a
pickle that carries code is refused), training checkpoints that wrap them (``{"ema": ...}``), and diffusers
``DiTTransformer2DModel`` folders. Writes are atomic (``eediff.io``): a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import torch
from safetensors.torch import save_file

from .diffusion.process import ContinuousVP, DiscreteVP
from .exits import deediff
from .exits.schedule import ExitSchedule, get_schedule
from .errors import EediffError
from .io import CheckpointError, atomic_write, check_finite_tensors, read_safetensors, safe_torch_load, short_reason
from .models import registry

FORMAT = "eediff/1"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    process: object
    tuned_for: ExitSchedule | None = None  # the schedule an ASE fine-tune adapted these weights to
    meta: dict = field(default_factory=dict)
    source: str = ""


def process_to_dict(process) -> dict:
    return asdict(process)


def process_from_dict(d: dict):
    d = dict(d)
    kind = d.pop("kind", "discrete")
    return (ContinuousVP if kind == "continuous" else DiscreteVP)(**d)


def model_metadata(model, process=None, tuned_for: ExitSchedule | None = None, extra: dict | None = None) -> dict:
    process = process or registry.default_process(model)
    meta = {
        "format": FORMAT,
        "arch": model.arch,
        "config": json.dumps(asdict(model.config)),
        "process": json.dumps(process_to_dict(process)),
    }
    if tuned_for is not None and tuned_for.blocks is not None:
        meta["tuned_schedule"] = tuned_for.to_spec()
    heads = deediff.heads_of(model)
    if heads is not None:  # DeeDiff UEMs travel with the weights (uem.*) and their config (threshold included)
        meta["deediff"] = json.dumps(deediff.config_to_meta(heads))
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    return meta


def save_model(path: str, model, process=None, tuned_for=None, dtype: torch.dtype | None = None, extra: dict | None = None) -> None:
    """Weights (optionally cast, e.g. fp16 for shipping) plus everything needed to rebuild the model."""
    sd = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = model_metadata(model, process, tuned_for, extra)
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))


def _fix_for(path: str) -> str:
    """What to do about a broken model file: a shipped one comes with the package, anything else is the user's."""
    from .zoo import HERE, cache_dir

    folder = os.path.dirname(os.path.abspath(path))
    if folder == os.path.abspath(HERE):
        return "the copy shipped inside the package is damaged: reinstall eediff (pip install --force-reinstall eediff)"
    if os.path.dirname(folder) == os.path.abspath(cache_dir()):
        return "it is a shipped model unpacked into the cache: delete it and it is unpacked again on next use"
    return "re-save or replace it (or pass another --model)"


def _read_state_dict(path: str) -> tuple[dict, dict]:
    """(state dict, metadata) from a file, refusing anything unsafe or unreadable with a one-line error."""
    if path.endswith(".safetensors"):
        return read_safetensors(path, _fix_for(path))
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("ema", "model", "state_dict"):  # official training checkpoints wrap the weights
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint '{path}' holds no state dict of tensors: pass a model weights file")
    return obj, {}


def _load_strict(model, sd: dict, path: str) -> None:
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    missing, unexpected = set(model.state_dict()) - set(sd), set(sd) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit {model.arch} ({len(missing)} missing, {len(unexpected)} unexpected "
            f"parameters, e.g. {sorted(missing or unexpected)[0]}): it is a different architecture"
        )
    for k, v in model.state_dict().items():
        if v.shape != sd[k].shape:
            raise CheckpointError(f"checkpoint '{path}': parameter {k} has shape {tuple(sd[k].shape)}, the model expects {tuple(v.shape)}")
    model.load_state_dict(sd, strict=True)


def load_model(path, model_name: str | None = None, **config) -> LoadedModel:
    """Load any supported checkpoint. ``model_name``/``config`` override the inferred architecture.

    ``path`` may also be a module: an eediff backbone (used as it is) or a diffusers ``DiTTransformer2DModel``
    (e.g. ``pipe.transformer``; its weights are converted, the module is left untouched)."""
    if isinstance(path, torch.nn.Module):
        return _load_module(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist: give a file path, a diffusers folder or a model name")
    if os.path.isdir(path):
        return _load_diffusers_folder(path)
    sd, meta = _read_state_dict(path)
    check_finite_tensors(sd, f"checkpoint '{path}'", "its weights are unusable (a diverged run?): " + _fix_for(path))
    tuned = None
    if meta.get("format") == FORMAT:
        model, process, tuned = _from_metadata(path, meta)
    else:
        if model_name is not None:
            model = registry.build_model(model_name, **config)
        else:
            arch = registry.detect_arch(sd)
            inferred = registry._BACKBONES[arch].config_from_state_dict(sd)
            model = registry.model_from_config(arch, {**inferred, **config})
        process = registry.default_process(model)
    _load_strict(model, sd, path)
    model.eval()
    return LoadedModel(model, process, tuned, meta, path)


def _from_metadata(path: str, meta: dict):
    """(model, process, tuned schedule) from eediff safetensors metadata; anything malformed is one line."""
    try:
        model = registry.model_from_config(meta["arch"], json.loads(meta["config"]))
        process = process_from_dict(json.loads(meta["process"]))
        tuned = get_schedule(meta["tuned_schedule"]) if "tuned_schedule" in meta else None
        if "deediff" in meta:
            deediff.apply_deediff(model, deediff.DeeDiffConfig(**json.loads(meta["deediff"])))
    except EediffError as e:
        raise CheckpointError(f"checkpoint '{path}' has unusable eediff metadata ({e}): {_fix_for(path)}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # json.JSONDecodeError is a ValueError
        what = f"no '{e.args[0]}' entry" if isinstance(e, KeyError) else short_reason(e)
        raise CheckpointError(f"checkpoint '{path}' has malformed eediff metadata ({what}): {_fix_for(path)}") from None
    return model, process, tuned


def export_facts(folder: str) -> dict:
    """What an eediff export's ``eediff.json`` says about the model: ``{"num_classes", "time_freq_shift"}``
    (the classes before the label table was widened for DiTPipeline, and the time sinusoid's shift), or {}
    for a folder diffusers wrote."""
    meta = os.path.join(folder, "eediff.json")
    if not os.path.exists(meta):
        return {}
    try:
        with open(meta, encoding="utf-8") as f:
            facts = json.load(f)
        return {"num_classes": facts.get("num_classes"), "time_freq_shift": int(facts.get("time_freq_shift", 1))}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise CheckpointError(f"'{meta}' is unreadable ({short_reason(e)}): export the model again, or delete it") from None


def _load_module(module: torch.nn.Module) -> LoadedModel:
    from .models import dit
    from .models.backbone import Backbone

    if isinstance(module, Backbone):
        return LoadedModel(module, registry.default_process(module), None, {}, f"<{module.arch} module>")
    from diffusers import DiTTransformer2DModel

    if not isinstance(module, DiTTransformer2DModel):
        raise CheckpointError(f"a {type(module).__name__} is not a model eediff can run: pass an eediff DiT/U-ViT or a diffusers DiTTransformer2DModel")
    sd = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
    blocks = getattr(module, "transformer_blocks", None) or [None]  # the time shift the module computes with (1: diffusers')
    proj = getattr(getattr(getattr(blocks[0], "norm1", None), "emb", None), "time_proj", None)
    shift = int(getattr(proj, "downscale_freq_shift", 1))
    config, converted = dit.from_diffusers_state_dict(sd, dict(module.config), getattr(module, "eediff_num_classes", None), shift)
    model = dit.DiT(config)
    _load_strict(model, converted, "<DiTTransformer2DModel module>")
    return LoadedModel(model.eval(), registry.default_process(model), None, {}, "<DiTTransformer2DModel module>")


def _load_diffusers_folder(path: str) -> LoadedModel:
    from .models import dit

    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"folder '{path}' has no config.json: pass a diffusers model folder (e.g. the pipeline's transformer/)")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"'{cfg_path}' is not readable JSON ({short_reason(e)}): fix or replace the diffusers folder") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"'{cfg_path}' must hold a JSON object: fix or replace the diffusers folder")
    if cfg.get("_class_name") != "DiTTransformer2DModel":
        raise CheckpointError(f"folder '{path}' holds a {cfg.get('_class_name')}, not a DiTTransformer2DModel")
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        wpath = os.path.join(path, name)
        if os.path.exists(wpath):
            break
    else:
        raise CheckpointError(f"folder '{path}' has no diffusion_pytorch_model.safetensors")
    sd, _ = _read_state_dict(wpath)
    check_finite_tensors(sd, f"checkpoint '{wpath}'", "its weights are unusable: replace the diffusers folder")
    try:
        config, converted = dit.from_diffusers_state_dict(sd, cfg, **export_facts(path))
    except KeyError as e:
        raise CheckpointError(f"diffusers folder '{path}' lacks '{e.args[0]}' (in config.json or the weights): "
                              "it is incomplete; replace it with a full DiTTransformer2DModel folder") from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        if isinstance(e, EediffError):
            raise
        raise CheckpointError(f"diffusers folder '{path}' has unusable config values ({short_reason(e)}): fix its config.json") from None
    model = dit.DiT(config)
    _load_strict(model, converted, path)
    model.eval()
    return LoadedModel(model, registry.default_process(model), None, {}, path)
