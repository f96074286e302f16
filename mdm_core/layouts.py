"""Attention layouts: which keys each query may see, as an open protocol.

A ForwardProcess builds a layout for its examples and a Sampler (through the process's
inference record) for generation; a Backbone never re-derives structure, it asks the layout
through :func:`attention_mask` (dense, for SDPA) or :func:`attention_block_mask` (FlexAttention,
where PyTorch has it), and maps per-block times to positions with :func:`block_index`. A layout
is a vectorised predicate ``allowed(q_idx, kv_idx, batch)`` over indices of its own index space
plus structure metadata; plug-ins add layouts by subclassing, with no core edit.

Index space: a layout's indices are the positions of the full input the process builds (for
BD3, ``z ⊕ x``: 0..2L−1). With a KV cache the cached keys are the first indices and the new
queries follow them, so a backbone materialises the query rows from ``q_offset = keys − queries``.
Key padding (``[B, keys]``, True = real token) applies on top of every layout, and every query
sees its own index (so no attention row is empty).
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from mdm_core.errors import MdmError

_SHARED_BLOCK_MASKS: OrderedDict[Hashable, Any] = OrderedDict()
_SHARED_LIMIT = 64
"""Block masks of parameter-only rules, shared across layout instances (oldest evicted first)."""


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

    def rule_key(self) -> Hashable | None:
        """A hashable summary of the rule when plain parameters define it, else None.

        Layouts with equal keys (and no key padding) share their FlexAttention block masks across
        instances, so a process may build a fresh layout per batch at no cost. None (the default,
        right for layouts holding tensors) caches per instance.
        """
        return None

    def validate(self, q_len: int, kv_len: int, q_offset: int) -> None:
        """Raise ``MdmError`` when the rule does not cover queries ``q_offset..`` over ``kv_len`` keys."""
        del q_len, kv_len, q_offset

    def dense(
        self, q_len: int, kv_len: int, q_offset: int = 0, device: torch.device | str | None = None
    ) -> Tensor | None:
        """``[B|1, q_len, kv_len]`` boolean (True = may attend), or None when nothing is hidden.

        Queries are indices ``q_offset .. q_offset+q_len−1``, keys ``0 .. kv_len−1``. Every query
        also sees its own index: a padded query would otherwise see no key, and a fully masked row
        is NaN in some attention kernels; its output is never used. Key padding applies on top.
        """
        self.validate(q_len, kv_len, q_offset)
        padding = self._padding(kv_len, device)
        if self.sees_everything() and padding is None:
            return None
        q = torch.arange(q_offset, q_offset + q_len, device=device)
        kv = torch.arange(kv_len, device=device)
        if self.per_example:
            b = torch.arange(self._examples(), device=device)[:, None, None]
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
        """A FlexAttention ``BlockMask`` of exactly :meth:`dense`'s rule, built once per shape.

        Cached per instance, and across instances with the same :meth:`rule_key` when there is no
        key padding. Raises ``MdmError`` when this PyTorch has no FlexAttention.
        """
        try:
            from torch.nn.attention.flex_attention import create_block_mask
        except ImportError as exc:  # pragma: no cover - torch < 2.5
            raise MdmError(f"FlexAttention is not available in torch {torch.__version__}") from exc
        self.validate(q_len, kv_len, q_offset)
        padding = self._padding(kv_len, device)
        shape = (q_len, kv_len, q_offset, str(device))
        rule = self.rule_key() if padding is None else None
        cache: dict[Any, Any] | OrderedDict[Any, Any]
        key: tuple[Any, ...]
        if rule is None:
            cache, key = self.__dict__.setdefault("_block_masks", {}), shape
        else:
            cache, key = _SHARED_BLOCK_MASKS, (type(self), rule, *shape)
        if key in cache:
            return cache[key]
        examples = self._examples() if self.per_example else 1
        if padding is not None and padding.shape[0] != 1:
            if examples not in (1, padding.shape[0]):
                raise MdmError(
                    f"layout '{self.name}' describes {examples} examples but its key_padding has "
                    f"{padding.shape[0]} rows"
                )
            examples = padding.shape[0]

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            del h
            q = q_idx + q_offset
            ok = self.allowed(q, kv_idx, b if self.per_example else None)
            if padding is not None:
                ok = ok & padding[b.clamp(max=padding.shape[0] - 1), kv_idx]
            return ok | (q == kv_idx)

        mask = create_block_mask(
            mask_mod, examples if examples > 1 else None, None, q_len, kv_len, device=str(device)
        )
        cache[key] = mask
        if isinstance(cache, OrderedDict) and len(cache) > _SHARED_LIMIT:
            cache.popitem(last=False)
        return mask

    def _examples(self) -> int:
        size = self.batch_size()
        if size is None:
            raise MdmError(f"layout '{self.name}' is per-example but does not say its batch size")
        return size

    def _padding(self, kv_len: int, device: torch.device | str | None) -> Tensor | None:
        if self.key_padding is None:
            return None
        if self.key_padding.dim() != 2 or self.key_padding.shape[-1] != kv_len:
            raise MdmError(
                f"layout '{self.name}': key_padding has shape {tuple(self.key_padding.shape)} but the "
                f"attention has {kv_len} keys; pass key_padding as [B, {kv_len}]"
            )
        if bool(self.key_padding.all()):
            return None
        return self.key_padding.to(device=device, dtype=torch.bool)


@dataclass(eq=False)
class FullLayout(AttentionLayout):
    """Bidirectional: every query sees every (non-pad) key. MDLM's layout."""

    name: ClassVar[str] = "full"

    def allowed(self, q_idx: Tensor, kv_idx: Tensor, batch: Tensor | None = None) -> Tensor:
        return torch.ones_like(q_idx + kv_idx, dtype=torch.bool)

    def sees_everything(self) -> bool:
        return True

    def rule_key(self) -> Hashable | None:
        return ()


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

    def rule_key(self) -> Hashable | None:
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

    def rule_key(self) -> Hashable | None:
        return (self.seq_len, self.size)

    def validate(self, q_len: int, kv_len: int, q_offset: int) -> None:
        if max(kv_len, q_offset + q_len) > 2 * self.seq_len:
            raise MdmError(
                f"bd3 layout covers z ⊕ x of {2 * self.seq_len} indices, but the attention asks for "
                f"queries up to {q_offset + q_len} over {kv_len} keys"
            )

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

    def validate(self, q_len: int, kv_len: int, q_offset: int) -> None:
        rows, keys = self.mask.shape[-2:]
        if q_offset < self.q_offset or q_offset + q_len > self.q_offset + rows or kv_len != keys:
            raise MdmError(
                f"mask layout: the mask has rows for queries {self.q_offset}..{self.q_offset + rows - 1} "
                f"over {keys} keys, but the attention has queries {q_offset}..{q_offset + q_len - 1} "
                f"over {kv_len} keys; pass a [B or 1, {q_len}, {kv_len}] mask with "
                f"q_offset={q_offset}"
            )

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
    _check_counts(queries, keys)
    return layout.dense(queries, keys, q_offset=keys - queries, device=device)


def attention_block_mask(
    layout: AttentionLayout | None, queries: int, keys: int, device: torch.device | str = "cpu"
) -> Any:
    """The same rule as :func:`attention_mask` as a FlexAttention ``BlockMask`` (None: see all)."""
    if layout is None:
        return None
    _check_counts(queries, keys)
    if layout.sees_everything() and layout._padding(keys, device) is None:
        return None
    return layout.block_mask(queries, keys, q_offset=keys - queries, device=device)


def _check_counts(queries: int, keys: int) -> None:
    if queries > keys:
        raise MdmError(f"attention: {queries} queries over only {keys} keys; the cache cannot be longer")


def block_index(layout: AttentionLayout | None, positions: Tensor, n_blocks: int) -> Tensor:
    """Each position's block for per-block times ``t`` ``[B, n_blocks]``: ``position // block_size``.

    Positions (not indices) decide the block, so both halves of ``z ⊕ x`` share their block's t.
    One block needs no block structure: every position is in it.
    """
    if n_blocks == 1:
        return torch.zeros_like(positions)
    size = layout.block_size if layout is not None else None
    if size is None:
        raise MdmError(
            f"per-block times ([B, {n_blocks}]) need a layout with a block size; "
            f"got {'no layout' if layout is None else repr(layout.name)}"
        )
    return (positions // size).clamp(0, n_blocks - 1)
