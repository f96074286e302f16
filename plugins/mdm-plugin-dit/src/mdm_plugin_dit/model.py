"""DiT: a pre-norm transformer with adaLN-zero modulation and rotary positions.

Why this shape: adaLN-zero (Peebles & Xie 2023, as used by MDLM) starts every block as the
identity, so a deep stack trains stably, and its modulation comes from one conditioning vector
that is either an embedding of t or a learned constant; switching time conditioning off removes
the dependence on t without changing the architecture. Rotary positions make ``position_ids``
the only source of position information, which is what block diffusion needs (``z ⊕ x``: both
halves at positions 0..L-1) and what makes a KV cache of a clean prefix exact. The model holds no
mask logic: which keys a query sees is the layout's business, asked through
``mdm_core.layouts`` (a dense mask for SDPA, or a FlexAttention block mask).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mdm_core.errors import MdmError
from mdm_core.interfaces import AttentionLayout, Backbone, KVCache, RunShape
from mdm_core.interfaces import Params as BaseParams
from mdm_core.layouts import attention_block_mask, attention_mask, block_index

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"dim": 64, "layers": 2, "heads": 2, "cond_dim": 32},
    "mini": {"dim": 128, "layers": 4, "heads": 4, "cond_dim": 64},
    "small": {"dim": 768, "layers": 12, "heads": 12, "cond_dim": 128},
}
"""Shapes that ``size`` fills in; keys given explicitly win over the preset."""

TIME_FREQUENCIES = 256
"""Width of the sinusoidal features of t fed to the time MLP."""


class DiTParams(BaseParams):
    """Shape and conditioning of a DiT; ``size`` picks a preset, explicit keys override it."""

    size: Literal["custom", "tiny", "mini", "small"] = "custom"
    dim: int = Field(default=256, gt=0)
    layers: int = Field(default=6, gt=0)
    heads: int = Field(default=8, gt=0)
    mlp_ratio: float = Field(default=4.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    time_conditioning: bool = False
    cond_dim: int = Field(default=128, gt=0)
    rope_base: float = Field(default=10000.0, gt=0)
    tie_embeddings: bool = False
    #: ``sdpa``: a dense boolean mask; ``flex``: FlexAttention with the layout's cached block mask
    #: (fused under ``trainer.compile``; eager it is a slow reference).
    attention: Literal["sdpa", "flex"] = "sdpa"

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("size"), str) and data["size"] in PRESETS:
            return {**PRESETS[data["size"]], **data}
        return data

    @model_validator(mode="after")
    def _check_heads(self) -> DiTParams:
        if self.dim % self.heads:
            raise ValueError(
                f"dim={self.dim} is not divisible by heads={self.heads}; pick heads dividing dim"
            )
        if (self.dim // self.heads) % 2:
            raise ValueError(
                f"head size dim/heads={self.dim // self.heads} is odd; rotary positions need an even "
                "head size, change dim or heads"
            )
        return self


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def _per_position(mod: Tensor, blocks: Tensor | None) -> Tensor:
    """Broadcast per-block modulation ``[B, n, C]`` to positions ``[B, L, C]`` (no-op for ``n = 1``)."""
    if blocks is None:
        return mod
    return mod.gather(1, blocks[..., None].expand(-1, -1, mod.shape[-1]))


def _rotary_tables(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos/sin ``[B|1, 1, L, head_dim]`` in fp32 for integer ``positions`` ``[B|1, L]``."""
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    )
    angles = positions.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos(), angles.sin()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Apply rotary positions to ``x`` ``[B, H, L, D]`` (computed in fp32, returned in x's dtype)."""
    xf = x.float()
    first, second = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-second, first], dim=-1) * sin).to(x.dtype)


def _flex_attention() -> Any:
    """FlexAttention's entry point, or a clear error on a PyTorch without it (< 2.5)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as exc:  # pragma: no cover - torch < 2.5
        raise MdmError(
            f"backbone.attention=flex needs FlexAttention (torch ≥ 2.5), this is torch {torch.__version__}; "
            "use attention: sdpa"
        ) from exc
    return flex_attention


class TimeEmbedding(nn.Module):
    """Sinusoidal features of ``1000·t`` followed by a two-layer MLP (DiT's timestep embedder)."""

    def __init__(self, cond_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(TIME_FREQUENCIES, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    def forward(self, t: Tensor) -> Tensor:
        half = TIME_FREQUENCIES // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )
        angles = 1000.0 * t.to(torch.float32)[..., None] * freqs
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=-1))


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP, each with adaLN shift/scale before and a gate after."""

    def __init__(self, p: DiTParams) -> None:
        super().__init__()
        self.heads = p.heads
        self.flex: Any = _flex_attention() if p.attention == "flex" else None
        hidden = int(p.dim * p.mlp_ratio)
        self.norm1 = nn.LayerNorm(p.dim, elementwise_affine=False)
        self.qkv = nn.Linear(p.dim, 3 * p.dim, bias=False)
        self.proj = nn.Linear(p.dim, p.dim, bias=False)
        self.norm2 = nn.LayerNorm(p.dim, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(p.dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, p.dim)
        )
        self.drop = nn.Dropout(p.dropout)
        self.modulation = nn.Linear(p.cond_dim, 6 * p.dim)

    def forward(
        self,
        x: Tensor,
        cond: Tensor,
        blocks: Tensor | None,
        rope: tuple[Tensor, Tensor],
        mask: Any,
        cache: KVCache | None,
        layer: int,
    ) -> Tensor:
        """``mask``: the dense ``[B|1, Lq, Lk]`` mask (SDPA) or the ``BlockMask`` (flex); None: see all."""
        mod = _per_position(self.modulation(cond), blocks)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        h = _modulate(self.norm1(x), shift1, scale1)
        x = x + gate1 * self.drop(self._attend(h, rope, mask, cache, layer))
        h = _modulate(self.norm2(x), shift2, scale2)
        return x + gate2 * self.drop(self.mlp(h))

    def _attend(
        self, h: Tensor, rope: tuple[Tensor, Tensor], mask: Any, cache: KVCache | None, layer: int
    ) -> Tensor:
        b, length, dim = h.shape
        q, k, v = self.qkv(h).view(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k = _rotate(q, *rope), _rotate(k, *rope)
        if cache is not None:
            if layer < len(cache.keys):
                k = torch.cat([cache.keys[layer].to(k.dtype), k], dim=2)
                v = torch.cat([cache.values[layer].to(v.dtype), v], dim=2)
            if cache.append:
                if layer < len(cache.keys):
                    cache.keys[layer], cache.values[layer] = k, v
                else:
                    cache.keys.append(k)
                    cache.values.append(v)
        if self.flex is not None:
            if q.device.type == "cpu" and q.requires_grad:
                raise MdmError(
                    f"backbone.attention=flex cannot train on CPU: FlexAttention has no CPU backward in "
                    f"torch {torch.__version__}; use attention: sdpa (flex is forward-only on CPU)"
                )
            out = self.flex(q, k, v, block_mask=mask)
        else:
            attn_mask = None if mask is None else mask.unsqueeze(-3)  # broadcast over heads
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))


# --------------------------------------------------------------------------------------------
# The backbone
# --------------------------------------------------------------------------------------------


class DiT(Backbone):
    """Diffusion transformer: adaLN-zero blocks, rotary positions, attention layouts, KV cache.

    ``time_cond`` is ``[B]`` or ``[B, n_blocks]``; per-block times need a layout with a block
    size, and a position's block is ``position // block_size`` (:func:`block_index`), so the two
    halves of ``z ⊕ x``, which share positions, share their block's t. Inputs may be longer than
    ``shape.seq_len`` (rotary positions have no table). Logits come back in the compute dtype
    (fp32, or bf16 under autocast); the loss upcasts them.
    """

    name = "dit"
    Params = DiTParams
    params: DiTParams

    def __init__(self, params: DiTParams | None, shape: RunShape) -> None:
        super().__init__(params, shape)
        p = self.params
        vocab = shape.vocab
        self.uses_time = p.time_conditioning
        self.head_dim = p.dim // p.heads
        self.embed = nn.Embedding(vocab.size, p.dim)
        if p.time_conditioning:
            self.time_embed: TimeEmbedding | None = TimeEmbedding(p.cond_dim)
            self.constant_cond: nn.Parameter | None = None
        else:
            self.time_embed = None
            self.constant_cond = nn.Parameter(torch.empty(p.cond_dim))
        self.blocks = nn.ModuleList(DiTBlock(p) for _ in range(p.layers))
        self.final_norm = nn.LayerNorm(p.dim, elementwise_affine=False)
        self.final_modulation = nn.Linear(p.cond_dim, 2 * p.dim)
        self.head = None if p.tie_embeddings else nn.Linear(p.dim, vocab.size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) weights; adaLN modulations and the output head start at zero (adaLN-zero)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            assert isinstance(block, DiTBlock)
            nn.init.zeros_(block.modulation.weight)
            nn.init.zeros_(block.modulation.bias)
        nn.init.zeros_(self.final_modulation.weight)
        nn.init.zeros_(self.final_modulation.bias)
        if self.head is not None:
            nn.init.zeros_(self.head.weight)
        if self.constant_cond is not None:
            # Unit scale so SiLU(cond) is not ~0, which would stall the modulation's gradient.
            nn.init.normal_(self.constant_cond, std=1.0)

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        length = input_ids.shape[1]
        device = input_ids.device
        past = 0
        if kv_cache is not None:
            if kv_cache.keys and len(kv_cache.keys) != len(self.blocks):
                raise MdmError(
                    f"KV cache holds {len(kv_cache.keys)} layers but this DiT has {len(self.blocks)}; "
                    "use a fresh KVCache per model"
                )
            past = kv_cache.length
        positions = self._positions(position_ids, length, past, device)
        rope = _rotary_tables(positions, self.head_dim, self.params.rope_base)
        if self.params.attention == "flex":
            mask = attention_block_mask(layout, length, past + length, device)
        else:
            mask = attention_mask(layout, length, past + length, device)
        cond, blocks = self._conditioning(time_cond, positions, layout)
        cond = F.silu(cond)
        x = self.embed(input_ids)
        for layer, block in enumerate(self.blocks):
            x = block(x, cond, blocks, rope, mask, kv_cache, layer)
        shift, scale = _per_position(self.final_modulation(cond), blocks).chunk(2, dim=-1)
        h = _modulate(self.final_norm(x), shift, scale)
        return F.linear(h, self.embed.weight) if self.head is None else self.head(h)

    @staticmethod
    def _positions(position_ids: Tensor | None, length: int, past: int, device: torch.device) -> Tensor:
        """Integer positions ``[B|1, L]``: the given ones, else ``past .. past+L-1``."""
        if position_ids is None:
            return torch.arange(past, past + length, device=device)[None]
        if position_ids.dim() not in (1, 2) or position_ids.shape[-1] != length:
            raise MdmError(
                f"position_ids must be [L] or [B, L] with L={length} (the input length), "
                f"got shape {tuple(position_ids.shape)}"
            )
        positions = position_ids.to(device=device, dtype=torch.long)
        return positions if positions.dim() == 2 else positions[None]

    def _conditioning(
        self, time_cond: Tensor | None, positions: Tensor, layout: AttentionLayout | None
    ) -> tuple[Tensor, Tensor | None]:
        """Conditioning ``[B|1, n|1, cond_dim]`` and, for per-block t, each position's block."""
        if self.time_embed is None:
            assert self.constant_cond is not None
            return self.constant_cond[None, None], None
        if time_cond is None:
            raise MdmError(
                "this DiT was built with time_conditioning=true, so forward needs time_cond "
                "([B] or [B, n_blocks]); pass the example's t or set backbone.time_conditioning=false"
            )
        t = time_cond.to(positions.device)
        if t.dim() == 1:
            return self.time_embed(t)[:, None], None
        if t.dim() != 2:
            raise MdmError(f"time_cond must be [B] or [B, n_blocks], got shape {tuple(t.shape)}")
        blocks = block_index(layout, positions, t.shape[1])
        return self.time_embed(t), blocks.expand(t.shape[0], -1)
