"""eediff.kernels (the fast path's block kernels) and apply_fast_vae, on the CPU: every variant computes the
same function as the eager model (tolerances stated per test), is removable, and refuses what it cannot run.
The GPU kernels themselves (cuBLASLt epilogue, _scaled_mm on Hopper) are timed and checked against diffusers
fp32 by `eediff bench`."""

import copy

import pytest
import torch

import eediff
from eediff.fast import FastPathConfig, apply_fast_path, apply_fast_vae
from eediff.kernels import FP8_MAX, apply_kernels, fp8_matmul, quantize_rows, quantize_weight

from tiny import one_thread, random_weights  # noqa: F401


def dit(hidden=32, heads=2, depth=4, seed=0):
    torch.manual_seed(seed)
    m = eediff.build_model("DiT", input_size=8, patch_size=2, in_channels=4, hidden_size=hidden, depth=depth, num_heads=heads, num_classes=10)
    return random_weights(m, 0.05).eval()


def inputs(B=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, 8, 8, generator=g), torch.rand(B, generator=g) * 999, torch.randint(0, 10, (B,), generator=g)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_quantise_rows_and_weights_bounds_and_error():
    """e4m3 keeps 3 mantissa bits: a value is within 2^-4 of itself (relative, half an ulp) once its row is
    scaled so its largest magnitude is 448; a row's scale depends on that row alone."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 48, generator=g) * torch.logspace(-3, 2, 64).unsqueeze(1)  # rows of very different scales
    q, s = quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (64, 1)
    assert q.float().abs().amax(1).sub(FP8_MAX).abs().max() == 0  # every row uses the full range
    back = q.float() * s
    big = x.abs() > x.abs().amax(1, keepdim=True) / 64  # normal range of e4m3 within each row
    assert ((back - x).abs() / x.abs())[big].max() <= 2**-4 + 1e-6
    q2, s2 = quantize_rows(x[5:6])
    assert torch.equal(q2.float(), q[5:6].float()) and torch.equal(s2, s[5:6])  # batch-independent
    w = torch.randn(40, 48, generator=g)
    qw, sw = quantize_weight(w)
    assert sw.shape == (1, 40) and torch.allclose((qw.float() * sw.t()), w, rtol=2**-4, atol=1e-3)
    z, sz = quantize_rows(torch.zeros(2, 16))  # an all-zero row: finite scale, zero codes
    assert torch.isfinite(sz).all() and z.float().abs().max() == 0


def test_fp8_matmul_is_the_dequantised_product():
    """``_scaled_mm`` with row-wise scales = (q_x s_x) @ (q_w s_w)^T + b, up to bf16 output rounding (2^-8)."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 5, 32, generator=g), torch.randn(48, 32, generator=g), torch.randn(48, generator=g)
    x, b = x.bfloat16(), b.bfloat16()
    qw, sw = quantize_weight(w)
    out = fp8_matmul(x, qw, sw, b)
    qx, sx = quantize_rows(x.reshape(-1, 32))
    ref = (qx.float() * sx) @ (qw.float() * sw.t()).t() + b.float()
    assert out.shape == (3, 5, 48) and out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref.reshape(3, 5, 48), rtol=2**-7, atol=2**-7 * ref.abs().max().item())


@pytest.mark.parametrize("kernels, tol", [("inductor", 0.0), ("fused", 1e-2), ("fp8", 0.06)])
def test_kernel_variants_compute_the_eager_bf16_function(kernels, tol):
    """Fast path (no compile on a CPU) against the eager model in bf16, every depth mode. inductor: the same
    ops (bit-exact); fused: its row kernels' LayerNorm and residual in fp32, one rounding each, within 1%
    (measured 0.2%); fp8 within 6% relative (measured 1-3%: e4m3 operands, fp32 accumulation)."""
    m = dit()
    x, t, y = inputs()
    ref_model = copy.deepcopy(m).bfloat16()
    fast = copy.deepcopy(m)
    h = apply_fast_path(fast, FastPathConfig(kernels=kernels, compile=False))
    depths = torch.tensor([4, 2, 0, 3])
    with torch.no_grad():
        for ab in (None, 3, depths):
            ref = ref_model(x.bfloat16(), t, y, active_blocks=ab)
            out = fast(x, t, y, active_blocks=ab)
            assert rel(out, ref) <= tol + 1e-7, (kernels, ab, rel(out, ref))
    if kernels == "fp8":
        assert h.kernels.fp8_linears == 4 * 4 and h.kernels.bf16_linears == 0  # qkv, proj, fc1, fc2 per block
        assert 0 < rel(out, ref)  # it really runs in fp8


def test_fp8_rows_do_not_depend_on_the_batch():
    """Row-wise activation scales: a row's output is the same alone as in any batch (a per-tensor scale would
    let the largest row of the batch set everyone's precision)."""
    m = dit()
    apply_fast_path(m, FastPathConfig(kernels="fp8", compile=False))
    x, t, y = inputs(6)
    x[0] *= 50  # one loud row
    with torch.no_grad():
        full = m(x, t, y)
        for i in range(1, 6):
            assert torch.allclose(m(x[i:i + 1], t[i:i + 1], y[i:i + 1]), full[i:i + 1], rtol=0, atol=1e-6)


def test_kernels_remove_restores_the_exact_model():
    m = dit()
    x, t, y = inputs()
    with torch.no_grad():
        ref = m(x, t, y)
        for kernels in ("fused", "fp8"):
            h = apply_fast_path(m, FastPathConfig(kernels=kernels, compile=False))
            m(x, t, y)
            h.remove()
            assert not any("forward" in mod.__dict__ or "_fp8" in mod.__dict__ for mod in m.blocks.modules())
            assert torch.equal(m(x, t, y), ref)


def test_fp8_leaves_sizes_it_cannot_take_in_bf16():
    """fp8 GEMMs need multiples of 16 on both sides: width 24 keeps qkv (72), proj and fc1/fc2 (96) ...
    in bf16 where a side is not a multiple of 16."""
    m = dit(hidden=24, heads=2).bfloat16()
    h = apply_kernels(m, "fp8")
    assert h.fp8_linears == 0 and h.bf16_linears == 4 * 4  # 24 % 16 != 0: every token GEMM stays bf16
    m2 = dit(hidden=48, heads=2).bfloat16()
    assert apply_kernels(m2, "fp8").fp8_linears == 16


def test_kernels_refuse_bad_settings():
    with pytest.raises(ValueError, match="unknown kernels 'fp4'"):
        apply_fast_path(dit(), FastPathConfig(kernels="fp4", compile=False))
    with pytest.raises(ValueError, match="use dtype='bf16'"):
        apply_fast_path(dit(), FastPathConfig(kernels="fp8", dtype="fp32", compile=False))
    with pytest.raises(ValueError, match="needs bf16 weights"):
        apply_kernels(dit(), "fp8")  # fp32 weights
    with pytest.raises(ValueError, match="kernels='fp8' only"):
        apply_fast_path(dit(), FastPathConfig(kernels="fused", fp8_fast_accum=True, compile=False))


def test_kernels_trace_as_one_graph():
    """The instance-level forwards compile without graph breaks (dynamo, fullgraph; the aot_eager backend needs
    no C++ compiler) and give the eager result."""
    m = dit().bfloat16()
    x, c = torch.randn(2, 16, 32).bfloat16(), torch.randn(2, 32).bfloat16()
    for kernels in ("fused", "fp8"):
        mm = copy.deepcopy(m)
        apply_kernels(mm, kernels)
        blk = mm.blocks[0]
        with torch.no_grad():
            assert torch.equal(torch.compile(blk, backend="aot_eager", fullgraph=True)(x, c), blk(x, c))


def test_fast_vae_decodes_the_same_images():
    """bf16 + channels-last (compile off on a CPU) against the fp32 VAE: within 2% relative; remove() restores."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(latent_channels=4, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).eval()
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        ref = vae.decode(z).sample
        fast = copy.deepcopy(vae)
        h = apply_fast_vae(fast, compile=False)
        out = fast.decode(z.bfloat16()).sample
        assert rel(out, ref) < 2e-2
        h.remove()
        assert "decode" not in fast.__dict__ and next(fast.parameters()).dtype == torch.float32
        assert torch.allclose(fast.decode(z).sample, ref, atol=1e-2)


# ---- the Triton row kernels, in Triton's interpreter ------------------------------------------------------
@pytest.fixture
def interpret(monkeypatch):
    pytest.importorskip("triton")
    from eediff import triton_ops

    monkeypatch.setattr(triton_ops, "INTERPRET_ON_CPU", True)
    return triton_ops


def _codes_close(codes, codes_ref, s):
    """Dequantised codes within one e4m3 step (2^-3 relative) of the reference, except where the reference cast
    rounds up to a power of two: Triton's interpreter does not carry that round-up into the exponent (7.94 -> 4,
    not 8; the GPU's cvt instruction does), so those codes are left out. They must be few."""
    ref = codes_ref.float()
    carry = (ref.abs() > 0) & (torch.log2(ref.abs()) == torch.log2(ref.abs()).round())
    ok = torch.isclose(codes.float() * s, ref * s, rtol=2**-3, atol=2**-3 * s.max().item()) | carry
    return bool(ok.all()) and carry.float().mean() < 0.2


def _mods(B, D, g):
    m = torch.randn(B, 6 * D, generator=g).bfloat16() * 0.5
    return m[:, :D], m[:, D:2 * D], m[:, 2 * D:3 * D]  # strided views, as the block's chunk() gives


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("quant", [False, True])
@pytest.mark.parametrize("fast_math", [True, False])
def test_ln_modulate_kernel_against_torch(interpret, monkeypatch, residual, quant, fast_math):
    """The Triton kernel (D = 48, not a power of two: masked lanes) against the fp32 torch reference and against
    the block's own bf16 ops (norm + modulate, gated residual). bf16 outputs: within 2 bf16 ulps (2^-7 relative)
    of the reference; fp8 codes: within one e4m3 step (2^-3 relative) after dequantising. Under both settings of
    ``FAST_MATH`` (times the row's reciprocal scale, or a division per element)."""
    monkeypatch.setattr(interpret, "FAST_MATH", fast_math)
    g = torch.Generator().manual_seed(0)
    B, N, D = 3, 5, 48
    x = torch.randn(B, N, D, generator=g).bfloat16()
    r = torch.randn(B, N, D, generator=g).bfloat16() if residual else None
    shift, scale, gate = _mods(B, D, g)
    gate = gate if residual else None
    h, y, s = interpret.ln_modulate(x, shift, scale, 1e-6, r, gate, quant)
    assert interpret.triton_available(x)
    h_ref, y_ref, s_ref = interpret._ln_modulate_ref(x, shift, scale, 1e-6, r, gate, quant)
    if residual:  # h within one bf16 rounding (the interpreter rounds fp32 -> bf16 its own way); then the
        # normalisation is checked on the kernel's own h, so that one-ulp differences do not move the row maxima
        assert torch.allclose(h.float(), h_ref.float(), rtol=2**-7, atol=2**-7)
        _, y_ref, s_ref = interpret._ln_modulate_ref(h, shift, scale, 1e-6, None, None, quant)
        block_h = x + gate.unsqueeze(1) * r  # DiTBlock's bf16 ops
        assert torch.allclose(h.float(), block_h.float(), rtol=2**-6, atol=2**-6)
    else:
        assert h.numel() == 0
    if quant:
        assert y.dtype == torch.float8_e4m3fn and s.shape == (B * N, 1)
        assert torch.allclose(s, s_ref, rtol=1e-5)
        assert _codes_close(y.reshape(B * N, D), y_ref.reshape(B * N, D), s)
    else:
        assert torch.allclose(y.float(), y_ref.float(), rtol=2**-7, atol=2**-7 * y_ref.float().abs().max().item())
        base = (x if not residual else h).float()
        own = torch.nn.functional.layer_norm(base, (D,), eps=1e-6) * (1 + scale.float().unsqueeze(1)) + shift.float().unsqueeze(1)
        assert torch.allclose(y.float(), own, rtol=2**-6, atol=2**-6 * own.abs().max().item())


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("fast_math", [True, False])
def test_act_quant_kernel_against_torch(interpret, monkeypatch, gelu, fast_math):
    """(tanh-GELU +) row quantisation, K = 80 (masked): scales to 1e-5 relative, dequantised values within one
    e4m3 step of the reference, under both settings of ``FAST_MATH`` (on a CPU tanh is the exp form either way:
    the interpreter has no inline PTX, so tanh.approx is checked on the GPU, by the distances of
    results/kernels_fd_v2/)."""
    monkeypatch.setattr(interpret, "FAST_MATH", fast_math)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(7, 80, generator=g) * 3).bfloat16()
    q, s = interpret.act_quant(x, gelu)
    xf = torch.nn.functional.gelu(x.float(), approximate="tanh") if gelu else x.float()
    q_ref, s_ref = interpret._quant_ref(xf)
    assert q.dtype == torch.float8_e4m3fn and torch.allclose(s, s_ref, rtol=1e-5)
    assert _codes_close(q, q_ref, s)


@pytest.mark.parametrize("kernels, tol", [("fused", 1e-2), ("fp8", 0.06)])
def test_fused_dit_block_with_triton_kernels_matches_the_block(interpret, kernels, tol):
    """The whole fused DiT block (Triton row kernels in the interpreter, torch GEMMs) against DiTBlock.forward in
    bf16, with padded rows (``keep``) unchanged and the in-place write: bf16 within 1%, fp8 within 6%."""
    m = dit(hidden=32, depth=2).bfloat16()
    blk = m.blocks[0]
    g = torch.Generator().manual_seed(2)
    x, c = torch.randn(3, 16, 32, generator=g).bfloat16(), torch.randn(3, 32, generator=g).bfloat16()
    keep = torch.tensor([1.0, 0.0, 1.0]).bfloat16()
    with torch.no_grad():
        ref = blk(x, c, keep)
        apply_kernels(m, kernels)
        out = blk(x, c, keep)
        assert rel(out, ref) < tol, rel(out, ref)
        assert torch.equal(out[1], x[1])  # a padded row comes out unchanged
        xi = x.clone()
        blk(xi, c, keep, inplace=True)
        assert torch.equal(xi, out)


def test_custom_ops_fake_kernels_match(interpret):
    """torch.library.opcheck: the fake (meta) kernels give the real outputs' shapes, dtypes and strides, also
    for a non-contiguous input (a DiT's patch tokens arrive transposed); what inductor plans its buffers by."""
    g = torch.Generator().manual_seed(0)
    B, N, D = 2, 4, 32
    x = torch.randn(B, D, N, generator=g).bfloat16().transpose(1, 2)  # (B, N, D), strides (N*D, 1, N)
    shift, scale, gate = _mods(B, D, g)
    r = torch.randn(B, N, D, generator=g).bfloat16()
    for args in [(x, shift, scale, 1e-6, None, None, False), (x, shift, scale, 1e-6, r, gate, True)]:
        torch.library.opcheck(interpret.ln_modulate, args, test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(interpret.act_quant, (torch.randn(6, 48, generator=g).bfloat16(), True), test_utils=("test_schema", "test_faketensor"))


def test_a_gradient_runs_the_blocks_as_written():
    """With autograd on, a patched DiT block computes DiTBlock.forward itself (the row kernels have no backward):
    the same output and gradient as the unpatched block, bit for bit."""
    m = dit(hidden=32, depth=1).bfloat16()
    ref_blk = copy.deepcopy(m.blocks[0])
    apply_kernels(m, "fp8")
    g = torch.Generator().manual_seed(4)
    x, c = torch.randn(2, 16, 32, generator=g).bfloat16(), torch.randn(2, 32, generator=g).bfloat16()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = m.blocks[0](xa, c), ref_blk(xb, c)
    out_a.float().square().sum().backward()
    out_b.float().square().sum().backward()
    assert torch.equal(out_a, out_b) and torch.equal(xa.grad, xb.grad)


@pytest.mark.parametrize("gemms", [("qkv",), ("proj",), ("fc1",), ("fc2",), ("fc1", "fc2"), ("qkv", "proj", "fc2")])
def test_fp8_on_some_gemms(gemms):
    """FastPathConfig(fp8_gemms=...): any subset of a block's token GEMMs in fp8, the rest as kernels='fused';
    within the fp8 tolerance of the bf16 model, and counted; the empty subset is the fused path bit for bit."""
    m = dit()
    x, t, y = inputs()
    ref = copy.deepcopy(m).bfloat16()
    part, fused, none = copy.deepcopy(m), copy.deepcopy(m), copy.deepcopy(m)
    h = apply_fast_path(part, FastPathConfig(kernels="fp8", fp8_gemms=gemms, compile=False))
    apply_fast_path(fused, FastPathConfig(kernels="fused", compile=False))
    apply_fast_path(none, FastPathConfig(kernels="fp8", fp8_gemms=(), compile=False))
    with torch.no_grad():
        r = ref(x.bfloat16(), t, y)
        assert 0 < rel(part(x, t, y), r) < 0.06
        assert torch.equal(none(x, t, y), fused(x, t, y))
    assert h.kernels.fp8_linears == 4 * len(gemms) and h.kernels.bf16_linears == 4 * (4 - len(gemms))


def test_fp8_gemms_refuses_unknown_names():
    with pytest.raises(ValueError, match="fp8_gemms must be a tuple of some of qkv, proj, fc1, fc2"):
        apply_fast_path(dit(), FastPathConfig(kernels="fp8", fp8_gemms=("adaLN",), compile=False))
    with pytest.raises(ValueError, match="fp8_gemms must be a tuple"):
        apply_fast_path(dit(), FastPathConfig(kernels="fp8", fp8_gemms="qkv", compile=False))


@pytest.mark.parametrize("rows, warps", [(2, 1), (4, 2), (8, 4)])
def test_row_kernels_several_rows_per_program(interpret, rows, warps):
    """More rows per program (15 rows: the last program is partly masked) computes what one row per program
    does: every output within one rounding of its dtype, and no row written twice or left unwritten."""
    g = torch.Generator().manual_seed(1)
    B, N, D = 3, 5, 48
    x, r = torch.randn(B, N, D, generator=g).bfloat16(), torch.randn(B, N, D, generator=g).bfloat16()
    shift, scale, gate = _mods(B, D, g)
    for has_res, quant in ((False, False), (True, False), (True, True)):
        outs = []
        for launch in ((1, 1), (rows, warps)):
            h, y, s = interpret._ln_modulate_outputs(x, r if has_res else None, quant)
            for v in (h, y, s):
                v.fill_(float("nan")) if v.dtype != torch.float8_e4m3fn else v.view(torch.uint8).fill_(0x7F)  # NaN poison
            interpret.launch_ln_modulate(x, r, gate, shift, scale, h, y, s, N, D, shift.stride(0), 1e-6, has_res, quant, *launch)
            outs.append((h.float(), y.float(), s))
        for a, b in zip(*outs):
            assert not b.isnan().any()
            assert torch.allclose(a, b, rtol=2**-7, atol=1e-6), (has_res, quant)
    xq = (torch.randn(15, 80, generator=g) * 3).bfloat16()
    q1, s1 = interpret._act_quant_outputs(xq)
    q2, s2 = interpret._act_quant_outputs(xq)
    s2.fill_(float("nan"))
    interpret.launch_act_quant(xq, q1, s1, True, 1, 1)
    interpret.launch_act_quant(xq, q2, s2, True, rows, warps)
    assert torch.allclose(s1, s2, rtol=1e-6) and _codes_close(q2, q1, s2)


SPLIT = -1  # triton_ops.SPLIT (checked below): the split-row kernel's launch


@pytest.mark.parametrize("K, launch", [(80, (1, 2, 32)), (200, (1, 2, 64)), (64, (1, 2, 64)),
                                       (80, (1, 2, SPLIT)), (200, (2, 2, SPLIT)), (96, (4, 2, SPLIT)), (64, (2, 2, SPLIT))])
@pytest.mark.parametrize("gelu", [False, True])
def test_other_act_quant_kernels_are_the_row_kernel(interpret, K, launch, gelu):
    """The chunked quantise kernel (one row per program, ``chunk`` values at a time, the last chunk partly
    masked or not) and the split-row kernel (a row as a power-of-two piece and a padded rest: 80 = 64 + 16,
    200 = 128 + 72 of 128, 96 = 64 + 32; 64 is one piece, the plain kernel; several rows per program, the last
    program's partly) give the row kernel's codes and scales bit for bit (the same per-element math and the same
    maximum), and write every row (NaN-poisoned outputs)."""
    assert interpret.SPLIT == SPLIT
    assert interpret.split_blocks(4608) == (4096, 512) and interpret.split_blocks(1152) == (1024, 128)
    assert interpret.split_blocks(200) == (128, 128) and interpret.split_blocks(64) == (64, 0)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(9, K, generator=g) * 3).bfloat16()
    q1, s1 = interpret._act_quant_outputs(x)
    q2, s2 = interpret._act_quant_outputs(x)
    s2.fill_(float("nan"))
    q2.view(torch.uint8).fill_(0x7F)
    interpret.launch_act_quant(x, q1, s1, gelu, 1, 1)
    interpret.launch_act_quant(x, q2, s2, gelu, *launch)
    assert torch.equal(s1, s2)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8))


def test_act_quant_op_takes_its_launch_from_quant_launch(interpret, monkeypatch):
    """The op launches what ``quant_launch`` says (kernel_variants.py --quant-chunk sets the chunked kernel
    there): the same codes and scales either way."""
    x = (torch.randn(6, 100, generator=torch.Generator().manual_seed(5)) * 2).bfloat16()
    q1, s1 = interpret.act_quant(x, True)
    calls = []
    monkeypatch.setattr(interpret, "quant_launch", lambda K: calls.append(K) or (1, 1, 32))
    q2, s2 = interpret.act_quant(x, True)
    assert calls == [100] and torch.equal(s1, s2) and torch.equal(q1.view(torch.uint8), q2.view(torch.uint8))
    monkeypatch.setattr(interpret, "quant_launch", lambda K: (2, 2, interpret.SPLIT))  # kernel_variants.py --quant-split
    q3, s3 = interpret.act_quant(x, True)
    assert torch.equal(s1, s3) and torch.equal(q1.view(torch.uint8), q3.view(torch.uint8))


def test_row_kernel_sweep_cases_launch(interpret):
    """benchmarks/row_kernels.py's cases call the kernels with the arguments the ops pass (here on a CPU, in the
    interpreter, 256 token rows): each launch, at a multi-row setting too, gives what the op gives."""
    from test_gpu_tables import _load

    row_kernels = _load("row_kernels")
    g = torch.Generator().manual_seed(0)
    for name, (make, launch, moved, width) in row_kernels.cases(256, 1152, 4608, "cpu").items():
        inp = make(g)
        launch(inp, 4, 4)
        if name.startswith("ln_modulate"):
            x, r, m, (h, y, s) = inp
            D = x.shape[-1]
            has_res, quant = h.numel() > 0, s.numel() > 0
            ref = interpret.ln_modulate(x, m[:, :D], m[:, D:2 * D], 1e-6, r if has_res else None, m[:, 2 * D:3 * D] if has_res else None, quant)
            got = (h, y, s)
        else:
            x, got = inp[0], inp[1]
            ref = interpret.act_quant(x, "GELU" in name)
            chunked = interpret._act_quant_outputs(x)
            launch((x, chunked), 1, 4, 256)  # the sweep's chunked launch
            assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(chunked, ref)), name
            split = interpret._act_quant_outputs(x)
            launch((x, split), 2, 4, interpret.SPLIT)  # the sweep's split-row launch
            assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(split, ref)), name
        for a, b in zip(got, ref):
            assert torch.allclose(a.float(), b.float(), rtol=2**-7, atol=1e-6), name
        assert moved > x.numel() * 2


@pytest.mark.parametrize("kernels, tol", [("inductor", 1e-6), ("fused", 1e-6)])
def test_batched_adaln_is_the_same_function_and_removable(kernels, tol, tmp_path):
    """FastPathConfig(batched_adaln=True): every block's adaLN projection in one GEMM at the embedding.
    Against the same fast path without it, in fp32 on a CPU: within 1e-6 relative at every depth mode (each
    output element is the same dot product); remove() gives the exact model back, its weights in storage of
    their own again (safetensors refuses shared views)."""
    from safetensors.torch import save_file

    m = dit()
    x, t, y = inputs()
    plain = copy.deepcopy(m)
    apply_fast_path(plain, FastPathConfig(kernels=kernels, compile=False, dtype="fp32"))
    with torch.no_grad():
        before = m(x, t, y)
        h = apply_fast_path(m, FastPathConfig(kernels=kernels, compile=False, dtype="fp32", batched_adaln=True))
        W = m.blocks[0].adaLN_modulation[-1].weight
        assert all(b.adaLN_modulation[-1].weight.untyped_storage().data_ptr() == W.untyped_storage().data_ptr() for b in m.blocks)
        for ab in (None, 2, torch.tensor([4, 2, 0, 3])):
            ref, out = plain(x, t, y, active_blocks=ab), m(x, t, y, active_blocks=ab)
            assert rel(out, ref) <= tol, (ab, rel(out, ref))
        h.remove()
        assert not any(k in m.__dict__ for k in ("embed", "run_block", "head"))
        assert torch.equal(m(x, t, y), before)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "m.safetensors"))
    u = eediff.build_model("U-ViT", img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=4, num_heads=4)
    with pytest.raises(ValueError, match="DiT blocks"):
        apply_kernels(u, "inductor", batched_adaln=True)
    with pytest.raises(ValueError, match="DiT blocks"):  # refused before the model is touched
        apply_fast_path(u, FastPathConfig(compile=False, batched_adaln=True))
    assert next(u.parameters()).dtype == torch.float32 and "forward" not in u.__dict__


def test_batched_adaln_keeps_one_compiled_graph_for_all_blocks():
    """Each block gets its modulation as a slice of one (B, D + K*6D) tensor, at a different offset: compiled
    blocks still share their graphs (the same count of unique graphs as without batching), so the fast path's
    recompile limit is not spent per block."""
    from torch._dynamo.utils import counters

    graphs = {}
    for batched in (False, True):
        torch._dynamo.reset()
        counters.clear()
        m = dit()
        x, t, y = inputs()
        apply_kernels(m, "inductor", batched_adaln=batched)
        for b in m.blocks:
            b.compile(dynamic=False)
        with torch.no_grad():
            m(x, t, y)
            m(x, t, y, active_blocks=torch.tensor([4, 2, 4, 1]))
        graphs[batched] = counters["stats"]["unique_graphs"]
    torch._dynamo.reset()
    assert graphs[True] == graphs[False] <= 4, graphs


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
def test_fp8_fast_accum_reaches_every_fp8_gemm_and_is_removed(arch, monkeypatch):
    """FastPathConfig(fp8_fast_accum=True): every fp8 GEMM (the fused DiT block's four, a U-ViT's patched Linears)
    asks _scaled_mm for fast accumulation, and nothing else changes: on a CPU the flag does not change the
    arithmetic, so the output equals the default fp8 path's; remove() takes the flag away with the rest."""
    if arch == "DiT":
        m = dit(hidden=32)
    else:
        torch.manual_seed(0)
        m = random_weights(eediff.build_model("U-ViT", img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=4,
                                              num_heads=2, num_classes=10), 0.05).eval()
    x, t, y = inputs()
    seen = []
    real = torch._scaled_mm

    def spy(*args, **kwargs):
        seen.append(kwargs.get("use_fast_accum"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", spy)
    outs = {}
    with torch.no_grad():
        for fast in (False, True):
            mm = copy.deepcopy(m)
            h = apply_fast_path(mm, FastPathConfig(kernels="fp8", fp8_fast_accum=fast, compile=False))
            seen.clear()
            outs[fast] = mm(x, t, y)
            assert len(seen) == h.kernels.fp8_linears > 0 and set(seen) == {fast}, (arch, fast, seen)
            h.remove()
            assert not any("_fp8_fast_accum" in mod.__dict__ for mod in mm.modules())
    assert torch.equal(outs[True], outs[False])


@pytest.mark.parametrize("interpreted", [False, True])
def test_fp8_mlp_epilogue_computes_the_fp8_block_and_is_removed(interpreted, monkeypatch):
    """FastPathConfig(fp8_mlp="epilogue"): every DiT block's MLP runs triton_gemm's fused fc1 and group-scaled fc2
    with the last gated residual in its epilogue, stored into the block's output (in Triton's interpreter, or
    their torch references), the output stays within fp8 error of the bf16
    fast path, as close as the row path's (within 5% of its error), and remove() takes it away. A
    block without both MLP GEMMs in fp8 stays on the row path."""
    from eediff import triton_gemm, triton_ops

    if interpreted:
        pytest.importorskip("triton")
        monkeypatch.setattr(triton_ops, "INTERPRET_ON_CPU", True)
        monkeypatch.setattr(triton_gemm, "LAUNCH", triton_gemm.GemmLaunch(16, 32, 32, 2, 1, 1))
    m = dit(hidden=32)
    x, t, y = inputs()
    calls = []
    real = triton_gemm.fp8_group_scaled_mm_residual_
    monkeypatch.setattr("eediff.kernels.fp8_group_scaled_mm_residual_", lambda *a: calls.append(1) or real(*a))
    outs = {}
    with torch.no_grad():
        ref_model = copy.deepcopy(m)
        apply_fast_path(ref_model, FastPathConfig(kernels="fused", compile=False))
        ref = ref_model(x, t, y).float()
        for mlp in ("rows", "epilogue"):
            mm = copy.deepcopy(m)
            h = apply_fast_path(mm, FastPathConfig(kernels="fp8", fp8_mlp=mlp, compile=False))
            calls.clear()
            outs[mlp] = mm(x, t, y).float()
            n = len(mm.compute_blocks())
            assert h.kernels.fp8_mlp_epilogue == (n if mlp == "epilogue" else 0) and len(calls) == h.kernels.fp8_mlp_epilogue
            h.remove()
            assert not any("_fp8_mlp" in mod.__dict__ for mod in mm.modules())
            assert torch.equal(mm(x, t, y), m(x, t, y))
        mm = copy.deepcopy(m)
        h = apply_fast_path(mm, FastPathConfig(kernels="fp8", fp8_mlp="epilogue", fp8_gemms=("qkv", "proj", "fc1"), compile=False))
        assert h.kernels.fp8_mlp_epilogue == 0

    def rel(a):
        return ((a - ref).norm() / ref.norm()).item()

    # (measured 0.49% / 0.50% on the references, 0.54% / 0.52% in the interpreter, whose fp8 casts round a
    # few values down a power of two)
    # (measured 0.49% / 0.50% on the references; in the interpreter 0.99% / 0.52%: its fp32 -> bf16 stores round
    # toward zero, and the epilogue stores the residual stream itself at every block, so the bias adds up; the
    # op against its reference, one bf16 step apart, is tests/test_triton_gemm.py's)
    assert rel(outs["epilogue"]) < 0.02 and rel(outs["rows"]) < 0.02
    if not interpreted:
        assert abs(rel(outs["epilogue"]) / rel(outs["rows"]) - 1) < 0.05, (rel(outs["epilogue"]), rel(outs["rows"]))


def test_fp8_mlp_epilogue_compiled_writes_the_same_rows():
    """Under torch.compile the fused fc2 op, which stores the block's output into its input, computes what the
    eager block does (bit for bit on a CPU), at full depth and with a depth per row (rows past their depth
    unchanged)."""
    m = dit(hidden=32)
    x, t, y = inputs()
    active = torch.tensor([4, 2, 4, 1])
    outs = []
    with torch.no_grad():
        for compile in (False, True):
            mm = copy.deepcopy(m)
            apply_fast_path(mm, FastPathConfig(kernels="fp8", fp8_mlp="epilogue", compile=compile))
            outs.append((mm(x, t, y), mm(x, t, y, active_blocks=active)))
    torch._dynamo.reset()
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_fp8_mlp_option_is_checked():
    with pytest.raises(ValueError, match="fp8_mlp='epilogue' is a way to run fp8 MLPs: it needs kernels='fp8'"):
        apply_fast_path(dit(hidden=32), FastPathConfig(kernels="fused", fp8_mlp="epilogue", compile=False))
    with pytest.raises(ValueError, match="unknown fp8_mlp 'tiles'"):
        apply_fast_path(dit(hidden=32), FastPathConfig(kernels="fp8", fp8_mlp="tiles", compile=False))


def uvit(seed=0):
    torch.manual_seed(seed)
    m = eediff.build_model("U-ViT", img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=4, num_heads=2, num_classes=10)
    return random_weights(m, 0.05).eval()


def test_fp8_input_means_against_a_direct_computation():
    """fp8_input_means: the mean input of every token Linear over the rows that reached it. Block 0's qkv input
    computed by hand (embedding, adaLN shift / scale, LayerNorm + modulation) over one forward; under per-row
    depths a block that no row reaches has no entry, and one reached by some rows averages only those."""
    from eediff.kernels import fp8_input_means, token_linears
    from eediff.models.dit import modulate

    m = dit()
    x, t, y = inputs()
    assert set(token_linears(m)) == {f"blocks.{i}.{n}" for i in range(4) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    means = fp8_input_means(m, lambda: m(x, t, y))
    with torch.no_grad():
        s = m.embed(x, t, y)  # tokens (B, N, D) and conditioning (B, D)
        blk = m.blocks[0]
        shift, scale = blk.adaLN_modulation(s.c).chunk(6, dim=1)[:2]
        a = modulate(blk.norm1(s.h), shift, scale)  # (B, N, D)
    assert torch.allclose(means["blocks.0.attn.qkv"], a.reshape(-1, a.shape[-1]).mean(0), atol=1e-6)
    rows = {}
    m.blocks[3].mlp.fc2.register_forward_hook(lambda mod, inp, out: rows.setdefault("n", inp[0].reshape(-1, inp[0].shape[-1]).shape[0]))
    part = fp8_input_means(m, lambda: m(x, t, y, active_blocks=torch.tensor([4, 2, 1, 2])))
    assert rows["n"] == 1 * (x.shape[-1] // 2) ** 2  # one row of 16 tokens reaches block 3
    assert set(part) == set(token_linears(m))
    none = fp8_input_means(m, lambda: m(x, t, y, active_blocks=2))
    assert not any(k.startswith(("blocks.2.", "blocks.3.")) for k in none)


def test_fp8_bias_correction_cancels_the_rounding_at_the_mean_input():
    """With calibrated means, each fp8 GEMM's bias (kept beside its codes, the module's own untouched) makes the
    dequantised e4m3 weight give the exact fp32 output at the mean input, up to the bf16 bias (2^-8 relative);
    without, the same output is off by the rounding's mean @ dW.T. Both the fused DiT block and U-ViT's patched
    Linears; remove() leaves the exact model."""
    from eediff.kernels import fp8_input_means, token_linears

    for make in (dit, uvit):
        m = make()
        x, t, y = inputs()
        means = fp8_input_means(m, lambda: m(x, t, y))
        m.bfloat16()
        before = {k: v.clone() for k, v in m.state_dict().items()}
        plain = apply_kernels(copy.deepcopy(m), "fp8", row_kernels="inductor")
        h = apply_kernels(m, "fp8", row_kernels="inductor", fp8_input_means=means)
        assert h.fp8_linears == plain.fp8_linears > 0
        for name, lin in token_linears(m).items():
            q, s, b = lin._fp8
            mu = means[name]
            b0 = lin.bias.float() if lin.bias is not None else 0.0  # (U-ViT's qkv has none: the correction becomes one)
            exact = mu @ lin.weight.float().t() + b0
            got = mu @ (q.float() * s.t()).t() + b.float()
            off = mu @ (q.float() * s.t()).t() + b0
            err, err0 = (got - exact).abs().max(), (off - exact).abs().max()
            assert err <= 2**-8 * b.float().abs().max() + 1e-6 and err < err0, (name, err, err0)
        with torch.no_grad():
            assert torch.isfinite(m(x.bfloat16(), t, y)).all()
        h.remove()
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
        assert not any("_fp8" in mod.__dict__ or "forward" in mod.__dict__ for mod in m.modules() if mod is not m)


def test_fp8_bias_correction_refuses_what_it_cannot_use():
    from eediff.kernels import fp8_input_means

    m = dit()
    x, t, y = inputs()
    means = fp8_input_means(m, lambda: m(x, t, y))
    with pytest.raises(ValueError, match="needs kernels='fp8'"):
        apply_kernels(copy.deepcopy(m).bfloat16(), "fused", fp8_input_means=means)
    with pytest.raises(ValueError, match="needs kernels='fp8'"):
        apply_fast_path(copy.deepcopy(m), FastPathConfig(kernels="fused", compile=False, fp8_input_means=means))
    with pytest.raises(ValueError, match="fp8_fast_accum applies to kernels='fp8' only"):
        apply_kernels(copy.deepcopy(m).bfloat16(), "fused", fp8_fast_accum=True)
    with pytest.raises(ValueError, match="lacks"):
        apply_kernels(copy.deepcopy(m).bfloat16(), "fp8", fp8_input_means={**means, "blocks.9.attn.qkv": means["blocks.0.attn.qkv"]})
    apply_kernels(m.bfloat16(), "fp8", row_kernels="inductor")
    with pytest.raises(ValueError, match="before the kernels are applied"):
        fp8_input_means(m, lambda: m(x.bfloat16(), t, y))


def test_calibrate_fp8_is_the_means_of_its_own_sampling():
    """eval's --fp8-calibrate: calibrate_fp8 is fp8_input_means over sampling N images with each schedule, on the
    calibration seeds (not the measured ones); the same call gives the same means, and a truncated schedule's
    late blocks average only the steps that run them."""
    from eediff.eval.evaluate import CALIBRATION_SEED, calibrate_fp8, parse_sampler
    from eediff.exits.schedule import get_schedule
    from eediff.generate import generate
    from eediff.kernels import fp8_input_means
    from eediff.models.registry import default_process

    m = dit()
    proc = default_process(m)
    sampler = parse_sampler("ddim-3")
    scheds = [get_schedule("full"), get_schedule("4,1")]
    a = calibrate_fp8(m, proc, sampler, scheds, 3, 3, "cpu")
    assert set(a) == {f"blocks.{i}.{n}" for i in range(4) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    b = calibrate_fp8(m, proc, sampler, scheds, 3, 3, "cpu")
    assert all(torch.equal(a[k], b[k]) for k in a)
    direct = fp8_input_means(m, lambda: [generate(m, proc, sampler, n=3, batch_size=3, seed=CALIBRATION_SEED, schedule=s, device="cpu",
                                                  autocast_dtype=torch.bfloat16, progress=False) for s in scheds])
    assert all(torch.allclose(a[k], direct[k]) for k in a)
    other = fp8_input_means(m, lambda: generate(m, proc, sampler, n=3, batch_size=3, seed=0, schedule=scheds[0], device="cpu",
                                                autocast_dtype=torch.bfloat16, progress=False))
    assert not torch.allclose(a["blocks.0.attn.qkv"], other["blocks.0.attn.qkv"])


# ---- fp8 smoothing (FastPathConfig.fp8_smooth, SmoothQuant-style per-input-channel factors) ----------------
def _amax_by_gemm(blk, amax, prefix):
    return {g: amax[prefix + p] for g, p in zip(("qkv", "proj", "fc1", "fc2"), ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))}


def test_fp8_input_amax_against_a_direct_computation():
    """fp8_input_amax: the per-channel absolute maximum input of every token Linear over the rows that reached
    it (block 0's qkv input computed by hand); calibrate_fp8(stat="amax") is it over its own sampling."""
    from eediff.eval.evaluate import CALIBRATION_SEED, calibrate_fp8, parse_sampler
    from eediff.exits.schedule import get_schedule
    from eediff.generate import generate
    from eediff.kernels import fp8_input_amax, token_linears
    from eediff.models.dit import modulate
    from eediff.models.registry import default_process

    m = dit()
    x, t, y = inputs()
    amax = fp8_input_amax(m, lambda: m(x, t, y))
    assert set(amax) == set(token_linears(m)) and all(v.shape == (lin.in_features,) for v, lin in zip(amax.values(), token_linears(m).values()))
    with torch.no_grad():
        s = m.embed(x, t, y)
        blk = m.blocks[0]
        shift, scale = blk.adaLN_modulation(s.c).chunk(6, dim=1)[:2]
        a = modulate(blk.norm1(s.h), shift, scale)  # (B, N, D)
    assert torch.equal(amax["blocks.0.attn.qkv"], a.reshape(-1, a.shape[-1]).abs().amax(0))
    proc, sampler = default_process(m), parse_sampler("ddim-3")
    cal = calibrate_fp8(m, proc, sampler, [get_schedule("full")], 3, 3, "cpu", stat="amax")
    direct = fp8_input_amax(m, lambda: generate(m, proc, sampler, n=3, batch_size=3, seed=CALIBRATION_SEED, schedule=get_schedule("full"),
                                                device="cpu", autocast_dtype=torch.bfloat16, progress=False))
    assert all(torch.equal(cal[k], direct[k]) for k in cal)


def test_fp8_smooth_folds_are_exact_in_fp32():
    """smooth_dit_block + fold_modulation, computed in fp32 without any quantisation, are the block's own function
    (to fp32 rounding, 1e-5 relative) although the factors span five orders of magnitude: qkv's input divided by s
    through the modulation (scale' = (1 + scale) / s - 1, shift' = shift / s), proj's through qkv's v rows (weight
    and bias), fc2's by multiplying GELU's output by 1/s; each GEMM's weight is W diag(s). The module's weights
    are not touched."""
    from eediff.kernels import fold_modulation, smooth_dit_block

    F = torch.nn.functional
    m = dit(hidden=32, depth=1)
    blk = m.blocks[0]
    before = {k: v.clone() for k, v in blk.state_dict().items()}
    g = torch.Generator().manual_seed(7)
    amax = {n: torch.logspace(-3, 2, k)[torch.randperm(k, generator=g)] for n, k in (("qkv", 32), ("proj", 32), ("fc1", 32), ("fc2", 128))}
    weights, s = smooth_dit_block(blk, amax, 0.5)
    assert set(s) == {"qkv", "proj", "fc1", "fc2"} and all(v.max() / v.min() > 10 for v in s.values())
    x, c = torch.randn(3, 16, 32, generator=g), torch.randn(3, 32, generator=g)
    with torch.no_grad():
        ref = blk(x, c)
        shift1, scale1, gate1, shift2, scale2, gate2 = blk.adaLN_modulation(c).chunk(6, dim=1)
        sh, sc = fold_modulation(shift1, scale1, s["qkv"])
        a = F.layer_norm(x, (32,), eps=1e-6) * (1 + sc.unsqueeze(1)) + sh.unsqueeze(1)
        qkv = F.linear(a, *weights["qkv"]).reshape(3, 16, 3, 2, 16).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(3, 16, 32)  # o / s_proj
        h = x + gate1.unsqueeze(1) * F.linear(o, *weights["proj"])
        sh, sc = fold_modulation(shift2, scale2, s["fc1"])
        a = F.layer_norm(h, (32,), eps=1e-6) * (1 + sc.unsqueeze(1)) + sh.unsqueeze(1)
        f = F.gelu(F.linear(a, *weights["fc1"]), approximate="tanh") / s["fc2"]
        out = h + gate2.unsqueeze(1) * F.linear(f, *weights["fc2"])
    assert rel(out, ref) < 1e-5, rel(out, ref)
    assert all(torch.equal(before[k], v) for k, v in blk.state_dict().items())


def _with_outliers(m, scale=300.0):
    """Per-channel outliers in every DiT block's qkv and fc1 inputs (two channels of each LayerNorm +
    modulation output shifted far off), the kind a per-token scale cannot absorb."""
    for blk in m.blocks:
        D = blk.attn.qkv.in_features
        b = blk.adaLN_modulation[-1].bias.data  # (6D,): shift1 | scale1 | gate1 | shift2 | scale2 | gate2
        b[[3, 17]] += scale
        b[[3 * D + 5, 3 * D + 20]] -= scale
    return m


@pytest.mark.parametrize("alpha, gemms", [(0.5, ("qkv", "proj", "fc1", "fc2")), (0.8, ("qkv", "proj", "fc1", "fc2")), (0.5, ("qkv", "proj", "fc1"))])
def test_fp8_smooth_computes_the_bf16_function(alpha, gemms):
    """The smoothed fp8 path against the eager bf16 model, every depth mode: within fp8's tolerance (6%), as
    plain fp8, also on a model with per-channel activation outliers (300x), whose factors are largest at the
    outlier channels. (Not asserted: that it beats plain fp8 there. e4m3's rounding is relative to each element,
    2^-4 anywhere within 2^15 of the row's maximum, so moving a channel's range into the weights changes the
    error little; measured 0.029 plain against 0.031 / 0.025 smoothed at alpha 0.5 / 0.8 for this model.)"""
    from eediff.kernels import fp8_input_amax

    x, t, y = inputs()
    for outliers in (False, True):
        m = _with_outliers(dit()) if outliers else dit()
        amax = fp8_input_amax(m, lambda: m(x, t, y))
        ref_model = copy.deepcopy(m).bfloat16()
        smooth, plain = copy.deepcopy(m), copy.deepcopy(m)
        h = apply_fast_path(smooth, FastPathConfig(kernels="fp8", compile=False, fp8_smooth=amax, fp8_smooth_alpha=alpha, fp8_smooth_gemms=gemms))
        apply_fast_path(plain, FastPathConfig(kernels="fp8", compile=False))
        assert h.kernels.fp8_linears == 16 and all(set(b._fp8_smooth) == set(gemms) for b in smooth.blocks)
        with torch.no_grad():
            for ab in (None, 3, torch.tensor([4, 2, 0, 3])):
                ref = ref_model(x.bfloat16(), t, y, active_blocks=ab)
                e_smooth, e_plain = rel(smooth(x, t, y, active_blocks=ab), ref), rel(plain(x, t, y, active_blocks=ab), ref)
                assert 0 < e_smooth < 0.06 and e_plain < 0.06, (outliers, ab, e_smooth, e_plain)
        if outliers and "qkv" in gemms:
            assert set(smooth.blocks[0]._fp8_smooth["qkv"].topk(2).indices.tolist()) == {3, 17}


def test_fp8_smooth_with_unit_factors_is_the_fp8_path_bit_for_bit():
    """Maxima of 1 with alpha = 1 give s = 1 everywhere: every fold is then exact (W * 1, b / 1, shift / 1,
    (1 + scale) / 1 - 1 + 1 = 1 + scale for |scale| < 1, GELU * 1), so the output is plain fp8's bit for bit, also
    with bias correction."""
    from eediff.kernels import fp8_input_means, token_linears

    m = dit()
    x, t, y = inputs()
    ones = {k: torch.ones(lin.in_features) for k, lin in token_linears(m).items()}
    means = fp8_input_means(m, lambda: m(x, t, y))
    for extra in ({}, {"fp8_input_means": means}):
        plain, smooth = copy.deepcopy(m), copy.deepcopy(m)
        apply_fast_path(plain, FastPathConfig(kernels="fp8", compile=False, **extra))
        apply_fast_path(smooth, FastPathConfig(kernels="fp8", compile=False, fp8_smooth=ones, fp8_smooth_alpha=1.0, **extra))
        assert all(torch.equal(v, torch.ones_like(v)) for b in smooth.blocks for v in b._fp8_smooth.values())
        with torch.no_grad():
            for ab in (None, torch.tensor([4, 2, 0, 3])):
                assert torch.equal(smooth(x, t, y, active_blocks=ab), plain(x, t, y, active_blocks=ab))


def test_fp8_smooth_with_triton_kernels_matches_the_block(interpret):
    """The smoothed fused block with the Triton row kernels (interpreter: the folded fp32 modulation, the GELU +
    1/s + quantise kernel) against DiTBlock.forward in bf16 (6%) and against the same block on the torch row ops
    (1%, measured 0.45%, as unsmoothed: the interpreter's e4m3 cast rounds a few codes its own way, see
    _codes_close; with 300x outliers that alone makes 4% either way, so this model has none)."""
    from eediff.kernels import fp8_input_amax

    m = dit(hidden=32, depth=2)
    g = torch.Generator().manual_seed(2)
    x, c = torch.randn(3, 16, 32, generator=g), torch.randn(3, 32, generator=g)
    amax = fp8_input_amax(m, lambda: m.blocks[0](x, c))  # spread over 100x per channel: factors that do something
    amax = {k: v * torch.logspace(-1, 1, len(v))[torch.randperm(len(v), generator=g)] for k, v in amax.items()}
    m = m.bfloat16()
    x, c = x.bfloat16(), c.bfloat16()
    tri, ref_rows = copy.deepcopy(m), copy.deepcopy(m)
    blk = m.blocks[0]
    with torch.no_grad():
        ref = blk(x, c)
        apply_kernels(tri, "fp8", fp8_smooth=amax)
        apply_kernels(ref_rows, "fp8", row_kernels="inductor", fp8_smooth=amax)
        out, out_ref = tri.blocks[0](x, c), ref_rows.blocks[0](x, c)
    assert rel(out, ref) < 0.06 and rel(out, out_ref) < 0.01, (rel(out, ref), rel(out, out_ref))
    assert all(v.max() / v.min() > 5 for v in tri.blocks[0]._fp8_smooth.values())


@pytest.mark.parametrize("gelu", [False, True])
def test_act_quant_inverse_scale_kernels_against_torch(interpret, gelu):
    """act_quant's per-column ``inv`` (fp8 smoothing's 1/s, applied after the GELU): every Triton variant (row,
    chunked, split) against act_quant_ref with the same inv (scales to 1e-5, codes within one e4m3 step), the
    variants bit-identical to each other; inv = 1 is no inv at all."""
    g = torch.Generator().manual_seed(0)
    K = 80
    x = (torch.randn(7, K, generator=g) * 3).bfloat16()
    inv = torch.logspace(-2, 2, K)[torch.randperm(K, generator=g)]
    q, s = interpret.act_quant(x, gelu, inv)
    q_ref, s_ref = interpret.act_quant_ref(x, gelu, inv)
    assert torch.allclose(s, s_ref, rtol=1e-5) and _codes_close(q, q_ref, s)
    for launch in ((1, 2, 32), (2, 2, SPLIT)):
        q2, s2 = interpret._act_quant_outputs(x)
        interpret.launch_act_quant(x, q2, s2, gelu, *launch, inv=inv)
        assert torch.equal(s, s2) and torch.equal(q.view(torch.uint8), q2.view(torch.uint8)), launch
    q1, s1 = interpret.act_quant(x, gelu, torch.ones(K))
    q0, s0 = interpret.act_quant(x, gelu)
    assert torch.equal(s1, s0) and torch.equal(q1.view(torch.uint8), q0.view(torch.uint8))
    r1, r0 = interpret.act_quant_ref(x, gelu, torch.ones(K)), interpret.act_quant_ref(x, gelu)
    assert torch.equal(r1[1], r0[1]) and torch.equal(r1[0].view(torch.uint8), r0[0].view(torch.uint8))
    torch.library.opcheck(interpret.act_quant, (x, gelu, inv), test_utils=("test_schema", "test_faketensor"))


def test_fp8_smooth_remove_restores_the_exact_model():
    """remove() after a smoothed fp8 path: the exact fp32 state dict and output, no attribute left behind; the
    smoothed weights were copies (the bf16 weights the path held are not scaled)."""
    from eediff.kernels import fp8_input_amax

    m = dit()
    x, t, y = inputs()
    amax = fp8_input_amax(m, lambda: m(x, t, y))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        ref = m(x, t, y)
        h = apply_fast_path(m, FastPathConfig(kernels="fp8", compile=False, fp8_smooth=amax))
        bf16 = {k: v.clone() for k, v in m.state_dict().items()}
        m(x, t, y)
        assert all(torch.equal(bf16[k], v) for k, v in m.state_dict().items())  # the module's bf16 weights untouched
        h.remove()
        assert not any(k in mod.__dict__ for mod in m.modules() for k in ("forward", "_fp8", "_fp8_smooth") if mod is not m)
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
        assert torch.equal(m(x, t, y), ref)


def test_fp8_smooth_refuses_bad_settings():
    """Each misuse: a ValueError of one line, raised before the model is touched."""
    from eediff.kernels import fp8_input_amax

    m = dit()
    x, t, y = inputs()
    amax = fp8_input_amax(m, lambda: m(x, t, y))
    bad = [
        (dict(kernels="fused", fp8_smooth=amax), "needs kernels='fp8'"),
        (dict(kernels="fp8", fp8_smooth=amax, fp8_smooth_alpha=1.5), "fp8_smooth_alpha must be a number in"),
        (dict(kernels="fp8", fp8_smooth={**amax, "blocks.9.attn.qkv": amax["blocks.0.attn.qkv"]}), "lacks"),
        (dict(kernels="fp8", fp8_smooth={**amax, "blocks.0.mlp.fc2": torch.ones(3)}), r"must be a finite, non-negative \(128,\)"),
        (dict(kernels="fp8", fp8_smooth={**amax, "blocks.0.mlp.fc1": -torch.ones(32)}), "non-negative"),
        (dict(kernels="fp8", fp8_smooth=[1, 2]), "must be fp8_input_amax's dict"),
        (dict(kernels="fp8", fp8_smooth=amax, fp8_smooth_gemms=("qkv", "fc3")), "fp8_smooth_gemms must be"),
        (dict(kernels="fp8", fp8_smooth=amax, fp8_gemms=("proj", "fc1")), "keep qkv in fp8_gemms"),
    ]
    for kwargs, msg in bad:
        mm = copy.deepcopy(m)
        with pytest.raises(ValueError, match=msg) as e:
            apply_fast_path(mm, FastPathConfig(compile=False, **kwargs))
        assert "\n" not in str(e.value)
        assert next(mm.parameters()).dtype == torch.float32 and "forward" not in mm.__dict__  # untouched
    u = uvit()
    with pytest.raises(ValueError, match="other blocks"):
        apply_fast_path(u, FastPathConfig(kernels="fp8", compile=False, fp8_smooth=fp8_input_amax(u, lambda: u(x, t, y))))
