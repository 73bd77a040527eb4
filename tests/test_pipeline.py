"""eediff.EEDiffPipeline: the Python entry point in diffusers' terms, against the CLI's images."""

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from typer.testing import CliRunner

import eediff
from eediff.cli import app
from eediff.diffusion.sampling import SamplerConfig, make_scheduler
from eediff.errors import EediffError


@pytest.fixture(scope="module")
def pipe():
    return eediff.EEDiffPipeline.from_pretrained("dit-fmnist-D4")


def cli_images(tmp_path, *args):
    out = str(tmp_path / "grid.png")
    res = CliRunner().invoke(app, ["sample", "--model", "dit-fmnist-D4", "--out", out, "--save-npz", "--no-progress", *args])
    assert res.exit_code == 0, res.output
    return np.load(str(tmp_path / "grid.npz"))["arr_0"]


def test_same_images_as_the_cli_for_the_same_seeds(pipe, tmp_path):
    ref = cli_images(tmp_path, "-n", "3", "--seed", "5", "--sampler", "ddim", "--steps", "4", "--class-labels", "1,7,9", "--precision", "fp32")
    out = pipe(class_labels=[1, 7, 9], num_inference_steps=4, seed=5, scheduler="ddim", output_type="np", progress=False)
    assert np.array_equal(out.images, ref)
    assert out.result.compute_fraction < 0.8  # sampled with the schedule it was tuned for (D4-DiT), as the CLI does


def test_output_types_generators_and_errors(pipe):
    kw = dict(class_labels=[2, 3], num_inference_steps=3, scheduler="ddim", progress=False)
    pil = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 2 and pil[0].size == (28, 28) and pil[0].mode == "L"
    again = pipe(**kw, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.array_equal(np.stack([np.asarray(p) for p in pil]), again[..., 0])  # a generator's seed reproduces the images
    other = pipe(**kw, generator=torch.Generator().manual_seed(1), output_type="np").images
    assert not np.array_equal(other, again)
    pt = pipe(**kw, generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="pt").images
    assert pt.shape == (2, 1, 28, 28) and 0 <= float(pt.min()) and float(pt.max()) <= 1
    with pytest.raises(EediffError, match="one per image"):
        pipe(**kw, generator=[torch.Generator()])
    with pytest.raises(EediffError, match="output_type"):
        pipe(**kw, output_type="jpeg")


def test_a_scheduler_instance_keeps_its_options_on_the_models_noise_schedule(pipe):
    user = DPMSolverMultistepScheduler(beta_start=0.5, beta_end=0.9, use_karras_sigmas=True)  # betas: not this model's
    cfg = SamplerConfig.from_scheduler(user, 5)
    built = make_scheduler(cfg, pipe.loaded.process, learned_sigma=False)
    assert built.config.use_karras_sigmas and built.config.beta_start == pipe.loaded.process.beta_start
    a = pipe(num_images=2, num_inference_steps=5, scheduler=user, output_type="np", progress=False).images
    b = pipe(num_images=2, num_inference_steps=5, scheduler="dpm-solver++", output_type="np", progress=False).images
    assert not np.array_equal(a, b)  # Karras sigmas change the trajectory


def test_save_and_load_round_trip(pipe, tmp_path):
    path = pipe.save_pretrained(str(tmp_path / "m"))
    again = eediff.EEDiffPipeline.from_pretrained(str(tmp_path / "m"))
    assert again.loaded.tuned_for.name == "D4-DiT"
    for k, v in again.model.state_dict().items():
        assert torch.equal(v.float(), pipe.model.state_dict()[k].float()), k
    with pytest.raises(EediffError, match="exists"):
        pipe.save_pretrained(str(tmp_path / "m"))
    assert path.endswith("model.safetensors")


@pytest.mark.parametrize("kernels, grey", [("inductor", 5.0), ("fp8", 25.0)])
def test_fast_path_on_the_pipeline_and_back(kernels, grey):
    """enable_fast_path: the fp32 images up to bf16 (and, with kernels='fp8', e4m3 GEMM) rounding, which a 4-step
    DDIM amplifies: mean absolute difference under ``grey`` levels of 255 (measured 3.1 and 15.0); and
    disable_fast_path gives the exact fp32 images back."""
    p = eediff.EEDiffPipeline.from_pretrained("dit-fmnist-D4")
    kw = dict(class_labels=[0, 5], num_inference_steps=4, seed=3, scheduler="ddim", output_type="np", progress=False)
    ref = p(**kw).images.astype(np.float64)
    h = p.enable_fast_path(eediff.FastPathConfig(kernels=kernels))
    fast = p(**kw).images.astype(np.float64)
    assert h.kernels.kernels == kernels and 0 < np.abs(fast - ref).mean() < grey
    p.disable_fast_path()
    assert np.array_equal(p(**kw).images, ref)


def test_a_vae_folder_it_cannot_load_is_one_error(tmp_path):
    """from_pretrained(vae=FOLDER) loads through io.load_vae: a folder without config.json is a CheckpointError
    naming it, locally, before any download is tried."""
    from eediff.io import CheckpointError

    with pytest.raises(CheckpointError, match="vae '.*' has no config.json"):
        eediff.EEDiffPipeline.from_pretrained("dit-fmnist", vae=str(tmp_path))
