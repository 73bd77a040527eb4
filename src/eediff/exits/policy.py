"""The one place that decides how many blocks run, per row.

An exit policy is handed the normalised original training time of every row explicitly, as a ``(B,)``
tensor, and returns each row's number of schedulable blocks (a ``(B,)`` long tensor on the same device).
Samplers never see it: the denoiser (sampling) and the trainer (fine-tuning) ask the policy and pass the
result to the network as ``active_blocks``; ``models.backbone.forward`` turns it into block calls. For
timesteps held on the host (every sampler's, and the trainer's) the depths are a host tensor as well, so
deciding depth never waits for the device.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch

from .schedule import ExitSchedule, get_schedule


class ExitPolicy(Protocol):
    num_blocks: int

    def depth(self, t_unit: torch.Tensor) -> torch.Tensor:
        """(B,) normalised training time in [0, 1] -> (B,) blocks to run (long)."""
        ...


class FullDepth:
    """Every block for every row."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks

    def depth(self, t_unit: torch.Tensor) -> torch.Tensor:
        return torch.full(t_unit.shape, self.num_blocks, dtype=torch.long, device=t_unit.device)


class ScheduledExit:
    """ASE's fixed, time-dependent schedule, validated against the model it drives."""

    def __init__(self, schedule: "ExitSchedule | str", num_blocks: int, tuned_for: "ExitSchedule | None" = None):
        self.schedule = get_schedule(schedule).check(num_blocks)
        self.num_blocks = num_blocks
        if tuned_for is not None and tuned_for.blocks is not None:
            # A checkpoint fine-tuned for a schedule may be much worse at greater depth (measured: FID 27 -> 574).
            probe = torch.linspace(0, 1, 1001, dtype=torch.float64)
            if bool((self.depth(probe) > tuned_for.active_blocks(probe, num_blocks)).any()):
                warnings.warn(
                    f"this checkpoint was fine-tuned for schedule '{tuned_for.name}'; sampling it with the deeper "
                    f"'{self.schedule.name}' usually degrades images: pass --schedule {tuned_for.name}",
                    stacklevel=2,
                )

    def depth(self, t_unit: torch.Tensor) -> torch.Tensor:
        return self.schedule.active_blocks(torch.as_tensor(t_unit, dtype=torch.float64), self.num_blocks)


def make_policy(schedule: "ExitSchedule | str | None", num_blocks: int, tuned_for: "ExitSchedule | None" = None) -> ExitPolicy:
    if schedule is None and tuned_for is None:
        return FullDepth(num_blocks)
    return ScheduledExit(schedule, num_blocks, tuned_for)
