"""Training from scratch and ASE fine-tuning (Algorithm 1 of Moon et al.), through accelerate.

One step of Algorithm 1, as implemented by :class:`Trainer`:

1. a (per-process) mini-batch B from a deterministic, resumable sampler;
2. a training time per example (DiT: integer index 0..999, ``t_unit = i/1000``; U-ViT: t ~ U(eps, 1));
3. the exit policy (the same one sampling uses) gives each example its depth k(t); the student θ_S runs
   only blocks[:k] ("for l = 1..N: if l < S(t) ... else break"), every example at its own depth in one
   forward pass (``models.backbone.forward``: rows sorted deepest first, block l works on the rows that
   still run it). **Time sampling** (``--depth-grouping``): ``group`` (default) draws t stratified over
   the schedule's intervals, so the rows per block hardly change from step to step, t marginally i.i.d.
   uniform; ``batch`` picks one schedule interval per step (with probability equal to its share of
   [0, 1]) and samples every t of the batch inside it: one depth per step, t uniform over steps but not
   within a batch;
4. ℓ_i = λ(t_i) · loss(x̃_i, t_i) with the hybrid loss for learned σ, ε-MSE otherwise (``losses.py``);
   λ(t) as :class:`~eediff.train.losses.TimeWeight`, reset to 1 after the cycle C; with ``--distill w``
   (ours, not the paper's) the rows the schedule cuts learn (1 − w) ε + w ε_full, ε_full being the frozen
   --init model at full depth on the same input (a lower-variance target than the noise alone);
5. θ_S ← AdamW step on mean_i ℓ_i (gradients all-reduced across processes);
6. θ_T ← α θ_T + (1 − α) θ_S (the EMA "teacher"; it is what checkpoints export for sampling).

Distribution: accelerate starts the processes, picks devices and mixed precision (bf16 autocast on GPU) and
provides the collectives. The model is deliberately *not* wrapped in DDP: blocks beyond the deepest row
of a step get no gradient, and which blocks those are changes from step to step, which DDP's bucketing does
not allow; instead the flattened gradient is all-reduced once per
step (unused parameters count as zero gradient, as DDP with ``find_unused_parameters`` would). All ranks
therefore apply identical updates and hold identical weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..checkpoint import load_model, save_model
from ..config import ConfigError, TrainBaseConfig
from ..data import ImageData, ShardedSampler, load_dataset
from ..errors import EediffError
from ..exits import deediff
from ..exits.policy import make_policy
from ..exits.schedule import get_schedule
from ..io import CheckpointError, remove_stale_tmp, unwritable, write_json_atomic
from ..models import registry
from .checkpoint import RunCheckpoints, capture_rng, restore_rng
from .losses import DiffusionObjective, LossNorm, TimeWeight
from .options import resume_changes, to_json
from .setup import build_train_model, check_model_data, make_accelerator, resolve_auto, validate


class TrainError(EediffError, RuntimeError):
    """A run that cannot go on (e.g. a NaN loss); one-line message."""


LOSS_NORM_FILE = "loss_norm.json"  # --loss-norm: the --init model's loss by t, in the run directory


# ---- small pieces, unit-tested on their own -------------------------------------------------------
@torch.no_grad()
def ema_update(ema_params: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """θ_T ← decay · θ_T + (1 − decay) · θ_S, in place."""
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, params, alpha=1.0 - decay)


def ema_decay_at(decay: float, updates_done: int, warmup: bool) -> float:
    return min(decay, (1 + updates_done) / (10 + updates_done)) if warmup else decay


def stratified_counts(n: int, probs: list[float], generator: torch.Generator) -> list[int]:
    """Split n draws over strata with probabilities ``probs``: floor(n p_g) each, the rest by systematic
    sampling on the fractional parts, so that E[count_g] = n p_g exactly and counts vary by at most one.

    Together with a uniform draw inside each stratum, every example's time is marginally uniform (the
    estimator of the loss stays unbiased) while the batch covers the strata evenly.
    """
    exact = [n * p for p in probs]
    counts = [int(math.floor(e)) for e in exact]
    frac = [e - c for e, c in zip(exact, counts)]
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    acc = 0.0
    for g, f in enumerate(frac):
        lo, acc = acc, acc + f
        counts[g] += math.ceil(acc - u) - math.ceil(lo - u)  # how many of u, u + 1, u + 2, ... fall in [lo, acc)
    counts[-1] += n - sum(counts)  # guards rounding of the fractional parts (never more than 1e-9 off)
    return counts


def lr_lambda_for(kind: str, warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if kind == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


def state_hash(*models) -> str:
    h = hashlib.sha256()
    for m in models:
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


# ---- the trainer ---------------------------------------------------------------------------------
@dataclass
class RunSummary:
    run_dir: str
    step: int
    final_path: str | None
    last_loss: float | None
    seconds: float
    resumed_from: str | None = None
    start_step: int = 0  # the step this invocation began at (a resumed run's checkpoint step)


class Trainer:
    """Everything one process needs for Algorithm 1. ``step()`` runs one optimizer step."""

    def __init__(self, cfg: TrainBaseConfig, command: str, accelerator=None, data: ImageData | None = None, model=None, process=None):
        validate(cfg, command)
        self.command = command
        self.acc = accelerator if accelerator is not None else make_accelerator(cfg)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.device = self.acc.device if self.acc.device.type != "cpu" else torch.device("cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.main = self.acc.is_main_process

        if model is None and command == "finetune":  # the checkpoint first: a wrong --init fails before any data work
            from ..zoo import SHIPPED, path as shipped_path

            loaded = load_model(shipped_path(cfg.init) if cfg.init in SHIPPED else cfg.init)  # a file or a shipped name
            model, process = loaded.model, loaded.process
        self.data = data if data is not None else load_dataset(cfg.dataset, cfg.split, cfg.data_dir, cfg.image_size)
        if model is None:
            model = build_train_model(cfg, self.data)
        if process is None:
            process = registry.default_process(model)
        check_model_data(model, self.data)
        self.cfg = cfg = resolve_auto(cfg, command, model)
        self.model, self.process = model, process
        self.K = model.num_exit_blocks
        self.schedule = get_schedule(cfg.schedule).check(self.K)
        self.any_depth = cfg.depth_sampling == "uniform"  # every depth at every t (see _depths)
        if self.any_depth and not self.schedule.is_full(self.K):
            raise ConfigError(f"--depth-sampling uniform draws each depth itself: give --schedule full, not '{cfg.schedule}'")
        self.tuned_for = self.schedule if not self.schedule.is_full(self.K) else None
        self.policy = make_policy(self.schedule, self.K)

        # labels and classifier-free-guidance dropout (done here, with the run's own generator)
        self.conditional = model.num_classes > 0
        self.null_label = model.null_label
        self.label_p = self._label_dropout()
        model.set_label_dropout(0.0)  # the trainer drops labels itself, with the run's generator (see _label_dropout)

        self.objective = DiffusionObjective(process, model.learn_sigma, model.in_channels, self.device)
        self.weight = TimeWeight(self.schedule, self.K, cfg.reweight_gamma, cfg.reweight_cycle, cfg.reweight_unit, grid=self.objective.grid_unit_times())
        self.intervals = self.objective.time_intervals(self.schedule)

        self.method = getattr(cfg, "method", "ase")
        if self.method == "deediff":  # UEMs after every block; trained with L_simple + λ L_u + β L_UAL
            heads = deediff.heads_of(model)
            if heads is None:
                deediff.apply_deediff(model, deediff.DeeDiffConfig(form=cfg.deediff_form))
            elif heads.cfg.form != cfg.deediff_form:
                raise ConfigError(f"--init already carries '{heads.cfg.form}' DeeDiff heads: pass --deediff-form {heads.cfg.form}")
            if cfg.freeze_backbone:
                for name, p in model.named_parameters():
                    p.requires_grad_(name.startswith("uem."))
        if cfg.freeze_time_embed:
            model.time_embedder().requires_grad_(False)
        # --distill: a frozen copy of the --init model, run at full depth, is the target of the rows the schedule
        # cuts. Copied here, before a step or a resumed checkpoint changes the weights (a resume rebuilds it from --init)
        self.distill = float(getattr(cfg, "distill", 0.0) or 0.0)
        self.teacher = None
        if self.distill > 0:
            if self.schedule.is_full(self.K) and not self.any_depth:
                raise ConfigError("--distill trains the rows the schedule cuts, and --schedule full cuts none: "
                                  "give a truncating schedule (e.g. D4-DiT) or leave out --distill")
            self.teacher = copy.deepcopy(model).eval().requires_grad_(False).to(self.device)
        model.to(self.device).train()
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        ema_named = dict(self.ema.named_parameters())
        self.params = [p for _, p in named]
        self.ema_params = [ema_named[n] for n, _ in named]
        if not self.params:
            raise ConfigError("the model has no trainable parameters")
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay,
            **({"fused": True} if fused else {"foreach": True}),
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda_for(cfg.lr_schedule, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        )
        self.sampler = ShardedSampler(len(self.data), cfg.batch_size, cfg.seed, self.rank, self.world)
        self._seed_rngs(cfg.seed)
        self.step_count = 0
        self.elapsed_before = 0.0
        self.evals: list[dict] = []  # --eval-every measurements so far (kept in checkpoints: --plateau compares across resumes)
        self._eval_ref = None  # (feature network, reference statistics), made at the first measurement

        if self.device.type == "cuda" and cfg.data_on_device != "no":
            if cfg.data_on_device == "yes" or self.data.nbytes <= 8 * 2**30:
                self.data = self.data.to(self.device)
        # --loss-norm p: the --init model's own loss by t (measured now, before any step and before compiling;
        # a resumed run reads the run's loss_norm.json instead, so that it continues with the same weights)
        self.loss_norm = self._loss_norm() if getattr(cfg, "loss_norm", 0.0) > 0 else None
        self.whole_graph = bool(cfg.compile) and cfg.compile_scope == "model"
        # reduce-overhead: inductor's CUDA graph trees replay the forward and the backward as graphs
        self.cudagraphs = bool(cfg.compile) and cfg.compile_mode == "reduce-overhead" and self.device.type == "cuda"
        if cfg.compile and cfg.compile_mode == "reduce-overhead" and not self.cudagraphs and self.main:
            print(f"note: --compile-mode reduce-overhead: CUDA graphs need a GPU, and this run is on {self.device.type}: "
                  "compiling without them", file=sys.stderr)
        self.full_depth = self.schedule.is_full(self.K) and not self.any_depth
        if cfg.compile and not (self.whole_graph and self.full_depth):  # graphs per depth, or per block row count
            from torch import _dynamo

            _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 64 if self.teacher is None else 128)
        if self.whole_graph:
            # one graph for the whole forward (inductor fuses across block boundaries). At full depth every row
            # runs every block, so the forward is called without a per-row depth (the same function: all
            # depths are K). With --depth-grouping batch every row of a step lies in one interval of the
            # schedule, so the step's depth is passed as an int: one graph per depth, each of fixed shape
            if self.method == "deediff" or not (self.full_depth or cfg.depth_grouping == "batch"):
                raise ConfigError("--compile-scope model compiles forwards of one depth per step: it needs --method ase and "
                                  "--schedule full or --depth-grouping batch (use --compile-scope blocks for per-row depths or DeeDiff)")
            model.compile(mode=cfg.compile_mode)
        elif cfg.compile:
            # the blocks, not the whole forward: the rows per block change from step to step, and a compiled
            # block (one graph shared by all blocks, dynamic in the batch dimension) takes any row count
            for blk in model.compute_blocks():
                blk.compile(mode=cfg.compile_mode)
        if cfg.compile and self.teacher is not None:  # (default mode: the teacher's outputs are read after the student's graphs run)
            for blk in self.teacher.compute_blocks():
                blk.compile()

    # ---- set-up helpers ----------------------------------------------------------------------------
    def _label_dropout(self) -> float:
        cfg, m = self.cfg, self.model
        if not self.conditional:
            return 0.0
        p = m.default_label_dropout() if cfg.label_dropout is None else cfg.label_dropout
        if p > 0 and m.null_label is None:
            raise ConfigError(f"--label-dropout {p}: this {m.arch} has no null-label row to drop to (train it with one, or pass --label-dropout 0)")
        if not 0 <= p < 1:
            raise ConfigError(f"--label-dropout must be in [0, 1), got {p}")
        return float(p)

    def _loss_norm(self) -> LossNorm:
        cfg = self.cfg
        path = os.path.join(cfg.out, LOSS_NORM_FILE)
        grid = self.objective.grid_unit_times()
        if (cfg.resume or cfg.resume_from is not None) and os.path.isfile(path):
            try:
                with open(path) as f:
                    saved = json.load(f)
                return LossNorm(saved["t_unit"], saved["mean_loss"], grid, cfg.loss_norm)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"'{path}' is unreadable: delete it to measure the --init model's loss by t again") from None
        t_unit, mean_loss = self.init_loss_by_t()
        return LossNorm(t_unit, mean_loss, grid, cfg.loss_norm)

    @torch.no_grad()
    def init_loss_by_t(self, n: int = 256, bins: int = 32) -> tuple[list[float], list[float]]:
        """The --init model's mean per-example loss (full depth, target the added noise) at ``bins`` equally spaced
        noise levels (bin centres of [0, 1]; for a discrete process the index there), on the same ``n`` training
        images and noise at every level (fixed by --seed). Called before the first step: the weights are --init's."""
        ref = self.teacher if self.teacher is not None else self.model
        was_training = ref.training
        ref.eval()
        g = torch.Generator().manual_seed(self.cfg.seed + 1_000_003)  # a stream of its own: the training generators stay untouched
        idx = torch.randperm(len(self.data), generator=g)[: min(n, len(self.data))]
        x0, y = self.data.batch(self._to_device(idx) if self.data.data.device.type == "cuda" else idx)
        x0 = self._to_device(x0)
        y = (torch.zeros(idx.numel(), dtype=torch.long, device=self.device) if y is None else self._to_device(y)) if self.conditional else None
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        obj, t_unit, mean_loss = self.objective, [], []
        for b in range(bins):
            c = (b + 0.5) / bins
            if obj.discrete:
                k = min(obj.T - 1, int(c * obj.T))
                t_host, u = torch.full((idx.numel(),), k, dtype=torch.long), k / obj.T
            else:
                u = obj.process.eps + (1 - obj.process.eps) * c
                t_host = torch.full((idx.numel(),), u, dtype=torch.float64)
            t_dev = self._to_device(t_host)
            x_t = obj.perturb(x0, t_dev, noise)
            with self.acc.autocast():
                out = ref(x_t, obj.model_time(t_dev), y)
            t_unit.append(float(u))
            mean_loss.append(float(obj.loss(out, x0, x_t, noise, t_dev, t_host).mean()))  # (once per level, before training)
        ref.train(was_training)
        return t_unit, mean_loss

    def _seed_rngs(self, seed: int) -> None:
        s = seed * 7919 + self.rank
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)
        self.gen_time = torch.Generator().manual_seed(s * 2 + 1)
        self.gen_noise = torch.Generator(device=self.device).manual_seed(s * 2 + 2)

    def generators(self) -> dict[str, torch.Generator]:
        return {"time": self.gen_time, "noise": self.gen_noise}

    # ---- one step of Algorithm 1 ------------------------------------------------------------------------
    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor to the training device without a host-device sync (pinned, non-blocking)."""
        if self.device.type == "cuda" and t.device.type == "cpu":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def sample_times(self, n: int):
        """Training times for n examples, uniform over [0, 1] for each example.

        ``batch``: one schedule interval per step. ``group``: stratified over the schedule's intervals
        (see :func:`stratified_counts`), so the rows each block sees hardly change
        from step to step; with a single interval (the full schedule) this is plain i.i.d. sampling.
        """
        if len(self.intervals) <= 1:
            return self.objective.sample_time(n, self.gen_time)
        probs = [p for _, _, p in self.intervals]
        if self.cfg.depth_grouping == "batch":
            i = int(torch.multinomial(torch.tensor(probs, dtype=torch.float64), 1, generator=self.gen_time))
            lo, hi, _ = self.intervals[i]
            return self.objective.sample_time_in(n, lo, hi, self.gen_time)
        parts = [self.objective.sample_time_in(c, lo, hi, self.gen_time)
                 for (lo, hi, _), c in zip(self.intervals, stratified_counts(n, probs, self.gen_time)) if c > 0]
        return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts])

    def step(self) -> tuple[torch.Tensor, dict]:
        """One optimizer step. Returns the (device) weighted loss and host-side info (t, depths, λ)."""
        cfg = self.cfg
        idx = self.sampler.next()
        n = idx.numel()
        t, t_unit = self.sample_times(n)
        depth = self._depths(t_unit)  # (n,) on the host
        drop = torch.rand(n, generator=self.gen_time) < self.label_p if self.label_p > 0 else None
        flip = torch.rand(n, generator=self.gen_time) < 0.5 if cfg.hflip else None
        lam = self.weight(t_unit, self.step_count, self.sampler.epoch)
        lam = (lam if self.loss_norm is None else lam * self.loss_norm(t_unit)).float()

        dev_idx = self._to_device(idx) if self.data.data.device.type == "cuda" else idx
        x0, y = self.data.batch(dev_idx)
        x0 = self._to_device(x0)
        y = None if y is None else self._to_device(y)
        if flip is not None:
            x0 = torch.where(self._to_device(flip).view(-1, 1, 1, 1), x0.flip(-1), x0)
        if not self.conditional:
            y = None
        else:
            if y is None:  # unlabelled data, single-class DiT
                y = torch.zeros(n, dtype=torch.long, device=self.device)
            if drop is not None:
                y = torch.where(self._to_device(drop), torch.full_like(y, self.null_label), y)
        t_dev = self._to_device(t)
        lam_dev = self._to_device(lam)
        noise = torch.randn(x0.shape, generator=self.gen_noise, device=self.device)
        x_t = self.objective.perturb(x0, t_dev, noise)
        t_model = self.objective.model_time(t_dev)

        extra = {}
        if self.cudagraphs:  # a new iteration: the graphs may overwrite the previous step's outputs (all consumed by now)
            torch.compiler.cudagraph_mark_step_begin()
        with self.acc.autocast():
            if self.method == "deediff":  # every block's exit output and uncertainty, in one pass
                out, exits = deediff.layer_outputs(self.model, x_t, t_model, y)
            else:
                out = self.model(x_t, t_model, y, active_blocks=self._active_blocks(depth))
        target = noise if self.teacher is None else self._distill_target(x_t, t_model, y, noise, depth)
        per_example = self.objective.loss(out, x0, x_t, target, t_dev, t)  # (n,)
        loss = (per_example * lam_dev).sum() / n
        if self.method == "deediff":
            l_u, l_ual = deediff.deediff_losses(exits, noise, self.model.in_channels, cfg.deediff_ual)
            extra = {"l_simple": loss.detach(), "l_u": l_u.detach(), "l_ual": l_ual.detach()}
            loss = loss + cfg.deediff_lambda * l_u + cfg.deediff_beta * l_ual
        loss.backward()
        self._sync_gradients()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip, foreach=True)
        self.optimizer.step()
        self.lr_scheduler.step()
        # None, not zeros: under CUDA graphs (reduce-overhead) the backward's gradients live in the graph pool and
        # .grad holds them without a copy, so zeroing them in place would make the next backward add into memory
        # the next replay overwrites (the error "accessing tensor output of CUDAGraphs that has been overwritten");
        # a fresh .grad per step gives the same values (0 + g = g), and _sync_gradients zero-fills unreached blocks
        self.optimizer.zero_grad(set_to_none=True)
        ema_update(self.ema_params, self.params, ema_decay_at(cfg.ema_decay, self.step_count, cfg.ema_warmup))
        self.step_count += 1
        return loss.detach(), {"t_unit": t_unit, "depth": depth, "lambda": lam, **extra}

    @torch.no_grad()
    def _distill_target(self, x_t, t_model, y, noise, depth: torch.Tensor) -> torch.Tensor:
        """The ε target of --distill: (1 − w) ε + w ε_full on the rows the schedule cuts (depth < K, known on
        the host: no device sync), ε elsewhere. ε_full is the frozen --init model at full depth on the same
        (x_t, t, y), labels dropped as the student's; a step without cut rows runs no teacher."""
        cut = depth < self.K
        if not bool(cut.any()):
            return noise
        every = bool(cut.all())
        rows = None if every else self._to_device(torch.nonzero(cut).flatten())
        pick = (lambda v: v) if every else (lambda v: None if v is None else v.index_select(0, rows))  # noqa: E731
        with self.acc.autocast():
            full = self.teacher(pick(x_t), pick(t_model), pick(y))
        mixed = pick(noise).lerp(full[:, : self.model.in_channels].float(), self.distill)
        return mixed if every else noise.index_copy(0, rows, mixed)

    def _depths(self, t_unit: torch.Tensor) -> torch.Tensor:
        """Each row's depth: the exit policy's k(t), or under --depth-sampling uniform a depth drawn from 1..K
        (with --depth-grouping batch one per step), independent of t: the model learns every depth at every
        noise level, and ``eediff search --adapted`` reads from it what each (t, depth) costs after adapting."""
        if not self.any_depth:
            return self.policy.depth(t_unit)
        rows = 1 if self.cfg.depth_grouping == "batch" else t_unit.numel()
        k = torch.randint(1, self.K + 1, (rows,), generator=self.gen_time)
        return k.expand(t_unit.numel()).clone() if rows == 1 else k

    def _active_blocks(self, depth: torch.Tensor):
        """What the forward gets: every row at the depth of its own t (a host tensor), or for a whole-forward
        graph None at full depth and the step's one depth as an int (--depth-grouping batch)."""
        if not self.whole_graph:
            return depth
        if self.full_depth:
            return None
        k = int(depth[0])
        if not bool((depth == k).all()):  # host tensors: no device sync
            raise RuntimeError(f"--depth-grouping batch gave one step rows at depths {sorted(set(depth.tolist()))}: "
                               "the schedule's depth must be constant on each of its intervals")
        return k

    def _sync_gradients(self) -> None:
        for p in self.params:  # a block no example reached has no gradient: it counts as zero
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.world > 1:
            import torch.distributed as dist

            grads = [p.grad for p in self.params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(self.world)
            off = 0
            for g in grads:
                g.copy_(flat[off: off + g.numel()].view_as(g))
                off += g.numel()

    # ---- collectives used by the run loop ---------------------------------------------------------------
    def any_rank(self, flag: torch.Tensor) -> bool:
        f = flag.float().reshape(1).to(self.device)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(f, op=dist.ReduceOp.MAX)
        return bool(f.item() > 0)

    def mean_over_ranks(self, v: torch.Tensor) -> float:
        v = v.float().reshape(1).to(self.device)
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(v, op=dist.ReduceOp.SUM)
            v = v / self.world
        return float(v.item())

    # ---- state ----------------------------------------------------------------------------------
    def _apply_optimizer_options(self) -> None:
        """This run's --lr, betas and weight decay over what a loaded optimizer state recorded (a resumed run may
        change them); the learning rate is recomputed as the scheduler would, so an unchanged one is bit-identical."""
        cfg, sched = self.cfg, self.lr_scheduler
        sched.base_lrs = [cfg.lr for _ in self.optimizer.param_groups]
        for g, factor in zip(self.optimizer.param_groups, sched.lr_lambdas):
            g.update(initial_lr=cfg.lr, lr=cfg.lr * factor(sched.last_epoch), betas=(cfg.adam_beta1, cfg.adam_beta2),
                     weight_decay=cfg.weight_decay)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def non_finite_part(self) -> str | None:
        """Which of the weights, EMA weights and optimizer state holds a NaN or inf (agreed over ranks), or None."""
        parts = {
            "weights": list(self.model.parameters()),
            "EMA weights": list(self.ema.parameters()),
            "optimizer state": [v for st in self.optimizer.state.values() for v in st.values()
                                if isinstance(v, torch.Tensor) and v.is_floating_point()],
        }
        for name, tensors in parts.items():
            flags = torch.stack([torch.isfinite(t).all().to(self.device) for t in tensors]) if tensors else None
            if flags is not None and self.any_rank(~flags.all()):
                return name
        return None

    def train_state(self, elapsed: float) -> dict:
        return {**self.sampler.state_dict(), "elapsed": elapsed, "seed": self.cfg.seed, "evals": self.evals}

    def load_checkpoint(self, ckpts: RunCheckpoints, path: str) -> None:
        state, rng = ckpts.load(path, self.model, self.ema, self.optimizer, self.lr_scheduler, self.rank, self.world)
        self._apply_optimizer_options()
        self.step_count = int(state["step"])
        self.sampler.load_state_dict(state)
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.evals = list(state.get("evals", []))
        if rng is not None:
            restore_rng(rng, self.generators(), self.device, path)
        else:  # resumed with another number of processes: fresh, but deterministic, random streams
            if self.main:
                print(f"note: {path} was written by {state.get('world_size')} processes, this run has {self.world}: "
                      "continuing with fresh random streams (not bit-identical to an uninterrupted run)", file=sys.stderr)
            self._seed_rngs(self.cfg.seed + 1_000_003 * self.step_count)


# ---- the run ---------------------------------------------------------------------------------
def run(cfg: TrainBaseConfig, command: str = "train", trainer: Trainer | None = None) -> RunSummary:
    """Train or fine-tune into ``cfg.out``; resumable, multi-process (launch with accelerate or torchrun)."""
    start = time.perf_counter()
    ckpts = RunCheckpoints(cfg.out, cfg.keep_last)
    resume = cfg.resume or cfg.resume_from is not None
    check_run_dir(cfg, ckpts, resume)  # before anything is loaded or written
    changed, recorded = check_resume_options(cfg) if resume else ([], {})
    tr = trainer or Trainer(cfg, command)
    cfg = tr.cfg
    acc = tr.acc
    resumed_from, skipped = None, []
    if resume:
        resumed_from, skipped = load_resume_checkpoint(tr, ckpts, cfg.resume_from)  # validates before anything is written
    start_step = tr.step_count
    acc.wait_for_everyone()  # every process has checked the run directory before the main one changes it
    metrics_path = os.path.join(cfg.out, "metrics.jsonl")
    if tr.main:
        if cfg.overwrite:
            removed = clear_run_dir(cfg.out)
            if removed:
                print(f"{command}: --overwrite: removed the earlier run's {', '.join(removed)} from {cfg.out}", file=sys.stderr)
        os.makedirs(cfg.out, exist_ok=True)
        for folder in (cfg.out, ckpts.root, os.path.join(cfg.out, "samples")):
            remove_stale_tmp(folder)  # what a killed run was writing
        for path, why in skipped:
            print(f"note: skipped checkpoint {path}: {why}", file=sys.stderr)
        moved = ckpts.set_aside_after(resumed_from) if resumed_from else []
        if moved:
            print(f"note: continuing from {resumed_from}: the newer checkpoints were moved aside to {', '.join(moved)}", file=sys.stderr)
        if changed:
            print(f"note: resuming with changed options (recorded in config.json): {'; '.join(changed)}", file=sys.stderr)
            jump = lr_jump_note(recorded, cfg, tr.lr_scheduler.last_epoch, tr.optimizer.param_groups[0]["lr"])
            if jump:
                print(jump, file=sys.stderr)
        write_json_atomic(os.path.join(cfg.out, "config.json"), {**to_json(cfg)})
        if tr.loss_norm is not None:  # the weights' reference, read back by --resume
            write_json_atomic(os.path.join(cfg.out, LOSS_NORM_FILE), tr.loss_norm.to_json())
        _trim_metrics(metrics_path, tr.step_count)
    acc.wait_for_everyone()
    if tr.main and cfg.progress:
        print(
            f"{command}: {tr.model.arch} ({sum(p.numel() for p in tr.model.parameters()) / 1e6:.2f}M parameters, {tr.K} schedulable blocks) "
            f"on {tr.data.name} ({len(tr.data)} x {'x'.join(map(str, tr.data.shape))}), schedule {tr.schedule.name}, "
            f"{tr.world} process(es) on {tr.device}, mixed precision {acc.mixed_precision}"
            + (f", resumed from {resumed_from}" if resumed_from else ""),
            file=sys.stderr,
        )
    if tr.main and tr.schedule.zero_block_warning():
        print(tr.schedule.zero_block_warning(), file=sys.stderr)

    note = ema_residual_note(cfg.ema_decay, cfg.steps - tr.step_count, cfg.ema_warmup)
    if tr.main and note:
        print(note, file=sys.stderr)
    bar = None
    if tr.main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=tr.step_count, desc=command, unit="step", dynamic_ncols=True)
    check_every = 1 if tr.device.type == "cpu" else cfg.log_every
    debug_sleep = float(os.environ.get("EEDIFF_DEBUG_STEP_SLEEP", "0") or 0)  # tests only: slows each step
    loss_sum = torch.zeros((), device=tr.device)
    loss_n = 0
    bad = torch.zeros((), dtype=torch.bool, device=tr.device)
    last_log_time, last_log_step = time.perf_counter(), tr.step_count
    last_loss = None
    metrics = open(metrics_path, "a") if tr.main else None
    if (tr.main and resumed_from and cfg.eval_every and (tr.step_count % cfg.eval_every == 0 or tr.step_count == cfg.steps)
            and not any(e["step"] == tr.step_count for e in tr.evals)):
        # the run stopped at a measurement step, or at its last step, without measuring (--max-minutes bounds
        # that run), or it had no --eval-every: measure the resumed weights first, so the curve (and --plateau)
        # has no hole there and a run that finished at the limit gets its final measurement from `--resume`
        entry = measure_quality(tr)
        tr.evals.append(entry)
        append_row(metrics, {"step": tr.step_count, "eval": entry, "on_resume": True})
    stop = _StopOnSignal()
    interrupted = False
    try:
        while tr.step_count < cfg.steps:
            loss, _ = tr.step()
            step = tr.step_count
            loss_sum += loss
            loss_n += 1
            bad |= ~torch.isfinite(loss)
            if bar is not None:
                bar.update(1)
            if debug_sleep:
                time.sleep(debug_sleep)
            # the time limit is checked where the loop already syncs; every rank stops at the same step
            out_of_time = bool(cfg.max_minutes) and step % check_every == 0 and tr.any_rank(
                torch.tensor(time.perf_counter() - start > 60 * cfg.max_minutes))
            # Ctrl-C / SIGTERM: checkpoint this step and stop (one process alone needs no collective to decide)
            interrupted = stop.requested if tr.world == 1 else step % check_every == 0 and tr.any_rank(torch.tensor(stop.requested))
            final = step == cfg.steps or out_of_time or interrupted
            plateau = None
            if cfg.eval_every and (step % cfg.eval_every == 0 or final) and not (interrupted or out_of_time):  # the limit bounds the run
                if tr.main:
                    entry = measure_quality(tr)
                    tr.evals.append(entry)
                    plateau = plateau_reached(tr.evals, cfg.plateau) if cfg.plateau else None
                    if metrics is not None:
                        append_row(metrics, {"step": step, "eval": entry, "plateau": plateau is not None})
                if cfg.plateau and (tr.any_rank(torch.tensor(plateau is not None)) if tr.world > 1 else plateau is not None):
                    final = True
                    plateau = plateau or {}
            log_now = step % cfg.log_every == 0 or final
            save_now = step % cfg.save_every == 0 or final
            if step % check_every == 0 or log_now or save_now:
                if tr.any_rank(bad):
                    raise TrainError(f"loss became NaN or inf at or before step {step}: stopped; " + _diverged_fix(ckpts, cfg, "check the data"))
            if log_now:
                last_loss = tr.mean_over_ranks(loss_sum / max(loss_n, 1))
                now = time.perf_counter()
                rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
                row = {
                    "step": step, "loss": last_loss, "lr": tr.optimizer.param_groups[0]["lr"], "steps_per_s": rate,
                    "t": tr.elapsed_before + now - start, "epoch": tr.sampler.epoch,
                    "reweighting": tr.weight.active(step - 1, tr.sampler.epoch),
                }
                if metrics is not None:
                    append_row(metrics, row)
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.4f}", steps_s=f"{rate:.1f}")
                loss_sum.zero_()
                loss_n = 0
                last_log_time, last_log_step = now, step
            if save_now:
                part = tr.non_finite_part()
                if part is not None:  # a checkpoint must be one a run can continue from
                    raise TrainError(f"the {part} became NaN or inf at or before step {step}: stopped without writing that "
                                     "checkpoint; " + _diverged_fix(ckpts, cfg, "use --grad-clip"))
                ckpts.save(acc, step, tr.model, tr.ema, tr.optimizer, tr.lr_scheduler, tr.process, tr.tuned_for,
                           tr.train_state(tr.elapsed_before + time.perf_counter() - start), capture_rng(tr.generators(), tr.device))
            if interrupted:
                break
            if plateau is not None:
                if tr.main:
                    p, q = plateau["from"], plateau["to"]
                    print(f"{command}: plateau at step {step}: the trend of {plateau['points']} {q['metric']} measurements since "
                          f"step {p['step']} ({p['value']:.3f} -> {q['value']:.3f}) gives {100 * plateau['gain']:+.1f}% for 20% more "
                          f"steps, less than {100 * cfg.plateau:g}%: stopping and exporting", file=sys.stderr)
                break
            if tr.main and cfg.sample_every >= 0 and (final or (cfg.sample_every > 0 and step % cfg.sample_every == 0)):
                if out_of_time:  # --max-minutes bounds the whole run: no grid after the limit
                    print(f"{command}: no sample grid at the time limit (sample the exported model with `eediff sample`)", file=sys.stderr)
                else:
                    write_samples(tr, os.path.join(cfg.out, "samples", f"step-{step:08d}.png"))
            if out_of_time:
                if tr.main:
                    print(f"{command}: --max-minutes {cfg.max_minutes:g} reached at step {step} of {cfg.steps}; "
                          f"exporting (continue with --resume)", file=sys.stderr)
                break
    finally:
        stop.restore()
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    if interrupted:
        acc.wait_for_everyone()
        raise KeyboardInterrupt(f"{command} stopped at step {tr.step_count} of {cfg.steps} with a checkpoint in {ckpts.latest()}: "
                                f"continue with --resume")

    final_path = export_final(tr) if tr.main else None
    hashes = gather_hashes(tr)
    if tr.main:
        write_json_atomic(os.path.join(cfg.out, "rank_hashes.json"), {"step": tr.step_count, "hashes": hashes})
    if len(set(hashes)) != 1:
        raise TrainError(f"the {len(hashes)} processes ended with different weights: the run is not consistent")
    acc.wait_for_everyone()
    return RunSummary(cfg.out, tr.step_count, final_path, last_loss, time.perf_counter() - start, resumed_from, start_step)


class _StopOnSignal:
    """Turns the first SIGINT / SIGTERM into a request the loop honours after its step (checkpoint, then stop); a
    second one interrupts at once. Only in the main thread (signal handlers cannot be set elsewhere)."""

    def __init__(self):
        self.requested = False
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        self.restore()

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


# The files a run writes in its directory (all that --overwrite removes).
RUN_FILES = ("checkpoints", "samples", "config.json", "metrics.jsonl", "final.safetensors", "final-fp16.safetensors", "rank_hashes.json",
             LOSS_NORM_FILE)


def check_run_dir(cfg: TrainBaseConfig, ckpts: RunCheckpoints, resume: bool) -> None:
    """Refuse a run directory this run must not write into: one-line ConfigError naming the fix."""
    out = cfg.out
    if resume and cfg.overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it: pass only one of them")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out '{out}' is a file: the run directory must be a folder (choose another --out)")
    why = unwritable(out)
    if why:
        raise ConfigError(f"--out '{out}' cannot be written: {why}; choose another run directory")
    if resume:
        if not os.path.isdir(out):
            raise ConfigError(f"--resume: run directory '{out}' does not exist: give the --out of the run to continue, or drop --resume to start one")
        if ckpts.latest() is None and not (cfg.resume_from and os.path.isdir(cfg.resume_from)):
            raise ConfigError(f"--resume: '{out}' holds no checkpoint to continue from (no complete checkpoints/step-*): "
                              "drop --resume and pass --overwrite to start afresh there, or give the run's directory")
        return
    if cfg.overwrite:  # never remove a file this run reads
        doomed = [os.path.realpath(os.path.join(out, name)) for name in RUN_FILES]
        for flag, p in (("--init", getattr(cfg, "init", None)), ("--config", cfg.config), ("--dataset", cfg.dataset), ("--vae", cfg.vae)):
            real = os.path.realpath(p) if p and os.path.exists(p) else None
            if real and any(real == d or real.startswith(d + os.sep) for d in doomed):
                raise ConfigError(f"{flag} '{p}' belongs to the earlier run in '{out}' that --overwrite would remove: "
                                  "copy it elsewhere first, or choose another --out")
    entries = [e for e in os.listdir(out) if not e.startswith(".tmp-")] if os.path.isdir(out) else []
    if entries and not cfg.overwrite:
        if ckpts.latest() is not None:
            raise ConfigError(f"run directory '{out}' already holds checkpoints: pass --resume to continue it, "
                              "--overwrite to start afresh there, or choose another --out")
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise ConfigError(f"--out '{out}' is not empty ({shown}) and holds no run to continue: choose another --out, "
                          "or pass --overwrite to replace an earlier run's files there")


def lr_jump_note(recorded: dict, cfg: TrainBaseConfig, step: int, new_lr: float) -> str | None:
    """A note when the resumed run's learning rate at ``step`` is not the one the recorded run would have used
    there (e.g. a larger --steps stretches a cosine schedule, so the rate jumps back up: a warm restart), or None.
    A changed --lr is a change the user asked for by name: the list of changed options already says so."""
    try:
        if not math.isclose(float(recorded["lr"]), cfg.lr, rel_tol=1e-9):
            return None
        old_lr = float(recorded["lr"]) * lr_lambda_for(recorded["lr_schedule"], int(recorded["warmup_steps"]),
                                                       int(recorded["steps"]), float(recorded["min_lr_ratio"]))(step)
    except (KeyError, TypeError, ValueError):
        return None  # an older config.json without these fields: nothing to compare
    if math.isclose(old_lr, new_lr, rel_tol=1e-3, abs_tol=1e-12):
        return None
    keep = (f"; to continue at the recorded rate instead, add --lr-schedule constant --lr {old_lr:.3g}" if old_lr > 0 else "")
    return (f"note: the learning rate at step {step} is {new_lr:.3g}, where the recorded run's schedule "
            f"({recorded['lr_schedule']}, --steps {recorded['steps']}) has {old_lr:.3g}{keep}")


def check_resume_options(cfg: TrainBaseConfig) -> tuple[list[str], dict]:
    """Refuse option changes that break the exact continuation of the run; return the allowed ones (to report) and
    the recorded config.json."""
    saved = os.path.join(cfg.out, "config.json")
    if not os.path.isfile(saved):
        return [], {}
    try:
        with open(saved) as f:
            recorded = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"'{saved}' is unreadable: the run's options are lost; restore the file, or start afresh with --overwrite") from None
    refused, allowed = resume_changes(cfg, recorded if isinstance(recorded, dict) else {})
    if refused:
        raise ConfigError(f"--resume cannot change {'; '.join(refused[:3])}: the checkpoint would no longer continue "
                          "the same run; leave those options out, or start a new run in another --out")
    return allowed, recorded if isinstance(recorded, dict) else {}


def load_resume_checkpoint(tr: Trainer, ckpts: RunCheckpoints, spec: str | None) -> tuple[str, list[tuple[str, str]]]:
    """Load the checkpoint to continue from. Returns (its path, [(skipped path, why)]) ('intact' skips broken ones)."""
    if spec is None or spec.strip() != "intact":
        path = ckpts.latest() if spec is None else ckpts.find(spec)
        tr.load_checkpoint(ckpts, path)
        return path, []
    skipped = []
    for path in reversed(ckpts.list()):
        try:
            tr.load_checkpoint(ckpts, path)
            return path, skipped
        except CheckpointError as e:
            skipped.append((path, str(e).split(": ")[0] if ": " in str(e) else str(e)))
    raise CheckpointError(f"--resume-from intact: none of the {len(skipped)} checkpoints in '{ckpts.root}' loads "
                          f"(newest: {skipped[0][1] if skipped else 'none'}): start afresh with --overwrite")


def clear_run_dir(out: str) -> list[str]:
    """Remove an earlier run's files (RUN_FILES) from ``out``; anything else there is kept. Returns what was removed."""
    removed = []
    for name in RUN_FILES:
        p = os.path.join(out, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)
        else:
            continue
        removed.append(name)
    return removed


def _diverged_fix(ckpts: RunCheckpoints, cfg: TrainBaseConfig, other: str) -> str:
    """The end of a divergence error: the newest checkpoint finite in weights and optimizer state, and what to run."""
    last = ckpts.last_finite()
    if last is None:
        return (f"no finite checkpoint was written: start again with a lower --lr (now {cfg.lr:g}) and --overwrite, or {other}")
    pick = "--resume" if last == ckpts.latest() else f"--resume --resume-from {int(os.path.basename(last).split('-')[1])}"
    return (f"the last checkpoint with finite loss, weights and optimizer state is {last}; continue from it with "
            f"{pick} and a lower --lr (now {cfg.lr:g}), or {other}")


def ema_residual_note(decay: float, steps: int, warmup: bool) -> str | None:
    """A warning when the exported EMA model would still hold a visible share of the initial weights.

    Threshold 5%: a U-ViT D4 fine-tune of 1500 steps with α = 0.999 keeps 22% of the zero-shot weights
    (α^1500) in its EMA, and that model sampled far worse than its training loss suggested.
    """
    keep = decay ** max(steps, 0)
    if warmup or steps < 10 or keep <= 0.05:
        return None
    return (f"note: EMA rate {decay} over {steps} steps keeps {100 * keep:.0f}% of the initial weights in the exported "
            f"EMA model: for a short run pass a lower --ema-decay (e.g. {_suggest_decay(steps)}) or --ema-warmup")


def _suggest_decay(steps: int) -> float:
    """An EMA rate whose horizon 1 / (1 - α) is about a tenth of the run, and never one that still keeps over 5% of
    the start (a run of 20 steps: 0.86, not the 10-step horizon's 0.9, which keeps 12%)."""
    keeps_5pct = math.floor(0.05 ** (1 / max(steps, 1)) * 1e4) / 1e4   # rounded down: α^steps stays <= 0.05
    return min(round(1 - 1 / max(steps / 10, 10), 4), keeps_5pct)


def _trim_metrics(path: str, step: int) -> None:
    """Drop metric rows written after the checkpoint a run resumes from (they are recomputed)."""
    if not os.path.exists(path):
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a kill

    from ..io import atomic_write

    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(keep)

    atomic_write(path, write)


def measure_quality(tr: Trainer) -> dict:
    """Fréchet distance of ``--eval-n`` samples of the EMA weights (the schedule being trained, seeds 0..n-1, so
    every measurement of a run sees the same noise) to ``--eval-reference``, in ``--eval-metric``'s features.
    Touches no training RNG."""
    from ..config import EvalConfig
    from ..eval import fid
    from ..eval.evaluate import feature_network, parse_sampler, reference
    from ..generate import generate, to_uint8

    cfg = tr.cfg
    if tr.data.is_latent:
        raise ConfigError("--eval-every measures pixel images: it does not decode a latent data set (leave it out)")
    if tr._eval_ref is None:  # the same feature network and cached reference statistics as `eediff eval`
        ecfg = EvalConfig(metric=cfg.eval_metric, inception=cfg.inception, reference=cfg.eval_reference, cache_dir=cfg.eval_cache_dir)
        features = feature_network(ecfg, tr.device)
        tr._eval_ref = (features, reference(ecfg, features))
    features, ref = tr._eval_ref
    devices = [tr.device] if tr.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        res = generate(tr.ema, tr.process, parse_sampler(cfg.eval_sampler), n=cfg.eval_n, batch_size=min(cfg.eval_n, 500), seed=0,
                       schedule=tr.schedule, device=tr.device, progress=False,
                       autocast_dtype=torch.bfloat16 if tr.acc.mixed_precision == "bf16" else None)
    value = fid.fid_against_stats(to_uint8(res.images), ref, features, backend="eigh")
    return {"step": tr.step_count, "metric": cfg.eval_metric, "value": float(value), "n": cfg.eval_n, "sampler": cfg.eval_sampler,
            "reference": cfg.eval_reference, "schedule": tr.schedule.name}


def append_row(metrics, row: dict) -> None:
    """One metrics.jsonl row, flushed (a killed run keeps every row it wrote)."""
    metrics.write(json.dumps(row) + "\n")
    metrics.flush()


def plateau_reached(evals: list[dict], tol: float, more: float = 0.2) -> dict | None:
    """The plateau rule: the trend of the measurements says that ``more`` (20%) further steps would improve the
    distance by less than ``tol`` (a fraction). Returns ``{"from", "to", "gain", "slope", "points"}`` or None.

    The trend is a least-squares line of log(distance) on log(steps) through the measurements of the last
    doubling of steps (those made at >= half the latest step; at least two, ``1 + more`` apart): distance ~
    steps^slope, so 20% more steps give ``gain = 1 - 1.2^slope``. Why a fit and not the latest measurement
    against one earlier measurement: at a constant learning rate the EMA weights' distance moves by 10-25%
    between measurements (``results/converge/converge.md``), so a single bad measurement would look like a
    plateau and stop a run that is still improving. With two measurements the fit is that comparison. Only
    measurements of the same kind (metric, images, sampler, reference) are used.
    """
    last = evals[-1]
    kind = lambda e: (e.get("metric"), e.get("n"), e.get("sampler"), e.get("reference"))  # noqa: E731
    pts = [e for e in evals if kind(e) == kind(last) and 2 * e["step"] >= last["step"] and e["step"] <= last["step"]]
    if len(pts) < 2 or pts[0]["step"] * (1 + more) > last["step"] or min(e["value"] for e in pts) <= 0:
        return None
    xs = [math.log(e["step"]) for e in pts]
    ys = [math.log(e["value"]) for e in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    gain = 1 - (1 + more) ** slope
    return {"from": pts[0], "to": last, "gain": gain, "slope": slope, "points": len(pts)} if gain < tol else None


def plateau_gain(evals: list[dict], more: float = 0.2) -> float | None:
    """The trend's gain for ``more`` further steps at the latest measurement (what ``plateau_reached`` compares
    with its tolerance), or None when there are too few measurements."""
    p = plateau_reached(evals, float("inf"), more)
    return None if p is None else p["gain"]


def write_samples(tr: Trainer, path: str) -> None:
    """A grid from the EMA weights with the schedule being tuned (does not touch any training RNG)."""
    from ..diffusion.sampling import SamplerConfig
    from ..generate import generate, save_grid

    cfg = tr.cfg
    vae = None
    if tr.data.is_latent:
        if cfg.vae is None:
            return
        from ..io import load_vae

        vae = load_vae(cfg.vae).to(tr.device)
    devices = [tr.device] if tr.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        res = generate(
            tr.ema, tr.process, SamplerConfig(cfg.sample_sampler, cfg.sample_steps), n=cfg.sample_n, batch_size=cfg.sample_n,
            seed=0, schedule=tr.schedule, vae=vae, device=tr.device,
            autocast_dtype=torch.bfloat16 if tr.acc.mixed_precision == "bf16" else None, progress=False,
        )
    save_grid(res.images, path)


def export_final(tr: Trainer) -> str:
    """The EMA weights, fp32 (and optionally fp16), with the tuned schedule, for `eediff sample --model`."""
    cfg = tr.cfg
    extra = {"trained_steps": tr.step_count, "command": tr.command, "dataset": tr.data.name}
    path = os.path.join(cfg.out, "final.safetensors")
    save_model(path, tr.ema, tr.process, tuned_for=tr.tuned_for, extra=extra)
    if cfg.export_fp16:
        save_model(os.path.join(cfg.out, "final-fp16.safetensors"), tr.ema, tr.process, tuned_for=tr.tuned_for, dtype=torch.float16, extra=extra)
    return path


def gather_hashes(tr: Trainer) -> list[str]:
    h = state_hash(tr.model, tr.ema)
    if tr.world == 1:
        return [h]
    from accelerate.utils import gather_object

    return list(gather_object([h]))
