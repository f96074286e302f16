"""Attention layouts: which keys each query may see, as an open protocol.

A ForwardProcess builds a layout for its examples and a Sampler (through the process's
inference record) for generation; a Backbone never re-derives structure, it asks the layout
through :func:`attention_mask` (dense, for SDPA) or :meth:`AttentionLayout.block_mask`
(FlexAttention, where PyTorch has it). A layout is a vectorised predicate
``allowed(q_idx, kv_idx, batch)`` over indices of its own index space plus structure metadata;
plug-ins add layouts by subclassing, with no core edit.

Index space: a layout's indices are the positions of the full input the process builds (for
BD3, ``z ⊕ x``: 0..2L−1). With a KV cache the cached keys are the first indices and the new
queries follow them, so a backbone materialises the query rows from ``q_offset = keys − queries``.
Key padding (``[B, keys]``, True = real token) applies on top of every layout.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from mdm_core.errors import MdmError


@dataclass(eq=False)
class AttentionLayout(abc.ABC):
    """Base of every layout: a predicate, its metadata, and the materialisers.

    Subclasses implement :meth:`allowed` (vectorised; must broadcast its arguments) and set
    ``name``; layouts whose rule depends on the example set ``per_example = True`` and read
    ``batch``. ``block_size`` is the structure's block length (None when it has no blocks): the
    backbone maps per-block times to positions with it (:func:`block_index`).
    """

    name: ClassVar[str]
    #: True when ``allowed`` depends on the example (``batch`` index), e.g. Jigsaw's masked blocks.
    per_example: ClassVar[bool] = False

    key_padding: Tensor | None = field(default=None, kw_only=True)

    @property
    def block_size(self) -> int | None:
        return None

    @abc.abstractmethod
    def allowed(self, q_idx: Tensor, kv_idx: Tensor, batch: Tensor | None = None) -> Tensor:
        """Boolean: may query ``q_idx`` attend to key ``kv_idx`` (of example ``batch``)?"""

    def sees_everything(self) -> bool:
        """True when every query sees every key (lets a backbone skip the mask entirely)."""
        return False

    def batch_size(self) -> int | None:
        """Examples a per-example layout describes (None: the same rule for every example)."""
        return None

    def dense(
        self, q_len: int, kv_len: int, q_offset: int = 0, device: torch.device | str | None = None
    ) -> Tensor | None:
        """``[B|1, q_len, kv_len]`` boolean (True = may attend), or None when nothing is hidden.

        Queries are indices ``q_offset .. q_offset+q_len−1``, keys ``0 .. kv_len−1``. A query row
        that would see no key (a padded query) is let see itself, so softmax stays finite; its
        output is never used.
        """
        padding = self._padding(kv_len, device)
        if self.sees_everything() and padding is None:
            return None
        q = torch.arange(q_offset, q_offset + q_len, device=device)
        kv = torch.arange(kv_len, device=device)
        if self.per_example:
            size = self.batch_size()
            if size is None:
                raise MdmError(f"layout '{self.name}' is per-example but does not say its batch size")
            b = torch.arange(size, device=device)[:, None, None]
            allowed = self.allowed(q[None, :, None], kv[None, None, :], b)
        else:
            allowed = self.allowed(q[:, None], kv[None, :])[None]
        allowed = torch.broadcast_to(allowed, (allowed.shape[0], q_len, kv_len)).to(device)
        if padding is not None:
            allowed = allowed & padding[:, None, :]
        own = q[:, None] == kv[None, :]
        return allowed | own[None]

    def block_mask(
        self, q_len: int, kv_len: int, q_offset: int = 0, device: torch.device | str = "cpu"
    ) -> Any:
        """A FlexAttention ``BlockMask`` of the same rule (with key padding), built once per shape.

        Raises ``MdmError`` when this PyTorch has no FlexAttention.
        """
        try:
            from torch.nn.attention.flex_attention import create_block_mask
        except ImportError as exc:  # pragma: no cover - torch < 2.5
            raise MdmError(f"FlexAttention is not available in torch {torch.__version__}") from exc
        key = (q_len, kv_len, q_offset, str(device))
        cache: dict[tuple[Any, ...], Any] = self.__dict__.setdefault("_block_masks", {})
        if key in cache:
            return cache[key]
        padding = self._padding(kv_len, device)
        per_example = self.per_example or padding is not None
        size = self.batch_size() or (padding.shape[0] if padding is not None else None)

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            del h
            q = q_idx + q_offset
            ok = self.allowed(q, kv_idx, b if self.per_example else None)
            if padding is not None:
                ok = ok & padding[b, kv_idx]
            return ok | (q == kv_idx)

        cache[key] = create_block_mask(
            mask_mod, size if per_example else None, None, q_len, kv_len, device=str(device)
        )
        return cache[key]

    def _padding(self, kv_len: int, device: torch.device | str | None) -> Tensor | None:
        if self.key_padding is None or bool(self.key_padding.all()):
            return None
        if self.key_padding.shape[-1] != kv_len:
            raise MdmError(
                f"layout '{self.name}': key_padding covers {self.key_padding.shape[-1]} keys but the "
                f"attention has {kv_len}; pass key_padding as [B, {kv_len}]"
            )
        return self.key_padding.to(device=device, dtype=torch.bool)


@dataclass(eq=False)
class FullLayout(AttentionLayout):
    """Bidirectional: every query sees every (non-pad) key. MDLM's layout."""

    name: ClassVar[str] = "full"

    def allowed(self, q_idx: Tensor, kv_idx: Tensor, batch: Tensor | None = None) -> Tensor:
        return torch.ones_like(q_idx + kv_idx, dtype=torch.bool)

    def sees_everything(self) -> bool:
        return True


@dataclass(eq=False)
class BlockCausalLayout(AttentionLayout):
    """Bidirectional inside blocks of ``size``, causal across blocks (semi-AR generation).

    ``size = 1`` is the causal (autoregressive) layout.
    """

    name: ClassVar[str] = "block_causal"
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1:
            raise MdmError(f"block_causal layout: block size must be ≥ 1, got {self.size}")

    @property
    def block_size(self) -> int | None:
        return self.size

    def allowed(self, q_idx: Tensor, kv_idx: Tensor, batch: Tensor | None = None) -> Tensor:
        return kv_idx // self.size <= q_idx // self.size


@dataclass(eq=False)
class BD3Layout(AttentionLayout):
    """Block diffusion over ``z ⊕ x`` (METHODS §4.1): indices < ``seq_len`` are the noisy half.

    With ``blk(i) = (i mod n) // size``, q sees k iff same half and same block (block-diagonal),
    or q noisy, k clean and ``blk(k) < blk(q)`` (offset block-causal), or both clean and
    ``blk(k) ≤ blk(q)`` (block-causal). Clean tokens never see noisy ones.
    """

    name: ClassVar[str] = "bd3"
    seq_len: int = 1
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1 or self.seq_len % self.size:
            raise MdmError(
                f"bd3 layout: block size {self.size} must be ≥ 1 and divide the sequence length "
                f"{self.seq_len}"
            )

    @property
    def block_size(self) -> int | None:
        return self.size

    @property
    def noisy_len(self) -> int:
        """Indices below this are the noisy half ``z``; the rest are the clean half ``x``."""
        return self.seq_len

    def allowed(self, q_idx: Tensor, kv_idx: Tensor, batch: Tensor | None = None) -> Tensor:
        n = self.seq_len
        q_clean, k_clean = q_idx >= n, kv_idx >= n
        q_blk, k_blk = (q_idx % n) // self.size, (kv_idx % n) // self.size
        diagonal = (q_clean == k_clean) & (q_blk == k_blk)
        offset = ~q_clean & k_clean & (k_blk < q_blk)
        causal = q_clean & k_clean & (k_blk <= q_blk)
        return diagonal | offset | causal


@dataclass(eq=False)
class MaskLayout(AttentionLayout):
    """An explicit boolean mask ``[B|1, rows, keys]`` (True = may attend), for tests and one-offs.

    Row r is query index ``q_offset + r``; prefer a predicate layout, which a backbone can also
    turn into a FlexAttention block mask without a dense tensor.
    """

    name: ClassVar[str] = "mask"
    mask: Tensor = field(default_factory=lambda: torch.ones(1, 1, 1, dtype=torch.bool))
    q_offset: int = 0

    def __post_init__(self) -> None:
        if self.mask.dim() != 3 or self.mask.dtype != torch.bool:
            raise MdmError(
                f"mask layout: mask must be a boolean [B or 1, queries, keys] tensor, got "
                f"{self.mask.dtype} of shape {tuple(self.mask.shape)}"
            )

    @property
    def per_example(self) -> bool:  # type: ignore[override]
        return self.mask.shape[0] > 1

    def batch_size(self) -> int | None:
        return int(self.mask.shape[0])

    def allowed(self, q_idx: Tensor, kv_idx: Tensor, batch: Tensor | None = None) -> Tensor:
        rows, keys = self.mask.shape[-2:]
        r = q_idx - self.q_offset
        inside = (r >= 0) & (r < rows) & (kv_idx >= 0) & (kv_idx < keys)
        b = torch.zeros_like(r) if batch is None else batch
        picked = self.mask.to(r.device)[
            b.clamp(0, self.mask.shape[0] - 1), r.clamp(0, rows - 1), kv_idx.clamp(0, keys - 1)
        ]
        return picked & inside


def attention_mask(
    layout: AttentionLayout | None, queries: int, keys: int, device: torch.device | str | None = None
) -> Tensor | None:
    """The one helper backbones use: the boolean ``[B|1, queries, keys]`` mask or None (see all).

    With a KV cache the queries are the last ``queries`` of ``keys`` indices.
    """
    if layout is None:
        return None
    if queries > keys:
        raise MdmError(f"attention: {queries} queries over only {keys} keys; the cache cannot be longer")
    return layout.dense(queries, keys, q_offset=keys - queries, device=device)


def block_index(layout: AttentionLayout | None, positions: Tensor, n_blocks: int) -> Tensor:
    """Each position's block for per-block times ``t`` ``[B, n_blocks]``: ``position // block_size``.

    Positions (not indices) decide the block, so both halves of ``z ⊕ x`` share their block's t.
    """
    size = layout.block_size if layout is not None else None
    if size is None:
        raise MdmError(
            f"per-block times ([B, {n_blocks}]) need a layout with a block size; "
            f"got {'no layout' if layout is None else repr(layout.name)}"
        )
    return (positions // size).clamp(0, n_blocks - 1)
