"""Models shipped inside the package (safetensors, fp16)."""

from __future__ import annotations

import os

HERE = os.path.dirname(__file__)
# name -> file; the first entry is what `eediff sample` uses when no --model is given.
# Trained on Fashion-MNIST (60k train images, pixel space) on one H100; how, with the exact commands and configs,
# in src/eediff/zoo/README.md. "-D4" = ASE fine-tuned for the D4 schedule (recorded inside).
# The default is the fine-tuned DiT: the 29,000-step DiT's D4 fine-tune, classifier Frechet distance 1.56 at D4-DiT
# against its base's 0.96 at full depth (DPM-Solver++ 25), where the 42,500-step U-ViT's D4 fine-tune is 2.37
# against 0.35 (results/converge/v2/dit-ft/, uvit-ft/; README.md here).
SHIPPED: dict[str, str] = {
    "dit-fmnist-D4": "dit-fmnist-D4.safetensors",
    "dit-fmnist": "dit-fmnist.safetensors",
    "uvit-fmnist-D4": "uvit-fmnist-D4.safetensors",
    "uvit-fmnist": "uvit-fmnist.safetensors",
    # DeeDiff heads + backbone fine-tuned from the base models, threshold calibrated for 40% fewer layers
    "dit-fmnist-deediff": "dit-fmnist-deediff.safetensors",
    "uvit-fmnist-deediff": "uvit-fmnist-deediff.safetensors",
}


def path(name: str) -> str:
    return os.path.join(HERE, SHIPPED[name])


def default_model():
    """The shipped default model, or (until one is shipped) a small randomly initialised DiT."""
    from ..checkpoint import LoadedModel, load_model
    from ..models.registry import build_model, default_process

    for name, file in SHIPPED.items():
        if os.path.exists(os.path.join(HERE, file)):
            return load_model(os.path.join(HERE, file))
    import sys

    print("note: no shipped model yet: sampling from a small RANDOMLY INITIALISED DiT (28 blocks, width 128, 28x28x1)", file=sys.stderr)
    model = build_model("DiT", input_size=28, patch_size=4, in_channels=1, hidden_size=128, depth=28, num_heads=4, num_classes=10)
    return LoadedModel(model, default_process(model), None, {}, "random 28-block DiT (no shipped model yet)")


def resolve_model(spec: str | None):
    """A checkpoint path, a diffusers folder, a shipped name, a registry name (random weights) or the shipped default."""
    import sys

    from ..checkpoint import LoadedModel, load_model
    from ..models.registry import REGISTRY, build_model, default_process

    if spec is None:
        return default_model()
    if spec in SHIPPED:
        return load_model(path(spec))
    if spec in REGISTRY and not os.path.exists(spec):
        print(f"note: '{spec}' is a registry name: sampling from RANDOM weights (pass a checkpoint path for real images)", file=sys.stderr)
        model = build_model(spec)
        return LoadedModel(model, default_process(model), None, {}, spec)
    return load_model(spec)
