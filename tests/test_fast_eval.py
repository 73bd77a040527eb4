"""Fast path handle (CPU-checkable parts) and the eval command on a tiny model."""

import dataclasses
import importlib
import json

import numpy as np

import pytest
import torch

import eediff
from eediff.fast import FastPathConfig, apply_fast_path
from tiny import random_weights


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


def test_eval_reports_accel_and_metric(tmp_path, tiny_dit, monkeypatch):
    from eediff.config import EvalConfig
    from eediff.eval import timing
    from eediff.eval.evaluate import run_eval

    gen = importlib.import_module("eediff.generate")  # the module (the package exports a function of that name)

    torch.manual_seed(0)
    m = eediff.build_model("DiT", input_size=28, patch_size=7, in_channels=1, hidden_size=32, depth=4, num_heads=2, num_classes=10)
    random_weights(m, 0.05)
    ck = tmp_path / "m.safetensors"
    eediff.save_model(str(ck), m)
    # A clock that the test controls: every timed call "takes" 1e-12 s per analytic FLOP of the sampling it ran,
    # times 1, 5, 2 on its 1st, 2nd, 3rd repeat: Accel. must then be the FLOP cut, time_s the median (factor 2).
    last, calls = {}, {}
    real_generate = gen.generate

    def counting_generate(*a, **k):
        res = real_generate(*a, **k)
        last["flops"] = res.model_flops
        return res

    def fake_time_fn(fn, device, warmup=0, repeats=1):
        fn()
        f = last["flops"]
        calls[f] = calls.get(f, 0) + 1
        return {"median_s": 1e-12 * f * (1.0, 5.0, 2.0)[(calls[f] - 1) % 3]}

    monkeypatch.setattr(gen, "generate", counting_generate)
    monkeypatch.setattr(timing, "time_fn", fake_time_fn)
    out = tmp_path / "ev.json"
    cfg = EvalConfig(model=str(ck), schedules="4,2", samplers="ddim-3", n=24, batch_size=12, seeds="0,1",
                     reference="tests/data/fmnist_sample.npz:test", metric="fd-classifier", time_repeats=3,
                     cache_dir=str(tmp_path / "cache"), out=str(out), device="cpu", progress=False)
    res = run_eval(cfg, log=lambda *_: None)
    rows = {r["schedule"]: r for r in res["rows"]}
    assert set(rows) == {"full", "4,2"}
    # DDIM-3 visits t = 999, 500, 0 (original index): depths 2, 2, 4
    flop_cut = 100 * (1 - (2 * m.flops(2) + m.flops(4)) / (3 * m.flops(4)))
    assert rows["4,2"]["flop_reduction_pct"] == pytest.approx(flop_cut)
    assert rows["4,2"]["accel_pct"] == pytest.approx(flop_cut, abs=1e-6)  # measured against the full row's time
    assert rows["4,2"]["accel_measurable"] and rows["4,2"]["accel_per_run_pct"] == pytest.approx([flop_cut] * 2)
    assert rows["full"]["accel_pct"] == 0 and rows["full"]["flop_reduction_pct"] == pytest.approx(0)
    full_flops = 3 * 12 * m.flops(4)  # 3 steps of the timed batch of 12 at full depth
    assert rows["full"]["time_s"] == pytest.approx(2e-12 * full_flops, rel=1e-6)  # the median of 1x, 5x, 2x (their mean would be 2.67x)
    assert rows["4,2"]["time_full_s"] == rows["full"]["time_s"] and rows["4,2"]["images_per_s"] == pytest.approx(12 / rows["4,2"]["time_s"])
    assert rows["4,2"]["mean_blocks"] == pytest.approx(8 / 3)
    # the metric against the distance computed directly on the same images (seed s: image i has seed s * 10**6 + i)
    from eediff.data import load_dataset
    from eediff.diffusion.sampling import SamplerConfig
    from eediff.eval.classifier import fd_classifier
    from eediff.exits.schedule import get_schedule

    real = load_dataset("tests/data/fmnist_sample.npz", "test").data
    for seed, value in zip((0, 1), rows["4,2"]["fid"]):
        fake = real_generate(m, eediff.DiscreteVP(), SamplerConfig("ddim", 3), n=24, batch_size=12, seed=seed * 10**6,
                             schedule=get_schedule("4,2"), device="cpu", progress=False)
        assert value == pytest.approx(fd_classifier(real, gen.to_uint8(fake.images)), rel=1e-3, abs=1e-2)
    assert rows["4,2"]["fid"][0] != pytest.approx(rows["4,2"]["fid"][1], rel=1e-6)  # two seeds, two image sets
    assert rows["4,2"]["fid_mean"] == pytest.approx(np.mean(rows["4,2"]["fid"]))
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(res["rows"])) and (tmp_path / "ev.md").exists()
    from PIL import Image

    assert Image.open(tmp_path / "ev.png").format == "PNG"  # the FID-vs-Accel. plot, next to the JSON
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

    cfg = BenchConfig(tiny=True, skip_e2e=True, batch_sizes="2", repeats=1, schedules="D4-DiT,D6-DiT", diffusers_compile="default",
                      block_parts=False, out=str(tmp_path / "b.json"))
    res = run_bench(cfg, log=lambda *_: None)
    errs = {r["variant"]: r["rel_err_vs_diffusers_fp32"] for r in res["forward"]}
    assert errs["eediff eager fp32"] < 1e-5  # same function as diffusers, fp32 rounding only
    for name in ("diffusers bf16", "diffusers bf16 + compile default", "eediff eager bf16", "eediff fast path",
                 "eediff fast path, kernels=fused", "eediff fast path, kernels=fp8"):
        assert errs[name] < 3e-2, (name, errs[name])  # bf16 weights and activations (fp8: row-scaled e4m3 GEMMs)
    assert errs["floor: 4 GEMMs + SDPA per block"] is None  # the floor computes no model output
    floors = {r["batch"]: r["ms"] for r in res["forward"] if r["variant"].startswith("floor:")}
    assert all(r["x_floor"] == pytest.approx(r["ms"] / floors[r["batch"]]) for r in res["forward"] if not r["variant"].startswith("floor"))
    assert {r["variant"] for r in res["schedules"]} == {"eediff fast path", "eediff fast path, kernels=fused", "eediff fast path, kernels=fp8"}
    ratios = {r["schedule"]: r["flop_ratio"] for r in res["schedules"]}
    assert 0.70 < ratios["D4-DiT"] < 0.73 and ratios["D6-DiT"] < ratios["D4-DiT"]
    res["command"] = "test"
    write_results(res, cfg.out)
    assert (tmp_path / "b.md").exists()


def test_block_parts_time_every_part_and_sum_them():
    """`eediff bench`'s block parts on a tiny DiT on the CPU: every CPU part timed (> 0), the SDPA backends a
    CPU lacks (cuDNN) reported unavailable rather than failing, and the inductor sum = its parts + one
    (flash) attention."""
    from eediff.bench import block_parts
    from eediff.models.dit import DiTConfig

    cfg = DiTConfig(input_size=8, in_channels=4, hidden_size=32, depth=3, num_heads=2, patch_size=2, num_classes=10)
    res = block_parts(cfg, 2, "cpu", repeats=1, log=lambda *_: None)
    ms = res["ms_per_block"]
    assert ms["qkv GEMM (+bias)"] > 0 and ms["GELU (tanh)"] > 0 and ms["attention: SDPA math"] > 0
    assert ms["attention: SDPA cudnn_attention"] is None  # no cuDNN on a CPU: reported, not raised
    parts = res["sum_parts"]["inductor"]
    want = sum(ms[n] for n in parts) + ms["attention: SDPA flash_attention"]
    assert res["sums"]["inductor"]["ms_per_block"] == pytest.approx(want)
    assert res["sums"]["inductor"]["ms_x_depth"] == pytest.approx(3 * want)
    assert "fp8" not in str(res["sums"])  # the fp8 and Triton parts are GPU-only


def test_bench_rows_mark_fast_accumulation_on_fp8_only():
    from eediff.bench import fast_name

    assert fast_name("fp8", True) == "eediff fast path, kernels=fp8, fast accumulation"
    assert fast_name("fused", True) == "eediff fast path, kernels=fused" and fast_name("inductor", True) == "eediff fast path"
    assert fast_name("fp8") == "eediff fast path, kernels=fp8"


# ---- eval's fp8 channel balancing flags (--fp8-smooth, --fp8-smooth-alpha, --fp8-smooth-gemms) -------------
def test_eval_fp8_smooth_flags_parse_to_the_config(tmp_path, monkeypatch):
    """The three flags land in EvalConfig as given; their defaults are the measured best (off, alpha 0.5,
    qkv,proj,fc1), and --fp8-smooth-gemms becomes FastPathConfig's tuple."""
    from typer.testing import CliRunner

    from eediff.cli import app
    from eediff.config import EvalConfig
    from eediff.eval import evaluate

    seen = []
    monkeypatch.setattr(evaluate, "run_eval", lambda cfg, log=print: seen.append(cfg))
    base = ["eval", "--device", "cpu", "--out", str(tmp_path / "e.json")]
    r = CliRunner().invoke(app, base + ["--fast", "--kernels", "fp8", "--fp8-smooth", "8", "--fp8-smooth-alpha", "0.3",
                                        "--fp8-smooth-gemms", "qkv, fc2"])
    assert r.exit_code == 0, r.output
    assert (seen[0].fp8_smooth, seen[0].fp8_smooth_alpha, seen[0].fp8_smooth_gemms) == (8, 0.3, "qkv, fc2")
    assert evaluate.smooth_gemms(seen[0].fp8_smooth_gemms) == ("qkv", "fc2")
    assert CliRunner().invoke(app, base).exit_code == 0
    assert (seen[1].fp8_smooth, seen[1].fp8_smooth_alpha, seen[1].fp8_smooth_gemms) == (0, 0.5, "qkv,proj,fc1")
    d = EvalConfig()
    assert (d.fp8_smooth, d.fp8_smooth_alpha, evaluate.smooth_gemms(d.fp8_smooth_gemms)) == (0, 0.5, ("qkv", "proj", "fc1"))
    from eediff.fast import FastPathConfig  # the CLI's defaults are the Python API's
    f = FastPathConfig()
    assert (f.fp8_smooth_alpha, f.fp8_smooth_gemms) == (d.fp8_smooth_alpha, evaluate.smooth_gemms(d.fp8_smooth_gemms))


def test_eval_fp8_smooth_calibrates_and_balances_the_fast_path(tiny_dit):
    """fast_path_configs: --fp8-smooth N is calibrate_fp8(stat="amax") over N images of the model's own schedules,
    passed as fp8_smooth with the flags' alpha and GEMMs (beside --fp8-calibrate's means, which stay apart);
    the fp8 path (torch fallback on CPU) then smooths exactly those GEMMs, stays within fp8's tolerance of the
    model, and remove() restores it bit for bit."""
    from eediff.config import EvalConfig
    from eediff.eval.evaluate import calibrate_fp8, fast_path_configs, parse_sampler
    from eediff.exits.schedule import get_schedule
    from eediff.models.registry import default_process

    proc, sampler, scheds = default_process(tiny_dit), parse_sampler("ddim-2"), [get_schedule("full"), get_schedule("4,2")]
    cfg = EvalConfig(fast=True, kernels="fp8", fp8_smooth=3, fp8_calibrate=2, batch_size=2, device="cpu")
    [(m, fc)] = fast_path_configs(cfg, [(tiny_dit, proc, scheds), (tiny_dit, proc, [get_schedule("full")])], sampler, "cpu")
    assert m is tiny_dit and fc.kernels == "fp8" and fc.fp8_smooth_alpha == 0.5 and fc.fp8_smooth_gemms == ("qkv", "proj", "fc1")
    amax = calibrate_fp8(tiny_dit, proc, sampler, scheds, 3, 2, "cpu", stat="amax")
    assert set(fc.fp8_smooth) == set(amax) and all(torch.equal(fc.fp8_smooth[k], amax[k]) for k in amax)
    assert set(fc.fp8_input_means) == set(amax) and not torch.equal(fc.fp8_input_means["blocks.0.attn.qkv"], amax["blocks.0.attn.qkv"])
    off = fast_path_configs(dataclasses.replace(cfg, fp8_smooth=0, fp8_calibrate=0), [(tiny_dit, proc, scheds)], sampler, "cpu")[0][1]
    assert off.fp8_smooth is None and off.fp8_input_means is None
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([1, 2])
    with torch.no_grad():
        ref = tiny_dit(x, t, y)
        h = apply_fast_path(tiny_dit, dataclasses.replace(fc, compile=False, cuda_graphs=False, row_kernels="inductor"))
        assert all(set(b._fp8_smooth) == {"qkv", "proj", "fc1"} for b in tiny_dit.blocks)
        out = tiny_dit(x, t, y)
        assert torch.isfinite(out).all() and ((out - ref).norm() / ref.norm()).item() < 0.06
        h.remove()
        assert torch.equal(tiny_dit(x, t, y), ref)


def test_eval_fp8_smooth_refuses_a_uvit():
    """Smoothing folds its factors into DiT blocks: a U-ViT is refused in one line naming the flag to drop."""
    from eediff.config import ConfigError, EvalConfig
    from eediff.eval.evaluate import check_fp8_flags

    uvit = eediff.build_model("U-ViT", img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=4)
    cfg = EvalConfig(fast=True, kernels="fp8", fp8_smooth=8)
    with pytest.raises(ConfigError, match="DiT blocks; this model is a U-ViT: drop --fp8-smooth"):
        check_fp8_flags(cfg, (uvit,))
    check_fp8_flags(dataclasses.replace(cfg, fp8_smooth=0), (uvit,))  # off: nothing to refuse


def test_eval_with_fp8_smooth_runs_end_to_end_on_cpu(tmp_path):
    """`eediff eval --fast --kernels fp8 --fp8-smooth 8` on the shipped dit-fmnist-D4, on a CPU: the fast path
    (and so its calibration) is CUDA-only, as for --fp8-calibrate, so the flags are checked and recorded and
    the rows are the plain model's; the result is written."""
    from typer.testing import CliRunner

    from eediff.cli import app

    out = tmp_path / "e.json"
    r = CliRunner().invoke(app, ["eval", "--model", "dit-fmnist-D4", "--samplers", "ddim-2", "-n", "8", "--batch-size", "8",
                                 "--metric", "fd-classifier", "--reference", "tests/data/fmnist_sample.npz:test", "--device", "cpu",
                                 "--time-repeats", "1", "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--out", str(out),
                                 "--fast", "--kernels", "fp8", "--fp8-smooth", "8"])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert {k: res["config"][k] for k in ("fp8_smooth", "fp8_smooth_alpha", "fp8_smooth_gemms")} == \
        {"fp8_smooth": 8, "fp8_smooth_alpha": 0.5, "fp8_smooth_gemms": "qkv,proj,fc1"}
    assert {row["schedule"] for row in res["rows"]} == {"full", "D4-DiT"} and all(np.isfinite(row["fid_mean"]) for row in res["rows"])


def test_vae_decode_rows_time_each_vae_on_the_same_latents(tmp_path):
    """`eediff bench`'s end-to-end table adds the VAE decode alone (eager and the fast path's channels-last VAE): one
    row per VAE, the same latents for each, in the table the runs are in."""
    import copy

    from eediff.bench import _sd_vae, vae_decode_rows, write_results
    from eediff.fast import apply_fast_vae

    vae = _sd_vae(tiny=True).to(torch.bfloat16)
    fast = copy.deepcopy(vae)
    apply_fast_vae(fast, compile=False)
    seen = []
    for v in (vae, fast):
        dec = v.decode
        v.decode = lambda z, _d=dec: (seen.append(z.clone()), _d(z))[1]
    rows = vae_decode_rows({"eager": vae, "fast": fast}, 3, (4, 8, 8), "cpu", repeats=1)
    assert [r["variant"] for r in rows] == ["eager", "fast"]
    assert all(r["images"] == 3 and r["images_per_s"] > 0 and r["sampler"] == "—" for r in rows)
    assert len(seen) == 4 and all(torch.equal(s, seen[0]) for s in seen) and seen[0].shape == (3, 4, 8, 8)
    res = {"device": "cpu", "torch": torch.__version__, "bf16_matmul_tflops": 1.0, "config": {"model": "tiny"},
           "gflop_per_image": 1.0, "forward": [], "schedules": [], "end_to_end": rows}
    write_results(res, str(tmp_path / "b.json"))
    assert "| eager | — | — |" in (tmp_path / "b.md").read_text()


def test_time_cut_refuses_a_cut_under_the_noise():
    """eval.timing.time_cut: the cut from medians; not measurable where the per-run cuts (run i of each,
    interleaved) spread wider than the cut itself (a loaded machine), as `sample --compare-full` and `eval`
    report it; and eval's table then says so instead of a percentage."""
    from eediff.eval.evaluate import markdown_table
    from eediff.eval.timing import time_cut

    steady = time_cut([0.70, 0.72, 0.69], [1.0, 1.02, 0.99])
    assert steady["measurable"] and steady["cut_pct"] == pytest.approx(100 * (1 - 0.70 / 1.0))
    noisy = time_cut([0.14, 0.9, 0.5], [1.9, 0.4, 0.6])  # per run 92.6%, -125%, 16.7%: the median cut 16.7% means nothing
    assert not noisy["measurable"] and noisy["per_run_min_pct"] == pytest.approx(-125.0)
    row = {"schedule": "D4-DiT", "sampler": "ddim", "steps": 5, "n": 8, "seeds": [0], "fid_mean": 1.0, "fid_std": 0.0,
           "accel_pct": 86.5, "flop_reduction_pct": 31.4, "accel_measurable": False, "accel_per_run_pct": [-136.0, 70.0]}
    md = markdown_table({"rows": [row], "metric": "FD", "model": "m", "device": "cpu", "reference": "r"})
    assert "not measurable: per run -136..70% (FLOPs 31.4%)" in md and "86.5%" not in md

