"""Fast path handle (CPU-checkable parts) and the eval command on a tiny model."""

import dataclasses
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
    from eediff.config import EvalConfig
    from eediff.eval.evaluate import run_eval

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
                     reference="tests/data/fmnist_sample.npz:test", metric="fd-classifier", time_repeats=1,
                     cache_dir=str(tmp_path / "cache"), out=str(out), device="cpu", progress=False)
    res = run_eval(cfg, log=lambda *_: None)
    rows = {r["schedule"]: r for r in res["rows"]}
    assert set(rows) == {"full", "4,2"}
    for r in rows.values():  # Accel. is the measured time cut against full depth, timed in the same run
        assert r["time_s"] > 0 and r["time_full_s"] == rows["full"]["time_s"]
        assert r["accel_pct"] == pytest.approx(100 * (1 - r["time_s"] / r["time_full_s"]))
    # DDIM-3 visits t = 999, 500, 0 (original index): depths 2, 2, 4
    assert rows["4,2"]["flop_reduction_pct"] == pytest.approx(100 * (1 - (2 * m.flops(2) + m.flops(4)) / (3 * m.flops(4))))
    assert rows["4,2"]["mean_blocks"] == pytest.approx(8 / 3)
    assert rows["4,2"]["fid_mean"] > 0 and len(rows["4,2"]["fid"]) == 2
    assert json.loads(out.read_text())["rows"] and (tmp_path / "ev.md").exists()
    from PIL import Image

    assert Image.open(tmp_path / "ev.png").size[0] > 0  # the FID-vs-Accel. plot, next to the JSON
    # no --schedules on a checkpoint that was not fine-tuned for one: a one-line error naming the flag
    from eediff.config import ConfigError

    with pytest.raises(ConfigError, match="--schedules"):
        run_eval(dataclasses.replace(cfg, schedules=None), log=lambda *_: None)
    # --baseline: the full-depth quality row comes from another model of the same network, the scheduled rows do not
    torch.manual_seed(1)
    other = eediff.build_model("DiT", input_size=28, patch_size=7, in_channels=1, hidden_size=32, depth=4, num_heads=2, num_classes=10)
    eediff.save_model(str(tmp_path / "base.safetensors"), other)
    res_b = run_eval(dataclasses.replace(cfg, baseline=str(tmp_path / "base.safetensors"), seeds="0"), log=lambda *_: None)
    rows_b = {r["schedule"]: r for r in res_b["rows"]}
    assert rows_b["4,2"]["fid"][0] == pytest.approx(rows["4,2"]["fid"][0], rel=1e-9)
    assert rows_b["full"]["fid"][0] != pytest.approx(rows["full"]["fid"][0], rel=1e-3)
    assert res_b["baseline"].endswith("base.safetensors") and "full-depth row" in (tmp_path / "ev.md").read_text()
    wrong = eediff.build_model("DiT", input_size=28, patch_size=7, in_channels=1, hidden_size=32, depth=3, num_heads=2, num_classes=10)
    eediff.save_model(str(tmp_path / "wrong.safetensors"), wrong)
    with pytest.raises(ConfigError, match="--baseline"):
        run_eval(dataclasses.replace(cfg, baseline=str(tmp_path / "wrong.safetensors")), log=lambda *_: None)


def test_eval_sharded_over_two_processes_gives_the_same_images(tmp_path):
    """torchrun with 2 CPU processes (gloo): images sharded by index with per-image seeds -> same metric as 1 process."""
    import os
    import subprocess
    import sys

    args = ["--model", "dit-fmnist-D4", "--schedules", "D4-DiT", "--samplers", "ddim-3", "-n", "8", "--batch-size", "4",
            "--seeds", "0", "--metric", "fd-classifier", "--reference", "tests/data/fmnist_sample.npz:test",
            "--time-repeats", "1", "--time-batch", "2", "--no-progress", "--device", "cpu", "--cache-dir", str(tmp_path / "c")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "eediff.cli", "eval", *args, "--out", str(tmp_path / "1.json")], capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "eediff.cli", "eval", *args,
                          "--out", str(tmp_path / "2.json")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("1.json", "2.json"))
    assert a["world_size"] == 1 and b["world_size"] == 2
    for ra, rb in zip(a["rows"], b["rows"]):
        assert ra["schedule"] == rb["schedule"]
        # same images up to float rounding of different batch compositions
        assert rb["fid_mean"] == pytest.approx(ra["fid_mean"], rel=1e-5)


def test_bench_smoke_compares_the_same_function(tmp_path):
    """`eediff bench --tiny`: every variant computes diffusers' function (same weights), exits report FLOP ratios."""
    from eediff.bench import run_bench, write_results
    from eediff.config import BenchConfig

    cfg = BenchConfig(tiny=True, skip_e2e=True, batch_sizes="2", repeats=1, schedules="D4-DiT,D6-DiT", out=str(tmp_path / "b.json"))
    res = run_bench(cfg, log=lambda *_: None)
    errs = {r["variant"]: r["rel_err_vs_diffusers_fp32"] for r in res["forward"]}
    assert errs["eediff eager fp32"] < 1e-5  # same function as diffusers, fp32 rounding only
    for name in ("diffusers bf16", "eediff eager bf16", "eediff fast path"):
        assert errs[name] < 3e-2, (name, errs[name])  # bf16 weights and activations
    ratios = {r["schedule"]: r["flop_ratio"] for r in res["schedules"]}
    assert 0.70 < ratios["D4-DiT"] < 0.73 and ratios["D6-DiT"] < ratios["D4-DiT"]
    res["command"] = "test"
    write_results(res, cfg.out)
    assert (tmp_path / "b.md").exists()
