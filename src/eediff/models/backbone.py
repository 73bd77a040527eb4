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

import math

import torch
import torch.nn as nn

from ..errors import ModelError


@dataclass
class Tokens:
    """The working state between schedulable blocks."""

    h: torch.Tensor  # (B, N, D) hidden tokens
    c: torch.Tensor | None = None  # (B, D) per-row conditioning (DiT's adaLN input); None when tokens carry it
    skips: tuple[torch.Tensor, ...] = ()  # U-ViT: long skips still to be consumed, the next one last, each (B, N, D)


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

    @property
    def hidden_size(self) -> int: ...  # token width D

    patch_size: int

    def image_tokens(self, s: Tokens) -> torch.Tensor: ...  # (B, L, D): the patch tokens of the state, in patch order

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


def forward(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, active_blocks,
            exits: "RowExits | None" = None, depth_out: torch.Tensor | None = None) -> torch.Tensor:
    """``model``'s output with ``active_blocks`` = None (all), an int, or a ``(B,)`` integer tensor per row.

    ``exits`` (a per-sample exit policy, :class:`RowExits`) is asked after every block about the rows still
    running and lets each leave there (DeeDiff); ``active_blocks`` is then each row's cap. ``depth_out`` (B,)
    receives the blocks each row ran.
    """
    if exits is not None:
        return forward_exits(model, x, t, y, active_blocks, exits, depth_out)
    K = model.num_exit_blocks
    B = x.shape[0]
    if depth_out is not None:
        depth_out.copy_(torch.as_tensor(K if active_blocks is None else active_blocks).expand(B))
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


def depth_states(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, depths: Sequence[int]):
    """``(k, the Tokens the head reads with every row at depth k)`` for each k in ``depths`` (ascending), in one pass.

    The same block calls as :func:`forward` with ``active_blocks=k``, but the blocks run once for all depths (K
    blocks instead of the sum of the depths): after block k a copy of the state takes the dropped blocks' path
    (DiT: nothing; U-ViT: ``skip_linear``). The copies are the caller's to keep."""
    K = model.num_exit_blocks
    want = sorted({check_depth(int(k), K, model.arch) for k in depths})
    if not want:
        return
    B = x.shape[0]
    s = model.embed(x, t, y)
    for i in range(want[-1] + 1):
        if i == want[0]:
            want.pop(0)
            tail = s if i == K else Tokens(s.h.clone(), s.c, s.skips)  # the dropped blocks must not touch the state
            for j in range(i, K):
                tail = model.run_block(j, tail, 0)
            yield i, tail
        if i < K and want:
            s = model.run_block(i, s, B)


def forward_depths(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, depths: Sequence[int]):
    """``(k, model's output with every row at depth k)`` for each k in ``depths`` (ascending): the head on
    :func:`depth_states`, so each output equals :func:`forward`'s with ``active_blocks=k`` bit for bit and the
    blocks run once. What the search's proxy table costs (``exits/search.py``)."""
    for k, s in depth_states(model, x, t, y, depths):
        yield k, model.head(s)


class RowExits(Protocol):
    """A per-sample exit policy as the forward pass sees it."""

    def ctx_width(self) -> int: ...  # columns of the per-row context

    def prepare(self, t: torch.Tensor) -> torch.Tensor: ...  # (B,) network time -> (B, ctx_width) per-row context, once per call

    def exit_after(self, i: int, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor: ...  # (n, L, D), (n, ...) -> (n,) bool


# How many blocks the host runs ahead of the row count it reads back from the device. With 1, the count
# written after block i is read before block i + 2, so block i + 1 is already queued and the GPU does not
# wait for the host; the price is that a row leaving after block i still occupies (masked) its slot in
# block i + 1.
EXIT_LAG = 1


class ExitState:
    """The buffers one exit forward works in; every stage reads and writes them in place, so a runner may
    keep them across calls and replay captured stages (the fast path's CUDA graphs)."""

    def __init__(self, model, x, t, y, cap, ctx):
        B, K = x.shape[0], model.num_exit_blocks
        self.x, self.t, self.cap = x.clone(), t.clone(), cap.clone()
        self.y = None if y is None else y.clone()
        s = model.embed(x, t, y)  # shapes of the working state
        self.h = torch.empty_like(s.h)
        self.c = None if s.c is None else torch.empty_like(s.c)
        self.skips = tuple(torch.empty_like(v) for v in s.skips)
        self.ctx = torch.empty_like(ctx)
        self.stop = torch.empty(B, dtype=torch.long, device=x.device)  # blocks each row runs (its cap until it leaves)
        self.index = torch.empty_like(self.stop)  # working position -> original row
        self.counts = torch.zeros(K, dtype=torch.long, device=x.device)  # rows still running after block i
        self.out = None

    def load(self, x, t, y, cap) -> None:
        self.x.copy_(x)
        self.t.copy_(t)
        self.cap.copy_(cap)
        if self.y is not None:
            self.y.copy_(y)

    def tokens(self, consumed: int = 0) -> Tokens:
        return Tokens(self.h, self.c, self.skips[: len(self.skips) - consumed])

    def mutable(self) -> list:
        return [v for v in (self.h, self.c, *self.skips, self.ctx, self.stop, self.index, self.counts) if v is not None]


def _embed_stage(model, exits, st: ExitState) -> bool:
    order = torch.argsort(st.cap, descending=True, stable=True)
    st.index.copy_(order)
    st.stop.copy_(st.cap[order])
    store_tokens(st, model.embed(st.x[order], st.t[order], None if st.y is None else st.y[order]))
    st.ctx.copy_(exits.prepare(st.t[order]))
    return True


def store_tokens(st, s: Tokens) -> None:
    """Copy a state into the static buffers ``st.h``, ``st.c``, ``st.skips`` (kept across calls)."""
    st.h.copy_(s.h)
    if st.c is not None:
        st.c.copy_(s.c)
    for buf, v in zip(st.skips, s.skips):
        buf.copy_(v)


def _block_stage(model, exits, st: ExitState, i: int, n: int) -> bool:
    act = st.stop[:n] > i  # (n,) rows that run block i
    s = st.tokens(consumed=i)
    new = model.run_block(i, s, n, act)
    if new.h is not st.h:  # a backbone that did not update in place (U-ViT's fused skips)
        st.h.copy_(new.h)
    if i < model.num_exit_blocks - 1 and n > 0:
        leave = exits.exit_after(i, model.image_tokens(st.tokens())[:n], st.ctx[:n]) & act  # (n,) bool, on the device
        st.stop[:n] = torch.where(leave, i + 1, st.stop[:n])
        st.counts[i] = (st.stop[:n] > i + 1).sum()
    return True


def _reorder_stage(st: ExitState, i: int, n: int) -> bool:
    """The rows still running before block i to the front of the first n (stable: caps stay sorted)."""
    perm = torch.argsort((st.stop[:n] <= i).to(torch.int8), stable=True)
    for v in (st.h, st.c, *st.skips, st.stop, st.index, st.ctx):
        if v is not None:
            v[:n] = v[:n][perm]
    return True


def _head_stage(model, st: ExitState) -> bool:
    out = model.head(st.tokens(consumed=len(st.skips)))
    st.out = torch.empty_like(out)
    st.out[st.index] = out
    return True


class EagerStages:
    """Runs every stage as it comes, on buffers made for this call."""

    def state(self, model, x, t, y, cap, ctx) -> ExitState:
        return ExitState(model, x, t, y, cap, ctx)

    def run(self, key, fn, st: ExitState) -> None:
        fn()


def forward_exits(model, x, t, y, cap, exits: "RowExits", depth_out, stages=None) -> torch.Tensor:
    """Rows leave the working batch after the first block at which ``exits`` says so.

    Decisions stay on the device: every row carries ``stop``, the number of blocks it runs (its cap until it
    leaves); block i works on the rows with ``stop > i`` (the others masked), and the working prefix shrinks
    when the host learns the surviving count, ``EXIT_LAG`` blocks later (a non-blocking copy, no wait for
    the GPU to drain); the rows still running are then moved to the front (one gather), once enough have
    left to pay for it (1/16 of the working rows). ``stages`` runs the stages (default: eagerly); the fast
    path passes one that captures each (stage, rows) as a CUDA graph and replays it.
    """
    if torch.is_grad_enabled():
        raise ValueError("per-row exits are for inference: call the model under torch.no_grad()")
    stages = stages or EagerStages()
    K, B, dev = model.num_exit_blocks, x.shape[0], x.device
    g = max(1, int(getattr(exits, "row_bucket", 1)))  # working rows rounded up to a multiple of g (compiled blocks: few shapes)
    up = lambda v: min(B, -(-v // g) * g)  # noqa: E731
    cap = torch.full((B,), K, dtype=torch.long) if cap is None else torch.as_tensor(cap, dtype=torch.long).expand(B)
    bound = [up(v) for v in row_counts(cap, K)]  # host: rows whose cap allows block l (rounded up: the rest are masked)
    cap = cap.to(dev)
    st = stages.state(model, x, t, y, cap, torch.empty(B, exits.ctx_width(), device=dev))
    st.load(x, t, y, cap)
    stages.run(("embed",), lambda: _embed_stage(model, exits, st), st)
    cuda = dev.type == "cuda"
    lag = EXIT_LAG if cuda else 0
    host = torch.empty(K, dtype=torch.long, pin_memory=True) if cuda else None
    pending: list = []  # (block, event) of the surviving counts not read yet
    n = B
    for i in range(K):
        while pending and pending[0][0] <= i - 1 - lag:  # a surviving count the device has written by now
            j, event = pending.pop(0)
            if event is not None:
                event.synchronize()
            c = up(int(host[j]) if cuda else int(st.counts[j]))
            if n - c >= max(1, n // 16):  # move the rows still running to the front, then work on them only
                stages.run(("reorder", i, n), lambda i=i, n=n: _reorder_stage(st, i, n), st)
                n = c
        n = min(n, bound[i])
        if n == 0 and not st.skips:
            break
        stages.run(("block", i, n), lambda i=i, n=n: _block_stage(model, exits, st, i, n), st)
        if i < K - 1 and n > 0:
            if cuda:
                host[i].copy_(st.counts[i], non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                pending.append((i, event))
            else:
                pending.append((i, None))
    stages.run(("head",), lambda: _head_stage(model, st), st)
    if depth_out is not None:
        ran = torch.empty_like(st.stop)
        ran[st.index] = st.stop
        depth_out.copy_(ran)
    return st.out.clone()


def prefix_update(h: torch.Tensor, n: int, out: torch.Tensor) -> torch.Tensor:
    """``h`` with its first ``n`` rows replaced by ``out``: in place when no gradient is recorded (the state
    belongs to the forward pass that made it), else out of place so autograd sees every row's path."""
    if n >= h.shape[0]:
        return out
    if not torch.is_grad_enabled():
        h[:n] = out
        return h
    return torch.cat([out, h[n:]])


def check_config(cfg, ints: dict[str, int], divisible: Sequence[tuple[str, str]] = (), positive: Sequence[str] = ()) -> None:
    """One-line ModelError for a constructor config that cannot build a network: ``ints`` maps integer fields to
    their minimum, ``divisible`` lists (a, b) where field a must be a multiple of field b (or of an int b),
    ``positive`` finite numbers > 0."""
    name = type(cfg).__name__
    for f, lo in ints.items():
        v = getattr(cfg, f)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ModelError(f"{name}: {f} = {v!r} must be an integer >= {lo}: fix the model config (--model-config)")
    for f in positive:
        v = getattr(cfg, f)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ModelError(f"{name}: {f} = {v!r} must be a finite number > 0: fix the model config (--model-config)")
    for a, b in divisible:
        va, vb = getattr(cfg, a), (b if isinstance(b, int) else getattr(cfg, b))
        if va % vb:
            by = b if isinstance(b, int) else f"{b} = {vb}"
            raise ModelError(f"{name}: {a} = {va} is not a multiple of {by}: fix the model config (--model-config)")
