"""What runs inside the fast path's compiled transformer blocks (``FastPathConfig.kernels``).

- ``"inductor"``: the blocks as written. torch.compile fuses LayerNorm + adaLN modulation, the gates and the
  residual adds into Triton kernels between the cuBLAS GEMMs and the flash-attention call.
- ``"fused"``: also the MLP's bias and tanh-GELU inside the first MLP GEMM, as a cuBLASLt epilogue
  (``torch._addmm_activation``, which inductor leaves as one opaque call). That removes the largest
  elementwise pass of a DiT block: a read and a write of the ``(B*N, 4D)`` hidden activations, about a
  quarter of all the bytes a block's non-GEMM kernels move.
- ``"fp8"``: every token GEMM of a block (attention's qkv and proj, the MLP's two) whose sizes allow it becomes an fp8 (e4m3) GEMM, ``torch._scaled_mm``
  with row-wise scales: each weight row (output channel) quantised once when the path is applied, each
  activation row (token) quantised inside the compiled block, where inductor fuses the row ``amax`` and the
  cast into the kernel that produces the activation (LayerNorm + modulation, GELU); bf16 output, bias in the
  GEMM. Attention stays in bf16.

Opt-in and removable: :func:`apply_kernels` sets instance-level ``forward`` overrides on the blocks' own
``Mlp`` / ``nn.Linear`` modules (no module is replaced, the state dict is unchanged) and returns a handle whose
``remove()`` deletes them. Written by hand because no installed library does it: torchao (float8 dynamic
activation, row-wise weights) is not a dependency, and the cuBLASLt GELU epilogue has no public module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models.layers import Attention, Mlp

KERNELS = ("inductor", "fused", "fp8")
FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


@dataclass
class KernelHandle:
    kernels: str
    patched: list = field(default_factory=list, repr=False)  # modules given an instance-level forward
    fp8_linears: int = 0  # block Linears running as fp8 GEMMs
    bf16_linears: int = 0  # block Linears left in bf16 (sizes fp8 GEMMs do not take)

    def remove(self) -> None:
        for m in self.patched:
            m.__dict__.pop("forward", None)
            m.__dict__.pop("_fp8", None)
        self.patched.clear()


def apply_kernels(model: nn.Module, kernels: str) -> KernelHandle:
    """Switch ``model.compute_blocks()`` to ``kernels`` (one of :data:`KERNELS`); the weights are taken as they
    are now (apply after the dtype conversion; the fp8 copies are not updated if the weights change later)."""
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels '{kernels}': use one of {', '.join(KERNELS)}")
    handle = KernelHandle(kernels)
    if kernels == "inductor":
        return handle
    for blk in model.compute_blocks():
        for m in blk.modules():
            if kernels == "fused" and isinstance(m, Mlp) and getattr(m.act, "approximate", None) == "tanh" and m.fc1.bias is not None:
                m.forward = _mlp_gelu_epilogue.__get__(m)
                handle.patched.append(m)
            elif kernels == "fp8" and isinstance(m, (Attention, Mlp)):
                for lin in (m.qkv, m.proj) if isinstance(m, Attention) else (m.fc1, m.fc2):
                    _to_fp8(lin, handle)
    return handle


def _to_fp8(lin: nn.Linear, handle: KernelHandle) -> None:
    """The token GEMMs (attention's qkv and proj, the MLP's two) only: the adaLN projection works on one
    vector per row, so fp8 would only save a few MB of weight reads there, and its output (shift, scale,
    gate) sets every token's scale."""
    if not fp8_shape_ok(lin.in_features, lin.out_features):
        handle.bf16_linears += 1
        return
    if lin.weight.dtype != torch.bfloat16:
        raise ValueError(f"kernels='fp8' needs bf16 weights, got {lin.weight.dtype}: use FastPathConfig(dtype='bf16')")
    lin._fp8 = quantize_weight(lin.weight.detach())
    lin.forward = _fp8_linear.__get__(lin)
    handle.patched.append(lin)
    handle.fp8_linears += 1


def fp8_shape_ok(in_features: int, out_features: int) -> bool:
    """fp8 GEMMs (cuBLASLt / CUTLASS on Hopper) need both matrix sides in multiples of 16."""
    return in_features % 16 == 0 and out_features % 16 == 0


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) weight -> (N, K) e4m3 and its (1, N) fp32 scales, one per output channel: w ~ q * s."""
    s = (w.float().abs().amax(dim=1) / FP8_MAX).clamp(min=1e-12)  # (N,)
    q = (w.float() / s.unsqueeze(1)).to(FP8)
    return q, s.unsqueeze(0)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) activations -> (M, K) e4m3 and (M, 1) fp32 scales, one per row (token): x ~ q * s."""
    s = (x.float().abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)  # (M, 1)
    return (x.float() / s).to(FP8), s


def fp8_matmul(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (..., K) bf16 @ (q_w * s_w).T + bias -> (..., N) bf16, the activation quantised per row."""
    shape = x.shape
    q_x, s_x = quantize_rows(x.reshape(-1, shape[-1]))  # (M, K) e4m3, (M, 1)
    out = torch._scaled_mm(q_x, q_w.t(), scale_a=s_x, scale_b=s_w, bias=bias, out_dtype=x.dtype)  # (M, N)
    return out.reshape(*shape[:-1], out.shape[-1])


def _fp8_linear(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return fp8_matmul(x, *self._fp8, self.bias)


def _mlp_gelu_epilogue(self: Mlp, x: torch.Tensor) -> torch.Tensor:
    """fc2(gelu_tanh(fc1(x))) with fc1's bias and GELU in the GEMM's epilogue. On CUDA
    ``_addmm_activation(use_gelu=True)`` is the tanh approximation (cuBLASLt's GELU epilogue); on a CPU it
    would be the exact GELU, so a CPU computes the same function the unfused way."""
    shape = x.shape
    fc1 = self.fc1
    if x.is_cuda:
        h = torch._addmm_activation(fc1.bias, x.reshape(-1, shape[-1]), fc1.weight.t(), use_gelu=True)  # (M, 4D)
    else:
        h = F.gelu(F.linear(x.reshape(-1, shape[-1]), fc1.weight, fc1.bias), approximate="tanh")
    return self.fc2(h).reshape(*shape[:-1], -1)  # (..., D)
