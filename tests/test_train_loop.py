"""Training and ASE fine-tuning (Algorithm 1) on the committed Fashion-MNIST sample, with tiny models on CPU."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch
from typer.testing import CliRunner

from eediff.checkpoint import load_model
from eediff.cli import app
from eediff.config import ConfigError, FinetuneConfig, TrainConfig
from eediff.diffusion.process import ContinuousVP, DiscreteVP
from eediff.exits.schedule import get_schedule
from eediff.data import ShardedSampler
from eediff.train.loop import Trainer, ema_update, run, stratified_counts
from eediff.models.registry import build_model
from eediff.train.losses import DiffusionObjective, TimeWeight
from tiny import TINY_DIT, one_thread  # noqa: F401 (an autouse fixture: every test here runs on one thread)

HERE = os.path.dirname(__file__)
SAMPLE = os.path.join(HERE, "data", "fmnist_train_sample.npz")


def tiny_cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(out=str(tmp_path / "run"), dataset=SAMPLE, model_config=TINY_DIT, steps=10, batch_size=32, lr=1e-3,
                log_every=5, save_every=1000, sample_every=-1, device="cpu", progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_short_run_lowers_loss_on_real_sample(tmp_path):
    tr = Trainer(tiny_cfg(tmp_path, lr=2e-3, steps=80), "train")
    assert tr.model.learn_sigma  # hybrid loss (eps-MSE + VLB) is what is trained
    losses = [float(tr.step()[0]) for _ in range(80)]
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)


def _count_rows(blocks):
    counts = [0] * len(blocks)
    hooks = [b.register_forward_hook(lambda m, inp, out, i=i: counts.__setitem__(i, counts[i] + inp[0].shape[0])) for i, b in enumerate(blocks)]
    return counts, hooks


@pytest.mark.parametrize("grouping", ["group", "batch"])
def test_finetune_runs_only_the_scheduled_blocks(tmp_path, grouping):
    cfg = tiny_cfg(tmp_path, schedule="4,3,2,1", depth_grouping=grouping)
    tr = Trainer(cfg, "train")
    counts, hooks = _count_rows(tr.model.blocks)
    expected = [0] * 4
    for _ in range(6):
        _, info = tr.step()
        depth = info["depth"]
        assert torch.equal(depth, get_schedule("4,3,2,1").active_blocks(info["t_unit"], 4))
        for layer in range(4):
            expected[layer] += int((depth > layer).sum())
        if grouping == "batch":
            assert len(depth.unique()) == 1  # one depth per step
    for h in hooks:
        h.remove()
    assert counts == expected
    assert counts[0] == 6 * 32 and counts[3] < counts[0]  # deep blocks saw only the examples near the data


def test_uvit_decoder_blocks_follow_the_schedule_and_labels_drop_to_null(tmp_path):
    mc = json.dumps(dict(patch_size=7, embed_dim=32, depth=4, num_heads=4))
    cfg = tiny_cfg(tmp_path, arch="U-ViT", model_config=mc, schedule="2,1", batch_size=16)
    tr = Trainer(cfg, "train")
    assert isinstance(tr.process, ContinuousVP) and tr.model.num_classes == 10 and tr.label_p == pytest.approx(0.1)
    seen = []
    tr.model.label_emb.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    counts, hooks = _count_rows(tr.model.out_blocks)
    expected = [0, 0]
    for _ in range(4):
        loss, info = tr.step()
        assert math.isfinite(float(loss))
        expected[0] += int((info["depth"] > 0).sum())
        expected[1] += int((info["depth"] > 1).sum())
    assert counts == expected
    labels = torch.cat(seen)
    assert labels.max() == 10 and labels.min() >= 0  # some labels became the null label (index 10)


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
def test_per_row_training_pass_equals_running_each_depth_group_alone(arch, float64):
    """One forward with a depth per row (rows in no particular order) gives each row's output and every
    parameter's gradient as running each depth group at its own int depth."""
    torch.manual_seed(0)
    if arch == "DiT":
        model = build_model("DiT", input_size=8, patch_size=4, in_channels=1, hidden_size=16, depth=4, num_heads=2, num_classes=3,
                            class_dropout_prob=0.0)
    else:
        model = build_model("U-ViT", img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=8, num_heads=2, num_classes=4, null_label=True)
    with torch.no_grad():  # DiT starts as the identity (adaLN-zero): give every weight a value
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.train()
    depths = torch.tensor([3, 0, 4, 1, 3, 0, 4, 3] if arch == "DiT" else [1, 4, 0, 3, 2, 3, 1, 0])
    B = len(depths)
    x, t, y = torch.randn(B, 1, 8, 8), torch.rand(B) * 900, torch.randint(0, 3, (B,))
    w = torch.randn(B, 1 if arch == "U-ViT" else 2, 8, 8)

    ref = torch.empty(B, w.shape[1], 8, 8)
    for k in depths.unique().tolist():
        rows = (depths == k).nonzero().squeeze(1)
        ref[rows] = model(x[rows], t[rows], y[rows], active_blocks=k)
    (ref * w).sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    out = model(x, t, y, active_blocks=depths)
    (out * w).sum().backward()
    assert torch.allclose(out, ref, atol=1e-10)
    for n, p in model.named_parameters():
        if n in ref_grads:
            assert torch.allclose(p.grad, ref_grads[n], atol=1e-9), n
        else:
            assert p.grad is None or p.grad.abs().max() == 0, n


def test_per_row_training_step_equals_int_depth_step_when_all_t_are_equal(tmp_path, float64):
    """A trainer step whose rows all get the same depth equals the same step with that int depth."""
    cfg = tiny_cfg(tmp_path, schedule="4,3,2,1", steps=2)
    a, b = Trainer(cfg, "train"), Trainer(cfg, "train")
    b.model.load_state_dict(a.model.state_dict())

    class IntDepth:  # the policy an int-depth trainer would be: every row at the first row's depth
        def __init__(self, policy):
            self.inner, self.num_blocks = policy, policy.num_blocks

        def depth(self, t_unit):
            return int(self.inner.depth(t_unit)[0])

    for tr in (a, b):  # every t of a batch in one interval, so one depth per step
        tr.cfg = tr.cfg.__class__(**{**tr.cfg.__dict__, "depth_grouping": "batch"})
    b.policy = IntDepth(b.policy)
    for _ in range(2):
        la, ia = a.step()
        lb, _ = b.step()
        assert len(ia["depth"].unique()) == 1
        assert torch.equal(la, lb)
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        assert torch.equal(p, q), n


def test_stratified_times_are_unbiased_and_nearly_static():
    g = torch.Generator().manual_seed(0)
    probs = [0.1, 0.25, 0.3, 0.2, 0.15]
    draws = [stratified_counts(32, probs, g) for _ in range(4000)]
    assert all(sum(c) == 32 for c in draws)
    mean = torch.tensor(draws, dtype=torch.float64).mean(0)
    assert torch.allclose(mean, 32 * torch.tensor(probs, dtype=torch.float64), atol=0.03)
    assert len({tuple(c) for c in draws}) <= 4  # a group's size moves by at most one: few distinct shapes
    assert all(abs(c - 32 * p) < 1 for d in draws for c, p in zip(d, probs))


def test_ema_update_is_exact():
    ema = [torch.tensor([1.0, -2.0]), torch.tensor([[4.0]])]
    student = [torch.tensor([5.0, 2.0]), torch.tensor([[0.0]])]
    ema_update(ema, student, 0.75)
    assert torch.equal(ema[0], torch.tensor([2.0, -1.0])) and torch.equal(ema[1], torch.tensor([[3.0]]))


def test_ema_follows_the_student_every_step(tmp_path):
    tr = Trainer(tiny_cfg(tmp_path, ema_decay=0.75, ema_warmup=False), "train")
    before = [p.detach().clone() for p in tr.ema_params]
    tr.step()
    for e, b, p in zip(tr.ema_params, before, tr.params):
        assert torch.equal(e, b.mul(0.75).add(p.detach(), alpha=0.25))


def test_frozen_time_embedder_stays_put(tmp_path):
    tr = Trainer(tiny_cfg(tmp_path, freeze_time_embed=True), "train")
    before = {k: v.clone() for k, v in tr.model.t_embedder.state_dict().items()}
    opt_ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in opt_ids for p in tr.model.t_embedder.parameters())
    for _ in range(3):
        tr.step()
    assert all(torch.equal(before[k], v) for k, v in tr.model.t_embedder.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in tr.ema.t_embedder.state_dict().items())


def test_lambda_design_mean_one_and_reset_after_cycle():
    sched = get_schedule("D4-DiT")
    w = TimeWeight(sched, 28, gamma=1.0, cycle=3, unit="step")
    mids = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    # 1 + (1 - k/28) for k = 28, 24, 20, 16, 12 is 1, 8/7, 9/7, 10/7, 11/7; their mean is 9/7
    assert torch.allclose(w(mids, step=0), torch.tensor([7, 8, 9, 10, 11], dtype=torch.float64) / 9)
    assert w(torch.arange(1000, dtype=torch.float64) / 1000, step=2).mean().item() == pytest.approx(1.0)
    assert torch.equal(w(mids, step=3), torch.ones(5, dtype=torch.float64))  # reset after C steps
    assert torch.equal(TimeWeight(sched, 28, 1.0, cycle=0)(mids, step=0), torch.ones(5, dtype=torch.float64))  # C = 0
    assert torch.equal(TimeWeight(get_schedule("full"), 28, 5.0, cycle=10)(mids, step=0), torch.ones(5, dtype=torch.float64))
    by_epoch = TimeWeight(sched, 28, 1.0, cycle=1, unit="epoch")
    assert not torch.equal(by_epoch(mids, step=500, epoch=0), torch.ones(5, dtype=torch.float64))
    assert torch.equal(by_epoch(mids, step=0, epoch=1), torch.ones(5, dtype=torch.float64))


def test_lambda_weights_the_loss_until_the_cycle_ends(tmp_path):
    tr = Trainer(tiny_cfg(tmp_path, schedule="4,2", reweight_gamma=1.0, reweight_cycle=2), "train")
    lams = [tr.step()[1]["lambda"] for _ in range(3)]
    assert sorted({round(v, 6) for v in lams[0].tolist()}) == [0.8, 1.2]  # (1 + 0) / 1.25, (1 + 0.5) / 1.25
    assert torch.equal(lams[2], torch.ones(32))


def test_hybrid_loss_pieces():
    obj = DiffusionObjective(DiscreteVP(), learn_sigma=True, in_channels=1, device="cpu")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([0, 1, 10, 300, 700, 999])
    x_t = obj.perturb(x0, t, noise)
    assert torch.equal(x_t, DiscreteVP().perturb(x0, t, noise))  # the precomputed tables match the process
    # perfect eps and the true posterior variance (v = -1 selects it): the KL terms vanish
    out = torch.cat([noise, -torch.ones_like(noise)], 1).requires_grad_(True)
    vb = obj.vlb(out, x0, x_t, t)
    assert vb[1:].abs().max() < 1e-4 and vb[0] > 0  # t = 0 is the decoder NLL
    # the bound trains the variance only: no gradient reaches the eps half through it
    vb.sum().backward()
    assert out.grad[:, :1].abs().max() == 0 and out.grad[:, 1:].abs().max() > 0
    loss = obj.loss(out.detach(), x0, x_t, noise, t, t_host=t)
    assert torch.allclose(loss, obj.vlb(out.detach(), x0, x_t, t))  # mse = 0 here


def test_sampler_shards_a_global_batch_and_resumes():
    ranks = [ShardedSampler(10, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    b = [s.next() for s in ranks]
    assert len(b[0]) == 2 and set(b[0].tolist()).isdisjoint(b[1].tolist())
    one = ShardedSampler(10, 4, seed=3)
    assert torch.equal(one.next(), torch.cat(b))
    for _ in range(3):
        one.next()
    resumed = ShardedSampler(10, 4, seed=3)
    resumed.load_state_dict(one.state_dict())
    assert torch.equal(resumed.next(), one.next()) and one.epoch == 2


def test_finetune_records_the_schedule_and_sample_uses_it(tmp_path):
    s = run(tiny_cfg(tmp_path, out=str(tmp_path / "base"), steps=3), "train")
    assert load_model(s.final_path).tuned_for is None
    ft = FinetuneConfig(out=str(tmp_path / "ft"), init=s.final_path, schedule="4,3,2,1", dataset=SAMPLE, steps=4, batch_size=32,
                        log_every=2, save_every=2, sample_every=0, sample_n=4, sample_steps=3, device="cpu", progress=False, export_fp16=True)
    r = run(ft, "finetune")
    loaded = load_model(r.final_path)
    assert loaded.tuned_for is not None and loaded.tuned_for.blocks == (4, 3, 2, 1)
    assert load_model(str(tmp_path / "ft" / "final-fp16.safetensors")).tuned_for.blocks == (4, 3, 2, 1)
    assert os.path.exists(tmp_path / "ft" / "samples" / "step-00000004.png")
    cfg = json.load(open(tmp_path / "ft" / "config.json"))
    assert cfg["reweight_cycle"] == 2 and cfg["lr_schedule"] == "constant" and cfg["lr"] == 2e-5
    rows = [json.loads(l) for l in open(tmp_path / "ft" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [2, 4] and {"loss", "lr", "steps_per_s", "t"} <= set(rows[0])
    res = CliRunner().invoke(app, ["sample", "--model", r.final_path, "-n", "2", "--batch-size", "2", "--steps", "2",
                                   "--out", str(tmp_path / "g.png"), "--no-progress", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "schedule: 4,3,2,1" in res.output


def test_config_file_values_and_cli_overrides(tmp_path):
    f = tmp_path / "opts.json"
    f.write_text(json.dumps({"dataset": SAMPLE, "model-config": json.loads(TINY_DIT), "steps": 50, "batch_size": 16,
                             "lr": 5e-4, "sample_every": -1, "device": "cpu"}))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--config", str(f), "--steps", "2", "--out", str(out), "--no-progress", "--log-every", "1"])
    assert res.exit_code == 0, res.output
    saved = json.load(open(out / "config.json"))
    assert saved["steps"] == 2 and saved["lr"] == 5e-4 and saved["batch_size"] == 16 and json.loads(saved["model_config"])["depth"] == 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stepz": 3}))
    res = CliRunner().invoke(app, ["train", "--config", str(bad), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown option 'stepz'" in res.output and len(res.output.strip().splitlines()) == 1


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = DiffusionObjective.loss

    def poisoned(self, *a, **k):
        calls["n"] += 1
        out = real(self, *a, **k)
        return out * float("nan") if calls["n"] > 6 else out

    monkeypatch.setattr(DiffusionObjective, "loss", poisoned)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--dataset", SAMPLE, "--model-config", TINY_DIT, "--steps", "20", "--batch-size", "32",
                                   "--save-every", "4", "--sample-every", "-1", "--device", "cpu", "--no-progress", "--out", str(out)])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "NaN" in lines[0] and "step-00000004" in lines[0]
    assert sorted(os.listdir(out / "checkpoints")) == ["step-00000004"]
    assert not os.path.exists(out / "final.safetensors")
    sd = load_model(str(out / "checkpoints" / "step-00000004" / "ema.safetensors")).model.state_dict()
    assert all(torch.isfinite(v).all() for v in sd.values())


def test_ema_residual_note_flags_short_runs_only():
    from eediff.train.loop import _suggest_decay, ema_residual_note

    assert "22%" in ema_residual_note(0.999, 1500, warmup=False)  # the fine-tune that went wrong
    assert ema_residual_note(0.99, 1200, warmup=False) is None  # 0.99^1200 ~ 6e-6
    assert ema_residual_note(0.999, 1500, warmup=True) is None  # warm-up forgets the start by design
    assert ema_residual_note(0.5, 5, warmup=False) is None
    for steps in (10, 20, 60, 1500):  # the suggestion never earns the note itself (20 steps: not 0.9, which keeps 12%)
        d = _suggest_decay(steps)
        assert 0 < d < 1 and ema_residual_note(d, steps, warmup=False) is None, (steps, d)
    assert _suggest_decay(1500) == round(1 - 1 / 150, 4)  # long runs: a horizon of a tenth of the run


def test_max_minutes_stops_exports_and_resumes_to_the_full_run(tmp_path):
    cfg = tiny_cfg(tmp_path, steps=12, max_minutes=1e-9, sample_every=0)  # CPU checks the clock every step: stops after step 1
    summary = run(cfg, "train")
    assert summary.step == 1
    assert not os.path.exists(os.path.join(cfg.out, "samples"))  # the limit bounds the whole run: no final grid after it
    loaded = load_model(os.path.join(cfg.out, "final.safetensors"))
    assert int(loaded.meta["trained_steps"]) == 1
    rows = [json.loads(line) for line in open(os.path.join(cfg.out, "metrics.jsonl"))]
    assert rows[-1]["step"] == 1
    res = CliRunner().invoke(app, ["train", "--out", cfg.out, "--resume", "--max-minutes", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.load(open(os.path.join(cfg.out, "rank_hashes.json")))["step"] == 12


def test_compile_scope_model_is_the_same_training(tmp_path):
    """--compile --compile-scope model (one graph for the whole forward) trains the same function as eager:
    three steps from the same seed give the same losses and weights (inductor's fusions reorder float sums)."""
    eager = Trainer(tiny_cfg(tmp_path / "a", steps=3), "train")
    whole = Trainer(tiny_cfg(tmp_path / "b", steps=3, compile=True, compile_scope="model"), "train")
    assert whole.whole_graph and not eager.whole_graph
    for _ in range(3):
        la, lb = float(eager.step()[0]), float(whole.step()[0])
        assert abs(la - lb) <= 1e-4 * abs(la), (la, lb)
    for (n, a), b in zip(eager.model.state_dict().items(), whole.model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5), n  # the same parameter names: compiled in place


def test_compile_scope_model_with_one_depth_per_step(tmp_path):
    """An exit schedule with --depth-grouping batch: every step's rows share one depth, which the whole-forward
    graph gets as an int (a graph per depth); it trains what eager trains with the same depths."""
    kw = dict(steps=3, schedule="4,3,2,1", depth_grouping="batch")
    eager = Trainer(tiny_cfg(tmp_path / "a", **kw), "train")
    whole = Trainer(tiny_cfg(tmp_path / "b", compile=True, compile_scope="model", **kw), "train")
    depths = []
    for _ in range(3):
        (la, ia), (lb, ib) = eager.step(), whole.step()
        assert torch.equal(ia["depth"], ib["depth"]) and len(set(ib["depth"].tolist())) == 1
        depths.append(int(ib["depth"][0]))
        assert abs(float(la) - float(lb)) <= 1e-4 * abs(float(la)), (la, lb)
    assert len(set(depths)) > 1, depths  # the steps ran at more than one depth (seeded: deterministic)
    for (n, a), b in zip(eager.model.state_dict().items(), whole.model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5), n


def test_compile_scope_model_needs_full_depth(tmp_path):
    from eediff.config import ConfigError

    with pytest.raises(ConfigError, match="--compile-scope model"):
        Trainer(tiny_cfg(tmp_path, schedule="4,3,2,1", compile=True, compile_scope="model"), "train")
    with pytest.raises(ConfigError, match="unknown --compile-scope"):
        Trainer(tiny_cfg(tmp_path, compile=True, compile_scope="graph"), "train")


def test_compile_mode(tmp_path):
    """--compile-mode reaches torch.compile: reduce-overhead (CUDA graphs on a GPU; a CPU run compiles without
    them) trains what eager trains; it is refused for compiled blocks, whose row counts change every step."""
    from eediff.config import ConfigError

    eager = Trainer(tiny_cfg(tmp_path / "a", steps=2), "train")
    ro = Trainer(tiny_cfg(tmp_path / "b", steps=2, compile=True, compile_scope="model", compile_mode="reduce-overhead"), "train")
    assert not ro.cudagraphs  # a CPU run: no graphs to mark steps of
    for _ in range(2):
        la, lb = float(eager.step()[0]), float(ro.step()[0])
        assert abs(la - lb) <= 1e-4 * abs(la), (la, lb)
        # a step leaves no .grad behind: under CUDA graphs a kept .grad would be the backward graph's memory,
        # which the next replay overwrites while the next backward adds into it
        assert all(p.grad is None for p in eager.params + ro.params)
    with pytest.raises(ConfigError, match="add --compile-scope model"):
        Trainer(tiny_cfg(tmp_path / "c", compile=True, compile_mode="reduce-overhead"), "train")
    with pytest.raises(ConfigError, match="unknown --compile-mode 'fast'"):
        Trainer(tiny_cfg(tmp_path / "d", compile=True, compile_mode="fast"), "train")


@pytest.mark.parametrize("grouping", ["group", "batch"])
def test_uniform_depth_sampling_trains_every_depth_at_every_t(tmp_path, grouping):
    """--depth-sampling uniform: depths drawn from 1..K whatever t (one per step with batch grouping), the
    blocks run exactly the rows at those depths, and the same seed draws the same depths."""
    cfg = tiny_cfg(tmp_path, depth_sampling="uniform", depth_grouping=grouping)
    tr = Trainer(cfg, "train")
    counts, hooks = _count_rows(tr.model.blocks)
    expected, seen = [0] * 4, []
    for _ in range(12):
        _, info = tr.step()
        depth = info["depth"]
        assert depth.dtype == torch.long and int(depth.min()) >= 1 and int(depth.max()) <= 4
        for layer in range(4):
            expected[layer] += int((depth > layer).sum())
        if grouping == "batch":
            assert len(depth.unique()) == 1
        seen.append(depth)
    for h in hooks:
        h.remove()
    assert counts == expected and counts[3] < counts[0]
    d, t = torch.cat(seen), torch.cat([tr.sample_times(8)[1] for _ in range(3)])
    assert set(d.tolist()) == {1, 2, 3, 4}  # every depth (seeded: deterministic)
    assert t.min() < 0.2 and t.max() > 0.8  # with the full schedule, t stays uniform over [0, 1]
    again = Trainer(tiny_cfg(tmp_path / "b", depth_sampling="uniform", depth_grouping=grouping), "train")
    assert all(torch.equal(a, again.step()[1]["depth"]) for a in seen[:3])


def test_uniform_depth_sampling_refusals(tmp_path):
    with pytest.raises(Exception, match="give --schedule full"):
        Trainer(tiny_cfg(tmp_path, depth_sampling="uniform", schedule="4,3,2,1"), "train")
    with pytest.raises(Exception, match="unknown --depth-sampling"):
        Trainer(tiny_cfg(tmp_path, depth_sampling="random"), "train")


def test_uniform_depth_sampling_with_a_whole_forward_graph(tmp_path):
    """Batch grouping with --compile-scope model: one int depth per step, as eager trains it."""
    kw = dict(steps=3, depth_sampling="uniform", depth_grouping="batch")
    eager = Trainer(tiny_cfg(tmp_path / "a", **kw), "train")
    whole = Trainer(tiny_cfg(tmp_path / "b", compile=True, compile_scope="model", **kw), "train")
    for _ in range(3):
        (la, ia), (lb, ib) = eager.step(), whole.step()
        assert torch.equal(ia["depth"], ib["depth"])
        assert abs(float(la) - float(lb)) <= 1e-4 * abs(float(la)), (la, lb)


def test_uniform_depth_sampling_resumes_exactly_and_keeps_its_setting(tmp_path):
    """The drawn depths come from the checkpointed time generator: 3 steps, then --resume to 6, ends on the
    weights of 6 steps in one go. Changing --depth-sampling on resume is refused (it is what was trained)."""
    from safetensors.torch import load_file

    kw = dict(depth_sampling="uniform", save_every=3, sample_every=-1)
    run(tiny_cfg(tmp_path / "once", steps=6, **kw), "train")
    part = tiny_cfg(tmp_path / "twice", steps=3, **kw)
    run(part, "train")
    res = CliRunner().invoke(app, ["train", "--out", part.out, "--resume", "--steps", "6", "--no-progress"])
    assert res.exit_code == 0, res.output
    a = load_file(os.path.join(str(tmp_path / "once" / "run"), "final.safetensors"))
    b = load_file(os.path.join(part.out, "final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    res = CliRunner().invoke(app, ["train", "--out", part.out, "--resume", "--steps", "7", "--depth-sampling", "schedule", "--no-progress"])
    assert res.exit_code != 0 and "depth" in res.output



def _distill_trainer(tmp_path, w, schedule="4,3,2,1", **kw):
    init = tmp_path / "base" / "final.safetensors"
    if not init.exists():
        run(tiny_cfg(tmp_path, out=str(tmp_path / "base"), steps=3), "train")
    ft = FinetuneConfig(out=str(tmp_path / f"ft{w}"), init=str(init), schedule=schedule, dataset=SAMPLE, steps=4, batch_size=16,
                        sample_every=-1, device="cpu", progress=False, distill=w, **kw)
    return str(init), Trainer(ft, "finetune")


def test_distill_target_is_the_frozen_full_depth_init_on_cut_rows(tmp_path, monkeypatch):
    w = 0.75
    init, tr = _distill_trainer(tmp_path, w)
    calls, losses = [], []
    real_target, real_loss = Trainer._distill_target, DiffusionObjective.loss

    def spy_target(self, x_t, t_model, y, noise, depth):
        out = real_target(self, x_t, t_model, y, noise, depth)
        calls.append((x_t.clone(), t_model.clone(), None if y is None else y.clone(), noise.clone(), depth.clone(), out.clone()))
        return out

    def spy_loss(self, out, x0, x_t, noise, t, t_host=None):
        losses.append(noise.clone())
        return real_loss(self, out, x0, x_t, noise, t, t_host)

    monkeypatch.setattr(Trainer, "_distill_target", spy_target)
    monkeypatch.setattr(DiffusionObjective, "loss", spy_loss)
    for _ in range(3):  # the student moves; the teacher must stay the --init model
        tr.step()
    ref = load_model(init).model.eval()  # an independent copy of the init, run at full depth row by row
    ref.set_label_dropout(0.0)
    for (x_t, t_model, y, noise, depth, got), seen in zip(calls, losses):
        assert torch.equal(seen, got)  # the loss is taken against this target
        cut = depth < 4
        assert cut.any() and (~cut).any()  # --depth-grouping group: cut and full-depth rows in one step
        assert torch.equal(got[~cut], noise[~cut])  # full-depth rows learn the noise, as without --distill
        with torch.no_grad():
            for r in torch.nonzero(cut).flatten().tolist():
                eps = ref(x_t[r:r + 1], t_model[r:r + 1], None if y is None else y[r:r + 1])[:, : ref.in_channels]
                want = (1 - w) * noise[r] + w * eps[0]
                torch.testing.assert_close(got[r], want, rtol=1e-5, atol=1e-5)  # (fp32 CPU: batch vs single rounding only)


def test_distill_zero_is_the_plain_finetune_and_bad_values_fail_with_one_line(tmp_path):
    _, plain = _distill_trainer(tmp_path, 0.0)
    assert plain.teacher is None
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError, match=re.escape(f"--distill {bad}: give a weight in [0, 1] (0 = off)")):
            _distill_trainer(tmp_path, bad)
    with pytest.raises(ConfigError, match="--schedule full cuts none"):
        _distill_trainer(tmp_path, 0.5, schedule="full")
    with pytest.raises(ConfigError, match="does not combine with --method deediff"):
        _distill_trainer(tmp_path, 0.5, schedule=None, method="deediff")


def test_distill_one_batch_depth_steps_skip_the_teacher_at_full_depth(tmp_path, monkeypatch):
    _, tr = _distill_trainer(tmp_path, 1.0, depth_grouping="batch")
    runs = []
    real = type(tr.teacher).forward
    monkeypatch.setattr(type(tr.teacher), "forward", lambda self, *a, **k: (runs.append(self is tr.teacher), real(self, *a, **k))[1])
    depths = [int(tr.step()[1]["depth"][0]) for _ in range(12)]
    assert 4 in depths and min(depths) < 4
    assert runs.count(True) == sum(d < 4 for d in depths)  # one teacher pass per step with cut rows, none otherwise


def test_loss_norm_interpolates_in_log_and_keeps_the_mean_weight_one():
    from eediff.train.losses import LossNorm

    grid = torch.arange(1000, dtype=torch.float64) / 1000
    ln = LossNorm([0.25, 0.75], [0.1, 0.001], grid)
    assert float(ln(grid).mean()) == pytest.approx(1.0, rel=1e-12)
    inv = ln.inverse(torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(inv, torch.tensor([10.0, 10.0, 100.0, 1000.0, 1000.0], dtype=torch.float64))  # log-midpoint, ends held
    half = LossNorm([0.25, 0.75], [0.1, 0.001], grid, power=0.5)
    torch.testing.assert_close(half.inverse(torch.tensor([0.25, 0.75])), torch.tensor([10 ** 0.5, 1000 ** 0.5], dtype=torch.float64))
    assert float(half(grid).mean()) == pytest.approx(1.0, rel=1e-12)
    assert ln.to_json() == {"t_unit": [0.25, 0.75], "mean_loss": [0.1, 0.001]}
    for t, m, why in (([0.5, 0.25], [1, 1], "increasing"), ([0.1], [1], "increasing"), ([0.1, 0.2], [1, 0], "> 0"),
                      ([0.1, 0.2], [1, float("nan")], "> 0")):
        with pytest.raises(ConfigError, match=re.escape(why)):
            LossNorm(t, m, grid)


def test_loss_norm_base_measures_the_init_by_t_and_weights_every_step(tmp_path, monkeypatch):
    """The reference is the --init model's own loss, checked against an independent forward; each step's λ is
    TimeWeight's times 1/m(t) / Z; the table lands in loss_norm.json and a resume reads it back (no new
    measurement) and ends on the weights of one uninterrupted run."""
    from safetensors.torch import load_file

    init, tr = _distill_trainer(tmp_path, 0.0, loss_norm=1.0)
    ln = tr.loss_norm
    assert ln is not None and ln.t.numel() == 32 and tr.objective.discrete
    ref = load_model(init)
    model = ref.model.eval()
    obj = DiffusionObjective(ref.process, model.learn_sigma, model.in_channels, "cpu")
    g = torch.Generator().manual_seed(tr.cfg.seed + 1_000_003)
    idx = torch.randperm(len(tr.data), generator=g)[:256]
    x0, y = tr.data.batch(idx)
    noise = torch.randn(x0.shape, generator=g)
    for b in (0, 13, 31):
        k = int((b + 0.5) / 32 * obj.T)
        t = torch.full((idx.numel(),), k, dtype=torch.long)
        x_t = obj.perturb(x0, t, noise)
        with torch.no_grad():
            want = obj.loss(model(x_t, obj.model_time(t), y), x0, x_t, noise, t, t).mean()
        assert float(ln.m[b]) == pytest.approx(float(want), rel=1e-5) and float(ln.t[b]) == k / obj.T
    info = tr.step()[1]
    want = TimeWeight(tr.schedule, tr.K, tr.cfg.reweight_gamma, tr.cfg.reweight_cycle, grid=obj.grid_unit_times())(info["t_unit"], 0)
    torch.testing.assert_close(info["lambda"], (want * ln(info["t_unit"])).float())

    kw = dict(init=init, schedule="4,3,2,1", dataset=SAMPLE, batch_size=16, sample_every=-1, device="cpu", progress=False,
              loss_norm=0.5, save_every=2, reweight_cycle=2)  # (its default, half of --steps, would differ)
    run(FinetuneConfig(out=str(tmp_path / "once"), steps=4, **kw), "finetune")
    part = FinetuneConfig(out=str(tmp_path / "twice"), steps=2, **kw)
    run(part, "finetune")
    saved = json.load(open(os.path.join(part.out, "loss_norm.json")))
    assert saved == json.load(open(tmp_path / "once" / "loss_norm.json")) and len(saved["mean_loss"]) == 32
    monkeypatch.setattr(Trainer, "init_loss_by_t", lambda self, *a, **k: pytest.fail("a resume must read loss_norm.json"))
    res = CliRunner().invoke(app, ["finetune", "--out", part.out, "--resume", "--steps", "4", "--no-progress"])
    assert res.exit_code == 0, res.output
    a, b = load_file(str(tmp_path / "once" / "final.safetensors")), load_file(os.path.join(part.out, "final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    res = CliRunner().invoke(app, ["finetune", "--out", part.out, "--resume", "--steps", "6", "--loss-norm", "0", "--no-progress"])
    assert res.exit_code != 0 and "--loss-norm" in res.output  # what was trained is not switched mid-run


def test_loss_norm_refusals(tmp_path):
    for bad in (1.5, -0.5, float("nan")):
        with pytest.raises(ConfigError, match=re.escape(f"--loss-norm {bad}: give an exponent in [0, 1]")):
            _distill_trainer(tmp_path, 0.0, loss_norm=bad)
    with pytest.raises(ConfigError, match="--loss-norm weights an ASE fine-tune's loss"):
        _distill_trainer(tmp_path, 0.0, schedule=None, method="deediff", loss_norm=1.0)
