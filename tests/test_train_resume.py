"""Checkpoints that lose nothing: SIGKILL mid-run then --resume gives bit-identical weights; bad checkpoints
are refused with one line and nothing is overwritten."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from eediff.cli import app
from eediff.models.registry import build_model
from tiny import TINY_DIT, digest

HERE = os.path.dirname(__file__)
SAMPLE = os.path.join(HERE, "data", "fmnist_train_sample.npz")


def train_args(out, steps: int, save_every: int) -> list[str]:
    return ["train", "--dataset", SAMPLE, "--model-config", TINY_DIT, "--steps", str(steps), "--batch-size", "16",
            "--lr", "1e-3", "--save-every", str(save_every), "--keep-last", "2", "--log-every", "2", "--sample-every", "-1",
            "--device", "cpu", "--no-progress", "--out", str(out), "--hflip"]


def env(**extra) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.update(extra)
    return e


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eediff.cli", *args], capture_output=True, text=True, timeout=240, **kw)


def final_tensors(run_dir) -> dict:
    ck = os.path.join(run_dir, "checkpoints", sorted(os.listdir(os.path.join(run_dir, "checkpoints")))[-1])
    return {f: load_file(os.path.join(ck, f)) for f in ("model.safetensors", "ema.safetensors")}


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    steps, every = 24, 4
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    # the run to be killed sleeps after each step so that the kill lands mid-run; sleeping changes no numbers
    proc = subprocess.Popen([sys.executable, "-m", "eediff.cli", *train_args(killed, steps, every)],
                            env=env(EEDIFF_DEBUG_STEP_SLEEP="0.15"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ref_run = subprocess.Popen([sys.executable, "-m", "eediff.cli", *train_args(ref, steps, every)], env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckdir = killed / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckdir.exists() and any(n.startswith("step-") for n in os.listdir(ckdir)):
            break
        time.sleep(0.02)
    time.sleep(0.3)  # a little further: mid-step or mid-checkpoint, either must be survivable
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final.safetensors").exists()
    done_before = sorted(n for n in os.listdir(ckdir) if n.startswith("step-"))
    assert done_before and done_before[-1] != f"step-{steps:08d}"

    res = subprocess.run([sys.executable, "-m", "eediff.cli", *train_args(killed, steps, every), "--resume"], env=env(),
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert ref_run.wait(timeout=240) == 0, ref_run.stderr.read().decode()[-2000:]

    a, b = final_tensors(ref), final_tensors(killed)
    for f in a:
        assert a[f].keys() == b[f].keys()
        for k in a[f]:
            assert torch.equal(a[f][k], b[f][k]), (f, k)
    fa, fb = load_file(str(ref / "final.safetensors")), load_file(str(killed / "final.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    # metrics were trimmed back to the checkpoint and continued: one row per logged step
    steps_logged = [json.loads(l)["step"] for l in open(killed / "metrics.jsonl")]
    assert steps_logged == list(range(2, steps + 1, 2))
    assert len(os.listdir(killed / "checkpoints")) == 2  # keep-last, and no stale temporary folder


MARKER = "/tmp/eediff-test-pickle-ran-code"


class CarriesCode:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "run"
    res = CliRunner().invoke(app, train_args(out, 4, 2))
    assert res.exit_code == 0, res.output
    return out


def _corrupt(run_dir, kind: str) -> None:
    ck = os.path.join(run_dir, "checkpoints", "step-00000004")
    if kind == "wrong-architecture":
        other = build_model("U-ViT", img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=4)
        save_file({k: v.contiguous() for k, v in other.state_dict().items()}, os.path.join(ck, "ema.safetensors"))
    elif kind == "other-width":
        other = build_model("DiT", input_size=28, patch_size=4, in_channels=1, hidden_size=64, depth=4, num_heads=4, num_classes=10)
        from eediff.checkpoint import model_metadata

        save_file(other.state_dict(), os.path.join(ck, "model.safetensors"), metadata=model_metadata(other))
    elif kind == "truncated":
        p = os.path.join(ck, "model.safetensors")
        data = open(p, "rb").read()
        open(p, "wb").write(data[: len(data) // 2])
    elif kind == "truncated-optimizer":
        p = os.path.join(ck, "train_state.pt")
        data = open(p, "rb").read()
        open(p, "wb").write(data[: len(data) // 3])
    elif kind == "pickle-with-code":
        torch.save({"optimizer": CarriesCode(), "lr_scheduler": {}}, os.path.join(ck, "train_state.pt"))
    elif kind == "rng-pickle-with-code":
        torch.save(CarriesCode(), os.path.join(ck, "rng-rank0.pt"))


@pytest.mark.parametrize("kind", ["wrong-architecture", "other-width", "truncated", "truncated-optimizer", "pickle-with-code", "rng-pickle-with-code"])
def test_bad_checkpoint_gives_one_line_and_overwrites_nothing(finished_run, tmp_path, kind):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _corrupt(run, kind)
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    before = digest(run)
    res = CliRunner().invoke(app, train_args(run, 8, 2) + ["--resume"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    expect = {"wrong-architecture": "wrong architecture", "other-width": "wrong architecture", "truncated": "truncated",
              "truncated-optimizer": "truncated", "pickle-with-code": "carry code", "rng-pickle-with-code": "carry code"}[kind]
    assert expect in lines[0]
    assert digest(run) == before  # nothing written, nothing overwritten
    assert not os.path.exists(MARKER)


def test_existing_run_needs_resume(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = digest(run)
    res = CliRunner().invoke(app, train_args(run, 8, 2))
    assert res.exit_code == 2 and "--resume" in res.output and len(res.output.strip().splitlines()) == 1
    assert digest(run) == before


def test_resume_with_the_other_command_names_the_right_one(finished_run, tmp_path):
    """`finetune --resume` on a train run's folder (and `train --resume` on a fine-tune's) names the command
    that made the run and how to resume it, in one line, and changes nothing."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = digest(run)
    res = CliRunner().invoke(app, ["finetune", "--init", str(run / "final.safetensors"), "--schedule", "2,1", "--dataset", SAMPLE,
                                   "--resume", "--out", str(run), "--device", "cpu", "--no-progress"])
    assert res.exit_code == 2 and f"holds an `eediff train` run: resume it with `eediff train --out {run} --resume`" in res.output
    assert len(res.output.strip().splitlines()) == 1 and digest(run) == before
    ft = tmp_path / "ft"
    ft.mkdir()
    (ft / "config.json").write_text(json.dumps({"init": "dit-fmnist", "schedule": "D4-DiT", "steps": 10}))
    res = CliRunner().invoke(app, train_args(ft, 8, 2) + ["--resume"])
    assert res.exit_code == 2 and "holds an `eediff finetune` run" in res.output, res.output


def test_resume_continues_a_finished_run_to_more_steps(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    res = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--steps", "6", "--no-progress"])
    assert res.exit_code == 0, res.output
    cfg = json.load(open(run / "config.json"))
    assert cfg["steps"] == 6 and cfg["dataset"] == SAMPLE  # the saved options, with --steps overridden
    assert sorted(os.listdir(run / "checkpoints")) == ["step-00000004", "step-00000006"]
    assert "train: steps 4 -> 6 (2 this run) in " in res.output  # not "6 steps in" the seconds of two


def test_lr_jump_note_names_a_stretched_cosine():
    from eediff.train.loop import lr_jump_note, lr_lambda_for

    rec = {"lr": 1e-4, "lr_schedule": "cosine", "warmup_steps": 0, "steps": 2000, "min_lr_ratio": 0.0}
    cfg = type("C", (), {"lr": 1e-4})()
    same = 1e-4 * lr_lambda_for("cosine", 0, 2000, 0.0)(1500)
    assert lr_jump_note(rec, cfg, 1500, same) is None  # the recorded schedule's own rate: nothing to say
    new = 1e-4 * lr_lambda_for("cosine", 0, 4000, 0.0)(2000)  # --steps 4000 at step 2000: cos(pi/2) -> half the peak
    note = lr_jump_note(rec, cfg, 2000, new)
    assert note.startswith("note:") and "5e-05" in note and "--steps 2000" in note and "--lr-schedule constant" not in note
    note = lr_jump_note(rec, cfg, 1000, 1e-4 * lr_lambda_for("cosine", 0, 4000, 0.0)(1000))
    assert f"--lr {1e-4 * 0.5:.3g}" in note  # recorded rate at 1000 of 2000 is half the peak: suggested to keep it
    assert lr_jump_note({}, cfg, 10, 1e-4) is None  # an older config.json without the fields
    cfg.lr = 3e-4
    assert lr_jump_note(rec, cfg, 2000, 3e-4 * 0.5) is None  # --lr changed by name: no second note


def test_resume_reports_a_learning_rate_jump(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    res = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--steps", "6", "--lr-schedule", "cosine", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "note: the learning rate at step 4 is 0.00025, where the recorded run's schedule (constant, --steps 4) has 0.001" in res.output
