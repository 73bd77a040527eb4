"""Token merging (ToMe, Bolya & Hoffman) on self-attention: the baseline both exit methods are compared with.

In each chosen block the patch tokens entering self-attention are merged with tomesd's
``bipartite_soft_matching_random2d`` (r = ratio x patch tokens, dst tokens one per sx x sy cell) and the
attention output is unmerged back to every token; the MLP (and DiT's adaLN) still sees all tokens, as in the
ASE paper's Appendix B. The U-ViT's time and label tokens never merge. ``tomesd.apply_patch`` is not used: it
patches by class name and, on a DiT with default settings, computes a downsample of 2 from the latent size
and merges nothing.

Schedules over the backbone's compute blocks (DiT: all blocks; U-ViT: encoder, mid, decoder): ``F`` the
first ``blocks``, ``R`` the last ``blocks``, ``B`` both ends (half from the front, rounded up, the rest from
the back); ``blocks=0`` means every block.

    handle = apply_tome(model, ToMeConfig(ratio=0.5, schedule="B", blocks=8))
    ...                                # model.flops() now counts the merged tokens
    handle.remove()                    # the attention modules and the FLOP count as before

Order with the other speed-ups: apply ToMe first, then ``apply_fast_path`` (it compiles the blocks with the
merging inside); exit schedules and per-row depths compose with it (a block that does not run merges nothing).
Matching is per row; with ``use_rand`` the dst cells are drawn from the handle's generator once per
attention call, the same for every row of the batch (as tomesd).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .errors import EediffError

SCHEDULES = ("F", "R", "B")


class ToMeError(EediffError):
    """An unusable token-merging option; one-line message."""


@dataclass
class ToMeConfig:
    ratio: float = 0.5  # fraction of the patch tokens merged away before each chosen attention
    schedule: str = "B"  # F (front-most blocks) | R (back-most) | B (both ends)
    blocks: int = 0  # how many compute blocks merge (0 = all)
    sx: int = 2  # dst stride in x (one dst token per sx x sy cell)
    sy: int = 2
    use_rand: bool = False  # random dst inside each cell (tomesd's default for Stable Diffusion); False: top-left
    seed: int = 0  # the generator for use_rand

    def check(self, num_blocks: int, grid: int) -> "ToMeConfig":
        if not 0 <= self.ratio < 1:
            raise ToMeError(f"--tome-ratio must be in [0, 1), got {self.ratio}")
        if self.schedule not in SCHEDULES:
            raise ToMeError(f"unknown --tome-schedule '{self.schedule}': use F (front), R (back) or B (both ends)")
        if not 0 <= self.blocks <= num_blocks:
            raise ToMeError(f"--tome-blocks must be in [0, {num_blocks}] for this model (0 = every block), got {self.blocks}")
        if self.sx < 1 or self.sy < 1 or grid % self.sx or grid % self.sy:
            raise ToMeError(f"ToMe strides {self.sx}x{self.sy} must divide the {grid}x{grid} patch grid")
        return self


def chosen_blocks(cfg: ToMeConfig, num_blocks: int) -> list[int]:
    """Indices of the compute blocks that merge, in order."""
    n = num_blocks if cfg.blocks == 0 else cfg.blocks
    if cfg.schedule == "F":
        return list(range(n))
    if cfg.schedule == "R":
        return list(range(num_blocks - n, num_blocks))
    front = math.ceil(n / 2)
    return sorted(set(range(front)) | set(range(num_blocks - (n - front), num_blocks)))


def merged_count(cfg: ToMeConfig, grid: int) -> int:
    """Patch tokens removed per merging attention: r = ratio x patches, at most the src tokens."""
    patches = grid * grid
    dst = (grid // cfg.sy) * (grid // cfg.sx)
    return min(int(patches * cfg.ratio), patches - dst)


@dataclass
class ToMeHandle:
    model: torch.nn.Module
    config: ToMeConfig
    blocks: list[int]
    wrapped: list = field(default_factory=list)  # attention modules whose forward was wrapped

    def remove(self) -> None:
        for attn in self.wrapped:
            del attn.forward  # back to the class's forward
        self.wrapped.clear()
        self.model.attn_tokens = None
        self.model.tome = None


def apply_tome(model: torch.nn.Module, cfg: ToMeConfig | None = None) -> ToMeHandle:
    from tomesd.merge import bipartite_soft_matching_random2d

    cfg = cfg or ToMeConfig()
    if getattr(model, "tome", None) is not None:
        raise ToMeError("token merging is already applied to this model: remove its handle first")
    attns = model.attentions()
    extras, grid = model.token_layout()
    cfg.check(len(attns), grid)
    blocks = chosen_blocks(cfg, len(attns))
    r = merged_count(cfg, grid)
    handle = ToMeHandle(model, cfg, blocks)
    gen: dict = {}  # one generator per device, for use_rand

    def wrap(attn):
        inner = attn.forward  # the class's forward, bound to this module

        def forward(x: torch.Tensor) -> torch.Tensor:  # (B, extras + L, D)
            if r <= 0:
                return inner(x)
            head, tokens = x[:, :extras], x[:, extras:]  # the time / label tokens never merge
            g = None
            if cfg.use_rand:
                g = gen.setdefault(x.device, torch.Generator(device=x.device).manual_seed(cfg.seed))
            merge, unmerge = bipartite_soft_matching_random2d(tokens, grid, grid, cfg.sx, cfg.sy, r, no_rand=not cfg.use_rand, generator=g)
            out = inner(torch.cat([head, merge(tokens)], dim=1))  # (B, extras + L - r, D)
            return torch.cat([out[:, :extras], unmerge(out[:, extras:])], dim=1)  # (B, extras + L, D)

        attn.forward = forward
        handle.wrapped.append(attn)

    for i in blocks:
        wrap(attns[i])
    N = extras + grid * grid
    model.attn_tokens = [N - r if i in blocks else N for i in range(len(attns))]
    model.tome = cfg
    return handle


def unmerged_flops(model, active_blocks: int | None = None) -> float:
    """The model's FLOPs as if no tokens were merged: the reference a ToMe row's reduction is counted from."""
    saved, model.attn_tokens = getattr(model, "attn_tokens", None), None
    try:
        return model.flops(active_blocks)
    finally:
        model.attn_tokens = saved
