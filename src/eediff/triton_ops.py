"""Row kernels of the fast path's ``fused`` / ``fp8`` DiT blocks, written in Triton, as torch custom ops
(opaque to inductor, capturable in CUDA graphs, traceable by dynamo).

Why by hand: measured on an H200 at B=64 (DiT-XL/2, 16384 token rows of 1152), inductor's own LayerNorm +
modulation kernel moves its 75 MB at about 1 TB/s and its GELU + row-quantise kernel its 226 MB at under
1 TB/s (``results/bench_dit_h200_kernels.md``, block parts); a one-pass kernel per row that keeps the row in
registers runs near the memory bandwidth. No library offers these fusions (LayerNorm + adaLN modulation +
gated residual + fp8 row quantisation in one pass).

- ``ln_modulate(x, shift, scale, eps, residual, gate, quant) -> (h, y, s)``: ``h = x + gate * residual``
  (when a residual is given; else ``h`` is empty and ``x`` is used), ``y = LN(h) * (1 + scale) + shift`` in
  bf16, or with ``quant`` e4m3 codes and their (M, 1) fp32 row scales ``s`` (``y_bf16 ~ codes * s``).
  ``shift`` / ``scale`` / ``gate`` are (B, D), one row per image; ``x`` is (B, N, D).
- ``act_quant(x, gelu, inv=None) -> (codes, s)``: (optionally tanh-GELU, then optionally times a (K,) fp32
  per-column ``inv``, fp8 smoothing's 1/s, then) row-wise e4m3 quantisation of (M, K).

Without Triton, or on a CPU, the same functions run as torch ops in fp32 (what the tests compare with; the
Triton kernels themselves are tested on a CPU in Triton's interpreter, ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)
MIN_SCALE = 1e-12

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch fallback below computes the same functions
    triton = None


# The row kernels' per-element arithmetic (a constexpr of each kernel, read at launch): quantise by multiplying
# with the row's reciprocal scale (one division per row, not one per element), and in the GELU + quantise kernel
# tanh through the GPU's tanh.approx.f32 (one special-function op where exp and a division take two, plus the
# division's fix-up). That kernel was bound by this arithmetic, not by memory: 1.66 TB/s at K = 4608 against
# 2.7 TB/s for the same kernel without GELU at K = 1152 (results/row_kernels_h200.md). tanh.approx's error
# (about 2^-11 relative) is far under one e4m3 step (2^-3), and the codes stay within one step of the reference
# (tests/test_kernels.py). False: a division per element and tanh from exp (benchmarks time both). Triton's CPU
# interpreter has no inline PTX: there tanh is always the exp form.
FAST_MATH = True

# CPU tensors go through the Triton kernels only in Triton's interpreter, when a test asks for it (the
# interpreter reads TRITON_INTERPRET=1 once, when the kernels below are defined: tests/conftest.py sets it)
INTERPRET_ON_CPU = False


def triton_available(x: torch.Tensor) -> bool:
    if triton is None:
        return False
    return x.is_cuda or (INTERPRET_ON_CPU and os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _ln_modulate_kernel(X, R, G, SHIFT, SCALE, H, Y, S, M, n_tok, D, mod_stride, eps,
                            HAS_RES: tl.constexpr, QUANT: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr,
                            FAST: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,) token rows of (M, D)
        b = rows // n_tok  # their images
        cols = tl.arange(0, BLOCK_D)
        mask = (rows[:, None] < M) & (cols[None, :] < D)  # (ROWS, BLOCK_D)
        offs = rows[:, None] * D + cols[None, :]
        moffs = b[:, None] * mod_stride + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            r = tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(G + moffs, mask=mask, other=0.0).to(tl.float32)
            x = x + g * r
            hb = x.to(H.dtype.element_ty)
            tl.store(H + offs, hb, mask=mask)
            x = hb.to(tl.float32)  # the LayerNorm sees the stored (rounded) h, as the next block will
        mean = tl.sum(x, axis=1) / D  # (ROWS,)
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / D + eps)
        sh = tl.load(SHIFT + moffs, mask=mask, other=0.0).to(tl.float32)
        sc = tl.load(SCALE + moffs, mask=mask, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * (1.0 + sc) + sh
        if QUANT:
            s = tl.maximum(tl.max(tl.where(mask, tl.abs(y), 0.0), axis=1) / 448.0, 1e-12)
            tl.store(S + rows, s, mask=rows < M)
            y = _scale_down(y, s[:, None], FAST)
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _scale_down(x, s, FAST: tl.constexpr):  # x / s: with FAST, x times the reciprocal of s (s holds one value per row)
        if FAST:
            return x * (1.0 / s)
        else:
            return x / s

    @triton.jit
    def _gelu_tanh(x, TANH_ASM: tl.constexpr):  # as nn.GELU(approximate="tanh"): 0.5 x (1 + tanh(u))
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        if TANH_ASM:
            t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True, pack=1)
        else:  # tanh(u) = 1 - 2 / (exp(2u) + 1)
            u = tl.minimum(tl.maximum(u, -15.0), 15.0)  # tanh is +-1 to fp32 precision there; exp(2u) stays finite
            t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)
        return 0.5 * x * (1.0 + t)

    @triton.jit
    def _act_quant_kernel(X, INV, Q, S, M, K, GELU: tl.constexpr, HAS_INV: tl.constexpr, BLOCK_K: tl.constexpr,
                          ROWS: tl.constexpr, FAST: tl.constexpr, TANH_ASM: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_K)
        mask = (rows[:, None] < M) & (cols[None, :] < K)
        offs = rows[:, None] * K + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        if GELU:
            x = _gelu_tanh(x, TANH_ASM)
        if HAS_INV:  # per column (smoothing's 1/s), after the GELU, before the row's maximum
            x = x * tl.load(INV + cols, mask=cols < K, other=0.0)[None, :]
        s = tl.maximum(tl.max(tl.where(mask, tl.abs(x), 0.0), axis=1) / 448.0, 1e-12)
        tl.store(S + rows, s, mask=rows < M)
        tl.store(Q + offs, _scale_down(x, s[:, None], FAST).to(Q.dtype.element_ty), mask=mask)

    @triton.jit
    def _act_quant_split_kernel(X, INV, Q, S, M, K, GELU: tl.constexpr, HAS_INV: tl.constexpr, BLOCK_A: tl.constexpr,
                                BLOCK_B: tl.constexpr, ROWS: tl.constexpr, FAST: tl.constexpr, TANH_ASM: tl.constexpr):
        # the row kernel with a row held as two power-of-two pieces, [0, BLOCK_A) and [BLOCK_A, K) padded to
        # BLOCK_B: the MLP's 4608 = 4096 + 512 pads no lane, where one piece of 8192 leaves 44% of them (and
        # of the registers they hold) idle. Same per-element math and the same maximum: the same codes.
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        ca = tl.arange(0, BLOCK_A)
        cb = BLOCK_A + tl.arange(0, BLOCK_B)
        ma = (rows[:, None] < M) & (ca[None, :] < K)
        mb = (rows[:, None] < M) & (cb[None, :] < K)
        xa = tl.load(X + rows[:, None] * K + ca[None, :], mask=ma, other=0.0).to(tl.float32)
        xb = tl.load(X + rows[:, None] * K + cb[None, :], mask=mb, other=0.0).to(tl.float32)
        if GELU:
            xa = _gelu_tanh(xa, TANH_ASM)
            xb = _gelu_tanh(xb, TANH_ASM)
        if HAS_INV:
            xa = xa * tl.load(INV + ca, mask=ca < K, other=0.0)[None, :]
            xb = xb * tl.load(INV + cb, mask=cb < K, other=0.0)[None, :]
        amax = tl.maximum(tl.max(tl.where(ma, tl.abs(xa), 0.0), axis=1), tl.max(tl.where(mb, tl.abs(xb), 0.0), axis=1))
        s = tl.maximum(amax / 448.0, 1e-12)
        tl.store(S + rows, s, mask=rows < M)
        tl.store(Q + rows[:, None] * K + ca[None, :], _scale_down(xa, s[:, None], FAST).to(Q.dtype.element_ty), mask=ma)
        tl.store(Q + rows[:, None] * K + cb[None, :], _scale_down(xb, s[:, None], FAST).to(Q.dtype.element_ty), mask=mb)

    @triton.jit
    def _act_quant_chunked_kernel(X, INV, Q, S, K, GELU: tl.constexpr, HAS_INV: tl.constexpr, CHUNK: tl.constexpr,
                                  FAST: tl.constexpr, TANH_ASM: tl.constexpr):
        # one row per program, in CHUNK-wide pieces: the row's absolute maximum first, then the codes (the
        # second read of the row mostly hits L2). Few registers per thread, where a whole row of the MLP's
        # 4608 (padded to 8192) in registers limits how many programs an SM holds.
        base = tl.program_id(0).to(tl.int64) * K
        amax = tl.zeros((CHUNK,), dtype=tl.float32)
        for k0 in range(0, K, CHUNK):
            cols = k0 + tl.arange(0, CHUNK)
            x = tl.load(X + base + cols, mask=cols < K, other=0.0).to(tl.float32)
            if GELU:
                x = _gelu_tanh(x, TANH_ASM)
            if HAS_INV:
                x = x * tl.load(INV + cols, mask=cols < K, other=0.0)
            amax = tl.maximum(amax, tl.abs(x))  # masked lanes hold GELU(0) = 0
        s = tl.maximum(tl.max(amax, axis=0) / 448.0, 1e-12)
        tl.store(S + tl.program_id(0), s)
        for k0 in range(0, K, CHUNK):
            cols = k0 + tl.arange(0, CHUNK)
            x = tl.load(X + base + cols, mask=cols < K, other=0.0).to(tl.float32)
            if GELU:
                x = _gelu_tanh(x, TANH_ASM)
            if HAS_INV:
                x = x * tl.load(INV + cols, mask=cols < K, other=0.0)
            tl.store(Q + base + cols, _scale_down(x, s, FAST).to(Q.dtype.element_ty), mask=cols < K)


def row_launch(block: int) -> tuple[int, int]:
    """(rows per program, warps) of a row kernel whose rows are padded to ``block`` lanes.

    Chosen from ``benchmarks/row_kernels.py`` on an H200 at DiT-XL/2's B=64 shapes
    (``results/row_kernels_h200.md``): for rows of 1152 (block 2048) two rows per program with 4 warps is
    within 3% of the best launch of every kernel there and 15% faster in sum than one row with 8 warps
    (156 vs 184 us for the four kernels of an fp8 block); for the MLP's rows of 4608 (block 8192) one row
    with 4 warps (136 vs 146 us with 16). Narrow rows (the small models) get a warp per 256 lanes.
    """
    return (2 if block <= 2048 else 1), max(1, min(4, block // 256))


def quant_launch(K: int) -> tuple[int, int, int]:
    """(rows per program, warps, chunk) of ``act_quant`` on rows of ``K``: the row kernel at ``row_launch``
    (chunk 0). The chunked kernel (chunk > 0) is timed by ``benchmarks/row_kernels.py`` and, in a whole
    forward, by ``benchmarks/kernel_variants.py --quant-chunk``; it is not the default until it is measured
    faster there."""
    return (*row_launch(triton.next_power_of_2(K)), 0)


def launch_ln_modulate(x, r, gate, shift, scale, h, y, s, N, D, stride, eps, has_res, quant, rows, warps) -> None:
    M = x.shape[0] * N
    _ln_modulate_kernel[(triton.cdiv(M, rows),)](x, r, gate, shift, scale, h, y, s, M, N, D, stride, eps, HAS_RES=has_res,
                                                 QUANT=quant, BLOCK_D=triton.next_power_of_2(D), ROWS=rows, FAST=FAST_MATH,
                                                 num_warps=warps)


SPLIT = -1  # launch_act_quant's chunk for the split-row kernel


def split_blocks(K: int) -> tuple[int, int]:
    """The split kernel's two pieces of a row of ``K``: the largest power of two <= K, the rest padded to a
    power of two (0 where K is one: then the plain row kernel is the same)."""
    a = 1 << (K.bit_length() - 1)
    return a, (triton.next_power_of_2(K - a) if K > a else 0)


def launch_act_quant(x, q, s, gelu, rows, warps, chunk: int = 0, inv=None) -> None:
    """``chunk`` > 0: the chunked kernel (one row per program, ``rows`` ignored); ``chunk == SPLIT``: the
    split-row kernel, ``rows`` rows per program; else the row kernel, ``rows`` rows per program. ``inv``:
    a contiguous (K,) fp32 vector each row is multiplied by (after the GELU), or None."""
    M, K = x.shape
    fm = dict(FAST=FAST_MATH, TANH_ASM=FAST_MATH and x.is_cuda,  # (the interpreter runs CPU tensors: no PTX there)
              HAS_INV=inv is not None)
    inv = inv if inv is not None else x  # (a pointer the kernel does not read without HAS_INV)
    a, b = split_blocks(K) if chunk == SPLIT else (K, 0)
    if b:  # (a row of a power-of-two width is one piece: the row kernel below)
        _act_quant_split_kernel[(triton.cdiv(M, rows),)](x, inv, q, s, M, K, GELU=gelu, BLOCK_A=a, BLOCK_B=b, ROWS=rows, num_warps=warps, **fm)
        return
    if chunk > 0:
        _act_quant_chunked_kernel[(M,)](x, inv, q, s, K, GELU=gelu, CHUNK=chunk, num_warps=warps, **fm)
        return
    _act_quant_kernel[(triton.cdiv(M, rows),)](x, inv, q, s, M, K, GELU=gelu, BLOCK_K=triton.next_power_of_2(K), ROWS=rows,
                                               num_warps=warps, **fm)


@torch.library.custom_op("eediff::ln_modulate", mutates_args=())
def ln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, residual: torch.Tensor | None,
                gate: torch.Tensor | None, quant: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N, D = x.shape
    if not triton_available(x):
        return tuple(v.contiguous() for v in _ln_modulate_ref(x, shift, scale, eps, residual, gate, quant))
    x = x.contiguous()  # every output is contiguous, whatever the input's strides (the fake below says so)
    mods = [shift, scale] + ([gate] if gate is not None else [])
    stride = shift.stride(0)
    if any(m.stride(0) != stride or m.stride(1) != 1 for m in mods):  # views of one (B, 6D) modulation tensor, or not
        mods = [m.contiguous() for m in mods]
        stride = D
    shift, scale = mods[0], mods[1]
    gate = mods[2] if gate is not None else None
    h, y, s = _ln_modulate_outputs(x, residual, quant)
    r = residual.contiguous() if residual is not None else x
    launch_ln_modulate(x, r, gate if gate is not None else shift, shift, scale, h, y, s, N, D, stride, eps,
                       residual is not None, quant, *row_launch(triton.next_power_of_2(D)))
    return h, y, s


@ln_modulate.register_fake
def _(x, shift, scale, eps, residual, gate, quant):
    return _ln_modulate_outputs(x, residual, quant)


def _ln_modulate_outputs(x, residual, quant):
    """The op's outputs, contiguous: h (B, N, D) or empty, y (B, N, D) bf16 or e4m3, s (B*N, 1) fp32 or empty."""
    B, N, D = x.shape
    h = torch.empty(B, N, D, device=x.device, dtype=x.dtype) if residual is not None else x.new_empty(0)
    y = torch.empty(B, N, D, device=x.device, dtype=FP8 if quant else x.dtype)
    s = torch.empty(B * N, 1, device=x.device, dtype=torch.float32) if quant else x.new_empty(0, dtype=torch.float32)
    return h, y, s


def _ln_modulate_ref(x, shift, scale, eps, residual, gate, quant):
    """The same function in torch ops (fp32 math, one rounding per stored tensor, as the kernel)."""
    B, N, D = x.shape
    h = x.new_empty(0)
    xf = x.float()
    if residual is not None:
        h = (xf + gate.float().unsqueeze(1) * residual.float()).to(x.dtype)
        xf = h.float()
    y = F.layer_norm(xf, (D,), eps=eps) * (1 + scale.float().unsqueeze(1)) + shift.float().unsqueeze(1)
    if not quant:
        return h, y.to(x.dtype), x.new_empty(0, dtype=torch.float32)
    q, s = _quant_ref(y.reshape(B * N, D))
    return h, q.reshape(B, N, D), s


@torch.library.custom_op("eediff::act_quant", mutates_args=())
def act_quant(x: torch.Tensor, gelu: bool, inv: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    M, K = x.shape
    if not triton_available(x):
        return tuple(v.contiguous() for v in act_quant_ref(x, gelu, inv))
    x = x.contiguous()
    q, s = _act_quant_outputs(x)
    launch_act_quant(x, q, s, gelu, *quant_launch(K), inv=inv.float().contiguous() if inv is not None else None)
    return q, s


@act_quant.register_fake
def _(x, gelu, inv=None):
    return _act_quant_outputs(x)


def _act_quant_outputs(x):
    M, K = x.shape
    return torch.empty(M, K, device=x.device, dtype=FP8), torch.empty(M, 1, device=x.device, dtype=torch.float32)


def act_quant_ref(x: torch.Tensor, gelu: bool, inv: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``act_quant`` in torch ops (fp32 math): GELU, then times ``inv`` per column, then row quantisation."""
    xf = F.gelu(x.float(), approximate="tanh") if gelu else x.float()
    return _quant_ref(xf * inv.float() if inv is not None else xf)


def _quant_ref(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = (xf.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=MIN_SCALE)
    return (xf / s).to(FP8), s


def cudnn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA through cuDNN's fused attention on CUDA (measured 90 vs 138 us per DiT-XL/2 block at B=64 for
    the flash backend, same strided q/k/v), the default SDPA choice elsewhere; (B, H, N, d) each."""
    d = q.shape[-1]
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and d % 8 == 0 and d <= 128:
        return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, False, 0.0, False, False, scale=1 / math.sqrt(q.shape[-1]))[0]
    return F.scaled_dot_product_attention(q, k, v)
