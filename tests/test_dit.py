"""DiT backbone: official names, hand-computed forward, exits, diffusers conversion."""

import math

import pytest
import torch
import torch.nn.functional as F

import eediff
from eediff.models.layers import get_2d_sincos_pos_embed


def official_keys(depth: int) -> set[str]:
    """The parameter names of facebookresearch/DiT models.py, written out by hand."""
    keys = {
        "pos_embed", "x_embedder.proj.weight", "x_embedder.proj.bias",
        "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias",
        "y_embedder.embedding_table.weight",
        "final_layer.linear.weight", "final_layer.linear.bias",
        "final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias",
    }
    for i in range(depth):
        for n in ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"]:
            keys |= {f"blocks.{i}.{n}.weight", f"blocks.{i}.{n}.bias"}
    return keys


def reference_forward(sd, x, t, y, depth_run, cfg):
    """DiT forward from the state dict with plain tensor ops (explicit softmax attention, no nn.Modules)."""
    D, p, H = cfg["hidden"], cfg["patch"], cfg["heads"]
    lin = lambda v, n: v @ sd[n + ".weight"].T + sd[n + ".bias"]
    ln = lambda v: (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-6)
    tok = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    tok = tok + sd["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    tf = torch.cat([torch.cos(args), torch.sin(args)], -1)
    temb = lin(F.silu(lin(tf, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = temb + sd["y_embedder.embedding_table.weight"][y]
    gelu = lambda v: 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
    for i in range(depth_run):
        b = f"blocks.{i}."
        mod = lin(F.silu(c), b + "adaLN_modulation.1").chunk(6, dim=1)
        h = ln(tok) * (1 + mod[1][:, None]) + mod[0][:, None]
        B, N, _ = h.shape
        qkv = lin(h, b + "attn.qkv").reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
        att = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) / math.sqrt(D // H), -1)
        a = lin((att @ qkv[2]).transpose(1, 2).reshape(B, N, D), b + "attn.proj")
        tok = tok + mod[2][:, None] * a
        h = ln(tok) * (1 + mod[4][:, None]) + mod[3][:, None]
        tok = tok + mod[5][:, None] * lin(gelu(lin(h, b + "mlp.fc1")), b + "mlp.fc2")
    shift, scale = lin(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    out = lin(ln(tok) * (1 + scale[:, None]) + shift[:, None], "final_layer.linear")
    B, N, _ = out.shape
    g = int(N**0.5)
    C = out.shape[-1] // (p * p)
    return out.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, g * p, g * p)


CFG = dict(hidden=32, patch=2, heads=4)


def test_official_names_and_strict_load(tiny_dit, tmp_path):
    assert set(tiny_dit.state_dict()) == official_keys(4)
    path = tmp_path / "official.pt"
    torch.save(tiny_dit.state_dict(), path)  # the official release is a plain state dict saved by torch.save
    loaded = eediff.load_model(str(path)).model
    assert loaded.config.depth == 4 and loaded.config.hidden_size == 32 and loaded.config.learn_sigma
    for k, v in tiny_dit.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    fresh = eediff.build_model("DiT", input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=4, num_classes=10)
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)


def test_registry_sizes():
    with torch.device("meta"):  # shapes and FLOPs only
        m = eediff.build_model("DiT-XL/2", input_size=32, num_classes=1000)
    assert (m.config.depth, m.config.hidden_size, m.config.num_heads, m.config.patch_size) == (28, 1152, 16, 2)
    # 237.2 GFLOP per image forward at 256x256 (latent 32x32), as measured for the official code
    assert abs(m.flops() / 1e9 - 237.2) < 0.1
    assert eediff.build_model("DiT-S/8").config.patch_size == 8
    with pytest.raises(ValueError, match="no config option"):
        eediff.build_model("DiT-S/2", hidden=3)


def test_pos_embed_is_sincos(tiny_dit):
    ref = torch.from_numpy(get_2d_sincos_pos_embed(32, 4)).float()
    assert torch.allclose(tiny_dit.pos_embed[0], ref)


@pytest.mark.parametrize("k", [0, 1, 3, 4])
def test_forward_matches_hand_computed(tiny_dit, k):
    torch.manual_seed(1)
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0.0, 417.0, 999.0]), torch.tensor([1, 7, 10])
    sd = tiny_dit.state_dict()
    with torch.no_grad():
        ours = tiny_dit(x, t, y, active_blocks=k)
    ref = reference_forward(sd, x, t, y, k, CFG)
    # fp32 rounding: SDPA vs explicit softmax, fused vs unfused GELU/LayerNorm
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_full_depth_exit_is_bit_exact_noop(tiny_dit):
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 900.0]), torch.tensor([0, 5])
    with torch.no_grad():
        assert torch.equal(tiny_dit(x, t, y), tiny_dit(x, t, y, active_blocks=4))
    with pytest.raises(ValueError, match="outside"):
        tiny_dit(x, t, y, active_blocks=5)


def _random_diffusers_dit():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=3,
                              sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=1)  # DiTPipeline hard-codes null label 1000
    with torch.no_grad():
        # one shared embedder (as DiT) but random values everywhere else
        for n, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1)
        e0 = m.transformer_blocks[0].norm1.emb
        for blk in m.transformer_blocks[1:]:
            blk.norm1.emb.load_state_dict(e0.state_dict())
    return m.eval()


def test_diffusers_folder_converts_exactly(tmp_path):
    dm = _random_diffusers_dit()
    dm.save_pretrained(tmp_path / "transformer")
    ours = eediff.load_model(str(tmp_path / "transformer")).model
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 800]), torch.tensor([2, 1000])
    with torch.no_grad():
        ref = dm(x, timestep=t, class_labels=y).sample
        out = ours(x, t.float(), y)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",), norm_num_groups=4).eval()


@pytest.mark.parametrize("sampler,steps,cfg", [("ddim", 8, 1.0), ("ddim", 8, 2.0), ("dpm-solver++", 6, 1.5)])
def test_matches_diffusers_dit_pipeline(tmp_path, sampler, steps, cfg):
    from diffusers import DiTPipeline

    from eediff.diffusion.sampling import SamplerConfig, make_scheduler

    dm = _random_diffusers_dit()
    dm.save_pretrained(tmp_path / "t")
    loaded = eediff.load_model(str(tmp_path / "t"))
    vae = _tiny_vae()
    sc = SamplerConfig(sampler, steps)
    pipe = DiTPipeline(transformer=dm, vae=vae, scheduler=make_scheduler(sc, loaded.process, learned_sigma=True))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(class_labels=[3], guidance_scale=cfg, generator=torch.Generator().manual_seed(7), num_inference_steps=steps, output_type="pt").images
    res = eediff.generate(loaded.model, loaded.process, sc, n=1, batch_size=1, seed=7, cfg_scale=cfg, class_labels=[3], vae=vae, progress=False)
    ours = (res.images + 1) / 2
    torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler-maruyama", "dpm-solver++", "EulerAncestralDiscreteScheduler"])
def test_batch_vs_single_invariance(tiny_dit, sampler, float64):
    from eediff.diffusion.sampling import SamplerConfig

    tiny_dit = tiny_dit.double()

    sc = SamplerConfig(sampler, 6)
    kw = dict(seed=11, schedule="4,3,2,2,1", cfg_scale=1.5, progress=False)
    both = eediff.generate(tiny_dit, eediff.DiscreteVP(), sc, n=4, batch_size=4, **kw).images
    for i in (0, 3):
        alone = eediff.generate(tiny_dit, eediff.DiscreteVP(), sc, n=1, batch_size=1, seed_offset=i, **{**kw}).images
        torch.testing.assert_close(both[i:i + 1], alone, rtol=0, atol=1e-6)
    split = eediff.generate(tiny_dit, eediff.DiscreteVP(), sc, n=4, batch_size=3, **kw).images
    torch.testing.assert_close(both, split, rtol=0, atol=1e-6)


def test_cfg_three_channel_flag(tiny_dit):
    from eediff.diffusion.sampling import Denoiser

    x, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    with torch.no_grad():
        cond = tiny_dit(x, torch.full((2,), 500.0), y)
        unc = tiny_dit(x, torch.full((2,), 500.0), torch.tensor([10, 10]))
        all4 = Denoiser(tiny_dit, eediff.DiscreteVP(), cfg_scale=3.0)(x, 500.0, y)
        off3 = Denoiser(tiny_dit, eediff.DiscreteVP(), cfg_scale=3.0, cfg_channels=3)(x, 500.0, y)
    g = unc + 3.0 * (cond - unc)
    torch.testing.assert_close(all4[:, :4], g[:, :4]); torch.testing.assert_close(all4[:, 4:], cond[:, 4:])
    torch.testing.assert_close(off3[:, :3], g[:, :3]); torch.testing.assert_close(off3[:, 3:], cond[:, 3:])
