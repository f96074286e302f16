"""The training job: a plain PyTorch loop, readable top to bottom.

data → forward process → backbone → loss → AdamW step → forward-process feedback → EMA →
periodic evaluation and checkpoint. Everything that decides a step's numbers (the batch, the
noise, the times) is a pure function of (seed, rank, step) or lives in the checkpoint, so a
resumed run continues exactly where an uninterrupted one would be.
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
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from mdm_core import checkpoint, distributed, runs
from mdm_core.data.loader import BatchStream
from mdm_core.errors import MdmError, SpecError, TrainingDiverged
from mdm_core.interfaces import (
    Backbone,
    DatasetBundle,
    DataSource,
    EvalContext,
    Evaluator,
    ForwardProcess,
    Loss,
    Sampler,
    SamplingContext,
    TimeSampler,
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


@dataclass
class Parts:
    """The built components of a run (shared by training, ``mdm eval`` and ``mdm sample``)."""

    data: DataSource
    bundle: DatasetBundle
    model: Backbone
    forward_process: ForwardProcess
    time_sampler: TimeSampler
    loss: Loss
    sampler: Sampler
    evaluators: list[Evaluator]


def build_parts(spec: ResolvedSpec, seed: int) -> Parts:
    """Build every component of ``spec``; the model is initialised from ``seed``."""
    c = spec.components
    data: DataSource = c["data"].build()
    bundle = data.load(seed=seed)
    for split in ("train", "validation"):
        if split not in bundle.splits:
            raise SpecError(f"data.name: data source '{c['data'].name}' gave no '{split}' split")
    torch.manual_seed(seed)
    model: Backbone = c["backbone"].build(bundle.tokenizer.vocab, bundle.seq_len)
    evaluators = [e.build() for e in spec.evaluators]
    return Parts(
        data=data,
        bundle=bundle,
        model=model,
        forward_process=c["forward_process"].build(),
        time_sampler=c["time_sampler"].build(),
        loss=c["loss"].build(),
        sampler=c["sampler"].build(),
        evaluators=evaluators,
    )


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


def eval_context(parts: Parts, model: Backbone, spec: ResolvedSpec, device: torch.device) -> EvalContext:
    return EvalContext(
        model=model,
        vocab=parts.bundle.tokenizer.vocab,
        dataset=parts.bundle.splits["validation"],
        forward_process=parts.forward_process,
        sampler=parts.sampler,
        tokenizer=parts.bundle.tokenizer,
        device=device,
        batch_size=spec.run.trainer.eval_batch_size,
        seed=spec.run.trainer.seed,
        data_source=parts.data,
    )


def evaluate(
    evaluators: list[Evaluator], ctx: EvalContext, step: int | None, final: bool
) -> dict[str, float]:
    """Run the evaluators due at ``step`` (all of them when ``final``); keys get a ``val/`` prefix."""
    metrics: dict[str, float] = {}
    for ev in evaluators:
        every = getattr(ev.params, "every", None)
        if final or (step is not None and every and step % every == 0):
            metrics.update({f"val/{k}": v for k, v in ev.evaluate(ctx).items()})
    return metrics


class Trainer:
    """One training run in one process (one rank under torchrun)."""

    def __init__(self, spec: ResolvedSpec, run_dir: Path, quiet: bool = False) -> None:
        self.spec, self.run_dir, self.quiet = spec, run_dir, quiet
        self.cfg = spec.run.trainer
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.env = distributed.setup(self.cfg.device)
        self.registry = get_registry()
        self.parts = build_parts(spec, self.cfg.seed)
        self.vocab = self.parts.bundle.tokenizer.vocab
        self.seq_len = self.parts.bundle.seq_len
        self._check_batch()
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
            self.vocab,
            global_batch_size=self.cfg.batch_size,
            seed=self.cfg.seed,
            rank=self.env.rank,
            world_size=self.env.world_size,
            device=self.env.device,
        )
        self.local_micro = self.cfg.batch_size // self.env.world_size // self.cfg.grad_accum
        self.parts.forward_process.setup(
            self.vocab,
            self.seq_len,
            self.local_micro,
            self.cfg.max_steps,
            self.cfg.seed * 1000 + self.env.rank,
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
        self.tokens = 0
        self.last_eval: dict[str, float] = {}
        self.context = RunContext(
            run_dir, spec, self.env.rank, self.env.world_size, dict(self.parts.bundle.info), self.model
        )

    def _check_batch(self) -> None:
        world, accum, batch = self.env.world_size, self.cfg.grad_accum, self.cfg.batch_size
        if batch % (world * accum):
            raise SpecError(
                f"trainer.batch_size: {batch} is not divisible by world size × grad_accum = "
                f"{world} × {accum}; choose a multiple"
            )
        if self.parts.forward_process.stateful and accum > 1:
            raise SpecError(
                f"trainer.grad_accum: forward process '{self.spec.components['forward_process'].name}' "
                "keeps a pool of sequences per micro-batch and needs grad_accum=1"
            )

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
                "torch_rng": torch.get_rng_state(),
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
                "each rank's pool is saved only by rank 0"
            )
        step, weights, groups = checkpoint.load_checkpoint(path)
        self.model.load_state_dict(weights["model"])
        if self.ema is not None and "ema" in weights:
            self.ema.load_state_dict(weights["ema"])
        self.optimizer.load_state_dict(groups["optimizer"])
        state = groups["trainer"]
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.elapsed, self.tokens = step, float(state["elapsed"]), int(state["tokens"])
        self.last_eval = dict(state.get("last_eval", {}))
        self.parts.forward_process.load_state_dict(groups.get("forward_process", {}))
        if self.env.is_main:
            runs.truncate_metrics(self.run_dir, step)

    # -- the loop --------------------------------------------------------------------------

    def train_step(self) -> float:
        """One optimiser step over ``grad_accum`` micro-batches; returns the mean loss."""
        self.net.train()
        progress = self.step / self.cfg.max_steps
        accum = self.cfg.grad_accum
        total = 0.0
        fed_back: list[tuple[TrainingExample, torch.Tensor]] = []
        for micro in range(accum):
            batch = self.stream.batch(self.step, micro=micro, num_micro=accum)
            gen = step_generator(self.cfg.seed, self.env.rank, self.step, micro)
            example = self.parts.forward_process.prepare(batch, self.parts.time_sampler, gen, progress)
            last = micro == accum - 1 or not self.env.enabled
            sync = contextlib.nullcontext() if last else self._no_sync()
            with sync:
                with self.autocast:
                    logits = model_forward(self.net, example, self.uses_time)
                out = self.parts.loss(logits, example, self.vocab)
                if not torch.isfinite(out.loss):
                    raise TrainingDiverged(self._diverged("loss"))
                (out.loss / accum).backward()
            total += float(out.loss.detach()) / accum
            self.tokens += int(batch.attention_mask.sum()) * self.env.world_size
            fed_back.append((example, logits.detach()))
        if self.cfg.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            if not torch.isfinite(norm):
                raise TrainingDiverged(self._diverged("gradient norm"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        for example, logits in fed_back:
            self.parts.forward_process.feedback(example, logits)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        return total

    def _no_sync(self) -> contextlib.AbstractContextManager[None]:
        """DDP: skip the gradient all-reduce on accumulation micro-steps before the last one."""
        ddp = getattr(self.net, "_orig_mod", self.net)  # under torch.compile, the wrapped module
        assert isinstance(ddp, DistributedDataParallel)
        return ddp.no_sync()

    def _diverged(self, what: str) -> str:
        ckpt = checkpoint.latest_checkpoint(self.run_dir / "ckpt")
        where = f"the last checkpoint is {ckpt}" if ckpt else "no checkpoint was written yet"
        return (
            f"{what} became NaN/Inf at step {self.step + 1}; stopped ({where}). "
            f"Try a lower trainer.lr (now {self.cfg.lr}) or trainer.grad_clip, or resume with --resume"
        )

    def eval_model(self) -> Backbone:
        return self.ema.module if self.ema is not None else self.model  # type: ignore[return-value]

    def run_evaluation(self, final: bool = False) -> dict[str, float]:
        ctx = eval_context(self.parts, self.eval_model(), self.spec, self.env.device)
        with self.autocast:
            metrics = evaluate(self.parts.evaluators, ctx, self.step, final)
        return metrics

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
            self.elapsed += time.perf_counter() - t0
            step = self.step
            metrics: dict[str, float] = {}
            if step % self.cfg.log_every == 0 or step == self.cfg.max_steps:
                now = time.perf_counter()
                tok_s = (self.tokens - window_tokens) / max(now - window_start, 1e-9)
                window_start, window_tokens = now, self.tokens
                metrics = {
                    "loss": distributed.mean_across_ranks(loss, self.env),
                    "lr": float(self.scheduler.get_last_lr()[0]),
                    "tok_per_s": tok_s,
                }
                self.log(
                    {"kind": "train", "step": step, "elapsed": self.elapsed, "tokens": self.tokens, **metrics}
                )
            final = step == self.cfg.max_steps
            evals = self.run_evaluation(final=final) if final or self._eval_due(step) else {}
            if evals:
                self.last_eval = evals
                self.log(
                    {"kind": "eval", "step": step, "elapsed": self.elapsed, "tokens": self.tokens, **evals}
                )
                hooks.mdm_eval_end(run=self.context, step=step, metrics=evals)
                window_start = time.perf_counter()
            hooks.mdm_step_end(run=self.context, step=step, metrics=metrics)
            if step % self.cfg.ckpt_every == 0 or final:
                self.save()
            bar.update(1)
            postfix = {"loss": f"{loss:.3f}"}
            if "val/nll" in self.last_eval:
                postfix["val_nll"] = f"{self.last_eval['val/nll']:.3f}"
            if "tok_per_s" in metrics:
                postfix["tok/s"] = f"{metrics['tok_per_s'] / 1000:.1f}k"
            bar.set_postfix(postfix, refresh=False)
        bar.close()
        summary = self.finish()
        hooks.mdm_run_end(run=self.context, metrics=self.last_eval)
        return summary

    def _eval_due(self, step: int) -> bool:
        return any(
            (every := getattr(ev.params, "every", None)) and step % every == 0 for ev in self.parts.evaluators
        )

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
        ctx = SamplingContext(self.vocab, self.env.device, alpha=self.parts.forward_process.alpha)
        out = self.parts.sampler.generate(self.eval_model(), ctx, n, self.seq_len, gen)
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
            (run_dir / "tokenizer.json").write_text(json.dumps(trainer.parts.bundle.tokenizer.to_json()))
        summary = trainer.fit(resume=resume)
    finally:
        distributed.teardown()
    summary["run_dir"] = str(run_dir)
    return summary
