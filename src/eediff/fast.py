"""GPU fast path: bf16 weights, compiled blocks (fused LayerNorm + adaLN modulation + gating), CUDA graphs,
no host synchronisation in the sampling loop; for one depth per call and for a depth per row.

Opt-in and removable::

    handle = apply_fast_path(model, FastPathConfig())
    ...                      # model(x, t, y, active_blocks=k) replays a CUDA graph for depth k;
    ...                      # model(x, t, y, active_blocks=depths) with a (B,) tensor runs each row at its own depth
    handle.remove()          # back to the eager fp32 module, weights restored

What runs inside each block is ``config.kernels`` (``kernels.py``): the blocks as written under inductor, or
a fused DiT block (Triton row kernels, cuDNN attention, GELU in the GEMM epilogue), in bf16 or with fp8 GEMMs.

One depth for the whole batch: one CUDA graph per (depth, input shape), the whole forward in one replay.

A depth per row (``backbone.forward`` semantics, same result up to bf16 rounding): the rows are sorted
deepest first on the device, and block ``i`` runs on the first ``b_i`` rows, where ``b_i`` is the number of
rows that still run it rounded up to a multiple of ``row_bucket``; the padded rows inside a bucket are held
unchanged by the backbone's ``active`` mask (DiT: zeroed residual gates, no extra pass over the tokens; the
blocks update the static token buffer in place). The forward is a chain of CUDA graphs on static buffers
(embed + sort + every block's mask; one graph per run of consecutive blocks on the same bucket; head +
unsort), so a new mix of depths mostly replays existing graphs, and the compiled block sees at most
``B / row_bucket`` shapes. The row counts come from the depth tensor once
per call (no transfer at all for a host tensor, which is what the exit policies return).

Why by hand: torch.compile's own CUDA-graph mode ("reduce-overhead") records one graph per guard set and
re-records on dynamic shapes; keeping our own graphs per exit depth and per (block, bucket) makes "a
schedule triggers no recompilation and no graph break" explicit and testable (``handle.stats``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .kernels import SMOOTH_GEMMS, KernelHandle, apply_kernels, check_batched_adaln, check_fp8_smooth, check_kernel_options
from .models.backbone import ExitState, Tokens, forward_exits, row_counts, store_tokens


@dataclass
class FastPathConfig:
    dtype: str = "bf16"  # bf16 | fp16 | fp32: weights and activations
    compile: bool = True  # torch.compile each transformer block (one compiled graph shared by all blocks)
    cuda_graphs: bool = True  # CUDA graphs: one per (depth, input shape); per-row depths: one per (block, bucket); CUDA only
    compile_mode: str = "default"  # matmuls stay on cuBLAS; inductor fuses the elementwise work around them
    row_bucket: int = 8  # per-row depths: a block's rows are padded up to a multiple of this (few shapes, few graphs)
    kernels: str = "inductor"  # inductor | fused (GELU in the GEMM epilogue) | fp8 (row-wise fp8 GEMMs): kernels.py
    attention: str = "cudnn"  # fused / fp8 DiT blocks: cudnn | sdpa (SDPA's own choice, flash on Hopper)
    fp8_gemms: tuple = ("qkv", "proj", "fc1", "fc2")  # kernels="fp8": which of a DiT block's token GEMMs run in fp8
    batched_adaln: bool = False  # DiT: every block's adaLN projection in one GEMM per forward (kernels.batch_adaln)
    fp8_fast_accum: bool = False  # kernels="fp8": the GEMMs' fast accumulation mode (faster, less precise; kernels.apply_kernels)
    # kernels="fp8": kernels.fp8_input_means' calibration of this model (Linear name -> mean input); the fp8 GEMMs'
    # biases then cancel their weights' rounding on that mean (bias correction; None: off)
    fp8_input_means: dict | None = field(default=None, repr=False)
    # kernels="fp8", DiT blocks: kernels.fp8_input_amax's calibration of this model (Linear name -> (in_features,)
    # input maxima); the fp8 GEMMs in fp8_smooth_gemms then run on SmoothQuant-balanced operands (x / s) @ (W diag(s))^T,
    # s = amax_x^alpha / amax_w^(1 - alpha), 1/s folded into the modulation / qkv's v rows / the GELU + quantise pass
    # (kernels.smooth_dit_block; None: off)
    fp8_smooth: dict | None = field(default=None, repr=False)
    fp8_smooth_alpha: float = 0.5  # in [0, 1]: the share of the activations' channel spread moved into the weights
    fp8_smooth_gemms: tuple = SMOOTH_GEMMS  # which fp8 GEMMs fp8_smooth balances (default: qkv, proj, fc1, the measured best)
    # kernels="fp8", DiT blocks: "rows" (fc1, a GELU + row-quantise pass, fc2) or "epilogue" (GELU + per-128-column
    # quantisation in fc1's epilogue, fc2 on those group scales: triton_gemm.py); kernels.FP8_MLP
    fp8_mlp: str = "rows"
    row_kernels: str = "triton"  # (measured faster than inductor's, results/kernel_variants_h200.md) fused / fp8 DiT blocks' LayerNorm, residual and quantise passes: triton | inductor


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class FastPathHandle:
    model: torch.nn.Module
    config: FastPathConfig
    original_forward: object
    original_dtype: torch.dtype
    original_state: dict
    graphs: dict = field(default_factory=dict)  # (depth, shape, y is None) -> whole-forward graph
    row_states: dict = field(default_factory=dict)  # (shape, y is None) -> _RowState (per-row graphs and buffers)
    pool: object = None  # one CUDA graph memory pool shared by all graphs (they never replay concurrently)
    exit_states: dict = field(default_factory=dict)  # (shape, y is None, policy) -> ExitState with its stage graphs
    stats: dict = field(default_factory=lambda: {"captures": 0, "replays": 0, "eager_calls": 0, "row_calls": 0, "exit_calls": 0})
    kernels: KernelHandle | None = None  # the blocks' kernel overrides (kernels.py)

    def remove(self) -> None:
        """Undo everything: forward, compiled blocks, dtype and the exact original weights."""
        m = self.model
        m.forward = self.original_forward
        if self.kernels is not None:
            self.kernels.remove()
        for blk in m.compute_blocks():
            if hasattr(blk, "_compiled_call_impl"):
                blk._compiled_call_impl = None
        m.to(self.original_dtype)
        m.load_state_dict(self.original_state)
        self.graphs.clear()
        self.row_states.clear()
        self.exit_states.clear()

    def graph_count(self) -> int:
        states = [*self.row_states.values(), *self.exit_states.values()]
        return len(self.graphs) + sum(len([g for g in st.graphs.values() if g is not None]) for st in states)


def apply_fast_path(model: torch.nn.Module, config: FastPathConfig | None = None) -> FastPathHandle:
    config = config or FastPathConfig()
    if config.dtype not in _DTYPES:
        raise ValueError(f"unknown dtype '{config.dtype}': use bf16, fp16 or fp32")
    check_kernel_options(config.kernels, config.attention, config.row_kernels, config.fp8_gemms,  # before the model is touched
                         config.fp8_input_means, config.fp8_fast_accum, config.fp8_mlp)
    check_fp8_smooth(model, config.kernels, tuple(config.fp8_gemms), config.fp8_smooth, config.fp8_smooth_alpha,
                     tuple(config.fp8_smooth_gemms))
    if config.batched_adaln:
        check_batched_adaln(model)
    if config.kernels == "fp8" and config.dtype != "bf16":
        raise ValueError(f"kernels='fp8' runs bf16 activations: use dtype='bf16', not '{config.dtype}'")
    if config.row_bucket < 1:
        raise ValueError(f"row_bucket must be at least 1, got {config.row_bucket}")
    dtype = _DTYPES[config.dtype]
    p0 = next(model.parameters())
    handle = FastPathHandle(model, config, model.forward, p0.dtype, {k: v.detach().clone() for k, v in model.state_dict().items()})
    model.eval().to(dtype)
    handle.kernels = apply_kernels(model, config.kernels, config.attention, config.row_kernels, tuple(config.fp8_gemms),
                                   config.batched_adaln, config.fp8_fast_accum, config.fp8_input_means, config.fp8_smooth,
                                   config.fp8_smooth_alpha, tuple(config.fp8_smooth_gemms), config.fp8_mlp)
    if config.compile:
        # every block shares one compiled graph per input shape; leave room for many shapes (batch sizes, CFG
        # doubling, row buckets) before dynamo would silently fall back to eager
        dyn = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dyn, name):
                setattr(dyn, name, max(getattr(dyn, name), 128))
        for blk in model.compute_blocks():
            blk.compile(mode=config.compile_mode, dynamic=False)
    eager_forward = handle.original_forward
    use_graphs = config.cuda_graphs and p0.is_cuda
    K = model.num_exit_blocks

    def forward(x, t, y=None, active_blocks=None, exits=None, depth_out=None):
        x = x.to(dtype)
        if exits is not None and use_graphs and getattr(exits, "graphable", False) and not torch.is_grad_enabled():
            handle.stats["exit_calls"] += 1  # per-sample exits: each stage a CUDA graph per (stage, working rows)
            return forward_exits(model, x, t, y, active_blocks, exits, depth_out, stages=_GraphStages(handle, exits)).float()
        if torch.is_grad_enabled() or exits is not None:  # compiled blocks, launched eagerly
            handle.stats["eager_calls"] += 1
            return eager_forward(x, t, y, active_blocks=active_blocks, exits=exits, depth_out=depth_out).float()
        if depth_out is not None:
            depth_out.copy_(torch.as_tensor(K if active_blocks is None else active_blocks).expand(x.shape[0]))
        if isinstance(active_blocks, torch.Tensor):
            counts = row_counts(active_blocks, K)
            B = x.shape[0]
            if all(n in (0, B) for n in counts):  # one depth for every row: the whole-forward graph
                active_blocks = sum(n == B for n in counts)
            else:
                handle.stats["row_calls"] += 1
                return _per_row(handle, x, t, y, active_blocks, counts, use_graphs).float()
        if not use_graphs:
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


@dataclass
class FastVAEHandle:
    vae: torch.nn.Module
    original_dtype: torch.dtype

    def remove(self) -> None:
        self.vae.__dict__.pop("decode", None)
        self.vae.to(self.original_dtype, memory_format=torch.contiguous_format)


def apply_fast_vae(vae: torch.nn.Module, compile: bool = True, dtype: torch.dtype = torch.bfloat16) -> FastVAEHandle:
    """A diffusers ``AutoencoderKL`` for decoding: bf16 weights, channels-last convolutions (cuDNN's fast NHWC
    kernels), ``decode`` compiled (inductor fuses GroupNorm + SiLU). ``handle.remove()`` undoes it."""
    handle = FastVAEHandle(vae, next(vae.parameters()).dtype)
    vae.eval().to(dtype, memory_format=torch.channels_last)
    decode = type(vae).decode.__get__(vae)
    vae.decode = torch.compile(decode, dynamic=False) if compile else decode
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


# ---- a depth per row ------------------------------------------------------------------------------------
class _RowState:
    """Static buffers of the per-row chain for one input shape; every stage reads and writes these."""

    def __init__(self, model, x, t, y, depth):
        self.x, self.t = x.clone(), t.clone()
        self.y = None if y is None else y.clone()
        self.depth = depth.to(x.device, torch.long).clone()
        self.dsorted = torch.empty_like(self.depth)
        self.keep = torch.empty(model.num_exit_blocks, len(self.depth), device=x.device, dtype=x.dtype)  # (K, B) row i runs block l
        self.order = torch.empty_like(self.depth)
        self.inverse = torch.empty_like(self.depth)
        s = model.embed(x, t, y)  # shapes of the working state
        self.h = torch.empty_like(s.h)
        self.c = None if s.c is None else torch.empty_like(s.c)
        self.skips = tuple(torch.empty_like(k) for k in s.skips)
        self.out = None
        self.graphs: dict = {}  # stage key -> CUDA graph, or None for a stage that launches nothing

    def tokens(self, consumed: int = 0) -> Tokens:
        return Tokens(self.h, self.c, self.skips[: len(self.skips) - consumed])


def _embed_stage(model, st: _RowState) -> bool:
    order = torch.argsort(st.depth, descending=True, stable=True)
    st.order.copy_(order)
    st.dsorted.copy_(st.depth[order])
    layers = torch.arange(st.keep.shape[0], device=order.device)
    st.keep.copy_(st.dsorted.unsqueeze(0) > layers.unsqueeze(1))  # every block's mask, made once per call
    st.inverse[order] = torch.arange(order.numel(), device=order.device)
    store_tokens(st, model.embed(st.x[order], st.t[order], None if st.y is None else st.y[order]))
    return True


def _blocks_stage(model, st: _RowState, first: int, last: int, b: int, padded: bool) -> bool:
    """Blocks first..last-1, each on the first b rows (one bucket); False if none of them launches anything."""
    did = False
    for i in range(first, last):
        s = st.tokens(consumed=i)
        active = st.keep[i, :b] if padded else None  # (b,) 0/1: rows of the bucket that run block i
        new = model.run_block(i, s, b, active)
        if new is s:  # nothing to do for these rows (a DiT block no row runs)
            continue
        if new.h is not st.h:  # a backbone that did not update in place (U-ViT's fused skips)
            st.h.copy_(new.h)
        did = True
    return did


def _head_stage(model, st: _RowState) -> bool:
    st.out = model.head(st.tokens(consumed=len(st.skips)))[st.inverse]
    return True


def _per_row(handle: FastPathHandle, x, t, y, depth, counts, use_graphs):
    model, g = handle.model, handle.config.row_bucket
    B = x.shape[0]
    key = (tuple(x.shape), y is None)
    st = handle.row_states.get(key)
    if st is None:
        st = handle.row_states[key] = _RowState(model, x, t, y, depth)
    st.x.copy_(x)
    st.t.copy_(t)
    if st.y is not None:
        st.y.copy_(y)
    st.depth.copy_(depth, non_blocking=True)
    buckets = [min(B, -(-n // g) * g) for n in counts]
    stages = [(("embed",), lambda: _embed_stage(model, st))]
    i = 0
    while i < len(buckets):  # consecutive blocks on the same bucket form one stage (one graph, one replay)
        j, seg = i, (buckets[i], buckets[i] != counts[i])
        while j < len(buckets) and (buckets[j], buckets[j] != counts[j]) == seg:
            j += 1
        stages.append((("blocks", i, j, *seg), lambda i=i, j=j, seg=seg: _blocks_stage(model, st, i, j, *seg)))
        i = j
    stages.append((("head",), lambda: _head_stage(model, st)))
    for key, fn in stages:
        if not use_graphs:
            fn()
            continue
        if key not in st.graphs:
            st.graphs[key] = _capture_stage(fn, [st.h], handle)
            handle.stats["captures"] += st.graphs[key] is not None
        graph = st.graphs[key]
        if graph is not None:
            graph.replay()
            handle.stats["replays"] += 1
    return st.out.clone()


def _capture_stage(fn, buffers: list, handle: FastPathHandle):
    """Warm a stage up (compilation, cuBLAS workspaces) without disturbing the state: ``buffers``, all it may
    write, are restored after every warm-up run; then record it. None for a stage that launches nothing."""
    saved = [v.clone() for v in buffers]

    def restore():
        for v, b in zip(buffers, saved):
            v.copy_(b)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            restore()
            did = fn()
        restore()
    torch.cuda.current_stream().wait_stream(s)
    if not did:
        return None
    if handle.pool is None:
        handle.pool = torch.cuda.graph_pool_handle()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=handle.pool):
        fn()
    return graph


# ---- per-sample exits -----------------------------------------------------------------------------------
class _GraphStages:
    """``forward_exits``'s stages as CUDA graphs: one per (stage, block, working rows), on buffers kept per
    input shape and policy (its threshold is baked into the captured comparison)."""

    def __init__(self, handle: FastPathHandle, exits):
        self.handle, self.exits = handle, exits

    def state(self, model, x, t, y, cap, ctx) -> ExitState:
        key = (tuple(x.shape), y is None, ctx.shape[1], self.exits.name)
        st = self.handle.exit_states.get(key)
        if st is None:
            st = self.handle.exit_states[key] = ExitState(model, x, t, y, cap, ctx)
            st.graphs = {}
        return st

    def run(self, key, fn, st: ExitState) -> None:
        if key not in st.graphs:
            st.graphs[key] = _capture_stage(fn, st.mutable(), self.handle)
            self.handle.stats["captures"] += 1
        st.graphs[key].replay()
        self.handle.stats["replays"] += 1
