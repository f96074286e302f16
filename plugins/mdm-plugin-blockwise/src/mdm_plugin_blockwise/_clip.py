"""Clipped mask rates of block diffusion (METHODS §4.1): block masks whose realised fraction lies in [β, ω].

The reference redraws a block's Bernoulli(p) mask until its masked fraction k/n lands in [β, ω],
which loops forever when no count k qualifies. Conditioned on that event, an i.i.d. Bernoulli mask
has a count k drawn from Binomial(n, p) truncated to the admissible counts and, given k, a uniformly
random subset of size k. We draw exactly that law directly: one count and one subset per block, in
one vectorised pass, so it always terminates and needs no retry bound.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Slack on k/n ∈ [β, ω] so that decimal bounds such as 0.3 admit k/n = 3/10 despite rounding.
TOLERANCE = 1e-9
#: p is kept in [TINY, 1 − TINY] so that every admissible count keeps a positive probability.
TINY = 1e-12


def count_bounds(low: float, high: float, n: Tensor) -> tuple[Tensor, Tensor]:
    """Smallest and largest count k ∈ [0, n] with ``low ≤ k/n ≤ high`` (empty when first > second)."""
    n = n.to(torch.float64)
    smallest = torch.ceil(low * n - TOLERANCE).clamp(min=0)
    largest = torch.minimum(torch.floor(high * n + TOLERANCE), n)
    return smallest.long(), largest.long()


def admits(low: float, high: float, n: int) -> bool:
    """True when some multiple k/n (k = 0..n) lies in [low, high]: the resampling can succeed."""
    return math.ceil(low * n - TOLERANCE) <= min(math.floor(high * n + TOLERANCE), n)


def clipped_mask(eligible: Tensor, p: Tensor, low: float, high: float, generator: torch.Generator) -> Tensor:
    """``[B, n_blocks, L']`` mask: per block, Bernoulli(p) conditioned on a masked fraction in [low, high].

    ``eligible`` marks the maskable positions (the fraction is over them); ``p`` is ``[B, n_blocks]``.
    A block whose eligible count admits no fraction in [low, high] (a block shortened by prompt or
    padding) keeps the unconditioned Bernoulli law. Random numbers come from ``generator``.
    """
    size, blocks, width = eligible.shape
    n = eligible.sum(-1)
    smallest, largest = count_bounds(low, high, n)
    feasible = smallest <= largest
    k = torch.arange(width + 1, dtype=torch.float64, device=eligible.device)
    nf = n.to(torch.float64)[..., None]
    q = p.to(torch.float64).clamp(TINY, 1.0 - TINY)[..., None]
    log_pmf = (
        torch.lgamma(nf + 1)
        - torch.lgamma(k + 1)
        - torch.lgamma((nf - k).clamp(min=0) + 1)
        + torch.xlogy(k, q)
        + torch.xlogy((nf - k).clamp(min=0), 1 - q)
    )
    inside = (k <= nf) & (~feasible[..., None] | ((k >= smallest[..., None]) & (k <= largest[..., None])))
    probs = torch.softmax(log_pmf.masked_fill(~inside, float("-inf")), dim=-1)
    u = torch.rand((size, blocks), generator=generator, device=generator.device, dtype=torch.float64)
    cdf = probs.cumsum(-1)
    total = cdf[..., -1]
    threshold = torch.minimum(u.to(eligible.device) * total, total.nextafter(torch.zeros_like(total)))
    count = (cdf <= threshold[..., None]).sum(-1)
    scores = torch.rand((size, blocks, width), generator=generator, device=generator.device)
    scores = scores.to(eligible.device).masked_fill(~eligible, 2.0)
    rank = scores.argsort(dim=-1).argsort(dim=-1)
    return eligible & (rank < count[..., None])
