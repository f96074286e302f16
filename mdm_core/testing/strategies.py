"""Hypothesis strategies for the conformance kit: vocabularies, clean batches, times, loss inputs."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import Tensor

from mdm_core.interfaces import Batch, FullLayout, TrainingExample, Vocab


def vocabs(min_regular: int = 2, max_regular: int = 50) -> st.SearchStrategy[Vocab]:
    """Vocabularies following the convention: regular ids 0..n-1, PAD = n, MASK = n + 1."""
    return st.integers(min_regular, max_regular).map(lambda n: Vocab(size=n + 2, pad_id=n, mask_id=n + 1))


@st.composite
def batches(
    draw: st.DrawFn,
    vocab: Vocab,
    max_batch: int = 4,
    max_len: int = 24,
    prompts: bool = True,
    padding: bool = True,
    min_len: int = 2,
) -> Batch:
    """Clean batches, right-padded, each row with an optional prompt prefix.

    Every row keeps at least one real, non-prompt token (prompt length < real length).
    """
    size = draw(st.integers(1, max_batch))
    length = draw(st.integers(min_len, max_len))
    rows, prompt_lens = [], []
    for _ in range(size):
        real = draw(st.integers(1, length)) if padding else length
        tokens = draw(st.lists(st.integers(0, vocab.num_regular - 1), min_size=real, max_size=real))
        rows.append(tokens + [vocab.pad_id] * (length - real))
        prompt_lens.append(draw(st.integers(0, real - 1)) if prompts else 0)
    return Batch.from_ids(torch.tensor(rows, dtype=torch.long), vocab, torch.tensor(prompt_lens))


def times(
    shape: tuple[int, ...] = (4,), min_value: float = 1e-6, max_value: float = 1.0
) -> st.SearchStrategy[Tensor]:
    """Float32 tensors of diffusion times in [min_value, max_value]."""
    n = 1
    for d in shape:
        n *= d
    values = st.floats(min_value, max_value, allow_nan=False, width=32)
    return st.lists(values, min_size=n, max_size=n).map(lambda v: torch.tensor(v).reshape(shape))


@st.composite
def training_examples(
    draw: st.DrawFn, vocab: Vocab, max_batch: int = 3, max_len: int = 12
) -> tuple[Tensor, TrainingExample]:
    """Random ``(logits [B, L, V] fp32, TrainingExample)`` pairs honouring the loss contract.

    Targets are regular ids on the loss mask (PAD elsewhere is allowed), weights look like w(t) =
    1/t per row, logits span small to large scales; the loss mask may be empty.
    """
    size, length = draw(st.integers(1, max_batch)), draw(st.integers(1, max_len))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    density = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn((size, length, vocab.size), generator=g)
    targets = torch.randint(0, vocab.num_regular, (size, length), generator=g)
    pad = torch.rand((size, length), generator=g) < 0.2
    loss_mask = (torch.rand((size, length), generator=g) < density) & ~pad
    targets = torch.where(pad, torch.full_like(targets, vocab.pad_id), targets)
    t = 1e-3 + (1 - 1e-3) * torch.rand((size,), generator=g)
    weights = (1.0 / t)[:, None].expand(size, length).contiguous()
    noisy = torch.where(loss_mask, torch.full_like(targets, vocab.mask_id), targets)
    example = TrainingExample(
        input_ids=noisy,
        targets=targets,
        loss_mask=loss_mask,
        weights=weights,
        normaliser=(~pad).sum().clamp(min=1).float(),
        t=t,
        layout=FullLayout(key_padding=~pad),
    )
    return logits, example
