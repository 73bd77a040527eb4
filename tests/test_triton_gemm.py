"""eediff.triton_gemm: the fp8 MLP's GEMMs with GELU + group quantisation in fc1's epilogue, in Triton's
interpreter on the CPU, against the torch references of the same math and against a bf16 MLP."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from eediff import triton_gemm as tg
from eediff.kernels import quantize_weight
from eediff.triton_ops import act_quant_ref


@pytest.fixture(params=[False, True], ids=["pointers", "tma"])
def interpret(monkeypatch, request):
    """Triton's interpreter, with tiles small enough for it (several programs per dimension, masked rows and
    columns), operands loaded through pointers or through TMA descriptors (``GemmLaunch.tma``)."""
    pytest.importorskip("triton")
    from eediff import triton_ops

    monkeypatch.setattr(triton_ops, "INTERPRET_ON_CPU", True)
    monkeypatch.setattr(tg, "LAUNCH", tg.GemmLaunch(block_m=16, block_n=32, block_k=32, group_m=2, warps=1, stages=1, tma=request.param))
    return tg


def _mlp(K, N, g, outliers=True):
    w1 = torch.randn(N, K, generator=g) / K**0.5
    w2 = torch.randn(K, N, generator=g) / N**0.5
    b1, b2 = torch.randn(N, generator=g) * 0.1, torch.randn(K, generator=g) * 0.1
    if outliers:  # a few hidden channels far larger than the rest, as trained MLPs have
        w1[: N // 32] *= 8
    return w1, b1, w2, b2


def _dequant_close(q, s, q_ref, s_ref, group):
    """Dequantised values within one e4m3 step (2^-3 relative, 2^-3 of the group's scale absolute) of the
    reference's, except where the reference's code is a power of two: Triton's interpreter does not carry a
    cast's round-up into the exponent (7.94 -> 4, not 8; the GPU's cvt instruction does, see
    tests/test_kernels.py), so those codes are left out. They must be few."""
    M, N = q.shape
    x = (q.float().reshape(M, N // group, group) * s.unsqueeze(2)).reshape(M, N)
    c = q_ref.float()
    r = (c.reshape(M, N // group, group) * s_ref.unsqueeze(2)).reshape(M, N)
    carry = (c.abs() > 0) & (torch.log2(c.abs()) == torch.log2(c.abs()).round())
    ok = ((x - r).abs() <= 2**-3 * r.abs() + 2**-3 * s_ref.repeat_interleave(group, dim=1)) | carry
    return bool(ok.all()) and carry.float().mean() < 0.2


@pytest.mark.parametrize("block_n", [32, 256])
def test_fc1_gelu_quant_kernel_against_its_reference(interpret, monkeypatch, block_n):
    """fc1 + bias + GELU + group quantisation in one kernel (M = 40: a masked block of rows; K = 64: two K
    steps; N = 256: two groups, in tiles of one group (block_n 32 is not a whole group: GROUP) or of both)
    against the fp32 torch reference: scales within 1e-4 relative (the same fp32 sums in another order, the
    GELU's tanh from exp), codes within one e4m3 step."""
    monkeypatch.setattr(tg, "LAUNCH", dataclasses.replace(tg.LAUNCH, block_n=block_n))
    g = torch.Generator().manual_seed(0)
    M, K, N = 40, 64, 256
    w1, b1, _, _ = _mlp(K, N, g)
    qa, sa = act_quant_ref(torch.randn(M, K, generator=g), False)
    qw, sw = quantize_weight(w1)
    q, s = tg.fp8_fc1_gelu_quant(qa, sa, qw, sw, b1)
    assert tg.triton_available(qa) and q.dtype == tg.FP8 and q.shape == (M, N) and s.shape == (M, N // tg.GROUP)
    q_ref, s_ref = tg.fp8_fc1_gelu_quant_ref(qa, sa, qw, sw, b1)
    assert torch.allclose(s, s_ref, rtol=1e-4, atol=0)
    assert _dequant_close(q, s, q_ref, s_ref, tg.GROUP)
    # without a bias: the kernel's other branch
    q0, s0 = tg.fp8_fc1_gelu_quant(qa, sa, qw, sw, None)
    q0_ref, s0_ref = tg.fp8_fc1_gelu_quant_ref(qa, sa, qw, sw, None)
    assert torch.allclose(s0, s0_ref, rtol=1e-4) and _dequant_close(q0, s0, q0_ref, s0_ref, tg.GROUP)
    # with a per-column factor after the GELU (fp8 smoothing of fc2's input)
    inv = torch.rand(N, generator=g) + 0.5
    qi, si = tg.fp8_fc1_gelu_quant(qa, sa, qw, sw, b1, inv)
    qi_ref, si_ref = tg.fp8_fc1_gelu_quant_ref(qa, sa, qw, sw, b1, inv)
    assert torch.allclose(si, si_ref, rtol=1e-4) and _dequant_close(qi, si, qi_ref, si_ref, tg.GROUP)
    assert not torch.allclose(si, s, rtol=1e-2)


def test_group_scaled_mm_kernel_against_its_reference(interpret):
    """fc2 with one activation scale per (row, group of 128 K): M = 40, K = 256 (two groups, scales that differ
    by 100x between them), N = 48 (a masked block of columns), bias and none: within 1 bf16 rounding of the
    fp32 reference."""
    g = torch.Generator().manual_seed(1)
    M, K, N = 40, 256, 48
    y = torch.randn(M, K, generator=g)
    y[:, tg.GROUP:] *= 100
    qa, sa = tg.group_quant_ref(y)
    qw, sw = quantize_weight(torch.randn(N, K, generator=g) / K**0.5)
    bias = torch.randn(N, generator=g).bfloat16()
    for b in (bias, None):
        out = tg.fp8_group_scaled_mm(qa, sa, qw, sw, b)
        ref = tg.fp8_group_scaled_mm_ref(qa, sa, qw, sw, b)
        assert out.dtype == torch.bfloat16 and out.shape == (M, N)
        assert torch.allclose(out.float(), ref.float(), rtol=2**-7, atol=2**-7 * ref.abs().max().item() * 1e-2)
    # and the reference is the plain matmul of the dequantised operands (independent of the grouping code)
    deq = torch.cat([qa[:, :tg.GROUP].float() * sa[:, :1], qa[:, tg.GROUP:].float() * sa[:, 1:]], dim=1)
    direct = deq @ (qw.float() * sw.t()).t()
    assert torch.allclose(tg.fp8_group_scaled_mm_ref(qa, sa, qw, sw, None).float(), direct, rtol=2**-7, atol=1e-3)


def test_group_scaled_mm_residual_into_its_output(interpret):
    """fc2 with the block's last gated residual in its epilogue, stored into ``out``: residual + gate(image) * y,
    the gate a strided view of the modulation, 3 images of 7 tokens (rows of one image span two row blocks):
    within one bf16 step of the fp32 reference (Triton's interpreter stores bf16 rounded toward zero, the
    GPU to nearest), and ``out`` is written in place."""
    g = torch.Generator().manual_seed(4)
    B, T, K, D = 3, 7, 256, 48
    qa, sa = tg.group_quant_ref(torch.randn(B * T, K, generator=g))
    qw, sw = quantize_weight(torch.randn(D, K, generator=g) / K**0.5)
    bias = torch.randn(D, generator=g).bfloat16()
    res = torch.randn(B * T, D, generator=g).bfloat16()
    gate = torch.randn(B, 6 * D, generator=g).bfloat16()[:, 2 * D:3 * D]
    out = torch.zeros(B * T, D, dtype=torch.bfloat16)
    ptr = out.data_ptr()
    assert tg.fp8_group_scaled_mm_residual_(qa, sa, qw, sw, bias, res, gate, T, out) is None and out.data_ptr() == ptr
    ref = tg.fp8_group_scaled_mm_residual_ref(qa, sa, qw, sw, bias, res, gate, T)
    ulp = 2.0 ** (torch.floor(torch.log2(ref.float().abs().clamp(min=1e-3))) - 7)
    assert ((out.float() - ref.float()).abs() <= ulp).all()
    # the reference itself: the residual plus each row's image's gate times fc2 (independent arithmetic)
    y = tg.fp8_group_scaled_mm_ref(qa, sa, qw, sw, bias, out_dtype=torch.float32)
    direct = torch.stack([res[i].float() + gate[i // T].float() * y[i] for i in range(B * T)])
    assert torch.allclose(ref.float(), direct, rtol=2**-8, atol=1e-3)


def test_group_scales_lose_no_more_than_row_scales():
    """The whole fp8 MLP (input quantised per row, as the block's LayerNorm kernel does) with its hidden
    activations quantised per (row, 128 columns) against per row (the row kernel's act_quant), both against
    fc2 of the exact hidden activations: the error the hidden quantisation adds is no larger with group
    scales (e4m3 is a float format: its relative step does not depend on the scale, so finer scales gain
    only where a row spans more than its 2^15 range; the group path is for fusion, not for accuracy). On
    the references: Triton's interpreter rounds a few casts down a power of two (see _dequant_close)."""
    g = torch.Generator().manual_seed(2)
    M, K, N = 48, 64, 512
    w1, b1, w2, b2 = _mlp(K, N, g)
    qx, sx = act_quant_ref(torch.randn(M, K, generator=g), False)
    qw1, sw1 = quantize_weight(w1)
    qw2, sw2 = quantize_weight(w2)
    h = F.linear(qx.float() * sx, qw1.float() * sw1.t(), b1)  # fc1 in fp32 from the fp8 operands
    exact = F.linear(F.gelu(h, approximate="tanh"), qw2.float() * sw2.t(), b2)
    grouped = tg.fp8_group_scaled_mm_ref(*tg.fp8_fc1_gelu_quant_ref(qx, sx, qw1, sw1, b1), qw2, sw2, b2).float()
    qh, sh = act_quant_ref(h, True)  # GELU + one scale per row
    rowwise = F.linear(qh.float() * sh, qw2.float() * sw2.t(), b2)

    def rel(a):
        return ((a - exact).norm() / exact.norm()).item()

    assert 0 < rel(grouped) < 0.04 and rel(grouped) <= 1.01 * rel(rowwise), (rel(grouped), rel(rowwise))


def test_supports_and_references_off_triton():
    """Off Triton (a CPU without the interpreter) the ops are their references; ``supports`` names the widths
    the kernels take."""
    assert tg.supports(1152, 4608) and tg.supports(64, 256)
    assert not tg.supports(1152, 4600) and not tg.supports(48, 256)
    g = torch.Generator().manual_seed(3)
    qa, sa = act_quant_ref(torch.randn(8, 64, generator=g), False)
    qw, sw = quantize_weight(torch.randn(256, 64, generator=g))
    q, s = tg.fp8_fc1_gelu_quant(qa, sa, qw, sw, None)
    q_ref, s_ref = tg.fp8_fc1_gelu_quant_ref(qa, sa, qw, sw, None)
    assert torch.equal(s, s_ref) and torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


def test_fp8_mlp_benchmark_runs_every_variant_on_the_cpu(tmp_path):
    """benchmarks/fp8_mlp.py --tiny (the torch references on a CPU): every variant and part is timed, its JSON
    and table written, and the fused path's MLP error equals the row path's to within 10% (the same fp8
    operands; the groups change the hidden codes only slightly). A bad --launch is one line."""
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location("fp8_mlp", pathlib.Path(__file__).parents[1] / "benchmarks" / "fp8_mlp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "m.json"
    mod.main(["--tiny", "--launch", "128,128,128,8,8,4;64,128,128,8,4,3,1", "--out", str(out)])
    import json

    res = json.loads(out.read_text())
    parts = [(r["variant"].split(" (")[0], r["part"]) for r in res["rows"]]
    assert parts.count(("fp8 epilogue", "MLP")) == 2 and parts.count(("fp8 rows", "fc2")) == 2 and ("bf16", "MLP") in parts
    assert all(r["ms"] > 0 for r in res["rows"])
    assert res["fastest_launch"] in ("128,128,128,8,8,4,0", "64,128,128,8,4,3,1")  # as --launch takes it
    err = {r["variant"].split(" (")[0]: r["rel_err_vs_fp32"] for r in res["rows"] if r["part"] == "MLP"}
    assert err["bf16"] < 1e-2 and abs(err["fp8 epilogue"] / err["fp8 rows"] - 1) < 0.1
    assert "| fp8 epilogue" in (tmp_path / "m.md").read_text() and "4 stages) |" in (tmp_path / "m.md").read_text()
    assert "3 stages, TMA) |" in (tmp_path / "m.md").read_text()
    with pytest.raises(SystemExit, match="six integers"):
        mod.main(["--tiny", "--launch", "128,128", "--out", str(out)])
    with pytest.raises(SystemExit, match="optional 0 / 1"):
        mod.main(["--tiny", "--launch", "128,128,128,8,8,4,2", "--out", str(out)])
