"""Conformance laws of a ForwardProcess (see ``mdm_core.testing``).

``check_forward_process(make)`` takes ``make(shape: RunShape) -> ForwardProcess``: the kit builds
a fresh process for every law with the shape of the batch it is about to prepare (vocabulary,
``seq_len`` = batch length, ``batch_size`` = batch rows, ``grad_accum`` 1, seed 0), exactly as
the trainer builds one per run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.interfaces import (
    AttentionLayout,
    Batch,
    ForwardProcess,
    RunShape,
    TimeSampler,
    TrainingExample,
    Vocab,
)
from mdm_core.testing.laws import generator, law_settings, require
from mdm_core.testing.strategies import batches, vocabs

#: What ``make`` must be: a process built for the given run shape.
MakeProcess = Callable[[RunShape], ForwardProcess]


class FixedTimeSampler(TimeSampler):
    """Every draw equals ``value`` (a point mass): probes a forward process at a chosen noise level."""

    name = "fixed"

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def quantile(self, u: Tensor, progress: float = 0.0) -> Tensor:
        return torch.full_like(u, self.value)


class WeightedUniform(UniformTimeSampler):
    """The uniform law with ``loss_weight`` 2: a process must multiply its weights by it."""

    name = "weighted_uniform"

    def loss_weight(self, t: Tensor, progress: float = 0.0) -> Tensor:
        return torch.full_like(t, 2.0)


def shape_of(batch: Batch, vocab: Vocab) -> RunShape:
    """The run shape the kit builds a process with for ``batch``."""
    size, length = batch.input_ids.shape
    return RunShape(vocab=vocab, seq_len=length, batch_size=size, max_steps=100, seed=0)


def _tensors(example: TrainingExample) -> dict[str, Tensor | None]:
    layout = example.layout
    length = example.input_ids.shape[1]
    return {
        "input_ids": example.input_ids,
        "targets": example.targets,
        "loss_mask": example.loss_mask,
        "weights": example.weights,
        "normaliser": example.normaliser,
        "t": example.t,
        "position_ids": example.position_ids,
        "layout.dense": layout.dense(length, length),
        "layout.key_padding": layout.key_padding,
    }


def _same_example(a: TrainingExample, b: TrainingExample, law: str) -> None:
    require(type(a.layout) is type(b.layout) and a.layout.block_size == b.layout.block_size, f"{law}: layout")
    for key, x in _tensors(a).items():
        y = _tensors(b)[key]
        same = (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        require(same, f"{law}: field {key} differs")


def _check_example(
    example: TrainingExample, batch: Batch, vocab: Vocab, stateful: bool, per_token: bool = True
) -> None:
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
    goal = example.targets[mask]
    require(((goal >= 0) & (goal < vocab.num_regular)).all(), "targets on the loss mask must be regular ids")
    if not stateful:
        eligible = batch.attention_mask & ~batch.prompt_mask
        require(not (mask & ~eligible).any(), "loss_mask must stay on non-pad, non-prompt positions")
    z = ids[:, :length]
    masked = z == vocab.mask_id
    if not per_token:
        if not stateful:
            require(torch.equal(example.targets, batch.input_ids), "targets must equal the clean batch ids")
    else:
        _check_token_masking(example, batch, z, masked, stateful)
    _check_layout(example, size)


def _check_token_masking(
    example: TrainingExample, batch: Batch, z: Tensor, masked: Tensor, stateful: bool
) -> None:
    """The absorbing-style laws: the loss is on exactly the MASK inputs, everything else is clean."""
    mask = example.loss_mask
    require(not (mask & ~masked).any(), "loss_mask marks a position whose input is not MASK")
    require(torch.equal(z[~masked], example.targets[~masked]), "unmasked inputs must equal the clean targets")
    if not stateful:
        require(torch.equal(example.targets, batch.input_ids), "targets must equal the clean batch ids")
        eligible = batch.attention_mask & ~batch.prompt_mask
        require(not (masked & ~batch.prompt_mask & ~eligible).any(), "PAD positions must never be masked")
        require(not (masked & batch.prompt_mask).any(), "prompt positions must never be masked")
        require(
            torch.equal(mask, masked), "loss_mask must mark exactly the masked non-pad non-prompt positions"
        )


def _check_layout(example: TrainingExample, size: int) -> None:
    ids = example.input_ids
    layout = example.layout
    require(isinstance(layout, AttentionLayout), "layout must be an AttentionLayout")
    if layout.key_padding is not None:
        require(layout.key_padding.shape == ids.shape, "layout.key_padding must be [B, L'] like input_ids")
    dense = layout.dense(ids.shape[1], ids.shape[1], device=ids.device)
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


def check_forward_process(make: MakeProcess, *, max_examples: int = 30, per_token: bool = True) -> None:
    """Shapes, loss mask = masked non-pad non-prompt positions, finite weights, determinism,
    ``state_dict`` round trip, the time sampler's ``loss_weight`` applied (a sampler with weight 2
    must double the weights and change nothing else), ``inference()`` consistent with
    ``structure(params)`` (and α_t inverted by ``time_of_alpha``), and (unless ``stateful``)
    masking that grows with t from ~0. ``make(shape)`` builds the process for a run shape.

    ``per_token=False`` is for processes whose masking is not absorbing-style token by token
    (whole blocks with teacher-forced inputs, every target at once as in autoregression): the
    MASK-input laws and the masking-grows-with-t law are skipped; the loss mask must still stay
    on non-pad, non-prompt positions and everything else is checked."""
    uniform = UniformTimeSampler()

    @law_settings(max_examples)
    @given(data=st.data(), seed=st.integers(0, 2**32 - 1))
    def laws(data: st.DataObject, seed: int) -> None:
        vocab = data.draw(vocabs(2, 30), label="vocab")
        batch = data.draw(batches(vocab), label="batch")
        shape = shape_of(batch, vocab)
        process = make(shape)
        example = process.prepare(batch, uniform, generator(seed))
        _check_example(example, batch, vocab, process.stateful, per_token)
        again = make(shape).prepare(batch, uniform, generator(seed))
        _same_example(example, again, "same seed must give the same example")
        weighted = make(shape).prepare(batch, WeightedUniform(), generator(seed))
        _check_weighted(example, weighted)
        logits = torch.randn((*example.targets.shape, vocab.size), generator=generator(seed))
        process.feedback(example, logits)
        state = process.state_dict()
        _check_state(state)
        restored = make(shape)
        restored.load_state_dict(_copy_state(state))
        _same_example(
            process.prepare(batch, uniform, generator(seed + 1)),
            restored.prepare(batch, uniform, generator(seed + 1)),
            "load_state_dict(state_dict()) must reproduce the next example",
        )

    laws()
    vocab = Vocab(size=12, pad_id=10, mask_id=11)
    process = make(RunShape(vocab=vocab, seq_len=16, batch_size=4))
    _check_inference(process)
    if per_token and not process.stateful:
        _check_masking_grows(make)


def _check_weighted(plain: TrainingExample, weighted: TrainingExample) -> None:
    """Same example under a sampler of the same law whose ``loss_weight`` is 2: weights doubled."""
    law = "a time sampler with loss_weight 2 must double the weights (and change nothing else)"
    require(torch.equal(plain.loss_mask, weighted.loss_mask), f"{law}: loss_mask differs")
    require(torch.equal(plain.input_ids, weighted.input_ids), f"{law}: input_ids differ")
    mask = plain.loss_mask
    size, length = mask.shape
    expected = 2.0 * torch.broadcast_to(plain.weights, (size, length))[mask].double()
    got = torch.broadcast_to(weighted.weights, (size, length))[mask].double()
    require(torch.allclose(got, expected, rtol=1e-6, atol=0.0), law)


def _check_inference(process: ForwardProcess) -> None:
    record = process.inference()
    declared = type(process).structure(process.params)
    require(
        record.structure == declared,
        f"inference().structure is '{record.structure}' but structure(params) says '{declared}'",
    )
    layout = record.layout(process.seq_len)
    require(isinstance(layout, AttentionLayout), "inference().layout(length) must be an AttentionLayout")
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    alpha = record.alpha(t)
    require(bool((alpha[1:] < alpha[:-1]).all()), "inference().alpha must decrease strictly in t")
    require(
        torch.allclose(record.time_of_alpha(alpha), t, rtol=0.0, atol=1e-6),
        "inference().time_of_alpha must invert inference().alpha",
    )


def _check_masking_grows(make: MakeProcess) -> None:
    vocab = Vocab(size=12, pad_id=10, mask_id=11)
    ids = torch.randint(0, vocab.num_regular, (64, 32), generator=generator(0))
    batch = Batch.from_ids(ids, vocab)
    fractions = []
    for t in (1e-6, 0.3, 0.9):
        example = make(shape_of(batch, vocab)).prepare(batch, FixedTimeSampler(t), generator(1))
        fractions.append(float((example.input_ids[:, : ids.shape[1]] == vocab.mask_id).float().mean()))
    require(
        fractions[0] <= 0.02, f"at t = 1e-6 almost nothing may be masked; masked fraction {fractions[0]:.3f}"
    )
    require(
        fractions[0] < fractions[1] < fractions[2],
        f"masking must grow with t; masked fractions at t = 1e-6, 0.3, 0.9: {fractions}",
    )
