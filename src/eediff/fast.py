"""GPU fast path: bf16 weights, compiled blocks (fused LayerNorm + adaLN modulation + gating), one CUDA graph
per (depth, batch shape), no host synchronisation in the sampling loop.

Opt-in and removable::

    handle = apply_fast_path(model, FastPathConfig())
    ...                      # model(x, t, y, active_blocks=k) now replays a CUDA graph for depth k
    handle.remove()          # back to the eager fp32 module, weights restored

Why by hand: torch.compile's own CUDA-graph mode ("reduce-overhead") records one graph per guard set and
re-records on dynamic shapes; keeping our own graph per exit depth makes "a schedule triggers no
recompilation and no graph break" explicit and testable (``handle.stats``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class FastPathConfig:
    dtype: str = "bf16"  # bf16 | fp16 | fp32: weights and activations
    compile: bool = True  # torch.compile each transformer block (one compiled graph shared by all blocks)
    cuda_graphs: bool = True  # capture one CUDA graph per (active_blocks, input shape); CUDA only
    compile_mode: str = "default"  # matmuls stay on cuBLAS; inductor fuses the elementwise work around them


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class FastPathHandle:
    model: torch.nn.Module
    config: FastPathConfig
    original_forward: object
    original_dtype: torch.dtype
    original_state: dict
    graphs: dict = field(default_factory=dict)
    pool: object = None  # one CUDA graph memory pool shared by all depths (graphs never replay concurrently)
    stats: dict = field(default_factory=lambda: {"captures": 0, "replays": 0, "eager_calls": 0})

    def remove(self) -> None:
        """Undo everything: forward, compiled blocks, dtype and the exact original weights."""
        m = self.model
        m.forward = self.original_forward
        for blk in _blocks(m):
            if hasattr(blk, "_compiled_call_impl"):
                blk._compiled_call_impl = None
        m.to(self.original_dtype)
        m.load_state_dict(self.original_state)
        self.graphs.clear()


def _blocks(model):
    for name in ("blocks", "in_blocks", "out_blocks"):
        yield from getattr(model, name, [])
    if getattr(model, "mid_block", None) is not None:
        yield model.mid_block


def apply_fast_path(model: torch.nn.Module, config: FastPathConfig | None = None) -> FastPathHandle:
    config = config or FastPathConfig()
    if config.dtype not in _DTYPES:
        raise ValueError(f"unknown dtype '{config.dtype}': use bf16, fp16 or fp32")
    dtype = _DTYPES[config.dtype]
    p0 = next(model.parameters())
    handle = FastPathHandle(model, config, model.forward, p0.dtype, {k: v.detach().clone() for k, v in model.state_dict().items()})
    model.eval().to(dtype)
    if config.compile:
        # every block shares one compiled graph per input shape; leave room for many shapes (batch sizes, CFG
        # doubling) before dynamo would silently fall back to eager
        dyn = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dyn, name):
                setattr(dyn, name, max(getattr(dyn, name), 64))
        for blk in _blocks(model):
            blk.compile(mode=config.compile_mode, dynamic=False)
    eager_forward = handle.original_forward
    use_graphs = config.cuda_graphs and p0.is_cuda

    def forward(x, t, y=None, active_blocks=None):
        x = x.to(dtype)
        if not use_graphs or torch.is_grad_enabled():
            handle.stats["eager_calls"] += 1
            return eager_forward(x, t, y, active_blocks=active_blocks).float()
        key = (active_blocks, tuple(x.shape), y is None)
        entry = handle.graphs.get(key)
        if entry is None:
            entry = _capture(eager_forward, x, t, y, active_blocks, handle)
            handle.graphs[key] = entry
            handle.stats["captures"] += 1
        graph, sx, st, sy, out = entry
        sx.copy_(x)
        st.copy_(t)
        if sy is not None:
            sy.copy_(y)
        graph.replay()
        handle.stats["replays"] += 1
        return out.to(torch.float32, copy=True)  # always a copy: the static output buffer is reused by the next replay

    model.forward = forward
    return handle


def _capture(fn, x, t, y, k, handle):
    sx, st = x.clone(), t.clone()
    sy = None if y is None else y.clone()
    # warm up on a side stream (compilation, autotuning, cuBLAS workspaces) before recording
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn(sx, st, sy, active_blocks=k)
    torch.cuda.current_stream().wait_stream(s)
    if handle.pool is None:
        handle.pool = torch.cuda.graph_pool_handle()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=handle.pool):
        out = fn(sx, st, sy, active_blocks=k)
    return g, sx, st, sy, out
