"""benchmarks/band_swap.py: the model switch by time that attributes a truncated fine-tune's distance to bands of t."""

import pytest
import torch

import eediff
from test_train_plateau import _bench_module


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    cfg = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=4, num_heads=4, num_classes=3)
    return eediff.build_model("DiT", **cfg).eval(), eediff.build_model("DiT", **cfg).eval()


def test_rows_inside_the_band_run_the_base_at_full_depth_the_others_the_finetune_at_theirs(pair):
    bs = _bench_module("band_swap")
    base, ft = pair
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    t = torch.tensor([100.0, 500.0, 700.0, 999.0])  # unit times 0.1, 0.5, 0.7, 0.999
    k = torch.tensor([2, 2, 3, 1])
    with torch.no_grad():
        out = bs.BandSwap(base, ft, 0.6, 1.0, 1000.0)(x, t, y, active_blocks=k)
        torch.testing.assert_close(out[:2], ft(x[:2], t[:2], y[:2], active_blocks=k[:2]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[2:], base(x[2:], t[2:], y[2:]), rtol=1e-5, atol=1e-6)  # 0.999 is in [0.6, 1]
        none = bs.BandSwap(base, ft, 0.2, 0.4, 1000.0)(x, t, y, active_blocks=k)  # no row inside: the fine-tune alone
        assert torch.equal(none, ft(x, t, y, active_blocks=k))
    assert bs.BandSwap(base, ft, 0.0, 1.0, 1000.0).num_classes == ft.num_classes  # the sampler sees the fine-tune's attributes


def test_bands_are_checked():
    bs = _bench_module("band_swap")
    assert bs.parse_bands("0.8-1;0-0.2") == [(0.8, 1.0), (0.0, 0.2)]
    for bad in ("0.8", "0.6-0.4", "0.5-1.5", "a-b"):
        with pytest.raises(SystemExit):
            bs.parse_bands(bad)
