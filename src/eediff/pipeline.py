"""A sampling entry point in diffusers' terms.

    import torch, eediff
    pipe = eediff.EEDiffPipeline.from_pretrained("dit-fmnist-D4")          # zoo name, file or folder
    out = pipe(class_labels=[0, 1, 7], num_inference_steps=25, guidance_scale=1.0,
               generator=torch.Generator().manual_seed(0))
    out.images[0].save("shirt.png")                                          # PIL images (output_type="pil")
    pipe.save_pretrained("my-model")                                         # my-model/model.safetensors
    pipe.to("cuda").enable_fast_path(eediff.FastPathConfig(kernels="fp8"))   # compiled blocks, CUDA graphs, fp8 GEMMs

It is a thin layer over ``eediff.generate`` (the function the CLI's ``sample`` calls): the same images for
the same seeds. Seeds: ``seed=S`` gives image i the seed S + i, as ``eediff sample --seed S`` does; a
``torch.Generator`` draws that S from its own state (reproducible from the generator's seed, but not the
noise diffusers would draw from it); a list of generators (one per image) draws one seed each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .checkpoint import LoadedModel, save_model
from .diffusion.sampling import SamplerConfig
from .errors import EediffError
from .generate import GenerationResult, generate, to_uint8

_WEIGHTS = "model.safetensors"


@dataclass
class EEDiffPipelineOutput:
    images: object  # list of PIL images, a (N, C, H, W) tensor in [0, 1], or a (N, H, W, C) uint8 array
    result: GenerationResult  # depths, compute fraction, timing


class EEDiffPipeline:
    """A model, its noise process and (for latent models) a VAE; call it to sample."""

    def __init__(self, loaded: LoadedModel, vae=None):
        self.loaded, self.vae = loaded, vae
        self.device = torch.device("cpu")

    @property
    def model(self):
        return self.loaded.model

    @classmethod
    def from_pretrained(cls, path: str, vae: str | torch.nn.Module | None = None) -> "EEDiffPipeline":
        """A zoo name, an eediff ``.safetensors`` / official ``.pt``, a folder written by ``save_pretrained``,
        or a diffusers ``DiTTransformer2DModel`` folder; ``vae``: a diffusers ``AutoencoderKL`` (folder or module)."""
        from .zoo import resolve_model

        if isinstance(path, str) and os.path.isdir(path) and os.path.exists(os.path.join(path, _WEIGHTS)):
            path = os.path.join(path, _WEIGHTS)
        loaded = resolve_model(path)
        if isinstance(vae, str):
            from .io import load_vae

            vae = load_vae(vae, flag="vae")
        return cls(loaded, vae)

    def save_pretrained(self, folder: str, overwrite: bool = False) -> str:
        """Write ``folder/model.safetensors`` (fp32 weights, architecture, noise process and tuned schedule)."""
        path = os.path.join(folder, _WEIGHTS)
        if os.path.exists(path) and not overwrite:
            raise EediffError(f"'{path}' exists: choose another folder or pass overwrite=True")
        os.makedirs(folder, exist_ok=True)
        save_model(path, self.model, self.loaded.process, tuned_for=self.loaded.tuned_for)
        return path

    def enable_fast_path(self, config=None, vae: bool = True):
        """The fast path (``eediff.fast``: bf16, compiled blocks, CUDA graphs, ``config.kernels``) on the model,
        and (``vae``) bf16 channels-last compiled decoding on the VAE; call after ``.to("cuda")``. On a CPU the
        blocks are not compiled and no graphs are captured (same function, for trying it out). Returns the
        model's handle; ``disable_fast_path()`` undoes both."""
        import dataclasses

        from .fast import FastPathConfig, apply_fast_path, apply_fast_vae

        self.disable_fast_path()
        config = config or FastPathConfig()
        if self.device.type != "cuda":
            config = dataclasses.replace(config, compile=False)
        self._fast = apply_fast_path(self.model, config)
        if vae and self.vae is not None:
            self._fast_vae = apply_fast_vae(self.vae, compile=config.compile)
        return self._fast

    def disable_fast_path(self) -> None:
        for name in ("_fast", "_fast_vae"):
            h = self.__dict__.pop(name, None)
            if h is not None:
                h.remove()

    def to(self, device) -> "EEDiffPipeline":
        self.device = torch.device(device)
        self.model.to(self.device)
        if self.vae is not None:
            self.vae.to(self.device)
        return self

    def __call__(self, class_labels: list[int] | None = None, num_images: int | None = None, num_inference_steps: int = 50,
                 guidance_scale: float = 1.0, generator: torch.Generator | list[torch.Generator] | None = None, seed: int = 0,
                 scheduler="ddim", schedule=None, batch_size: int = 64, output_type: str = "pil", progress: bool = True,
                 autocast_dtype: torch.dtype | None = None) -> EEDiffPipelineOutput:
        """``num_images`` images (default: one per label), image i with label ``class_labels[i % len]``.

        ``scheduler``: an eediff sampler name (``ddim``, ``dpm-solver++``, ``euler-maruyama`` …), a diffusers
        scheduler class name, or a diffusers scheduler instance, whose class and options (``use_karras_sigmas``
        …) are used on this model's own noise schedule. ``schedule``: the exit schedule (default: the one the
        checkpoint was tuned for, else full depth)."""
        if output_type not in ("pil", "pt", "np"):
            raise EediffError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")
        n = num_images or (len(class_labels) if class_labels else 1)
        seeds = None
        if isinstance(generator, (list, tuple)):
            if len(generator) != n:
                raise EediffError(f"{len(generator)} generators for {n} images: pass one per image (or one generator)")
            seeds = [int(torch.randint(0, 2**62, (1,), generator=g)) for g in generator]
        elif generator is not None:
            seed = int(torch.randint(0, 2**62 - n, (1,), generator=generator))
        if isinstance(scheduler, str):
            sampler = SamplerConfig(scheduler, num_inference_steps)
        else:
            sampler = SamplerConfig.from_scheduler(scheduler, num_inference_steps)
        if schedule is None:
            schedule = self.loaded.tuned_for  # None (full depth) for a model tuned for no schedule
        res = generate(self.model, self.loaded.process, sampler, n=n, batch_size=batch_size, seed=seed, seeds=seeds,
                       schedule=schedule, cfg_scale=guidance_scale, class_labels=class_labels, vae=self.vae, device=self.device,
                       autocast_dtype=autocast_dtype, tuned_for=self.loaded.tuned_for, progress=progress)
        if output_type == "pt":
            images = (res.images + 1) / 2
        else:
            arr = to_uint8(res.images)
            if output_type == "np":
                images = arr
            else:
                from PIL import Image

                images = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]
        return EEDiffPipelineOutput(images, res)
