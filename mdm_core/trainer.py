"""The training job: a plain PyTorch loop, readable top to bottom.

data → forward process → backbone → loss → AdamW step → forward-process feedback → EMA →
periodic evaluation and checkpoint. Everything that decides a step's numbers (the batch, the
noise, the times) is a pure function of (seed, rank, step) or lives in the checkpoint, so a
resumed run continues exactly where an uninterrupted one would be. The components come from
:mod:`mdm_core.assembly`; evaluation from :mod:`mdm_core.evaluation`.

The hot path pays only for what a run uses: logits outlive the backward pass only for a process
that ``wants_feedback``, and the host waits for the device only on *report steps* (logging,
evaluation, checkpoint, the last step). Loss and token counts accumulate as tensors; NaN/Inf is
caught on report steps, from the logged loss and from the clipped gradient norm, whose
finiteness is recorded on the device at every step (so with clipping on, the first bad step is
named exactly; with clipping off, the next report step's loss catches it, since NaN weights
make every later loss NaN). No checkpoint is written after a bad step.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from mdm_core import checkpoint, distributed, runs
from mdm_core.assembly import assemble, save_run_data
from mdm_core.data.loader import BatchStream
from mdm_core.errors import MdmError, TrainingDiverged
from mdm_core.evaluation import any_due, eval_context, evaluate
from mdm_core.interfaces import (
    Backbone,
    SamplingContext,
    TrainingExample,
)
from mdm_core.plotting import plot_curves
from mdm_core.plugins import get_registry
from mdm_core.spec import ResolvedSpec


@dataclass
class RunContext:
    """What lifecycle hooks receive: the run directory, the spec, this process's rank, the data
    source's info, and the live model (for loggers that inspect weights)."""

    run_dir: Path
    spec: ResolvedSpec
    rank: int
    world_size: int
    info: dict[str, Any] = field(default_factory=dict)
    model: Any = None


def step_generator(seed: int, rank: int, step: int, micro: int = 0) -> torch.Generator:
    """The noise of one micro-step: a pure function of its coordinates (exact resume)."""
    mixed = (((seed * 1_000_003 + rank) * 1_000_033 + step) * 131 + micro) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def lr_factor(step: int, spec: ResolvedSpec) -> float:
    t = spec.run.trainer
    if t.warmup and step < t.warmup:
        return (step + 1) / t.warmup
    if t.schedule == "constant":
        return 1.0
    progress = (step - t.warmup) / max(1, t.max_steps - t.warmup)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if t.schedule == "cosine" else 1 - progress
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * shape


def model_forward(model: torch.nn.Module, example: TrainingExample, uses_time: bool) -> torch.Tensor:
    logits = model(
        example.input_ids,
        time_cond=example.t if uses_time else None,
        layout=example.layout,
        position_ids=example.position_ids,
    )
    return logits[:, : example.targets.shape[1]]


class Trainer:
    """One training run in one process (one rank under torchrun)."""

    def __init__(self, spec: ResolvedSpec, run_dir: Path, quiet: bool = False) -> None:
        self.spec, self.run_dir, self.quiet = spec, run_dir, quiet
        self.cfg = spec.run.trainer
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.env = distributed.setup(self.cfg.device)
        self.registry = get_registry()
        self.parts = assemble(spec, self.env.rank, self.env.world_size)
        self.shape = self.parts.shape
        self.model = self.parts.model.to(self.env.device)
        self.uses_time = bool(self.model.uses_time)
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema), use_buffers=True)
            if self.cfg.ema
            else None
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.cfg.lr, betas=self.cfg.betas, weight_decay=self.cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, spec))
        self.stream = BatchStream(
            self.parts.bundle.splits["train"],
            self.shape.vocab,
            global_batch_size=self.cfg.batch_size,
            seed=self.cfg.seed,
            rank=self.env.rank,
            world_size=self.env.world_size,
            device=self.env.device,
        )
        self.net: torch.nn.Module = self.model
        if self.env.enabled:
            self.net = DistributedDataParallel(
                self.model, device_ids=[self.env.local_rank] if self.env.device.type == "cuda" else None
            )
        if self.cfg.compile:
            self.net = torch.compile(self.net)  # type: ignore[assignment]
        bf16 = self.cfg.precision == "bf16" or (
            self.cfg.precision == "auto" and self.env.device.type == "cuda"
        )
        self.autocast = (
            torch.autocast(self.env.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        )
        self.step = 0
        self.elapsed = 0.0
        # Device-side counters, read by the host only on report steps.
        self._tokens = torch.zeros((), dtype=torch.long, device=self.env.device)
        self._first_bad_norm = torch.full((), -1, dtype=torch.long, device=self.env.device)
        self.last_eval: dict[str, float] = {}
        self.context = RunContext(
            run_dir, spec, self.env.rank, self.env.world_size, dict(self.parts.bundle.info), self.model
        )

    @property
    def tokens(self) -> int:
        """Tokens trained on so far, all ranks (a host sync)."""
        return int(self._tokens)

    # -- checkpointing ---------------------------------------------------------------------

    def save(self) -> None:
        if not self.env.is_main:
            distributed.barrier(self.env)
            return
        weights = {"model": self.model.state_dict()}
        if self.ema is not None:
            weights["ema"] = self.ema.state_dict()
        groups = {
            "optimizer": self.optimizer.state_dict(),
            "trainer": {
                "step": self.step,
                "elapsed": self.elapsed,
                "tokens": self.tokens,
                "scheduler": self.scheduler.state_dict(),
                "rng": checkpoint.rng_state(),
                "last_eval": self.last_eval,
            },
            "forward_process": self.parts.forward_process.state_dict(),
        }
        checkpoint.save_checkpoint(
            self.run_dir / "ckpt", self.step, weights, groups, self.cfg.keep_checkpoints
        )
        distributed.barrier(self.env)

    def restore(self) -> None:
        path = checkpoint.latest_checkpoint(self.run_dir / "ckpt")
        if path is None:
            raise MdmError(f"--resume: {self.run_dir} has no complete checkpoint to resume from")
        if self.env.enabled and self.parts.forward_process.stateful:
            raise MdmError(
                "--resume under torchrun with a stateful forward process is not supported: "
                "each rank's state is saved only by rank 0"
            )
        step, weights, groups = checkpoint.load_checkpoint(path)
        self.model.load_state_dict(weights["model"])
        if self.ema is not None and "ema" in weights:
            self.ema.load_state_dict(weights["ema"])
        self.optimizer.load_state_dict(groups["optimizer"])
        state = groups["trainer"]
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        self.step, self.elapsed = step, float(state["elapsed"])
        self._tokens.fill_(int(state["tokens"]))
        self.last_eval = dict(state.get("last_eval", {}))
        self.parts.forward_process.load_state_dict(groups.get("forward_process", {}))
        if self.env.is_main:
            runs.truncate_metrics(self.run_dir, step)

    # -- the loop --------------------------------------------------------------------------

    def train_step(self) -> Tensor:
        """One optimiser step over ``grad_accum`` micro-batches; returns the mean loss as a
        detached device tensor (reading it is a host sync: do so only on report steps)."""
        self.net.train()
        process = self.parts.forward_process
        accum = self.cfg.grad_accum
        losses: list[Tensor] = []
        fed_back: list[tuple[TrainingExample, Tensor]] = []
        for micro in range(accum):
            loss, example, logits = self._micro_step(micro)
            losses.append(loss)
            if process.wants_feedback:
                fed_back.append((example, logits))
        if self.cfg.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            first_bad = (self._first_bad_norm < 0) & ~torch.isfinite(norm)
            self._first_bad_norm = torch.where(first_bad, self.step + 1, self._first_bad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        for example, logits in fed_back:
            process.feedback(example, logits)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        return losses[0] if accum == 1 else torch.stack(losses).mean()

    def _micro_step(self, micro: int) -> tuple[Tensor, TrainingExample, Tensor]:
        """Forward and backward of one micro-batch: (detached loss, example, detached logits)."""
        accum = self.cfg.grad_accum
        batch = self.stream.batch(self.step, micro=micro, num_micro=accum)
        gen = step_generator(self.cfg.seed, self.env.rank, self.step, micro)
        progress = self.step / self.cfg.max_steps
        example = self.parts.forward_process.prepare(batch, self.parts.time_sampler, gen, progress)
        last = micro == accum - 1 or not self.env.enabled
        with contextlib.nullcontext() if last else self._no_sync():
            with self.autocast:
                logits = model_forward(self.net, example, self.uses_time)
            out = self.parts.loss(logits, example, self.shape.vocab)
            (out.loss / accum).backward()
        self._tokens += batch.attention_mask.sum() * self.env.world_size
        return out.loss.detach(), example, logits.detach()

    def _no_sync(self) -> contextlib.AbstractContextManager[None]:
        """DDP: skip the gradient all-reduce on accumulation micro-steps before the last one."""
        ddp = getattr(self.net, "_orig_mod", self.net)  # under torch.compile, the wrapped module
        assert isinstance(ddp, DistributedDataParallel)
        return ddp.no_sync()

    def checked_loss(self, loss: Tensor) -> float:
        """The step's loss averaged over ranks, after the NaN/Inf checks (a host sync)."""
        bad_norm = int(self._first_bad_norm)
        if bad_norm >= 0:
            raise TrainingDiverged(self._diverged("gradient norm", bad_norm))
        value = distributed.mean_across_ranks(float(loss), self.env)
        if not math.isfinite(value):
            raise TrainingDiverged(self._diverged("loss", self.step))
        return value

    def _diverged(self, what: str, step: int) -> str:
        ckpt = checkpoint.latest_checkpoint(self.run_dir / "ckpt")
        where = f"the last checkpoint is {ckpt}" if ckpt else "no checkpoint was written yet"
        return (
            f"{what} became NaN/Inf at step {step}; stopped at step {self.step} ({where}). "
            f"Try a lower trainer.lr (now {self.cfg.lr}) or trainer.grad_clip, or resume with --resume"
        )

    def eval_model(self) -> Backbone:
        return self.ema.module if self.ema is not None else self.model  # type: ignore[return-value]

    def run_evaluation(self, final: bool = False) -> dict[str, float]:
        ctx = eval_context(self.parts, self.eval_model(), self.cfg, self.env.device)
        with self.autocast:
            return evaluate(self.parts.evaluators, ctx, self.step, final)

    def log(self, record: dict[str, Any]) -> None:
        if self.env.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def fit(self, resume: bool = False) -> dict[str, Any]:
        if resume:
            self.restore()
        hooks = self.registry.pm.hook
        hooks.mdm_run_start(run=self.context)
        bar = tqdm(
            total=self.cfg.max_steps,
            initial=self.step,
            disable=self.quiet or not self.env.is_main,
            dynamic_ncols=True,
            desc="train",
        )
        window_start, window_tokens = time.perf_counter(), self.tokens
        while self.step < self.cfg.max_steps:
            t0 = time.perf_counter()
            loss = self.train_step()
            step = self.step
            final = step == self.cfg.max_steps
            log_due = step % self.cfg.log_every == 0 or final
            eval_due = final or any_due(self.parts.evaluators, step)
            ckpt_due = step % self.cfg.ckpt_every == 0 or final
            # Report steps are the only ones where the host waits for the device.
            value = self.checked_loss(loss) if log_due or eval_due or ckpt_due else None
            self.elapsed += time.perf_counter() - t0
            metrics: dict[str, float] = {}
            if log_due and value is not None:
                now, tokens = time.perf_counter(), self.tokens
                tok_s = (tokens - window_tokens) / max(now - window_start, 1e-9)
                window_start, window_tokens = now, tokens
                metrics = {"loss": value, "lr": float(self.scheduler.get_last_lr()[0]), "tok_per_s": tok_s}
                self.log(
                    {"kind": "train", "step": step, "elapsed": self.elapsed, "tokens": tokens, **metrics}
                )
            evals = self.run_evaluation(final=final) if eval_due else {}
            if evals:
                self.last_eval = evals
                self.log(
                    {"kind": "eval", "step": step, "elapsed": self.elapsed, "tokens": self.tokens, **evals}
                )
                hooks.mdm_eval_end(run=self.context, step=step, metrics=evals)
                window_start = time.perf_counter()
            hooks.mdm_step_end(run=self.context, step=step, metrics=metrics)
            if ckpt_due:
                self.save()
            bar.update(1)
            if metrics:
                bar.set_postfix(self._postfix(metrics), refresh=False)
        bar.close()
        summary = self.finish()
        hooks.mdm_run_end(run=self.context, metrics=self.last_eval)
        return summary

    def _postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        postfix = {"loss": f"{metrics['loss']:.3f}", "tok/s": f"{metrics['tok_per_s'] / 1000:.1f}k"}
        if "val/nll" in self.last_eval:
            postfix["val_nll"] = f"{self.last_eval['val/nll']:.3f}"
        return postfix

    def finish(self) -> dict[str, Any]:
        summary = {
            "run": self.run_dir.name,
            "steps": self.step,
            "elapsed": self.elapsed,
            "tokens": self.tokens,
            "final": self.last_eval,
            "data": self.parts.bundle.info,
        }
        if self.env.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
            plot_curves(self.run_dir, floor=self.parts.bundle.info.get("floor_nats_per_token"))
            if self.cfg.num_samples:
                summary["samples"] = self.write_samples(self.cfg.num_samples)
        return summary

    def write_samples(self, n: int) -> list[str]:
        gen = torch.Generator().manual_seed(self.cfg.seed)
        ctx = SamplingContext.of(self.parts.forward_process, self.env.device)
        out = self.parts.sampler.generate(self.eval_model(), ctx, n, self.shape.seq_len, gen)
        texts = [self.parts.bundle.tokenizer.decode(row.tolist()) for row in out.tokens.cpu()]
        (self.run_dir / "samples.txt").write_text(
            f"# {n} samples, sampler {self.spec.components['sampler'].name}, NFE {out.nfe}\n"
            + "\n---\n".join(texts)
            + "\n"
        )
        return texts


def train(
    spec: ResolvedSpec, run_dir: Path | None = None, resume: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Train ``spec``; a new run directory unless ``run_dir`` is given (or resumed)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if run_dir is None:
        if world > 1:
            raise MdmError("under torchrun pass --run-dir so that every rank writes to the same run")
        run_dir = runs.new_run_dir(spec.run.out_dir, spec.run.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(spec, run_dir, quiet=quiet)
    try:
        if rank == 0 and not resume:
            runs.write_run_files(
                run_dir,
                spec,
                trainer.registry,
                runs.environment(str(trainer.env.device), trainer.env.world_size),
            )
            save_run_data(run_dir, trainer.parts.bundle)
        summary = trainer.fit(resume=resume)
    finally:
        distributed.teardown()
    summary["run_dir"] = str(run_dir)
    return summary
