"""Fast path handle (CPU-checkable parts) and the eval command on a tiny model."""

import json

import pytest
import torch

import eediff
from eediff.fast import FastPathConfig, apply_fast_path


def test_fast_path_is_removable_and_close(tiny_dit):
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([1, 2])
    with torch.no_grad():
        ref = tiny_dit(x, t, y, active_blocks=3)
        h = apply_fast_path(tiny_dit, FastPathConfig(dtype="bf16", compile=False))
        assert next(tiny_dit.parameters()).dtype == torch.bfloat16
        out = tiny_dit(x, t, y, active_blocks=3)
        assert out.dtype == torch.float32
        rel = ((out - ref).norm() / ref.norm()).item()
        assert rel < 2e-2  # bf16 weights and activations: ~3 significant digits per op
        h.remove()
        assert next(tiny_dit.parameters()).dtype == torch.float32
        assert torch.equal(tiny_dit(x, t, y, active_blocks=3), ref)  # bit-exact after removal
    with pytest.raises(ValueError, match="unknown dtype"):
        apply_fast_path(tiny_dit, FastPathConfig(dtype="int3"))


def test_eval_reports_accel_and_metric(tmp_path, tiny_dit):
    from eediff.eval.evaluate import EvalConfig, run_eval

    torch.manual_seed(0)
    m = eediff.build_model("DiT", input_size=28, patch_size=7, in_channels=1, hidden_size=32, depth=4, num_heads=2, num_classes=10)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n != "pos_embed":
                p.normal_(0, 0.05)
    ck = tmp_path / "m.safetensors"
    eediff.save_model(str(ck), m)
    out = tmp_path / "ev.json"
    cfg = EvalConfig(model=str(ck), schedules="4,2", samplers="ddim-3", n=24, batch_size=12, seeds="0,1",
                     reference=f"tests/data/fmnist_sample.npz:test", metric="fd-classifier", time_repeats=1,
                     cache_dir=str(tmp_path / "cache"), out=str(out), device="cpu", progress=False)
    res = run_eval(cfg, log=lambda *_: None)
    rows = {r["schedule"]: r for r in res["rows"]}
    assert set(rows) == {"full", "4,2"}
    assert rows["full"]["accel_pct"] == 0.0
    # DDIM-3 visits t = 999, 500, 0 (original index): depths 2, 2, 4
    assert rows["4,2"]["flop_reduction_pct"] == pytest.approx(100 * (1 - (2 * m.flops(2) + m.flops(4)) / (3 * m.flops(4))))
    assert rows["4,2"]["mean_blocks"] == pytest.approx(8 / 3)
    assert rows["4,2"]["fid_mean"] > 0 and len(rows["4,2"]["fid"]) == 2
    assert json.loads(out.read_text())["rows"] and (tmp_path / "ev.md").exists()
