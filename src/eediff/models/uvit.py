"""U-ViT (Bao et al., 2023) with ASE's decoder-side early exit.

Parameter names, shapes and the forward computation follow baofff/U-ViT ``libs/uvit.py``, so an official
``.pth`` (e.g. ``celeba64_uvit_small.pth``) loads with ``strict=True``. Facts checked against that file:

- tokens are ``[label, time, patches]``: the time token is concatenated in front of the patches, then the
  label token in front of both; ``extras = 2`` with labels, else 1; ``pos_embed`` is a learned
  ``(1, extras + num_patches, D)`` parameter (truncated normal, std 0.02), not sin-cos;
- the time token is ``time_embed(timestep_embedding(t, D))`` with ``[cos | sin]`` and frequencies
  ``exp(-ln(10000) i / (D/2))`` (= ``layers.timestep_embedding`` with ``freq_shift=0``); ``time_embed`` is
  ``Linear(D, 4D), SiLU, Linear(4D, D)`` when ``mlp_time_embed`` else ``Identity``;
- ``label_emb = nn.Embedding(num_classes, D)``: exactly ``num_classes`` rows. The ImageNet-256/512 configs
  train with classifier-free guidance by setting ``num_classes=1001``, the last row (1000) being the null
  label; eediff records that with ``null_label=True`` (see ``UViTConfig``);
- ``depth // 2`` ``in_blocks``, one ``mid_block``, ``depth // 2`` ``out_blocks``; each in-block's output is
  pushed on a stack and each out-block pops one (the last in-block's output meets the first out-block);
  out-blocks open with ``skip_linear = Linear(2D, D)`` on ``cat([x, skip], -1)``;
- blocks are pre-norm with ``nn.LayerNorm`` defaults (eps 1e-5, affine), exact GELU, no qkv bias unless
  ``qkv_bias``; then ``norm``, ``decoder_pred`` on every token, the extras dropped, unpatchify
  (``B (h w) (p1 p2 C) -> B C (h p1) (w p2)``) and ``final_layer`` (3x3 conv when ``conv`` else Identity);
- the network takes the continuous VP-SDE time multiplied by 999 (``sde.py``, ``ScoreModel.predict``).

Early exit (ASE, Section 2.2 / Fig. 2): the encoder and the mid block always run; ``active_blocks=k`` runs
the first ``k`` decoder blocks in full and every later decoder block only through its ``skip_linear`` (its
skip is still consumed), so the long skip connections keep carrying encoder features. ``active_blocks`` may
also be a ``(B,)`` tensor, one depth per row (``backbone.forward``); the model implements
``backbone.Backbone`` (``embed`` runs the encoder and mid block, ``run_block`` one decoder block).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from . import backbone
from .backbone import Tokens
from .layers import Attention, Mlp, PatchEmbed, timestep_embedding, unpatchify


@dataclass
class UViTConfig:
    """Keyword names and defaults as in the official ``UViT.__init__`` (plus ``null_label``)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12  # official meaning: depth // 2 in-blocks, 1 mid block, depth // 2 out-blocks
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    qk_scale: float | None = None  # attention scale; None = head_dim ** -0.5
    mlp_time_embed: bool = False
    num_classes: int = -1  # rows of label_emb; <= 0 = unconditional (no label token)
    use_checkpoint: bool = False  # activation checkpointing while training (no effect in eval)
    conv: bool = True
    skip: bool = True
    # eediff: the last label_emb row is the classifier-free-guidance null label (the official ImageNet-256/512
    # configs use num_classes=1001 for 1000 classes + null). Then ``model.num_classes`` is num_classes - 1.
    null_label: bool = False

    def __post_init__(self):
        backbone.check_config(self, {"img_size": 1, "patch_size": 1, "in_chans": 1, "embed_dim": 1, "depth": 2, "num_heads": 1,
                                     "num_classes": -1},
                              divisible=[("img_size", "patch_size"), ("embed_dim", "num_heads")], positive=["mlp_ratio"])


# Official configurations (the ``config.nnet`` dicts of baofff/U-ViT ``configs/``, ``name`` and
# ``use_checkpoint`` left out). Verified against: celeba64_uvit.py (S/4), cifar10_uvit.py (S/2),
# imagenet64_uvit_mid.py (M/4), imagenet256_uvit.py (L/2), imagenet256_uvit_huge.py (H/2).
UVIT_SIZES: dict[str, dict] = {
    "U-ViT-S/4": dict(  # CelebA 64x64, unconditional (the ASE paper's U-ViT)
        img_size=64, patch_size=4, in_chans=3, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4,
        qkv_bias=False, mlp_time_embed=False, num_classes=-1, conv=True,
    ),
    "U-ViT-S/2": dict(  # CIFAR-10 32x32, unconditional
        img_size=32, patch_size=2, in_chans=3, embed_dim=512, depth=12, num_heads=8, mlp_ratio=4,
        qkv_bias=False, mlp_time_embed=False, num_classes=-1, conv=True,
    ),
    "U-ViT-M/4": dict(  # ImageNet 64x64, class-conditional without a null label (no CFG)
        img_size=64, patch_size=4, in_chans=3, embed_dim=768, depth=16, num_heads=12, mlp_ratio=4,
        qkv_bias=False, mlp_time_embed=False, num_classes=1000, conv=True,
    ),
    "U-ViT-L/2": dict(  # ImageNet 256x256 latents (4x32x32), 1000 classes + CFG null label
        img_size=32, patch_size=2, in_chans=4, embed_dim=1024, depth=20, num_heads=16, mlp_ratio=4,
        qkv_bias=False, mlp_time_embed=False, num_classes=1001, conv=True, null_label=True,
    ),
    "U-ViT-H/2": dict(  # ImageNet 256x256 latents (4x32x32), 1000 classes + CFG null label, no final conv
        img_size=32, patch_size=2, in_chans=4, embed_dim=1152, depth=28, num_heads=16, mlp_ratio=4,
        qkv_bias=False, mlp_time_embed=False, num_classes=1001, conv=False, null_label=True,
    ),
}


class UViTAttention(Attention):
    """``layers.Attention`` (names ``qkv``, ``proj``) with the official optional ``qk_scale``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, qk_scale: float | None = None):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.qk_scale = qk_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=self.qk_scale)  # (B, H, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))  # (B, N, C)


class Block(nn.Module):
    """Pre-norm transformer block; with ``skip=True`` it first fuses a long skip through ``skip_linear``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        skip: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = UViTAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate_gelu=False)
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def fuse_skip(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """The part of a decoder block that ASE keeps when the block is dropped."""
        if self.skip_linear is None:
            return x
        return self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, N, 2D) -> (B, N, D)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """With ``skip=None`` a decoder block runs its body only (the skip already fused by ``fuse_skip``)."""
        if skip is not None:
            x = self.fuse_skip(x, skip)  # (B, N, D)
        x = x + self.attn(self.norm1(x))  # (B, N, D)
        x = x + self.mlp(self.norm2(x))  # (B, N, D)
        return x


class UViT(nn.Module):
    arch = "U-ViT"

    def __init__(self, config: UViTConfig):
        super().__init__()
        self.config = config
        c = config
        if c.null_label and c.num_classes < 2:
            raise ValueError(f"null_label needs num_classes >= 2 (classes + the null row), got {c.num_classes}")
        self.in_channels = c.in_chans
        self.patch_size = c.patch_size
        self.embed_dim = c.embed_dim
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.embed_dim, bias=True)
        num_patches = self.patch_embed.num_patches
        D = c.embed_dim
        self.time_embed = (
            nn.Sequential(nn.Linear(D, 4 * D), nn.SiLU(), nn.Linear(4 * D, D)) if c.mlp_time_embed else nn.Identity()
        )
        if c.num_classes > 0:
            self.label_emb = nn.Embedding(c.num_classes, D)
            self.extras = 2
        else:
            self.label_emb = None
            self.extras = 1
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + num_patches, D))
        block = dict(dim=D, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias, qk_scale=c.qk_scale)
        self.in_blocks = nn.ModuleList([Block(**block) for _ in range(c.depth // 2)])
        self.mid_block = Block(**block)
        self.out_blocks = nn.ModuleList([Block(**block, skip=c.skip) for _ in range(c.depth // 2)])
        self.norm = nn.LayerNorm(D)
        self.decoder_pred = nn.Linear(D, c.patch_size**2 * c.in_chans, bias=True)
        self.final_layer = nn.Conv2d(c.in_chans, c.in_chans, 3, padding=1) if c.conv else nn.Identity()
        # per compute block, the tokens its attention sees (None: all of them); token merging (tome.py) sets it
        self.attn_tokens: list[int] | None = None
        self.initialize_weights()

    # ---- backbone interface (backbone.Backbone) ---------------------------------------------------
    @property
    def num_exit_blocks(self) -> int:
        """How many blocks an exit schedule may drop from: the decoder (out) blocks."""
        return len(self.out_blocks)

    @property
    def null_label(self) -> int | None:
        """The last label row when the model was trained for classifier-free guidance (``config.null_label``)."""
        return self.config.num_classes - 1 if self.label_emb is not None and self.config.null_label else None

    @property
    def hidden_size(self) -> int:
        return self.config.embed_dim

    def image_tokens(self, s: Tokens) -> torch.Tensor:
        return s.h[:, self.extras:]  # (B, L, D): the [label, time] tokens dropped

    def exit_blocks(self) -> nn.ModuleList:
        return self.out_blocks

    def compute_blocks(self) -> list[nn.Module]:
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    def time_embedder(self) -> nn.Module:
        return self.time_embed

    def attentions(self) -> list[nn.Module]:
        """The self-attention of every compute block (encoder, mid, decoder), (B, N, D) -> (B, N, D)."""
        return [blk.attn for blk in self.compute_blocks()]

    def token_layout(self) -> tuple[int, int]:
        """(extra tokens in front of the patches: [label,] time; patch grid side)."""
        return self.extras, self.patch_embed.grid_size

    def set_label_dropout(self, p: float) -> None:
        if p:
            raise ValueError("U-ViT drops no labels itself (the official code neither): drop them in the data")

    def default_label_dropout(self) -> float:
        return 0.1 if self.null_label is not None else 0.0

    @property
    def num_classes(self) -> int:
        """Real classes (0 = unconditional). With a null label this is also the null label's index."""
        n = self.config.num_classes
        if n <= 0:
            return 0
        return n - 1 if self.config.null_label else n

    @property
    def input_size(self) -> int:
        return self.config.img_size

    @property
    def learn_sigma(self) -> bool:
        return False

    # ---- initialisation (official scheme, in one place) -------------------------------------------
    def initialize_weights(self) -> None:
        """Official: pos_embed and every Linear ~ truncated normal (std .02, cut at +-2), biases 0,
        LayerNorms 1 / 0; the patch conv, final conv and label embedding keep PyTorch's defaults."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.LayerNorm):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0)

    # ---- forward --------------------------------------------------------------------------------
    def _run(self, blk: Block, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.use_checkpoint and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, skip, use_reentrant=False)
        return blk(x, skip)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        active_blocks: int | torch.Tensor | None = None,
        exits=None,
        depth_out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, C, H, W) at network time t (B,) = 999 * continuous time, labels y (B,) -> eps (B, C, H, W).

        ``active_blocks``: None = all; k = out_blocks[:k] in full and only ``skip_linear`` of the rest; a (B,)
        tensor = a decoder depth per row. For a conditional model ``y=None`` means the null label.
        """
        return backbone.forward(self, x, t, y, active_blocks, exits, depth_out)

    def embed(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> Tokens:
        """Tokens, encoder and mid block (they always run); the encoder's outputs become the long skips."""
        if self.label_emb is None and y is not None:
            raise ValueError("this U-ViT is unconditional (num_classes <= 0): pass y=None")
        if self.label_emb is not None and y is None:
            if not self.config.null_label:
                raise ValueError("this class-conditional U-ViT has no null label: pass class labels y")
            y = torch.full((x.shape[0],), self.config.num_classes - 1, dtype=torch.long, device=x.device)
        x = self.patch_embed(x)  # (B, L, D)
        time_token = self.time_embed(timestep_embedding(t, self.embed_dim).to(x.dtype))  # (B, D)
        x = torch.cat([time_token.unsqueeze(1), x], dim=1)  # (B, 1 + L, D)
        if self.label_emb is not None:
            x = torch.cat([self.label_emb(y).unsqueeze(1), x], dim=1)  # (B, 2 + L, D): [label, time, patches]
        x = x + self.pos_embed  # (B, extras + L, D)
        skips = []
        for blk in self.in_blocks:
            x = self._run(blk, x)  # (B, extras + L, D)
            skips.append(x)
        x = self._run(self.mid_block, x)  # (B, extras + L, D)
        return Tokens(x, None, tuple(skips))

    def run_block(self, i: int, s: Tokens, n: int, active: torch.Tensor | None = None) -> Tokens:
        """Decoder block i: every row fuses its skip (``skip_linear``); rows [:n] (and ``active``) also run the body."""
        x = self.out_blocks[i].fuse_skip(s.h, s.skips[-1])  # (B, extras + L, D)
        if n > 0:
            head = x if n >= x.shape[0] else x[:n]
            out = self._run(self.out_blocks[i], head)  # (n, extras + L, D)
            if active is not None:
                out = torch.where(active.view(-1, 1, 1).bool(), out, head)
            x = backbone.prefix_update(x, n, out)
        return Tokens(x, None, s.skips[:-1])

    def head(self, s: Tokens) -> torch.Tensor:
        x = self.norm(s.h)  # (B, extras + L, D)
        x = self.decoder_pred(x)  # (B, extras + L, p*p*C)
        x = x[:, self.extras:, :]  # (B, L, p*p*C)
        x = unpatchify(x, self.patch_size, self.in_channels)  # (B, C, H, W)
        return self.final_layer(x)  # (B, C, H, W)

    # ---- analytic cost --------------------------------------------------------------------------
    def flops(self, active_blocks: int | None = None) -> float:
        """Forward FLOPs for one image (a multiply-add counts 2): matmuls, attention, convolutions.

        Every block: qkv, attention scores and weighted sum, proj, MLP; the decoder's ``skip_linear`` is
        counted for all out-blocks (dropped ones still run it). Plus patch embedding, the time MLP,
        ``decoder_pred`` (applied to every token, extras included, as in the official code) and the final conv.
        """
        c = self.config
        n_out = len(self.out_blocks)
        k = n_out if active_blocks is None else int(active_blocks)
        L, D, p, C = self.patch_embed.num_patches, c.embed_dim, c.patch_size, c.in_chans
        N = self.extras + L
        hidden = int(D * c.mlp_ratio)
        block = 2 * N * (3 * D * D + D * D + 2 * D * hidden) + 4 * N * N * D
        skip_linear = 2 * N * 2 * D * D if c.skip else 0
        outside = (
            2 * L * (p * p * C) * D  # patch embedding
            + (2 * (D * 4 * D + 4 * D * D) if c.mlp_time_embed else 0)  # time MLP
            + 2 * N * D * p * p * C  # decoder_pred
            + (2 * c.img_size**2 * C * C * 9 if c.conv else 0)  # final 3x3 conv
        )
        fixed_blocks = len(self.in_blocks) + 1  # encoder + mid block always run
        tokens = self.attn_tokens or [N] * (fixed_blocks + n_out)  # fewer under token merging (tome.py)

        def blk(n: int) -> int:  # qkv, attention and proj on n tokens; MLP on all N
            return block + 2 * (n - N) * (3 * D * D + D * D) + 4 * (n * n - N * N) * D

        return float(outside + sum(blk(tokens[i]) for i in range(fixed_blocks + k)) + n_out * skip_linear)


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """Recover ``UViTConfig`` keywords from an official-format state dict (heads from the size table).

    ``null_label`` is a guess: a label table with 10n + 1 rows (1001 for the official ImageNet-256/512
    models) is taken to hold n·10 classes plus the null label; pass ``null_label=...`` to override.
    """
    w = sd["patch_embed.proj.weight"]  # (D, C, p, p)
    D, in_chans, patch = w.shape[0], w.shape[1], w.shape[2]
    n_in = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("in_blocks."))
    rows = sd["label_emb.weight"].shape[0] if "label_emb.weight" in sd else -1
    extras = 2 if rows > 0 else 1
    num_patches = sd["pos_embed"].shape[1] - extras
    heads = next((s["num_heads"] for s in UVIT_SIZES.values() if s["embed_dim"] == D), max(1, D // 64))
    return dict(
        img_size=int(round(num_patches**0.5)) * patch,
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=D,
        depth=2 * n_in,
        num_heads=heads,
        mlp_ratio=sd["in_blocks.0.mlp.fc1.weight"].shape[0] / D,
        qkv_bias="in_blocks.0.attn.qkv.bias" in sd,
        mlp_time_embed="time_embed.0.weight" in sd,
        num_classes=rows,
        conv="final_layer.weight" in sd,
        skip="out_blocks.0.skip_linear.weight" in sd,
        null_label=rows > 1 and rows % 10 == 1,
    )


# ---- registry hooks ------------------------------------------------------------------------------
CONFIG_CLASS = UViTConfig
MODEL_CLASS = UViT


def owns_state_dict(sd: dict) -> bool:
    return "patch_embed.proj.weight" in sd and "in_blocks.0.attn.qkv.weight" in sd


def default_process():
    from ..diffusion.process import ContinuousVP

    return ContinuousVP()


DEFAULT_LR_SCHEDULE = "cosine"


def config_for_data(image_size: int, channels: int, num_classes: int, label_dropout: float | None) -> dict:
    """Official convention: a null label is one more label_emb row (num_classes + 1, null_label)."""
    out = dict(img_size=image_size, in_chans=channels)
    if num_classes > 0 and (label_dropout is None or label_dropout > 0):
        out.update(num_classes=num_classes + 1, null_label=True)
    elif num_classes > 0:
        out.update(num_classes=num_classes, null_label=False)
    else:
        out.update(num_classes=-1, null_label=False)
    return out
