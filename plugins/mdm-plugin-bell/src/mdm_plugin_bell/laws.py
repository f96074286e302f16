"""Laws of the diffusion time on [eps, 1]: CDF, density and inverse CDF in float64.

The bell families are truncated to [eps, 1] (the times the forward process accepts), so every law
here integrates to exactly 1 on that interval and draws never need clipping. Every family has an
exact inverse CDF (closed forms for the logit-normal and the normal, ``betaincinv`` for the Beta
law). The mixture with the uniform law has none; it is inverted by float64 bisection on its CDF
over the fixed bracket [lo, hi] down to adjacent floats: machine precision, and monotone in u by
construction (two levels follow the same halvings until the one with the smaller u turns left),
which Newton-type steps would not guarantee. Special functions come from scipy.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special

Array = NDArray[np.float64]

#: Halvings of the bracket: 2**-80 of [lo, hi] is below the float64 spacing anywhere in (0, 1].
_BISECTIONS = 80


class Law(abc.ABC):
    """A continuous law with its CDF, density and inverse CDF (vectorised over float64 arrays)."""

    @abc.abstractmethod
    def cdf(self, t: Array) -> Array: ...

    @abc.abstractmethod
    def pdf(self, t: Array) -> Array: ...

    @abc.abstractmethod
    def icdf(self, u: Array) -> Array: ...


@dataclass(frozen=True)
class Beta(Law):
    """Beta(a, b) on (0, 1)."""

    a: float
    b: float

    def cdf(self, t: Array) -> Array:
        return np.asarray(special.betainc(self.a, self.b, np.clip(t, 0.0, 1.0)))

    def pdf(self, t: Array) -> Array:
        # xlogy / xlog1py give the right limits at t = 0 and t = 1 (0, a finite value, or +inf).
        x = np.clip(t, 0.0, 1.0)
        with np.errstate(divide="ignore"):
            log_p = special.xlogy(self.a - 1, x) + special.xlog1py(self.b - 1, -x)
        return np.where(x == t, np.exp(log_p - special.betaln(self.a, self.b)), 0.0)

    def icdf(self, u: Array) -> Array:
        return np.asarray(special.betaincinv(self.a, self.b, u))


@dataclass(frozen=True)
class LogitNormal(Law):
    """t = sigmoid(mu + s·Z) with Z standard normal (the SD3 time sampler)."""

    mu: float
    s: float

    def _z(self, t: Array) -> Array:
        with np.errstate(divide="ignore"):
            return (special.logit(np.clip(t, 0.0, 1.0)) - self.mu) / self.s

    def cdf(self, t: Array) -> Array:
        return np.asarray(special.ndtr(self._z(t)))

    def pdf(self, t: Array) -> Array:
        inside = (t > 0.0) & (t < 1.0)
        x = np.where(inside, t, 0.5)
        z = self._z(x)
        p = np.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * self.s * x * (1.0 - x))
        return np.where(inside, p, 0.0)

    def icdf(self, u: Array) -> Array:
        return np.asarray(special.expit(self.mu + self.s * special.ndtri(u)))


@dataclass(frozen=True)
class Normal(Law):
    """N(mu, sigma²) on the real line."""

    mu: float
    sigma: float

    def cdf(self, t: Array) -> Array:
        return np.asarray(special.ndtr((t - self.mu) / self.sigma))

    def pdf(self, t: Array) -> Array:
        z = (t - self.mu) / self.sigma
        return np.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * self.sigma)

    def icdf(self, u: Array) -> Array:
        return self.mu + self.sigma * np.asarray(special.ndtri(u))


class Truncated(Law):
    """``base`` conditioned on [lo, hi]: CDF rescaled, inverse CDF through the base's."""

    def __init__(self, base: Law, lo: float, hi: float) -> None:
        self.base, self.lo, self.hi = base, lo, hi
        ends = base.cdf(np.array([lo, hi]))
        self.cdf_lo = float(ends[0])
        self.mass = float(ends[1] - ends[0])

    def cdf(self, t: Array) -> Array:
        return np.clip((self.base.cdf(t) - self.cdf_lo) / self.mass, 0.0, 1.0)

    def pdf(self, t: Array) -> Array:
        return np.where((t >= self.lo) & (t <= self.hi), self.base.pdf(t) / self.mass, 0.0)

    def icdf(self, u: Array) -> Array:
        # The ends are exact (rounding in cdf_lo + u·mass would otherwise miss hi by an ulp or two).
        inner = np.clip(self.base.icdf(self.cdf_lo + u * self.mass), self.lo, self.hi)
        return np.where(u <= 0.0, self.lo, np.where(u >= 1.0, self.hi, inner))


@dataclass(frozen=True)
class Uniform(Law):
    """U[lo, hi]."""

    lo: float
    hi: float

    def cdf(self, t: Array) -> Array:
        return np.clip((t - self.lo) / (self.hi - self.lo), 0.0, 1.0)

    def pdf(self, t: Array) -> Array:
        return np.where((t >= self.lo) & (t <= self.hi), 1.0 / (self.hi - self.lo), 0.0)

    def icdf(self, u: Array) -> Array:
        return self.lo + u * (self.hi - self.lo)


@dataclass(frozen=True)
class UniformMixture(Law):
    """(1 − rho)·bell + rho·U[lo, hi], both on [lo, hi]."""

    bell: Law
    rho: float
    lo: float
    hi: float

    @property
    def uniform(self) -> Uniform:
        return Uniform(self.lo, self.hi)

    def cdf(self, t: Array) -> Array:
        return (1.0 - self.rho) * self.bell.cdf(t) + self.rho * self.uniform.cdf(t)

    def pdf(self, t: Array) -> Array:
        return (1.0 - self.rho) * self.bell.pdf(t) + self.rho * self.uniform.pdf(t)

    def icdf(self, u: Array) -> Array:
        if self.rho == 0.0:
            return self.bell.icdf(u)
        if self.rho == 1.0:
            return self.uniform.icdf(u)
        lo = np.full(np.shape(u), self.lo)
        hi = np.full(np.shape(u), self.hi)
        for _ in range(_BISECTIONS):
            mid = 0.5 * (lo + hi)
            left = self.cdf(mid) < u
            lo, hi = np.where(left, mid, lo), np.where(left, hi, mid)
        return hi
