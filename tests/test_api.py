"""The Python API and CLI spellings a diffusers user reaches for."""

import subprocess
import sys

import pytest
import torch

import eediff


def test_public_names_import_from_the_package():
    from eediff import (  # noqa: F401
        DeeDiffConfig, DeeDiffExit, FastPathConfig, FullDepth, ToMeConfig, apply_deediff, apply_fast_path, apply_tome, generate,
        load_model, make_policy,
    )


def test_python_dash_m_eediff_is_the_cli():
    r = subprocess.run([sys.executable, "-m", "eediff", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and eediff.__version__ in r.stdout


def test_load_model_takes_a_module():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    dm = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                               sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1).eval()
    e0 = dm.transformer_blocks[0].norm1.emb.state_dict()  # released DiT folders share one embedder; a fresh module does not
    for blk in dm.transformer_blocks[1:]:
        blk.norm1.emb.load_state_dict(e0)
    loaded = eediff.load_model(dm)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.tensor([1, 3])
    with torch.no_grad():
        ref = dm(x, timestep=t, class_labels=y).sample
        assert torch.allclose(loaded.model(x, t.float(), y), ref, atol=1e-5)
    same = eediff.load_model(loaded.model)
    assert same.model is loaded.model
    with pytest.raises(eediff.CheckpointError, match="not a model eediff can run"):
        eediff.load_model(torch.nn.Linear(2, 2))


def test_diffusers_and_accelerate_spellings_are_aliases(tmp_path):
    m = eediff.build_model("DiT", input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=4, num_heads=4, num_classes=3)
    p = str(tmp_path / "m.safetensors")
    eediff.save_model(p, m)
    base = [sys.executable, "-m", "eediff", "sample", "--model", p, "-n", "2", "--no-progress", "--save-npz", "--device", "cpu"]
    a = subprocess.run(base + ["--steps", "3", "--cfg", "2.0", "--precision", "fp32", "--out", str(tmp_path / "a.png")],
                       capture_output=True, text=True, timeout=300)
    b = subprocess.run(base + ["--num-inference-steps", "3", "--guidance-scale", "2.0", "--mixed-precision", "fp32",
                               "--out", str(tmp_path / "b.png")], capture_output=True, text=True, timeout=300)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    import numpy as np

    assert np.array_equal(np.load(tmp_path / "a.npz")["arr_0"], np.load(tmp_path / "b.npz")["arr_0"])


def test_every_command_takes_the_same_alias_spellings():
    """Wherever a command has a sampler's --steps, --cfg or --precision, it also takes --num-inference-steps,
    --guidance-scale and --mixed-precision (the README promises them command-wide); train / finetune's run
    folder takes --output-dir."""
    import dataclasses

    from eediff import config as C

    configs = [v for v in vars(C).values() if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == C.__name__]
    seen = set()
    for cls in configs:
        for f in dataclasses.fields(cls):
            aliases = f.metadata.get("aliases", ())
            want = {"cfg": "--guidance-scale", "precision": "--mixed-precision"}.get(f.name)
            if f.name == "steps" and not issubclass(cls, C.TrainBaseConfig):  # a sampler's steps (training steps are not)
                want = "--num-inference-steps"
            if f.name == "out" and issubclass(cls, C.TrainBaseConfig):
                want = "--output-dir"
            if want:
                assert want in aliases, (cls.__name__, f.name)
                seen.add((cls.__name__, f.name))
    assert {("SampleConfig", "steps"), ("SearchConfig", "cfg"), ("EvalConfig", "precision"), ("FinetuneConfig", "out")} <= seen


def test_cli_warnings_are_one_line(tmp_path):
    """A warning from the library reaches the CLI user as one `warning: ...` line, not Python's file:line and
    source line: sampling a fine-tuned model at another schedule than its own warns so."""
    r = subprocess.run([sys.executable, "-m", "eediff", "sample", "--model", "dit-fmnist-D4", "--schedule", "full", "-n", "1",
                        "--steps", "2", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "g.png")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "fine-tuned for schedule" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: this checkpoint was fine-tuned"), r.stderr
    assert "UserWarning" not in r.stderr and "policy.py" not in r.stderr


@pytest.mark.parametrize("name,content,needle", [
    ("notes.pt", b"hello\n", "is not a weights file"),
    ("notes.safetensors", b"hello\n", "is not a weights file"),
    ("empty.pt", b"", "is not a weights file"),
    ("cut.pt", b"\x80\x02garbage", "corrupt or not a PyTorch weights file"),  # a pickle's first bytes: a damaged torch file
])
def test_a_file_that_is_no_checkpoint_is_named_so(tmp_path, name, content, needle):
    """A text (or empty) file passed as a checkpoint is called what it is, with the fix; a damaged torch or
    safetensors file is still called corrupt."""
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(eediff.CheckpointError, match=needle):
        eediff.load_model(str(p))
