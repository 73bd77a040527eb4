"""The backbone interface, and the one forward pass that runs every row of a batch at its own depth.

A backbone (``dit.py``, ``uvit.py``; a third one is one more file) exposes its computation in three parts:

- ``embed(x, t, y) -> Tokens``: everything before the first schedulable block (U-ViT: also its encoder and
  mid block, which always run, leaving the long skips on ``Tokens.skips``);
- ``run_block(i, tokens, n, active=None) -> Tokens``: schedulable block ``i`` on the first ``n`` rows; the
  other rows take the path a dropped block takes (DiT: unchanged; U-ViT decoder: only ``skip_linear``,
  which still consumes its skip). With ``active`` (a ``(n,)`` bool or 0/1 tensor) only the rows marked
  take the block's output: padded row buckets (the fast path) and per-layer exits (DeeDiff) use it.
  Without gradient a backbone may update ``tokens`` in place (the forward pass owns them);
- ``head(tokens)``: the output layer, callable after any number of blocks.

:func:`forward` is the only place that turns ``active_blocks`` into block calls. With an int every row runs
the first k blocks. With a ``(B,)`` tensor the rows are sorted deepest first, so that block l works on a
prefix of ``n_l`` rows (those that run more than l blocks): a row leaves the working batch after its last
block and costs nothing afterwards; the head runs once on all rows and the original order is restored.
The per-layer row counts are read on the host once per call: free for a CPU depth tensor (what the exit
policy returns for host-side timesteps), one transfer for a device tensor; never one per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn as nn


@dataclass
class Tokens:
    """The working state between schedulable blocks."""

    h: torch.Tensor  # (B, N, D) hidden tokens
    c: torch.Tensor | None = None  # (B, D) per-row conditioning (DiT's adaLN input); None when tokens carry it
    skips: tuple[torch.Tensor, ...] = ()  # U-ViT: long skips still to be consumed, the next one last, each (B, N, D)

    def rows(self, index: torch.Tensor) -> "Tokens":
        """The same state with its rows gathered by ``index`` (B',)."""
        return Tokens(self.h[index], None if self.c is None else self.c[index], tuple(s[index] for s in self.skips))


@runtime_checkable
class Backbone(Protocol):
    """What DiT and U-ViT implement; nothing outside a backbone's own file touches its attributes."""

    arch: str  # registry key of the backbone module ("DiT", "U-ViT")
    config: object  # the constructor's dataclass, saved with the weights
    in_channels: int

    @property
    def num_exit_blocks(self) -> int: ...  # schedulable blocks (DiT: all; U-ViT: decoder blocks)

    @property
    def num_classes(self) -> int: ...  # real classes, 0 = unconditional

    @property
    def null_label(self) -> int | None: ...  # the classifier-free-guidance null label, None if the model has none

    @property
    def input_size(self) -> int: ...

    @property
    def learn_sigma(self) -> bool: ...

    def exit_blocks(self) -> Sequence[nn.Module]: ...  # the schedulable blocks, in order

    def compute_blocks(self) -> Sequence[nn.Module]: ...  # every transformer block (what a fast path compiles)

    def time_embedder(self) -> nn.Module: ...

    def set_label_dropout(self, p: float) -> None: ...  # the network's own label dropout in train mode

    def default_label_dropout(self) -> float: ...

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> Tokens: ...

    def run_block(self, i: int, s: Tokens, n: int, active: torch.Tensor | None = None) -> Tokens: ...

    def head(self, s: Tokens) -> torch.Tensor: ...

    def flops(self, active_blocks: int | None = None) -> float: ...


def check_depth(k: int, num_blocks: int, what: str) -> int:
    if not 0 <= k <= num_blocks:
        raise ValueError(f"active_blocks={k} is outside [0, {num_blocks}] for this {what}")
    return k


def row_counts(depth: torch.Tensor, num_blocks: int) -> list[int]:
    """``n_l`` = rows that run block l (depth > l), for l < num_blocks; range-checked. One host read."""
    if depth.dim() != 1 or depth.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
        raise ValueError(f"active_blocks must be an int or a (B,) integer tensor, got {tuple(depth.shape)} {depth.dtype}")
    layers = torch.arange(num_blocks, device=depth.device)
    stats = torch.cat([(depth.unsqueeze(0) > layers.unsqueeze(1)).sum(1), depth.min().view(1), depth.max().view(1)])
    *counts, lo, hi = stats.tolist()
    if lo < 0 or hi > num_blocks:
        raise ValueError(f"active_blocks holds {lo if lo < 0 else hi}, outside [0, {num_blocks}]")
    return counts


def forward(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, active_blocks) -> torch.Tensor:
    """``model``'s output with ``active_blocks`` = None (all), an int, or a ``(B,)`` integer tensor per row."""
    K = model.num_exit_blocks
    B = x.shape[0]
    if active_blocks is None or not isinstance(active_blocks, torch.Tensor):
        k = K if active_blocks is None else check_depth(int(active_blocks), K, model.arch)
        counts = [B] * k + [0] * (K - k)
        order = None
    else:
        if active_blocks.shape != (B,):
            raise ValueError(f"active_blocks has shape {tuple(active_blocks.shape)}; a per-row depth needs ({B},)")
        counts = row_counts(active_blocks, K)
        order = None
        if any(0 < n < B for n in counts):  # depths differ: sort rows deepest first (else this is the int path)
            order = torch.argsort(active_blocks.to(x.device), descending=True, stable=True)
            x, t = x[order], t[order]
            y = None if y is None else y[order]
    s = model.embed(x, t, y)
    for i, n in enumerate(counts):
        s = model.run_block(i, s, n)
    out = model.head(s)
    if order is None:
        return out
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(B, device=order.device)
    return out[inverse]


def prefix_update(h: torch.Tensor, n: int, out: torch.Tensor) -> torch.Tensor:
    """``h`` with its first ``n`` rows replaced by ``out``: in place when no gradient is recorded (the state
    belongs to the forward pass that made it), else out of place so autograd sees every row's path."""
    if n >= h.shape[0]:
        return out
    if not torch.is_grad_enabled():
        h[:n] = out
        return h
    return torch.cat([out, h[n:]])
