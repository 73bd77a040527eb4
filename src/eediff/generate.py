"""Generating images: batches, per-image seeds and labels, decoding, grids and npz files."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .diffusion.sampling import Denoiser, SamplerConfig, sample_loop
from .exits.policy import make_policy
from .tome import unmerged_flops


@dataclass
class GenerationResult:
    images: torch.Tensor  # (N, C, H, W) in [-1, 1], float32, CPU
    labels: torch.Tensor | None
    model_times: list[float]  # network time of every model evaluation of one batch
    mean_blocks: float  # schedulable blocks per evaluation, averaged over the steps
    num_blocks: int
    compute_fraction: float  # analytic FLOPs relative to full depth
    seconds: float  # wall clock of the sampling (and decoding), synchronised on the device
    model_flops: float = 0.0  # analytic network FLOPs of the whole call (CFG doubles the batch)
    extra: dict = field(default_factory=dict)
    # per model evaluation (step): (network time, mean, min, max blocks over every row of every batch)
    step_depths: list = field(default_factory=list)

    @property
    def layers_saved(self) -> float:
        return 1 - self.mean_blocks / self.num_blocks

    @property
    def tflops_per_s(self) -> float:
        """Achieved network TFLOP/s (analytic FLOPs over wall clock, VAE and sampler overhead included in the time)."""
        return self.model_flops / max(self.seconds, 1e-12) / 1e12


def resolve_labels(indices: range, num_classes: int, class_labels: list[int] | None) -> torch.Tensor | None:
    """Image i gets class_labels[i % len] when given, else i % num_classes; unconditional models get None."""
    if num_classes <= 0:
        return None
    if class_labels:
        bad = [c for c in class_labels if not 0 <= c < num_classes]
        if bad:
            from .config import ConfigError

            raise ConfigError(f"class label {bad[0]} is outside [0, {num_classes - 1}] for this model: pass --class-labels in that range")
        return torch.tensor([class_labels[i % len(class_labels)] for i in indices])
    return torch.tensor(list(indices)) % num_classes


def image_noise(shape, seeds: list[int], device) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Initial noise and a generator per image, seeded by the image's own seed (independent of batching)."""
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    noise = torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])
    return noise, gens


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    latents = latents / vae.config.scaling_factor
    return vae.decode(latents.to(next(vae.parameters()).dtype)).sample.float()


@torch.no_grad()
def generate(
    model,
    process,
    sampler: SamplerConfig,
    n: int,
    batch_size: int,
    seed: int = 0,
    schedule=None,
    cfg_scale: float = 1.0,
    cfg_channels: int | None = None,
    class_labels: list[int] | None = None,
    vae=None,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
    tuned_for=None,
    progress: bool = True,
    seed_offset: int = 0,
    policy=None,
    seeds: list[int] | None = None,
) -> GenerationResult:
    """Sample ``n`` images; image i uses seed ``seed + seed_offset + i`` (or ``seeds[i]`` when given) and label
    number ``seed_offset + i``, whatever the batch (``seed_offset`` lets several processes or calls share one
    numbering)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    model = model.to(device).eval()
    if policy is None:  # an ASE schedule; a per-sample policy (DeeDiff) is passed as `policy`
        policy = make_policy(schedule, model.num_exit_blocks, tuned_for=tuned_for)
    per_sample = hasattr(policy, "exit_after")
    record: list | None = [] if per_sample else None  # the blocks every row ran, read once at the end
    denoiser = Denoiser(model, process, policy, cfg_scale=cfg_scale, cfg_channels=cfg_channels, record=record)
    labels = resolve_labels(range(seed_offset, seed_offset + n), model.num_classes, class_labels)
    shape = (model.in_channels, model.input_size, model.input_size)
    times: list[float] = []

    def first_batch_fn(x, t, y):
        times.append(t)
        return denoiser(x, t, y)

    if seeds is not None and len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} images: give one seed per image")
    seed_of = (lambda i: int(seeds[i])) if seeds is not None else (lambda i: seed + seed_offset + i)
    outs = []
    n_batches = math.ceil(n / batch_size)
    bar = tqdm(total=n_batches * sampler.steps, desc=f"{sampler.sampler} x{sampler.steps}", unit="step", disable=not progress, leave=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for b in range(n_batches):
        idx = list(range(b * batch_size, min(n, (b + 1) * batch_size)))
        noise, gens = image_noise(shape, [seed_of(i) for i in idx], device)
        y = None if labels is None else labels[idx]
        if y is not None:  # pinned and asynchronous on a GPU: no host sync before the batch's first step
            y = y.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else y.to(device)
        fn = first_batch_fn if b == 0 else denoiser
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            x = sample_loop(fn, process, sampler, noise, y, gens, learned_sigma=model.learn_sigma, progress=bar.update if progress else None)
            if vae is not None:
                x = decode_latents(vae, x)
        outs.append(x.float().clamp(-1, 1).cpu())
        if b == 0 and len(times) != sampler.steps:  # multi-stage schedulers (Heun, PNDM) evaluate more often than `steps`
            bar.total = n_batches * len(times)
            bar.refresh()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    bar.close()
    K = model.num_exit_blocks
    guided = cfg_scale != 1.0 and labels is not None
    if record is None:  # depth follows the timestep: the same for every row of a step
        depths = [int(denoiser.depths(t, 1)[0]) for t in times]
        mean_blocks = sum(depths) / len(depths)
        per_image = sum(model.flops(k) for k in depths)
        frac = per_image / (len(depths) * unmerged_flops(model))  # against the model without token merging
        total = per_image * n * (2 if guided else 1)
        step_depths = [(t, float(k), k, k) for t, k in zip(times, depths)]
    else:
        flops = torch.tensor([model.flops(k) for k in range(K + 1)], dtype=torch.float64)
        steps = len(times)
        per_step = [torch.cat([record[b * steps + i][1].cpu() for b in range(n_batches)]) for i in range(steps)]
        every = torch.cat(per_step)  # every row (both CFG halves) of every evaluation
        mean_blocks = every.double().mean().item()
        frac = flops[every].mean().item() / unmerged_flops(model)
        total = flops[every].sum().item()
        step_depths = [(t, d.double().mean().item(), int(d.min()), int(d.max())) for t, d in zip(times, per_step)]
    return GenerationResult(torch.cat(outs), labels, times, mean_blocks, K, frac, seconds, total, step_depths=step_depths)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def save_grid(images: torch.Tensor, path: str, nrow: int | None = None, pad: int = 2, labels=None,
              class_names: list[str] | None = None) -> None:
    """Tile images into one PNG/JPEG (written atomically; the format follows the extension).

    With ``labels`` and ``class_names``: one column per class present, in class order, the images of that
    class in generation order down it, the class name above it (tiles upscaled to at least 64 pixels so the
    names fit)."""
    from PIL import Image, ImageDraw, ImageFont

    from .io import atomic_write

    arr = to_uint8(images)
    N, H, W, C = arr.shape
    if labels is not None and class_names:
        labels = [int(v) for v in labels]
        classes = sorted(set(labels))
        cols = {c: [i for i in range(N) if labels[i] == c] for c in classes}
        scale = max(1, math.ceil(64 / H))
        th, tw = H * scale, W * scale
        head = 18
        rows = max(len(v) for v in cols.values())
        grid = np.full((head + rows * (th + pad) + pad, len(classes) * (tw + pad) + pad, C), 255, dtype=np.uint8)
        for j, c in enumerate(classes):
            for r, i in enumerate(cols[c]):
                y0, x0 = head + pad + r * (th + pad), pad + j * (tw + pad)
                grid[y0:y0 + th, x0:x0 + tw] = arr[i].repeat(scale, 0).repeat(scale, 1)
        img = Image.fromarray(grid[..., 0] if C == 1 else grid)
        draw = ImageDraw.Draw(img)
        try:
            font = ImageFont.load_default(size=11)
        except TypeError:  # Pillow without FreeType sizes
            font = ImageFont.load_default()
        for j, c in enumerate(classes):
            name = class_names[c] if c < len(class_names) else str(c)
            x = pad + j * (tw + pad) + tw / 2
            draw.text((x, head / 2), name, fill=0, font=font, anchor="mm")
    else:
        nrow = nrow or math.ceil(math.sqrt(N))
        rows = math.ceil(N / nrow)
        grid = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad, C), 255, dtype=np.uint8)
        for i in range(N):
            r, c = divmod(i, nrow)
            grid[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = arr[i]
        img = Image.fromarray(grid[..., 0] if C == 1 else grid)
    fmt = "JPEG" if path.lower().endswith((".jpg", ".jpeg")) else "PNG"
    atomic_write(path, lambda tmp: img.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {})))


def save_npz(images: torch.Tensor, labels, path: str) -> None:
    from .io import atomic_write

    arrays = {"arr_0": to_uint8(images)}
    if labels is not None:
        arrays["arr_1"] = labels.numpy()

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
