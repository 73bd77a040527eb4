"""The one place that decides how many blocks run.

An exit policy is handed the normalised original training timestep explicitly and returns how many
schedulable blocks the network runs (``None`` = all). Samplers never see it: the denoiser asks the policy
and passes ``active_blocks`` to the network. Per-sample policies (DeeDiff) will implement the same
protocol with a per-layer decision; they fit here without touching samplers or backbones' callers.
"""

from __future__ import annotations

import warnings
from typing import Protocol

from .schedule import ExitSchedule, get_schedule


class ExitPolicy(Protocol):
    def active_blocks(self, t_unit: float) -> int | None: ...


class ScheduledExit:
    """ASE's fixed, time-dependent schedule, validated against the model it drives."""

    def __init__(self, schedule: "ExitSchedule | str", num_blocks: int, tuned_for: "ExitSchedule | None" = None):
        self.schedule = get_schedule(schedule).check(num_blocks)
        self.num_blocks = num_blocks
        if tuned_for is not None and tuned_for.blocks is not None:
            # A checkpoint fine-tuned for a schedule may be much worse at greater depth (measured: FID 27 -> 574).
            probe = [i / 1000 for i in range(1001)]
            deeper = any(self.schedule.active_blocks(t, num_blocks) > tuned_for.active_blocks(t, num_blocks) for t in probe)
            if deeper:
                warnings.warn(
                    f"this checkpoint was fine-tuned for schedule '{tuned_for.name}'; sampling it with the deeper "
                    f"'{self.schedule.name}' usually degrades images: pass --schedule {tuned_for.name}",
                    stacklevel=2,
                )

    def active_blocks(self, t_unit: float) -> int | None:
        k = self.schedule.active_blocks(t_unit, self.num_blocks)
        return None if k == self.num_blocks else k
