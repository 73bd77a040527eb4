"""What several test files share: tiny backbones with every weight random (an 8x8x4 input, 16 patch tokens;
adaLN-Zero and zero-initialised heads would otherwise make most of the network trivial), the tiny training
config, a one-thread fixture and a folder digest."""

import hashlib
import json
import os

import pytest
import torch

import eediff

# --model-config of the tiny DiT the training tests run
TINY_DIT = json.dumps(dict(patch_size=4, hidden_size=32, depth=4, num_heads=4))


@pytest.fixture(autouse=True)
def one_thread():
    """Torch on one thread, for every test of a module that imports this fixture (training tests compare runs
    bit for bit, and share 2 cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def digest(folder) -> dict:
    """sha256 of every file under ``folder``, by relative path: proof that nothing there changed."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def random_weights(model, std: float):
    """Every weight of ``model`` drawn from N(0, std²), the fixed sin-cos position table excepted (a fresh DiT's
    adaLN-Zero and zero-initialised head would make every depth alike)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, std)
    return model


def tiny_backbone(arch: str, std: float = 0.1, seed: int = 0):
    torch.manual_seed(seed)
    if arch == "DiT":
        m = eediff.build_model("DiT", input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=6, num_heads=4, num_classes=10)
    else:
        m = eediff.build_model("U-ViT", img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=8, num_heads=4,
                               num_classes=11, null_label=True)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, std)
    return m.eval()
