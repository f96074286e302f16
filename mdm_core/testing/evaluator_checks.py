"""Conformance laws of an Evaluator (see ``mdm_core.testing``): general laws and the NELBO oracle law.

General laws, on the kit's tiny network: a non-empty dict of finite floats; the same seed gives
the same metrics (from the same instance evaluated again, and from a fresh one); the model's
train/eval mode, weights and gradients are left as they were; ``bpt``/``ppl``, when reported,
agree with ``nll``.

The oracle law, for likelihood evaluators (those reporting ``nll``, in nats per token): with
:class:`~mdm_core.testing.oracle.OracleBackbone`, the exact denoiser of a tiny chain, the NELBO of
every sequence equals its exact ``−log p(x)``, so the evaluator must report the dataset's mean
``−log p(x) / L`` up to two known effects:

- bias from cut-offs. Write ``g(m)`` for the expected weighted loss per unit of mask rate m, so
  that ``∫_0^1 g = −log p(x)``. ``g`` is a convex combination (binomial weights) of ``H̄_k``,
  L times the mean loss per masked token over the patterns with k masks, so
  ``g ≤ g_max = max_k H̄_k``. The log-linear schedule
  with α_1 = ε never masks more than a share 1 − ε of tokens, and an evaluator drawing
  t ~ U(δ, 1) skips t < δ and rescales by 1/(1 − δ); together
  ``|E[estimate] + log p(x)| ≤ (δ·(−log p(x)) + (δ + ε)·g_max)/(1 − δ)``, computed exactly from
  the oracle for every sequence of the dataset (δ = ``time_floor``, ε from the process).
- sampling error of t and of the masks. The evaluator is run with ``seeds`` different seeds
  (the dataset fixed, so the data's own sampling error cancels) and the mean of its reports must
  lie within ``t_{R−1}(δ = 1e-6)·s/√R`` of the truth plus the bias (Student's t on the R
  independent reports, s their standard deviation), plus 1e-6 for float rounding.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.samplers import AncestralSampler
from mdm_core.data.loader import rows_dataset
from mdm_core.data.tokenizers import SymbolTokenizer
from mdm_core.interfaces import Backbone, EvalContext, Evaluator, RunShape, Vocab
from mdm_core.testing.backbone_checks import TinyBackbone
from mdm_core.testing.laws import generator, law_settings, require
from mdm_core.testing.oracle import OracleBackbone, OracleChain

#: Smallest t a likelihood evaluator is allowed to draw (the built-in ``nll`` draws t ≥ 1e-3).
TIME_FLOOR = 1e-3
#: Two-sided false-alarm probability of the oracle law's t-test.
ORACLE_DELTA = 1e-6


def oracle_chain() -> OracleChain:
    """The chain every evaluator check uses: 3 symbols, length 4, one forbidden successor each."""
    return OracleChain.seeded(seed=0, num_states=3, length=4)


def eval_context(model: Backbone, chain: OracleChain, ids: torch.Tensor, seed: int) -> EvalContext:
    """An EvalContext over the chain's sequences ``ids`` with the log-linear absorbing process."""
    shape = RunShape(vocab=model.vocab, seq_len=chain.length, batch_size=256, seed=seed)
    return EvalContext(
        model=model,
        vocab=model.vocab,
        dataset=rows_dataset(ids.numpy()),
        forward_process=AbsorbingProcess(None, shape),
        sampler=AncestralSampler(AncestralSampler.Params(steps=16), shape),
        tokenizer=SymbolTokenizer.numbered(chain.num_states),
        device=torch.device("cpu"),
        batch_size=256,
        seed=seed,
    )


def check_evaluator(
    make: Callable[[], Evaluator],
    *,
    max_examples: int = 4,
    seeds: int = 16,
    sequences: int = 256,
    time_floor: float = TIME_FLOOR,
) -> None:
    """The general laws on a tiny network and, if ``nll`` is reported, the oracle law (module doc)
    with ``seeds`` runs over ``sequences`` exact draws from the chain."""
    chain = oracle_chain()
    vocab = Vocab(size=chain.num_states + 2, pad_id=chain.num_states, mask_id=chain.num_states + 1)
    shape = RunShape(vocab=vocab, seq_len=chain.length)
    ids = chain.sample(64, generator(0))
    reports_nll = False

    @law_settings(max_examples)
    @given(seed=st.integers(0, 2**31 - 1), uses_time=st.booleans())
    def laws(seed: int, uses_time: bool) -> None:
        nonlocal reports_nll
        for training in (False, True):
            model = TinyBackbone(TinyBackbone.Params(uses_time=uses_time, seed=seed), shape)
            model.train(training)
            metrics = _general_laws(make, model, eval_context(model, chain, ids, seed))
            reports_nll = reports_nll or "nll" in metrics

    laws()
    if reports_nll:
        check_nll_oracle_law(make, seeds=seeds, sequences=sequences, time_floor=time_floor)


def _general_laws(make: Callable[[], Evaluator], model: Backbone, ctx: EvalContext) -> dict[str, float]:
    training = model.training
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    evaluator = make()
    metrics = evaluator.evaluate(ctx)
    require(isinstance(metrics, dict) and len(metrics) > 0, "evaluate must return a non-empty dict")
    for key, value in metrics.items():
        require(isinstance(key, str), f"metric names must be strings, got {key!r}")
        require(
            isinstance(value, float) and math.isfinite(value),
            f"metric {key!r} must be a finite float, got {value!r}",
        )
    require(model.training == training, "the evaluator must leave the model's train/eval mode as it was")
    require(
        all(torch.equal(weights[k], v) for k, v in model.state_dict().items()),
        "the evaluator must leave the model's weights unchanged",
    )
    require(all(p.grad is None for p in model.parameters()), "the evaluator must not leave gradients")
    require(
        evaluator.evaluate(ctx) == metrics, "the same instance, seed and model must give the same metrics"
    )
    require(make().evaluate(ctx) == metrics, "a fresh instance with the same seed must give the same metrics")
    if "nll" in metrics:
        nll = metrics["nll"]
        if "bpt" in metrics:
            require(math.isclose(metrics["bpt"], nll / math.log(2.0), rel_tol=1e-6), "bpt must be nll / ln 2")
        if "ppl" in metrics:
            require(math.isclose(metrics["ppl"], math.exp(nll), rel_tol=1e-6), "ppl must be exp(nll)")
    return metrics


def check_nll_oracle_law(
    make: Callable[[], Evaluator], *, seeds: int = 16, sequences: int = 256, time_floor: float = TIME_FLOOR
) -> None:
    """The evaluator's ``nll`` of the exact denoiser matches the exact mean −log p(x) per token."""
    chain = oracle_chain()
    vocab = Vocab(size=chain.num_states + 2, pad_id=chain.num_states, mask_id=chain.num_states + 1)
    model = OracleBackbone(None, RunShape(vocab=vocab, seq_len=chain.length), chain=chain)
    ids = chain.sample(sequences, generator(1))
    neg_log_p = -chain.log_prob(ids)
    truth = float(neg_log_p.sum()) / ids.numel()
    eps = AbsorbingProcess.Params().eps  # the process eval_context builds
    bias = cutoff_bias(chain, ids, neg_log_p, time_floor, eps)
    reports = np.array(
        [make().evaluate(eval_context(model, chain, ids, seed))["nll"] for seed in range(seeds)]
    )
    mean, spread = float(reports.mean()), float(reports.std(ddof=1))
    from scipy import stats  # only the NLL oracle law needs it; keeps the kit's import light

    sampling = float(stats.t.isf(ORACLE_DELTA / 2, seeds - 1)) * spread / math.sqrt(seeds)
    require(
        abs(mean - truth) <= bias + sampling + 1e-6,
        f"oracle law: with the exact denoiser the mean nll over {seeds} seeds is {mean:.4f} nats/token, "
        f"the exact −log p(x) per token is {truth:.4f}; allowed {bias:.4f} (cut-offs ε={eps:g}, "
        f"δ={time_floor:g}) + {sampling:.4f} (sampling at δ={ORACLE_DELTA:g})",
    )


def cutoff_bias(
    chain: OracleChain, ids: torch.Tensor, neg_log_p: torch.Tensor, floor: float, eps: float
) -> float:
    """Per-token bound on |E[estimate] − mean −log p(x)| from the cut-offs (module doc)."""
    length = chain.length
    masks = torch.tensor(list(itertools.product([False, True], repeat=length)))  # [2^L, L]
    rows = ids.repeat_interleave(masks.shape[0], dim=0)
    hidden = masks.repeat(ids.shape[0], 1)
    cond = chain.conditionals(rows, hidden).gather(-1, rows[..., None]).squeeze(-1)  # [N·2^L, L]
    loss = -(cond.log() * hidden).sum(dim=1).reshape(ids.shape[0], masks.shape[0])  # h(M)
    sizes = masks.sum(dim=1)
    per_mask_average = torch.stack(
        [loss[:, sizes == k].sum(dim=1) / math.comb(length - 1, k - 1) for k in range(1, length + 1)], dim=1
    )
    g_max = per_mask_average.max(dim=1).values
    per_sequence = (floor * neg_log_p + (floor + eps) * g_max) / (1.0 - floor)
    return float(per_sequence.sum()) / ids.numel()
