"""One forward pass for a batch whose examples have different exit depths.

Sort the batch by depth, deepest first. Then block l has to process exactly the first ``n_l`` rows
(``n_l`` = how many examples run more than l blocks), a prefix of the batch: the network is called once
with ``active_blocks = max depth`` and each schedulable block is made to work on its prefix only, the other
rows taking the path a dropped block takes (DiT: unchanged; U-ViT decoder: only ``skip_linear``, the
block's ``fuse_skip``). Every example therefore sees exactly its scheduled sub-network, as if each depth
group had been run on its own, with one call per block instead of one per block and depth group.

This is done with forward pre-/post-hooks on the blocks, so the model's own ``forward`` stays the single
source of truth for everything around them.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def exit_blocks(model) -> torch.nn.ModuleList | None:
    """The blocks an exit schedule counts (DiT: ``blocks``; U-ViT: decoder ``out_blocks``)."""
    if getattr(model, "arch", None) == "DiT":
        return model.blocks
    if getattr(model, "arch", None) == "U-ViT":
        return model.out_blocks
    return None


@contextmanager
def prefix_rows(blocks: torch.nn.ModuleList, counts: list[int], batch: int):
    """While active, block l runs on rows [:counts[l]] only; the rest skip it (identity, or ``fuse_skip``)."""
    handles = []
    for blk, n in zip(blocks, counts):
        if n >= batch or n <= 0:
            continue
        stash = {}

        def pre(module, args, n=n, stash=stash):
            x, rest = args[0], args[1:]
            skip_fn = getattr(module, "fuse_skip", None)
            tail_args = [a[n:] if isinstance(a, torch.Tensor) else a for a in args]
            stash["tail"] = skip_fn(*tail_args) if skip_fn is not None else x[n:]
            return (x[:n], *[a[:n] if isinstance(a, torch.Tensor) else a for a in rest])

        def post(module, args, out, stash=stash):
            tail = stash.pop("tail")
            return torch.cat([out, tail], dim=0)

        handles.append(blk.register_forward_pre_hook(pre))
        handles.append(blk.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def prefix_counts(depths_desc: list[tuple[int, int]], num_blocks: int) -> list[int]:
    """From (depth, count) groups sorted by depth descending: rows that run block l, for l < num_blocks."""
    return [sum(c for k, c in depths_desc if k > layer) for layer in range(num_blocks)]
