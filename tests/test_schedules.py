"""Exit schedules: Table 2 presets, parsing, validation, original-timestep keying, compute fractions."""

import json

import pytest
import torch

import eediff
from eediff import ScheduleError, get_schedule

# Table 2 of the paper, five 0.2-wide intervals from the data (t=0) to the noise (t=1).
TABLE2 = {
    "D1-DiT": [28, 26, 24, 22, 20],
    "D3-DiT": [28, 25, 22, 19, 16],
    "D4-DiT": [28, 24, 20, 16, 12],
    "D1-U-ViT": [6, 5, 4, 3, 2],
    "D2-U-ViT": [6, 5, 3, 2, 1],
    "D3-U-ViT": [6, 4, 3, 2, 1],
    "D4-U-ViT": [5, 4, 2, 2, 1],
    "D5-U-ViT": [5, 4, 2, 1, 1],
    "D6-U-ViT": [5, 3, 2, 1, 1],
}


@pytest.mark.parametrize("name", TABLE2)
def test_presets_equal_table2(name):
    s = get_schedule(name)
    for i, k in enumerate(TABLE2[name]):
        for t in (0.2 * i, 0.2 * i + 0.1, 0.2 * i + 0.1999):
            assert s.active_blocks(t) == k, (name, t)
    assert s.active_blocks(1.0) == TABLE2[name][-1]


def test_d6_dit_fine_intervals_and_demo():
    d6 = get_schedule("D6-DiT")
    expected = [28, 28, 24, 22, 20, 18, 12, 10, 8, 6]  # 28 on [0, 0.2], then 0.1-wide intervals
    assert [d6.active_blocks(0.1 * i + 0.05) for i in range(10)] == expected
    demo = get_schedule("demo")
    # released code: bins of 100 over the original 0..999 index, t = index / 1000
    assert [demo.active_blocks(idx / 1000) for idx in (0, 99, 100, 199, 200, 500, 799, 800, 999)] == [28, 28, 28, 28, 24, 20, 16, 12, 12]
    assert all(demo.active_blocks(i / 1000) == [28, 28, 24, 24, 20, 20, 16, 16, 12, 12][i // 100] for i in range(1000))
    assert get_schedule("full").active_blocks(0.5, 28) == 28
    assert get_schedule("noise-easy").active_blocks(0.9) < get_schedule("noise-easy").active_blocks(0.1)
    assert get_schedule("data-easy").active_blocks(0.9) > get_schedule("data-easy").active_blocks(0.1)


def test_tensor_and_float_agree():
    s = get_schedule("D6-DiT")
    ts = torch.linspace(0, 1, 1001, dtype=torch.float64)
    assert s.active_blocks(ts).tolist() == [s.active_blocks(float(t)) for t in ts]


def test_custom_specs():
    s = get_schedule("28,24,20,16,12")
    assert [s.active_blocks(x) for x in (0.1, 0.3, 0.5, 0.7, 0.9)] == [28, 24, 20, 16, 12]
    j = get_schedule('{"boundaries": [0, 0.5, 0.75, 1], "blocks": [28, 14, 7]}')
    assert [j.active_blocks(x) for x in (0.49, 0.5, 0.8, 1.0)] == [28, 14, 7, 7]
    assert get_schedule(j.to_spec()) == j


def test_json_file(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"name": "mine", "boundaries": [0, 0.3, 1], "blocks": [6, 2]}))
    assert get_schedule(str(p)).name == "mine"


@pytest.mark.parametrize(
    "spec,match",
    [
        ("", "empty"),
        ("28,,20", "empty entry"),
        ("28,24,x", "not an integer"),
        ("28,2.5", "not an integer"),
        ("28,-4", "negative"),
        ("no-such-preset", "unknown schedule"),
        ('{"boundaries": [0, 0.5, 0.9], "blocks": [28, 12]}', "cover"),
        ('{"boundaries": [0.1, 0.5, 1], "blocks": [28, 12]}', "cover"),
        ('{"boundaries": [0, 0.6, 0.5, 1], "blocks": [28, 20, 12]}', "increasing"),
        ('{"boundaries": [0, 0.5, 0.5, 1], "blocks": [28, 20, 12]}', "increasing"),
        ('{"boundaries": [0, NaN, 1], "blocks": [28, 12]}', "finite"),
        ('{"boundaries": [0, 1], "blocks": []}', "empty"),
        ('{"boundaries": [0, 0.5, 1], "blocks": [28]}', "boundaries"),
        ('{"boundaries": [0, 1], "blocks": [1.5]}', "not an integer"),
        ('{"blocks": [28, 12]', "does not parse"),
        ("missing-file.json", "does not exist"),
    ],
)
def test_malformed_specs(spec, match):
    with pytest.raises(ScheduleError, match=match) as e:
        get_schedule(spec)
    assert "\n" not in str(e.value)


def test_more_blocks_than_model():
    with pytest.raises(ScheduleError, match="the model has 12"):
        get_schedule("D4-DiT").check(12)
    with pytest.raises(ScheduleError, match="defined for 6 schedulable blocks but the model has 14"):
        get_schedule("D4-U-ViT").check(14)  # e.g. U-ViT-H/2 has 14 decoder blocks
    assert get_schedule("D4-U-ViT").check(6).name == "D4-U-ViT"
    for K in (1, 2, 3, 14):  # the suggested rescaled preset itself fits and runs a block at every t
        with pytest.raises(ScheduleError, match="e.g. --schedules '") as e:
            get_schedule("D6-U-ViT").check(K, flag="--schedules")
        suggested = get_schedule(str(e.value).split("'")[-2]).check(K)
        assert suggested.zero_block_warning() is None and min(suggested.blocks) >= 1
    with pytest.raises(ScheduleError, match=r"\[0, 1\]"):
        get_schedule("D4-DiT").active_blocks(float("nan"))
    with pytest.raises(ScheduleError, match=r"\[0, 1\]"):
        get_schedule("D4-DiT").active_blocks(1.5)


class Recorder(torch.nn.Module):
    """A fake DiT that records (network time, active_blocks) of every call and predicts zero noise."""

    arch, in_channels, input_size, num_classes, learn_sigma, num_exit_blocks = "DiT", 1, 4, 0, False, 28

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, y=None, active_blocks=None):
        assert active_blocks is None or active_blocks.shape == (x.shape[0],)  # the policy decides per row
        self.calls.append((float(t[0]), None if active_blocks is None else int(active_blocks[0])))
        return torch.zeros_like(x)

    def flops(self, k=None):
        return 10.0 + 2.0 * (28 if k is None else k)


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddpm", 7), ("dpm-solver++", 6), ("euler-maruyama", 9)])
def test_respaced_samplers_key_on_original_timestep(sampler, steps):
    from eediff.diffusion.sampling import SamplerConfig

    m = Recorder()
    s = get_schedule("D4-DiT")
    res = eediff.generate(m, eediff.DiscreteVP(), SamplerConfig(sampler, steps), n=1, batch_size=1, schedule=s, progress=False)
    assert len(m.calls) == steps
    assert m.calls[0][0] > 900  # the first step is near the noise, on the original 0..999 scale
    for t_model, k in m.calls:
        expect = s.active_blocks(t_model / 1000)
        assert k == expect, (t_model, k)
    assert any(k == 12 for _, k in m.calls) and any(k == 28 for _, k in m.calls)
    blocks = [k for _, k in m.calls]
    assert res.mean_blocks == pytest.approx(sum(blocks) / len(blocks))
    assert res.compute_fraction == pytest.approx(sum(10 + 2 * b for b in blocks) / (len(blocks) * (10 + 56)))
    assert res.model_flops == pytest.approx(sum(10 + 2 * b for b in blocks))  # one image, no guidance


def test_compute_fraction_from_flops():
    with torch.device("meta"):
        m = eediff.build_model("DiT-XL/2")
    s = get_schedule("D4-DiT")
    ts = [i / 1000 for i in range(1000)]
    full, zero = m.flops(28), m.flops(0)
    per_block = (full - zero) / 28
    expect = (zero + 20 * per_block) / full  # D4 averages exactly 20 blocks over uniform t
    assert s.compute_fraction(m.flops, 28, ts) == pytest.approx(expect, rel=1e-12)
    assert 0.70 < expect < 0.72
