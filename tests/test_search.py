"""Exit-schedule search: the proxy against a direct computation, the greedy path's budget and constraints,
determinism, the FD confirmation, and the CLI writing a schedule that `sample` runs."""

import json
import math
import subprocess
import sys

import pytest
import torch

import eediff
from eediff.diffusion.sampling import SamplerConfig, sample_loop
from eediff.exits import search as S
from eediff.generate import generate, image_noise, resolve_labels
from eediff.models.registry import default_process
from tiny import random_weights, tiny_backbone

DDIM = SamplerConfig("ddim", 6)


@pytest.fixture(scope="module")
def dit():
    m = tiny_backbone("DiT")  # 6 blocks, 8x8x4, 10 classes, learned sigma
    return m, default_process(m)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A 4-block 8x8x1 DiT with every weight random (a fresh DiT's zero-initialised head would make every depth alike)."""
    torch.manual_seed(0)
    m = eediff.build_model("DiT", input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=4, num_heads=4, num_classes=3)
    random_weights(m, 0.1)
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    eediff.save_model(str(path), m)
    return str(path)


@pytest.fixture(scope="module")
def table(dit):
    m, p = dit
    return S.measure_proxy(m, p, DDIM, n=5, batch_size=5, seed=3)


def test_proxy_against_direct_computation(dit, table):
    """Every recorded step's error, recomputed from states recorded here with the bare forward pass, and the
    weight from the process's alphas by hand; then one schedule's proxy by hand."""
    m, p = dit
    K, C = m.num_exit_blocks, m.in_channels
    states = []

    def fn(x, t, y):
        out = m(x, torch.full((x.shape[0],), float(t)), y)
        states.append((x.clone(), t))
        return out

    noise, gens = image_noise((C, 8, 8), [3 + i for i in range(5)], "cpu")
    y = resolve_labels(range(5), m.num_classes, None)
    with torch.no_grad():
        sample_loop(fn, p, DDIM, noise, y, gens, learned_sigma=m.learn_sigma)
        assert [t for _, t in states] == table.t_model and len(states) == 6
        acp = p.alphas_cumprod()
        for s, (x, t) in enumerate(states):
            tt = torch.full((5,), float(t))
            full = m(x, tt, y)[:, :C]
            for k in (1, 3, K - 1):
                e = ((m(x, tt, y, active_blocks=k)[:, :C] - full) ** 2).mean().item()
                assert table.error[s][k] == pytest.approx(e, rel=1e-5, abs=1e-9)
            assert table.error[s][K] == 0 and math.isnan(table.error[s][0])
            a0 = acp[int(t)].item()
            a1 = acp[int(states[s + 1][1])].item() if s + 1 < len(states) else 1.0
            b = math.sqrt(1 - a1) - math.sqrt(a1) * math.sqrt(1 - a0) / math.sqrt(a0)
            assert table.coef[s] == pytest.approx(b, rel=1e-9)
    assert table.t_unit == [t / 1000 for t in table.t_model]
    # a schedule that cuts to 2 blocks for t >= 0.5 only: the steps there, weighted
    sched = eediff.ExitSchedule("half", (0.0, 0.5, 1.0), (K, 2))
    want = sum(table.coef[s] ** 2 * table.error[s][2] for s, t in enumerate(table.t_unit) if t >= 0.5)
    assert want > 0 and table.proxy(sched) == pytest.approx(want, rel=1e-12)
    assert table.proxy(sched, "uniform") == pytest.approx(sum(table.error[s][2] for s, t in enumerate(table.t_unit) if t >= 0.5))


def test_continuous_coefficients_by_hand():
    p = eediff.ContinuousVP()
    ts = [999.0, 600.0, 100.0]
    a = [p.alpha_sigma(t / 999) for t in ts] + [(1.0, 0.0)]
    want = [a[i + 1][1] - a[i + 1][0] * a[i][1] / a[i][0] for i in range(3)]
    assert S.eps_coefficients(p, ts) == pytest.approx(want)


def test_budget_reached_within_one_step_and_savings_are_generates(dit, table):
    m, p = dit
    b = S.equal_boundaries(4)
    for target in (0.1, 0.25, 0.4):
        path = S.greedy_path(table, b, stop_saving=target)
        assert path[-1].compute_saving >= target > path[-2].compute_saving  # the first candidate over the target
    full = S.greedy_path(table, b)
    assert full[: len(path) - 1] == path[:-1]  # stopping early follows the whole path up to its last move,
    reached = next(c for c in full if c.compute_saving >= 0.4)
    assert path[-1].proxy <= reached.proxy  # which is the best move to the target (at least as good as the path's)
    for c in (path[-1], full[-1]):
        sched = c.schedule(b)
        assert c.compute_saving == pytest.approx(table.compute_saving(sched), abs=1e-12)
        assert c.proxy == pytest.approx(table.proxy(sched), rel=1e-12, abs=1e-15)
        res = generate(m, p, DDIM, n=2, batch_size=2, schedule=sched, progress=False)
        assert 1 - res.compute_fraction == pytest.approx(c.compute_saving, abs=1e-12)


@pytest.mark.parametrize("monotone,data_full", [(True, True), (False, True), (True, False), (False, False)])
def test_candidates_are_valid(table, monotone, data_full):
    K = table.num_blocks
    b = S.equal_boundaries(5)
    path = S.greedy_path(table, b, min_depth=2, monotone=monotone, data_full=data_full)
    assert path[0].blocks == (K,) * 5 and path[0].compute_saving == 0 and path[0].proxy == 0
    for prev, c in zip(path, path[1:]):
        assert all(2 <= k <= K for k in c.blocks)
        if monotone:
            assert all(u >= v for u, v in zip(c.blocks, c.blocks[1:]))
        if data_full:
            assert c.blocks[0] == K
        assert c.compute_saving > prev.compute_saving
        changed = [i for i in range(5) if c.blocks[i] != prev.blocks[i]]
        i = changed[0]  # one interval lowered, and with monotone the intervals on its noise side cut to its depth
        assert c.blocks[i] < prev.blocks[i]
        assert all(c.blocks[j] == c.blocks[i] < prev.blocks[j] for j in changed[1:]) and (monotone or len(changed) == 1)
    # every visited interval ends at the minimum depth (the path runs out of moves only there)
    visited = {S.interval_of(t, b) for t in table.t_unit}
    assert all(path[-1].blocks[i] == 2 for i in visited if not (data_full and i == 0))
    sched = path[-1].schedule(b)
    sched.check(K)
    assert eediff.get_schedule(sched.to_spec()).blocks == path[-1].blocks


def synthetic_table(error, t_unit, K):
    """A table with given errors, uniform weights (b = 1) and FLOPs 1 + k."""
    return S.ProxyTable(t_model=[1000 * t for t in t_unit], t_unit=t_unit, coef=[1.0] * len(t_unit), error=error,
                        flops=[1.0 + k for k in range(K + 1)], num_blocks=K, n=1, seed=0)


def test_a_move_jumps_over_a_bump():
    """Depth 3 is worse than depth 2 at the noise end: the path goes from 4 blocks straight to 2."""
    t = synthetic_table([[math.nan, 9.0, 9.0, 9.0, 0.0], [math.nan, 5.0, 0.2, 3.0, 0.0]], [0.1, 0.9], 4)
    path = S.greedy_path(t, (0.0, 0.5, 1.0))
    assert [c.blocks for c in path] == [(4, 4), (4, 2), (4, 1)]
    assert path[1].proxy == pytest.approx(0.2) and path[1].compute_saving == pytest.approx(2 / 10)
    # to a target of 0.1 both (4, 3) and (4, 2) would do: the last move takes the lower proxy
    assert S.greedy_path(t, (0.0, 0.5, 1.0), stop_saving=0.1)[-1].blocks == (4, 2)


def test_unconstrained_path_is_optimal_at_every_saving():
    """Without the monotone constraint every candidate has the lowest proxy of all schedules that save at
    least as much (checked against every one of the 4^3 schedules)."""
    import itertools
    import random

    rng = random.Random(0)
    K, b = 4, (0.0, 1 / 3, 2 / 3, 1.0)
    t_unit = [0.05, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9, 0.95]
    error = [[math.nan] + [rng.uniform(0, 3) for _ in range(K - 1)] + [0.0] for _ in t_unit]  # not monotone in k
    table = synthetic_table(error, t_unit, K)
    every = [(table.compute_saving(S.Candidate(bl, 0, 0).schedule(b)), table.proxy(S.Candidate(bl, 0, 0).schedule(b)))
             for bl in itertools.product(range(1, K + 1), repeat=3)]
    path = S.greedy_path(table, b, monotone=False, data_full=False)
    assert path[-1].blocks == (1, 1, 1)
    for c in path:
        best = min(p for s, p in every if s >= c.compute_saving - 1e-12)
        assert c.proxy == pytest.approx(best, abs=1e-12)


def test_interval_of_matches_the_schedule():
    b = S.equal_boundaries(10)
    probe = eediff.ExitSchedule("index", b, tuple(range(10)))
    for t in [0.0, 0.05, 0.1, 0.2999999, 0.3, 0.5, 0.95, 1.0]:
        assert S.interval_of(t, b) == probe.active_blocks(t, 10)


def test_deterministic_and_independent_of_batching(dit, table):
    m, p = dit
    again = S.measure_proxy(m, p, DDIM, n=5, batch_size=5, seed=3)
    assert again.to_dict() == table.to_dict()  # bit for bit under the same seed
    split = S.measure_proxy(m, p, DDIM, n=5, batch_size=2, seed=3)
    for u, v in zip(split.error, table.error):
        assert u[1:] == pytest.approx(v[1:], rel=1e-5, abs=1e-9)
    other = S.measure_proxy(m, p, DDIM, n=5, batch_size=5, seed=4)
    assert other.error != table.error
    b = S.equal_boundaries(4)
    assert S.greedy_path(table, b, stop_saving=0.4) == S.greedy_path(again, b, stop_saving=0.4)
    assert S.ProxyTable.from_dict(json.loads(json.dumps(table.to_dict()))).to_dict() == table.to_dict()


def test_propagated_weight_of_the_last_step(dit):
    """The last DDIM step lands on x0_hat = (x - sigma eps) / alpha, so an eps error delta moves the sample by
    -sigma/alpha delta, then clipped: the measured weight against that, computed here."""
    m, p = dit
    sampler = SamplerConfig("ddim", 3)
    t = S.measure_proxy(m, p, sampler, n=3, batch_size=2, seed=1, weighting="propagated")
    assert t.weights() == t.gain and len(t.gain) == 3 and all(g > 0 for g in t.gain)
    a = p.alphas_cumprod()[int(t.t_model[-1])].item()
    ratio = math.sqrt(1 - a) / math.sqrt(a)
    C = m.in_channels
    dev = 0.0
    for i in range(3):
        noise, gens = image_noise((C, 8, 8), [1 + i], "cpu")
        y = resolve_labels(range(i, i + 1), m.num_classes, None)
        with torch.no_grad():
            u = sample_loop(lambda x, tt, yy: m(x, torch.full((1,), float(tt)), yy), p, sampler, noise, y, gens, learned_sigma=True)
        delta = S.PROBE * S.probe_noise((C, 8, 8), [1 + i], 2, "cpu")
        dev += ((u - ratio * delta).clamp(-1, 1) - u.clamp(-1, 1)).pow(2).mean().item()
    # sigma/alpha = 0.01 at index 0: a change of ~1e-3 on values of ~1, which float32 rounds to ~1e-7
    assert t.gain[-1] == pytest.approx(dev / 3 / S.PROBE**2, rel=1e-3)


def test_bisection_picks_the_last_candidate_under_the_ratio():
    path = [S.Candidate((10, 10 - i), i / 10, float(i)) for i in range(9)]
    calls = []

    def judge(schedule):
        calls.append(schedule.blocks)
        i = next(j for j, c in enumerate(path) if c.blocks == schedule.blocks)
        return 10.0 * (1 + 0.01 * i), i / 10

    chosen = S.bisect_ratio(path, judge, (0.0, 0.5, 1.0), max_ratio=1.045)
    assert chosen == 4 and path[4].fid_ratio == pytest.approx(1.04) and path[5].fid_ratio == pytest.approx(1.05)
    assert len(calls) <= 2 + math.ceil(math.log2(len(path)))  # full, the end, then bisection
    assert [i for i, c in enumerate(path) if c.fid is not None] == sorted({0, 8, 4, 6, 5})


def test_max_fid_ratio_mode_confirms_on_held_out_images(ckpt, tmp_path):
    from eediff.config import SearchConfig

    cfg = SearchConfig(model=ckpt, max_fid_ratio=1.5, sampler="ddim", steps=4, n=4, batch_size=8, intervals=4, confirm_n=24,
                       reference="tests/data/fmnist_sample.npz:test", cache_dir=str(tmp_path / "c"), device="cpu",
                       out=str(tmp_path / "s.json"), report=str(tmp_path / "r.json"), progress=False)
    res = S.run_search(cfg, log=lambda s: None)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["mode"] == "max-fid-ratio" and rep["confirmation"]["metric"] == "fd-classifier"
    assert rep["confirmation"]["seeds"] == [4, 27]  # after the search batch's seeds 0..3
    c = res.best
    assert c.fid is not None and c.fid_ratio <= 1.5 and res.path[0].fid_ratio == 1.0
    assert c.realised_saving == pytest.approx(c.compute_saving, abs=1e-12)
    if res.chosen + 1 < len(res.path):  # bisection ends next to a refused candidate
        assert res.path[res.chosen + 1].fid_ratio > 1.5
    assert rep["chosen"] == res.chosen and rep["schedule"]["blocks"] == list(c.blocks)
    assert json.loads((tmp_path / "s.json").read_text())["search"]["fid_ratio"] == pytest.approx(c.fid_ratio)


# ---- the command line ----------------------------------------------------------------------------------------

EXE = [sys.executable, "-m", "eediff.cli"]


def run(*args):
    return subprocess.run(EXE + list(args), capture_output=True, text=True, timeout=300)


def test_cli_writes_a_schedule_that_sample_runs(ckpt, tmp_path):
    out, rep = tmp_path / "sched.json", tmp_path / "rep.json"
    r = run("search", "--model", ckpt, "--target-saving", "0.3", "--sampler", "ddim", "--steps", "4", "-n", "3",
            "--intervals", "4", "--device", "cpu", "--out", str(out), "--report", str(rep), "--no-progress")
    assert r.returncode == 0, r.stderr
    spec = json.loads(out.read_text())
    assert spec["boundaries"] == [0, 0.25, 0.5, 0.75, 1] and spec["blocks"][0] == 4 and spec["search"]["compute_saving"] >= 0.3
    assert f"compute saving: {100 * spec['search']['compute_saving']:.1f}%" in r.stdout and "not confirmed" in r.stdout
    assert "search with --adapted" in r.stdout  # the zero-shot search points to the adapted one
    report = json.loads(rep.read_text())
    assert report["path"][-1]["blocks"] == spec["blocks"] and len(report["proxy_table"]["t_unit"]) == 4
    r = run("sample", "--model", ckpt, "--schedule", str(out), "--sampler", "ddim", "--steps", "4", "-n", "2",
            "--out", str(tmp_path / "g.png"), "--no-progress")
    assert r.returncode == 0, r.stderr
    frac = float(r.stdout.split("compute fraction: ")[1].split()[0])
    assert frac == pytest.approx(1 - spec["search"]["compute_saving"], abs=5e-4)


@pytest.mark.parametrize("args,needle", [
    ([], "exactly one of --target-saving"),
    (["--target-saving", "0.4", "--max-fid-ratio", "1.02"], "exactly one of --target-saving"),
    (["--target-saving", "1.2"], "must lie in (0, 1)"),
    (["--max-fid-ratio", "nan"], "finite number >= 1"),
    (["--target-saving", "0.4", "--out", "s.txt"], "must end in .json"),
    (["--target-saving", "0.4", "--plot", "s.jpg"], "must end in .png"),
])
def test_cli_one_line_errors(args, needle):
    r = run("search", *args, "--no-progress")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_unreachable_target_is_refused(ckpt, table, tmp_path):
    from eediff.config import SearchConfig

    kw = dict(model=ckpt, sampler="ddim", steps=3, n=2, device="cpu", progress=False, out=str(tmp_path / "s.json"))
    with pytest.raises(S.SearchError, match="nothing to search"):
        S.run_search(SearchConfig(target_saving=0.3, intervals=1, **kw))
    with pytest.raises(S.SearchError, match="is beyond the 0.1"):
        S.run_search(SearchConfig(target_saving=0.9, min_depth=3, intervals=2, **kw))
    assert not (tmp_path / "s.json").exists()
    path = S.greedy_path(table, S.equal_boundaries(2), min_depth=5, stop_saving=0.99)
    assert path[-1].compute_saving < 0.99 and path[-1].blocks == (6, 5)


# ---- benchmarks/search_eval.py ---------------------------------------------------------------------------------


def test_search_eval_generate_and_fid_stages(ckpt, tmp_path):
    work, part, res = tmp_path / "w", tmp_path / "partial.json", tmp_path / "search.json"
    common = ["--work", str(work), "--device", "cpu"]
    r = subprocess.run([sys.executable, "benchmarks/search_eval.py", "generate", "--models", f"Tiny={ckpt}", "--presets", "4,3,2,1;4,2,2,1",
                        "--targets", "0.3", "--weightings", "step,uniform", "--methods", "exact,greedy", "-n", "6", "--batch-size", "6", "--search-n", "3",
                        "--steps", "4", "--intervals", "4", "--out", str(part), *common], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(part.read_text())["rows"]
    # full, 2 presets, 2 methods x 2 weightings x (2 preset savings + 1 target)
    assert [r["kind"] for r in rows] == ["full", "preset", "preset"] + ["searched"] * 12
    assert [r["compared_with"] for r in rows[3:6]] == ["4,3,2,1", "4,2,2,1", None]
    assert [r["method"] for r in rows[3:]] == ["exact"] * 6 + ["greedy"] * 6
    for ex, gr in zip(rows[3:9], rows[9:15]):  # the same weighting and target: the exact path's proxy is no higher
        assert (ex["weighting"], ex["target_saving"]) == (gr["weighting"], gr["target_saving"])
        assert ex["proxies"][ex["weighting"]] <= gr["proxies"][gr["weighting"]] + 1e-12
    table = S.ProxyTable.from_dict(json.loads(part.read_text())["tables"]["Tiny"])
    for row in rows:
        sched = eediff.get_schedule(json.dumps({"boundaries": row["boundaries"], "blocks": row["blocks"]}))
        assert row["compute_saving"] == pytest.approx(table.compute_saving(sched), abs=1e-9)  # generate's, on the eval images
        assert row["proxy"] == row["proxies"]["step"] == pytest.approx(table.proxy(sched, "step"))
        assert row["proxies"]["propagated"] == pytest.approx(table.proxy(sched))  # the weighting the table was measured for
        assert set(row["proxies"]) == {"step", "propagated", "uniform"}
    for row, preset in zip(rows[3:5], rows[1:3]):  # a search at a preset's saving saves at least as much
        assert row["compute_saving"] >= preset["compute_saving"] - 1e-12
    assert rows[0]["proxy"] == 0 and rows[0]["compute_saving"] == 0
    r = subprocess.run([sys.executable, "benchmarks/search_eval.py", "fid", "--partial", str(part), "--metric", "fd-classifier",
                        "--reference", "tests/data/fmnist_sample.npz", "--cache-dir", str(tmp_path / "c"), "--out", str(res), *common],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(res.read_text())
    assert all(r["fid"] > 0 and r["fid_full"] == out["rows"][0]["fid"] for r in out["rows"])
    mod = _search_eval()
    once = {(tuple(r["boundaries"]), r["blocks"] and tuple(r["blocks"])): r for r in reversed(out["rows"])}.values()
    want = mod.spearman([r["proxies"]["uniform"] for r in once], [r["fid"] for r in once])
    assert out["spearman"]["uniform"]["all"] == pytest.approx(want, rel=1e-12) and set(out["spearman"]["step"]) == {"all", "Tiny"}
    md = (tmp_path / "search.md").read_text()
    assert "| Tiny | exact(step)@4,3,2,1 |" in md and "| Tiny | greedy(uniform)@0.30 |" in md and "Spearman" in md


def _search_eval():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(root))
    try:
        spec = importlib.util.spec_from_file_location("search_eval", root / "search_eval.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(root))
    return mod


def test_spearman_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    mod = _search_eval()
    xs = [0.1, 0.5, 0.5, 2.0, 3.0, 0.0, 7.0]
    ys = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    assert mod.spearman(xs, ys) == pytest.approx(stats.spearmanr(xs, ys).statistic, rel=1e-12)
    assert mod.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert mod.spearman([1, 2], [2, 1]) is None and mod.spearman([1, 1, 1], [1, 2, 3]) is None


def test_a_bad_reference_fails_before_the_search(ckpt, tmp_path, monkeypatch):
    from eediff.config import SearchConfig
    from eediff.errors import EediffError

    def never(*a, **k):
        raise AssertionError("the proxy was measured before the reference was checked")

    monkeypatch.setattr(S, "measure_proxy", never)
    with pytest.raises(EediffError, match="does not exist"):
        S.run_search(SearchConfig(model=ckpt, max_fid_ratio=1.1, reference=str(tmp_path / "none.npz"), device="cpu",
                                  cache_dir=str(tmp_path / "c"), out=str(tmp_path / "s.json"), progress=False))


def test_uvit_search_path_proxy_and_savings():
    """The search on a U-ViT (decoder blocks are the schedulable ones; a dropped one still runs its
    skip_linear): the first step's errors recomputed by hand from the initial noise, valid candidates, and each
    candidate's analytic saving equal to what sampling with it measures."""
    m = tiny_backbone("U-ViT")
    p = default_process(m)
    K, C = m.num_exit_blocks, m.in_channels
    table = S.measure_proxy(m, p, DDIM, n=4, batch_size=4, seed=7)
    noise, _ = image_noise((C, 8, 8), [7 + i for i in range(4)], "cpu")
    y = resolve_labels(range(4), m.num_classes, None)
    from eediff.diffusion.sampling import make_scheduler

    x = noise * make_scheduler(DDIM, p, m.learn_sigma).init_noise_sigma
    tt = torch.full((4,), float(table.t_model[0]))
    with torch.no_grad():
        full = m(x, tt, y)[:, :C]
        for k in range(1, K):
            e = ((m(x, tt, y, active_blocks=k)[:, :C] - full) ** 2).mean().item()
            assert table.error[0][k] == pytest.approx(e, rel=1e-5, abs=1e-9)
    assert table.error[0][K] == 0
    b = S.equal_boundaries(4)
    path = S.greedy_path(table, b, min_depth=1, monotone=True, data_full=True)
    assert len(path) > 1 and path[0].blocks == (K,) * 4
    for c in path[1:]:
        assert all(1 <= k <= K for k in c.blocks) and c.blocks[0] == K
        sched = c.schedule(b)
        sched.check(K)
        res = generate(m, p, DDIM, n=2, batch_size=2, schedule=sched, progress=False)
        assert 1 - res.compute_fraction == pytest.approx(c.compute_saving, abs=1e-12)


def test_saving_of_stops_at_the_other_schedules_saving(ckpt, tmp_path):
    """--saving-of: the target is the other schedule's compute saving on these sampler steps, as `eediff sample`
    reports it for that schedule (an independent count), and the greedy path stops at the first candidate past it."""
    from eediff.config import SearchConfig

    other = "4,3,2,1"
    r = run("sample", "--model", ckpt, "--schedule", other, "--sampler", "ddim", "--steps", "4", "-n", "2",
            "--out", str(tmp_path / "g.png"), "--no-progress")
    assert r.returncode == 0, r.stderr
    saving = 1 - float(r.stdout.split("compute fraction: ")[1].split()[0])
    res = S.run_search(SearchConfig(model=ckpt, saving_of=other, sampler="ddim", steps=4, n=3, intervals=4, device="cpu",
                                    progress=False, out=str(tmp_path / "s.json")), log=lambda *a: None)
    assert res.settings["target_saving"] == pytest.approx(saving, abs=5e-4) and res.settings["saving_of"] == other
    assert res.best.compute_saving >= res.settings["target_saving"] > res.path[-2].compute_saving
    assert json.loads((tmp_path / "s.json").read_text())["search"]["compute_saving"] == res.best.compute_saving


@pytest.mark.parametrize("spec,needle", [
    ("D4-DiT", "does not fit this model"),          # 28 blocks on a 4-block model
    ("full", "saves nothing"),
    ("no-such-preset", "schedule"),
])
def test_saving_of_refuses_what_it_cannot_match(ckpt, tmp_path, spec, needle):
    r = run("search", "--model", ckpt, "--saving-of", spec, "--sampler", "ddim", "--steps", "3", "-n", "2", "--intervals", "3",
            "--device", "cpu", "--out", str(tmp_path / "s.json"), "--no-progress")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("monotone,data_full,min_depth", [(True, True, 1), (False, False, 1), (True, False, 2), (False, True, 1)])
def test_exact_path_is_the_pareto_frontier(monotone, data_full, min_depth):
    """pareto_path against every one of the 4^4 schedules: each point is valid and has the lowest proxy of all
    valid schedules saving at least as much, savings and proxies both increase, and every valid schedule's
    (saving, proxy) is matched or beaten by a point; a target stops at the first point that reaches it."""
    import itertools
    import random

    rng = random.Random(1)
    K, m = 4, 4
    b = S.equal_boundaries(m)
    t_unit = [0.02, 0.1, 0.3, 0.35, 0.55, 0.6, 0.8, 0.97]
    error = [[math.nan] + [rng.uniform(0, 3) for _ in range(K - 1)] + [0.0] for _ in t_unit]
    table = synthetic_table(error, t_unit, K)

    def valid(bl):
        return (all(k >= min_depth for k in bl) and (not monotone or all(u >= v for u, v in zip(bl, bl[1:])))
                and (not data_full or bl[0] == K))

    every = [(table.compute_saving(S.Candidate(bl, 0, 0).schedule(b)), table.proxy(S.Candidate(bl, 0, 0).schedule(b)))
             for bl in itertools.product(range(1, K + 1), repeat=m) if valid(bl)]
    path = S.pareto_path(table, b, min_depth=min_depth, monotone=monotone, data_full=data_full)
    assert path[0].blocks == (K,) * m and path[0].proxy == 0
    for prev, c in zip(path, path[1:]):
        assert valid(c.blocks) and c.compute_saving > prev.compute_saving and c.proxy > prev.proxy
    for c in path:
        sched = c.schedule(b)
        assert c.compute_saving == pytest.approx(table.compute_saving(sched), abs=1e-12)
        assert c.proxy == pytest.approx(table.proxy(sched), abs=1e-12)
        assert c.proxy == pytest.approx(min(p for s, p in every if s >= c.compute_saving - 1e-12), abs=1e-12)
    for s, p in every:  # nothing beats the frontier
        assert any(c.compute_saving >= s - 1e-12 and c.proxy <= p + 1e-12 for c in path)
    greedy = S.greedy_path(table, b, min_depth=min_depth, monotone=monotone, data_full=data_full)
    for g in greedy:  # the exact path is at least as good as the greedy at every greedy candidate's saving
        assert next(c for c in path if c.compute_saving >= g.compute_saving - 1e-12).proxy <= g.proxy + 1e-12
    target = path[len(path) // 2].compute_saving - 1e-3
    cut = S.pareto_path(table, b, min_depth=min_depth, monotone=monotone, data_full=data_full, stop_saving=target)
    assert cut == path[: len(path) // 2 + 1]


def test_exact_is_the_default_and_greedy_is_kept(ckpt, tmp_path):
    from eediff.config import SearchConfig

    kw = dict(model=ckpt, target_saving=0.3, sampler="ddim", steps=4, n=3, intervals=4, device="cpu", progress=False)
    ex = S.run_search(SearchConfig(out=str(tmp_path / "a.json"), **kw), log=lambda *a: None)
    gr = S.run_search(SearchConfig(out=str(tmp_path / "b.json"), method="greedy", **kw), log=lambda *a: None)
    assert ex.settings["method"] == "exact" and gr.settings["method"] == "greedy"
    assert ex.best.compute_saving >= 0.3 and gr.best.compute_saving >= 0.3
    assert ex.best.proxy <= gr.best.proxy + 1e-12
    with pytest.raises(S.SearchError, match="--method 'best' is unknown"):
        S.run_search(SearchConfig(out=str(tmp_path / "c.json"), method="best", **kw))


# ---- --adapted: the errors of a copy trained at every depth ------------------------------------------------------


def test_adapted_proxy_against_direct_computation(dit, table):
    """With ``adapted`` the states and the reference stay the base model's full depth (the same as without it),
    every depth, full included, runs on the adapted copy; recomputed here with the bare forwards. The model
    itself as its own adapted copy gives back the plain table."""
    m, p = dit
    K, C = m.num_exit_blocks, m.in_channels
    other = tiny_backbone("DiT", std=0.05, seed=7)
    got = S.measure_proxy(m, p, DDIM, n=5, batch_size=5, seed=3, adapted=other)
    assert got.t_model == table.t_model and got.coef == table.coef
    same = S.measure_proxy(m, p, DDIM, n=5, batch_size=5, seed=3, adapted=m)
    flat = lambda rows: [v for row in rows for v in row]  # noqa: E731
    assert flat(same.error) == pytest.approx(flat(table.error), nan_ok=True, rel=1e-12, abs=0)
    states = []

    def fn(x, t, y):
        states.append((x.clone(), t))
        return m(x, torch.full((x.shape[0],), float(t)), y)

    noise, gens = image_noise((C, 8, 8), [3 + i for i in range(5)], "cpu")
    y = resolve_labels(range(5), m.num_classes, None)
    with torch.no_grad():
        sample_loop(fn, p, DDIM, noise, y, gens, learned_sigma=m.learn_sigma)
        for s, (x, t) in enumerate(states):
            tt = torch.full((5,), float(t))
            ref = m(x, tt, y)[:, :C]
            for k in (1, K - 1):
                e = ((other(x, tt, y, active_blocks=k)[:, :C] - ref) ** 2).mean().item()
                assert got.error[s][k] == pytest.approx(e, rel=1e-5, abs=1e-9)
            e_full = ((other(x, tt, y)[:, :C] - ref) ** 2).mean().item()
            assert e_full > 0 and got.error[s][K] == pytest.approx(e_full, rel=1e-5)
    # full depth now costs what adapting moved it, and the exact path starts from that
    path = S.pareto_path(got, S.equal_boundaries(3))
    assert path[0].blocks == (K,) * 3 and path[0].proxy == pytest.approx(got.proxy(eediff.ExitSchedule("f", (0.0, 1.0), (K,))))


def test_adapted_must_be_the_same_architecture(dit):
    m, p = dit
    wrong = eediff.build_model("DiT", input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=4, num_classes=10)
    with pytest.raises(S.SearchError, match="not the same architecture"):
        S.measure_proxy(m, p, DDIM, n=2, batch_size=2, adapted=wrong)


def test_cli_adapted_search_and_its_refusal(ckpt, tmp_path):
    out, rep = tmp_path / "s.json", tmp_path / "r.json"
    r = run("search", "--model", ckpt, "--adapted", ckpt, "--target-saving", "0.3", "--sampler", "ddim", "--steps", "4",
            "-n", "3", "--intervals", "4", "--device", "cpu", "--out", str(out), "--report", str(rep), "--no-progress")
    assert r.returncode == 0, r.stderr
    report = json.loads(rep.read_text())
    assert report["adapted"] == ckpt and report["proxy_table"]["error"][0][4] == 0  # itself: full depth unchanged
    assert "search with --adapted" not in r.stdout
    plain = tmp_path / "p.json"
    r = run("search", "--model", ckpt, "--target-saving", "0.3", "--sampler", "ddim", "--steps", "4", "-n", "3",
            "--intervals", "4", "--device", "cpu", "--out", str(plain), "--no-progress")
    assert json.loads(plain.read_text())["blocks"] == json.loads(out.read_text())["blocks"]
    r = run("search", "--model", ckpt, "--adapted", "dit-fmnist", "--target-saving", "0.3", "--sampler", "ddim", "--steps", "4",
            "-n", "2", "--device", "cpu", "--out", str(tmp_path / "x.json"), "--no-progress")
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "not the same architecture" in lines[0], r.stderr


def test_adapted_confirmation_judges_full_depth_on_the_base(ckpt, tmp_path):
    """--max-fid-ratio with --adapted: candidates are sampled on the adapted copy, full depth on the base. With
    the base as its own copy the search is the plain one, to the confirmed distances."""
    from eediff.config import SearchConfig

    kw = dict(model=ckpt, max_fid_ratio=1.5, sampler="ddim", steps=4, n=4, batch_size=8, intervals=4, confirm_n=24,
              reference="tests/data/fmnist_sample.npz:test", cache_dir=str(tmp_path / "c"), device="cpu", progress=False)
    plain = S.run_search(SearchConfig(out=str(tmp_path / "a.json"), **kw), log=lambda s: None)
    same = S.run_search(SearchConfig(adapted=ckpt, out=str(tmp_path / "b.json"), **kw), log=lambda s: None)
    assert [c.blocks for c in same.path] == [c.blocks for c in plain.path] and same.chosen == plain.chosen
    assert [c.fid for c in same.path] == pytest.approx([c.fid for c in plain.path], nan_ok=True)
    # the judge itself: full depth from the base, anything else from the copy
    from eediff.eval.evaluate import feature_network, reference
    from eediff.config import EvalConfig

    base = eediff.load_model(ckpt)
    torch.manual_seed(5)
    other = random_weights(eediff.load_model(ckpt).model, 0.1)
    ecfg = EvalConfig(metric="fd-classifier", reference="tests/data/fmnist_sample.npz:test", cache_dir=str(tmp_path / "c"))
    feats = feature_network(ecfg, "cpu")
    ref = reference(ecfg, feats)
    judge = lambda model, full_model=None: S.Confirmation(model, base.process, SamplerConfig("ddim", 4), n=24, seed=4,  # noqa: E731
                                                          batch_size=8, features=feats, reference=ref, full_model=full_model)
    full, cut = eediff.ExitSchedule("f", (0.0, 1.0), (4,)), eediff.ExitSchedule("c", (0.0, 0.5, 1.0), (4, 2))
    both = judge(other, base.model)
    assert both(full)[0] == pytest.approx(judge(base.model)(full)[0], rel=1e-9)
    assert both(cut)[0] == pytest.approx(judge(other)(cut)[0], rel=1e-9)
    assert both(cut)[0] != pytest.approx(judge(base.model)(cut)[0], rel=1e-3)


def test_distill_report_compares_with_the_plain_fine_tune_and_merges_rows(tmp_path):
    """benchmarks/distill_report.py on hand-made run files: the ratios are the cells' quotients, a later table becomes
    rows of its own (not compared with the plain run's unequal steps), and --into keeps the file's other sections."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    plain, d = tmp_path / "v2" / "dit-ft", tmp_path / "distill"
    plain.mkdir(parents=True)
    d.mkdir()

    def cell(kind, model, sampler, fid, cut=28.6):
        return {"type": "cell", "kind": kind, "model": model, "sampler": sampler, "seed": 0, "n": 5000, "fid": fid,
                "metric": "fd-classifier", "flop_reduction_pct": cut}

    def lines(path, rows):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    sp = ("dpm-solver++-25", "ddim-50", "ddpm-100")
    lines(plain / "tables_dit.jsonl", [cell("full", "/r/init-dit.safetensors", s, 1.0, 0) for s in sp]
          + [cell("fair", "/r/dit-full/final.safetensors", s, 0.8, 0) for s in sp]
          + [cell("fine-tuned", "/r/dit-D4-DiT/final.safetensors", s, 2.0) for s in sp])
    lines(plain / "D4-DiT.metrics.jsonl", [{"step": 1000, "eval": {"step": 1000, "value": 2.5}},
                                           {"step": 2000, "eval": {"step": 2000, "value": 2.0}}])
    name = "dit-D4-DiT-distill1.0"
    (d / f"{name}.config.json").write_text(json.dumps({"schedule": "D4-DiT", "steps": 5000}))
    lines(d / f"{name}.metrics.jsonl", [{"step": s, "eval": {"step": s, "value": v}} for s, v in ((1000, 2.2), (2000, 1.6), (5000, 1.1))])
    lines(d / "tables_dit-distill.jsonl", [cell("fine-tuned", f"/r/{name}/final.safetensors", s, 1.5) for s in sp])
    lines(d / "tables_dit-distill-5000.jsonl", [cell("fine-tuned", f"/r/{name}/final.safetensors", s, 1.2) for s in sp]
          + [cell("fair", "/r/dit-fair/final.safetensors", "ddim-50", 0.6, 0)])  # a fair baseline as far, on one sampler
    into = tmp_path / "search.json"

    def report():  # into a results file with sections of its own, which the report must keep
        into.write_text(json.dumps({"rows": [1], "finetuned": {"other": {"rows": [2]}}}))
        r = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "distill_report.py"), "--dir", str(d),
                            "--plain-root", str(tmp_path / "v2"), "--into", str(into)], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PYTHONPATH=os.path.join(root, "src")))
        assert r.returncode == 0, r.stderr

    report()
    row = json.loads((d / "distill.json").read_text())["rows"][0]
    assert (row["steps"], row["trained"], row["distill"]) == (2000, 5000, 1.0)
    assert row["samplers"]["ddim-50"] == {"base": 1.0, "fair": 0.8, "plain": 2.0, "distill": 1.5, "later": {"5000": 1.2},
                                          "later_fair": {"5000": 0.6}}
    md = (d / "distill.md").read_text()
    assert "| dit | D4-DiT (--distill 1.0) | ddim-50 | 1.000 | 0.800 | 2.000 (2.00 / 2.50) | 1.500 (1.50 / 1.88) | 0.75 |" in md
    assert "| dit | D4-DiT (--distill 1.0) | ddpm-100 | 5000 | 1.200 | 1.20 | — | 1.50 |" in md
    assert "| dit | D4-DiT (--distill 1.0) | ddim-50 | 5000 | 1.200 | 1.20 | 2.00 (0.600) | 1.50 |" in md
    # a second run measured only at a later step, on another learning-rate schedule than the plain run's: its label
    # says so, its rows take their compute saving from that later table, and the first run gets no empty later rows
    (plain / "D4-DiT.config.json").write_text(json.dumps({"lr_schedule": "constant", "ema_decay": 0.999}))
    other = "dit-D4-DiT-distill0-ln0.5"
    (d / f"{other}.config.json").write_text(json.dumps({"schedule": "D4-DiT", "steps": 8000, "lr_schedule": "cosine", "ema_decay": 0.9999}))
    lines(d / f"{other}.metrics.jsonl", [{"step": 8000, "eval": {"step": 8000, "value": 1.3}}])
    lines(d / "tables_dit-distill-8000.jsonl", [cell("fine-tuned", f"/r/{other}/final.safetensors", s, 1.3, 30.0) for s in sp])
    report()
    md = (d / "distill.md").read_text()
    assert "| dit | D4-DiT (--distill 0, --loss-norm 0.5, --lr-schedule cosine, --ema-decay 0.9999) | ddim-50 | 8000 | 1.300 | 1.30 | — | 1.62 |" in md
    assert "| dit | D4-DiT (--distill 1.0) | ddim-50 | 8000 |" not in md  # not measured there: no row
    res = json.loads(into.read_text())
    late = [x for x in res["finetuned"]["distill"]["rows"] if x["kind"].startswith("D4-DiT (--distill 0")]
    assert len(late) == 3 and {x["steps"] for x in late} == {8000} and all(x["compute_saving"] == pytest.approx(0.30) for x in late)
    assert res["rows"] == [1] and res["finetuned"]["other"] == {"rows": [2]}
    rows = [x for x in res["finetuned"]["distill"]["rows"] if x["kind"] == "D4-DiT (--distill 1.0)"]
    assert len(rows) == 6 and {x["steps"] for x in rows} == {2000, 5000}
    at2k = next(x for x in rows if x["steps"] == 2000 and x["sampler"] == "ddim-50")
    assert at2k["fid_compared"] == 2.0 and at2k["compute_saving"] == pytest.approx(0.286) and at2k["ratio_base"] == 1.5
    assert all(x["fid_compared"] is None for x in rows if x["steps"] == 5000)  # unequal steps are not compared
    assert {x["sampler"]: x["fid_fair"] for x in rows if x["steps"] == 5000} == {"dpm-solver++-25": None, "ddim-50": 0.6, "ddpm-100": None}
    sys.path.insert(0, os.path.join(root, "benchmarks"))
    from distill_report import parse_name

    assert parse_name(name) == ("dit", "D4-DiT", "1.0", "")
    assert parse_name("uvit-D4-U-ViT-distill0.5-ln0.5") == ("uvit", "D4-U-ViT", "0.5", "0.5")
    assert parse_name("dit-search-D6-distill1.0") == ("dit", "search-D6", "1.0", "")


def test_sample_notes_a_searched_schedule_run_on_another_sampler(tmp_path):
    """A schedule file from `eediff search` records the sampler it was searched for; sampling it with another
    sampler says so and gives both savings (its steps fall elsewhere in t), and with the same one says nothing.
    A schedule file without a name is called by its file name."""
    from test_reliability import invoke

    spec = {"boundaries": [0, 0.5, 1.0], "blocks": [28, 14],
            "search": {"model": "dit-fmnist", "sampler": "ddim-4", "compute_saving": 0.123}}
    path = tmp_path / "searched.json"
    path.write_text(json.dumps(spec))
    base = ["sample", "--model", "dit-fmnist", "--schedule", path, "-n", "1", "--no-progress", "--device", "cpu"]
    other = invoke(*base, "--sampler", "ddim", "--steps", "3", "--out", tmp_path / "a.png")
    assert other.exit_code == 0, other.output
    assert "schedule: searched.json" in other.output
    assert "note: this schedule was searched for ddim-4 (compute saving 12.3%); with ddim-3" in other.output
    same = invoke(*base, "--sampler", "ddim", "--steps", "4", "--out", tmp_path / "b.png")
    assert same.exit_code == 0 and "was searched for" not in same.output


def test_reference_points_are_the_presets_that_fit_scored_on_the_same_table():
    """The presets set beside a search: exactly the paper's D schedules defined for the model's depth, each
    scored by sum_s w_s e[s, k(t_s)] and 1 - FLOPs / full FLOPs computed here by hand; a --saving-of schedule
    that is no preset is added, and a depth below the measured ones scores None (JSON null), not nan."""
    from eediff.exits.schedule import PRESETS, get_schedule

    ts = [0.05, 0.35, 0.65, 0.95]
    for K, names in ((6, ["D1-U-ViT", "D2-U-ViT", "D3-U-ViT", "D4-U-ViT", "D5-U-ViT", "D6-U-ViT"]),
                     (28, ["D1-DiT", "D3-DiT", "D4-DiT", "D6-DiT"])):
        err = [[math.nan] + [float((K - k) * (s + 1)) for k in range(1, K + 1)] for s in range(len(ts))]
        table = synthetic_table(err, ts, K)
        refs = S.reference_points(table)
        assert [r["name"] for r in refs] == names
        for r in refs:
            sch = PRESETS[r["name"]]
            depths = [sch.active_blocks(t, K) for t in ts]
            assert r["proxy"] == pytest.approx(sum(err[s][k] for s, k in enumerate(depths)))
            assert r["compute_saving"] == pytest.approx(1 - sum(1 + k for k in depths) / (len(ts) * (1 + K)))
            assert r["blocks"] == list(sch.blocks) and r["boundaries"] == list(sch.boundaries)
    table = synthetic_table([[math.nan, 1.0, 0.5, 0.0]] * 2, [0.2, 0.8], 3)
    assert S.reference_points(table) == []  # no preset is defined for 3 blocks
    own = S.reference_points(table, get_schedule("3,2"))
    assert [(r["name"], r["proxy"]) for r in own] == [("3,2", pytest.approx(0.5))]
    low = S.reference_points(table, get_schedule("3,0"))
    assert low[0]["proxy"] is None and json.loads(json.dumps(low)) == low


def test_plot_of_a_search_and_of_its_saved_report(ckpt, tmp_path):
    """--plot: a PNG next to the schedule, drawn from the report (the saved report draws the same picture), with
    the --saving-of schedule among the references; an existing plot is not replaced unasked."""
    from eediff.config import SearchConfig
    from eediff.eval.plots import save_search_plot

    out, rep, png = tmp_path / "s.json", tmp_path / "r.json", tmp_path / "s.png"
    res = S.run_search(SearchConfig(model=ckpt, saving_of="4,3,2,1", sampler="ddim", steps=4, n=3, intervals=4, device="cpu",
                                    progress=False, out=str(out), report=str(rep), plot=str(png)), log=lambda *a: None)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(rep.read_text())
    assert [r["name"] for r in report["references"]] == ["4,3,2,1"] and report["references"] == res.references
    save_search_plot(report, str(tmp_path / "again.png"))
    assert (tmp_path / "again.png").stat().st_size > 10_000
    before = png.read_bytes()
    r = run("search", "--model", ckpt, "--saving-of", "4,3,2,1", "--sampler", "ddim", "--steps", "4", "-n", "3",
            "--intervals", "4", "--device", "cpu", "--out", str(tmp_path / "t.json"), "--plot", str(png), "--no-progress")
    assert r.returncode == 2 and "--plot" in r.stderr and "exists" in r.stderr, r.stderr
    assert png.read_bytes() == before and not (tmp_path / "t.json").exists()


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_all_depths_in_one_pass_equal_each_depth_alone(arch, cfg_scale):
    """Denoiser.at_depths (backbone.forward_depths: the blocks run once, the head after each depth) gives, bit for
    bit, what the denoiser gives under a fixed depth k, for every depth asked and only those, with and without
    guidance; the U-ViT's dropped decoder blocks still fuse their skips."""
    from eediff.diffusion.sampling import Denoiser
    from eediff.exits.policy import make_policy
    from eediff.exits.schedule import ExitSchedule

    m = tiny_backbone(arch)
    p = default_process(m)
    K = m.num_exit_blocks
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, m.in_channels, 8, 8, generator=g), torch.tensor([0, 1, 2])
    asked = [K, 1, 2] if K > 2 else [1, K]
    with torch.no_grad():
        got = {k: out.clone() for k, out in Denoiser(m, p, None, cfg_scale=cfg_scale).at_depths(x, 420.0, y, asked)}
        assert sorted(got) == sorted(asked)
        for k in asked:
            fixed = Denoiser(m, p, make_policy(ExitSchedule(f"{k}", (0.0, 1.0), (k,)), K), cfg_scale=cfg_scale)
            assert torch.equal(got[k], fixed(x, 420.0, y)), k
    with pytest.raises(ValueError, match="outside"):
        list(Denoiser(m, p, None).at_depths(x, 420.0, y, [K + 1]))


def test_search_stability_scores_every_found_schedule_on_the_held_out_table(ckpt, tmp_path):
    """benchmarks/search_stability.py: every schedule found on a small batch reaches the target saving and, on the
    held-out table, scores no better than the held-out table's own choice (the exact path's first point past the
    target has the lowest proxy of every schedule that saves at least as much); the held-out numbers are the
    held-out table's proxy of the schedule, measured again here."""
    from test_train_plateau import _bench_module

    res = _bench_module("search_stability").main([
        "--model", ckpt, "--saving-of", "4,3,2,1", "--sampler", "ddim", "--steps", "4", "--ns", "2,3", "--seeds", "0,50",
        "--ref-n", "4", "--ref-seed", "900", "--intervals", "4", "--out", str(tmp_path / "st.json")])
    assert [(r["n"], r["seed"]) for r in res["rows"]] == [(2, 0), (2, 50), (3, 0), (3, 50)]
    loaded = eediff.load_model(ckpt)
    ref = S.measure_proxy(loaded.model.eval(), loaded.process, SamplerConfig("ddim", 4), n=4, batch_size=4, seed=900)
    b = S.equal_boundaries(4)
    assert res["held_out"]["own_proxy"] == pytest.approx(ref.proxy(S.Candidate(tuple(res["held_out"]["own_schedule"]), 0, 0).schedule(b)))
    for r in res["rows"]:
        assert r["compute_saving"] >= res["target_saving"] - 1e-12
        assert r["proxy_held_out"] == pytest.approx(ref.proxy(S.Candidate(tuple(r["schedule"]), 0, 0).schedule(b)))
        assert r["excess_over_best"] >= -1e-9
    assert json.loads((tmp_path / "st.json").read_text())["rows"] == res["rows"]
