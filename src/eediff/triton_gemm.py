"""fp8 GEMMs with the MLP's elementwise work in their epilogues (Triton), for the ``fp8`` DiT block's MLP.

The ``fp8`` block runs its MLP as three passes: fc1 as a row-scaled ``torch._scaled_mm`` (bf16 out), one row
kernel for GELU + row-wise quantisation (``triton_ops.act_quant``: it reads and writes the (M, 4D) hidden
activations, 227 MB at DiT-XL/2's B=64), and fc2 as a row-scaled ``torch._scaled_mm``. The row scale needs
the maximum of a whole row of 4D = 4608 values, which one GEMM tile never holds, so that pass cannot live
in fc1's epilogue. With one scale per (row, group of ``GROUP`` = 128 columns) it can: a tile whose width is
a multiple of ``GROUP`` holds its groups whole.

- :func:`fp8_fc1_gelu_quant`: (M, K) e4m3 codes with (M, 1) row scales @ ((N, K) e4m3 codes with (1, N)
  output-channel scales).T + bias, tanh-GELU, then quantised to e4m3 with (M, N / GROUP) group scales, all
  in one kernel (fp32 accumulation, fp32 epilogue).
- :func:`fp8_group_scaled_mm`: (M, K) e4m3 codes with (M, K / GROUP) group scales @ ((N, K) codes with (1, N)
  scales).T + bias -> (M, N) bf16. The K loop steps one group at a time and adds each group's fp32 partial
  product times its scale into the accumulator (as DeepSeek's DeepGEMM does for its 1 x 128 activation
  scales): a per-group scale cannot leave the sum, a per-output-channel one can (applied once at the end).
- :func:`fp8_group_scaled_mm_residual_`: the same fc2 with the DiT block's last gated residual in its epilogue
  (residual + gate of the row's image * fc2), stored into the block's output: that pass, too, is gone.

e4m3 is a float format, so a finer scale hardly changes the codes' relative error (it matters only where a
row spans more than e4m3's 2^15 range): the groups are for the fusion, and the MLP's error stays that of the
row-scaled path (tests/test_triton_gemm.py). Written by hand because no installed library fuses GELU and
group quantisation into an fp8 GEMM (torch's ``_scaled_mm`` epilogues are bias only; torchao is not a
dependency). Every function has a torch reference of the same math (``*_ref``), which runs wherever Triton
cannot (a CPU outside Triton's interpreter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .triton_ops import FP8, FP8_MAX, MIN_SCALE, triton_available

try:
    import triton
    import triton.language as tl

    from .triton_ops import _gelu_tanh
except ImportError:  # the references below compute the same functions
    triton = None

GROUP = 128  # columns per quantisation group: fc1's output tile width, fc2's K step


@dataclass(frozen=True)
class GemmLaunch:
    """Tile and launch parameters of both kernels (fc2's K step is ``GROUP``).
    ``benchmarks/fp8_mlp.py`` sweeps them on a GPU; the default is a common Hopper fp8 tile."""
    block_m: int = 128
    block_n: int = 128  # output tile width (fc1: a multiple of GROUP dividing N, else GROUP)
    block_k: int = 128  # fc1's K step (fc2's is GROUP)
    group_m: int = 8  # programs ordered in groups of block rows, for L2 reuse of the weight tiles
    warps: int = 8
    stages: int = 4
    tma: bool = False  # operand tiles through Hopper's tensor memory accelerator (tl.make_tensor_descriptor)


LAUNCH = GemmLaunch()


def supports(k: int, n: int, group: int = GROUP) -> bool:
    """Whether an fp8 MLP of input width ``k`` and hidden width ``n`` can run these kernels: the hidden width
    in whole groups (fc1's N, fc2's K), the input width in whole K steps of at least 32 (an fp8 MMA's K)."""
    return n % group == 0 and k % 32 == 0


if triton is not None:

    @triton.jit
    def _tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        # program -> (block row, block column), GROUP_M block rows at a time (they share weight tiles in L2)
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * num_n
        first_m = (pid // per_group) * GROUP_M
        size_m = tl.minimum(num_m - first_m, GROUP_M)
        return first_m + (pid % per_group) % size_m, (pid % per_group) // size_m

    @triton.jit
    def _fc1_gelu_quant_kernel(A, SA, W, SW, BIAS, INV, Q, QS, M, N, K, HAS_BIAS: tl.constexpr, HAS_INV: tl.constexpr,
                               GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                               GROUP_M: tl.constexpr, TANH_ASM: tl.constexpr, TMA: tl.constexpr):
        # a tile of BLOCK_N = NG * GROUP output columns: NG whole quantisation groups
        NG: tl.constexpr = BLOCK_N // GROUP
        pid_m, pid_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) rows of A
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output columns
        rk = tl.arange(0, BLOCK_K)
        mm = rm < M
        a_ptr = A + rm[:, None].to(tl.int64) * K + rk[None, :]  # (BLOCK_M, BLOCK_K)
        w_ptr = W + rn[None, :].to(tl.int64) * K + rk[:, None]  # (BLOCK_K, BLOCK_N): W's rows, K-major
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if TMA:  # (rows past M read as zeros)
            ad = tl.make_tensor_descriptor(A, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, BLOCK_K])
            wd = tl.make_tensor_descriptor(W, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, BLOCK_K])
            for k0 in range(0, K, BLOCK_K):
                acc = tl.dot(ad.load([pid_m * BLOCK_M, k0]), wd.load([pid_n * BLOCK_N, k0]).T, acc)
        else:
            for _ in range(0, K, BLOCK_K):  # (K % BLOCK_K == 0, N % BLOCK_N == 0: only the rows need a mask)
                a = tl.load(a_ptr, mask=mm[:, None], other=0.0)
                w = tl.load(w_ptr)
                acc = tl.dot(a, w, acc)
                a_ptr += BLOCK_K
                w_ptr += BLOCK_K
        sa = tl.load(SA + rm, mask=mm, other=0.0)  # (BLOCK_M,) row scales
        y = acc * sa[:, None] * tl.load(SW + rn)[None, :]
        if HAS_BIAS:
            y = y + tl.load(BIAS + rn).to(tl.float32)[None, :]
        y = _gelu_tanh(y, TANH_ASM)  # (triton_ops' GELU, the row kernels' own)
        if HAS_INV:  # per column (fp8 smoothing's 1/s of fc2's input), after the GELU, before the group's maximum
            y = y * tl.load(INV + rn)[None, :]
        y3 = tl.reshape(y, (BLOCK_M, NG, GROUP))
        s = tl.maximum(tl.max(tl.abs(y3), axis=2) / 448.0, 1e-12)  # (BLOCK_M, NG): each row's scale per group
        rg = pid_n * NG + tl.arange(0, NG)
        tl.store(QS + rm[:, None].to(tl.int64) * (N // GROUP) + rg[None, :], s, mask=mm[:, None])
        q = tl.reshape(y3 * (1.0 / s)[:, :, None], (BLOCK_M, BLOCK_N)).to(Q.dtype.element_ty)
        tl.store(Q + rm[:, None].to(tl.int64) * N + rn[None, :], q, mask=mm[:, None])

    @triton.jit
    def _group_scaled_mm_kernel(A, SA, W, SW, BIAS, R, G, Y, M, N, K, n_tok, g_stride, HAS_BIAS: tl.constexpr,
                                HAS_RES: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                GROUP_M: tl.constexpr, TMA: tl.constexpr):
        pid_m, pid_n = _tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, GROUP)
        mm = rm < M
        mn = rn < N
        groups = K // GROUP
        a_ptr = A + rm[:, None].to(tl.int64) * K + rk[None, :]
        w_ptr = W + rn[None, :].to(tl.int64) * K + rk[:, None]
        s_ptr = SA + rm.to(tl.int64) * groups
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if TMA:
            ad = tl.make_tensor_descriptor(A, shape=[M, K], strides=[K, 1], block_shape=[BLOCK_M, GROUP])
            wd = tl.make_tensor_descriptor(W, shape=[N, K], strides=[K, 1], block_shape=[BLOCK_N, GROUP])
        for g in range(groups):
            if TMA:
                part = tl.dot(ad.load([pid_m * BLOCK_M, g * GROUP]), wd.load([pid_n * BLOCK_N, g * GROUP]).T)
            else:
                a = tl.load(a_ptr, mask=mm[:, None], other=0.0)
                w = tl.load(w_ptr, mask=mn[None, :], other=0.0)
                part = tl.dot(a, w)  # (BLOCK_M, BLOCK_N) fp32: this group's product, then scaled into the sum
                a_ptr += GROUP
                w_ptr += GROUP
            acc += part * tl.load(s_ptr + g, mask=mm, other=0.0)[:, None]
        y = acc * tl.load(SW + rn, mask=mn, other=0.0)[None, :]
        if HAS_BIAS:
            y = y + tl.load(BIAS + rn, mask=mn, other=0.0).to(tl.float32)[None, :]
        offs = rm[:, None].to(tl.int64) * N + rn[None, :]
        mask = mm[:, None] & mn[None, :]
        if HAS_RES:  # the block's gated residual: R + gate(image of the row) * y
            g = tl.load(G + (rm // n_tok)[:, None].to(tl.int64) * g_stride + rn[None, :], mask=mask, other=0.0)
            y = tl.load(R + offs, mask=mask, other=0.0).to(tl.float32) + g.to(tl.float32) * y
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


def _tma(launch: GemmLaunch, a: torch.Tensor) -> bool:
    """Whether this launch loads through TMA descriptors. Made in the kernel, they need scratch memory from an
    allocator Triton calls at launch (set once here, from torch's caching allocator, so that CUDA graphs
    capture it as any other allocation)."""
    if launch.tma and a.is_cuda and not getattr(_tma, "allocator", False):
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
        _tma.allocator = True
    return launch.tma


def _fk(k: int, block_k: int) -> int:
    """fc1's K step: ``block_k`` if it divides K, else the largest power of two (>= 32) that does."""
    if k % block_k == 0:
        return block_k
    b = 32
    while k % (b * 2) == 0 and b * 2 <= block_k:
        b *= 2
    return b


@torch.library.custom_op("eediff::fp8_fc1_gelu_quant", mutates_args=())
def fp8_fc1_gelu_quant(a: torch.Tensor, sa: torch.Tensor, qw: torch.Tensor, sw: torch.Tensor,
                       bias: torch.Tensor | None, inv: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GELU_tanh((a * sa) @ (qw * sw).T + bias) (times ``inv`` per column), quantised: ((M, N) e4m3 codes,
    (M, N / GROUP) fp32 scales). a: (M, K) e4m3, sa: (M, 1) fp32, qw: (N, K) e4m3, sw: (1, N) fp32, bias: (N,)
    or None, inv: (N,) or None."""
    if not triton_available(a):
        return tuple(v.contiguous() for v in fp8_fc1_gelu_quant_ref(a, sa, qw, sw, bias, inv))
    M, K = a.shape
    N = qw.shape[0]
    q, qs = _fc1_outputs(a, qw)
    L = LAUNCH
    bn = L.block_n if L.block_n % GROUP == 0 and N % L.block_n == 0 else GROUP  # whole groups, whole tiles
    _fc1_gelu_quant_kernel[(triton.cdiv(M, L.block_m) * (N // bn),)](
        a.contiguous(), sa.contiguous(), qw.contiguous(), sw.contiguous(), bias if bias is not None else sw,
        inv.float().contiguous() if inv is not None else sw, q, qs, M, N, K, HAS_BIAS=bias is not None,
        HAS_INV=inv is not None, GROUP=GROUP, BLOCK_M=L.block_m, BLOCK_N=bn, BLOCK_K=_fk(K, L.block_k), GROUP_M=L.group_m,
        TANH_ASM=a.is_cuda, TMA=_tma(L, a), num_warps=L.warps, num_stages=L.stages)
    return q, qs


@fp8_fc1_gelu_quant.register_fake
def _(a, sa, qw, sw, bias, inv=None):
    return _fc1_outputs(a, qw)


def _fc1_outputs(a, qw):
    M, N = a.shape[0], qw.shape[0]
    return (torch.empty(M, N, device=a.device, dtype=FP8),
            torch.empty(M, N // GROUP, device=a.device, dtype=torch.float32))


@torch.library.custom_op("eediff::fp8_group_scaled_mm", mutates_args=())
def fp8_group_scaled_mm(a: torch.Tensor, sa: torch.Tensor, qw: torch.Tensor, sw: torch.Tensor,
                        bias: torch.Tensor | None) -> torch.Tensor:
    """(a with its (M, K / GROUP) group scales sa) @ (qw * sw).T + bias -> (M, N) bf16; a, qw e4m3."""
    if not triton_available(a):
        return fp8_group_scaled_mm_ref(a, sa, qw, sw, bias).contiguous()
    y = torch.empty(a.shape[0], qw.shape[0], device=a.device, dtype=torch.bfloat16)
    _launch_group_scaled_mm(a, sa, qw, sw, bias, None, None, 1, y)
    return y


def _launch_group_scaled_mm(a, sa, qw, sw, bias, residual, gate, n_tok, out) -> None:
    M, K = a.shape
    N = qw.shape[0]
    L = LAUNCH
    _group_scaled_mm_kernel[(triton.cdiv(M, L.block_m) * triton.cdiv(N, L.block_n),)](
        a.contiguous(), sa.contiguous(), qw.contiguous(), sw.contiguous(), bias if bias is not None else sw,
        residual.contiguous() if residual is not None else out, gate if gate is not None else out, out, M, N, K, n_tok,
        gate.stride(0) if gate is not None else 0, HAS_BIAS=bias is not None, HAS_RES=residual is not None, GROUP=GROUP,
        BLOCK_M=L.block_m, BLOCK_N=L.block_n, GROUP_M=L.group_m, TMA=_tma(L, a), num_warps=L.warps, num_stages=L.stages)


@torch.library.custom_op("eediff::fp8_group_scaled_mm_residual_", mutates_args=("out",))
def fp8_group_scaled_mm_residual_(a: torch.Tensor, sa: torch.Tensor, qw: torch.Tensor, sw: torch.Tensor,
                                  bias: torch.Tensor | None, residual: torch.Tensor, gate: torch.Tensor, n_tok: int,
                                  out: torch.Tensor) -> None:
    """``out`` = residual + gate[row // n_tok] * (fc2 as :func:`fp8_group_scaled_mm`), stored into ``out``
    ((M, N) contiguous bf16; it may be the block's input itself, which the residual is not): the DiT block's
    last gated residual in fc2's epilogue, the result where the block's output goes. residual: (M, N) bf16,
    gate: (B, N) with unit column stride (a view of the modulation is fine). Under torch.compile inductor
    passes ``out`` through without a copy (``auto_functionalized`` re-inplaced)."""
    if gate.stride(1) != 1:
        gate = gate.contiguous()
    if not triton_available(a) or not out.is_contiguous():
        out.copy_(fp8_group_scaled_mm_residual_ref(a, sa, qw, sw, bias, residual, gate, n_tok))
        return
    _launch_group_scaled_mm(a, sa, qw, sw, bias, residual, gate, n_tok, out)


@fp8_group_scaled_mm_residual_.register_fake
def _(a, sa, qw, sw, bias, residual, gate, n_tok, out):
    return None


@fp8_group_scaled_mm.register_fake
def _(a, sa, qw, sw, bias):
    return torch.empty(a.shape[0], qw.shape[0], device=a.device, dtype=torch.bfloat16)


# ---- the same math in torch ops (fp32), the tests' references and the path where Triton does not run ----

def fp8_fc1_gelu_quant_ref(a, sa, qw, sw, bias, inv=None, group: int = GROUP):
    y = (a.float() @ qw.float().t()) * sa.float() * sw.float()  # (M, N)
    if bias is not None:
        y = y + bias.float()
    y = F.gelu(y, approximate="tanh")
    return group_quant_ref(y * inv.float() if inv is not None else y, group)


def group_quant_ref(y: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, N) -> (M, N) e4m3 codes and (M, N / group) fp32 scales, one per row and group of columns."""
    M, N = y.shape
    g = y.float().reshape(M, N // group, group)
    s = (g.abs().amax(dim=2) / FP8_MAX).clamp(min=MIN_SCALE)  # (M, N / group)
    return (g * (1 / s).unsqueeze(2)).to(FP8).reshape(M, N), s


def fp8_group_scaled_mm_ref(a, sa, qw, sw, bias, group: int = GROUP, out_dtype=torch.bfloat16):
    M, K = a.shape
    x = (a.float().reshape(M, K // group, group) * sa.float().unsqueeze(2)).reshape(M, K)
    y = (x @ qw.float().t()) * sw.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def fp8_group_scaled_mm_residual_ref(a, sa, qw, sw, bias, residual, gate, n_tok: int, group: int = GROUP):
    y = fp8_group_scaled_mm_ref(a, sa, qw, sw, bias, group, out_dtype=torch.float32)  # (M, N), not rounded
    g = gate.float().repeat_interleave(n_tok, dim=0)  # (M, N): each row's image's gate
    return (residual.float() + g * y).to(torch.bfloat16)
