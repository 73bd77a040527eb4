"""Typed configurations. Each field is one CLI flag (``steps`` -> ``--steps``, ``batch_size`` -> ``--batch-size``);
``help`` and short flags live in the field metadata, so the CLI and the Python API cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def opt(default, help: str, short: str | None = None):
    return field(default=default, metadata={"help": help, "short": short})


@dataclass
class SampleConfig:
    model: str = opt(None, "checkpoint file, diffusers folder or registry name (random weights); default: the shipped fine-tuned model")
    schedule: str = opt(None, "exit schedule: preset, '28,24,20,16,12' or JSON (default: the schedule the checkpoint was tuned for, else full)")
    sampler: str = opt("ddim", "ddpm | ddim | dpm-solver++ | euler-maruyama | any diffusers scheduler class name")
    steps: int = opt(50, "number of sampling steps")
    cfg: float = opt(1.0, "classifier-free guidance scale (1 = off)")
    cfg_channels: int = opt(0, "guide only the first N output channels (3 = the official DiT code); 0 = all latent channels")
    class_labels: str = opt("", "comma-separated class labels, cycled over the images (default: 0,1,2,... cycled)")
    n: int = opt(64, "number of images", short="-n")
    batch_size: int = opt(32, "images per batch")
    seed: int = opt(0, "image i uses seed + i")
    out: str = opt("grid.png", "output PNG grid")
    save_npz: bool = opt(False, "also write the images as uint8 NHWC .npz next to --out")
    vae: str = opt(None, "diffusers AutoencoderKL folder, for latent models")
    device: str = opt("auto", "cpu | cuda | auto")
    precision: str = opt("auto", "fp32 | bf16 | auto (bf16 autocast on CUDA, fp32 on CPU)")
    progress: bool = opt(True, "show a progress bar")
