"""The quick-start corpus: a seeded sparse Markov chain whose entropy is known exactly.

Because the chain is known, so is the best any model can do on it: a length-L sequence drawn
from the stationary chain has entropy ``H(π) + (L−1)·h`` (first token, then one transition
each), so no model's NLL per token can beat ``(H(π) + (L−1)·h)/L``. Training curves can
therefore be shown against a floor rather than in a vacuum.

Construction (all from the corpus ``seed``, never the training seed):
  - every state's successors include its successor on one random cycle through all states, so
    the chain is irreducible; one state of that cycle also gets a self-loop, so it is aperiodic;
  - the other ``branching − 1`` successors are drawn at random;
  - successor weights are Dirichlet(α), raised to ``PEAK`` (more local structure to learn), then
    mixed with ``FLOOR_MIX`` of uniform so every listed successor keeps a visible probability.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from mdm_core.data.loader import rows_dataset
from mdm_core.data.tokenizers import SymbolTokenizer
from mdm_core.errors import MdmError
from mdm_core.interfaces import DatasetBundle, DataSource, Params

#: Exponent applied to the Dirichlet weights: >1 makes each row more peaked.
PEAK = 1.5
#: Share of uniform weight mixed into each row, so no edge of the chain is numerically absent.
FLOOR_MIX = 0.02


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats along the last axis (0·log 0 = 0)."""
    safe = np.where(p > 0, p, 1.0)
    return -(p * np.log(safe)).sum(axis=-1)


class MarkovChain:
    """A sparse first-order chain: ``succ[i, k]`` is reached from ``i`` with ``prob[i, k]``."""

    def __init__(self, succ: np.ndarray, prob: np.ndarray) -> None:
        self.succ = succ
        self.prob = prob
        self.num_states = int(succ.shape[0])
        self.stationary = self._stationary()
        self.entropy_rate = float(self.stationary @ _entropy(prob))
        self.unigram_entropy = float(_entropy(self.stationary))

    @classmethod
    def random(cls, num_states: int, branching: int, alpha: float, seed: int) -> MarkovChain:
        rng = np.random.default_rng([seed, 0])
        order = rng.permutation(num_states)
        nxt = np.empty(num_states, dtype=np.int64)
        nxt[order] = np.roll(order, -1)
        anchor = int(order[0])
        succ = np.empty((num_states, branching), dtype=np.int64)
        for s in range(num_states):
            fixed = [int(nxt[s])] + ([s] if s == anchor and nxt[s] != s else [])
            others = np.setdiff1d(np.arange(num_states), fixed)
            succ[s] = fixed + rng.choice(others, branching - len(fixed), replace=False).tolist()
        weights = rng.dirichlet(np.full(branching, alpha), size=num_states) ** PEAK
        weights /= weights.sum(axis=1, keepdims=True)
        prob = (1.0 - FLOOR_MIX) * weights + FLOOR_MIX / branching
        return cls(succ, prob)

    def dense(self) -> np.ndarray:
        """The ``[V, V]`` transition matrix (rows sum to 1)."""
        p = np.zeros((self.num_states, self.num_states))
        np.add.at(p, (np.arange(self.num_states)[:, None], self.succ), self.prob)
        return p

    def _stationary(self) -> np.ndarray:
        # Solve πP = π with Σπ = 1: unique because the chain is irreducible.
        a = self.dense().T - np.eye(self.num_states)
        a[-1] = 1.0
        b = np.zeros(self.num_states)
        b[-1] = 1.0
        pi = np.clip(np.linalg.solve(a, b), 0.0, None)
        return pi / pi.sum()

    def floor(self, length: int) -> float:
        """Exact entropy per token of a length-``length`` sequence started from π (nats)."""
        return (self.unigram_entropy + (length - 1) * self.entropy_rate) / length

    def sample(self, num: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """``num`` sequences in parallel, first token from π, by inverse-CDF lookups."""
        out = np.empty((num, length), dtype=np.int64)
        out[:, 0] = np.minimum(
            np.searchsorted(np.cumsum(self.stationary), rng.random(num), side="right"), self.num_states - 1
        )
        cum = np.cumsum(self.prob, axis=1)
        last = self.succ.shape[1] - 1
        for k in range(1, length):
            cur = out[:, k - 1]
            j = np.minimum((rng.random(num)[:, None] >= cum[cur]).sum(axis=1), last)
            out[:, k] = self.succ[cur, j]
        return out

    def log_prob(self, seqs: np.ndarray) -> np.ndarray:
        """Per-token log-probabilities ``[N, L]`` (−inf on transitions the chain never makes)."""
        with np.errstate(divide="ignore"):
            first = np.log(self.stationary[seqs[:, :1]])
            prev, cur = seqs[:, :-1], seqs[:, 1:]
            hit = self.succ[prev] == cur[..., None]
            trans = np.log((self.prob[prev] * hit).sum(axis=-1))
        return np.concatenate([first, trans], axis=1)


class MarkovSource(DataSource):
    """Seeded sparse Markov text with its exact entropy floor (the quick-start corpus).

    The corpus depends only on ``seed`` (not on the training seed), so runs with different
    training seeds see the same data; train and validation come from separate random streams,
    so changing ``num_train`` leaves the validation set unchanged. Ids print as letters/digits.
    """

    name: ClassVar[str] = "markov"

    class Params(Params):
        vocab_size: int = Field(default=32, ge=2, le=4096, description="number of symbols (states)")
        branching: int = Field(default=4, ge=2, description="successors with nonzero probability per state")
        alpha: float = Field(default=1.0, gt=0, description="Dirichlet concentration of successor weights")
        seq_len: int = Field(default=64, ge=1, description="tokens per sequence")
        num_train: int = Field(default=20000, ge=1, description="training sequences")
        num_val: int = Field(default=512, ge=1, description="validation sequences")
        seed: int = Field(default=1234, description="corpus seed (independent of the training seed)")

        @model_validator(mode="after")
        def _branching_fits(self) -> MarkovSource.Params:
            if self.branching > self.vocab_size:
                raise ValueError(f"branching ({self.branching}) cannot exceed vocab_size ({self.vocab_size})")
            return self

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.chain = MarkovChain.random(p.vocab_size, p.branching, p.alpha, p.seed)
        self.tokenizer = SymbolTokenizer.numbered(p.vocab_size)

    def load(self, seed: int) -> DatasetBundle:
        """Generate both splits; ``seed`` (the training seed) is deliberately unused."""
        del seed
        p = self.params
        train = self.chain.sample(p.num_train, p.seq_len, np.random.default_rng([p.seed, 1]))
        val = self.chain.sample(p.num_val, p.seq_len, np.random.default_rng([p.seed, 2]))
        info: dict[str, Any] = {
            "entropy_rate_nats": self.chain.entropy_rate,
            "unigram_entropy_nats": self.chain.unigram_entropy,
            "floor_nats_per_token": self.chain.floor(p.seq_len),
            "floor_kind": "exact entropy of a length-L sequence / L",
        }
        return DatasetBundle(
            splits={"train": rows_dataset(train), "validation": rows_dataset(val)},
            tokenizer=self.tokenizer,
            seq_len=p.seq_len,
            info=info,
        )

    def true_nll(self, tokens: Tensor) -> float:
        """Mean NLL per token (nats) of ``tokens`` ``[N, L]`` or ``[L]`` under the true chain.

        The first token of each row is scored under π. A transition the chain never makes has
        probability 0, so any such transition makes the result ``inf``.
        """
        seqs = torch.as_tensor(tokens).detach().cpu().long()
        if seqs.dim() == 1:
            seqs = seqs[None]
        if seqs.dim() != 2 or seqs.numel() == 0:
            raise MdmError(f"true_nll needs a non-empty [N, L] tensor of ids, got shape {tuple(seqs.shape)}")
        n = self.chain.num_states
        lo, hi = int(seqs.min()), int(seqs.max())
        if lo < 0 or hi >= n:
            raise MdmError(
                f"true_nll: ids must be symbols 0..{n - 1} of the chain, got values in [{lo}, {hi}] "
                f"(PAD = {n} and MASK = {n + 1} are not symbols; samples must be fully unmasked)"
            )
        return float(-self.chain.log_prob(seqs.numpy()).mean())

    def sample_quality(self, tokens: Tensor) -> dict[str, float]:
        """The exact judge of generated text: ``true_nll`` (mean NLL per token of the transitions
        the chain can make, nats) and ``impossible_frac`` (share of transitions it never makes).

        Split in two so both stay finite: one impossible transition makes :meth:`true_nll` inf,
        which says nothing about how far the rest of the samples are from the chain.
        """
        self.true_nll(tokens)  # validates the ids with a clear error
        seqs = torch.as_tensor(tokens).detach().cpu().long()
        logp = self.chain.log_prob((seqs if seqs.dim() == 2 else seqs[None]).numpy())
        possible = np.isfinite(logp)
        true_nll = float(-logp[possible].mean()) if possible.any() else math.nan
        return {"true_nll": true_nll, "impossible_frac": float(1.0 - possible.mean())}
