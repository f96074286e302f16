"""Star-graph path finding (Bachmann & Nagarajan 2024, "The pitfalls of next-token prediction").

A graph is a source with ``degree`` arms, each a chain of ``path_len − 1`` further nodes, on
distinct random labels out of ``num_nodes``. The end of one arm is the goal. The prompt lists
the edges (each oriented away from the source) in random order, then the query::

    u v | u v | ... | / source goal =

and the response is the path from source to goal (``path_len`` nodes, both ends included). A
left-to-right model must pick the right arm at the source without lookahead; planning backwards
from the goal is trivial, which is what a masked diffusion model can learn to do.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from mdm_core.data.loader import rows_dataset
from mdm_core.data.tokenizers import SymbolTokenizer
from mdm_core.errors import MdmError
from mdm_core.interfaces import DatasetBundle, DataSource, EvalContext, Evaluator, EvaluatorParams, Params
from mdm_core.tasks.decoding import Totals, decode_responses

#: Separator symbols after the node labels: end of an edge, start of the query, start of the path.
SEPARATORS = ("|", "/", "=")
#: Generation rounds before giving up on finding enough distinct graphs (a tiny graph space).
MAX_ROUNDS = 100


class Layout:
    """Token positions of one star-graph row for a given degree and path length."""

    def __init__(self, degree: int, path_len: int) -> None:
        self.degree = degree
        self.path_len = path_len
        self.num_edges = degree * (path_len - 1)
        self.prompt_len = 3 * self.num_edges + 4
        self.seq_len = self.prompt_len + path_len


def star_tokenizer(num_nodes: int) -> SymbolTokenizer:
    """Node labels ``"0".."N−1"`` (ids 0..N−1), then the separators, space-separated."""
    return SymbolTokenizer([str(i) for i in range(num_nodes)] + list(SEPARATORS), sep=" ")


def generate(num: int, num_nodes: int, layout: Layout, rng: np.random.Generator) -> np.ndarray:
    """``num`` encoded star graphs ``[num, seq_len]`` (ids; separators follow the node ids)."""
    degree, arm = layout.degree, layout.path_len - 1
    edge, query, answer = (num_nodes + i for i in range(len(SEPARATORS)))
    labels = np.argsort(rng.random((num, num_nodes)), axis=1)[:, : 1 + degree * arm]
    source = labels[:, :1]
    arms = labels[:, 1:].reshape(num, degree, arm)
    parents = np.concatenate([np.broadcast_to(source[:, :, None], (num, degree, 1)), arms[:, :, :-1]], axis=2)
    edges = np.stack([parents, arms], axis=-1).reshape(num, layout.num_edges, 2)
    order = np.argsort(rng.random((num, layout.num_edges)), axis=1)
    edges = np.take_along_axis(edges, order[:, :, None], axis=1)
    # The labels are a random permutation, so taking arm 0 as the goal's arm is unbiased.
    path = np.concatenate([source, arms[:, 0]], axis=1)
    goal = arms[:, 0, -1:]
    rows = [
        np.concatenate([edges, np.full((num, layout.num_edges, 1), edge)], axis=2).reshape(num, -1),
        np.full((num, 1), query),
        source,
        goal,
        np.full((num, 1), answer),
        path,
    ]
    return np.concatenate(rows, axis=1).astype(np.int64)


def path_scores(targets: Tensor, predicted: Tensor) -> dict[str, Tensor]:
    """Per-example scores of predicted paths ``[N, P]``: correct nodes and exact matches."""
    correct = predicted == targets
    hits = correct.sum(dim=-1)
    return {"correct": hits, "nodes": torch.full_like(hits, correct.shape[1]), "exact": correct.all(dim=-1)}


class StarGraphSource(DataSource):
    """Star-graph path finding: the prompt is a shuffled edge list and a (source, goal) query.

    Every row has the same length ``3·degree·(path_len−1) + 4 + path_len``. The data depends on
    the parameters only (not on the training seed); no row appears twice and no validation row
    appears in training.
    """

    name: ClassVar[str] = "star_graph"

    class Params(Params):
        degree: int = Field(default=3, ge=1, description="arms from the source (D)")
        path_len: int = Field(default=5, ge=2, description="nodes on the source→goal path, ends included (P)")
        num_nodes: int = Field(default=50, ge=2, description="node labels (N)")
        num_train: int = Field(default=20000, ge=1, description="training graphs")
        num_val: int = Field(default=256, ge=1, description="validation graphs")
        seed: int = Field(default=1234, description="data seed (independent of the training seed)")

        @model_validator(mode="after")
        def _labels_suffice(self) -> StarGraphSource.Params:
            needed = 1 + self.degree * (self.path_len - 1)
            if self.num_nodes < needed:
                raise ValueError(
                    f"num_nodes ({self.num_nodes}) must be at least 1 + degree·(path_len−1) = {needed}"
                )
            return self

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self.layout = Layout(self.params.degree, self.params.path_len)
        self.tokenizer = star_tokenizer(self.params.num_nodes)

    def load(self, seed: int) -> DatasetBundle:
        """Generate both splits; ``seed`` (the training seed) is deliberately unused."""
        del seed
        p, layout = self.params, self.layout
        seen: set[bytes] = set()
        train = self._distinct(p.num_train, np.random.default_rng([p.seed, 1]), seen)
        val = self._distinct(p.num_val, np.random.default_rng([p.seed, 2]), seen)
        splits = {
            split: rows_dataset(rows, np.full(len(rows), layout.prompt_len))
            for split, rows in (("train", train), ("validation", val))
        }
        info = {"task": "star_graph", "prompt_len": layout.prompt_len, "chance_path_exact": 1.0 / p.degree}
        return DatasetBundle(splits=splits, tokenizer=self.tokenizer, seq_len=layout.seq_len, info=info)

    def _distinct(self, num: int, rng: np.random.Generator, seen: set[bytes]) -> np.ndarray:
        """``num`` graphs none of which is in ``seen`` (which then holds them too)."""
        parts: list[np.ndarray] = []
        have = 0
        for _ in range(MAX_ROUNDS):
            for row in generate(num - have, self.params.num_nodes, self.layout, rng):
                key = row.tobytes()
                if key not in seen:
                    seen.add(key)
                    parts.append(row)
            have = len(parts)
            if have == num:
                return np.stack(parts)
        raise MdmError(
            f"star_graph: could not draw {num} distinct graphs with num_nodes={self.params.num_nodes}, "
            f"degree={self.params.degree}, path_len={self.params.path_len}; "
            "raise num_nodes or lower num_train"
        )


class PathAccuracy(Evaluator):
    """Find the path with the run's sampler: exact match of the whole path, and node accuracy.

    The response (every position after the prompt) is compared with the true path;
    ``path_exact`` is the fraction of graphs whose whole path is right (chance ≈ 1/degree for a
    model that guesses the arm), ``path_token_acc`` the fraction of path nodes that are right.
    """

    name: ClassVar[str] = "path_accuracy"

    class Params(EvaluatorParams):
        every: int = Field(
            default=500, ge=0, description="evaluate every N optimiser steps; 0: only at the end"
        )
        max_graphs: int = Field(default=256, ge=1, description="validation graphs to solve")

    params: Params

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        totals = Totals(("correct", "nodes", "exact", "graphs"), ctx.device)
        for batch, tokens in decode_responses(ctx, self.params.max_graphs):
            response = ~batch.prompt_mask & batch.attention_mask
            lengths = response.sum(dim=1)
            if not bool((lengths == lengths[0]).all()) or int(lengths[0]) == 0:
                raise MdmError("path_accuracy needs rows with a fixed-length response after the prompt")
            width = int(lengths[0])
            targets = batch.input_ids[response].view(-1, width)
            scores = path_scores(targets, tokens[response].view(-1, width))
            totals.add(**scores, graphs=torch.ones_like(scores["nodes"]))
        sums = totals.compute()
        return {
            "path_exact": sums["exact"] / max(sums["graphs"], 1.0),
            "path_token_acc": sums["correct"] / max(sums["nodes"], 1.0),
        }
