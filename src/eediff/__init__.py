"""eediff: early-exit diffusion transformers (ASE time-dependent exits, DeeDiff per-sample exits, ToMe baseline).

The backbones (``eediff.models``, and ``eediff.checkpoint`` that builds them) are imported on first use of
the names that need them, so that e.g. ``import eediff.eval.fid`` or ``eediff.data`` does not load them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .diffusion import ContinuousVP, Denoiser, DiscreteVP, SamplerConfig, sample_loop
from .exits import ExitSchedule, ScheduledExit, ScheduleError, get_schedule
from .exits.policy import FullDepth, make_policy
from .generate import generate, save_grid
from .io import CheckpointError

__version__ = "0.1.0"

# names that need the backbones -> the module that defines them (imported on first access)
_LAZY = {
    "LoadedModel": ".checkpoint", "load_model": ".checkpoint", "save_model": ".checkpoint",
    "REGISTRY": ".models.registry", "build_model": ".models.registry",
    "apply_fast_path": ".fast", "FastPathConfig": ".fast",
    "apply_tome": ".tome", "ToMeConfig": ".tome",
    "EEDiffPipeline": ".pipeline", "EEDiffPipelineOutput": ".pipeline",
    "apply_deediff": ".exits.deediff", "DeeDiffConfig": ".exits.deediff", "DeeDiffExit": ".exits.deediff",
}
_LAZY_SUBMODULES = ("checkpoint", "models", "diffusers")  # `import eediff` used to load them: still reachable as attributes

if TYPE_CHECKING:
    from .checkpoint import LoadedModel, load_model, save_model
    from .exits.deediff import DeeDiffConfig, DeeDiffExit, apply_deediff
    from .fast import FastPathConfig, apply_fast_path
    from .models.registry import REGISTRY, build_model
    from .pipeline import EEDiffPipeline, EEDiffPipelineOutput
    from .tome import ToMeConfig, apply_tome

__all__ = [
    "build_model", "REGISTRY", "get_schedule", "ExitSchedule", "ScheduleError", "ScheduledExit",
    "load_model", "save_model", "LoadedModel", "CheckpointError", "generate", "save_grid",
    "SamplerConfig", "sample_loop", "Denoiser", "DiscreteVP", "ContinuousVP", "make_policy", "FullDepth",
    "EEDiffPipeline", "EEDiffPipelineOutput", "apply_fast_path", "FastPathConfig", "apply_tome", "ToMeConfig", "apply_deediff", "DeeDiffConfig", "DeeDiffExit",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name in _LAZY_SUBMODULES:
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_SUBMODULES))
