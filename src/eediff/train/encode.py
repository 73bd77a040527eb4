"""Precomputing VAE latents for latent diffusion training (``eediff encode``).

Each shard ``latents-00000.safetensors`` holds ``latents`` (n, C, h, w) = VAE posterior mean (or a sample)
times the VAE's ``scaling_factor`` (what a latent DiT is trained on) and, for labelled data, ``labels``.
The metadata records the scaling factor, the image size, the classes and the VAE folder.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..data import DataError, ImageData, load_dataset, load_image_folder
from ..io import atomic_write, check_vae_folder, load_vae


def _load_images(cfg) -> ImageData:
    src = cfg.images
    if src is None:
        raise DataError("pass --images (a folder of images, a .npz, fashion-mnist or mnist)")
    if os.path.isdir(src):
        return load_image_folder(src, cfg.image_size)
    return load_dataset(src, cfg.split, cfg.data_dir)


@torch.no_grad()
def encode_latents(cfg, progress: bool = True) -> dict:
    if cfg.vae is None:
        raise DataError("--vae is missing: pass a diffusers AutoencoderKL folder (config.json + weights)")
    check_vae_folder(cfg.vae)  # before the images load (load_vae checks it again, cheaply)
    if cfg.batch_size < 1 or cfg.shard_size < 1:
        raise DataError("--batch-size and --shard-size must be at least 1")
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    vae = load_vae(cfg.vae).to(device)
    scale = float(vae.config.scaling_factor)
    want_ch = int(vae.config.in_channels)
    data = _load_images(cfg)
    if data.is_latent:
        raise DataError(f"'{cfg.images}' already holds latents")
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)
    meta = {
        "eediff_latents": "1", "scaling_factor": str(scale), "image_size": str(cfg.image_size), "vae": os.path.abspath(cfg.vae),
        "source": str(cfg.images), "num_classes": str(data.num_classes),
    }
    if data.meta.get("classes"):
        meta["classes"] = json.dumps(data.meta["classes"])
    from tqdm.auto import tqdm

    n = len(data)
    shards, buf_x, buf_y, written = [], [], [], 0

    def flush():
        nonlocal buf_x, buf_y
        if not buf_x:
            return
        x = torch.cat(buf_x)
        tensors = {"latents": (x.half() if cfg.fp16 else x.float()).contiguous()}
        if buf_y:
            tensors["labels"] = torch.cat(buf_y).long().contiguous()
        path = os.path.join(cfg.out, f"latents-{len(shards):05d}.safetensors")
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
        shards.append(path)
        buf_x, buf_y = [], []

    bar = tqdm(total=n, desc="encode", unit="img", disable=not progress)
    pending = 0
    for start in range(0, n, cfg.batch_size):
        idx = torch.arange(start, min(n, start + cfg.batch_size))
        x, y = data.batch(idx)  # (B, C, H, W) in [-1, 1]
        x = x.to(device)
        if x.shape[1] != want_ch:
            if x.shape[1] == 1:
                x = x.expand(-1, want_ch, -1, -1)
            else:
                raise DataError(f"the images have {x.shape[1]} channels, the VAE takes {want_ch}")
        if x.shape[-1] != cfg.image_size or x.shape[-2] != cfg.image_size:
            x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
        dist = vae.encode(x.to(next(vae.parameters()).dtype)).latent_dist
        z = dist.sample(generator=gen) if cfg.sample_posterior else dist.mean
        buf_x.append((z.float() * scale).cpu())
        if y is not None:
            buf_y.append(y.cpu())
        pending += len(idx)
        written += len(idx)
        bar.update(len(idx))
        if pending >= cfg.shard_size:
            flush()
            pending = 0
    flush()
    bar.close()
    return {"shards": shards, "count": written, "scaling_factor": scale}
