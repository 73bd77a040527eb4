"""Nothing a user owns is lost or silently wrong: every bad input is one line naming the problem and the fix,
exit code 2, and changes no file; outputs never replace an input or an existing file unasked; run directories
are only continued or replaced when asked; a diverged run stops at a checkpoint it can continue from; Ctrl-C
keeps the work done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import eediff
from eediff.checkpoint import model_metadata
from eediff.cli import app
from tiny import TINY_DIT, digest, one_thread  # noqa: F401 (an autouse fixture: every test here runs on one thread)

HERE = os.path.dirname(__file__)
TRAIN_DATA = os.path.join(HERE, "data", "fmnist_train_sample.npz")
REFERENCE = os.path.join(HERE, "data", "fmnist_sample.npz")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_line(res) -> str:
    """The single error line of a refused command (notes and warnings before it are allowed)."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip() and not ln.startswith(("note:", "warning:"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


# ---- the inputs every bad case is run against (their hashes must not change) ----------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    m = eediff.build_model("DiT", input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=4, num_heads=4, num_classes=3)
    eediff.save_model(str(d / "m.safetensors"), m)
    (d / "m.png").write_bytes((d / "m.safetensors").read_bytes())  # a model that happens to carry an image extension
    (d / "existing.png").write_bytes(b"the user's picture")
    (d / "existing.npz").write_bytes(b"the user's arrays")  # next to existing.jpg, which does not exist
    (d / "existing.json").write_text('{"mine": true}')
    nan = {k: torch.full_like(v, float("nan")) for k, v in m.state_dict().items()}
    save_file(nan, str(d / "nan.safetensors"), metadata=model_metadata(m))
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    for name, change in {"badjson": {"config": "{not json"}, "noarch": {"arch": None},
                         "hidden33": {"config": json.dumps({**json.loads(model_metadata(m)["config"]), "hidden_size": 33})}}.items():
        meta = {k: v for k, v in {**model_metadata(m), **change}.items() if v is not None}
        save_file(sd, str(d / f"{name}.safetensors"), metadata=meta)
    for name, cfg in {"diff-malformed": "{oops", "diff-missing": json.dumps({"_class_name": "DiTTransformer2DModel"}),
                      "diff-list": "[1, 2]"}.items():
        (d / name).mkdir()
        (d / name / "config.json").write_text(cfg)
        save_file({"x": torch.zeros(1)}, str(d / name / "diffusion_pytorch_model.safetensors"))
    (d / "sched_dir.json").mkdir()
    (d / "latin1.json").write_bytes('{"name": "caf\xe9", "blocks": [4, 2]}'.encode("latin-1"))
    (d / "list.json").write_text("[4, 2]")
    (d / "sched.json").write_text('{"blocks": [4, 2]}')  # a valid schedule file, an input of eval / search
    (d / "broken.json").write_text('{"blocks": [4, 2')
    (d / "a_file").write_text("not a folder")
    return d


def sample(inputs, *args, out=None):
    return invoke("sample", "--model", inputs / "m.safetensors", "-n", "2", "--batch-size", "2", "--steps", "2", "--no-progress",
                  "--out", out or (inputs / "new.png"), *args)


# (the flags a case adds, or a named case set up by _case_args; the words its error line must contain)
SAMPLE_CASES = [
    (["--cfg", "nan"], "--cfg"), (["--cfg", "inf"], "--cfg"), (["--cfg", "1e30"], "--cfg"), (["--cfg", "-1"], "--cfg"),
    (["--cfg-channels", "-1"], "--cfg-channels"), (["--cfg-channels", "9"], "--cfg-channels"),
    (["--steps", "1001"], "--steps"), (["--tome-schedule", "F"], "--tome-schedule tunes token merging, which is off: add --tome-ratio"),
    (["--tome-blocks", "2", "--tome-schedule", "R"], "--tome-blocks, --tome-schedule tune token merging, which is off"), (["--steps", "0"], "--steps 0: it counts"), (["-n", "0"], "-n 0: it counts"), (["--batch-size", "0"], "--batch-size 0: it counts"),
    (["--compare-full", "--compare-repeats", "0"], "--compare-repeats 0: it counts"),
    (["--seed", "99999999999999999999"], "--seed"), (["--seed", "-3"], "--seed"), (["--tau", "-1"], "--tau"),
    (["--tau", "nan"], "--tau"), (["--schedule", "0,0,0"], "runs no block"), (["--sampler", "magic"], "unknown sampler"), (["--tome-ratio", "nan"], "--tome-ratio"),
    (["--tome-ratio", "-0.5"], "--tome-ratio"), (["--class-labels", "99"], "class label 99"),
    ("out=dir", "is a folder"), ("out=model", "must end in"), ("out=model.png", "destroy"), ("out=existing", "already exists"),
    ("out=gif", "must end in"), ("out=under-file", "is a file, not a folder"), ("npz=existing", "already exists"), ("exit-plot=jpg", "must end in .png"),
    ("model=nan", "non-finite"), ("model=badjson", "malformed eediff metadata"), ("model=noarch", "no 'arch' entry"),
    ("model=hidden33", "hidden_size = 33"), ("model=diff-malformed", "not readable JSON"), ("model=diff-missing", "lacks"),
    ("model=diff-list", "JSON object"), ("model=missing", "does not exist"), ("vae=file", "--vae"),
    (["--latents"], "--latents is for latent models (4 input channels); this model samples 1-channel images"),
    (["--latents", "--vae", "{d}"], "--latents writes the undecoded latents and --vae decodes them"),
    ("vae=sched_dir.json", "has no config.json"), ("vae=diff-malformed", "is not a loadable diffusers AutoencoderKL"),
]


def _case_args(d, case) -> tuple[list, object]:
    """(extra flags, --out) of a sample case; None = the default new file."""
    if isinstance(case, list):
        return [str(a).replace("{d}", str(d)) for a in case], None
    key, _, value = case.partition("=")
    if key == "out":
        if value == "model.png":  # the model itself, under an image name
            return ["--model", d / "m.png"], d / "m.png"
        return [], {"dir": d, "model": d / "m.safetensors", "existing": d / "existing.png", "gif": d / "new.gif",
                    "under-file": d / "a_file" / "new.png"}[value]
    if key == "npz":  # a new grid whose .npz next to it exists
        return ["--save-npz"], d / "existing.jpg"
    if key == "exit-plot":
        return ["--exit-plot", d / "plot.jpg"], None
    if key == "model":
        return ["--model", d / (value if value.startswith("diff") else value + ".safetensors")], None
    if key == "vae":
        return ["--vae", d / (value if value != "file" else "a_file")], None
    raise ValueError(case)


@pytest.mark.parametrize("case,needle", SAMPLE_CASES, ids=lambda v: str(v))
def test_sample_refuses_bad_input_with_one_line(inputs, case, needle):
    args, out = _case_args(inputs, case)
    before = digest(inputs)
    line = error_line(sample(inputs, *args, out=out))
    assert needle in line, line
    assert digest(inputs) == before
    assert not (inputs / "new.png").exists()


# ---- 45 malformed schedule specs, through the CLI (the model has 4 schedulable blocks) -----------------------
def _schedule_specs():
    j = json.dumps
    return [
        ("", "empty"), ("   ", "empty"), (",", "empty entry"), ("4,,2", "empty entry"), ("4,2,", "empty entry"),
        ("-1", "negative"), ("4,-2", "negative"), ("4,2,-1", "negative"), ("5", "up to 5 blocks"), ("4,9", "up to 9 blocks"),
        ("4,2.5", "not an integer"), ("a,b", "not an integer"), ("4;2", "unknown schedule"), ("D9-DiT", "unknown schedule"),
        ("fastest", "unknown schedule"), ("D4-DiT", "defined for 28 schedulable blocks but the model has 4: give the block counts yourself, e.g. --schedule"), ("D4-U-ViT", "the model has 4"), ("0,0,0", "runs no block"),
        ("0", "runs no block"), ("1e3", "unknown schedule"),
        (j({"blocks": []}), "empty"), (j({"boundaries": [0, 1]}), "needs \"blocks\""), (j([4, 2]), "not an integer"),
        (j({"blocks": "4,2"}), "must be a list"), (j({"blocks": [4, "2"]}), "not an integer"), (j({"blocks": [4, 2.5]}), "not an integer"),
        (j({"blocks": [4, True]}), "not an integer"), (j({"blocks": [4, None]}), "not an integer"), (j({"blocks": [[4], 2]}), "not an integer"),
        (j({"boundaries": "0,1", "blocks": [4]}), "must be a list"), (j({"boundaries": [0, 0.5, 0.9], "blocks": [4, 2]}), "cover"),
        (j({"boundaries": [0.1, 0.5, 1], "blocks": [4, 2]}), "cover"), (j({"boundaries": [0, 0.6, 0.5, 1], "blocks": [4, 3, 2]}), "increasing"),
        (j({"boundaries": [0, 0.5, 0.5, 1], "blocks": [4, 3, 2]}), "increasing"), (j({"boundaries": [0, 0.5, 1], "blocks": [4]}), "boundaries"),
        (j({"boundaries": [0, 1], "blocks": [4, 2]}), "boundaries"), ('{"boundaries": [0, NaN, 1], "blocks": [4, 2]}', "finite"),
        ('{"boundaries": [0, Infinity, 1], "blocks": [4, 2]}', "finite"), (j({"boundaries": [0, "half", 1], "blocks": [4, 2]}), "finite"),
        (j({"boundaries": [0, 0.5, 1], "blocks": [4, -1]}), "negative"), ('{"blocks": [4, 2]', "does not parse"),
        ("{d}/sched_dir.json", "is a folder"), ("{d}/latin1.json", "not UTF-8"), ("{d}/missing.json", "does not exist"),
        ("{d}/list.json", "JSON object"), ("{d}/broken.json", "does not parse"),
    ]


def test_there_are_45_schedule_specs():
    assert len(_schedule_specs()) >= 45


@pytest.mark.parametrize("spec,needle", _schedule_specs())
def test_malformed_schedules_are_one_line(inputs, spec, needle):
    before = digest(inputs)
    line = error_line(sample(inputs, "--schedule", spec.replace("{d}", str(inputs))))
    assert needle in line, line
    assert digest(inputs) == before and not (inputs / "new.png").exists()


def test_a_schedule_with_zero_blocks_somewhere_warns_but_runs(inputs, tmp_path):
    res = sample(inputs, "--schedule", "0,4", out=tmp_path / "g.png")
    assert res.exit_code == 0, res.output
    assert "runs no block at all for part of t" in res.output


# ---- eval, train, finetune and the other commands ---------------------------------------------------------
def _eval(inputs, *args, out=None):
    return invoke("eval", "--model", inputs / "m.safetensors", "--schedules", "4,2", "--samplers", "ddim-2", "-n", "4",
                  "--batch-size", "4", "--metric", "fd-classifier", "--reference", REFERENCE + ":test", "--device", "cpu",
                  "--time-repeats", "1", "--no-progress", "--out", out or (inputs / "new.json"), *args)


@pytest.mark.parametrize("args,needle", [
    (["--metric", "fdx"], "unknown metric 'fdx'"), (["--reference", "nosuch:test"], "--reference 'nosuch:test': unknown data set 'nosuch'"),
    (["--reference", "fashion-mnist:val"], "unknown split 'val'"),
    (["--seeds", "a,b"], "--seeds"), (["-n", "0"], "-n"), (["--kernels", "fp4"], "unknown --kernels"), (["--fp8-fast-accum"], "--fp8-fast-accum"), (["--fp8-mlp", "epilogue"], "--fp8-mlp epilogue is a mode of the fp8 fast path"), (["--fast", "--kernels", "fp8", "--fp8-mlp", "tiles"], "unknown --fp8-mlp 'tiles'"), (["--fp8-calibrate", "8"], "--fp8-calibrate 8"), (["--fast", "--kernels", "fp8", "--fp8-calibrate", "-1"], "--fp8-calibrate -1"),
    (["--fp8-smooth", "8"], "--fp8-smooth 8 balances the fp8 fast path's GEMMs: add --fast --kernels fp8"),
    (["--fast", "--fp8-smooth", "8"], "add --fast --kernels fp8"), (["--fast", "--kernels", "fp8", "--fp8-smooth", "-1"], "--fp8-smooth -1: give a number"),
    (["--fast", "--kernels", "fp8", "--fp8-smooth", "8", "--fp8-smooth-alpha", "1.5"], "--fp8-smooth-alpha 1.5 is not in [0, 1]"),
    (["--fast", "--kernels", "fp8", "--fp8-smooth", "8", "--fp8-smooth-alpha", "nan"], "--fp8-smooth-alpha nan is not in [0, 1]"),
    (["--fast", "--kernels", "fp8", "--fp8-smooth", "8", "--fp8-smooth-gemms", "qkv,adaLN"], "unknown GEMM 'adaLN'; give a comma list of qkv, proj, fc1, fc2"),
    (["--fast", "--kernels", "fp8", "--fp8-smooth", "8", "--fp8-smooth-gemms", ","], "--fp8-smooth-gemms is empty"),
    (["--fast", "--kernels", "fp8", "--fp8-smooth-alpha", "0.3"], "--fp8-smooth-alpha tunes --fp8-smooth: add --fp8-smooth N"),
    (["--fp8-smooth-gemms", "qkv"], "--fp8-smooth-gemms tunes --fp8-smooth"), (["--cfg", "nan"], "--cfg"), (["--time-repeats", "0"], "--time-repeats"),
    (["--schedules", "4,9"], "up to 9"), (["--samplers", "ddim"], "NAME-STEPS"), (["--out", "{d}/existing.json"], "already exists"),
    (["--out", "{d}/e.txt"], "must end in .json"), (["--out", "{d}/m.safetensors"], "must end in .json"),
    (["--out", "{d}/a_file/e.json"], "is a file, not a folder"),
    (["--schedules", "{d}/sched.json", "--out", "{d}/sched.json", "--overwrite"], "destroy"),
    (["--kernels", "fused"], "--kernels fused picks the fast path's block kernels, and eval runs eager without --fast: add --fast"),
    (["--samplers", "ddimm-2"], "unknown sampler 'ddimm'"), (["--samplers", "ddim-0"], "at least 1, e.g. ddim-25"),
    (["--samplers", "ddim--2"], "at least 1, e.g. ddim-25"),
])
def test_eval_refuses_bad_input_with_one_line(inputs, args, needle):
    before = digest(inputs)
    line = error_line(_eval(inputs, *[a.replace("{d}", str(inputs)) for a in args]))
    assert needle in line, line
    assert digest(inputs) == before


def _train(out, *args):
    return invoke("train", "--dataset", TRAIN_DATA, "--model-config", TINY_DIT, "--steps", "4", "--batch-size", "16", "--lr", "1e-3",
                  "--save-every", "2", "--log-every", "1", "--sample-every", "-1", "--device", "cpu", "--no-progress", "--out", out, *args)


@pytest.mark.parametrize("args,needle", [
    (["--model-config", json.dumps(dict(patch_size=4, hidden_size=33, depth=4, num_heads=4))], "hidden_size = 33"),
    (["--model-config", json.dumps(dict(patch_size=5, hidden_size=32, depth=4, num_heads=4))], "patch_size = 5"),
    (["--model-config", json.dumps(dict(patch_size=4, hidden_size=32, depth=-1, num_heads=4))], "depth = -1"),
    (["--model-config", json.dumps(dict(patch_size=4, hidden_size=32, depth=4, num_heads="4"))], "num_heads"),
    (["--model-config", "{depth: 4}"], "not valid JSON"), (["--model-config", json.dumps(dict(widht=4))], "widht"),
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "1e10"], "--lr"), (["--lr", "0"], "--lr"),
    (["--grad-clip", "nan"], "--grad-clip"), (["--weight-decay", "inf"], "--weight-decay"), (["--seed", "-1"], "--seed"),
    (["--max-minutes", "inf"], "--max-minutes"), (["--ema-decay", "nan"], "--ema-decay"), (["--adam-beta2", "1"], "--adam-beta2"),
    (["--schedule", "0,0"], "runs no block"), (["--schedule", "{d}/sched_dir.json"], "is a folder"),
    (["--resume"], "does not exist"), (["--resume", "--overwrite"], "only one of them"), (["--out", "{d}/a_file"], "is a file"),
    (["--out", "{d}/a_file/run"], "is a file, not a folder"),
    (["--vae", "{d}/sched_dir.json"], "has no config.json"), (["--sample-sampler", "ddimm"], "unknown sampler 'ddimm'"), (["--eval-every", "2", "--eval-sampler", "ddimm-5"], "unknown sampler 'ddimm'"),
])
def test_train_refuses_bad_input_with_one_line(inputs, tmp_path, args, needle):
    before = digest(inputs)
    line = error_line(_train(tmp_path / "run", *[a.replace("{d}", str(inputs)) for a in args]))
    assert needle in line, line
    assert digest(inputs) == before and not (tmp_path / "run").exists()


def test_finetune_refuses_a_non_finite_init(inputs, tmp_path):
    line = error_line(invoke("finetune", "--init", inputs / "nan.safetensors", "--schedule", "4,2", "--dataset", TRAIN_DATA,
                             "--device", "cpu", "--no-progress", "--out", tmp_path / "ft"))
    assert "non-finite" in line and "--lr" not in line, line


@pytest.mark.parametrize("args,needle", [
    (["calibrate", "--model", "{d}/m.safetensors", "--target-saving", "nan", "--out", "{d}/c.safetensors"], "--target-saving"),
    (["calibrate", "--model", "{d}/m.safetensors", "--out", "{d}/m.safetensors"], "destroy"),
    (["calibrate", "--model", "dit-fmnist-deediff"], "is a shipped model, which is never changed in place: pass --out"),
    (["calibrate", "--model", "{d}/m.pt"], "is not a .safetensors file, the only kind updated in place"),
    (["export-data", "--dataset", TRAIN_DATA, "--out", "{d}/x.txt"], "must end in .npz"),
    (["export-data", "--dataset", TRAIN_DATA, "--out", "{d}/existing.npz"], "already exists"),
    (["schedules", "--plot", "{d}/existing.png"], "already exists"),
    (["bench", "--tiny", "--out", "{d}/existing.json"], "already exists"),
    (["bench", "--tiny", "--kernels", "fused", "--fp8-fast-accum", "--out", "{d}/b.json"], "--fp8-fast-accum"),
    (["bench", "--tiny", "--kernels", "fused", "--fp8-mlp", "epilogue", "--out", "{d}/b.json"], "--fp8-mlp epilogue is a mode of the fp8 kernels"),
    (["bench", "--tiny", "--kernels", ",", "--out", "{d}/b.json"], "--kernels is empty"),
    (["bench", "--tiny", "--kernels", "fused,fp4", "--out", "{d}/b.json"], "unknown --kernels"),
    (["export-data", "--dataset", TRAIN_DATA, "--out", "{d}/a_file/x.npz"], "is a file, not a folder"),
    (["export-data", "--dataset", TRAIN_DATA, "--out", "{d}/x.npz", "--per-class", "-1"], "--per-class -1: give the number"),
    (["export", "--model", "{d}/m.safetensors", "--out", "{d}/a_file/t"], "is a file, not a folder"),
    (["export", "--model", "{d}/m.safetensors", "--out", "{d}/a_file", "--overwrite"], "is a file: give the folder"),
    (["search", "--model", "{d}/m.safetensors", "--target-saving", "0.3", "--out", "{d}/a_file/s.json"], "is a file, not a folder"),
    (["search", "--model", "{d}/m.safetensors", "--saving-of", "{d}/sched.json", "--out", "{d}/sched.json", "--overwrite"], "destroy"),
    (["search", "--model", "{d}/m.safetensors", "--saving-of", "D4-U-ViT", "--out", "{d}/s.json"], "e.g. --saving-of '3,3,1,1,1'"),
])
def test_other_commands_refuse_with_one_line(inputs, args, needle):
    before = digest(inputs)
    line = error_line(invoke(*[a.replace("{d}", str(inputs)) for a in args]))
    assert needle in line, line
    assert digest(inputs) == before


def test_a_damaged_shipped_model_says_reinstall_not_download():
    from eediff.checkpoint import _fix_for
    from eediff.zoo import HERE, path

    in_package = os.path.join(HERE, "dit-fmnist.safetensors")
    assert "reinstall eediff" in _fix_for(in_package) and "download" not in _fix_for(in_package)
    assert "unpacked into the cache" in _fix_for(path("dit-fmnist"))  # (the package holds it packed)
    assert "reinstall" not in _fix_for("/somewhere/else.safetensors")


# ---- outputs ---------------------------------------------------------------------------------------------
def test_outputs_follow_the_extension_and_are_replaced_only_with_overwrite(inputs, tmp_path):
    from PIL import Image

    for ext, fmt in ((".png", "PNG"), (".jpg", "JPEG"), (".jpeg", "JPEG")):
        res = sample(inputs, *(["--save-npz"] if ext == ".png" else []), out=tmp_path / f"g{ext}")
        assert res.exit_code == 0, res.output
        assert Image.open(tmp_path / f"g{ext}").format == fmt
    assert np.load(tmp_path / "g.npz")["arr_0"].shape == (2, 8, 8, 1)
    first = (tmp_path / "g.png").read_bytes()
    assert "already exists" in error_line(sample(inputs, out=tmp_path / "g.png"))
    assert (tmp_path / "g.png").read_bytes() == first
    res = sample(inputs, "--overwrite", "--seed", "5", out=tmp_path / "g.png")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "g.png").read_bytes() != first  # replaced, as asked


def test_stale_temporary_files_are_removed_at_the_next_write(inputs, tmp_path):
    stale = tmp_path / ".tmp-abcd1234g.png"
    stale.write_bytes(b"half a png from a killed run")
    other = tmp_path / ".tmp-abcd1234other.png"  # another output's: not ours to remove
    other.write_bytes(b"x")
    assert sample(inputs, out=tmp_path / "g.png").exit_code == 0
    assert not stale.exists() and other.exists()


# ---- eval: Ctrl-C keeps the rows done -------------------------------------------------------------------
def test_ctrl_c_during_eval_writes_the_rows_done_so_far(inputs, tmp_path, monkeypatch):
    from eediff.eval import evaluate

    real, calls = evaluate.fid_cell, {"n": 0}

    def interrupted_second_time(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # what SIGINT raises in the main thread
        return real(*a, **k)

    monkeypatch.setattr(evaluate, "fid_cell", interrupted_second_time)
    out = tmp_path / "e.json"
    res = _eval(inputs, out=out)
    assert res.exit_code == 130, res.output
    assert "interrupted: wrote the 1 row(s) done so far" in res.output
    saved = json.loads(out.read_text())
    assert saved["interrupted"] is True and [r["schedule"] for r in saved["rows"]] == ["full"]
    assert (tmp_path / "e.md").exists()


# ---- training runs --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("fin") / "run"
    res = _train(out)
    assert res.exit_code == 0, res.output
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_run_directories_are_never_clobbered(finished, tmp_path):
    # a finished run whose checkpoints were removed: its final model, config and metrics stay
    run = _copy(finished, tmp_path / "run")
    import shutil

    shutil.rmtree(run / "checkpoints")
    before = digest(run)
    assert "not empty" in error_line(_train(run, "--steps", "2"))
    assert "holds no checkpoint" in error_line(_train(run, "--resume"))
    assert digest(run) == before
    # a folder that is not a run: its config.json is the user's
    other = tmp_path / "project"
    other.mkdir()
    (other / "config.json").write_text('{"mine": 1}')
    assert "--overwrite" in error_line(_train(other))
    assert (other / "config.json").read_text() == '{"mine": 1}'
    # a run with checkpoints: --resume or --overwrite; --overwrite keeps files that are not the run's
    run2 = _copy(finished, tmp_path / "run2")
    assert "--resume" in error_line(_train(run2))
    (run2 / "notes.txt").write_text("keep me")
    res = _train(run2, "--overwrite", "--steps", "2")
    assert res.exit_code == 0, res.output
    assert (run2 / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(run2 / "checkpoints")) == ["step-00000002"]


def test_overwrite_never_removes_what_the_run_reads(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    before = digest(run)
    line = error_line(invoke("finetune", "--init", run / "final.safetensors", "--schedule", "4,2", "--dataset", TRAIN_DATA,
                             "--device", "cpu", "--no-progress", "--out", run, "--overwrite"))
    assert "--init" in line and "copy it elsewhere" in line
    assert digest(run) == before


def test_resume_honours_and_records_safe_changes_and_refuses_the_rest(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    before = digest(run)
    line = error_line(_train(run, "--resume", "--batch-size", "32", "--steps", "6"))
    assert "--batch-size 16 -> 32" in line
    assert "--seed 0 -> 3" in error_line(_train(run, "--resume", "--seed", "3"))
    assert digest(run) == before
    (run / "checkpoints" / ".tmp-step-00000006").mkdir()  # what a killed save leaves
    (run / ".tmp-abcd1234config.json").write_text("{")
    res = invoke("train", "--out", run, "--resume", "--steps", "6", "--lr", "1e-4", "--save-every", "3", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "--lr 0.001 -> 0.0001" in res.output
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["lr"] for r in rows] == [1e-3] * 4 + [1e-4] * 2  # the old rate up to the checkpoint, the new one after
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["lr"] == 1e-4 and cfg["save_every"] == 3 and cfg["steps"] == 6
    ts = torch.load(run / "checkpoints" / "step-00000006" / "train_state.pt", weights_only=True)
    assert ts["optimizer"]["param_groups"][0]["lr"] == 1e-4
    assert not (run / "checkpoints" / ".tmp-step-00000006").exists() and not (run / ".tmp-abcd1234config.json").exists()


def test_an_unchanged_resume_is_bit_identical(finished, tmp_path):
    """Resuming with the same options continues exactly (re-applying --lr to a loaded optimizer changes nothing)."""
    run = _copy(finished, tmp_path / "run")
    assert invoke("train", "--out", run, "--resume", "--steps", "6", "--no-progress").exit_code == 0
    ref = tmp_path / "ref"
    assert _train(ref, "--steps", "6").exit_code == 0
    a, b = load_file(str(run / "final.safetensors")), load_file(str(ref / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_picks_a_checkpoint_or_falls_back_to_an_intact_one(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    p = run / "checkpoints" / "step-00000004" / "model.safetensors"
    p.write_bytes(p.read_bytes()[:100])  # the latest checkpoint is damaged
    line = error_line(invoke("train", "--out", run, "--resume", "--steps", "6", "--no-progress"))
    assert "--resume-from" in line and "intact" in line
    assert "steps: 2, 4" in error_line(invoke("train", "--out", run, "--resume-from", "3", "--no-progress"))
    res = invoke("train", "--out", run, "--resume-from", "intact", "--steps", "6", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "skipped checkpoint" in res.output and "step-00000004" in res.output and "moved aside" in res.output
    assert (run / "checkpoints" / "abandoned-step-00000004").is_dir()  # set aside, not deleted
    assert json.load(open(run / "rank_hashes.json"))["step"] == 6
    res = invoke("train", "--out", run, "--resume-from", "2", "--steps", "4", "--no-progress")
    assert res.exit_code == 0, res.output
    assert sorted(n for n in os.listdir(run / "checkpoints") if n.startswith("step-")) == ["step-00000002", "step-00000004"]


def test_divergence_stops_at_a_checkpoint_that_can_continue(tmp_path):
    """--lr 1 diverges within a few steps on this model: the stop names a checkpoint finite in loss, weights and
    optimizer state, and continuing from it with a lower --lr, as the message says, trains on."""
    run = tmp_path / "run"
    line = error_line(_train(run, "--lr", "1", "--steps", "30"))
    assert "NaN" in line and "--resume" in line and "lower --lr" in line
    named = line.split("optimizer state is ")[1].split(";")[0]
    sd = [load_file(os.path.join(named, f)) for f in ("model.safetensors", "ema.safetensors")]
    ts = torch.load(os.path.join(named, "train_state.pt"), weights_only=True)
    from eediff.io import non_finite_count

    assert non_finite_count(sd) is None and non_finite_count(ts) is None
    res = invoke("train", "--out", run, "--resume", "--lr", "1e-4", "--steps", "12", "--no-progress")
    assert res.exit_code == 0, res.output
    assert all(np.isfinite(json.loads(line)["loss"]) for line in open(run / "metrics.jsonl"))


def test_a_non_finite_optimizer_state_is_never_checkpointed(tmp_path, monkeypatch):
    from eediff.train.loop import Trainer

    real = Trainer.step

    def poisoned(self):
        out = real(self)
        if self.step_count == 4:  # after the step: finite loss and weights, a NaN in AdamW's second moment
            state = next(iter(self.optimizer.state.values()))
            state["exp_avg_sq"].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(Trainer, "step", poisoned)
    run = tmp_path / "run"
    line = error_line(_train(run, "--steps", "8"))
    assert "optimizer state became NaN or inf at or before step 4" in line and "step-00000002" in line
    assert sorted(os.listdir(run / "checkpoints")) == ["step-00000002"]
    # a checkpoint that holds one anyway (written by other means) is refused on resume, with the way out
    ck = run / "checkpoints" / "step-00000002" / "train_state.pt"
    ts = torch.load(ck, weights_only=True)
    next(iter(ts["optimizer"]["state"].values()))["exp_avg"].view(-1)[0] = float("inf")
    torch.save(ts, ck)
    line = error_line(invoke("train", "--out", run, "--resume", "--no-progress"))
    assert "non-finite" in line and "optimizer state" in line and "--resume-from" in line


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", EEDIFF_DEBUG_STEP_SLEEP="0.2")


def test_ctrl_c_during_training_checkpoints_and_exits(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--dataset", TRAIN_DATA, "--model-config", TINY_DIT, "--steps", "200", "--batch-size", "16", "--save-every", "1000",
            "--log-every", "1", "--sample-every", "-1", "--device", "cpu", "--no-progress", "--out", str(run)]
    proc = subprocess.Popen([sys.executable, "-m", "eediff.cli", *args], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-1000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "--resume" in lines[0], err
    done = sorted(os.listdir(run / "checkpoints"))
    assert len(done) == 1 and done[0] in lines[0]  # no --save-every reached: the interrupt wrote the only one
    step = int(done[0].split("-")[1])
    assert 2 <= step < 200 and not (run / "final.safetensors").exists()
    assert json.loads(open(run / "metrics.jsonl").read().splitlines()[-1])["step"] == step
