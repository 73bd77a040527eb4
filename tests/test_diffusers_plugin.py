"""eediff.diffusers: early exits inside unmodified diffusers pipelines, and the DiT export, on tiny random
models built here (CPU, float32)."""

import copy
import os

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel, PixArtTransformer2DModel

import eediff
import eediff.diffusers as ed
from eediff.errors import EediffError
from eediff.exits.schedule import get_schedule


def tiny_dit(num_classes=1000, layers=4, seed=0):
    torch.manual_seed(seed)
    m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=layers,
                              sample_size=8, patch_size=2, num_embeds_ada_norm=num_classes, norm_num_groups=4).eval()
    with torch.no_grad():  # diffusers zero-initialises the gates; random gates make every block matter
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def tiny_pipe(transformer):
    torch.manual_seed(1)
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=8).eval()
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, labels=(1, 2, 3), steps=6, cfg=1.0):
    return pipe(class_labels=list(labels), num_inference_steps=steps, guidance_scale=cfg, generator=torch.Generator().manual_seed(0),
                output_type="pt").images


def ff_rows(transformer):
    """Rows through each block's feed-forward, counted by forward hooks (independent of eediff's counter)."""
    seen = [0]
    hooks = [b.ff.register_forward_hook(lambda m, a, o: seen.__setitem__(0, seen[0] + a[0].shape[0])) for b in transformer.transformer_blocks]
    return seen, hooks


def truncated(transformer, k):
    """A copy of the transformer with only its first k blocks: the hand-built reference of depth k."""
    t = copy.deepcopy(transformer)
    t.transformer_blocks = torch.nn.ModuleList(list(t.transformer_blocks)[:k])
    return t


SCHED = "4,3,2,1"  # depth by t/1000 in [0,.25), [.25,.5), [.5,.75), [.75,1]


def test_blocks_called_per_step_follow_the_schedule():
    tr = tiny_dit()
    pipe = tiny_pipe(tr)
    h = ed.apply_early_exit(tr, ed.ExitConfig(schedule=SCHED))
    seen, hooks = ff_rows(tr)
    run(pipe, steps=6)
    ts = pipe.scheduler.timesteps
    expected = 3 * sum(int(get_schedule(SCHED).active_blocks(float(t) / 1000, 4)) for t in ts)
    assert seen[0] == expected == h.blocks_run
    assert expected < 3 * 4 * len(ts)  # the schedule really cut blocks
    for x in hooks:
        x.remove()


def test_cfg_batch_exits_per_row_and_counts_both_halves():
    tr = tiny_dit()
    pipe = tiny_pipe(tr)
    ed.apply_early_exit(tr, ed.ExitConfig(schedule=SCHED))
    seen, _ = ff_rows(tr)
    run(pipe, labels=(1, 2), steps=5, cfg=2.0)
    expected = 4 * sum(int(get_schedule(SCHED).active_blocks(float(t) / 1000, 4)) for t in pipe.scheduler.timesteps)
    assert seen[0] == expected


def test_rows_at_different_timesteps_each_get_their_depth():
    tr = tiny_dit()
    x = torch.randn(4, 4, 8, 8)
    t = torch.tensor([900, 100, 600, 300])
    y = torch.tensor([1, 2, 3, 1000])  # the last row is the CFG null label
    refs = [truncated(tr, int(get_schedule(SCHED).active_blocks(float(ti) / 1000, 4)))(x[i:i + 1], timestep=t[i:i + 1], class_labels=y[i:i + 1]).sample
            for i, ti in enumerate(t)]
    ed.apply_early_exit(tr, ed.ExitConfig(schedule=SCHED))
    with torch.no_grad():
        out = tr(x, timestep=t, class_labels=y).sample
        alone = torch.cat([tr(x[i:i + 1], timestep=t[i:i + 1], class_labels=y[i:i + 1]).sample for i in range(4)])
    torch.testing.assert_close(out, torch.cat(refs).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, alone, rtol=1e-5, atol=1e-5)


def test_remove_restores_bit_exact_and_full_is_a_no_op():
    tr = tiny_dit()
    pipe = tiny_pipe(tr)
    before = run(pipe)
    h = ed.apply_early_exit(tr, ed.ExitConfig(schedule=SCHED))
    cut = run(pipe)
    assert not torch.equal(cut, before)
    h.remove()
    assert torch.equal(run(pipe), before)
    h = ed.apply_early_exit(tr, ed.ExitConfig(schedule="full"))
    assert torch.equal(run(pipe), before)
    h.remove()
    ed.apply_early_exit(tr, ed.ExitConfig(schedule="4,4,4"))
    assert torch.equal(run(pipe), before)


def test_pixart_per_row():
    torch.manual_seed(0)
    tr = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=4, sample_size=8,
                                  patch_size=2, cross_attention_dim=16, caption_channels=12, norm_num_groups=4).eval()
    with torch.no_grad():
        for p in tr.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, text = torch.randn(3, 4, 8, 8), torch.randn(3, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    t = torch.tensor([800, 50, 400])
    kw = lambda i: dict(encoder_hidden_states=text[i:i + 1], timestep=t[i:i + 1], encoder_attention_mask=mask[i:i + 1],  # noqa: E731
                        added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    with torch.no_grad():
        refs = torch.cat([truncated(tr, int(get_schedule(SCHED).active_blocks(float(t[i]) / 1000, 4)))(x[i:i + 1], **kw(i)).sample for i in range(3)])
        ed.apply_early_exit(tr, ed.ExitConfig(schedule=SCHED))
        out = tr(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask, added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    torch.testing.assert_close(out, refs, rtol=1e-5, atol=1e-5)


def test_under_torch_compile():
    tr = tiny_dit()
    x, t, y = torch.randn(4, 4, 8, 8), torch.tensor([900, 100, 600, 300]), torch.tensor([1, 2, 3, 4])
    ed.apply_early_exit(tr, ed.ExitConfig(schedule=SCHED))
    with torch.no_grad():
        eager = tr(x, timestep=t, class_labels=y).sample
        compiled = torch.compile(tr, backend="eager")(x, timestep=t, class_labels=y).sample
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)


def test_config_and_apply_errors():
    with pytest.raises(eediff.ScheduleError):
        ed.ExitConfig(schedule="nonsense")
    with pytest.raises(EediffError, match="num_train_timesteps"):
        ed.ExitConfig(num_train_timesteps=0)
    tr = tiny_dit()
    with pytest.raises(eediff.ScheduleError):
        ed.apply_early_exit(tr, ed.ExitConfig(schedule="D4-DiT"))  # 28 blocks asked of a 4-block model
    ed.apply_early_exit(tr, ed.ExitConfig(schedule=SCHED))
    with pytest.raises(EediffError, match="already applied"):
        ed.apply_early_exit(tr, ed.ExitConfig(schedule=SCHED))


@pytest.mark.parametrize("shift", [1, 0])
def test_export_computes_what_the_eediff_model_computes(shift):
    model = eediff.build_model("DiT-S/2", input_size=8, in_channels=4, depth=3, hidden_size=32, num_heads=2, num_classes=10,
                               time_freq_shift=shift, mlp_norm_eps=1e-6).eval()
    with torch.no_grad():  # (the fixed sin-cos position table stays as it is: diffusers recomputes it)
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.add_(0.05 * torch.randn_like(p))
    tr, facts = ed.to_diffusers(model)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.tensor([3, 10])
    with torch.no_grad():
        ref, out = model(x, t, y), tr(x, timestep=t, class_labels=y).sample
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # the exported module: the same function
    if shift == 1:  # diffusers' own constant: a plain from_pretrained is exact too
        assert facts["time_feature_error"] < 1e-5
    else:  # official shift 0: a plain from_pretrained would see other time features, and the export says so
        assert facts["time_feature_error"] > 1e-3
    back = eediff.load_model(tr).model  # and the conversion back gives the same weights
    for k, v in back.state_dict().items():
        if k != "pos_embed":
            assert torch.equal(v, model.state_dict()[k]), k
    assert back.config.time_freq_shift == shift and back.config.num_classes == 10
    # DiTPipeline's null label is 1000 whatever the model: the 10-class table is widened, the null row at 1000
    assert tr.config.num_embeds_ada_norm == 1000 and facts["num_classes"] == 10
    with torch.no_grad():
        null_ours = model(x, t, torch.tensor([10, 10]))
        torch.testing.assert_close(tr(x, timestep=t, class_labels=torch.tensor([1000, 1000])).sample, null_ours, rtol=1e-5, atol=1e-5)


def test_save_diffusers_folder_runs_in_dit_pipeline(tmp_path):
    from eediff.zoo import resolve_model

    loaded = resolve_model("dit-fmnist-D4")
    folder = str(tmp_path / "transformer")
    ed.save_diffusers(loaded, folder)
    assert sorted(os.listdir(folder)) == ["config.json", "diffusion_pytorch_model.safetensors", "eediff.json", "exit_schedule.json",
                                          "scheduler_config.json"]
    with pytest.raises(EediffError, match="not empty"):
        ed.save_diffusers(loaded, folder)
    plain = DiTTransformer2DModel.from_pretrained(folder).eval()
    tr = ed.load_transformer(folder).eval()
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 800]), torch.tensor([0, 7])
    with torch.no_grad():
        ref = loaded.model.float()(x, t, y)
        mem, _ = ed.to_diffusers(loaded.model)  # in memory: the model's own position table, the same function
        torch.testing.assert_close(mem(x, timestep=t, class_labels=y).sample, ref, rtol=1e-4, atol=1e-4)
        # the shipped checkpoint holds its sin-cos position table in fp16 and diffusers recomputes it in fp32 on load:
        # with that table the loaded folder is the same function as the model, and the table's rounding alone moves
        # the output by a few thousandths (fp16 spacing 5e-4 at |pos| < 1)
        exact = copy.deepcopy(loaded.model).float()
        exact.pos_embed.data.copy_(tr.pos_embed.pos_embed)
        out = tr(x, timestep=t, class_labels=y).sample
        torch.testing.assert_close(out, exact(x, t, y), rtol=1e-4, atol=1e-4)
        assert (out - ref).abs().max() < 1e-2
        assert (plain(x, timestep=t, class_labels=y).sample - ref).abs().max() > 1e-2  # the time shift matters more
    pipe = DiTPipeline(transformer=tr, vae=ed.PixelSpace(), scheduler=DDIMScheduler.from_pretrained(folder))
    pipe.set_progress_bar_config(disable=True)
    h = ed.apply_early_exit(tr, ed.ExitConfig(schedule=os.path.join(folder, "exit_schedule.json")))
    img = run(pipe, labels=(0, 7), steps=4)
    assert img.shape == (2, 1, 28, 28) and torch.isfinite(img).all()
    assert h.policy.schedule.name == "D4-DiT"


def test_exported_folder_loads_back_and_guides_in_dit_pipeline(tmp_path):
    """An exported 10-class, time-shift-0 model: eediff loads the folder back as the same function (its
    classes and shift from eediff.json); DiTPipeline's classifier-free guidance (null label 1000) runs on it;
    a broken eediff.json is refused in one line."""
    from diffusers import DPMSolverMultistepScheduler

    from eediff.io import CheckpointError

    loaded = eediff.load_model(eediff.build_model("DiT-S/2", input_size=8, in_channels=1, depth=2, hidden_size=32, num_heads=2,
                                                   num_classes=10, class_dropout_prob=0.1, time_freq_shift=0, mlp_norm_eps=1e-6).eval())
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if name != "pos_embed":
                p.add_(0.05 * torch.randn_like(p))
    folder = str(tmp_path / "transformer")
    ed.save_diffusers(loaded, folder)
    back = eediff.load_model(folder).model
    assert back.config.num_classes == 10 and back.config.time_freq_shift == 0
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([5, 500, 900]), torch.tensor([0, 9, 10])
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, y), loaded.model(x, t, y), rtol=0, atol=2e-3)  # (diffusers recomputes pos_embed)
    tr = ed.load_transformer(folder)
    pipe = DiTPipeline(transformer=tr, vae=ed.PixelSpace(), scheduler=DPMSolverMultistepScheduler.from_pretrained(folder))
    pipe.set_progress_bar_config(disable=True)
    img = pipe(class_labels=[0, 9], num_inference_steps=3, guidance_scale=4.0, output_type="np").images
    assert img.shape == (2, 8, 8, 1) and np.isfinite(img).all()
    with open(os.path.join(folder, "eediff.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(CheckpointError, match="eediff.json' is unreadable"):
        eediff.load_model(folder)


def test_readme_export_example_runs(tmp_path):
    """The README's CPU example, as written there (fewer steps): export, load, pipeline, exits, PIL images."""
    from diffusers import DPMSolverMultistepScheduler
    from typer.testing import CliRunner

    from eediff.cli import app

    folder = str(tmp_path / "exported" / "transformer")
    res = CliRunner().invoke(app, ["export", "--model", "dit-fmnist-D4", "--out", folder])
    assert res.exit_code == 0, res.output
    tr = ed.load_transformer(folder)
    pipe = DiTPipeline(transformer=tr, vae=ed.PixelSpace(), scheduler=DPMSolverMultistepScheduler.from_pretrained(folder))
    pipe.set_progress_bar_config(disable=True)
    h = ed.apply_early_exit(tr, ed.ExitConfig(schedule=os.path.join(folder, "exit_schedule.json")))
    images = pipe(class_labels=[0, 1, 7, 9], num_inference_steps=3, guidance_scale=1.5).images
    assert len(images) == 4 and images[0].size == (28, 28)
    assert 0 < h.blocks_run < 2 * 4 * 28 * 3  # guided: both halves of the batch
