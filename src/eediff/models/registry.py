"""Model registry: official size names -> constructors, and loading of checkpoints in every supported format."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..errors import ModelError
from . import dit

# Each backbone module registers: its size table, its config dataclass and model class, its default
# noise process and learning-rate schedule, how to read a config back from an official state dict, and
# the fields that fit it to a data set.
_BACKBONES: dict[str, Any] = {"DiT": dit}
REGISTRY: dict[str, tuple[str, dict]] = {name: ("DiT", kw) for name, kw in dit.DIT_SIZES.items()}


def register_backbone(arch: str, module, sizes: dict[str, dict]) -> None:
    _BACKBONES[arch] = module
    for name, kw in sizes.items():
        REGISTRY[name] = (arch, kw)


def _config_class(arch: str):
    return _BACKBONES[arch].CONFIG_CLASS


def build_model(name: str, **config) -> torch.nn.Module:
    """``build_model("DiT-XL/2", input_size=32, num_classes=1000)``: official sizes, overridable keywords."""
    if name in _BACKBONES:  # bare architecture name, every keyword given by the caller
        arch, base = name, {}
    elif name in REGISTRY:
        arch, base = REGISTRY[name]
    else:
        raise ModelError(f"unknown model '{name}': choose one of {', '.join(sorted(REGISTRY))}")
    cfg_cls = _config_class(arch)
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = set(config) - fields
    if unknown:
        raise ModelError(f"{name} has no config option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(fields))}")
    return _BACKBONES[arch].MODEL_CLASS(cfg_cls(**{**base, **config}))


def model_from_config(arch: str, config: dict) -> torch.nn.Module:
    if arch not in _BACKBONES:
        raise ModelError(f"unknown architecture '{arch}' in checkpoint metadata")
    return _BACKBONES[arch].MODEL_CLASS(_config_class(arch)(**config))


def default_process(model):
    return _BACKBONES[model.arch].default_process()


def config_for_data(arch: str, image_size: int, channels: int, num_classes: int, label_dropout: float | None) -> dict:
    """Constructor fields that make ``arch`` fit square images of ``channels`` x ``image_size`` with
    ``num_classes`` labels (0 = unlabelled); ``label_dropout`` None = the architecture's default."""
    if arch not in _BACKBONES:
        raise ModelError(f"unknown architecture '{arch}': use one of {', '.join(_BACKBONES)}")
    return _BACKBONES[arch].config_for_data(image_size, channels, num_classes, label_dropout)


def default_lr_schedule(model) -> str:
    return _BACKBONES[model.arch].DEFAULT_LR_SCHEDULE


def detect_arch(sd: dict) -> str:
    for arch, module in _BACKBONES.items():
        if module.owns_state_dict(sd):
            return arch
    raise ModelError("checkpoint is not a DiT or U-ViT state dict (no known parameter names): pass an official or eediff checkpoint")

from . import uvit as _uvit  # noqa: E402
register_backbone("U-ViT", _uvit, _uvit.UVIT_SIZES)
