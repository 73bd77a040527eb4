"""What runs inside the fast path's compiled transformer blocks (``FastPathConfig.kernels``).

- ``"inductor"``: the blocks as written. torch.compile fuses LayerNorm + adaLN modulation, the gates and the
  residual adds into Triton kernels between the cuBLAS GEMMs and SDPA.
- ``"fused"``: a DiT block runs as one kernel sequence (:func:`_dit_block`): one row kernel for LayerNorm +
  modulation, the qkv GEMM, cuDNN attention, the proj GEMM, one row kernel for the gated residual +
  LayerNorm + modulation, fc1 with its bias and tanh-GELU in the GEMM's cuBLASLt epilogue
  (``torch._addmm_activation``, which inductor leaves as one opaque call), fc2, the last gated residual.
  The row kernels are ``triton_ops.py``'s (``row_kernels="triton"``) or the same math in torch ops that
  inductor fuses (``"inductor"``). Other blocks (U-ViT) get only the GELU epilogue, where their MLP uses
  tanh-GELU.
- ``"fp8"``: as ``"fused"``, with the four token GEMMs (qkv, proj, fc1, fc2) as e4m3 ``torch._scaled_mm``
  with row-wise scales: each weight row (output channel) quantised once when the path is applied, each
  activation row (token) quantised by the row kernel that produces it (LayerNorm + modulation, GELU, the
  attention output); bf16 output, bias in the GEMM; attention in bf16. A block whose widths fp8 GEMMs cannot
  take (not multiples of 16) stays on ``"fused"``; other blocks' token Linears become fp8 one by one.
  Opt-in smoothing (``fp8_smooth``, SmoothQuant, Xiao et al. 2023): a DiT block's fp8 GEMM computes
  (x / s) @ (W diag(s))^T, with per-input-channel factors s that move the activations' channel outliers
  (which a per-token scale cannot absorb) into the weights (which are scaled per output channel); the 1/s
  rides on work the block does anyway (:func:`smooth_dit_block`).
  Opt-in ``fp8_mlp="epilogue"``: a DiT block's MLP as two Triton fp8 GEMMs (``triton_gemm.py``), fc1 with bias +
  GELU + per-(row, 128 columns) quantisation in its epilogue and fc2 on those group scales with the block's
  last gated residual in its epilogue, stored into the block's output: no row pass between or after them.

Measured (H200, DiT-XL/2, B=64): ``results/kernel_variants_h200.md``. Opt-in and removable:
:func:`apply_kernels` sets instance-level ``forward`` overrides on the blocks' own modules (no module is
replaced, the state dict is unchanged) and returns a handle whose ``remove()`` deletes them. Written by hand
because no installed library does it: torchao (float8 dynamic activation, row-wise weights) is not a
dependency, and no library fuses LayerNorm + adaLN modulation + gated residual (+ fp8 quantisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models.dit import DiTBlock
from .models.layers import Attention, Mlp
from .triton_gemm import fp8_fc1_gelu_quant, fp8_group_scaled_mm_residual_
from .triton_gemm import supports as fp8_mlp_epilogue_ok
from .triton_ops import FP8, FP8_MAX, MIN_SCALE, _ln_modulate_ref, _quant_ref, act_quant, act_quant_ref, cudnn_attention, ln_modulate

KERNELS = ("inductor", "fused", "fp8")


@dataclass
class KernelHandle:
    kernels: str
    patched: list = field(default_factory=list, repr=False)  # modules given an instance-level forward
    fp8_linears: int = 0  # block Linears running as fp8 GEMMs
    fp8_mlp_epilogue: int = 0  # DiT blocks whose fp8 MLP runs triton_gemm's fused fc1 epilogue (fp8_mlp="epilogue")
    bf16_linears: int = 0  # block Linears left in bf16 (sizes fp8 GEMMs do not take)

    batched_adaln: nn.Module | None = field(default=None, repr=False)  # the DiT whose adaLN projections batch_adaln joined

    def remove(self) -> None:
        for m in self.patched:
            for name in ("forward", "_fp8", "_fp8_gemms", "_fp8_fast_accum", "_fp8_smooth", "_fp8_mlp", "_attention", "_row_kernels"):
                m.__dict__.pop(name, None)
        self.patched.clear()
        if self.batched_adaln is not None:
            model, self.batched_adaln = self.batched_adaln, None
            for name in ("embed", "run_block", "head"):
                model.__dict__.pop(name, None)
            for blk in model.compute_blocks():  # each weight back in storage of its own (saving shared views fails)
                lin = blk.adaLN_modulation[-1]
                lin.weight.data, lin.bias.data = lin.weight.data.clone(), lin.bias.data.clone()


ATTENTION = ("cudnn", "sdpa")  # the fused DiT block's attention: cuDNN's fused kernel, or SDPA's own choice (flash)
ROW_KERNELS = ("triton", "inductor")  # its LayerNorm / residual / quantise passes: triton_ops.py, or torch ops inductor fuses


# kernels="fp8", a DiT block's MLP: "rows" (fc1, one GELU + row quantisation pass, fc2; torch._scaled_mm with row
# scales) or "epilogue" (triton_gemm: fc1 with GELU + per-(row, 128 columns) quantisation in its epilogue, fc2 with
# those group scales; no pass between the GEMMs). Where fc1 and fc2 are not both fp8, or the widths do not fit
# the kernels, a block stays on "rows".
FP8_MLP = ("rows", "epilogue")
TOKEN_GEMMS = ("qkv", "proj", "fc1", "fc2")  # a DiT block's GEMMs over its tokens, which kernels="fp8" may run in fp8
SMOOTH_GEMMS = ("qkv", "proj", "fc1")  # fp8_smooth's default GEMMs: the measured best (balancing fc2 too does not help, results/kernels_fd_v2)
SMOOTH_CLAMP = 1e-5  # smoothing factors (and the channel maxima they come from) kept within [1e-5, 1e5]


def apply_kernels(model: nn.Module, kernels: str, attention: str = "cudnn", row_kernels: str = "triton",
                  fp8_gemms: tuple[str, ...] = TOKEN_GEMMS, batched_adaln: bool = False,
                  fp8_fast_accum: bool = False, fp8_input_means: dict | None = None, fp8_smooth: dict | None = None,
                  fp8_smooth_alpha: float = 0.5, fp8_smooth_gemms: tuple[str, ...] = SMOOTH_GEMMS,
                  fp8_mlp: str = "rows") -> KernelHandle:
    """Switch ``model.compute_blocks()`` to ``kernels`` (one of :data:`KERNELS`); the weights are taken as they
    are now (apply after the dtype conversion; the fp8 copies are not updated if the weights change later).
    ``batched_adaln``: every DiT block's adaLN projection in one GEMM per forward (:func:`batch_adaln`).
    ``fp8_fast_accum``: the fp8 GEMMs accumulate in the tensor cores' fast, less precise mode
    (``torch._scaled_mm(use_fast_accum=True)``: on Hopper the partial sums are not promoted to fp32 as often),
    measured 17% faster on the fc1 GEMM at B=64 (``results/bench_dit_h200_kernels.md``); opt-in, since it
    adds error that grows with the GEMM's depth K.
    ``fp8_input_means``: :func:`fp8_input_means`' calibration; each fp8 GEMM's bias then also cancels what its
    weights' rounding does to that mean input (:func:`_to_fp8`).
    ``fp8_smooth``: :func:`fp8_input_amax`' calibration; each DiT block's fp8 GEMMs among ``fp8_smooth_gemms``
    then run on smoothed operands, factors s = amax_x^alpha / amax_w^(1 - alpha) (:func:`smooth_dit_block`).
    ``fp8_mlp``: one of :data:`FP8_MLP`, how an fp8 DiT block runs its MLP."""
    check_kernel_options(kernels, attention, row_kernels, fp8_gemms, fp8_input_means, fp8_fast_accum, fp8_mlp)
    check_fp8_smooth(model, kernels, fp8_gemms, fp8_smooth, fp8_smooth_alpha, fp8_smooth_gemms)
    named = token_linears(model)  # the calibrations' keys
    names = {id(v): k for k, v in named.items()}
    means = {}
    if fp8_input_means is not None:
        unknown = sorted(set(fp8_input_means) - set(named))
        if unknown:
            raise ValueError(f"fp8_input_means names Linears this model lacks ({', '.join(unknown[:3])}): calibrate this model")
        means = {id(named[k]): v for k, v in fp8_input_means.items()}
    handle = KernelHandle(kernels)
    if batched_adaln:
        batch_adaln(model, handle)
    if kernels == "inductor":
        return handle
    for blk in model.compute_blocks():
        if isinstance(blk, DiTBlock):  # the whole block as one kernel sequence (row kernels in triton_ops.py)
            lins = dict(zip(TOKEN_GEMMS, (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2)))
            fp8 = kernels == "fp8" and all(fp8_shape_ok(v.in_features, v.out_features) for v in lins.values())
            blk.forward = _dit_block.__get__(blk)
            blk._fp8_gemms = frozenset(fp8_gemms if fp8 else ())  # a width fp8 GEMMs cannot take: the bf16 fused block
            blk._attention, blk._row_kernels, blk._fp8_fast_accum = attention, row_kernels, fp8_fast_accum
            mlp_ok = {"fc1", "fc2"} <= blk._fp8_gemms and fp8_mlp_epilogue_ok(lins["fc1"].in_features, lins["fc1"].out_features)
            blk._fp8_mlp = fp8_mlp if mlp_ok else "rows"
            handle.fp8_mlp_epilogue += blk._fp8_mlp == "epilogue"
            handle.patched.append(blk)
            weights, factors = {}, {}
            if fp8_smooth is not None and blk._fp8_gemms:  # this block's maxima, by GEMM name
                amax = {g: fp8_smooth[names[id(v)]] for g, v in lins.items() if names[id(v)] in fp8_smooth}
                weights, factors = smooth_dit_block(blk, amax, fp8_smooth_alpha, tuple(g for g in fp8_smooth_gemms if g in blk._fp8_gemms))
            blk._fp8_smooth = factors  # GEMM name -> (K,) fp32 factors s of its input (absent: not smoothed)
            for name, lin in lins.items():
                if name in blk._fp8_gemms:
                    mean = means.get(id(lin))
                    if mean is not None and name in factors:  # the GEMM's input is x / s now
                        mean = mean.to(factors[name].device, torch.float32) / factors[name]
                    _to_fp8(lin, handle, patch=False, mean=mean, weight=weights.get(name))
                elif kernels == "fp8":
                    handle.bf16_linears += 1
            continue
        for m in blk.modules():
            if kernels == "fused" and isinstance(m, Mlp) and getattr(m.act, "approximate", None) == "tanh" and m.fc1.bias is not None:
                m.forward = _mlp_gelu_epilogue.__get__(m)
                handle.patched.append(m)
            elif kernels == "fp8" and isinstance(m, (Attention, Mlp)):
                for lin in (m.qkv, m.proj) if isinstance(m, Attention) else (m.fc1, m.fc2):
                    _to_fp8(lin, handle, fast_accum=fp8_fast_accum, mean=means.get(id(lin)))
    return handle


def batch_adaln(model: nn.Module, handle: KernelHandle) -> None:
    """A DiT's adaLN projections (one (6D, D) Linear per block, all on the same conditioning c) as one GEMM
    at the embedding: (B, D) -> (B, K * 6D), instead of K small GEMMs that each read their weight once
    for a handful of rows. The blocks' weights become views of the joined matrix (no copy; ``remove()``
    separates them again). The modulations ride on the tokens' conditioning, ``Tokens.c`` = [c | mod_0 |
    ... | mod_K-1] (B, D + K*6D): ``run_block`` hands block i its (B, 6D) slice, which the block takes as its
    modulation (``DiTBlock.forward``), and ``head`` the c part. The same function: every output element is
    the same dot product over D. Rows that leave early carry modulations for blocks they skip (B x K*6D
    values, small beside the tokens). Written by hand: no library joins per-block projections."""
    from .models.backbone import Tokens

    if handle.batched_adaln is not None or "embed" in model.__dict__:
        raise ValueError("batched_adaln is applied to this model already (remove() the earlier handle first)")
    check_batched_adaln(model)
    blocks = model.compute_blocks()
    lins = [b.adaLN_modulation[-1] for b in blocks]
    D = lins[0].in_features
    W = torch.cat([lin.weight.data for lin in lins])  # (K * 6D, D)
    bias = torch.cat([lin.bias.data for lin in lins])  # (K * 6D,)
    for i, lin in enumerate(lins):
        lin.weight.data, lin.bias.data = W[6 * D * i: 6 * D * (i + 1)], bias[6 * D * i: 6 * D * (i + 1)]

    base_embed, base_run_block, base_head = model.embed, model.run_block, model.head

    def embed(x, t, y):
        s = base_embed(x, t, y)
        return Tokens(s.h, torch.cat([s.c, F.linear(F.silu(s.c), W, bias)], dim=1))  # (B, D + K*6D)

    def run_block(i, s, n, active=None):
        out = base_run_block(i, Tokens(s.h, s.c[:, D + 6 * D * i: D + 6 * D * (i + 1)]), n, active)  # block i's (B, 6D)
        return Tokens(out.h, s.c)

    def head(s):
        return base_head(Tokens(s.h, s.c[:, :D]))

    model.embed, model.run_block, model.head = embed, run_block, head
    handle.batched_adaln = model


def check_batched_adaln(model: nn.Module) -> None:
    from .models.dit import DiT

    if not isinstance(model, DiT) or not all(isinstance(b, DiTBlock) for b in model.compute_blocks()):
        raise ValueError(f"batched_adaln joins DiT blocks' adaLN projections; this {type(model).__name__} has none "
                         "(leave batched_adaln off)")


def check_kernel_options(kernels: str, attention: str, row_kernels: str, fp8_gemms=TOKEN_GEMMS,
                         fp8_input_means: dict | None = None, fp8_fast_accum: bool = False, fp8_mlp: str = "rows") -> None:
    """The options of :func:`apply_kernels` (and of the fast path, which checks them before it touches the model)."""
    if fp8_mlp not in FP8_MLP:
        raise ValueError(f"unknown fp8_mlp '{fp8_mlp}': use one of {', '.join(FP8_MLP)}")
    if fp8_mlp != "rows" and kernels != "fp8":
        raise ValueError(f"fp8_mlp='{fp8_mlp}' is a way to run fp8 MLPs: it needs kernels='fp8', not '{kernels}'")
    if fp8_input_means is not None and kernels != "fp8":
        raise ValueError(f"fp8_input_means corrects fp8 GEMMs: it needs kernels='fp8', not '{kernels}'")
    if fp8_fast_accum and kernels != "fp8":
        raise ValueError(f"fp8_fast_accum applies to kernels='fp8' only, not kernels='{kernels}'")
    if set(fp8_gemms) - set(TOKEN_GEMMS) or isinstance(fp8_gemms, str):
        raise ValueError(f"fp8_gemms must be a tuple of some of {', '.join(TOKEN_GEMMS)}, got {fp8_gemms!r}")
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels '{kernels}': use one of {', '.join(KERNELS)}")
    if attention not in ATTENTION or row_kernels not in ROW_KERNELS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)} and row_kernels one of {', '.join(ROW_KERNELS)}, "
                         f"got '{attention}', '{row_kernels}'")


def smooth_alpha_ok(alpha) -> bool:
    """Whether ``alpha`` is a valid fp8_smooth_alpha: a number in [0, 1] (NaN fails both comparisons)."""
    return isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0.0 <= alpha <= 1.0


def smoothable(model: nn.Module) -> bool:
    """Whether fp8_smooth can fold its factors into ``model``: every compute block is a DiT block."""
    return all(isinstance(b, DiTBlock) for b in model.compute_blocks())


def check_fp8_smooth(model: nn.Module, kernels: str, fp8_gemms, smooth: dict | None, alpha: float,
                     smooth_gemms=SMOOTH_GEMMS) -> None:
    """The smoothing options of :func:`apply_kernels` (checked before the model is touched)."""
    if isinstance(smooth_gemms, str) or set(smooth_gemms) - set(TOKEN_GEMMS):
        raise ValueError(f"fp8_smooth_gemms must be a tuple of some of {', '.join(TOKEN_GEMMS)}, got {smooth_gemms!r}")
    if not smooth_alpha_ok(alpha):
        raise ValueError(f"fp8_smooth_alpha must be a number in [0, 1], got {alpha!r}")
    if smooth is None:
        return
    if kernels != "fp8":
        raise ValueError(f"fp8_smooth balances fp8 GEMMs: it needs kernels='fp8', not '{kernels}'")
    if not smoothable(model):
        raise ValueError(f"fp8_smooth folds its factors into DiT blocks (modulation, qkv's v rows); this {type(model).__name__} "
                         "has other blocks: leave fp8_smooth off")
    if "proj" in smooth_gemms and "proj" in fp8_gemms and "qkv" not in fp8_gemms:
        raise ValueError("fp8_smooth of proj folds 1/s into qkv's fp8 weight: keep qkv in fp8_gemms or drop proj from fp8_smooth_gemms")
    named = token_linears(model)
    if not isinstance(smooth, dict):
        raise ValueError(f"fp8_smooth must be fp8_input_amax's dict (Linear name -> (in_features,) maxima), got {type(smooth).__name__}")
    unknown = sorted(set(smooth) - set(named))
    if unknown:
        raise ValueError(f"fp8_smooth names Linears this model lacks ({', '.join(unknown[:3])}): calibrate this model")
    for k, v in smooth.items():
        if not (isinstance(v, torch.Tensor) and v.shape == (named[k].in_features,) and bool(torch.isfinite(v).all()) and bool((v >= 0).all())):
            raise ValueError(f"fp8_smooth['{k}'] must be a finite, non-negative ({named[k].in_features},) tensor of input maxima, "
                             f"got {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")


def smooth_factors(amax_x: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors of a Linear with weight ``w`` (N, K) and input maxima ``amax_x``
    (K,): s_k = amax_x_k^alpha / amax_w_k^(1 - alpha), amax_w_k = max_n |w[n, k]| (fp32, (K,)). x / s and
    w diag(s) then have channel ranges amax_x^(1-alpha) amax_w^(1-alpha) and amax_x^alpha amax_w^alpha: alpha
    moves the channels' spread from the activations into the weights. A channel that never carried input, or
    has no weight, keeps s = 1 (its maximum says nothing), and s stays within [1e-5, 1e5]."""
    ax = amax_x.to(w.device, torch.float32)
    aw = w.detach().float().abs().amax(dim=0)  # (K,)
    s = ax.clamp(min=SMOOTH_CLAMP).pow(alpha) / aw.clamp(min=SMOOTH_CLAMP).pow(1 - alpha)
    s = torch.where((ax > 0) & (aw > 0), s, torch.ones_like(s))
    return s.clamp(SMOOTH_CLAMP, 1 / SMOOTH_CLAMP)


def smooth_dit_block(blk: DiTBlock, amax: dict, alpha: float, gemms: tuple[str, ...] = TOKEN_GEMMS) -> tuple[dict, dict]:
    """The smoothed fp32 weights and the factors of a DiT block's token GEMMs ``gemms`` (those ``amax``, keyed
    by GEMM name ("qkv", ...), has input maxima for; the rest keep their weights): ``({name: (W', b')}, {name: s})``.
    W' = W diag(s); where 1/s goes (exact, and no pass over the activations of its own):

    - qkv / fc1: their input is the LayerNorm + modulation row kernel's LN(h) (1 + scale) + shift; divided by s
      it is LN(h) (1 + scale') + shift' with scale' = (1 + scale) / s - 1, shift' = shift / s: (B, D) ops on
      the modulation in the block's forward (:func:`fold_modulation`).
    - proj: its input is attention's output softmax(q k^T) v, linear in v per channel: qkv's v rows (weight and
      bias) are divided by s here, once.
    - fc2: its input GELU(fc1 output) is not linear: the GELU + quantise row kernel multiplies by 1/s
      (``act_quant``'s ``inv``), where it already touches every element.

    The factors come from the weights as trained (qkv's before its v rows are scaled). The module's own
    weights are not touched: W' are new fp32 tensors, which :func:`_to_fp8` quantises per output row."""
    lins = dict(zip(TOKEN_GEMMS, (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2)))
    factors = {g: smooth_factors(amax[g], lins[g].weight, alpha) for g in gemms if g in amax}
    weights = {}
    for g, lin in lins.items():
        w = lin.weight.detach().float()  # (N, K)
        b = lin.bias.detach().float() if lin.bias is not None else None  # (N,)
        if g in factors:
            w = w * factors[g].unsqueeze(0)  # W diag(s)
        if g == "qkv" and "proj" in factors:  # v rows [2D, 3D) produce proj's input channel by channel
            D = lin.in_features
            inv = torch.ones(3 * D, dtype=torch.float32, device=w.device)
            inv[2 * D:] = 1 / factors["proj"]
            w = w * inv.unsqueeze(1)
            b = b * inv if b is not None else None
        if g in factors or (g == "qkv" and "proj" in factors):
            weights[g] = (w, b)
    return weights, factors


def fold_modulation(shift: torch.Tensor, scale: torch.Tensor, s: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D) shift, scale of LN(h) (1 + scale) + shift -> those of the same row divided by ``s`` (D,), in fp32:
    LN(h) (1 + scale') + shift' = (LN(h) (1 + scale) + shift) / s. ``s`` None: unchanged."""
    if s is None:
        return shift, scale
    return shift.float() / s, (1 + scale.float()) / s - 1


def _to_fp8(lin: nn.Linear, handle: KernelHandle, patch: bool = True, fast_accum: bool = False,
            mean: torch.Tensor | None = None, weight: tuple | None = None) -> None:
    """The token GEMMs (attention's qkv and proj, the MLP's two) only: the adaLN projection works on one
    vector per row, so fp8 would only save a few MB of weight reads there, and its output (shift, scale,
    gate) sets every token's scale.

    ``lin._fp8`` = (e4m3 weight, its scales, the GEMM's bias). With ``mean`` (the Linear's mean input, from
    :func:`fp8_input_means`) that bias is corrected: e4m3 rounds each weight by up to 1/16 of itself, a fixed
    error dW that shifts every output by x @ dW.T; its part from the mean input, mean @ dW.T, is the same for
    every row and goes into the bias (bias correction, Nagel et al. 2019, "Data-free quantization"). The
    module's own bias is not touched. ``weight``: (fp32 (N, K) weight, its bias) to quantise in place of the
    module's (smoothing, :func:`smooth_dit_block`); ``mean`` is then that GEMM's (smoothed) mean input."""
    if not fp8_shape_ok(lin.in_features, lin.out_features):
        handle.bf16_linears += 1
        return
    if lin.weight.dtype != torch.bfloat16:
        raise ValueError(f"kernels='fp8' needs bf16 weights, got {lin.weight.dtype}: use FastPathConfig(dtype='bf16')")
    w, bias = (lin.weight.detach(), lin.bias.detach() if lin.bias is not None else None) if weight is None else weight
    q, s = quantize_weight(w)
    if mean is not None:
        dw = q.float() * s.t() - w.float()  # (N, K): the rounding of each weight
        corr = -(dw @ mean.to(dw.device, torch.float32))  # (N,)
        bias = corr if bias is None else bias.float() + corr
    bias = bias.to(lin.weight.dtype) if bias is not None else None  # (the GEMM's bias is bf16, as its output)
    lin._fp8 = (q, s, bias)
    if patch:
        lin.forward = _fp8_linear.__get__(lin)
        lin._fp8_fast_accum = fast_accum
    handle.patched.append(lin)
    handle.fp8_linears += 1


def token_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linears ``kernels="fp8"`` may run in fp8, by qualified name: every compute block's attention qkv /
    proj and MLP fc1 / fc2 (a DiT block's four token GEMMs, a U-ViT block's)."""
    names = {id(m): n for n, m in model.named_modules()}
    out = {}
    for blk in model.compute_blocks():
        for m in blk.modules():
            if isinstance(m, (Attention, Mlp)):
                for lin in (m.qkv, m.proj) if isinstance(m, Attention) else (m.fc1, m.fc2):
                    out[names[id(lin)]] = lin
    return out


@torch.no_grad()
def fp8_input_means(model: nn.Module, run) -> dict[str, torch.Tensor]:
    """The calibration of fp8 bias correction: the mean input, per input channel (fp32), of every token Linear
    (:func:`token_linears`) over all the rows that ``run()`` (e.g. sampling a few images) sends through them.
    Run it on the model before its kernels are applied: a fused DiT block calls no Linear. Its rows are the
    ones that reach each block, so under an exit schedule a late block sees only the steps that run it."""
    sums = _record_inputs(model, run, "fp8_input_means", lambda acc, x: (acc[0] + x.double().sum(0), acc[1] + x.shape[0]),
                          lambda x: (torch.zeros(x.shape[-1], dtype=torch.float64, device=x.device), 0))
    return {k: (v / n).float() for k, (v, n) in sums.items() if n}


@torch.no_grad()
def fp8_input_amax(model: nn.Module, run) -> dict[str, torch.Tensor]:
    """The calibration of fp8 smoothing (``FastPathConfig(fp8_smooth=...)``): the absolute maximum input, per
    input channel (fp32, (in_features,)), of every token Linear over the rows ``run()`` sends through them; as
    :func:`fp8_input_means` (before the kernels are applied; a Linear no row reaches has no entry)."""
    return _record_inputs(model, run, "fp8_input_amax", lambda acc, x: torch.maximum(acc, x.float().abs().amax(0)),
                          lambda x: torch.zeros(x.shape[-1], dtype=torch.float32, device=x.device))


def _record_inputs(model: nn.Module, run, what: str, update, init) -> dict:
    """Per token Linear, ``acc = update(acc, x)`` over its (M, in_features) inputs while ``run()`` runs."""
    if any(hasattr(b, "_fp8_gemms") or "forward" in b.__dict__ for b in model.compute_blocks()):
        raise ValueError(f"{what} reads the Linears' inputs: calibrate before the kernels are applied (or after remove())")
    accs: dict = {}

    def hook(name):
        def fn(mod, inp, out):
            x = inp[0].reshape(-1, inp[0].shape[-1])
            accs[name] = update(accs[name] if name in accs else init(x), x)
        return fn

    handles = [lin.register_forward_hook(hook(name)) for name, lin in token_linears(model).items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return accs


def fp8_shape_ok(in_features: int, out_features: int) -> bool:
    """fp8 GEMMs (cuBLASLt / CUTLASS on Hopper) need both matrix sides in multiples of 16."""
    return in_features % 16 == 0 and out_features % 16 == 0


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) weight -> (N, K) e4m3 and its (1, N) fp32 scales, one per output channel: w ~ q * s."""
    s = (w.float().abs().amax(dim=1) / FP8_MAX).clamp(min=MIN_SCALE)  # (N,)
    q = (w.float() / s.unsqueeze(1)).to(FP8)
    return q, s.unsqueeze(0)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) activations -> (M, K) e4m3 and (M, 1) fp32 scales, one per row (token): x ~ q * s."""
    return _quant_ref(x.float())


def fp8_matmul(x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None,
               fast_accum: bool = False) -> torch.Tensor:
    """x (..., K) bf16 @ (q_w * s_w).T + bias -> (..., N) bf16, the activation quantised per row."""
    shape = x.shape
    out = _fp8_gemm(*quantize_rows(x.reshape(-1, shape[-1])), q_w, s_w, bias, fast_accum)  # (M, N)
    return out.reshape(*shape[:-1], out.shape[-1])


def _fp8_gemm(q_x: torch.Tensor, s_x: torch.Tensor, q_w: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None,
              fast_accum: bool = False) -> torch.Tensor:
    """(M, K) e4m3 codes with (M, 1) scales @ ((N, K) codes with (1, N) scales).T + bias -> (M, N) bf16."""
    return torch._scaled_mm(q_x, q_w.t(), scale_a=s_x, scale_b=s_w, bias=bias, out_dtype=torch.bfloat16, use_fast_accum=fast_accum)


def _fp8_linear(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return fp8_matmul(x, *self._fp8, self._fp8_fast_accum)


def _mlp_gelu_epilogue(self: Mlp, x: torch.Tensor) -> torch.Tensor:
    """fc2(gelu_tanh(fc1(x))) with fc1's bias and GELU in the GEMM's epilogue. On CUDA
    ``_addmm_activation(use_gelu=True)`` is the tanh approximation (cuBLASLt's GELU epilogue); on a CPU it
    would be the exact GELU, so a CPU computes the same function the unfused way."""
    shape = x.shape
    h = _gelu_linear(x.reshape(-1, shape[-1]), self.fc1)  # (M, 4D)
    return self.fc2(h).reshape(*shape[:-1], -1)  # (..., D)


def _dit_block(self: DiTBlock, x: torch.Tensor, c: torch.Tensor, keep: torch.Tensor | None = None, inplace: bool = False) -> torch.Tensor:
    """``DiTBlock.forward`` (same arguments, same function up to rounding) as: one row kernel for LayerNorm +
    modulation, the qkv GEMM, cuDNN attention, the proj GEMM, one row kernel for the gated residual +
    LayerNorm + modulation, the MLP (bf16: GELU in fc1's epilogue; fp8: GELU + quantisation in one row
    kernel between the two fp8 GEMMs), and the last gated residual (inductor, stored into ``x``)."""
    if torch.is_grad_enabled():  # the custom ops have no backward: a gradient goes through the block as written
        return DiTBlock.forward(self, x, c, keep, inplace)
    B, N, D = x.shape
    q8 = self._fp8_gemms  # the GEMMs that run in fp8 (all four under kernels="fp8", none under "fused")
    fast = self._fp8_fast_accum
    sm = self._fp8_smooth  # smoothed GEMM -> (K,) factors s of its input (smooth_dit_block; proj's are in qkv's v rows)
    shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=1)  # 6 x (B, D)
    shift1, scale1 = fold_modulation(shift1, scale1, sm.get("qkv"))  # qkv's input / s (fp32 (B, D) when folded)
    shift2, scale2 = fold_modulation(shift2, scale2, sm.get("fc1"))
    if keep is not None:
        gate1, gate2 = gate1 * keep.unsqueeze(1), gate2 * keep.unsqueeze(1)  # (B, D)
    at, ml = self.attn, self.mlp
    rows = self._row_kernels == "triton"
    lnm = ln_modulate if rows else _ln_modulate_ref  # the torch ops: inductor fuses them itself
    quant = act_quant if rows else act_quant_ref
    attend = cudnn_attention if self._attention == "cudnn" else F.scaled_dot_product_attention
    _, a, sa = lnm(x, shift1, scale1, self.norm1.eps, None, None, "qkv" in q8)  # (B, N, D) bf16 or e4m3 (+ (M, 1) scales)
    qkv = _gemm(a.reshape(B * N, D), sa, at.qkv, "qkv" in q8, fast)  # (M, 3D)
    qkv = qkv.reshape(B, N, 3, at.num_heads, D // at.num_heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
    o = attend(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(B * N, D)  # (M, D)
    o = _gemm(*quant(o, False), at.proj, True, fast) if "proj" in q8 else _gemm(o, None, at.proj, False)  # (M, D)
    h, a, sa = lnm(x, shift2, scale2, self.norm2.eps, o.reshape(B, N, D), gate1, "fc1" in q8)  # h = x + g1 * o
    a = a.reshape(B * N, D)
    if self._fp8_mlp == "epilogue":  # fc1 with GELU + group quantisation in its epilogue, fc2 on the group scales
        q, s = fp8_fc1_gelu_quant(a, sa, *ml.fc1._fp8, 1 / sm["fc2"] if "fc2" in sm else None)  # (M, 4D), (M, 4D / 128)
        # the last gated residual in fc2's epilogue, stored straight into the block's output (B, N, D)
        out = x if inplace and x.is_contiguous() else torch.empty(B, N, D, device=x.device, dtype=x.dtype)
        fp8_group_scaled_mm_residual_(q, s, *ml.fc2._fp8, h.reshape(B * N, D), gate2, N, out.view(B * N, D))
        return x.copy_(out) if inplace and out is not x else out
    if "fc2" in q8:  # fc1's bf16 output (bias in the GEMM), then GELU + quantise in one row pass
        f = _gemm(a, sa, ml.fc1, "fc1" in q8, fast)  # (M, 4D)
        inv = 1 / sm["fc2"] if "fc2" in sm else None  # (4D,): GELU(f) / s quantised, for fc2's W diag(s)
        y = _gemm(*quant(f, True, inv), ml.fc2, True, fast)  # (M, D)
    else:  # bias + GELU in a bf16 fc1's epilogue, or after an fp8 fc1
        f = F.gelu(_gemm(a, sa, ml.fc1, True, fast), approximate="tanh") if "fc1" in q8 else _gelu_linear(a, ml.fc1)  # (M, 4D)
        y = F.linear(f, ml.fc2.weight, ml.fc2.bias)  # (M, D)
    out = h + gate2.unsqueeze(1) * y.reshape(B, N, D)  # (B, N, D)
    return x.copy_(out) if inplace else out


def _gemm(a: torch.Tensor, s: torch.Tensor | None, lin: nn.Linear, fp8: bool, fast_accum: bool = False) -> torch.Tensor:
    if not fp8:
        return F.linear(a, lin.weight, lin.bias)
    return _fp8_gemm(a, s, *lin._fp8, fast_accum)


def _gelu_linear(a: torch.Tensor, fc1: nn.Linear) -> torch.Tensor:
    if a.is_cuda and fc1.bias is not None:  # cuBLASLt epilogue (tanh GELU on CUDA)
        return torch._addmm_activation(fc1.bias, a, fc1.weight.t(), use_gelu=True)
    return F.gelu(F.linear(a, fc1.weight, fc1.bias), approximate="tanh")
