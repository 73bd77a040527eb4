"""DiT (Peebles & Xie, 2023) with time-dependent early exit.

Parameter names and shapes are those of facebookresearch/DiT ``models.py``, so an official checkpoint
loads with ``model.load_state_dict(torch.load("DiT-XL-2-256x256.pt", weights_only=True), strict=True)``.

Early exit (ASE): ``forward(..., active_blocks=k)`` runs the first ``k`` of the ``depth`` blocks and reads
the truncated hidden state through the ordinary final layer; there are no new parameters. ``active_blocks``
may also be a ``(B,)`` tensor, one depth per row (``backbone.forward``); the model implements
``backbone.Backbone`` (``embed`` / ``run_block`` / ``head``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import ModelError
from . import backbone
from .backbone import Tokens
from .layers import (
    Attention,
    LabelEmbedder,
    Mlp,
    PatchEmbed,
    TimestepEmbedder,
    get_2d_sincos_pos_embed,
    modulate,
    unpatchify,
)


@dataclass
class DiTConfig:
    """Keyword names as in the official ``DiT.__init__`` (plus two switches for diffusers-converted weights)."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True
    # diffusers' DiTTransformer2DModel differs from the official code in two constants; a model converted
    # from diffusers sets these so that it computes exactly what diffusers computes.
    time_freq_shift: int = 0  # diffusers: 1
    mlp_norm_eps: float = 1e-6  # diffusers: norm_eps (1e-5)

    def __post_init__(self):
        backbone.check_config(self, {"input_size": 1, "patch_size": 1, "in_channels": 1, "hidden_size": 4, "depth": 1,
                                     "num_heads": 1, "num_classes": 0},
                              divisible=[("input_size", "patch_size"), ("hidden_size", "num_heads"), ("hidden_size", 4)],
                              positive=["mlp_ratio", "mlp_norm_eps"])
        if not 0 <= self.class_dropout_prob < 1:
            raise ModelError(f"DiTConfig: class_dropout_prob = {self.class_dropout_prob} must be in [0, 1): fix the model config")


# Official sizes (DiT paper, Table 1): depth, hidden size, heads, patch size.
DIT_SIZES: dict[str, dict] = {}
for _size, (_depth, _hidden, _heads) in {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}.items():
    for _p in (2, 4, 8):
        DIT_SIZES[f"DiT-{_size}/{_p}"] = dict(depth=_depth, hidden_size=_hidden, num_heads=_heads, patch_size=_p)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, mlp_norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), approximate_gelu=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def modulation(self, c: torch.Tensor) -> torch.Tensor:
        """(B, 6D) shifts, scales and gates from the (B, D) conditioning, or ``c`` itself when it is that
        (B, 6D) modulation already (``kernels.batch_adaln`` computes every block's in one GEMM)."""
        return c if c.shape[1] == self.adaLN_modulation[-1].out_features else self.adaLN_modulation(c)

    def forward(self, x: torch.Tensor, c: torch.Tensor, keep: torch.Tensor | None = None, inplace: bool = False) -> torch.Tensor:
        """``keep`` (B,) in {0, 1}: rows with 0 come out unchanged (both residual gates zeroed): padded rows
        of a bucket cost no extra pass over the tokens, the mask rides on the gates. ``inplace``: the result
        is written into ``x`` (compiled, the last residual add stores there directly: no copy). ``c``: see
        :meth:`modulation`."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c).chunk(6, dim=1)  # 6 x (B, D)
        if keep is not None:
            gate_msa, gate_mlp = gate_msa * keep.unsqueeze(1), gate_mlp * keep.unsqueeze(1)  # (B, D)
        h = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, N, D)
        h = h + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(h), shift_mlp, scale_mlp))  # (B, N, D)
        return x.copy_(h) if inplace else h


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (B, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p*p*C_out)


class DiT(nn.Module):
    arch = "DiT"

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        c = config
        self.in_channels = c.in_channels
        self.out_channels = c.in_channels * 2 if c.learn_sigma else c.in_channels
        self.patch_size = c.patch_size
        self.num_heads = c.num_heads
        self.x_embedder = PatchEmbed(c.input_size, c.patch_size, c.in_channels, c.hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(c.hidden_size, freq_shift=c.time_freq_shift)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size, c.class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        # Fixed sin-cos embedding, stored as a frozen parameter exactly as in the official code.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, c.hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio, c.mlp_norm_eps) for _ in range(c.depth)]
        )
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, self.out_channels)
        # per block, the tokens its attention sees (None: all of them); token merging (tome.py) sets it
        self.attn_tokens: list[int] | None = None
        self.initialize_weights()

    # ---- backbone interface (backbone.Backbone) ---------------------------------------------------
    @property
    def num_exit_blocks(self) -> int:
        """How many blocks an exit schedule may drop from (all of DiT's blocks)."""
        return self.config.depth

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def null_label(self) -> int | None:
        """Row ``num_classes`` of the label table, present when the model was trained with label dropout."""
        has_row = self.y_embedder.embedding_table.num_embeddings > self.config.num_classes
        return self.config.num_classes if has_row else None

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def image_tokens(self, s: Tokens) -> torch.Tensor:
        return s.h  # (B, N, D): DiT has no extra tokens

    def exit_blocks(self) -> nn.ModuleList:
        return self.blocks

    def compute_blocks(self) -> nn.ModuleList:
        return self.blocks

    def time_embedder(self) -> nn.Module:
        return self.t_embedder

    def attentions(self) -> list[nn.Module]:
        """The self-attention of every compute block, (B, N, D) -> (B, N, D)."""
        return [blk.attn for blk in self.blocks]

    def token_layout(self) -> tuple[int, int]:
        """(extra tokens in front of the patches, patch grid side)."""
        return 0, self.x_embedder.grid_size

    def set_label_dropout(self, p: float) -> None:
        self.y_embedder.dropout_prob = p

    def default_label_dropout(self) -> float:
        return self.config.class_dropout_prob

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def learn_sigma(self) -> bool:
        return self.config.learn_sigma

    # ---- initialisation (official scheme, in one place) -------------------------------------------
    def initialize_weights(self) -> None:
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        pos = get_2d_sincos_pos_embed(self.config.hidden_size, self.x_embedder.grid_size)
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    # ---- forward --------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        active_blocks: int | None = None,
        exits=None,
        depth_out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, C, H, W) at training timestep t (B,) with labels y (B,) -> (B, C_out, H, W).

        ``active_blocks``: None = all blocks; k = blocks[:k] for every row; a (B,) tensor = a depth per row.
        ``y=None`` uses the null label.
        """
        return backbone.forward(self, x, t, y, active_blocks, exits, depth_out)

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> Tokens:
        if y is None:
            y = torch.full((x.shape[0],), self.config.num_classes, dtype=torch.long, device=x.device)
        # (B, N, D), made token-major in memory: the patch conv's output is channel-major (strides (N*D, 1, N)),
        # and every block would otherwise read and write the residual stream with a stride of N along D
        h = (self.x_embedder(x) + self.pos_embed).contiguous()
        c = self.t_embedder(t) + self.y_embedder(y, self.training)  # (B, D)
        return Tokens(h, c)

    def run_block(self, i: int, s: Tokens, n: int, active: torch.Tensor | None = None) -> Tokens:
        """Block i on rows [:n]; a row past its depth is unchanged (``active`` False / 0: also unchanged).
        Without gradient the rows are updated in place (rows [:n] are a contiguous view; compiled, the
        block's last residual add stores there directly)."""
        if n <= 0:
            return s
        h, c = (s.h, s.c) if n >= s.h.shape[0] else (s.h[:n], s.c[:n])
        keep = None if active is None else active.to(h.dtype)  # no copy when already h's dtype
        if not torch.is_grad_enabled():
            self.blocks[i](h, c, keep, inplace=True)  # (n, N, D) written into s.h[:n]
            return Tokens(s.h, s.c)
        out = self.blocks[i](h, c, keep)  # (n, N, D)
        return Tokens(backbone.prefix_update(s.h, n, out), s.c)

    def head(self, s: Tokens) -> torch.Tensor:
        x = self.final_layer(s.h, s.c)  # (B, N, p*p*C_out)
        return unpatchify(x, self.patch_size, self.out_channels)  # (B, C_out, H, W)

    # ---- analytic cost --------------------------------------------------------------------------
    def flops(self, active_blocks: int | None = None) -> float:
        """Forward FLOPs for one image (a multiply-add counts 2), matmuls and attention only."""
        c = self.config
        k = c.depth if active_blocks is None else active_blocks
        N, D, p = self.x_embedder.num_patches, c.hidden_size, c.patch_size
        hidden = int(D * c.mlp_ratio)
        tokens = self.attn_tokens or [N] * c.depth  # tokens each block's attention sees (fewer under token merging)

        def block(n: int) -> int:  # qkv, attention and proj on n tokens; MLP and adaLN on all N
            return 2 * n * (3 * D * D + D * D) + 4 * n * n * D + 2 * N * 2 * D * hidden + 2 * D * 6 * D

        outside = (
            2 * N * (p * p * c.in_channels) * D  # patch embedding
            + 2 * (256 * D + D * D)  # timestep MLP
            + 2 * D * 2 * D  # final adaLN
            + 2 * N * D * p * p * self.out_channels  # final linear
        )
        return float(outside + sum(block(tokens[i]) for i in range(k)))


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """Recover DiT constructor keywords from an official-format state dict (heads from the size table)."""
    hidden = sd["x_embedder.proj.weight"].shape[0]
    in_ch = sd["x_embedder.proj.weight"].shape[1]
    patch = sd["x_embedder.proj.weight"].shape[2]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    num_patches = sd["pos_embed"].shape[1]
    out_ch = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
    rows = sd["y_embedder.embedding_table.weight"].shape[0]
    mlp_hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    heads = next((s["num_heads"] for s in DIT_SIZES.values() if s["hidden_size"] == hidden), max(1, hidden // 64))
    return dict(
        input_size=int(round(num_patches**0.5)) * patch,
        patch_size=patch,
        in_channels=in_ch,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_hidden / hidden,
        learn_sigma=out_ch == 2 * in_ch,
        # a table with one extra row carries the CFG null label; treat it as trained with label dropout
        num_classes=rows - 1 if rows > 1 else rows,
        class_dropout_prob=0.1 if rows > 1 else 0.0,
    )


# official name -> diffusers name, for the parameters that map one to one (both conversions read these)
_DIFFUSERS_TOP = {
    "x_embedder.proj.weight": "pos_embed.proj.weight",
    "x_embedder.proj.bias": "pos_embed.proj.bias",
    "final_layer.adaLN_modulation.1.weight": "proj_out_1.weight",
    "final_layer.adaLN_modulation.1.bias": "proj_out_1.bias",
    "final_layer.linear.weight": "proj_out_2.weight",
    "final_layer.linear.bias": "proj_out_2.bias",
}
PIPELINE_NULL_LABEL = 1000  # the label diffusers' DiTPipeline passes as the null class for classifier-free guidance

# the shared embedders, under each diffusers block's norm1.emb.
_DIFFUSERS_EMB = {
    "t_embedder.mlp.0.weight": "timestep_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "timestep_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "timestep_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "timestep_embedder.linear_2.bias",
    "y_embedder.embedding_table.weight": "class_embedder.embedding_table.weight",
}
# per block (blocks.{i}. -> transformer_blocks.{i}.); attn.qkv is split into to_q/to_k/to_v
_DIFFUSERS_BLOCK = {
    "adaLN_modulation.1.weight": "norm1.linear.weight",
    "adaLN_modulation.1.bias": "norm1.linear.bias",
    "attn.proj.weight": "attn1.to_out.0.weight",
    "attn.proj.bias": "attn1.to_out.0.bias",
    "mlp.fc1.weight": "ff.net.0.proj.weight",
    "mlp.fc1.bias": "ff.net.0.proj.bias",
    "mlp.fc2.weight": "ff.net.2.weight",
    "mlp.fc2.bias": "ff.net.2.bias",
}


def from_diffusers_state_dict(sd: dict[str, torch.Tensor], cfg: dict, num_classes: int | None = None,
                              time_freq_shift: int = 1) -> tuple[DiTConfig, dict[str, torch.Tensor]]:
    """Convert a diffusers ``DiTTransformer2DModel`` (config.json + weights) to official DiT names.

    ``num_classes``: the classes of the model that ``to_diffusers_state_dict`` widened to DiTPipeline's
    1000 (``eediff.json`` records it); its label table is cut back to them and the null row.
    ``time_freq_shift``: the time sinusoid's shift (diffusers' constant is 1; an eediff export of a model
    trained with the official 0 records 0 in ``eediff.json``)."""
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    in_ch = cfg.get("in_channels", 4)
    out_ch = cfg.get("out_channels") or in_ch
    emb_rows = sd["transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"].shape[0]
    n_cls = cfg.get("num_embeds_ada_norm", 1000)
    if num_classes is not None and not (isinstance(num_classes, int) and 0 < num_classes <= n_cls and emb_rows == n_cls + 1):
        raise ModelError(f"eediff.json's num_classes {num_classes!r} does not fit this folder's {n_cls} classes and {emb_rows} "
                         "label rows: export the model again")
    widened = num_classes is not None and num_classes < n_cls
    config = DiTConfig(
        input_size=cfg["sample_size"],
        patch_size=cfg["patch_size"],
        in_channels=in_ch,
        hidden_size=inner,
        depth=cfg["num_layers"],
        num_heads=cfg["num_attention_heads"],
        mlp_ratio=sd["transformer_blocks.0.ff.net.0.proj.weight"].shape[0] / inner,
        class_dropout_prob=0.1 if emb_rows > n_cls else 0.0,
        num_classes=num_classes if widened else n_cls,
        learn_sigma=out_ch == 2 * in_ch,
        time_freq_shift=time_freq_shift,
        mlp_norm_eps=cfg.get("norm_eps", 1e-5),
    )
    if cfg.get("activation_fn", "gelu-approximate") != "gelu-approximate" or cfg.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise ModelError("only diffusers DiT folders with gelu-approximate and ada_norm_zero can be converted (the official DiT architecture)")
    e = "transformer_blocks.0.norm1.emb."
    out = {ours: sd[theirs] for ours, theirs in _DIFFUSERS_TOP.items()}
    out.update({ours: sd[e + theirs] for ours, theirs in _DIFFUSERS_EMB.items()})
    for i in range(config.depth):
        b, o = f"transformer_blocks.{i}.", f"blocks.{i}."
        # diffusers stores one (identical) embedder per block; eediff, like the official code, shares one.
        for name in ("timestep_embedder.linear_1.weight", "class_embedder.embedding_table.weight"):
            if not torch.equal(sd[b + "norm1.emb." + name], sd[e + name]):
                raise ModelError(f"block {i} of this diffusers DiT has its own {name}; eediff's DiT (the official one) shares one")
        out.update({o + ours: sd[b + theirs] for ours, theirs in _DIFFUSERS_BLOCK.items()})
        out[o + "attn.qkv.weight"] = torch.cat([sd[b + f"attn1.to_{n}.weight"] for n in "qkv"], 0)
        out[o + "attn.qkv.bias"] = torch.cat([sd[b + f"attn1.to_{n}.bias"] for n in "qkv"], 0)
    if widened:  # the model's classes and its null row (the widened export's row 1000)
        table = out["y_embedder.embedding_table.weight"]
        out["y_embedder.embedding_table.weight"] = torch.cat([table[:num_classes], table[n_cls:]])
    pos = get_2d_sincos_pos_embed(inner, config.input_size // config.patch_size)
    out["pos_embed"] = torch.from_numpy(pos).float().unsqueeze(0)
    return config, out


def to_diffusers_state_dict(model: "DiT", pipeline_labels: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """The reverse of ``from_diffusers_state_dict``: a diffusers ``DiTTransformer2DModel`` config and weights.

    ``pipeline_labels``: a model of fewer than 1000 classes gets a label table of 1000 classes and the null
    row at 1000, because diffusers' ``DiTPipeline`` feeds label 1000 as the null class of classifier-free
    guidance whatever the model (labels 0..C-1 keep their rows; the rows C..999 hold the null embedding,
    so a label the model never had gives unconditional samples). ``from_diffusers_state_dict(...,
    num_classes=C)`` undoes it.

    diffusers keeps one copy of the timestep/label embedder in every block (all identical); the official
    layout shares one, which is copied into each block here. diffusers fixes the sinusoid's frequency shift
    at 1; a model trained with the official shift 0 gets slightly different time features there (the
    export reports the difference, ``time_feature_error``)."""
    c = model.config
    if c.mlp_ratio != 4.0:
        raise ModelError(f"diffusers' DiT block has an MLP ratio of 4; this DiT has {c.mlp_ratio}: it cannot be exported")
    sd = {k: v.detach() for k, v in model.state_dict().items() if not k.startswith("uem.")}
    cfg = {
        "_class_name": "DiTTransformer2DModel",
        "num_attention_heads": c.num_heads,
        "attention_head_dim": c.hidden_size // c.num_heads,
        "in_channels": c.in_channels,
        "out_channels": model.out_channels,
        "num_layers": c.depth,
        "dropout": 0.0,
        "norm_num_groups": 32,
        "attention_bias": True,
        "sample_size": c.input_size,
        "patch_size": c.patch_size,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": c.num_classes,
        "upcast_attention": False,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": c.mlp_norm_eps,
    }
    emb = {theirs: sd[ours] for ours, theirs in _DIFFUSERS_EMB.items()}
    table = emb["class_embedder.embedding_table.weight"]
    if table.shape[0] == c.num_classes:  # trained without label dropout: diffusers' table always has the null row
        table = torch.cat([table, torch.zeros_like(table[:1])])
    if pipeline_labels and c.num_classes < PIPELINE_NULL_LABEL:
        null = table[c.num_classes:]
        table = torch.cat([table[:c.num_classes], null.expand(PIPELINE_NULL_LABEL - c.num_classes, -1), null])
        cfg["num_embeds_ada_norm"] = PIPELINE_NULL_LABEL
    emb["class_embedder.embedding_table.weight"] = table
    out = {theirs: sd[ours] for ours, theirs in _DIFFUSERS_TOP.items()}
    h = c.hidden_size
    for i in range(c.depth):
        b, o = f"transformer_blocks.{i}.", f"blocks.{i}."
        out.update({b + "norm1.emb." + k: v.clone() for k, v in emb.items()})
        out.update({b + theirs: sd[o + ours] for ours, theirs in _DIFFUSERS_BLOCK.items()})
        for j, n in enumerate("qkv"):
            out[b + f"attn1.to_{n}.weight"] = sd[o + "attn.qkv.weight"][j * h:(j + 1) * h].clone()
            out[b + f"attn1.to_{n}.bias"] = sd[o + "attn.qkv.bias"][j * h:(j + 1) * h].clone()
    return cfg, {k: v.contiguous() for k, v in out.items()}


# ---- registry hooks ------------------------------------------------------------------------------
CONFIG_CLASS = DiTConfig
MODEL_CLASS = DiT


def owns_state_dict(sd: dict) -> bool:
    return "x_embedder.proj.weight" in sd and "final_layer.linear.weight" in sd


def default_process():
    from ..diffusion.process import DiscreteVP

    return DiscreteVP()


DEFAULT_LR_SCHEDULE = "constant"  # the official DiT training


def config_for_data(image_size: int, channels: int, num_classes: int, label_dropout: float | None) -> dict:
    """A label table of num_classes rows plus the null row when labels are dropped (one class if unlabelled)."""
    out = dict(input_size=image_size, in_channels=channels, num_classes=max(1, num_classes))
    out["class_dropout_prob"] = (0.1 if label_dropout is None else label_dropout) if num_classes > 0 else 0.0
    return out
