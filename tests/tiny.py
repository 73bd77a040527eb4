"""Tiny backbones with every weight random, shared by the per-row, DeeDiff and ToMe tests (an 8x8x4 input,
16 patch tokens; adaLN-Zero and zero-initialised heads would otherwise make most of the network trivial)."""

import torch

import eediff


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
