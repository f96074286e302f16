"""Registration module of the Weights & Biases plug-in (import-light: no wandb, no torch here).

It declares the ``wandb`` spec section and implements the lifecycle hooks; the logger
(:mod:`mdm_plugin_wandb.logger`) is imported only by a run whose spec enables it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from mdm_core.hookspecs import SpecSection, hookimpl

if TYPE_CHECKING:
    from pathlib import Path

    from mdm_core.trainer import RunContext
    from mdm_plugin_wandb.config import WandbConfig
    from mdm_plugin_wandb.logger import WandbLogger

__version__ = "0.1.0"
SECTION = "wandb"

#: The open W&B run of each mdm run in this process, by run directory (rank 0 only).
_loggers: dict[Path, WandbLogger] = {}


@hookimpl
def mdm_spec_sections() -> list[SpecSection]:
    return [
        SpecSection(
            SECTION,
            "mdm_plugin_wandb.config:WandbConfig",
            "Weights & Biases: loss, lr, tok/s, evaluation metrics, NLL by t, samples (offline by default)",
        )
    ]


@hookimpl
def mdm_run_start(run: RunContext) -> None:
    stale = _loggers.pop(run.run_dir, None)  # left open by a run of this process that failed
    if stale is not None:
        stale.run.finish(exit_code=1)
    config = cast("WandbConfig | None", run.spec.sections.get(SECTION))
    if config is None or not config.enabled or run.rank != 0:
        return
    from mdm_plugin_wandb.logger import WandbLogger

    _loggers[run.run_dir] = WandbLogger(run.run_dir, config, run.spec.resolved)


@hookimpl
def mdm_step_end(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    logger = _loggers.get(run.run_dir)
    if logger is not None:
        logger.log(step, metrics)  # metrics are empty off logging steps


@hookimpl
def mdm_eval_end(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    logger = _loggers.get(run.run_dir)
    if logger is not None:
        logger.log(step, metrics)


@hookimpl
def mdm_run_end(run: RunContext) -> None:
    logger = _loggers.pop(run.run_dir, None)
    if logger is not None:
        logger.finish()
