"""What every conformance check shares: hypothesis settings and a law that names itself on failure."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, Phase, settings
from torch import Tensor


def law_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        # The explain phase replays hundreds of variants of a failure; the law's message suffices.
        phases=[phase for phase in Phase if phase is not Phase.explain],
    )


def require(condition: bool | Tensor, law: str) -> None:
    """Raise AssertionError naming the law (plain ``assert`` vanishes under ``python -O``)."""
    if not bool(condition):
        raise AssertionError(law)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def close(a: Tensor, b: Tensor, rtol: float, atol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol)
