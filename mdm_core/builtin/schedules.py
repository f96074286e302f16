"""Noise schedules α_t of the absorbing process, their inverses and ELBO weights w(t) = −α'_t / (1 − α_t).

The inverse lets a sampler that knows how much of a sequence is masked hand a time-conditioned
backbone the t it was trained with (``InferenceRecord.time_of_alpha``).
"""

from __future__ import annotations

import abc
import math

import torch
from torch import Tensor


class Schedule(abc.ABC):
    """α_t: the probability that a token is still clean at time t ∈ (0, 1]; dtype-preserving."""

    def __init__(self, eps: float) -> None:
        self.eps = eps

    @abc.abstractmethod
    def alpha(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def weight(self, t: Tensor) -> Tensor:
        """w(t) = −α'_t / (1 − α_t), in the closed form that stays accurate at small t."""

    @abc.abstractmethod
    def t_of_alpha(self, alpha: Tensor) -> Tensor:
        """The inverse of :meth:`alpha` on [ε, 1] (α outside is clamped): t(α_t) = t."""

    def mask_prob(self, t: Tensor) -> Tensor:
        return 1.0 - self.alpha(t)

    def _masked_share(self, alpha: Tensor) -> Tensor:
        """(1 − α)/(1 − ε) clamped to [0, 1]: the fraction of the way from clean to α_1 = ε."""
        return ((1.0 - alpha) / (1.0 - self.eps)).clamp(0.0, 1.0)


class LogLinear(Schedule):
    """α_t = 1 − (1 − ε) t: masked with probability (1 − ε) t, weight exactly 1/t."""

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.eps) * t

    def mask_prob(self, t: Tensor) -> Tensor:
        return (1.0 - self.eps) * t

    def weight(self, t: Tensor) -> Tensor:
        # −α' / (1 − α) = (1 − ε) / ((1 − ε) t); ε cancels, so return 1/t exactly.
        return 1.0 / t

    def t_of_alpha(self, alpha: Tensor) -> Tensor:
        return self._masked_share(alpha)


class Cosine(Schedule):
    """α_t = ε + (1 − ε) cos(πt/2)."""

    def alpha(self, t: Tensor) -> Tensor:
        return self.eps + (1.0 - self.eps) * torch.cos(0.5 * math.pi * t)

    def mask_prob(self, t: Tensor) -> Tensor:
        # 1 − cos x = 2 sin²(x/2) keeps precision at small t.
        return (1.0 - self.eps) * 2.0 * torch.sin(0.25 * math.pi * t) ** 2

    def weight(self, t: Tensor) -> Tensor:
        # (π/2) sin(πt/2) / (1 − cos(πt/2)) = (π/2) / tan(πt/4); ε cancels.
        return 0.5 * math.pi / torch.tan(0.25 * math.pi * t)

    def t_of_alpha(self, alpha: Tensor) -> Tensor:
        # 1 − cos(πt/2) = 2 sin²(πt/4) = (1 − α)/(1 − ε): asin of a square root stays accurate
        # at small t, where arccos of a number near 1 would lose half the digits.
        return (4.0 / math.pi) * torch.asin(torch.sqrt(0.5 * self._masked_share(alpha)))


SCHEDULES: dict[str, type[Schedule]] = {"loglinear": LogLinear, "cosine": Cosine}


def make_schedule(name: str, eps: float) -> Schedule:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule '{name}'; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](eps)
