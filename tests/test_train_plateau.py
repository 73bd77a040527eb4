"""`--eval-every` (the Fréchet distance of EMA samples during training) and `--plateau` (stop once 20% more
training improved it by less than a fraction), on a tiny CPU run."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from eediff.train.loop import plateau_gain, plateau_reached

from test_reliability import REFERENCE, TRAIN_DATA, error_line, invoke
from tiny import TINY_DIT, one_thread  # noqa: F401


def train(out, *args, steps=4):
    return invoke("train", "--dataset", TRAIN_DATA, "--model-config", TINY_DIT, "--steps", str(steps), "--batch-size", "16", "--lr", "1e-3",
                  "--save-every", "2", "--log-every", "1", "--sample-every", "-1", "--device", "cpu", "--no-progress", "--out", out, *args)


def evals_args(cache):
    return ["--eval-every", "2", "--eval-n", "32", "--eval-sampler", "ddim-3", "--eval-reference", REFERENCE + ":test", "--eval-cache-dir", str(cache)]


def rows(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if '"eval"' in line]


def test_measurements_do_not_change_the_training(tmp_path):
    """Every second step and at the end, one row per measurement; the trained weights are bit-identical to a run
    without them (sampling touches no training RNG)."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(a, steps=5).exit_code == 0
    res = train(b, *evals_args(tmp_path / "c"), steps=5)
    assert res.exit_code == 0, res.output
    ev = rows(b)
    assert [r["step"] for r in ev] == [2, 4, 5] and all(r["eval"]["value"] > 0 and not r["plateau"] for r in ev)
    assert ev[0]["eval"]["metric"] == "fd-classifier" and ev[0]["eval"]["n"] == 32
    wa, wb = load_file(a / "final.safetensors"), load_file(b / "final.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_plateau_stops_exports_and_keeps_the_history_across_resume(tmp_path):
    """A learning rate too small to move the EMA: the distance at step 4 is within 3% of step 2's (100% more steps),
    so the run stops at step 4 of 10 with its checkpoint and export; --resume to a longer run keeps the history."""
    out = tmp_path / "run"
    res = train(out, *evals_args(tmp_path / "c"), "--plateau", "0.03", "--lr", "1e-7", steps=10)
    assert res.exit_code == 0, res.output
    assert "plateau at step 4" in res.output and "stopping and exporting" in res.output
    assert [r["plateau"] for r in rows(out)] == [False, True]
    assert (out / "final.safetensors").exists()
    state = json.load(open(out / "checkpoints" / "step-00000004" / "state.json"))
    assert [e["step"] for e in state["evals"]] == [2, 4]
    res = train(out, *evals_args(tmp_path / "c"), "--resume", "--plateau", "0", steps=6)
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in rows(out)] == [2, 4, 6]
    state = json.load(open(out / "checkpoints" / "step-00000006" / "state.json"))
    assert [e["step"] for e in state["evals"]] == [2, 4, 6]


def e(step, value, metric="fid", n=1000):
    return {"step": step, "value": value, "metric": metric, "n": n, "sampler": "dpm-solver++-25", "reference": "fashion-mnist:test"}


def test_plateau_rule():
    """Two measurements: the trend is their comparison (gain = relative improvement over 20% more steps)."""
    assert plateau_reached([e(1000, 50.0)], 0.03) is None  # nothing to compare with
    assert plateau_reached([e(1000, 50.0), e(1100, 50.0)], 0.03) is None  # only 10% more steps
    p = plateau_reached([e(1000, 50.0), e(1200, 49.0)], 0.03)
    assert p["from"]["step"] == 1000 and p["points"] == 2 and p["gain"] == pytest.approx(0.02)  # 2% < 3%
    assert plateau_reached([e(1000, 50.0), e(1200, 48.0)], 0.03) is None  # 4% is still progress
    assert plateau_reached([e(1000, 50.0), e(1200, 55.0)], 0.03)["gain"] == pytest.approx(-0.1)  # worse: a plateau too
    assert plateau_reached([e(1000, 50.0, metric="fd-classifier"), e(1200, 50.0)], 0.03) is None  # other kinds never compared
    assert plateau_reached([e(1000, 50.0, n=500), e(1200, 50.0)], 0.03) is None
    assert plateau_reached([e(400, 10.0), e(1000, 50.0), e(1200, 49.0)], 0.03)["points"] == 2  # older than half the steps: left out


def test_plateau_trend_matches_a_direct_fit_and_ignores_one_bad_measurement():
    """The trend is numpy's least-squares line in log-log space; one spike on a falling curve is no plateau
    (the DiT run of results/converge had a 3.10 between 1.61 and 1.48), a flat but noisy curve is one."""
    steps = [13500, 17500, 19500, 21500, 23500, 25500]
    falling = [4.75, 2.96, 2.45, 1.96, 1.61, 3.10]  # the spike comes last, where one comparison would call it a plateau
    p = plateau_gain([e(s, v) for s, v in zip(steps, falling)])
    slope = np.polyfit(np.log(steps), np.log(falling), 1)[0]
    assert p == pytest.approx(1 - 1.2 ** slope, rel=1e-9) and p > 0.03
    assert plateau_reached([e(s, v) for s, v in zip(steps, falling)], 0.03) is None
    flat = [0.40, 0.35, 0.44, 0.42, 0.36, 0.34, 0.41]
    q = plateau_reached([e(1000 * (10 + 2 * i), v) for i, v in enumerate(flat)], 0.03)
    assert q is not None and q["points"] == 6 and q["from"]["step"] == 12000 and q["gain"] < 0.03  # 10000 < 22000 / 2
    assert plateau_gain([e(1000, 1.0)]) is None


@pytest.mark.parametrize("args,needle", [
    (["--plateau", "0.03"], "--plateau needs --eval-every"),
    (["--eval-every", "2", "--plateau", "1.5"], "--plateau 1.5"),
    (["--eval-every", "2", "--eval-metric", "is"], "unknown --eval-metric 'is'"),
    (["--eval-every", "2", "--eval-sampler", "ddim"], "NAME-STEPS"),
    (["--eval-every", "-1"], "--eval-every must be >= 0"),
])
def test_bad_eval_options_one_line(tmp_path, args, needle):
    line = error_line(train(tmp_path / "run", *args))
    assert needle in line, line
    assert not (tmp_path / "run").exists()


def test_resume_measures_a_step_the_stopped_run_did_not(tmp_path):
    """A run that ended at a measurement step without measuring it (here: it had no --eval-every; a run stopped
    by --max-minutes at such a step is the same case) gets that measurement first when resumed with
    --eval-every, so the curve has no hole; the training itself is unchanged (measuring touches no RNG)."""
    out, plain = tmp_path / "run", tmp_path / "plain"
    assert train(out, steps=2).exit_code == 0
    res = train(out, *evals_args(tmp_path / "c"), "--resume", steps=4)
    assert res.exit_code == 0, res.output
    ev = rows(out)
    assert [r["step"] for r in ev] == [2, 4] and ev[0].get("on_resume") and not ev[1].get("on_resume")
    state = json.load(open(out / "checkpoints" / "step-00000004" / "state.json"))
    assert [e["step"] for e in state["evals"]] == [2, 4]
    assert train(plain, steps=4).exit_code == 0
    wa, wb = load_file(out / "final.safetensors"), load_file(plain / "final.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_of_a_finished_run_measures_its_last_step(tmp_path):
    """A run that reached its last step (3, not a multiple of --eval-every) without measuring it, as one the time
    limit stops there does, gets its final measurement from `--resume` and trains no further step."""
    out = tmp_path / "run"
    assert train(out, steps=3).exit_code == 0
    before = load_file(out / "final.safetensors")
    res = train(out, *evals_args(tmp_path / "c"), "--resume", steps=3)
    assert res.exit_code == 0, res.output
    ev = rows(out)
    assert [r["step"] for r in ev] == [3] and ev[0].get("on_resume")
    assert not any(r.get("step", 0) > 3 for r in map(json.loads, open(out / "metrics.jsonl")))
    after = load_file(out / "final.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def _bench_module(name: str):
    """benchmarks/NAME.py as a module (the benchmarks folder on the path while it loads: the reports import each other)."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(root))
    try:
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(root))
    return mod


def test_converge_report_counts_images_across_parts_of_different_batch(tmp_path):
    """benchmarks/converge_report.py chains continued parts: part 2 (batch 1024) counts each step as two steps of
    batch 512, so its evals, span and speed are in images seen; the plateau gain is the rule's on those steps."""
    rep = _bench_module("converge_report")
    parts = {1: (512, 2000, [(1000, 4.0), (2000, 3.0)]), 2: (1024, 1000, [(500, 2.5), (1000, 2.2)])}
    for n, (batch, last, evals) in parts.items():
        (tmp_path / f"dit-part{n}.config.json").write_text(json.dumps({"batch_size": batch, "lr": 1e-4}))
        rows = [{"step": s, "loss": 0.1, "steps_per_s": 10.0} for s in (last // 4, last // 2, 3 * last // 4, last)]
        rows += [{"step": s, "eval": {"step": s, "value": v}} for s, v in evals]
        (tmp_path / f"dit-part{n}.metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = rep.curve(str(tmp_path), "dit")
    assert [e["step"] for e in c["evals"]] == [1000, 2000, 3000, 4000]
    assert [(b["from"], b["to"], b["batch_size"]) for b in c["parts"]] == [(0, 2000, 512), (2000, 4000, 1024)]
    assert c["median_steps_per_s"] == 20.0  # part 2's 10 steps/s of 1024 images are 20 of 512
    want = plateau_gain([{"step": s, "value": v} for s, v in ((1000, 4.0), (2000, 3.0), (3000, 2.5), (4000, 2.2))])
    assert c["evals"][-1]["plateau_gain"] == pytest.approx(want)
    # part 1 continued an export of 3000 steps: every step is offset by them, the gain is the rule's on the totals
    c = rep.curve(str(tmp_path), "dit", start=3000)
    assert [e["step"] for e in c["evals"]] == [4000, 5000, 6000, 7000]
    assert [(b["from"], b["to"]) for b in c["parts"]] == [(3000, 5000), (5000, 7000)]
    want = plateau_gain([{"step": s, "value": v} for s, v in ((4000, 4.0), (5000, 3.0), (6000, 2.5), (7000, 2.2))])
    assert c["evals"][-1]["plateau_gain"] == pytest.approx(want)
    with pytest.raises(SystemExit):
        rep.main(["--dir", str(tmp_path), "--start", "dit:3000"])


def test_finetune_report_on_the_committed_fine_tunes(tmp_path):
    """benchmarks/finetune_report.py on a copy of results/converge/uvit-ft: the compute savings it computes
    from the proxy table's steps equal the ones `eediff search` wrote on the GPU (its target for D4 / D6, its
    result for each searched schedule), the fair baseline's ratio is 1, and the base's distance is the mean of
    converge.json's last measurements."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src = root / "results" / "converge" / "uvit-ft"
    d = tmp_path / "ft"
    shutil.copytree(src, d)
    for f in d.glob("finetunes.*"):
        f.unlink()
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "finetune_report.py"), "--dir", str(d), "--model", "U-ViT",
                        "--base-curve", str(root / "results" / "converge" / "converge.json"), "--base-key", "uvit", "--base-last", "3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads((d / "finetunes.json").read_text())
    rows = {row["kind"]: row for row in out["rows"]}
    for x in ("D4", "D6", "0.3"):
        found = json.loads((d / f"search-{x}.schedule.json").read_text())["search"]["compute_saving"]
        assert rows[f"search-{x}"]["compute_saving"] == pytest.approx(found, abs=1e-9)
    for x in ("D4", "D6"):
        target = json.loads((d / f"search-{x}.report.json").read_text())["target_saving"]
        assert rows[f"{x}-U-ViT"]["compute_saving"] == pytest.approx(target, abs=1e-9)
        assert rows[f"search-{x}"]["compared_with"] == f"{x}-U-ViT"
    assert rows["full"]["compute_saving"] == 0 and rows["full"]["ratio_fair"] == 1
    last = json.loads((root / "results" / "converge" / "converge.json").read_text())["uvit"]["evals"][-3:]
    assert out["base"]["fd_mean_last"] == pytest.approx(sum(e["value"] for e in last) / 3)
    assert rows["D4-U-ViT"]["ratio_base"] == pytest.approx(rows["D4-U-ViT"]["fid"] / out["base"]["fd_mean_last"])
    from scipy.stats import spearmanr

    cut = [row for row in out["rows"] if row["compute_saving"] > 0]
    want = spearmanr([row["proxy"] for row in cut], [row["fid"] for row in cut]).statistic
    assert {row["proxy_kind"] for row in out["rows"]} == {"zero-shot"}
    assert len(cut) == 5 and out["spearman_zero_shot_proxy_vs_finetuned"] == pytest.approx(want)


def test_finetune_report_with_an_eval_json_as_the_base_and_adapted_searches(tmp_path):
    """The same report on results/converge/uvit-shipped-svp (fine-tunes of the shipped U-ViT, the schedules of
    `eediff search --adapted`): the base's distance is the full-depth row of an `eediff eval` JSON, the proxy is
    labelled adapted, each asearch-X row is compared with the preset whose saving it was searched at and saves
    what the search wrote, and the rank correlation is scipy's."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from scipy.stats import spearmanr

    root = Path(__file__).resolve().parents[1]
    d = tmp_path / "svp"
    shutil.copytree(root / "results" / "converge" / "uvit-shipped-svp", d)
    for f in d.glob("finetunes.*"):
        f.unlink()
    base = root / "results" / "converge" / "uvit-shipped-asearch" / "base_fd.json"
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "finetune_report.py"), "--dir", str(d), "--model", "U-ViT",
                        "--base-fd", str(base), "--curve-steps", "1000,2000"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads((d / "finetunes.json").read_text())
    rows = {row["kind"]: row for row in out["rows"]}
    full = next(row for row in json.loads(base.read_text())["rows"] if row["schedule"] == "full")
    assert out["base"]["fd"] == full["fid_mean"]
    for x in ("D4", "D6"):
        row = rows[f"asearch-{x}"]
        assert row["proxy_kind"] == "adapted" and row["compared_with"] == f"{x}-U-ViT"
        found = json.loads((d / f"asearch-{x}.schedule.json").read_text())["search"]["compute_saving"]
        assert row["compute_saving"] == pytest.approx(found, abs=1e-9)
        assert row["ratio_base"] == pytest.approx(row["fid"] / full["fid_mean"])
    cut = [row for row in out["rows"] if row["compute_saving"] > 0]
    assert len(cut) == 4 and rows["full"]["ratio_fair"] == 1
    want = spearmanr([row["proxy"] for row in cut], [row["fid"] for row in cut]).statistic
    assert out["spearman_adapted_proxy_vs_finetuned"] == pytest.approx(want)
    assert "1k / 2k / 3.5k steps" in (d / "finetunes.md").read_text()
    assert (d / "finetunes.png").stat().st_size > 10_000  # the curves' plot
    into = tmp_path / "search.json"
    shutil.copy(root / "results" / "search.json", into)
    before = json.loads(into.read_text())
    for _ in range(2):  # a second run replaces its own entry
        r = subprocess.run([sys.executable, str(root / "benchmarks" / "finetune_report.py"), "--dir", str(d), "--model", "U-ViT",
                            "--base-fd", str(base), "--into", str(into)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    after = json.loads(into.read_text())
    assert after["rows"] == before["rows"] and after["tables"] == before["tables"]  # the zero-shot rows are kept
    kept = after["finetuned"]["svp"]["rows"]
    assert [k["kind"] for k in kept] == [row["kind"] for row in out["rows"]]
    assert all(k["fid_full"] == full["fid_mean"] and k["fid_fair"] == rows["full"]["fid"] for k in kept)
    assert next(k for k in kept if k["kind"] == "asearch-D4")["compared_with"] == "D4-U-ViT"
    # a run folder of the same name elsewhere keeps an entry of its own (keys: the folder relative to the file's)
    other = tmp_path / "v2" / "svp"
    shutil.copytree(d, other)
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "finetune_report.py"), "--dir", str(other), "--model", "U-ViT",
                        "--base-fd", str(base), "--into", str(into)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    both = json.loads(into.read_text())["finetuned"]
    assert both["svp"]["dir"] == str(d) and both[os.path.join("v2", "svp")]["dir"] == str(other)
    bad = subprocess.run([sys.executable, str(root / "benchmarks" / "finetune_report.py"), "--dir", str(d), "--model", "U-ViT",
                          "--base-curve", str(root / "results" / "converge" / "converge.json")], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--base-key" in bad.stderr


def test_finetune_report_takes_the_base_from_the_tables_cells(tmp_path):
    """--base-from-cells on results/converge/v2/dit-ft: the base's distance is the gpu_tables full-depth cell on
    the runs' own sampler (DPM-Solver++ 25, 5,000 images), and the per-sampler table divides every cell by the
    base's and the fair baseline's cell of the same sampler (checked against the JSON lines by hand)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    d = tmp_path / "dit-ft"
    shutil.copytree(root / "results" / "converge" / "v2" / "dit-ft", d)
    for f in d.glob("finetunes.*"):
        f.unlink()
    cells = [json.loads(line) for line in (d / "tables_dit.jsonl").read_text().splitlines() if line.strip()]
    cell = {(c["row"], c["sampler"]): c["fid"] for c in cells if c["type"] == "cell"}
    cmd = [sys.executable, str(root / "benchmarks" / "finetune_report.py"), "--dir", str(d), "--model", "DiT", "--curve-steps", "1000"]
    r = subprocess.run(cmd + ["--base-from-cells"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--base-from-cells needs --cells" in r.stderr
    r = subprocess.run(cmd + ["--base-from-cells", "--cells", str(d / "tables_dit.jsonl")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads((d / "finetunes.json").read_text())
    base = cell[("full", "dpm-solver++-25")]
    assert out["base"]["fd"] == base and out["base"]["sampler"] == "dpm-solver++-25"
    rows = {row["kind"]: row for row in out["rows"]}
    assert rows["D4-DiT"]["ratio_base"] == pytest.approx(rows["D4-DiT"]["fid"] / base)
    md = (d / "finetunes.md").read_text()
    d4, fair = cell[("D4-DiT fine-tuned", "ddim-50")], cell[("fair baseline (full)", "ddim-50")]
    want = f"{d4:.3f} / {d4 / cell[('full', 'ddim-50')]:.2f} / {d4 / fair:.2f}"
    line = next(x for x in md.splitlines() if x.startswith("| D4-DiT fine-tuned |"))
    assert want in line.split(" | ")[3]  # the ddim-50 column (after row and FLOPs saved)
    assert (d / "saving_vs_distance.png").stat().st_size > 0

    # the points of that plot: every non-base cell ÷ the base's cell of its own sampler, sorted into families
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        from finetune_report import read_cells, saving_points
    finally:
        sys.path.remove(str(root / "benchmarks"))
    pts = saving_points(read_cells(str(d / "tables_dit.jsonl")))
    assert set(pts) == {"dpm-solver++-25", "ddim-50", "ddpm-100"}
    ddpm = {(fam, label): ratio for fam, label, _, ratio in pts["ddpm-100"]}
    assert ddpm[("preset fine-tuned", "D6")] == pytest.approx(cell[("D6-DiT fine-tuned", "ddpm-100")] / cell[("full", "ddpm-100")])
    assert ddpm[("fair baseline", "fair baseline")] == pytest.approx(cell[("fair baseline (full)", "ddpm-100")] / cell[("full", "ddpm-100")])
    searched = [(fam, ratio) for fam, label, _, ratio in pts["dpm-solver++-25"] if fam.startswith("searched")]
    assert {fam for fam, _ in searched} == {"searched fine-tuned", "searched zero-shot"}
    n_cells = sum(1 for c in cells if c["type"] == "cell" and c["kind"] != "full")
    assert sum(len(v) for v in pts.values()) == n_cells  # every cell but the base's, once


def test_cooldown_report_compares_two_complete_schedules(tmp_path):
    """benchmarks/cooldown_report.py: the plateau rule on two cool-downs is the end of the 1.2 N run against the end
    of the N run (not the flat tail of one cosine); a run the call stopped before its last step has no end."""
    rep = _bench_module("cooldown_report")
    curves = {("dit", 1000): [(500, 2.0), (1000, 1.00)], ("dit", 1200): [(500, 2.1), (1000, 1.2), (1200, 0.99)],
              ("uvit", 1000): [(500, 0.5), (1000, 0.40)], ("uvit", 1200): [(500, 0.5), (1000, 0.36)]}
    for (m, n), evals in curves.items():
        (tmp_path / f"cd{n}" / m).mkdir(parents=True, exist_ok=True)
        rows = [{"step": s, "loss": 0.1} for s, _ in evals] + [{"step": s, "eval": {"step": s, "value": v}} for s, v in evals]
        (tmp_path / f"cd{n}" / m / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = rep.report(str(tmp_path), {"dit": 1.25})
    dit, uvit = r["models"]["dit"], r["models"]["uvit"]
    assert dit["gain_longer"] == pytest.approx(0.01) and dit["plateau_met"]  # 1.00 -> 0.99: 1% < 3%
    assert dit["gain_cooldown"] == pytest.approx(1 - 0.99 / 1.25)
    assert "1200" not in uvit["end"] and "plateau_met" not in uvit  # stopped at 1000 of 1200: no verdict
    rep.write(str(tmp_path), r)
    assert "| met |" in (tmp_path / "cooldown.md").read_text()
    with pytest.raises(SystemExit):
        rep.main(["--dir", str(tmp_path), "--before", "dit"])


def test_cooldown_report_rates_the_fine_tunes_against_the_cooled_base_and_the_fair_baseline(tmp_path):
    """--ft: from gpu_tables cells each row is ÷ the cooled base's and ÷ the fair baseline's distance on the same
    sampler; without tables, from the runs' own last evaluation against the cool-down's longer run."""
    rep = _bench_module("cooldown_report")
    ft = tmp_path / "ft"
    ft.mkdir()
    cells = [("full", "full", 1.0, "ddim-50", 0.5), ("fair", "full", 1.0, "ddim-50", 0.4),
             ("fine-tuned", "D4-DiT", 0.7, "ddim-50", 0.6), ("full", "full", 1.0, "ddpm-100", 0.8)]
    (ft / "tables_dit.jsonl").write_text("".join(json.dumps(
        {"type": "cell", "kind": k, "schedule": s, "compute_fraction": f, "sampler": sm, "fid": v}) + "\n" for k, s, f, sm, v in cells))
    (ft / "uvit-D4-U-ViT").mkdir()
    (ft / "uvit-D4-U-ViT" / "metrics.jsonl").write_text(json.dumps({"step": 1500, "eval": {"step": 1500, "value": 0.3}}) + "\n")
    fake = {"models": {"uvit": {"end": {"1000": 0.25, "1200": 0.2}}}}
    out = rep.finetunes(str(ft), fake)
    d4 = next(c for c in out["dit"]["cells"] if c[1] == "D4-DiT")
    assert d4[2] == 0.7 and d4[3] == {"ddim-50": 0.6}
    rep.write_finetunes(str(tmp_path), out)
    md = (tmp_path / "finetunes.md").read_text()
    assert "| D4-DiT fine-tuned | 30.0% | 0.600 / 1.20 / 1.50 | — |" in md  # 0.6 / 0.5 and 0.6 / 0.4
    assert "| D4-U-ViT fine-tuned, step 1500 | — | 0.300 / 1.50 / — |" in md  # ÷ the 1200-step cool-down's 0.2


def test_cooldown_report_keeps_search_rows_beside_their_comparison(tmp_path):
    """--into: each fine-tuned cell becomes a results/search.json row with the base's and fair baseline's distance on
    its sampler; a preset is compared with its own zero-shot row, a searched schedule with the fine-tuned preset
    nearest in compute; the file's other sections stay."""
    rep = _bench_module("cooldown_report")
    ft = tmp_path / "ft"
    ft.mkdir()
    cells = [("full", "full", 1.0, 0.5), ("fair", "full", 1.0, 0.4), ("fine-tuned", "D4-DiT", 0.7, 0.8),
             ("fine-tuned", "D6-DiT", 0.61, 1.2), ("fine-tuned", "28,20,14", 0.6, 0.9), ("zero-shot", "D4-DiT", 0.7, 40.0)]
    (ft / "tables_dit.jsonl").write_text("".join(json.dumps(
        {"type": "cell", "kind": k, "row": "full" if k == "full" else f"{s} {k}", "schedule": s, "compute_fraction": f,
         "flop_reduction_pct": 100 * (1 - f), "sampler": "ddim-50",
         "fid": v, "metric": "fd-classifier", "n": 64}) + "\n" for k, s, f, v in cells))
    rows = {r["schedule"]: r for r in rep.search_rows(rep.finetunes(str(ft), {"models": {}}))}
    assert [rows[s]["origin"] for s in ("D4-DiT", "28,20,14")] == ["preset", "searched"]
    assert set(rows) == {"D4-DiT", "D6-DiT", "28,20,14"}
    d4, searched = rows["D4-DiT"], rows["28,20,14"]
    assert d4["compute_saving"] == pytest.approx(0.3) and d4["fid_full"] == 0.5 and d4["fid_fair"] == 0.4
    assert d4["compared_with"] == "D4-DiT zero-shot" and d4["fid_compared"] == 40.0 and d4["ratio_base"] == pytest.approx(1.6)
    assert searched["compared_with"].startswith("D6-DiT") and searched["fid_compared"] == 1.2  # 0.61 is nearer 0.6 than 0.7
    assert d4["metric"] == "fd-classifier" and d4["n"] == 64 and d4["sampler"] == "ddim-50"
    for n in (1000, 1200):
        (tmp_path / f"cd{n}" / "dit").mkdir(parents=True)
        (tmp_path / f"cd{n}" / "dit" / "metrics.jsonl").write_text(json.dumps({"step": n, "eval": {"step": n, "value": 1.0}}) + "\n")
    into = tmp_path / "search.json"
    into.write_text(json.dumps({"rows": [1], "finetuned": {"other": {}}}))
    rep.main(["--dir", str(tmp_path), "--ft", str(ft), "--into", str(into)])
    got = json.loads(into.read_text())
    assert got["rows"] == [1] and "other" in got["finetuned"] and len(got["finetuned"]["ft"]["rows"]) == 3
    assert (ft / "saving_vs_distance_dit.png").stat().st_size > 0
    # a run folder MODEL-hand-NAME marks its schedule hand-written: in the rows and in the plot's families
    (ft / "dit-hand-band").mkdir()
    (ft / "dit-hand-band" / "config.json").write_text(json.dumps({"schedule": "28,20,14"}))
    rep.main(["--dir", str(tmp_path), "--ft", str(ft), "--into", str(into)])
    got = {r["schedule"]: r for r in json.loads(into.read_text())["finetuned"]["ft"]["rows"]}
    assert got["28,20,14"]["origin"] == "hand-written" and got["D6-DiT"]["origin"] == "preset"
    from finetune_report import read_cells, saving_points
    fams = {fam for fam, *_ in saving_points(read_cells(str(ft / "tables_dit.jsonl")), {"28,20,14"})["ddim-50"]}
    assert "hand-written fine-tuned" in fams and not any(f.startswith("searched") for f in fams)
