"""Conformance laws of a ForwardProcess (see ``mdm_core.testing``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.interfaces import (
    Batch,
    ForwardProcess,
    TimeSampler,
    TrainingExample,
    Vocab,
)
from mdm_core.testing.laws import generator, law_settings, require
from mdm_core.testing.strategies import batches, vocabs


class FixedTimeSampler(TimeSampler):
    """Every draw equals ``value``: probes a forward process at a chosen noise level."""

    name = "fixed"

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def sample(self, shape: tuple[int, ...], generator: torch.Generator, progress: float = 0.0) -> Tensor:
        return torch.full(shape, self.value)


def _set_up(make: Callable[[], ForwardProcess], vocab: Vocab, batch: Batch) -> ForwardProcess:
    process = make()
    size, length = batch.input_ids.shape
    process.setup(vocab, length, size, max_steps=100, seed=0)
    return process


def _tensors(example: TrainingExample) -> dict[str, Tensor | None]:
    layout = example.layout
    return {
        "input_ids": example.input_ids,
        "targets": example.targets,
        "loss_mask": example.loss_mask,
        "weights": example.weights,
        "normaliser": example.normaliser,
        "t": example.t,
        "position_ids": example.position_ids,
        "layout.mask": layout.mask,
        "layout.key_padding": layout.key_padding,
        "layout.prompt_len": layout.prompt_len,
    }


def _same_example(a: TrainingExample, b: TrainingExample, law: str) -> None:
    require(a.layout.kind == b.layout.kind and a.layout.block_size == b.layout.block_size, f"{law}: layout")
    for key, x in _tensors(a).items():
        y = _tensors(b)[key]
        same = (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        require(same, f"{law}: field {key} differs")


def _check_example(example: TrainingExample, batch: Batch, vocab: Vocab, stateful: bool) -> None:
    size, length = batch.input_ids.shape
    ids = example.input_ids
    require(not ids.is_floating_point() and ids.dim() == 2, "input_ids must be an integer [B, L'] tensor")
    require(ids.shape[0] == size and ids.shape[1] >= length, f"input_ids shape {tuple(ids.shape)} vs batch")
    require(((ids >= 0) & (ids < vocab.size)).all(), "input_ids must be ids of the vocabulary")
    require(example.targets.shape == (size, length), "targets must be [B, L]")
    mask = example.loss_mask
    require(mask.dtype == torch.bool and mask.shape == (size, length), "loss_mask must be a bool [B, L]")
    weights = example.weights
    require(
        torch.broadcast_shapes(weights.shape, (size, length)) == (size, length),
        f"weights of shape {tuple(weights.shape)} must broadcast to [B, L]",
    )
    require(torch.isfinite(weights).all() and (weights >= 0).all(), "weights must be finite and ≥ 0")
    norm = example.normaliser
    require(norm.numel() == 1 and torch.isfinite(norm).all() and (norm > 0).all(), "normaliser must be > 0")
    require(example.t.shape[0] == size and torch.isfinite(example.t).all(), "t must be finite with B rows")
    z = ids[:, :length]
    masked = z == vocab.mask_id
    require(not (mask & ~masked).any(), "loss_mask marks a position whose input is not MASK")
    goal = example.targets[mask]
    require(((goal >= 0) & (goal < vocab.num_regular)).all(), "targets on the loss mask must be regular ids")
    require(torch.equal(z[~masked], example.targets[~masked]), "unmasked inputs must equal the clean targets")
    if not stateful:
        require(torch.equal(example.targets, batch.input_ids), "targets must equal the clean batch ids")
        eligible = batch.attention_mask & ~batch.prompt_mask
        require(not (masked & ~batch.prompt_mask & ~eligible).any(), "PAD positions must never be masked")
        require(not (masked & batch.prompt_mask).any(), "prompt positions must never be masked")
        require(
            torch.equal(mask, masked), "loss_mask must mark exactly the masked non-pad non-prompt positions"
        )
    layout = example.layout
    if layout.key_padding is not None:
        require(layout.key_padding.shape == ids.shape, "layout.key_padding must be [B, L'] like input_ids")
    dense = layout.dense(ids.shape[1], ids.device)
    if dense is not None:
        require(
            dense.dtype == torch.bool
            and dense.shape[0] in (1, size)
            and dense.shape[1:] == (ids.shape[1],) * 2,
            "the layout must expand to a bool [B or 1, L', L'] mask",
        )


def _check_state(value: Any, where: str = "state") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            require(isinstance(key, str), f"{where}: keys must be strings")
            _check_state(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_state(item, f"{where}[{i}]")
    else:
        require(
            isinstance(value, Tensor | int | float | str | bool) or value is None,
            f"{where}: state_dict may hold tensors and JSON values only, got {type(value).__name__}",
        )


def _copy_state(value: Any) -> Any:
    """What a checkpoint round trip gives back: fresh tensors, fresh containers."""
    if isinstance(value, dict):
        return {k: _copy_state(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy_state(v) for v in value]
    return value.clone() if isinstance(value, Tensor) else value


def check_forward_process(make: Callable[[], ForwardProcess], *, max_examples: int = 30) -> None:
    """Shapes, loss mask = masked non-pad non-prompt positions, finite weights, determinism,
    ``state_dict`` round trip, and (unless ``stateful``) masking that grows with t from ~0."""
    uniform = UniformTimeSampler()

    @law_settings(max_examples)
    @given(data=st.data(), seed=st.integers(0, 2**32 - 1))
    def laws(data: st.DataObject, seed: int) -> None:
        vocab = data.draw(vocabs(2, 30), label="vocab")
        batch = data.draw(batches(vocab), label="batch")
        process = _set_up(make, vocab, batch)
        example = process.prepare(batch, uniform, generator(seed))
        _check_example(example, batch, vocab, process.stateful)
        again = _set_up(make, vocab, batch).prepare(batch, uniform, generator(seed))
        _same_example(example, again, "same seed must give the same example")
        logits = torch.randn((*example.targets.shape, vocab.size), generator=generator(seed))
        process.feedback(example, logits)
        state = process.state_dict()
        _check_state(state)
        restored = _set_up(make, vocab, batch)
        restored.load_state_dict(_copy_state(state))
        _same_example(
            process.prepare(batch, uniform, generator(seed + 1)),
            restored.prepare(batch, uniform, generator(seed + 1)),
            "load_state_dict(state_dict()) must reproduce the next example",
        )

    laws()
    if not make().stateful:
        _check_masking_grows(make)


def _check_masking_grows(make: Callable[[], ForwardProcess]) -> None:
    vocab = Vocab(size=12, pad_id=10, mask_id=11)
    ids = torch.randint(0, vocab.num_regular, (64, 32), generator=generator(0))
    batch = Batch.from_ids(ids, vocab)
    fractions = []
    for t in (1e-6, 0.3, 0.9):
        example = _set_up(make, vocab, batch).prepare(batch, FixedTimeSampler(t), generator(1))
        fractions.append(float((example.input_ids[:, : ids.shape[1]] == vocab.mask_id).float().mean()))
    require(
        fractions[0] <= 0.02, f"at t = 1e-6 almost nothing may be masked; masked fraction {fractions[0]:.3f}"
    )
    require(
        fractions[0] < fractions[1] < fractions[2],
        f"masking must grow with t; masked fractions at t = 1e-6, 0.3, 0.9: {fractions}",
    )
