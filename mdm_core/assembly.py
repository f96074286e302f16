"""The composition root: how a run's components are built, for training and for a finished run.

Training reads the data once (``assemble``); everything else is built from one :class:`RunShape`
as ``component.build(shape)``. A finished run is rebuilt by :func:`load_run` from what training
left in its directory (``resolved.yaml``, ``tokenizer.json``, the saved validation split and the
checkpoint), so ``mdm eval`` and ``mdm sample`` never read or tokenize the corpus again and see
exactly the components training built.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
import torch

from mdm_core import checkpoint
from mdm_core.data.tokenizers import tokenizer_from_json
from mdm_core.errors import MdmError, SpecError
from mdm_core.interfaces import (
    Backbone,
    DatasetBundle,
    DataSource,
    Evaluator,
    ForwardProcess,
    Loss,
    RunShape,
    Sampler,
    TimeSampler,
)
from mdm_core.spec import ResolvedSpec, TrainerSpec, load_spec

#: Where a run directory keeps what evaluation needs of its data (the validation split and info).
DATA_DIR = "data"
VALIDATION_FILE = "validation.parquet"


@dataclass
class Parts:
    """The built components of a run (shared by training, ``mdm eval`` and ``mdm sample``).

    ``bundle`` holds both splits during training; for a loaded run only ``validation``.
    ``data`` is constructed from its params but, for a loaded run, never loaded.
    """

    data: DataSource
    bundle: DatasetBundle
    shape: RunShape
    model: Backbone
    forward_process: ForwardProcess
    time_sampler: TimeSampler
    loss: Loss
    sampler: Sampler
    evaluators: list[Evaluator]


def run_shape(trainer: TrainerSpec, bundle: DatasetBundle, rank: int = 0, world_size: int = 1) -> RunShape:
    """The run's shape: per-rank micro batch = global batch / world size / grad_accum."""
    batch, accum = trainer.batch_size, trainer.grad_accum
    if batch % (world_size * accum):
        raise SpecError(
            f"trainer.batch_size: {batch} is not divisible by world size × grad_accum = "
            f"{world_size} × {accum}; choose a multiple"
        )
    return RunShape(
        vocab=bundle.tokenizer.vocab,
        seq_len=bundle.seq_len,
        batch_size=batch // world_size // accum,
        grad_accum=accum,
        max_steps=trainer.max_steps,
        seed=trainer.seed,
        rank=rank,
        world_size=world_size,
    )


def build_parts(spec: ResolvedSpec, data: DataSource, bundle: DatasetBundle, shape: RunShape) -> Parts:
    """Build every component of ``spec`` for ``shape``; the model is initialised from the run seed."""
    c = spec.components
    torch.manual_seed(shape.seed)
    model: Backbone = c["backbone"].build(shape)
    return Parts(
        data=data,
        bundle=bundle,
        shape=shape,
        model=model,
        forward_process=c["forward_process"].build(shape),
        time_sampler=c["time_sampler"].build(shape),
        loss=c["loss"].build(shape),
        sampler=c["sampler"].build(shape),
        evaluators=[e.build(shape) for e in spec.evaluators],
    )


def assemble(spec: ResolvedSpec, rank: int = 0, world_size: int = 1) -> Parts:
    """Load the data (the only time a run reads its corpus) and build every component."""
    data: DataSource = spec.components["data"].build()
    bundle = data.load(seed=spec.run.trainer.seed)
    for split in ("train", "validation"):
        if split not in bundle.splits:
            raise SpecError(
                f"data.name: data source '{spec.components['data'].name}' gave no '{split}' split"
            )
    return build_parts(spec, data, bundle, run_shape(spec.run.trainer, bundle, rank, world_size))


def save_run_data(run_dir: Path, bundle: DatasetBundle) -> None:
    """Keep what evaluation needs of the data in the run: tokenizer, validation split, info."""
    (run_dir / "tokenizer.json").write_text(json.dumps(bundle.tokenizer.to_json()))
    folder = run_dir / DATA_DIR
    folder.mkdir(exist_ok=True)
    pq.write_table(bundle.splits["validation"].with_format("arrow")[:], folder / VALIDATION_FILE)
    (folder / "info.json").write_text(json.dumps({"seq_len": bundle.seq_len, "info": bundle.info}, indent=1))


def saved_bundle(run_dir: Path) -> DatasetBundle:
    """The validation bundle :func:`save_run_data` wrote (no corpus is read)."""
    folder = run_dir / DATA_DIR
    needed = (folder / "info.json", folder / VALIDATION_FILE, run_dir / "tokenizer.json")
    if not all(path.is_file() for path in needed):
        raise MdmError(
            f"{run_dir} has no saved validation data ({DATA_DIR}/) or tokenizer.json; "
            "it was trained by an older mdm: retrain it to evaluate or sample"
        )
    meta = json.loads((folder / "info.json").read_text())
    tokenizer = tokenizer_from_json(json.loads((run_dir / "tokenizer.json").read_text()))
    validation = datasets.Dataset(pq.read_table(folder / VALIDATION_FILE))
    return DatasetBundle(
        splits={"validation": validation},
        tokenizer=tokenizer,
        seq_len=int(meta["seq_len"]),
        info=meta["info"],
    )


def best_weights(weights: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The EMA weights of a checkpoint when it has them, else the model's."""
    if "ema" not in weights:
        return weights["model"]
    return {k.removeprefix("module."): v for k, v in weights["ema"].items() if k.startswith("module.")}


@dataclass
class LoadedRun:
    """A finished run rebuilt for evaluation or sampling (model in eval mode on ``device``)."""

    run_dir: Path
    spec: ResolvedSpec
    parts: Parts
    device: torch.device
    step: int


#: Spec keys an evaluation of a trained run may change: how it is decoded and judged, never what
#: was trained (``trainer.eval_batch_size`` only sets how many sequences go through at once).
EVAL_OVERRIDABLE = ("sampler", "evaluators", "trainer.eval_batch_size")


def load_run(
    run_dir: str | Path,
    device: str | torch.device | None = None,
    step: int | None = None,
    overrides: list[str] | None = None,
) -> LoadedRun:
    """Rebuild a trained run from its directory: spec, tokenizer, validation split, checkpoint.

    The data source is constructed from its params (evaluators may use it, e.g. the Markov
    chain) but never loaded; the run shape is rank 0's shape in training. ``step``: that
    checkpoint instead of the latest (verified like a resume). ``overrides``: ``key=value`` for
    the keys of ``EVAL_OVERRIDABLE`` (e.g. another sampler's steps), validated like a spec.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "resolved.yaml").is_file():
        raise MdmError(f"{run_dir} is not a run directory (no resolved.yaml)", exit_code=2)
    for item in overrides or []:
        key = item.partition("=")[0].strip().removeprefix("+")
        if not any(key == allowed or key.startswith(f"{allowed}.") for allowed in EVAL_OVERRIDABLE):
            raise MdmError(
                f"--set {item!r}: an evaluation may change only {', '.join(EVAL_OVERRIDABLE)} "
                "(how the trained model is decoded and judged); retrain to change anything else",
                exit_code=2,
            )
    spec = load_spec(run_dir / "resolved.yaml", overrides)
    point = checkpoint.resume_point(run_dir / "ckpt", step)  # verified; a damaged one is exit 3
    if point is None:
        raise MdmError(f"{run_dir} has no checkpoint yet")
    if point.note:
        print(f"warning: {point.note}", file=sys.stderr)
    bundle = saved_bundle(run_dir)
    world = _training_world_size(run_dir)
    parts = build_parts(
        spec, spec.components["data"].build(), bundle, run_shape(spec.run.trainer, bundle, 0, world)
    )
    step, weights, _ = checkpoint.load_checkpoint(point.path)
    chosen = point.path / ("ema.safetensors" if "ema" in weights else "model.safetensors")
    checkpoint.check_fits(chosen, best_weights(weights), parts.model.state_dict())
    parts.model.load_state_dict(best_weights(weights))
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    parts.model.to(where).eval()
    return LoadedRun(run_dir=run_dir, spec=spec, parts=parts, device=where, step=step)


def _training_world_size(run_dir: Path) -> int:
    env: dict[str, Any] = {}
    if (run_dir / "env.json").is_file():
        env = json.loads((run_dir / "env.json").read_text())
    return int(env.get("world_size", 1))
