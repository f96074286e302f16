"""The ``bell`` time sampler: put training mass on middle noise levels (Hong, Lee, Lai et al. 2026).

A masked token is easiest to learn from when its neighbours are visible (chance (1−t)²) while the
number of supervised tokens grows with t, so the learnable signal per step peaks at middle t.
This sampler draws t from a bell-shaped law on [eps, 1], optionally mixed with the uniform law
(full support) and annealed to uniform at the end of training. Validation is unaffected: the
NLL evaluator always uses the uniform-t NELBO.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from mdm_core.interfaces import Params as BaseParams
from mdm_core.interfaces import RunShape, TimeSampler
from mdm_plugin_bell.laws import Beta, Law, LogitNormal, Normal, Truncated, UniformMixture

#: Below this probability of [eps, 1] under the untruncated family, the truncation is numerically
#: meaningless (the inverse CDF would resolve only a sliver of the unit interval).
_MIN_MASS = 1e-6


class BellParams(BaseParams):
    """Parameters of ``bell``; only those of the chosen ``family`` are used."""

    family: Literal["beta", "logit_normal", "truncated_normal"] = Field(
        "logit_normal", description="shape of the bell"
    )
    a: float = Field(2.0, gt=0, description="beta: first shape parameter")
    b: float = Field(2.0, gt=0, description="beta: second shape parameter")
    mu: float | None = Field(
        None,
        description="location: logit-space mean for logit_normal (default 0.0), "
        "t-space mean for truncated_normal (default 0.5, must lie in [0, 1])",
    )
    s: float = Field(1.0, gt=0, description="logit_normal: scale in logit space")
    sigma: float = Field(0.2, gt=0, description="truncated_normal: standard deviation in t-space")
    rho: float = Field(0.0, ge=0, le=1, description="weight of the uniform law in the mixture")
    anneal: float = Field(
        0.0, ge=0, le=1, description="final fraction of training over which rho ramps linearly to 1"
    )
    weighting: Literal["elbo", "importance"] = Field(
        "elbo", description="elbo: keep w(t); importance: w(t)·u(t)/p(t), the unbiased uniform-t ELBO"
    )
    eps: float = Field(1e-3, gt=0, lt=1, description="smallest t (as the uniform sampler)")

    @property
    def location(self) -> float:
        """``mu`` or the family's natural centre."""
        if self.mu is not None:
            return self.mu
        return 0.5 if self.family == "truncated_normal" else 0.0

    @model_validator(mode="after")
    def _check_family(self) -> BellParams:
        if self.family == "truncated_normal" and not 0.0 <= self.location <= 1.0:
            raise ValueError(f"truncated_normal needs mu in [0, 1] (the mean in t), got mu={self.mu}")
        if self.weighting == "importance" and self.rho == 0.0:
            raise ValueError(
                "weighting=importance needs rho > 0: the bell's density vanishes at the ends of "
                "[eps, 1], so 1/p(t) is unbounded; with rho > 0 the weights stay below 1/rho "
                "(e.g. rho=0.1)"
            )
        mass = Truncated(_family_law(self), self.eps, 1.0).mass
        if not mass >= _MIN_MASS:
            raise ValueError(
                f"{self.family} puts only {mass:.2g} of its probability on [eps, 1] = [{self.eps}, 1]; "
                "move mu towards the middle or widen the bell"
            )
        return self


def _family_law(p: BellParams) -> Law:
    if p.family == "beta":
        return Beta(p.a, p.b)
    if p.family == "logit_normal":
        return LogitNormal(p.location, p.s)
    return Normal(p.location, p.sigma)


class BellTimeSampler(TimeSampler):
    """Bell-shaped t on [eps, 1] (beta, logit-normal, truncated normal), mixable with uniform.

    :meth:`quantile` is the exact inverse CDF of the current mixture ``(1 − ρ)·bell + ρ·U[eps,
    1]``; draws are the base class's: ``u_i = (U_i + i)/n`` with independent ``U_i`` (one per
    stratum, draw i in stratum i: the data loader already shuffles sequences), then ``t = F⁻¹(u)``.
    ``progress`` ∈ [0, 1] moves ρ linearly to 1 over the final ``anneal`` fraction of training.
    Processes that read the law itself (PUMA's stages) use the same :meth:`quantile`.
    """

    name = "bell"
    Params = BellParams
    params: BellParams

    def __init__(self, params: BaseParams | None = None, shape: RunShape | None = None) -> None:
        super().__init__(params, shape)
        p = self.params
        self._bell = Truncated(_family_law(p), p.eps, 1.0)

    def rho_at(self, progress: float) -> float:
        """The uniform weight ρ at this point of training."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must lie in [0, 1] (the fraction of training done), got {progress}")
        p = self.params
        start = 1.0 - p.anneal
        if p.anneal == 0.0 or progress <= start:
            return p.rho
        return p.rho + (1.0 - p.rho) * (progress - start) / p.anneal

    def law(self, progress: float = 0.0) -> UniformMixture:
        """The sampling law at ``progress`` (float64, numpy)."""
        return UniformMixture(self._bell, self.rho_at(progress), self.params.eps, 1.0)

    def quantile(self, u: Tensor, progress: float = 0.0) -> Tensor:
        """F⁻¹(u) of the mixture at ``progress`` in float64, within [eps, 1]; u's dtype and device."""
        t = self.law(progress).icdf(np.clip(_numpy(u), 0.0, 1.0))
        t = np.clip(t, self.params.eps, 1.0)
        return torch.from_numpy(t).to(device=u.device, dtype=u.dtype)

    def is_uniform(self) -> bool:
        """True only when the mixture is all uniform from the start (ρ = 1)."""
        return self.params.rho == 1.0

    def log_density(self, t: Tensor, progress: float = 0.0) -> Tensor:
        """log p(t) of the current mixture on [eps, 1]; −inf outside it."""
        with np.errstate(divide="ignore"):
            log_p = np.log(self.law(progress).pdf(_numpy(t)))
        return torch.from_numpy(log_p).to(device=t.device, dtype=t.dtype)

    def loss_weight(self, t: Tensor, progress: float = 0.0) -> Tensor:
        """1 (``elbo``), or u(t)/p(t) with u the uniform density on [eps, 1] (``importance``).

        Importance weights have mean exactly 1 under p, so the weighted loss estimates the same
        uniform-t NELBO as the baseline. t outside [eps, 1] (never drawn) gets the weight at the
        nearest end.
        """
        if self.params.weighting == "elbo":
            return torch.ones_like(t)
        eps = self.params.eps
        density = self.law(progress).pdf(np.clip(_numpy(t), eps, 1.0))
        weight = (1.0 / (1.0 - eps)) / density
        return torch.from_numpy(weight).to(device=t.device, dtype=t.dtype)


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()
