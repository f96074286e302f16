"""The baseline time sampler: stratified uniform t on [eps, 1] (MDLM, METHODS §1)."""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from mdm_core.interfaces import Params as BaseParams
from mdm_core.interfaces import TimeSampler


class UniformTimeSampler(TimeSampler):
    """Stratified uniform t: draw i is ``eps + (1 − eps)(U_i + i)/n`` with independent U_i.

    The base class draws one independent uniform per stratum of the flattened ``shape`` and maps
    it through :meth:`quantile`, so every batch covers [eps, 1] evenly (lower NELBO variance,
    same mean). Draw i stays in stratum i (no shuffle): batch order carries no meaning, since the
    data loader already shuffles sequences.
    """

    name = "uniform"

    class Params(BaseParams):
        eps: float = Field(default=1e-3, gt=0.0, lt=1.0, description="smallest t; keeps w(t) = 1/t finite")

    params: Params

    def quantile(self, u: Tensor, progress: float = 0.0) -> Tensor:
        """``eps + (1 − eps) u``: the inverse CDF of U(eps, 1) (the law does not move with progress)."""
        eps = self.params.eps
        return eps + (1.0 - eps) * u

    def is_uniform(self) -> bool:
        return True
