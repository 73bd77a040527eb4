"""CLI: the sample command end to end, and one-line errors with a non-zero exit code."""

import subprocess
import sys

import pytest
import torch

import eediff

EXE = [sys.executable, "-m", "eediff.cli"]


def run(*args):
    return subprocess.run(EXE + list(args), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    m = eediff.build_model("DiT", input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=4, num_heads=4, num_classes=3)
    p = tmp_path_factory.mktemp("c") / "m.safetensors"
    eediff.save_model(str(p), m)
    return str(p)


def test_sample_writes_grid_and_reports(ckpt, tmp_path):
    out = tmp_path / "g.png"
    r = run("sample", "--model", ckpt, "--schedule", "4,3,2,1", "--sampler", "ddim", "--steps", "4", "-n", "6",
            "--batch-size", "4", "--out", str(out), "--save-npz", "--no-progress", "--compare-full", "--compare-repeats", "2")
    assert r.returncode == 0, r.stderr
    assert "mean blocks per step: 2.50 / 4" in r.stdout and "compute fraction" in r.stdout and "wall-clock" in r.stdout
    assert f"wrote {out}, {tmp_path / 'g.npz'}" in r.stdout  # every file written is named
    # full depth and the schedule timed on the first 4 images (one batch), 2 interleaved runs each
    import re

    m = re.search(r"speed-up vs full depth: (-?[\d.]+)% less time \(([\d.]+) s -> ([\d.]+) s for 4 images, median of 2 "
                  r"interleaved runs; per run (-?\d+)\.\.(-?\d+)%\), analytic FLOP cut ([\d.]+)%", r.stdout)
    if m:
        pct, t_full, t_s, lo, hi, flop = map(float, m.groups())
        # with 2 runs the medians are means, and their ratio (a mediant) lies between the per-run ratios
        assert t_full > 0 and t_s > 0 and lo - 0.5 <= pct <= hi + 0.5 and hi - lo <= abs(pct) + 1
    else:  # a noisy machine: the spread exceeded the effect, and the line says so instead of giving a number
        m = re.search(r"not measurable on this machine: the per-run time cuts \((-?\d+)\.\.(-?\d+)% over 2 interleaved runs of 4 "
                      r"images\) spread wider than their median \((-?\d+)%\); analytic FLOP cut ([\d.]+)%", r.stdout)
        assert m, r.stdout
        lo, hi, pct, flop = map(float, m.groups())
        assert hi - lo >= abs(pct) - 1
    frac = float(re.search(r"compute fraction: ([\d.]+)", r.stdout).group(1))
    assert flop == pytest.approx(100 * (1 - frac), abs=0.11)  # the analytic cut, beside the measured one
    assert out.exists() and (tmp_path / "g.npz").exists()
    import numpy as np

    arr = np.load(tmp_path / "g.npz")["arr_0"]
    assert arr.shape == (6, 8, 8, 1) and arr.dtype == np.uint8


def test_compare_full_at_full_depth_says_it_is_skipped(ckpt, tmp_path):
    r = run("sample", "--model", ckpt, "--schedule", "full", "--sampler", "ddim", "--steps", "2", "-n", "2",
            "--out", str(tmp_path / "g.png"), "--no-progress", "--compare-full")
    assert r.returncode == 0, r.stderr
    assert "--compare-full skipped: this schedule already runs every block" in r.stderr and "speed-up" not in r.stdout


def _one_line_error(r, needle):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"eediff {eediff.__version__} (torch ")


def test_bad_counts(ckpt, tmp_path):
    _one_line_error(run("sample", "--model", ckpt, "--compare-full", "--compare-repeats", "0", "--no-progress"), "--compare-repeats")


def test_missing_checkpoint(tmp_path):
    _one_line_error(run("sample", "--model", str(tmp_path / "nope.pt"), "--no-progress"), "does not exist")


def test_corrupt_checkpoint(ckpt, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(open(ckpt, "rb").read()[:200])
    _one_line_error(run("sample", "--model", str(bad), "--no-progress"), "corrupt")
    pt = tmp_path / "bad.pt"
    pt.write_bytes(b"\x80\x04garbage")
    _one_line_error(run("sample", "--model", str(pt), "--no-progress"), "checkpoint")


def test_unknown_schedule_and_sampler(ckpt):
    _one_line_error(run("sample", "--model", ckpt, "--schedule", "D9-DiT", "--no-progress"), "unknown schedule")
    _one_line_error(run("sample", "--model", ckpt, "--schedule", "D4-DiT", "--no-progress"), "the model has 4")
    _one_line_error(run("sample", "--model", ckpt, "--sampler", "magic", "--no-progress"), "unknown sampler")


def test_schedules_lists_presets(tmp_path):
    r = run("schedules", "--plot", str(tmp_path / "s.png"))
    assert r.returncode == 0, r.stderr
    assert "D4-DiT" in r.stdout and "D6-U-ViT" in r.stdout
    assert (tmp_path / "s.png").exists()
    r = run("schedules", "--model", "uvit-fmnist", "--plot", str(tmp_path / "u.png"))  # no DiT preset fits: one empty panel
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    assert "D4-U-ViT" in r.stdout and "D4-DiT" not in r.stdout and (tmp_path / "u.png").exists()


def test_fid_command(tmp_path):
    out = tmp_path / "g.png"
    r = run("sample", "--model", "dit-fmnist-D4", "--steps", "2", "-n", "4", "--out", str(out), "--save-npz", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run("fid", "--images", str(tmp_path / "g.npz"), "--reference", "tests/data/fmnist_sample.npz",
            "--metric", "fd-classifier", "--cache-dir", str(tmp_path / "c"), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    value = float(r.stdout.split("FD-FMNIST-Classifier:")[1].split()[0])
    # the command (cached reference statistics, eigh backend) against the distance computed directly on both image sets
    import numpy as np

    from eediff.eval.classifier import fd_classifier

    fake = np.load(tmp_path / "g.npz")["arr_0"]
    real = np.load("tests/data/fmnist_sample.npz")["images"]
    want = fd_classifier(real, fake)
    assert value == pytest.approx(want, rel=1e-3, abs=1e-2) and value > 0
    _one_line_error(run("fid", "--images", str(tmp_path / "none.npz"), "--metric", "fd-classifier"), "does not exist")


def test_a_registry_latent_model_runs_without_a_vae_with_latents(tmp_path):
    out = tmp_path / "lat.png"
    r = run("sample", "--model", "DiT-S/8", "-n", "2", "--batch-size", "2", "--steps", "2", "--latents", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "latent channels 0-2 as RGB" in r.stdout and "RANDOM weights" in r.stderr and out.exists()
    r = run("sample", "--model", "DiT-S/8", "-n", "2", "--steps", "2", "--out", str(out), "--no-progress", "--overwrite")
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]  # after the random-weights note
    assert r.returncode == 2 and len(errors) == 1 and "--latents" in errors[0]


def test_outputs_never_destroy_inputs_and_follow_their_extension(ckpt, tmp_path):
    import hashlib

    before = hashlib.sha256(open(ckpt, "rb").read()).hexdigest()
    base = ["sample", "--model", ckpt, "-n", "2", "--steps", "2", "--no-progress"]
    _one_line_error(run(*base, "--out", ckpt), "must end in")
    copy = tmp_path / "m.png"
    copy.write_bytes(open(ckpt, "rb").read())  # an input that happens to carry an image extension
    _one_line_error(run("sample", "--model", str(copy), "-n", "2", "--steps", "2", "--no-progress", "--out", str(copy)), "destroy")
    _one_line_error(run(*base, "--out", str(tmp_path)), "is a folder")
    assert hashlib.sha256(open(ckpt, "rb").read()).hexdigest() == before
    r = run(*base, "--out", str(tmp_path / "g.jpg"))
    assert r.returncode == 0, r.stderr
    from PIL import Image

    assert Image.open(tmp_path / "g.jpg").format == "JPEG"


@pytest.mark.parametrize("args,needle", [
    (["--cfg", "nan"], "--cfg"), (["--cfg", "inf"], "--cfg"), (["--cfg", "1e30"], "--cfg"),
    (["--cfg-channels", "-1"], "--cfg-channels"), (["--cfg-channels", "9"], "--cfg-channels"),
    (["--steps", "1001"], "--steps"), (["--seed", "-3"], "--seed"), (["--tau", "-1"], "--tau"),
])
def test_garbage_numbers_are_refused_with_one_line(ckpt, tmp_path, args, needle):
    r = run("sample", "--model", ckpt, "-n", "2", "--steps", "2", "--no-progress", "--out", str(tmp_path / "g.png"), *args)
    _one_line_error(r, needle)
    assert not (tmp_path / "g.png").exists()


def test_a_schedule_that_runs_no_block_warns(ckpt, tmp_path):
    r = run("sample", "--model", ckpt, "-n", "2", "--steps", "2", "--no-progress", "--schedule", "0,4", "--out", str(tmp_path / "g.png"))
    assert r.returncode == 0 and "runs no block" in r.stderr


@pytest.mark.parametrize("args,needle", [(["--seeds", "a,b"], "--seeds"), (["-n", "0"], "-n")])
def test_eval_bad_counts_are_one_line(ckpt, tmp_path, args, needle):
    r = run("eval", "--model", ckpt, "--schedules", "4,2", "--samplers", "ddim-2", "--metric", "fd-classifier",
            "--reference", "tests/data/fmnist_sample.npz:test", "--device", "cpu", "--out", str(tmp_path / "e.json"), *args)
    _one_line_error(r, needle)


@pytest.mark.parametrize("args, says", [
    (["sample", "--bogus"], "No such option: --bogus"),
    (["sample", "--steps", "abc"], "Invalid value for '--steps'"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_usage_errors_are_one_line(args, says):
    # a mistyped flag or value is reported like every other bad input: one line naming it and where help is, exit 2
    r = run(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0] and "--help" in lines[0], r.stderr


def test_help_and_no_arguments_exit_codes():
    assert run("sample", "--help").returncode == 0
    r = run()
    assert r.returncode == 2 and "Usage" in r.stdout + r.stderr and "error:" not in r.stderr
