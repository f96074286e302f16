"""Evaluation helpers shared by the training loop and ``mdm eval``: the context and the schedule.

An evaluator runs every ``params.every`` optimiser steps (``EvaluatorParams``; 0 = only at the
end) and always at the end of training; its metrics get a ``val/`` prefix. A metric that is not a
number is the evaluator's fault (exit 3); a NaN/Inf one stops the run (exit 4), naming the
evaluator and the step: a diverged model must never score as a result.
"""

from __future__ import annotations

import torch

from mdm_core import boundary
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


@boundary.attributed  # ``mdm eval`` too: an evaluator that raises is named with its plug-in
def evaluate(
    evaluators: list[Evaluator], ctx: EvalContext, step: int | None = None, final: bool = False
) -> dict[str, float]:
    """Run the evaluators due at ``step`` (all of them when ``final``); keys get a ``val/`` prefix."""
    metrics: dict[str, float] = {}
    for ev in evaluators:
        if final or (step is not None and is_due(ev, step)):
            scores = boundary.check_metrics(ev, ev.evaluate(ctx), step)
            metrics.update({f"val/{k}": v for k, v in scores.items()})
    return metrics
