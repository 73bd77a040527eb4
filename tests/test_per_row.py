"""Per-row depth: one backbone interface, each row at its own depth, the same result as running it alone.

Equivalence tests run in float64 (``float64`` fixture): a batched GEMM and a one-row GEMM then agree to
rounding (~1e-15 relative); the stated tolerance is 1e-10 absolute on outputs of order 1.
"""

import pytest
import torch

from eediff.diffusion.process import DiscreteVP
from eediff.diffusion.sampling import Denoiser
from eediff.exits.policy import ScheduledExit
from eediff.fast import FastPathConfig, apply_fast_path
from eediff.models.backbone import Backbone, Tokens
from tiny import tiny_backbone

TOL = 1e-10


def _model(arch):
    return tiny_backbone(arch)


def _inputs(m, B, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, 8, 8, generator=g)
    t = torch.rand(B, generator=g) * 999
    y = torch.randint(0, 10, (B,), generator=g)
    d = torch.randint(0, m.num_exit_blocks + 1, (B,), generator=g)
    return x, t, y, d


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
def test_both_backbones_implement_the_interface(arch):
    m = _model(arch)
    assert isinstance(m, Backbone)
    assert len(m.exit_blocks()) == m.num_exit_blocks
    assert set(map(id, m.exit_blocks())) <= set(map(id, m.compute_blocks()))


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
def test_each_row_equals_the_row_run_alone(arch, float64):
    m = _model(arch).double()
    for seed in range(3):
        x, t, y, d = _inputs(m, 11, seed)
        with torch.no_grad():
            out = m(x, t, y, active_blocks=d)
            for i in range(len(d)):
                alone = m(x[i:i + 1], t[i:i + 1], y[i:i + 1], active_blocks=int(d[i]))
                assert (out[i] - alone[0]).abs().max() < TOL, (seed, i, int(d[i]))


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
def test_int_and_tensor_depths_agree_bit_exactly(arch):
    m = _model(arch)
    x, t, y, _ = _inputs(m, 5)
    K = m.num_exit_blocks
    with torch.no_grad():
        for k in (0, 1, K - 1, K):
            assert torch.equal(m(x, t, y, active_blocks=k), m(x, t, y, active_blocks=torch.full((5,), k)))
        assert torch.equal(m(x, t, y), m(x, t, y, active_blocks=K))  # full depth is a no-op


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
def test_depth_zero_is_the_head_on_the_embedding(arch):
    m = _model(arch)
    x, t, y, _ = _inputs(m, 3)
    with torch.no_grad():
        s = m.embed(x, t, y)
        for i in range(m.num_exit_blocks):
            s = m.run_block(i, s, 0)  # no row runs a block (U-ViT: skips still fused)
        assert torch.equal(m(x, t, y, active_blocks=0), m.head(s))
        mixed = m(x, t, y, active_blocks=torch.tensor([0, m.num_exit_blocks, 0]))
        assert torch.allclose(mixed[0], m.head(s)[0], atol=1e-6) and torch.allclose(mixed[2], m.head(s)[2], atol=1e-6)


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float64])
def test_active_mask_holds_rows_unchanged(arch, mask_dtype, float64):
    m = _model(arch).double()
    x, t, y, _ = _inputs(m, 4)
    with torch.no_grad():
        s = m.embed(x, t, y)
        copy = lambda: Tokens(s.h.clone(), s.c, s.skips)  # noqa: E731
        mask = torch.tensor([1, 0, 1, 0]).to(mask_dtype)
        new = m.run_block(0, copy(), 4, mask)
        full = m.run_block(0, copy(), 4)
        skipped = m.run_block(0, copy(), 0)  # the path of a row that does not run the block
        assert torch.equal(new.h[1], skipped.h[1]) and torch.equal(new.h[3], skipped.h[3])
        assert torch.allclose(new.h[0], full.h[0], atol=TOL) and not torch.allclose(new.h[0], skipped.h[0])


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
def test_bad_depths_are_refused(arch):
    m = _model(arch)
    x, t, y, _ = _inputs(m, 3)
    K = m.num_exit_blocks
    for bad, msg in [(torch.tensor([0, K + 1, 1]), "outside"), (torch.tensor([-1, 0, 1]), "outside"),
                     (torch.tensor([1, 2]), "shape"), (torch.tensor([1.0, 2.0, 3.0]), "integer"), (K + 1, "outside")]:
        with pytest.raises(ValueError, match=msg):
            m(x, t, y, active_blocks=bad)


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
def test_guided_rows_at_different_steps_equal_each_row_alone(arch, float64):
    """Rows at different timesteps served together, with CFG: each row equals the same row denoised alone."""
    m = _model(arch).double()
    sched = "6,5,3,1" if arch == "DiT" else "4,3,1"
    den = Denoiser(m, DiscreteVP(), ScheduledExit(sched, m.num_exit_blocks), cfg_scale=2.0)
    x, _, y, _ = _inputs(m, 6)
    t_model = torch.tensor([999.0, 700.0, 20.0, 480.0, 260.0, 999.0], dtype=torch.float64)
    d = den.depths(t_model, 6)
    assert len(d.unique()) > 2  # the rows really run at different depths
    with torch.no_grad():
        out = den(x, t_model, y)
        for i in range(6):
            alone = den(x[i:i + 1], float(t_model[i]), y[i:i + 1])
            assert (out[i] - alone[0]).abs().max() < TOL, i


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
def test_fast_path_per_row_equals_eager_and_is_removable(arch):
    """The bucketed per-row chain of the fast path (here fp32, no compile, no CUDA graphs on the CPU)."""
    m = _model(arch)
    x, t, y, d = _inputs(m, 13)
    with torch.no_grad():
        ref = m(x, t, y, active_blocks=d)
        ref2 = m(x, t, y, active_blocks=2)
        for bucket in (1, 4, 16):
            h = apply_fast_path(m, FastPathConfig(dtype="fp32", compile=False, row_bucket=bucket))
            out = m(x, t, y, active_blocks=d)
            assert h.stats["row_calls"] == 1
            assert torch.allclose(out, ref, atol=1e-5), bucket
            uniform = m(x, t, y, active_blocks=torch.full((13,), 2))  # one depth for all rows: the int path
            assert h.stats["row_calls"] == 1 and torch.allclose(uniform, ref2, atol=1e-5)
            h.remove()
            assert torch.equal(m(x, t, y, active_blocks=d), ref)


def test_rows_leave_the_working_batch():
    """Block l sees exactly the rows that run more than l blocks: rows that have left cost nothing."""
    m = _model("DiT")
    x, t, y, _ = _inputs(m, 8)
    d = torch.tensor([6, 0, 3, 3, 1, 6, 2, 0])
    seen = []
    hooks = [b.register_forward_pre_hook(lambda mod, args, i=i: seen.append((i, args[0].shape[0]))) for i, b in enumerate(m.exit_blocks())]
    with torch.no_grad():
        m(x, t, y, active_blocks=d)
    for h in hooks:
        h.remove()
    assert seen == [(i, int((d > i).sum())) for i in range(6) if (d > i).any()]
