"""Logging one run's metrics to Weights & Biases (imports ``wandb``)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import wandb

from mdm_plugin_wandb.config import WandbConfig

#: The prefix of the ``nll_by_t`` evaluator's metrics, one per t bucket (``all``: their mean).
NLL_BY_T = "val/nll_by_t/"
#: Where a run directory keeps its W&B run id, so that ``mdm train --resume`` continues that run.
RUN_ID = "wandb-run-id"


def key(metric: str) -> str:
    """The W&B key of a metric: training values under ``train/``, evaluation values under their
    ``val/`` key, and the NLL-by-t buckets in a section of their own (``nll_by_t/``), since W&B
    groups panels by a key's first component."""
    if metric.startswith(NLL_BY_T):
        return "nll_by_t/" + metric.removeprefix(NLL_BY_T)
    return metric if metric.startswith("val/") else f"train/{metric}"


class WandbLogger:
    """The W&B run of one mdm run on its main process.

    The W&B run id is kept in the run directory: a resumed mdm run continues the same W&B run,
    and the steps it trains again (exact resume: the same values) are not logged twice.
    """

    def __init__(self, run_dir: Path, config: WandbConfig, spec: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.config = config
        id_file = run_dir / RUN_ID
        resumed = id_file.is_file()
        run_id = id_file.read_text().strip() if resumed else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=config.project,
            entity=config.entity,
            name=config.name or run_dir.name,
            tags=config.tags,
            mode=config.mode,
            dir=run_dir,
            id=run_id,
            resume="allow",
            config=spec,
            reinit="create_new",
        )
        #: The last step logged by any process of this run (W&B refuses to go back).
        self.step = max(self.run.step, 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """One step's metrics (training or evaluation); a step already logged is skipped."""
        if metrics and step >= self.step:
            self.run.log({key(k): v for k, v in metrics.items()}, step=step)
            self.step = step

    def finish(self) -> None:
        """Log the run's samples (if asked and written) as a table, then close the W&B run."""
        samples = self.run_dir / "samples.txt"
        if self.config.samples and samples.is_file():
            table = wandb.Table(columns=["sample"], data=[[s] for s in read_samples(samples)])
            self.run.log({"samples": table}, step=self.step)
        self.run.finish()


def read_samples(path: Path) -> list[str]:
    """The samples of a run's ``samples.txt`` (a ``#`` header line, then samples between ``---``)."""
    text = path.read_text()
    body = text.split("\n", 1)[1] if text.startswith("#") else text
    return body.rstrip("\n").split("\n---\n")
