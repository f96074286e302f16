"""The MDLM loss against an independent loop implementation of METHODS §1, and its estimator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.losses import MDLMLoss, mdlm_reference
from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.errors import MdmError
from mdm_core.interfaces import Batch, RunShape, TrainingExample, Vocab
from mdm_core.testing import training_examples, vocabs


def loop_loss(logits: np.ndarray, example: TrainingExample, vocab: Vocab) -> tuple[float, np.ndarray]:
    """Straight from the formula, one position at a time, in float64: (loss, d loss / d logits)."""
    size, length, _ = logits.shape
    weights = np.broadcast_to(example.weights.numpy(), (size, length))
    normaliser = float(example.normaliser)
    total, grad = 0.0, np.zeros_like(logits, dtype=np.float64)
    for b in range(size):
        for pos in range(length):
            if not example.loss_mask[b, pos]:
                continue
            row = logits[b, pos].astype(np.float64)
            allowed = [v for v in range(vocab.size) if v not in (vocab.mask_id, vocab.pad_id)]
            peak = max(row[v] for v in allowed)
            norm = sum(math.exp(row[v] - peak) for v in allowed)
            target = int(example.targets[b, pos])
            total += weights[b, pos] * (peak + math.log(norm) - row[target])
            for v in allowed:
                grad[b, pos, v] = weights[b, pos] * math.exp(row[v] - peak) / norm / normaliser
            grad[b, pos, target] -= weights[b, pos] / normaliser
    return total / normaliser, grad


def fp32_tolerance(example: TrainingExample, logits: torch.Tensor) -> tuple[float, float]:
    """Absolute error bounds of an fp32 computation, derived from the dtype and the inputs' scale.

    Each masked position contributes ``w · (logsumexp − logit)``; fp32 rounds each of its terms
    at ``eps32 · (|logit| + log V)``, and the gradient's ``w/N · (p − 1)`` at ``eps32 · w/N``.
    A margin of 64 covers the accumulation over the few positions these examples have.
    """
    eps32 = torch.finfo(torch.float32).eps
    mask = example.loss_mask
    weights = torch.broadcast_to(example.weights, mask.shape)[mask].double()
    scale = float(logits.abs().max()) + math.log(logits.shape[-1]) + 1.0
    total_weight = float(weights.sum()) if weights.numel() else 0.0
    loss_atol = 64 * eps32 * scale * total_weight
    grad_atol = 64 * eps32 * (float(weights.max()) if weights.numel() else 0.0) / float(example.normaliser)
    return loss_atol, grad_atol


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_equals_an_independent_loop_implementation(data: st.DataObject) -> None:
    vocab = data.draw(vocabs(2, 12))
    logits, example = data.draw(training_examples(vocab, max_batch=2, max_len=6))
    expected, expected_grad = loop_loss(logits.numpy(), example, vocab)
    leaf = logits.clone().requires_grad_()
    out = MDLMLoss()(leaf, example, vocab)
    out.loss.backward()
    loss_atol, grad_atol = fp32_tolerance(example, logits)
    normaliser = float(example.normaliser)
    assert math.isclose(out.loss.item(), expected, rel_tol=1e-6, abs_tol=loss_atol / normaliser)
    assert math.isclose(out.weighted_nll_sum.item(), expected * normaliser, rel_tol=1e-6, abs_tol=loss_atol)
    assert leaf.grad is not None
    assert np.allclose(leaf.grad.numpy(), expected_grad, rtol=1e-5, atol=grad_atol)


def small_example(vocab: Vocab, masked: bool) -> tuple[torch.Tensor, TrainingExample]:
    targets = torch.tensor([[0, 1, vocab.pad_id]])
    loss_mask = torch.tensor([[masked, False, False]])
    example = TrainingExample(
        input_ids=torch.where(loss_mask, vocab.mask_id, targets),
        targets=targets,
        loss_mask=loss_mask,
        weights=torch.full((1, 3), 2.0),
        normaliser=torch.tensor(2.0),
        t=torch.tensor([0.5]),
    )
    return torch.randn((1, 3, vocab.size), generator=torch.Generator().manual_seed(0)), example


def test_empty_loss_mask_gives_exactly_zero_and_zero_gradient() -> None:
    vocab = Vocab(size=6, pad_id=4, mask_id=5)
    logits, example = small_example(vocab, masked=False)
    logits.requires_grad_()
    out = mdlm_reference(logits, example, vocab)
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert logits.grad is not None and not bool(logits.grad.any())


def test_mask_and_pad_logits_are_never_predicted() -> None:
    vocab = Vocab(size=6, pad_id=4, mask_id=5)
    logits, example = small_example(vocab, masked=True)
    huge = logits.clone()
    huge[..., [vocab.mask_id, vocab.pad_id]] = 1e4
    assert torch.equal(mdlm_reference(logits, example, vocab).loss, mdlm_reference(huge, example, vocab).loss)
    manual = -torch.log_softmax(logits[0, 0, :4], dim=-1)[0] * 2.0 / 2.0
    assert torch.allclose(mdlm_reference(logits, example, vocab).loss, manual)


def test_bf16_logits_give_an_fp32_loss() -> None:
    vocab = Vocab(size=6, pad_id=4, mask_id=5)
    logits, example = small_example(vocab, masked=True)
    out = mdlm_reference(logits.bfloat16(), example, vocab)
    assert out.loss.dtype == torch.float32
    assert torch.allclose(out.loss, mdlm_reference(logits.bfloat16().float(), example, vocab).loss)


def test_wrong_logits_shape_names_the_expected_shape() -> None:
    vocab = Vocab(size=6, pad_id=4, mask_id=5)
    logits, example = small_example(vocab, masked=True)
    with pytest.raises(MdmError, match=r"expected \[B, L, 6\]"):
        mdlm_reference(logits[..., :5], example, vocab)


def mean_loss(schedule: str, seed: int, table: torch.Tensor, vocab: Vocab, batches: int = 40) -> float:
    """Mean training loss of a denoiser whose prediction depends only on the position."""
    size, length = 64, table.shape[0]
    shape = RunShape(vocab=vocab, seq_len=length, batch_size=size)
    process = AbsorbingProcess(AbsorbingProcess.Params(schedule=schedule), shape)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab.num_regular, (size, length), generator=torch.Generator().manual_seed(0))
    batch = Batch.from_ids(ids, vocab)
    logits = table.expand(size, length, vocab.size)
    losses = [
        float(MDLMLoss()(logits, process.prepare(batch, UniformTimeSampler(), g), vocab).loss)
        for _ in range(batches)
    ]
    return sum(losses) / len(losses)


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_nelbo_estimator_mean_is_stable_and_unbiased(schedule: str) -> None:
    """E[w(t)·P(masked | t)] = 1 − ε at log-linear for every t, so E[loss] = (1 − ε)·mean NLL."""
    vocab = Vocab(size=10, pad_id=8, mask_id=9)
    table = torch.randn((32, vocab.size), generator=torch.Generator().manual_seed(3))
    ids = torch.randint(0, vocab.num_regular, (64, 32), generator=torch.Generator().manual_seed(0))
    subs = table.clone()
    subs[:, [vocab.mask_id, vocab.pad_id]] = -math.inf
    nll = -torch.log_softmax(subs, dim=-1).gather(1, ids.T).T
    exact = (1 - 1e-3) * float(nll.mean())
    first, second = mean_loss(schedule, 1, table, vocab), mean_loss(schedule, 2, table, vocab)
    assert math.isclose(first, second, rel_tol=0.04)
    assert math.isclose(first, exact, rel_tol=0.04)
    assert math.isclose(second, exact, rel_tol=0.04)
