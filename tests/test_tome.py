"""Token merging on self-attention: identity at ratio 0, token counts, removal, U-ViT extras, tomesd agreement."""

import pytest
import torch
from tomesd.merge import bipartite_soft_matching_random2d

import eediff
from eediff.tome import ToMeConfig, ToMeError, apply_tome, chosen_blocks, merged_count
from tiny import tiny_backbone


def _model(arch):
    return tiny_backbone(arch)


def _inputs(B=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, 4, 8, 8, generator=g), torch.rand(B, generator=g) * 999, torch.randint(0, 10, (B,), generator=g)


def _attention_inputs(m):
    """Tokens entering each attention's qkv projection (after merging)."""
    seen = []
    hooks = [a.qkv.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1])) for a in m.attentions()]
    return seen, hooks


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
def test_ratio_zero_is_exactly_the_model_and_remove_restores_it(arch):
    m = _model(arch)
    x, t, y = _inputs()
    with torch.no_grad():
        ref, ref3 = m(x, t, y), m(x, t, y, active_blocks=3)
        h = apply_tome(m, ToMeConfig(ratio=0.0))
        assert torch.equal(m(x, t, y), ref)
        h.remove()
        h = apply_tome(m, ToMeConfig(ratio=0.5, schedule="F", blocks=3))
        assert not torch.allclose(m(x, t, y), ref)
        h.remove()
        assert torch.equal(m(x, t, y), ref) and torch.equal(m(x, t, y, active_blocks=3), ref3)
        assert m.attn_tokens is None


@pytest.mark.parametrize("arch", ["DiT", "U-ViT"])
def test_merged_blocks_see_fewer_tokens_and_flops_count_them(arch):
    m = _model(arch)
    x, t, y = _inputs()
    extras, grid = m.token_layout()
    N = extras + grid * grid
    n_blocks = len(m.attentions())
    full = m.flops()
    cfg = ToMeConfig(ratio=0.5, schedule="B", blocks=3)
    h = apply_tome(m, cfg)
    r = merged_count(cfg, grid)
    assert r == 8  # half of the 16 patch tokens; 4 dst tokens (2x2 cells) remain as targets
    seen, hooks = _attention_inputs(m)
    with torch.no_grad():
        m(x, t, y)
    for hk in hooks:
        hk.remove()
    chosen = chosen_blocks(cfg, n_blocks)
    assert chosen == [0, 1, n_blocks - 1]
    assert seen == [N - r if i in chosen else N for i in range(n_blocks)]
    assert m.attn_tokens == seen
    D, hidden = m.hidden_size, 4 * m.hidden_size
    saved_per_block = 2 * r * 4 * D * D + 4 * (N * N - (N - r) ** 2) * D  # qkv + proj on r tokens, attention scores
    assert m.flops() == pytest.approx(full - 3 * saved_per_block)
    assert hidden > 0
    h.remove()
    assert m.flops() == full


def test_uvit_extra_tokens_never_merge():
    m = _model("U-ViT")
    x, t, y = _inputs()
    extras, _ = m.token_layout()
    assert extras == 2
    attn = m.attentions()[0]
    outer, inner = [], []
    attn.register_forward_pre_hook(lambda mod, args: outer.append(args[0].clone()))
    attn.qkv.register_forward_pre_hook(lambda mod, args: inner.append(args[0].clone()))
    h = apply_tome(m, ToMeConfig(ratio=0.5, schedule="F", blocks=1))
    with torch.no_grad():
        out = m(x, t, y)
    h.remove()
    (before,), (after,) = outer, inner
    assert after.shape[1] == before.shape[1] - 8
    assert torch.equal(after[:, :extras], before[:, :extras])  # [label, time] pass through untouched
    tokens = before[:, extras:]
    merge, _ = bipartite_soft_matching_random2d(tokens, 4, 4, 2, 2, 8, no_rand=True)
    assert torch.equal(after[:, extras:], merge(tokens)) and torch.isfinite(out).all()


def test_merge_agrees_with_tomesd_called_directly():
    m = _model("DiT")
    attn = m.attentions()[2]
    tokens = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(3))
    h = apply_tome(m, ToMeConfig(ratio=0.5, schedule="F", blocks=3))
    with torch.no_grad():
        got = attn(tokens)
        merge, unmerge = bipartite_soft_matching_random2d(tokens, 4, 4, 2, 2, 8, no_rand=True)
        h.remove()
        want = unmerge(attn(merge(tokens)))
    assert torch.equal(got, want)


def test_bad_options_are_one_line_errors():
    m = _model("DiT")
    for cfg, msg in [(ToMeConfig(ratio=1.0), "ratio"), (ToMeConfig(schedule="X"), "schedule"), (ToMeConfig(blocks=99), "blocks"),
                     (ToMeConfig(sx=3), "divide")]:
        with pytest.raises(ToMeError, match=msg):
            apply_tome(m, cfg)
    h = apply_tome(m, ToMeConfig())
    with pytest.raises(ToMeError, match="already"):
        apply_tome(m, ToMeConfig())
    h.remove()


def test_schedules_pick_front_back_and_both_ends():
    assert chosen_blocks(ToMeConfig(schedule="F", blocks=3), 10) == [0, 1, 2]
    assert chosen_blocks(ToMeConfig(schedule="R", blocks=3), 10) == [7, 8, 9]
    assert chosen_blocks(ToMeConfig(schedule="B", blocks=4), 10) == [0, 1, 8, 9]
    assert chosen_blocks(ToMeConfig(schedule="B", blocks=0), 4) == [0, 1, 2, 3]


def test_sample_flag_counts_merged_flops_and_refuses_bad_ratios(tmp_path):
    import re
    import subprocess
    import sys

    torch.manual_seed(0)
    m = eediff.build_model("DiT", input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=4, num_heads=4, num_classes=3)
    p = str(tmp_path / "m.safetensors")
    eediff.save_model(p, m)
    exe = [sys.executable, "-m", "eediff.cli", "sample", "--model", p, "-n", "2", "--steps", "2", "--out", str(tmp_path / "g.png"), "--no-progress", "--overwrite"]
    r = subprocess.run(exe + ["--tome-ratio", "0.5", "--tome-blocks", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    frac = float(re.search(r"compute fraction: ([\d.]+)", r.stdout).group(1))
    h = apply_tome(m, ToMeConfig(ratio=0.5, blocks=2))
    want = m.flops()
    h.remove()
    assert frac == pytest.approx(want / m.flops(), abs=1e-3) and frac < 1
    assert "token merging: 50%" in r.stdout
    r = subprocess.run(exe + ["--tome-ratio", "1.5"], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.strip().splitlines() if "warn" not in ln.lower()]
    assert r.returncode == 2 and len(lines) == 1 and "--tome-ratio" in lines[0]


def test_tome_flags_take_either_case_and_are_refused_without_merging():
    """--tome-schedule f / r / b name the same blocks as F / R / B; a ToMe flag given while --tome-ratio is 0
    is refused (it would change nothing), not ignored."""
    from eediff.config import SampleConfig
    from eediff.tome import ToMeError

    assert SampleConfig(tome_ratio=0.5, tome_schedule="f").tome_config().schedule == "F"
    assert SampleConfig().tome_config() is None
    with pytest.raises(ToMeError, match="--tome-schedule tunes token merging, which is off"):
        SampleConfig(tome_schedule="R").tome_config()
