"""eediff: early-exit diffusion transformers (ASE time-dependent exits; DeeDiff to come)."""

from .checkpoint import CheckpointError, LoadedModel, load_model, save_model
from .diffusion import ContinuousVP, Denoiser, DiscreteVP, SamplerConfig, sample_loop
from .exits import ExitSchedule, ScheduledExit, ScheduleError, get_schedule
from .generate import generate, save_grid
from .models.registry import REGISTRY, build_model

__version__ = "0.1.0"

__all__ = [
    "build_model", "REGISTRY", "get_schedule", "ExitSchedule", "ScheduleError", "ScheduledExit",
    "load_model", "save_model", "LoadedModel", "CheckpointError", "generate", "save_grid",
    "SamplerConfig", "sample_loop", "Denoiser", "DiscreteVP", "ContinuousVP",
]
