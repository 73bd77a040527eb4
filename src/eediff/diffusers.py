"""Early exits inside unmodified diffusers pipelines.

    from diffusers import DiTPipeline
    import eediff.diffusers as ed
    pipe = DiTPipeline.from_pretrained("path/to/DiT-XL-2-256")
    handle = ed.apply_early_exit(pipe.transformer, ed.ExitConfig(schedule="D4-DiT"))
    images = pipe(class_labels=[207, 360], num_inference_steps=25).images
    handle.remove()                                   # the transformer is as it was

How it works, in diffusers' own hook conventions (``diffusers.hooks.HookRegistry`` / ``ModelHook``):

* a *router* hook on the transformer reads the ``timestep`` the pipeline passes (the original training
  timestep, 0..num_train_timesteps-1), asks the exit policy for every row's depth, and sorts the rows
  deepest first (every per-row tensor argument is permuted: latents, timesteps, labels, text states,
  masks; the output is put back in the caller's order);
* a hook on block l runs it on the prefix of rows whose depth exceeds l and passes the other rows through,
  so rows at different timesteps (or any per-row schedule) exit in the same batch.

Nothing depends on a ``cache_context``: the router sets the depths on every call. The per-layer row counts
are read to the host once per transformer call (one small device read; block calls need host sizes).
Under ``torch.compile`` the router's read is a graph break and each distinct prefix size is its own graph
(compile the blocks, e.g. ``transformer.compile_repeated_blocks()``, or the whole transformer; both work).

``to_diffusers`` / ``save_diffusers`` export an eediff DiT (e.g. a shipped ASE fine-tune) to a
``DiTTransformer2DModel`` (a model of fewer than 1000 classes with its label table widened to 1000 and the
null row at 1000, the label ``DiTPipeline`` passes for classifier-free guidance); ``PixelSpace`` is an
identity "VAE" so that pixel-space models (the shipped Fashion-MNIST DiTs) run in the unmodified ``DiTPipeline``.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.models.autoencoders.vae import DecoderOutput

from .errors import EediffError
from .exits.policy import ExitPolicy, ScheduledExit
from .exits.schedule import ExitSchedule, get_schedule

_ROUTER = "eediff_exit_router"
_BLOCK = "eediff_block_exit"
_BLOCK_STACKS = ("transformer_blocks", "blocks", "layers")


@dataclass
class ExitConfig:
    """Which schedule drives the exits, and how the pipeline's timesteps map to its time axis.

    ``schedule``: a preset (``D4-DiT``), block counts on equal intervals of t (``28,24,20``), JSON or a
    ``.json`` file (``save_diffusers`` writes ``exit_schedule.json`` beside a tuned model's weights).
    ``num_train_timesteps``: the pipeline's timestep t maps to t / num_train_timesteps on the schedule.
    ``blocks``: the name of the transformer's block list (found automatically when None)."""

    schedule: str | ExitSchedule = "D4-DiT"
    num_train_timesteps: int = 1000
    blocks: str | None = None

    def __post_init__(self):
        self.schedule = get_schedule(self.schedule)
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 1:
            raise EediffError(f"num_train_timesteps must be a positive int, got {self.num_train_timesteps!r}")
        if self.blocks is not None and self.blocks not in _BLOCK_STACKS:
            raise EediffError(f"blocks must name the transformer's block list, one of {_BLOCK_STACKS}; got {self.blocks!r}")


class _Routing:
    """Shared between the router and the block hooks: per-layer row counts of the current call."""

    def __init__(self):
        self.counts: list[int] | None = None  # None: no exit decided (all rows run every block)
        self.batch = 0
        self.rows_run = 0  # rows x blocks actually run, for tests and reports (host ints, no device read)


def _rows(obj, batch: int, fn):
    """``obj`` (tensors nested in tuples/lists/dicts) with ``fn`` applied to every per-row tensor (dim 0 == batch)."""
    if torch.is_tensor(obj):
        return fn(obj) if obj.dim() > 0 and obj.shape[0] == batch else obj
    if isinstance(obj, dict):
        return {k: _rows(v, batch, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_rows(v, batch, fn) for v in obj)
    return obj


def _permute(obj, order: torch.Tensor, batch: int):
    """Every per-row tensor in ``obj`` reordered by ``order``."""
    return _rows(obj, batch, lambda x: x.index_select(0, order.to(x.device)))


def _prefix(obj, n: int, batch: int):
    """Every per-row tensor in ``obj`` cut to its first ``n`` rows."""
    return _rows(obj, batch, lambda x: x[:n])


class _RouterHook(ModelHook):
    """On the transformer: timesteps -> per-row depths -> rows sorted deepest first, counts for the blocks."""

    def __init__(self, policy: ExitPolicy, num_train_timesteps: int, routing: _Routing):
        super().__init__()
        self.policy, self.T, self.routing = policy, num_train_timesteps, routing
        self.inverse: torch.Tensor | None = None

    def initialize_hook(self, module):
        params = list(inspect.signature(type(module).forward).parameters)[1:]  # without self
        self.t_index = params.index("timestep") if "timestep" in params else None
        return module

    def pre_forward(self, module, *args, **kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        i = self.t_index
        t = kwargs["timestep"] if "timestep" in kwargs else (args[i] if i is not None and len(args) > i else None)
        r = self.routing
        r.counts, r.batch, self.inverse = None, hidden.shape[0], None
        if t is None:
            return args, kwargs
        b = r.batch
        t_unit = torch.as_tensor(t).reshape(-1).to(torch.float64).expand(b) / self.T  # (B,)
        depth = self.policy.depth(t_unit)  # (B,) long, on t's device
        layers = torch.arange(self.policy.num_blocks, device=depth.device)
        stats = torch.cat([(depth.unsqueeze(0) > layers.unsqueeze(1)).sum(1), depth.min().view(1), depth.max().view(1)])
        *counts, lo, hi = stats.tolist()  # the one host read per call
        r.counts = counts
        if lo != hi:  # rows exit at different blocks: sort them deepest first (prefix of each block = its rows)
            order = torch.argsort(depth, descending=True, stable=True)
            args, kwargs = _permute(args, order, b), _permute(kwargs, order, b)
            self.inverse = torch.argsort(order)
        return args, kwargs

    def post_forward(self, module, output):
        if self.inverse is None:
            return output
        inv, b = self.inverse, self.routing.batch
        self.inverse = None
        if isinstance(output, tuple):
            return _permute(output, inv, b)
        output.sample = _permute(output.sample, inv, b)  # Transformer2DModelOutput
        return output


class _BlockHook(ModelHook):
    """On block ``index``: run it on the rows that still need it, pass the others through."""

    def __init__(self, index: int, routing: _Routing):
        super().__init__()
        self.index, self.routing = index, routing

    def initialize_hook(self, module):
        self.meta = TransformerBlockRegistry.get(type(module))
        return module

    def new_forward(self, module, *args, **kwargs):
        r = self.routing
        n = r.batch if r.counts is None else r.counts[self.index]
        if n == r.batch:
            r.rows_run += n
            return self.fn_ref.original_forward(*args, **kwargs)
        hidden = self.meta._get_parameter_from_args_kwargs("hidden_states", args, kwargs)
        enc_i = self.meta.return_encoder_hidden_states_index
        enc = self.meta._get_parameter_from_args_kwargs("encoder_hidden_states", args, kwargs) if enc_i is not None else None
        if n == 0:
            return hidden if enc_i is None else _order(self.meta, hidden, enc)
        r.rows_run += n
        out = self.fn_ref.original_forward(*_prefix(args, n, r.batch), **_prefix(kwargs, n, r.batch))
        if enc_i is None:
            return torch.cat([out, hidden[n:]])
        h, e = out[self.meta.return_hidden_states_index], out[enc_i]
        return _order(self.meta, torch.cat([h, hidden[n:]]), torch.cat([e, enc[n:]]))


def _order(meta, hidden, enc):
    out = [None, None]
    out[meta.return_hidden_states_index], out[meta.return_encoder_hidden_states_index] = hidden, enc
    return tuple(out)


def _block_stack(transformer, name: str | None) -> tuple[str, torch.nn.ModuleList]:
    names = (name,) if name else _BLOCK_STACKS
    for n in names:
        stack = getattr(transformer, n, None)
        if isinstance(stack, torch.nn.ModuleList) and len(stack):
            return n, stack
    raise EediffError(f"{type(transformer).__name__} has no block list named {' or '.join(names)}: pass ExitConfig(blocks=...)")


class EarlyExitHandle:
    """What ``apply_early_exit`` returns: ``.remove()`` restores the transformer; ``.blocks_run`` counts
    rows x blocks run since the hooks were applied (host ints)."""

    def __init__(self, transformer, stack, routing: _Routing, policy: ExitPolicy):
        self.transformer, self.stack, self.routing, self.policy = transformer, stack, routing, policy
        self.removed = False

    @property
    def blocks_run(self) -> int:
        return self.routing.rows_run

    def remove(self) -> None:
        if self.removed:
            return
        for block in self.stack:
            HookRegistry.check_if_exists_or_initialize(block).remove_hook(_BLOCK, recurse=False)
        HookRegistry.check_if_exists_or_initialize(self.transformer).remove_hook(_ROUTER, recurse=False)
        self.removed = True


def apply_early_exit(transformer: torch.nn.Module, config: ExitConfig | None = None) -> EarlyExitHandle:
    """Per-row, time-dependent early exits on a diffusers transformer (``DiTTransformer2DModel``,
    ``PixArtTransformer2DModel``, or any with a block list whose blocks diffusers' hook registry knows)."""
    config = config or ExitConfig()
    if HookRegistry.check_if_exists_or_initialize(transformer).get_hook(_ROUTER) is not None:
        raise EediffError("early exits are already applied to this transformer: call .remove() on the first handle")
    _, stack = _block_stack(transformer, config.blocks)
    try:
        TransformerBlockRegistry.get(type(stack[0]))
    except ValueError as e:
        raise EediffError(f"diffusers' hook registry does not know {type(stack[0]).__name__}, so its outputs cannot be passed through") from e
    policy = ScheduledExit(config.schedule, len(stack))
    routing = _Routing()
    for i, block in enumerate(stack):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(_BlockHook(i, routing), _BLOCK)
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_RouterHook(policy, config.num_train_timesteps, routing), _ROUTER)
    return EarlyExitHandle(transformer, stack, routing, policy)


# ---- export ------------------------------------------------------------------------------------
def _set_time_shift(transformer, shift: int) -> None:
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = shift


def to_diffusers(model) -> tuple[torch.nn.Module, dict]:
    """An eediff DiT as a ``DiTTransformer2DModel`` computing the same function, and facts about it.

    diffusers' config fixes the time sinusoid's frequency shift at 1, the official DiT code uses 0: the
    module returned here has its shift set to the model's, so it is exact; ``load_transformer`` restores
    it from a saved folder. ``time_feature_error`` = max |time features| difference over the training
    timesteps that a plain ``DiTTransformer2DModel.from_pretrained`` of the folder would have (0 for models
    converted from diffusers)."""
    from diffusers import DiTTransformer2DModel

    from .models import dit
    from .models.layers import timestep_embedding

    if not isinstance(model, dit.DiT):
        raise EediffError(f"only eediff DiT models export to diffusers' DiTTransformer2DModel; got {type(model).__name__}")
    cfg, sd = dit.to_diffusers_state_dict(model)
    transformer = DiTTransformer2DModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    transformer.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    t = torch.arange(1000, dtype=torch.float32)
    ours = timestep_embedding(t, 256, freq_shift=model.config.time_freq_shift)
    plain = transformer.transformer_blocks[0].norm1.emb.time_proj(t)
    _set_time_shift(transformer, model.config.time_freq_shift)
    with torch.no_grad():  # diffusers recomputes this table on load (not saved); in memory, keep the model's own
        transformer.pos_embed.pos_embed.copy_(model.pos_embed.float())
    # the label table is widened to DiTPipeline's 1000 classes (its null label is 1000): the model's own
    # class count goes with the module, and eediff.json, so that eediff loads it back as it was
    transformer.eediff_num_classes = model.config.num_classes
    return transformer.eval(), {"time_freq_shift": model.config.time_freq_shift, "time_feature_error": float((ours - plain).abs().max()),
                                "num_classes": model.config.num_classes}


def save_diffusers(loaded, folder: str, overwrite: bool = False) -> dict:
    """Write a loaded eediff DiT (``eediff.load_model(...)``) as a diffusers model folder.

    Beside diffusers' ``config.json`` and weights: ``scheduler_config.json`` (the model's noise process,
    so ``DDIMScheduler.from_pretrained(folder)`` etc. match it), ``exit_schedule.json`` for a model tuned
    for a schedule (``ExitConfig(schedule=<folder>/exit_schedule.json)``) and ``eediff.json`` (the time
    shift ``load_transformer`` restores)."""
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)) and not overwrite:
        raise EediffError(f"'{folder}' exists and is not empty: choose a new folder or pass --overwrite")
    transformer, facts = to_diffusers(loaded.model)
    tmp = folder.rstrip("/") + ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted export
    transformer.save_pretrained(tmp, safe_serialization=True)
    p = loaded.process
    files = {
        "scheduler_config.json": {"_class_name": "DDPMScheduler", "num_train_timesteps": p.num_train_timesteps,
                                  "beta_start": p.beta_start, "beta_end": p.beta_end, "beta_schedule": "linear"},
        "eediff.json": {"time_freq_shift": facts["time_freq_shift"], "num_classes": facts["num_classes"], "source": loaded.source},
    }
    if loaded.tuned_for is not None:
        files["exit_schedule.json"] = json.loads(loaded.tuned_for.to_spec())
    for name, d in files.items():
        with open(os.path.join(tmp, name), "w") as f:
            json.dump(d, f, indent=1)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(tmp):  # written in full beside it first; each file lands whole (a rename)
        os.replace(os.path.join(tmp, name), os.path.join(folder, name))
    os.rmdir(tmp)
    return facts


def load_transformer(folder: str, **kwargs) -> torch.nn.Module:
    """``DiTTransformer2DModel.from_pretrained(folder, **kwargs)`` with the time shift of ``eediff.json``
    restored (a folder without it loads as diffusers loads it)."""
    from diffusers import DiTTransformer2DModel

    from .checkpoint import export_facts

    transformer = DiTTransformer2DModel.from_pretrained(folder, **kwargs)
    facts = export_facts(folder)
    if facts:
        _set_time_shift(transformer, facts["time_freq_shift"])
        if facts["num_classes"] is not None:
            transformer.eediff_num_classes = int(facts["num_classes"])
    return transformer


class PixelSpace(ModelMixin, ConfigMixin):
    """An identity "VAE" (scaling factor 1): lets a pixel-space DiT run in the unmodified ``DiTPipeline``."""

    @register_to_config
    def __init__(self, scaling_factor: float = 1.0):
        super().__init__()
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # gives the module a device and dtype

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        return DecoderOutput(sample=z) if return_dict else (z,)
