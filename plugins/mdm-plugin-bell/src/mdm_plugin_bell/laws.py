"""Laws of the diffusion time on [eps, 1]: CDF, density and inverse CDF in float64.

The bell families are truncated to [eps, 1] (the times the forward process accepts), so every law
here integrates to exactly 1 on that interval and draws never need clipping. The mixture with the
uniform law has no closed-form inverse CDF; it is inverted numerically (bracketed Newton on its monotone
CDF, to 1e-13 in probability), so the draws follow the mixture and stay stratified.
Special functions come from scipy (``betainc``/``betaincinv`` for the Beta law).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special

Array = NDArray[np.float64]

#: Accuracy of the mixture's inverse CDF, measured in CDF units (far below any stratum width 1/n).
_CDF_TOL = 1e-13
#: Cap on root-finding steps; every third fallback is a bisection, so the bracket always shrinks.
_MAX_STEPS = 200


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
        return np.clip(self.base.icdf(self.cdf_lo + u * self.mass), self.lo, self.hi)


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
        # The mixture's quantile lies between its components' quantiles: a bracket for Newton
        # steps; a step that leaves the bracket falls back to false position, then to bisection.
        q_bell, q_unif = self.bell.icdf(u), self.uniform.icdf(u)
        lo, hi = np.minimum(q_bell, q_unif), np.maximum(q_bell, q_unif)
        err_lo, err_hi = self.cdf(lo) - u, self.cdf(hi) - u
        x = 0.5 * (lo + hi)
        for step in range(_MAX_STEPS):
            err = self.cdf(x) - u
            if np.all(np.abs(err) <= _CDF_TOL):
                break
            left = err < 0
            lo, err_lo = np.where(left, x, lo), np.where(left, err, err_lo)
            hi, err_hi = np.where(left, hi, x), np.where(left, err_hi, err)
            with np.errstate(divide="ignore", invalid="ignore"):
                newton = x - err / self.pdf(x)
                secant = lo - err_lo * (hi - lo) / (err_hi - err_lo)
            fallback = secant if step % 3 < 2 else 0.5 * (lo + hi)
            fallback = np.where(_strictly_inside(fallback, lo, hi), fallback, 0.5 * (lo + hi))
            x_next = np.where(_strictly_inside(newton, lo, hi), newton, fallback)
            x = np.where(np.abs(err) <= _CDF_TOL, x, x_next)
        return x


def _strictly_inside(x: Array, lo: Array, hi: Array) -> NDArray[np.bool_]:
    return np.isfinite(x) & (x > lo) & (x < hi)
