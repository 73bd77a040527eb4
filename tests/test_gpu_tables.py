"""benchmarks/gpu_tables.py (prioritised, resumable table driver) and benchmarks/tables_report.py on a tiny CPU plan."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import eediff
from tiny import random_weights

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny(path, seed):
    torch.manual_seed(seed)
    m = eediff.build_model("DiT", input_size=28, patch_size=7, in_channels=1, hidden_size=32, depth=4, num_heads=2, num_classes=10)
    random_weights(m, 0.05)
    eediff.save_model(str(path), m)
    return str(path)


def test_driver_resumes_and_report_has_the_rows(tmp_path):
    gt, rep = _load("gpu_tables"), _load("tables_report")
    base, ft, fair = _tiny(tmp_path / "b.safetensors", 0), _tiny(tmp_path / "f.safetensors", 1), _tiny(tmp_path / "fair.safetensors", 2)
    out = tmp_path / "t.jsonl"
    args = ["--arch-label", "Tiny", "--base", base, "--finetuned", f"4,2={ft}", "--fair", fair, "--zero-shot", "4,2;4,3",
            "--samplers", "ddim-2;dpm-solver++-2", "--extra-seeds", "1", "--n", "8", "--batch-size", "8", "--metric", "fd-classifier",
            "--reference", "tests/data/fmnist_sample.npz:test", "--cache-dir", str(tmp_path / "c"), "--time-batch", "2",
            "--time-repeats", "1", "--device", "cpu", "--out-jsonl", str(out)]
    plan = gt.build_plan(gt.parse_args(args))
    # priority 1: every sampler, base full, fine-tuned, zero-shot of that schedule; then the extra seed on dpm-solver++
    assert [(c["sampler"], c["row"]) for c in plan[:6]] == [
        ("ddim-2", "full"), ("ddim-2", "4,2 fine-tuned"), ("ddim-2", "4,2 zero-shot"),
        ("dpm-solver++-2", "full"), ("dpm-solver++-2", "4,2 fine-tuned"), ("dpm-solver++-2", "4,2 zero-shot")]
    assert [(c["sampler"], c["row"], c["seed"]) for c in plan[6:8]] == [("dpm-solver++-2", "4,2 fine-tuned", 1), ("dpm-solver++-2", "full", 1)]
    assert [c["priority"] for c in plan] == sorted(c["priority"] for c in plan)
    assert len(plan) == 6 + 2 + 2 + 2  # + fair on both samplers + zero-shot 4,3 on both

    # a tiny deadline: the first cell runs (nothing to estimate from yet), every later one is skipped; then resume
    lines = []
    assert gt.main(args + ["--deadline-s", "1e-9"], log=lines.append) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["row"] for r in recs if r["type"] == "cell"] == ["full"]
    assert sum(r["type"] == "skip" for r in recs) == len(plan) - 1
    assert gt.main(args, log=lines.append) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    cells = [r for r in recs if r["type"] == "cell"]
    assert len(cells) == len(plan) and len({c["key"] for c in cells}) == len(plan)
    assert {r["sampler"] for r in recs if r["type"] == "timing"} == {"ddim-2", "dpm-solver++-2"}
    assert recs[0]["type"] == "header" and "command" in recs[0] and "device" in recs[0]
    c = next(c for c in cells if c["row"] == "4,2 fine-tuned" and c["sampler"] == "ddim-2")
    for k in ("arch", "row", "model", "schedule", "sampler", "steps", "seed", "n", "fid", "compute_fraction",
              "flop_reduction_pct", "mean_blocks", "wall_s", "device", "metric"):
        assert k in c
    # DDIM-2 visits the original steps 999 and 0: schedule 4,2 runs 2 then 4 of the 4 blocks
    m = eediff.load_model(ft).model
    assert c["flop_reduction_pct"] == pytest.approx(100 * (1 - (m.flops(2) + m.flops(4)) / (2 * m.flops(4))), abs=1e-6)
    assert c["mean_blocks"] == pytest.approx(3.0) and c["model"] == ft
    # the cell's metric against the distance computed directly on its images (image i has seed seed * 10**6 + i)
    from eediff.data import load_dataset
    from eediff.eval.classifier import fd_classifier
    from eediff.generate import to_uint8

    fake = eediff.generate(m, eediff.load_model(ft).process, eediff.SamplerConfig("ddim", 2), n=8, batch_size=8,
                           seed=c["seed"] * 10**6, schedule=eediff.get_schedule("4,2"), device="cpu", progress=False)
    real = load_dataset("tests/data/fmnist_sample.npz", "test").data
    assert c["fid"] == pytest.approx(fd_classifier(real, to_uint8(fake.images)), rel=1e-3, abs=1e-2)
    # kill mid-line, then a restart skips everything done
    with open(out, "a") as f:
        f.write('{"type": "cell", "key": "cut')
    n_before = len(out.read_text().splitlines())
    lines.clear()
    assert gt.main(args, log=lines.append) == 0
    assert any(f"{len(plan)} already in" in x for x in lines)
    assert len(out.read_text().splitlines()) == n_before + 1  # only the new header

    outdir = tmp_path / "res"
    assert rep.main([str(out), "--out-dir", str(outdir), "--command", "tiny test"]) == 0
    md = (outdir / "gpu_tables.md").read_text()
    for row in ("| full |", "| 4,2 zero-shot |", "| 4,2 fine-tuned |", "| 4,3 zero-shot |", "| fair baseline (full) |"):
        assert row in md
    assert "(2 seeds)" in md and "Goal check" in md and "tiny test" in md
    assert md.index("| full |") < md.index("| 4,2 zero-shot |") < md.index("| 4,2 fine-tuned |") < md.index("| fair baseline")
    summary = json.loads((outdir / "gpu_tables.json").read_text())
    assert len(summary["cells"]) == len(plan) and summary["timings"] and "tiny test" in summary["commands"]
    assert (outdir / "fid_vs_accel.png").stat().st_size > 1000


def test_loss_by_t_matches_a_direct_computation(tmp_path):
    """benchmarks/loss_by_t.py: the ε-MSE at a time is the network's error at the schedule's depth there."""
    lbt = _load("loss_by_t")
    m = eediff.load_model(_tiny(tmp_path / "m.safetensors", 3)).model.eval()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 1, 28, 28, generator=g) * 2 - 1
    y = torch.arange(5)
    noise = torch.randn(x0.shape, generator=g)
    rows = lbt.eps_mse_by_t(m, eediff.DiscreteVP(), "4,2", x0, y, noise, [0.1, 0.9], batch=2)
    assert [r["depth"] for r in rows] == [4, 2] and [r["t"] for r in rows] == [0.1, 0.9]
    acp = eediff.DiscreteVP().alphas_cumprod()
    with torch.no_grad():
        for r, idx in zip(rows, (100, 900)):
            a = acp[idx].float()
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            eps = m(x_t, torch.full((5,), float(idx)), y, active_blocks=r["depth"])[:, :1]
            assert abs(r["eps_mse"] - float(((eps - noise) ** 2).mean())) < 1e-6  # float32 sums in another order
