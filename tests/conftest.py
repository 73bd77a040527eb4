import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
# Triton kernels (eediff.triton_ops) run on CPU tensors in its interpreter where a test asks for it
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def tiny_dit():
    """A 4-block DiT with every weight random (adaLN-Zero init would make most of the network the identity)."""
    import eediff

    torch.manual_seed(0)
    m = eediff.build_model("DiT", input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=4, num_classes=10)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n != "pos_embed":
                p.copy_(torch.randn_like(p) * 0.1)
    return m.eval()


@pytest.fixture
def float64():
    """Run a test in float64: equivalence tests (batch vs single, prefix vs per-group) then compare up to
    rounding of the final cast, instead of float32 GEMM blocking differences that vary with the CPU."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
