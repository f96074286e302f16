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
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from mdm_core import boundary, checkpoint, distributed, runs
from mdm_core.assembly import assemble, save_run_data
from mdm_core.data.loader import BatchStream
from mdm_core.errors import MdmError, SpecError, TrainingDiverged
from mdm_core.evaluation import any_due, eval_context, evaluate
from mdm_core.interfaces import (
    Backbone,
    SamplingContext,
    TrainingExample,
)
from mdm_core.interrupt import RunInterrupted, StopSignals, signal_name
from mdm_core.plotting import plot_curves
from mdm_core.plugins import RunHooks, get_registry
from mdm_core.runlock import RunLock
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

    @boundary.attributed  # a plug-in that fails to build is named, with its distribution
    def __init__(self, spec: ResolvedSpec, run_dir: Path, quiet: bool = False) -> None:
        self.spec, self.run_dir, self.quiet = spec, run_dir, quiet
        self.cfg = spec.run.trainer
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.env = distributed.setup(self.cfg.device, self.cfg.dist_timeout_s)
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
        self.boundary = boundary.Boundary(self.parts, self.cfg.log_every, self.cfg.max_steps)
        self.hooks = RunHooks(self.registry, self.env.rank)  # a raising hook is reported, left out

    @property
    def tokens(self) -> int:
        """Tokens trained on so far, all ranks (a host sync)."""
        return int(self._tokens)

    # -- checkpointing ---------------------------------------------------------------------

    def save(self) -> None:
        """Checkpoint this step. Every rank writes its own forward-process state into the staging
        folder rank 0 prepared; rank 0 commits (rename, then ``latest``) only after all have, so
        a kill of any rank at any moment leaves ``latest`` naming a complete checkpoint. Ranks
        agree after each phase, so a failure on one (a full disk, NaN weights) stops all with
        its message and no checkpoint is half-committed."""
        ckpt_dir, step, process = self.run_dir / "ckpt", self.step, self.parts.forward_process
        weights: dict[str, dict[str, Tensor]] = {}
        groups: dict[str, dict[str, Any]] = {}
        error: MdmError | None = None
        if self.env.is_main:
            weights = {"model": self.model.state_dict()}
            if self.ema is not None:
                weights["ema"] = self.ema.state_dict()
            groups = {
                "optimizer": self.optimizer.state_dict(),
                "trainer": {
                    "step": step,
                    "elapsed": self.elapsed,
                    "tokens": self.tokens,
                    "scheduler": self.scheduler.state_dict(),
                    "rng": checkpoint.rng_state(),
                    "last_eval": self.last_eval,
                },
                "forward_process": process.state_dict(),
            }
            bad = checkpoint.first_non_finite({**weights, "optimizer": groups["optimizer"]})
            try:
                if bad is not None:
                    raise TrainingDiverged(self._diverged(f"{bad} (not checkpointed)", step))
                checkpoint.begin(ckpt_dir, step)
            except MdmError as exc:
                error = exc
        self._all_ranks_ok(error)
        if not self.env.is_main and process.stateful:
            try:
                checkpoint.write_rank_state(
                    ckpt_dir, step, "forward_process", self.env.rank, process.state_dict()
                )
            except MdmError as exc:
                error = exc
        self._all_ranks_ok(error)
        if self.env.is_main:
            try:
                checkpoint.commit(
                    ckpt_dir, step, weights, groups, self.cfg.keep_checkpoints, self.env.world_size
                )
            except MdmError as exc:
                error = exc
        self._all_ranks_ok(error)

    def _all_ranks_ok(self, error: MdmError | None) -> None:
        """Raise ``error``, or on the other ranks an error with its exit code, if any rank failed
        a phase of :meth:`save` (one all-reduce under torchrun)."""
        code = error.exit_code if error is not None else 0
        if self.env.enabled:
            flag = torch.tensor([code], device=self.env.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            code = int(flag.item())
        if not code:
            return
        if self.env.is_main:
            checkpoint.discard(self.run_dir / "ckpt", self.step)
        raise error or MdmError(
            f"rank {self.env.rank}: the checkpoint of step {self.step} was not written; "
            "another rank said why",
            exit_code=code,
        )

    def restore(self, from_step: int | None = None) -> bool:
        """Load the checkpoint to resume from (``latest``, or the one of ``from_step``), verified;
        False, after dropping the run's metric lines, when no checkpoint was ever written."""
        ckpt_dir = self.run_dir / "ckpt"
        point = checkpoint.resume_point(ckpt_dir, from_step)
        if point is None:
            if self.env.is_main:
                print(f"note: {ckpt_dir} holds no checkpoint; starting from step 0", file=sys.stderr)
                runs.truncate_metrics(self.run_dir, 0)
            return False
        if point.note and self.env.is_main:
            print(f"warning: {point.note}", file=sys.stderr)
        step, weights, groups = checkpoint.load_checkpoint(point.path)
        checkpoint.check_fits(point.path / "model.safetensors", weights["model"], self.model.state_dict())
        if self.ema is not None and "ema" in weights:
            checkpoint.check_fits(point.path / "ema.safetensors", weights["ema"], self.ema.state_dict())
        checkpoint.check_optimizer_fits(
            point.path / "optimizer.safetensors", groups["optimizer"], self.optimizer
        )
        state = groups["trainer"]
        if state.get("step") != step:
            raise checkpoint.DamagedCheckpoint(
                f"{point.path}: its trainer state is of step {state.get('step')}, its folder of step {step}"
            )
        self.model.load_state_dict(weights["model"])
        if self.ema is not None and "ema" in weights:
            self.ema.load_state_dict(weights["ema"])
        self.optimizer.load_state_dict(groups["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        self.step, self.elapsed = step, float(state["elapsed"])
        self._tokens.fill_(int(state["tokens"]))
        self.last_eval = dict(state.get("last_eval", {}))
        process = self.parts.forward_process
        if process.stateful:
            process.load_state_dict(
                checkpoint.rank_state(point.path, "forward_process", self.env.rank, self.env.world_size)
            )
        else:
            process.load_state_dict(groups.get("forward_process", {}))
        if self.env.is_main:
            if point.note:  # resumed from a checkpoint ``latest`` did not name: it names it now
                checkpoint.point_latest(ckpt_dir, point.path)
            runs.truncate_metrics(self.run_dir, step)
        return True

    # -- the loop --------------------------------------------------------------------------

    def train_step(self) -> Tensor:
        """One optimiser step over ``grad_accum`` micro-batches; returns the mean loss as a
        detached device tensor (reading it is a host sync: do so only on report steps)."""
        self.boundary.begin(self.step)  # checks the components' outputs on first and log steps
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
        self.boundary.example(batch, example)
        last = micro == accum - 1 or not self.env.enabled
        with contextlib.nullcontext() if last else self._no_sync():
            with self.autocast:
                logits = model_forward(self.net, example, self.uses_time)
            self.boundary.logits(example, logits)
            out = self.parts.loss(logits, example, self.shape.vocab)
            self.boundary.loss(out)
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
        """The divergence message: the newest checkpoint that verifies and holds only finite
        weights and optimiser state (none is written after a bad step), and how to go on."""
        ckpt = checkpoint.newest_valid(self.run_dir / "ckpt", finite=True)
        where = (
            f"the newest finite checkpoint is {ckpt}; resume from it with: "
            f"{runs.resume_command(self.run_dir, self.env.world_size)}"
            if ckpt
            else "no checkpoint was written yet"
        )
        return (
            f"{what} became NaN/Inf at step {step}; stopped at step {self.step} ({where}). "
            f"Try a lower trainer.lr (now {self.cfg.lr}) or trainer.grad_clip"
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

    @boundary.attributed  # a plug-in whose load_state_dict raises is named, with its distribution
    def resume(self, from_step: int | None = None) -> None:
        """Continue from the run's checkpoint (``latest``, or that of ``from_step``). A run stopped
        before its first checkpoint starts again from step 0 (its metric lines dropped), exactly as
        if it had never run."""
        if not self.restore(from_step) and self.env.is_main:
            save_run_data(self.run_dir, self.parts.bundle)  # in case the kill came before it
        if self.step > self.cfg.max_steps:
            raise SpecError(
                f"--resume: trainer.max_steps={self.cfg.max_steps} is below the checkpoint's step "
                f"{self.step}; give a larger trainer.max_steps"
            )

    @boundary.attributed  # plug-in faults and a stopped rank end the run with a clear message
    def fit(self, resume: bool = False, signals: StopSignals | None = None) -> dict[str, Any]:
        """Train to ``max_steps``. SIGINT or SIGTERM during the loop ends the run after the
        current step with a checkpoint (:class:`RunInterrupted`, exit 128 + the signal);
        ``signals`` is the run's handler where the caller holds one (:func:`train` does)."""
        if signals is None:
            with StopSignals() as signals:
                return self.fit(resume, signals)
        if resume:
            self.resume()
        with signals.deferring():
            self._loop(signals)
        summary = self.finish()
        self.hooks.mdm_run_end(run=self.context, metrics=self.last_eval)
        # Every rank leaves together, so no rank destroys its process group while rank 0 still
        # writes the summary, plots and samples. (This did not cure an intermittent SIGABRT at the
        # end of CPU/gloo runs, whose cause is still unknown; see CHANGELOG.)
        distributed.barrier(self.env)
        return summary

    def _loop(self, stop: StopSignals) -> None:
        hooks = self.hooks
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
                if self.env.is_main and not final:  # a live curve; finish() draws the last one
                    plot_curves(self.run_dir, floor=self.parts.bundle.info.get("floor_nats_per_token"))
                window_start = time.perf_counter()
            hooks.mdm_step_end(run=self.context, step=step, metrics=metrics)
            if ckpt_due:
                self.save()
            bar.update(1)
            if metrics:
                bar.set_postfix(self._postfix(metrics), refresh=False)
            signum = self._agreed_stop(stop, report=value is not None)
            if signum is not None and not final:
                bar.close()
                if value is None:
                    self.checked_loss(loss)  # never checkpoint a diverged state
                if not ckpt_due:
                    self.save()
                raise self._interrupted(signum)
        bar.close()

    def _agreed_stop(self, stop: StopSignals, report: bool) -> int | None:
        """The signal to stop on after this step, if any. One process stops after the step it
        was signalled in; under torchrun the ranks agree on report steps (an all-reduce of the
        signal number, piggybacking on the loss's), so that all stop after the same step."""
        if not self.env.enabled:
            return stop.signum
        if not report:
            return None
        flag = torch.tensor([stop.signum or 0], device=self.env.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item()) or None

    def _interrupted(self, signum: int) -> RunInterrupted:
        name = signal_name(signum)
        ckpt = checkpoint.latest_checkpoint(self.run_dir / "ckpt")
        if self.env.is_main:
            runs.append_history(self.run_dir, "interrupted", signal=name, step=self.step)
        return RunInterrupted(
            f"{name}: stopped after step {self.step} of {self.cfg.max_steps}; checkpoint {ckpt}\n"
            f"resume with: {runs.resume_command(self.run_dir, self.env.world_size)}",
            signum,
            step=self.step,
        )

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
    spec: ResolvedSpec,
    run_dir: Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    on_start: Callable[[Path], None] | None = None,
    from_step: int | None = None,
) -> dict[str, Any]:
    """Train ``spec`` into a new directory under its ``out_dir``, or into ``run_dir`` (which must
    not hold a run yet), or continue the run in ``run_dir`` (``resume``; from its checkpoint of
    ``from_step`` if given, else ``latest``).

    Rank 0 holds the directory's lock for the whole run (a second writer gets exit 2) and calls
    ``on_start(run_dir)`` once it has it. A new run that fails before its first step leaves
    nothing behind. SIGINT/SIGTERM stop the run at once before the loop and after the current
    step and a checkpoint inside it (:class:`RunInterrupted`).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    main = int(os.environ.get("RANK", "0")) == 0
    changes: dict[str, tuple[Any, Any]] = {}
    if resume:
        if run_dir is None:
            raise MdmError("--resume: name the run directory to continue", exit_code=2)
        runs.check_resumable(run_dir)
        changes = runs.resume_changes(run_dir, spec)  # refused before anything is loaded
    elif run_dir is None and world > 1:
        raise MdmError("under torchrun pass --run-dir so that every rank writes to the same run", exit_code=2)
    lock: RunLock | None = None
    trainer: Trainer | None = None
    before: frozenset[str] | None = None
    with StopSignals() as signals:
        try:
            if main:
                run_dir, lock, before = _claim(spec, run_dir, resume)
                if on_start is not None:
                    on_start(run_dir)
            assert run_dir is not None
            trainer = Trainer(spec, run_dir, quiet=quiet)
            if resume:
                trainer.resume(from_step)
                if main:
                    runs.record_resume(run_dir, spec, changes, trainer.step)
            elif main:
                env = runs.environment(str(trainer.env.device), trainer.env.world_size)
                runs.write_run_files(run_dir, spec, trainer.registry, env)
                save_run_data(run_dir, trainer.parts.bundle)
                runs.append_history(run_dir, "start", overrides=spec.overrides)
            summary = trainer.fit(signals=signals)
        except BaseException as exc:
            if lock is None or run_dir is None:
                raise
            untrained = not resume and (trainer is None or trainer.step == 0)
            if untrained:
                runs.remove_created(run_dir, before)
            if isinstance(exc, RunInterrupted) and exc.step is None:
                removed = _what(run_dir, before) if untrained else None
                raise _stopped_outside_loop(exc, run_dir, trainer, removed) from None
            if untrained:
                print(
                    f"note: the run failed before its first step; removed {_what(run_dir, before)}",
                    file=sys.stderr,
                )
            raise
        finally:
            distributed.teardown()
            if lock is not None:
                lock.release()
    summary["run_dir"] = str(run_dir)
    return summary


def _claim(
    spec: ResolvedSpec, run_dir: Path | None, resume: bool
) -> tuple[Path, RunLock, frozenset[str] | None]:
    """Create or open the run directory and lock it (a new run: only if it holds no run yet);
    also what it held before this run (``None``: this run created it), so that a run that never
    trains removes only its own files."""
    if run_dir is None:
        run_dir, existed = runs.new_run_dir(spec.run.out_dir, spec.run.name), False
    else:
        existed = runs.make_run_dir(run_dir)
    had_lock_file = (run_dir / "run.lock").exists()
    lock = RunLock(run_dir)
    note = lock.acquire()
    if note:
        print(note, file=sys.stderr)
    if not resume:
        try:
            runs.refuse_existing_run(run_dir)
        except MdmError:
            if not had_lock_file:
                lock.path.unlink()
            lock.release()
            raise
    before = runs.entries(run_dir) if existed else None
    if before is not None and not had_lock_file:
        before = before - {lock.path.name}
    return run_dir, lock, before


def _what(run_dir: Path, before: frozenset[str] | None) -> str:
    return str(run_dir) if before is None else f"what it had written in {run_dir}"


def _stopped_outside_loop(
    exc: RunInterrupted, run_dir: Path, trainer: Trainer | None, removed: str | None
) -> RunInterrupted:
    """The message for a signal outside the training loop, where nothing was being written;
    ``removed`` says what was removed of a new run that never trained."""
    name = signal_name(exc.signum)
    world = trainer.env.world_size if trainer is not None else 1
    if removed is not None:
        text = f"{name} before the first step: nothing was trained; removed {removed}"
    elif trainer is not None and trainer.step >= trainer.cfg.max_steps:
        text = (
            f"{name} while finishing (summary, samples); all {trainer.step} steps are checkpointed\n"
            f"finish with: {runs.resume_command(run_dir, world)}"
        )
    else:
        text = (
            f"{name} before training resumed; nothing was lost\n"
            f"resume with: {runs.resume_command(run_dir, world)}"
        )
    return RunInterrupted(text, exc.signum)
