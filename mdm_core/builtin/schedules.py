"""Noise schedules α_t of the absorbing process and their ELBO weights w(t) = −α'_t / (1 − α_t)."""

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

    def mask_prob(self, t: Tensor) -> Tensor:
        return 1.0 - self.alpha(t)


class LogLinear(Schedule):
    """α_t = 1 − (1 − ε) t: masked with probability (1 − ε) t, weight exactly 1/t."""

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.eps) * t

    def mask_prob(self, t: Tensor) -> Tensor:
        return (1.0 - self.eps) * t

    def weight(self, t: Tensor) -> Tensor:
        # −α' / (1 − α) = (1 − ε) / ((1 − ε) t); ε cancels, so return 1/t exactly.
        return 1.0 / t


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


SCHEDULES: dict[str, type[Schedule]] = {"loglinear": LogLinear, "cosine": Cosine}


def make_schedule(name: str, eps: float) -> Schedule:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule '{name}'; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](eps)
