"""An exact oracle for sampler and evaluator checks: a tiny Markov chain and its true denoiser.

A chain over a few symbols and a few positions has a joint small enough to enumerate, so the
two quantities the generative laws speak about are known exactly: the law of whole sequences
(what a sampler must reproduce) and ``−log p(x)`` (what a likelihood evaluator must estimate).
:class:`OracleBackbone` returns, at every position, the exact conditional marginal
``p(x_i | visible tokens)`` under the chain; with that denoiser the masked-diffusion NELBO of
every sequence equals its ``−log p(x)`` (every reveal order factorises the same joint), and a
sampler that reveals one token at a time from it samples the joint exactly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from mdm_core.errors import MdmError
from mdm_core.interfaces import AttentionLayout, Backbone, KVCache, RunShape
from mdm_core.interfaces import Params as BaseParams
from mdm_core.layouts import attention_mask

#: What the oracle emits for impossible ids (and MASK/PAD): finite, yet exp() of it is exactly 0.
NEVER_LOGIT = -1.0e4
#: Most visibility patterns ((V + 1)^L: each position one of V ids, or hidden) the oracle tabulates.
MAX_PATTERNS = 5**6


@dataclass(frozen=True)
class OracleChain:
    """A first-order chain over ``num_states`` symbols for sequences of ``length``, in float64.

    ``initial[v]`` is p(x_0 = v); ``transition[u, v]`` is p(x_{i+1} = v | x_i = u). Zero
    transitions make some sequences impossible, so a sampler that ignores context shows up.
    """

    initial: Tensor
    transition: Tensor
    length: int

    def __post_init__(self) -> None:
        n = self.initial.shape[0]
        if self.initial.shape != (n,) or self.transition.shape != (n, n) or self.length < 1:
            raise MdmError("OracleChain needs initial [V], transition [V, V] and length ≥ 1")
        rows = torch.cat([self.initial[None], self.transition]).to(torch.float64)
        if (rows < 0).any() or not torch.allclose(rows.sum(dim=1), torch.ones(n + 1, dtype=torch.float64)):
            raise MdmError("OracleChain: initial and every transition row must be probability vectors")
        if (n + 1) ** self.length > MAX_PATTERNS:
            raise MdmError(
                f"OracleChain: {n} states over {self.length} positions give {(n + 1) ** self.length} "
                f"visibility patterns, more than the {MAX_PATTERNS} the oracle enumerates"
            )

    @classmethod
    def seeded(cls, seed: int, num_states: int = 3, length: int = 4) -> OracleChain:
        """A random chain with one forbidden successor per state (none when ``num_states`` is 1).

        Allowed weights are Dirichlet(1) mixed with 30% uniform, so no allowed sequence is so
        rare that a few thousand samples cannot see it.
        """
        rng = np.random.default_rng([seed, num_states, length])
        initial = 0.7 * rng.dirichlet(np.ones(num_states)) + 0.3 / num_states
        allowed = np.ones((num_states, num_states), dtype=bool)
        if num_states > 1:
            allowed[np.arange(num_states), rng.integers(0, num_states, num_states)] = False
        weights = 0.7 * rng.dirichlet(np.ones(num_states), size=num_states) + 0.3 / num_states
        weights = np.where(allowed, weights, 0.0)
        weights /= weights.sum(axis=1, keepdims=True)
        return cls(torch.from_numpy(initial), torch.from_numpy(weights), length)

    @property
    def num_states(self) -> int:
        return int(self.initial.shape[0])

    def sequences(self) -> Tensor:
        """All ``V^L`` sequences ``[V^L, L]``, in the order of :meth:`joint` and :meth:`index`."""
        grid = itertools.product(range(self.num_states), repeat=self.length)
        return torch.tensor(list(grid), dtype=torch.long)

    def index(self, seqs: Tensor) -> Tensor:
        """Row number of each sequence ``[N, L]`` in :meth:`sequences` (base-V digits)."""
        powers = self.num_states ** torch.arange(self.length - 1, -1, -1, device=seqs.device)
        return (seqs.long() * powers).sum(dim=-1)

    def log_prob(self, seqs: Tensor) -> Tensor:
        """Exact ``log p(x)`` ``[N]`` in float64 (−inf for a sequence the chain never makes)."""
        seqs = seqs.long().cpu()
        if seqs.dim() != 2 or seqs.shape[1] != self.length:
            raise MdmError(f"OracleChain.log_prob needs [N, {self.length}] ids, got {tuple(seqs.shape)}")
        if seqs.numel() and (int(seqs.min()) < 0 or int(seqs.max()) >= self.num_states):
            raise MdmError(f"OracleChain.log_prob: ids must be symbols 0..{self.num_states - 1}")
        p = self.initial[seqs[:, 0]] * self.transition[seqs[:, :-1], seqs[:, 1:]].prod(dim=1)
        return p.log()

    def joint(self) -> Tensor:
        """p(x) for every row of :meth:`sequences` (float64, sums to 1)."""
        return self.log_prob(self.sequences()).exp()

    def sample(self, num: int, generator: torch.Generator) -> Tensor:
        """``num`` exact draws ``[num, L]`` from the joint."""
        rows = torch.multinomial(self.joint(), num, replacement=True, generator=generator)
        return self.sequences()[rows]

    def conditionals(self, ids: Tensor, hidden: Tensor) -> Tensor:
        """``p(x_i = v | x_j for every j not hidden)`` ``[B, L, V]`` in float64, by enumeration.

        A visible position gets the one-hot of its id. When the visible ids are impossible
        under the chain there is nothing to condition on; every position then gets the uniform law.
        """
        seqs = self.sequences().to(ids.device)
        joint = self.joint().to(ids.device)
        keep = joint > 0
        seqs, joint = seqs[keep], joint[keep]
        agrees = hidden[:, None, :] | (ids[:, None, :] == seqs[None])  # [B, S, L]
        weight = agrees.all(dim=-1).to(torch.float64) * joint  # [B, S]
        onehot = torch.nn.functional.one_hot(seqs, self.num_states).to(torch.float64)  # [S, L, V]
        mass = torch.einsum("bs,slv->blv", weight, onehot)
        total = weight.sum(dim=1)[:, None, None]
        uniform = torch.full_like(mass, 1.0 / self.num_states)
        return torch.where(total > 0, mass / total.clamp(min=torch.finfo(torch.float64).tiny), uniform)


class OracleBackbone(Backbone):
    """The exact denoiser of an :class:`OracleChain`: logits are ``log p(x_i | visible ids)``.

    Built like any backbone as ``OracleBackbone(params, shape)``; the chain is
    ``OracleChain.seeded(params.seed, shape.vocab.num_regular, shape.seq_len)`` unless one is
    passed as ``chain=`` (it must have ``num_regular`` states and ``seq_len`` positions).
    Regular ids are visible; MASK and PAD are hidden, and so is every key the layout does not let
    a query attend to (position i conditions on what it sees). It ignores time (``uses_time`` is
    False) and position ids, takes exactly ``seq_len`` ids (no ``z ⊕ x``, no KV cache) and has no
    weights: an oracle for full-sequence samplers and evaluators, not a general backbone.
    Impossible ids, MASK and PAD get :data:`NEVER_LOGIT`.
    """

    name = "kit_oracle"

    class Params(BaseParams):
        seed: int = Field(default=0, description="seed of the chain (when none is passed)")

    params: Params
    table: Tensor
    digits: Tensor

    def __init__(self, params: Params | None, shape: RunShape, chain: OracleChain | None = None) -> None:
        super().__init__(params, shape)
        n = self.vocab.num_regular
        self.chain = chain if chain is not None else OracleChain.seeded(self.params.seed, n, self.max_len)
        if self.chain.num_states != n or self.chain.length != self.max_len:
            raise MdmError(
                f"OracleBackbone: the chain has {self.chain.num_states} states and length "
                f"{self.chain.length}, the shape needs {n} regular ids and seq_len {self.max_len}"
            )
        # Every visibility pattern (each position: one of n ids, or hidden = n) has its row of
        # log-conditionals precomputed, so a forward pass is one table lookup.
        patterns = torch.tensor(list(itertools.product(range(n + 1), repeat=self.max_len)), dtype=torch.long)
        probs = self.chain.conditionals(patterns.clamp(max=n - 1), patterns == n)
        table = torch.full(
            (patterns.shape[0], self.max_len, self.vocab.size), NEVER_LOGIT, dtype=torch.float64
        )
        table[..., :n] = probs.log().clamp(min=NEVER_LOGIT)
        self.register_buffer("table", table.to(torch.float32), persistent=False)
        self.register_buffer("digits", (n + 1) ** torch.arange(self.max_len - 1, -1, -1), persistent=False)

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        del time_cond, position_ids
        if kv_cache is not None:
            raise MdmError("OracleBackbone has no KV cache: it conditions on the ids it is given")
        length = self.chain.length
        if input_ids.dim() != 2 or input_ids.shape[1] != length:
            raise MdmError(f"OracleBackbone needs ids [B, {length}], got {tuple(input_ids.shape)}")
        n = self.vocab.num_regular
        codes = torch.where((input_ids >= 0) & (input_ids < n), input_ids.long(), n)
        allowed = attention_mask(layout, length, length, input_ids.device)
        if allowed is None:
            return self.table[(codes * self.digits).sum(dim=-1)]
        # Query i conditions only on the keys it may attend to: the others count as hidden.
        seen = torch.where(allowed, codes[:, None, :], n)  # [B, L_q, L_k]
        rows = (seen * self.digits).sum(dim=-1)  # [B, L_q]
        return self.table[rows, torch.arange(length, device=input_ids.device)]
