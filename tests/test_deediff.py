"""DeeDiff: UEMs, per-sample exits through the per-row path, losses, calibration, training and the CLI."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eediff
from eediff.diffusion.process import DiscreteVP
from eediff.diffusion.sampling import Denoiser
from eediff.exits.deediff import (
    DeeDiffConfig, DeeDiffError, DeeDiffExit, apply_deediff, calibrate_tau, deediff_losses, exit_depths, heads_of, layer_outputs,
)

from tiny import tiny_backbone  # noqa: E402

TOL = 1e-10


def _model(arch, form="paper", seed=0):
    m = tiny_backbone(arch, std=0.1 if form == "paper" else 0.5, seed=seed)
    apply_deediff(m, DeeDiffConfig(form=form))
    with torch.no_grad():  # random heads too (zero-initialised ones would give u = 0.5 for every row)
        for p in m.uem.parameters():
            p.normal_(0, 0.5)
    return m.eval()


def _inputs(B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, 8, 8, generator=g), torch.rand(B, generator=g) * 999, torch.randint(0, 10, (B,), generator=g)


def _between(u):
    """A threshold halfway between the two middle values of u (no row sits on the edge)."""
    v = u.flatten().sort().values
    return float((v[len(v) // 2 - 1] + v[len(v) // 2]) / 2)


def _run(m, x, t, y, tau, cap=None):
    pol = DeeDiffExit(m, tau)
    depth = torch.zeros(x.shape[0], dtype=torch.long)
    with torch.no_grad():
        out = m(x, t, y, active_blocks=cap, exits=pol, depth_out=depth)
    return out, depth


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
@pytest.mark.parametrize("form", ["paper", "pixel"])
def test_tau_zero_is_the_full_model_exactly_and_tau_inf_leaves_at_the_first_block(arch, form):
    m = _model(arch, form)
    x, t, y = _inputs(7)
    K = m.num_exit_blocks
    out, depth = _run(m, x, t, y, 0.0)
    with torch.no_grad():
        assert torch.equal(out, m(x, t, y)) and torch.equal(depth, torch.full((7,), K))
        out, depth = _run(m, x, t, y, math.inf)
        assert torch.equal(depth, torch.ones(7, dtype=torch.long))
        assert torch.allclose(out, m(x, t, y, active_blocks=1), atol=1e-6)


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
def test_batched_exits_equal_each_sample_alone_and_differ_between_samples(arch, float64):
    m = _model(arch).double()
    x, t, y = _inputs(12, seed=3)
    with torch.no_grad():  # a threshold inside the range of this model's uncertainties
        _, exits = layer_outputs(m, x, t, y)
    tau = _between(exits[0][1])  # about half the rows leave after the first block, the rest later
    out, depth = _run(m, x, t, y, tau)
    assert len(depth.unique()) > 1  # the rows leave at different blocks
    for i in range(12):
        alone, d_alone = _run(m, x[i:i + 1], t[i:i + 1], y[i:i + 1], tau)
        assert int(d_alone) == int(depth[i])
        assert (out[i] - alone[0]).abs().max() < TOL, i
        with torch.no_grad():  # and a row that left after block k is exactly the model at depth k
            assert (out[i] - m(x[i:i + 1], t[i:i + 1], y[i:i + 1], active_blocks=int(depth[i]))[0]).abs().max() < TOL


def test_row_buckets_change_nothing_but_the_shapes(float64):
    m = _model("DiT").double()
    x, t, y = _inputs(13, seed=2)
    with torch.no_grad():
        _, exits = layer_outputs(m, x, t, y)
    tau = _between(exits[1][1])
    ref, d_ref = _run(m, x, t, y, tau)
    for g in (4, 8, 32):
        pol = DeeDiffExit(m, tau, row_bucket=g)
        depth = torch.zeros(13, dtype=torch.long)
        with torch.no_grad():
            out = m(x, t, y, exits=pol, depth_out=depth)
        assert torch.equal(depth, d_ref) and (out - ref).abs().max() < TOL, g


def test_ase_cap_bounds_every_row():
    m = _model("DiT")
    x, t, y = _inputs(9)
    cap = torch.tensor([6, 2, 4, 0, 6, 1, 3, 6, 5])
    _, depth = _run(m, x, t, y, 0.0, cap=cap)
    assert torch.equal(depth, cap)  # never uncertain enough to leave: each row runs to its cap
    _, depth = _run(m, x, t, y, 0.45, cap=cap)
    assert (depth <= cap).all()


def test_cfg_halves_exit_independently():
    m = _model("DiT")
    x, _, y = _inputs(6)
    t = torch.full((12,), 500.0)
    with torch.no_grad():  # the first block's uncertainties of the guided batch (conditional rows, then null-label rows)
        _, exits = layer_outputs(m, torch.cat([x, x]), t, torch.cat([y, torch.full_like(y, 10)]))
    u = exits[0][1]
    j = int((u[:6] - u[6:]).abs().argmax())  # a threshold between the two halves' uncertainties of image j
    record = []
    den = Denoiser(m, DiscreteVP(), DeeDiffExit(m, float(u[j] + u[6 + j]) / 2), cfg_scale=3.0, record=record)
    with torch.no_grad():
        den(x, 500.0, y)
    t_model, ran = record[0]
    assert ran.shape == (12,) and (ran[j] == 1) != (ran[6 + j] == 1)  # one half of image j leaves, the other runs on


def test_exit_rows_match_their_uncertainties(float64):
    """A row leaves after the first block whose uncertainty (computed on the full-depth pass) is below tau."""
    m = _model("DiT").double()
    x, t, y = _inputs(10, seed=5)
    with torch.no_grad():
        _, exits = layer_outputs(m, x, t, y)
    u = torch.stack([u for _, u, _ in exits])  # (K - 1, B)
    for tau in (0.3, 0.5, 0.7):
        _, depth = _run(m, x, t, y, tau)
        assert torch.equal(depth, exit_depths(u, tau))


@pytest.mark.parametrize("ual", ["paper", "code"])
@pytest.mark.parametrize("form", ["paper", "pixel"])
def test_losses_against_a_direct_computation(ual, form, float64):
    m = _model("DiT", form).double()
    x, t, y = _inputs(5)
    noise = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(1)).double()
    _, exits = layer_outputs(m, x, t, y)
    l_u, l_ual = deediff_losses(exits, noise, 4, ual)
    want_u, terms, certs = 0.0, [], []
    for i, (out, u, cert) in enumerate(exits):
        with torch.no_grad():  # the exit output by the public path: the model run at depth i + 1
            assert torch.allclose(out, m(x, t, y, active_blocks=i + 1), atol=TOL)
        e = out[:, :4] - noise
        target = torch.tanh(e.abs())
        want_u += ((u - target.mean((1, 2, 3))) ** 2).mean() if cert is None else ((cert - (1 - target)) ** 2).mean()
        terms.append((e ** 2).mean((1, 2, 3)))
        certs.append(1 - u.detach())
    if ual == "paper":
        want_ual = sum((c * m_).mean() for c, m_ in zip(certs, terms))
    else:
        w = torch.stack([c.mean() for c in certs])
        want_ual = sum(wi / w.sum() * m_.mean() for wi, m_ in zip(w, terms))
    assert torch.allclose(l_u, torch.as_tensor(want_u), atol=TOL) and torch.allclose(l_ual, torch.as_tensor(want_ual), atol=TOL)
    (l_u + l_ual).backward()
    assert all(p.grad is not None for p in m.uem.parameters())
    if form == "pixel":  # the code's UEM reads the detached state: L_u sends no gradient into the backbone
        m.zero_grad(set_to_none=True)
        _, exits = layer_outputs(m, x, t, y)
        deediff_losses(exits, noise, 4, ual)[0].backward()
        assert all(p.grad is None or p.grad.abs().max() == 0 for n, p in m.named_parameters() if not n.startswith("uem."))


def test_calibration_finds_the_target_saving():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(27, 4000, generator=g)
    tau, saving = calibrate_tau(u, 0.4)
    assert abs(saving - 0.4) < 2e-3
    assert abs((1 - exit_depths(u, tau).double().mean().item() / 28) - saving) < 1e-12
    assert calibrate_tau(u, 0.0)[1] < 1e-3  # tau -> 0: every block runs
    with pytest.raises(DeeDiffError, match="target-saving"):
        calibrate_tau(u, 1.2)


def test_heads_are_saved_beside_the_backbone_and_reload(tmp_path):
    m = _model("U-ViT", "pixel")
    m.uem.cfg.tau = 0.37
    p = str(tmp_path / "dd.safetensors")
    eediff.save_model(p, m)
    back = eediff.load_model(p).model
    assert heads_of(back).cfg == DeeDiffConfig(form="pixel", tau=0.37)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), back.state_dict().values()))
    # the backbone's own weights (what an official checkpoint holds) load into a plain model, unchanged
    plain = eediff.build_model("U-ViT", img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=8, num_heads=4, num_classes=11, null_label=True)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("uem.")}, strict=True)
    from eediff.eval.calibrate import store_tau

    store_tau(p, str(tmp_path / "dd2.safetensors"), 0.12)
    assert heads_of(eediff.load_model(str(tmp_path / "dd2.safetensors")).model).cfg.tau == 0.12


def test_deediff_finetune_trains_the_heads_and_can_freeze_the_backbone(tmp_path):
    from eediff.config import FinetuneConfig
    from eediff.train.loop import Trainer

    base = eediff.build_model("DiT", input_size=28, patch_size=7, in_channels=1, hidden_size=32, depth=4, num_heads=2, num_classes=10)
    init = str(tmp_path / "base.safetensors")
    eediff.save_model(init, base)
    cfg = FinetuneConfig(init=init, method="deediff", freeze_backbone=True, dataset="tests/data/fmnist_train_sample.npz", steps=3,
                         batch_size=16, lr=1e-2, out=str(tmp_path / "run"), device="cpu", progress=False, sample_every=-1)
    tr = Trainer(cfg, "finetune")
    assert heads_of(tr.model) is not None and heads_of(tr.ema) is not None
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    for _ in range(3):
        loss, info = tr.step()
        assert math.isfinite(float(loss)) and {"l_u", "l_ual", "l_simple"} <= set(info)
        assert torch.allclose(loss, info["l_simple"] + info["l_u"] + info["l_ual"])
    after = tr.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("uem."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("uem."))


EXE = [sys.executable, "-m", "eediff.cli"]


def test_cli_errors_are_one_line(tmp_path):
    m = eediff.build_model("DiT", input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=4, num_heads=4, num_classes=3)
    p = str(tmp_path / "m.safetensors")
    eediff.save_model(p, m)
    cases = [
        (["sample", "--model", p, "--tau", "0.3", "-n", "2", "--steps", "2", "--out", str(tmp_path / "g.png")], "no DeeDiff heads"),
        (["calibrate", "--model", p], "no DeeDiff heads"),
        (["calibrate", "--model", "dit-fmnist"], "--out"),
        (["finetune", "--init", p, "--method", "deediff", "--schedule", "D4-DiT", "--dataset", "tests/data/fmnist_train_sample.npz"], "full depth"),
        (["finetune", "--init", p, "--method", "magic"], "--method"),
    ]
    for args, msg in cases:
        r = subprocess.run(EXE + args, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, (args, r.stderr)
        lines = [ln for ln in r.stderr.strip().splitlines() if "warn" not in ln.lower()]
        assert len(lines) == 1 and msg in lines[0], (args, r.stderr)


def _saved_deediff_dit(path, **size) -> str:
    """A one-channel DiT with DeeDiff heads, every weight random, saved to ``path`` (one channel: a 4-channel
    model is taken for a latent model and asks for a VAE)."""
    torch.manual_seed(0)
    m = eediff.build_model("DiT", in_channels=1, hidden_size=32, num_heads=4, **size)
    apply_deediff(m, DeeDiffConfig())
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
        for p in m.uem.parameters():
            p.normal_(0, 0.5)
    eediff.save_model(str(path), m)
    return str(path)


def test_sample_and_calibrate_end_to_end(tmp_path):
    p = _saved_deediff_dit(tmp_path / "dd.safetensors", input_size=8, patch_size=2, depth=6, num_classes=3)
    r = subprocess.run(EXE + ["calibrate", "--model", p, "--target-saving", "0.4", "-n", "8", "--steps", "4", "--device", "cpu"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    tau = heads_of(eediff.load_model(p).model).cfg.tau
    assert f"tau {tau:.4f}" in r.stdout and "target 40.0%" in r.stdout
    out, plot = tmp_path / "g.png", tmp_path / "exits.png"
    r = subprocess.run(EXE + ["sample", "--model", p, "-n", "4", "--batch-size", "4", "--steps", "4", "--sampler", "ddim",
                              "--out", str(out), "--exit-plot", str(plot), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"exits: DeeDiff per sample, tau {tau:g}" in r.stdout and "layers saved:" in r.stdout
    assert out.exists() and plot.exists()
    meta = json.loads(eediff.load_model(p).meta["deediff"])
    assert meta["form"] == "paper"


def test_exit_stages_on_kept_buffers_give_the_eager_result(float64):
    """The fast path replays captured stages on buffers kept across calls; a runner that keeps the buffers and
    runs the same stages must give what the eager exit path gives, call after call."""
    from eediff.models.backbone import EagerStages, ExitState, forward_exits

    class KeptStages(EagerStages):
        def __init__(self):
            self.states, self.keys = {}, []

        def state(self, model, x, t, y, cap, ctx):
            key = (tuple(x.shape), ctx.shape[1])
            if key not in self.states:
                self.states[key] = ExitState(model, x, t, y, cap, ctx)
            return self.states[key]

        def run(self, key, fn, st):
            self.keys.append(key)
            fn()

    m = _model("U-ViT").double()
    runner = KeptStages()
    for seed in range(3):
        x, t, y = _inputs(10, seed=seed)
        with torch.no_grad():
            tau = _between(layer_outputs(m, x, t, y)[1][0][1])
            pol = DeeDiffExit(m, tau)
            d_ref, d = torch.zeros(10, dtype=torch.long), torch.zeros(10, dtype=torch.long)
            ref = forward_exits(m, x, t, y, None, pol, d_ref)
            out = forward_exits(m, x, t, y, None, pol, d, stages=runner)
        assert torch.equal(d, d_ref) and torch.equal(out, ref)
    assert len(runner.states) == 1 and ("embed",) in runner.keys and any(k[0] == "reorder" for k in runner.keys)


def test_deediff_finetune_resumes_exactly(tmp_path):
    """A DeeDiff run stopped after 2 steps and resumed to 4 ends bit-identical to 4 steps in one go (CPU)."""
    from eediff.config import FinetuneConfig
    from eediff.train.loop import run

    base = eediff.build_model("DiT", input_size=28, patch_size=7, in_channels=1, hidden_size=32, depth=4, num_heads=2, num_classes=10)
    init = str(tmp_path / "base.safetensors")
    eediff.save_model(init, base)
    kw = dict(init=init, method="deediff", deediff_form="pixel", dataset="tests/data/fmnist_train_sample.npz", batch_size=16,
              lr=1e-3, device="cpu", progress=False, sample_every=-1, save_every=2, log_every=2)
    run(FinetuneConfig(out=str(tmp_path / "a"), steps=4, **kw), "finetune")
    run(FinetuneConfig(out=str(tmp_path / "b"), steps=2, **kw), "finetune")
    run(FinetuneConfig(out=str(tmp_path / "b"), steps=4, resume=True, **kw), "finetune")
    a, b = (eediff.load_model(str(tmp_path / d / "final.safetensors")).model for d in ("a", "b"))
    assert heads_of(a).cfg.form == "pixel"
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_per_sample_exits_with_batched_adaln(float64):
    """DeeDiff exits read the tokens block by block: with the adaLN projections batched
    (kernels.batch_adaln) every row leaves at the same block with the same output (float64)."""
    from eediff.kernels import apply_kernels

    m = _model("DiT").double()
    x, t, y = _inputs(10)
    with torch.no_grad():
        tau = _between(layer_outputs(m, x, t, y)[1][0][1])
    ref, d_ref = _run(m, x, t, y, tau)
    h = apply_kernels(m, "inductor", batched_adaln=True)
    out, d = _run(m, x, t, y, tau)
    h.remove()
    assert torch.equal(d, d_ref) and len(set(d.tolist())) > 1
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)


def test_deediff_cpu_check_compares_at_equal_saving_on_the_same_seeds(tmp_path):
    """benchmarks/deediff_cpu_check.py: the full-depth row is `generate` at full depth with seeds 0.. (the same
    images, bit for bit), the scheduled row's FLOP cut is the schedule's analytic one, the DeeDiff row's tau is
    the one `calibrate` finds for the target, and every distance is the classifier FD of the images it saved."""
    from test_train_plateau import _bench_module

    from eediff.config import FidConfig
    from eediff.diffusion.sampling import SamplerConfig
    from eediff.eval.calibrate import calibrate
    from eediff.eval.evaluate import run_fid
    from eediff.exits.schedule import get_schedule
    from eediff.generate import generate, to_uint8

    import numpy as np

    # 28x28x1: the size the Fashion-MNIST classifier reads
    path = _saved_deediff_dit(tmp_path / "dd.safetensors", input_size=28, patch_size=7, depth=4, num_classes=10)
    ref = str(Path(__file__).parent / "data" / "fmnist_sample.npz")
    work, out = tmp_path / "work", tmp_path / "check.json"
    res = _bench_module("deediff_cpu_check").main([
        "--models", f"dd={path}", "--full", path, "--scheduled", f"cut={path}:4,2", "--target-saving", "0.4", "--calib-n", "6",
        "-n", "12", "--batch-size", "12", "--steps", "3", "--reference", ref, "--work", str(work), "--cache-dir", str(tmp_path / "c"),
        "--out", str(out)])
    rows = {r["label"]: r for r in res["rows"]}
    assert list(rows) == ["full", "cut", "dd"] and json.loads(out.read_text())["rows"] == res["rows"]
    loaded = eediff.load_model(path)
    sampler = SamplerConfig("dpm-solver++", 3)
    full = generate(loaded.model.eval(), loaded.process, sampler, n=12, batch_size=12, seed=0, device="cpu", progress=False,
                    schedule=get_schedule("full"))
    assert np.array_equal(np.load(work / "full.npz")["arr_0"], to_uint8(full.images))
    cut = get_schedule("4,2")
    t_unit = [float(loaded.process.unit_time(t)) for t in full.model_times]
    assert rows["cut"]["flop_reduction"] == pytest.approx(1 - cut.compute_fraction(loaded.model.flops, 4, t_unit), abs=1e-9)
    assert 0 < rows["cut"]["flop_reduction"] < 0.5
    c = calibrate(loaded.model.eval(), loaded.process, sampler, 0.4, n=6, batch_size=12, device="cpu", check=False)
    assert rows["dd"]["tau"] == c["tau"] and rows["dd"]["recorded_saving"] == c["recorded_saving"]
    for label in rows:
        fd = run_fid(FidConfig(images=str(work / f"{label}.npz"), reference=ref, metric="fd-classifier",
                               cache_dir=str(tmp_path / "c"), device="cpu"))
        assert rows[label]["fd"] == pytest.approx(fd, rel=1e-9)
