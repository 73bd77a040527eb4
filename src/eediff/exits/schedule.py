"""Time-dependent exit schedules (ASE, Moon et al. 2024, Table 2).

A schedule maps the normalised *original training* timestep t in [0, 1] (t -> 0 is data) to the number of
schedulable blocks that run: all DiT blocks, or U-ViT decoder blocks. Intervals are closed on the left,
[b_i, b_{i+1}), the last one also contains 1. For a discrete model with T = 1000 training steps,
t = index / 1000, so the released code's bins of 100 indices are the intervals [0, 0.1), [0.1, 0.2), ...
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..errors import EediffError


class ScheduleError(EediffError):
    """A malformed or unusable exit schedule; the message is one line naming the problem and the fix."""


@dataclass(frozen=True)
class ExitSchedule:
    name: str
    boundaries: tuple[float, ...]  # b_0 = 0 < b_1 < ... < b_n = 1
    blocks: tuple[int, ...] | None  # one count per interval; None = every block (full depth)
    description: str = ""
    ref_blocks: int | None = None  # presets: the schedulable depth they are defined for (DiT 28, U-ViT 6 decoder blocks)

    def __post_init__(self):
        if self.blocks is None:
            return
        b, k = self.boundaries, self.blocks
        if len(k) == 0:
            raise ScheduleError(f"schedule '{self.name}' is empty: give at least one block count")
        if len(b) != len(k) + 1:
            raise ScheduleError(f"schedule '{self.name}': {len(k)} block counts need {len(k) + 1} boundaries, got {len(b)}")
        for v in b:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v) or math.isinf(v):
                raise ScheduleError(f"schedule '{self.name}': boundary {v!r} is not a finite number")
        if b[0] != 0 or b[-1] != 1:
            raise ScheduleError(f"schedule '{self.name}': intervals must cover [0, 1] (boundaries start at 0 and end at 1, got {b[0]} .. {b[-1]})")
        for lo, hi in zip(b, b[1:]):
            if not lo < hi:
                raise ScheduleError(f"schedule '{self.name}': boundaries must be strictly increasing ({lo} then {hi}: overlapping or unsorted)")
        for v in k:
            if not isinstance(v, int) or isinstance(v, bool):
                raise ScheduleError(f"schedule '{self.name}': block count {v!r} is not an integer")
            if v < 0:
                raise ScheduleError(f"schedule '{self.name}': block count {v} is negative")

    # ---- evaluation -------------------------------------------------------------------------------
    def active_blocks(self, t, num_blocks: int | None = None):
        """Blocks to run at normalised timestep t (float -> int, tensor -> LongTensor).

        ``None`` for the full schedule unless ``num_blocks`` is given.
        """
        if isinstance(t, torch.Tensor):
            if torch.isnan(t).any() or (t < 0).any() or (t > 1).any():
                raise ScheduleError("timesteps must lie in [0, 1] (normalised original training time)")
            if self.blocks is None:
                if num_blocks is None:
                    raise ScheduleError("the full schedule needs num_blocks to return a tensor")
                return torch.full_like(t, num_blocks, dtype=torch.long)
            inner = torch.tensor(self.boundaries[1:-1], dtype=torch.float64, device=t.device)
            idx = torch.bucketize(t.double(), inner, right=True)
            return torch.tensor(self.blocks, device=t.device)[idx]
        t = float(t)
        if math.isnan(t) or not 0.0 <= t <= 1.0:
            raise ScheduleError(f"timestep {t} is outside [0, 1] (normalised original training time)")
        if self.blocks is None:
            return num_blocks
        for hi, k in zip(self.boundaries[1:-1], self.blocks):
            if t < hi:
                return k
        return self.blocks[-1]

    def __call__(self, t, num_blocks: int | None = None):
        return self.active_blocks(t, num_blocks)

    def max_blocks(self) -> int | None:
        return None if self.blocks is None else max(self.blocks)

    def check(self, num_blocks: int, flag: str = "--schedule") -> "ExitSchedule":
        """Raise if the schedule asks for more blocks than a model with ``num_blocks`` schedulable blocks has, or is a
        preset defined for another depth (``flag``: the option its rescaled block counts are suggested for)."""
        if self.blocks is not None and max(self.blocks) == 0:
            raise ScheduleError(f"schedule '{self.name}' runs no block at any t (every count is 0): the output would be the "
                                "head on the embedded input; give block counts >= 1")
        if self.ref_blocks is not None and self.ref_blocks != num_blocks:
            raise ScheduleError(
                f"preset '{self.name}' is defined for {self.ref_blocks} schedulable blocks but the model has {num_blocks}: "
                f"give the block counts yourself, e.g. {flag} '{','.join(str(max(1, round(k * num_blocks / self.ref_blocks))) for k in self.blocks)}'"
            )
        if self.blocks is not None and max(self.blocks) > num_blocks:
            raise ScheduleError(
                f"schedule '{self.name}' runs up to {max(self.blocks)} blocks but the model has {num_blocks} "
                f"schedulable blocks: pick a schedule for this model (see `eediff schedules`)"
            )
        return self
 
    def zero_block_warning(self) -> str | None:
        """A warning when the schedule runs no block at all for part of t (None when it always runs one)."""
        if self.blocks is None or min(self.blocks) > 0:
            return None
        return (f"warning: schedule '{self.name}' runs no block at all for part of t: the output there is the "
                "head on the embedded input")

    def is_full(self, num_blocks: int) -> bool:
        return self.blocks is None or all(k == num_blocks for k in self.blocks)

    def compute_fraction(self, flops_fn, num_blocks: int, timesteps: Iterable[float]) -> float:
        """Mean analytic FLOPs over ``timesteps`` (normalised) relative to full depth.

        ``flops_fn(k)`` is the model's forward FLOP count with k active blocks (blocks and everything outside them).
        """
        ts = list(timesteps)
        full = flops_fn(num_blocks)
        return sum(flops_fn(self.active_blocks(t, num_blocks)) for t in ts) / (len(ts) * full)

    def mean_blocks(self, num_blocks: int, timesteps: Iterable[float]) -> float:
        ts = list(timesteps)
        return sum(self.active_blocks(t, num_blocks) for t in ts) / len(ts)

    def to_spec(self) -> str:
        """A JSON spec that ``get_schedule`` turns back into this schedule (stored in checkpoints)."""
        return json.dumps({"name": self.name, "boundaries": list(self.boundaries), "blocks": None if self.blocks is None else list(self.blocks)})


def _equal(name: str, blocks: Sequence[int], description: str = "", ref_blocks: int | None = None) -> ExitSchedule:
    n = len(blocks)
    return ExitSchedule(name, tuple(i / n for i in range(n + 1)), tuple(blocks), description, ref_blocks)


# Table 2 of the ASE paper. t in [0, 0.2] is next to the data (all blocks), [0.8, 1] next to the noise.
# DiT counts all 28 blocks; U-ViT counts its 6 decoder blocks.
PRESETS: dict[str, ExitSchedule] = {
    s.name: s
    for s in [
        ExitSchedule("full", (0.0, 1.0), None, "every block at every timestep"),
        _equal("D1-DiT", [28, 26, 24, 22, 20], "Table 2 (paper accel. 16.63%)", ref_blocks=28),
        _equal("D3-DiT", [28, 25, 22, 19, 16], "Table 2 (paper accel. 23.43%)", ref_blocks=28),
        _equal("D4-DiT", [28, 24, 20, 16, 12], "Table 2 (paper accel. 30.46%)", ref_blocks=28),
        _equal("D6-DiT", [28, 28, 24, 22, 20, 18, 12, 10, 8, 6], "Table 2, 0.1-wide intervals (paper accel. 38.32%)", ref_blocks=28),
        _equal("D1-U-ViT", [6, 5, 4, 3, 2], "Table 2, decoder blocks (paper accel. 16.26%)", ref_blocks=6),
        _equal("D2-U-ViT", [6, 5, 3, 2, 1], "Table 2, decoder blocks (paper accel. 22.27%)", ref_blocks=6),
        _equal("D3-U-ViT", [6, 4, 3, 2, 1], "Table 2, decoder blocks (paper accel. 24.77%)", ref_blocks=6),
        _equal("D4-U-ViT", [5, 4, 2, 2, 1], "Table 2, decoder blocks (paper accel. 28.03%)", ref_blocks=6),
        _equal("D5-U-ViT", [5, 4, 2, 1, 1], "Table 2, decoder blocks (paper accel. 30.71%)", ref_blocks=6),
        _equal("D6-U-ViT", [5, 3, 2, 1, 1], "Table 2, decoder blocks (paper accel. 32.09%)", ref_blocks=6),
        _equal("demo", [28, 28, 24, 24, 20, 20, 16, 16, 12, 12], "the authors' released schedule, bins of 100 of 0..999", ref_blocks=28),
        # Appendix A.1 gives these two only as a figure; we take D4-DiT's counts and their mirror image.
        _equal("noise-easy", [28, 24, 20, 16, 12], "App. A.1: fewer blocks near the noise (= D4-DiT's counts)", ref_blocks=28),
        _equal("data-easy", [12, 16, 20, 24, 28], "App. A.1: fewer blocks near the data (mirror of noise-easy)", ref_blocks=28),
    ]
}


def _parse_int(tok: str, name: str) -> int:
    tok = tok.strip()
    try:
        v = int(tok)
    except ValueError:
        raise ScheduleError(f"schedule '{name}': '{tok}' is not an integer block count") from None
    return v


def get_schedule(name_or_spec: "str | ExitSchedule | None") -> ExitSchedule:
    """Resolve a preset name, a comma list (equal intervals), a JSON spec or a path to a JSON file.

    JSON: ``{"boundaries": [0, 0.3, 1], "blocks": [28, 16]}`` (optional ``"name"``).
    """
    if isinstance(name_or_spec, ExitSchedule):
        return name_or_spec
    if name_or_spec is None:
        return PRESETS["full"]
    spec = str(name_or_spec).strip()
    if not spec:
        raise ScheduleError("empty schedule: give a preset name (see `eediff schedules`), '28,24,20' or a JSON spec")
    if spec in PRESETS:
        return PRESETS[spec]
    path = None
    if spec.endswith(".json") and not spec.startswith("{"):
        path = spec
        if not os.path.exists(path):
            raise ScheduleError(f"schedule file '{path}' does not exist")
        if not os.path.isfile(path):
            raise ScheduleError(f"schedule file '{path}' is a folder, not a file: give the path of a .json schedule")
        try:
            with open(path, encoding="utf-8") as f:
                spec = f.read().strip()
        except UnicodeDecodeError:
            raise ScheduleError(f"schedule file '{path}' is not UTF-8 text: write the schedule as JSON text") from None
        except OSError as e:
            raise ScheduleError(f"schedule file '{path}' cannot be read ({e.strerror}): check its permissions") from None
        if not spec.startswith("{"):
            raise ScheduleError(f"schedule file '{path}' must hold a JSON object like "
                                '{"boundaries": [0, 0.5, 1], "blocks": [28, 14]}')
    if spec.startswith("{"):
        try:
            d = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ScheduleError(f"schedule JSON does not parse: {e.msg} at column {e.colno}") from None
        if not isinstance(d, dict) or "blocks" not in d:
            raise ScheduleError('schedule JSON needs "blocks" (and "boundaries" unless intervals are equal)')
        blocks = d["blocks"]
        name = str(d.get("name", os.path.basename(path) if path else "custom"))  # a file's schedule is called by its file
        if blocks is None:
            return ExitSchedule(name, (0.0, 1.0), None)
        if not isinstance(blocks, list):
            raise ScheduleError('schedule JSON: "blocks" must be a list of integers')
        if not blocks:
            raise ScheduleError(f"schedule '{name}' is empty: give at least one block count")
        if "boundaries" in d:
            b = d["boundaries"]
            if not isinstance(b, list):
                raise ScheduleError('schedule JSON: "boundaries" must be a list of numbers')
            b = [float("nan") if v is None or isinstance(v, str) and v.lower() == "nan" else v for v in b]
            return ExitSchedule(name, tuple(b), tuple(blocks))
        return _equal(name, blocks)
    if "," in spec or spec.lstrip("-").isdigit():
        toks = [t for t in spec.split(",")]
        if any(not t.strip() for t in toks):
            raise ScheduleError(f"schedule '{spec}' has an empty entry: write counts like '28,24,20,16,12'")
        return _equal(spec, [_parse_int(t, spec) for t in toks])
    raise ScheduleError(
        f"unknown schedule '{spec}': use a preset ({', '.join(PRESETS)}), a list like '28,24,20,16,12' or a JSON spec"
    )


def search_record(spec: str | None) -> dict | None:
    """The ``"search"`` record `eediff search` writes into a schedule file (model, sampler, compute_saving, ...),
    or None for any other spec or a file without one. Read only to tell a user what the schedule was searched for."""
    if not spec or not str(spec).endswith(".json") or not os.path.isfile(spec):
        return None
    try:
        with open(spec, encoding="utf-8") as f:
            rec = json.load(f).get("search")
    except (OSError, ValueError, AttributeError):
        return None
    return rec if isinstance(rec, dict) else None

