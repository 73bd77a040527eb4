from .process import ContinuousVP, DiscreteVP, Process
from .sampling import SAMPLERS, Denoiser, SamplerConfig, SamplerError, make_scheduler, sample_loop

__all__ = ["ContinuousVP", "DiscreteVP", "Process", "SAMPLERS", "Denoiser", "SamplerConfig", "SamplerError", "make_scheduler", "sample_loop"]
