"""Evaluation helpers shared by the training loop and ``mdm eval``: the context and the schedule.

An evaluator runs every ``params.every`` optimiser steps (``EvaluatorParams``; 0 = only at the
end) and always at the end of training; its metrics get a ``val/`` prefix.
"""

from __future__ import annotations

import torch

from mdm_core.assembly import Parts
from mdm_core.interfaces import Backbone, EvalContext, Evaluator
from mdm_core.spec import TrainerSpec


def eval_context(parts: Parts, model: Backbone, trainer: TrainerSpec, device: torch.device) -> EvalContext:
    """What evaluators see: the validation split and the run's process, sampler and tokenizer."""
    return EvalContext(
        model=model,
        vocab=parts.shape.vocab,
        dataset=parts.bundle.splits["validation"],
        forward_process=parts.forward_process,
        sampler=parts.sampler,
        tokenizer=parts.bundle.tokenizer,
        device=device,
        batch_size=trainer.eval_batch_size,
        seed=trainer.seed,
        data_source=parts.data,
    )


def is_due(evaluator: Evaluator, step: int) -> bool:
    """Whether ``evaluator`` runs after optimiser step ``step`` (the final one aside)."""
    every = evaluator.params.every
    return every > 0 and step % every == 0


def any_due(evaluators: list[Evaluator], step: int) -> bool:
    return any(is_due(ev, step) for ev in evaluators)


def evaluate(
    evaluators: list[Evaluator], ctx: EvalContext, step: int | None = None, final: bool = False
) -> dict[str, float]:
    """Run the evaluators due at ``step`` (all of them when ``final``); keys get a ``val/`` prefix."""
    metrics: dict[str, float] = {}
    for ev in evaluators:
        if final or (step is not None and is_due(ev, step)):
            metrics.update({f"val/{k}": v for k, v in ev.evaluate(ctx).items()})
    return metrics
