"""PUMA: progressive unmasking (Kim, Geuter, Alvarez-Melis, Kakade, Chen 2026, arXiv 2602.10314).

Instead of masking each batch afresh at a random t, PUMA keeps a pool of B partly-masked
sequences and walks each through K stages. At stage j a sequence shows a visible fraction ρ of
its response drawn from stage j's slice of the time sampler's law (uniform law: ``ρ ∈ [j/K,
(j+1)/K)``, v1 PUMA exactly; see :meth:`PumaProcess.visible_fraction`). After each optimiser
step the positions the model was most confident about (in that very step's logits: no extra
forward pass) are revealed with their ground-truth tokens until the next stage's fraction is
reached. Training masks therefore follow the order in which a confidence sampler would unmask.

Pool life cycle (one pool per rank; the trainer passes this rank's batch every step):
  - start: every slot takes the row of the fresh batch with the same index, at a stage given by
    a balanced random permutation (slot i of permutation π gets stage π(i) mod K), so every batch
    mixes all stages from the first step; its visible positions are drawn uniformly;
  - step: the slots are trained on as they are; ``feedback`` advances each to its next stage;
  - refill: a slot that finished stage K−1 takes row i of the next fresh batch and restarts at
    stage 0 with uniformly drawn visible positions. Fresh rows of slots that are not refilled
    are dropped, so PUMA consumes about B/K new sequences per step where the baseline consumes B
    (the trainer's data stream still advances by B rows per step).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.confidence import Measure, confidence, max_log_prob
from mdm_core.errors import MdmError, SpecError
from mdm_core.interfaces import (
    Batch,
    ForwardProcess,
    FullLayout,
    InferenceRecord,
    RunShape,
    TimeSampler,
    TrainingExample,
)
from mdm_core.interfaces import Params as BaseParams

#: Pool tensors saved in ``state_dict`` (all ``[B, L]`` or ``[B]``).
POOL_KEYS = ("x0", "z", "prompt", "stage", "target", "refill")


def top_positions(scores: Tensor, eligible: Tensor, counts: Tensor) -> Tensor:
    """Per row, the ``counts[b]`` eligible positions with the highest score (ties: lowest index)."""
    ranked = scores.masked_fill(~eligible, float("-inf"))
    order = torch.argsort(ranked, dim=1, descending=True, stable=True)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return eligible & (rank < counts[:, None])


def normalised_quantile(law: TimeSampler, u: Tensor, progress: float) -> Tensor:
    """``q̃(u) = (q(u) − q(0)) / (q(1) − q(0))`` in float64: the law of t rescaled to its support.

    PUMA reads a masked fraction in [0, 1] off the law of t on [q(0), q(1)] (= [eps, 1] for the
    built-in samplers), so q̃(0) = 0 and q̃(1) = 1: stage 0 may start fully masked and the last
    stage may end fully visible, whatever the law's eps.
    """
    ends = law.quantile(torch.tensor([0.0, 1.0], dtype=torch.float64), progress).double()
    low, high = float(ends[0]), float(ends[1])
    if not high > low:
        raise MdmError(f"puma: time sampler '{law.name}' has a point-mass law (quantile(0) = quantile(1))")
    return ((law.quantile(u.double(), progress).double() - low) / (high - low)).clamp(0.0, 1.0)


class PumaProcess(ForwardProcess):
    """Progressive unmasking: a pool of sequences revealed stage by stage by model confidence.

    Built as ``cls(params, shape)``: a pool of ``shape.batch_size`` slots whose generator is
    seeded with ``shape.rank_seed`` (saved with its state). Loss per sequence is the mean masked
    cross-entropy (weights ``loss_weight(t)/max(1, #masked)``, normaliser B), averaged over the
    batch; ``loss_weight`` is the time sampler's (1 for ``uniform``). ``t`` of the example is the
    log-linear schedule's time at which the response's masked fraction is expected (what the
    samplers pass a time-conditioned backbone). The time sampler's law sets the stage
    boundaries (:meth:`visible_fraction`); the caller's generator is not used. Validation
    likelihood is the uniform-t NELBO of the log-linear absorbing process.
    """

    name = "puma"
    stateful = True
    wants_feedback = True

    class Params(BaseParams):
        stages: int = Field(default=8, ge=1, description="stages K a sequence goes through")
        mode: Literal["standard", "collapse"] = Field(
            default="standard", description="collapse: also reveal every masked position with p > tau"
        )
        tau: float = Field(default=0.9, gt=0.0, le=1.0, description="collapse threshold on max probability")
        confidence: Measure = Field(
            default="max_prob",
            description="reveal by max_v log p(v), or by the margin p1 − p2 (the confidence sampler's)",
        )
        k_schedule: list[tuple[int, int]] = Field(
            default=[],
            description="[(K, step), ...]: from optimiser step `step` on use K stages (pool rebuilt)",
        )

        @field_validator("k_schedule")
        @classmethod
        def _increasing(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
            steps = [step for _, step in value]
            if any(k < 1 for k, _ in value):
                raise ValueError("every K in k_schedule must be at least 1")
            if any(step < 0 for step in steps) or steps != sorted(set(steps)):
                raise ValueError(
                    "k_schedule switch steps must be ≥ 0 and strictly increasing, e.g. [[4, 0], [8, 1000]]"
                )
            return value

    params: Params

    def __init__(self, params: Params | None, shape: RunShape) -> None:
        """An empty pool of ``shape.batch_size`` slots (every slot waiting for a fresh sequence)."""
        super().__init__(params, shape)
        if shape.grad_accum > 1:
            raise SpecError(
                f"puma keeps one pool of {shape.batch_size} slots that each optimiser step advances, "
                f"so it cannot split a step into micro-batches: set trainer.grad_accum: 1 (got "
                f"{shape.grad_accum}) and choose trainer.batch_size to fit memory"
            )
        vocab, seq_len, batch_size = shape.vocab, shape.seq_len, shape.batch_size
        if (vocab.pad_id, vocab.mask_id) != (vocab.num_regular, vocab.num_regular + 1):
            raise MdmError("puma needs the vocabulary convention PAD = n, MASK = n + 1 after the regular ids")
        self._likelihood = AbsorbingProcess(None, shape)
        #: The law of the last ``prepare`` (and its progress): stage boundaries for ``feedback``.
        self._law: TimeSampler | None = None
        self._progress = 0.0
        self.size = batch_size
        self.x0 = torch.full((batch_size, seq_len), vocab.pad_id, dtype=torch.long)
        self.z = self.x0.clone()
        self.prompt = torch.zeros((batch_size, seq_len), dtype=torch.bool)
        self.stage = torch.zeros(batch_size, dtype=torch.long)
        self.target = torch.zeros(batch_size, dtype=torch.long)
        self.refill = torch.ones(batch_size, dtype=torch.bool)
        self.started = False
        self.step = 0
        self.num_stages = self.stages_at(0)
        self._generator = torch.Generator().manual_seed(shape.rank_seed)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {key: getattr(self, key).detach().cpu().clone() for key in POOL_KEYS}
        state.update(
            rng=self._generator.get_state(), started=self.started, step=self.step, num_stages=self.num_stages
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        x0 = state["x0"]
        if tuple(x0.shape) != tuple(self.x0.shape):
            raise MdmError(
                f"puma: the checkpoint's pool is {tuple(x0.shape)} but this run's is {tuple(self.x0.shape)} "
                "(batch size per process × seq_len must match to resume)"
            )
        for key in POOL_KEYS:
            setattr(self, key, state[key].clone())
        self._generator.set_state(state["rng"].cpu().contiguous())
        self.started = bool(state["started"])
        self.step = int(state["step"])
        self.num_stages = int(state["num_stages"])

    def stages_at(self, step: int) -> int:
        """K in force at optimiser step ``step`` under ``k_schedule``."""
        k = self.params.stages
        for stages, start in self.params.k_schedule:
            if step >= start:
                k = stages
        return k

    def likelihood_process(self) -> ForwardProcess:
        return self._likelihood

    def alpha(self, t: Tensor) -> Tensor:
        return self._likelihood.alpha(t)

    def inference(self) -> InferenceRecord:
        """Generation as for the log-linear absorbing process whose NELBO validates PUMA."""
        return self._likelihood.inference()

    def visible_fraction(self, stages: Tensor, u: Tensor, law: TimeSampler | None = None) -> Tensor:
        """ρ of a slot at ``stages`` for a uniform draw ``u`` ∈ [0, 1): the stage's slice of the law.

        With ``q̃`` the time sampler's quantile rescaled to [0, 1] (:func:`normalised_quantile`)
        and the masked fraction read as the law's t, stage j covers masked fractions between
        ``q̃(1 − (j+1)/K)`` and ``q̃(1 − j/K)`` (stages count the masked fraction down as tokens
        are revealed), i.e. visible fractions ``ρ ∈ [1 − q̃(1 − j/K), 1 − q̃(1 − (j+1)/K))``, and
        within it ``ρ = 1 − q̃(1 − (j + u)/K)`` follows the law's own conditional. The K stage
        boundaries are therefore the law's K-quantiles: a bell spends equal steps on finer middle
        stages. For a uniform law (``is_uniform()``) q̃ is the identity and the identity path
        ``ρ = (j + u)/K`` is taken, so that floating point reproduces v1 PUMA bit for bit.
        """
        law = law if law is not None else self._law
        level = (stages.double() + u.double()) / self.num_stages
        if law is None or law.is_uniform():
            return level
        return 1.0 - normalised_quantile(law, (1.0 - level).cpu(), self._progress).to(level.device)

    # -- a training step -------------------------------------------------------------------

    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        """Refill finished slots from ``batch``; the other slots are returned exactly as they are."""
        del generator
        self._law, self._progress = time_sampler, progress
        if tuple(batch.input_ids.shape) != tuple(self.x0.shape):
            raise MdmError(
                f"puma: got a batch of shape {tuple(batch.input_ids.shape)} but the pool was set up for "
                f"{tuple(self.x0.shape)}; every step must pass this process's full batch"
            )
        self._to(batch.input_ids.device)
        stages = self.stages_at(self.step)
        if stages != self.num_stages:
            self.num_stages, self.started = stages, False
        if not self.started:
            perm = torch.randperm(self.size, generator=self._generator)
            start = torch.empty(self.size, dtype=torch.long)
            start[perm] = torch.arange(self.size) % self.num_stages
            self._fill(batch, torch.ones(self.size, dtype=torch.bool, device=self.z.device), start)
            self.started = True
        elif bool(self.refill.any()):
            self._fill(batch, self.refill.clone(), torch.zeros(self.size, dtype=torch.long))
        return self._example()

    def feedback(self, example: TrainingExample, logits: Tensor) -> None:
        """Advance every slot one stage, revealing its most confident masked positions."""
        del example
        if not self.started:
            raise MdmError("puma: feedback() before prepare(); the trainer calls prepare first")
        if tuple(logits.shape[:2]) != tuple(self.z.shape):
            raise MdmError(f"puma: logits {tuple(logits.shape)} do not match the pool {tuple(self.z.shape)}")
        k = self.num_stages
        eligible = self._eligible()
        masked = self.z == self.vocab.mask_id
        following = self.stage + 1
        finished = following >= k
        goal = self._visible_goal(following.clamp(max=k - 1), eligible)
        live = masked & ~finished[:, None]
        rows = logits.detach()[live].to(self.z.device)
        num_regular, collapse = self.vocab.num_regular, self.params.mode == "collapse"
        score = torch.full(self.z.shape, float("-inf"), device=self.z.device)
        score[live] = confidence(rows, num_regular, self.params.confidence)
        visible = (eligible & ~masked).sum(dim=1)
        reveal = top_positions(score, live, (goal - visible).clamp(min=0))
        if collapse:
            sure = torch.zeros_like(live)
            sure[live] = max_log_prob(rows, num_regular).exp() > self.params.tau
            reveal |= sure
            shown = visible + reveal.sum(dim=1)
            length = eligible.sum(dim=1)
            bucket = torch.div(shown * k, length.clamp(min=1), rounding_mode="floor").clamp(max=k - 1)
            following = torch.maximum(following, bucket)
            finished |= (length > 0) & (shown >= length)
        self.z = torch.where(reveal, self.x0, self.z)
        self.stage = torch.where(finished, self.stage, following)
        self.target = torch.where(finished, self.target, goal)
        self.refill = self.refill | finished
        self.step += 1

    # -- internals -------------------------------------------------------------------------

    def _to(self, device: torch.device) -> None:
        for key in POOL_KEYS:
            setattr(self, key, getattr(self, key).to(device))

    def _eligible(self) -> Tensor:
        """Response positions: not prompt, not PAD (the only ones ever masked or in the loss)."""
        return (self.x0 != self.vocab.pad_id) & ~self.prompt

    def _visible_goal(self, stages: Tensor, eligible: Tensor) -> Tensor:
        """Visible count ``u = min(round(ρ·L_eff), max(L_eff − 1, 1))``, ρ from :meth:`visible_fraction`."""
        u = torch.rand(self.size, generator=self._generator, dtype=torch.float64).to(stages.device)
        rho = self.visible_fraction(stages, u)
        length = eligible.sum(dim=1)
        return torch.minimum(torch.round(rho * length).long(), (length - 1).clamp(min=1))

    def _fill(self, batch: Batch, slots: Tensor, stages: Tensor) -> None:
        """Put the fresh rows of ``slots`` in the pool at ``stages`` with random visible positions."""
        slots, stages = slots.to(self.z.device), stages.to(self.z.device)
        self.x0 = torch.where(slots[:, None], batch.input_ids, self.x0)
        self.prompt = torch.where(slots[:, None], batch.prompt_mask, self.prompt)
        eligible = self._eligible()
        goal = self._visible_goal(stages, eligible)
        noise = torch.rand(self.z.shape, generator=self._generator).to(self.z.device)
        shown = top_positions(noise, eligible, goal)
        fresh = torch.where(eligible & ~shown, torch.full_like(self.x0, self.vocab.mask_id), self.x0)
        self.z = torch.where(slots[:, None], fresh, self.z)
        self.stage = torch.where(slots, stages, self.stage)
        self.target = torch.where(slots, goal, self.target)
        self.refill = self.refill & ~slots

    def _example(self) -> TrainingExample:
        masked = self.z == self.vocab.mask_id
        count = masked.sum(dim=1)
        size, length = self.z.shape
        fraction = count.double() / self._eligible().sum(dim=1).clamp(min=1).double()
        scale = self._loss_weight(fraction) / count.clamp(min=1).float()
        weights = scale[:, None].expand(size, length).contiguous()
        return TrainingExample(
            input_ids=self.z.clone(),
            targets=self.x0.clone(),
            loss_mask=masked,
            weights=weights,
            normaliser=torch.tensor(float(size), device=self.z.device),
            t=self._likelihood.inference().time_for_masked_fraction(fraction).float(),
            layout=FullLayout(key_padding=self.x0 != self.vocab.pad_id),
        )

    def _loss_weight(self, fraction: Tensor) -> Tensor:
        """The time sampler's ``loss_weight`` at the law's t of each slot's masked fraction (fp32)."""
        law = self._law
        if law is None:
            return torch.ones_like(fraction, dtype=torch.float32)
        ends = law.quantile(torch.tensor([0.0, 1.0], dtype=torch.float64), self._progress).double()
        t = ends[0] + fraction.cpu() * (ends[1] - ends[0])
        return law.loss_weight(t, self._progress).to(device=fraction.device, dtype=torch.float32)
