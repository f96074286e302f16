"""Registration module of the TensorBoard plug-in (import-light: no torch, no tensorboard here).

It declares the ``tensorboard`` spec section and implements the lifecycle hooks; the writer
(:mod:`mdm_plugin_tensorboard.logger`) is imported only by a run whose spec enables it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from mdm_core.hookspecs import SpecSection, hookimpl

if TYPE_CHECKING:
    from pathlib import Path

    from mdm_core.trainer import RunContext
    from mdm_plugin_tensorboard.config import TensorBoardConfig
    from mdm_plugin_tensorboard.logger import TensorBoardLogger

__version__ = "0.1.0"
SECTION = "tensorboard"

#: The open writer of each run in this process, by run directory (rank 0 only).
_loggers: dict[Path, TensorBoardLogger] = {}


@hookimpl
def mdm_spec_sections() -> list[SpecSection]:
    return [
        SpecSection(
            SECTION,
            "mdm_plugin_tensorboard.config:TensorBoardConfig",
            "TensorBoard event files: loss, lr, tok/s, evaluation metrics, NLL by t, samples",
        )
    ]


@hookimpl
def mdm_run_start(run: RunContext) -> None:
    stale = _loggers.pop(run.run_dir, None)  # left open by a run of this process that failed
    if stale is not None:
        stale.close()
    config = cast("TensorBoardConfig | None", run.spec.sections.get(SECTION))
    if config is None or not config.enabled or run.rank != 0:
        return
    from mdm_plugin_tensorboard.logger import TensorBoardLogger

    _loggers[run.run_dir] = TensorBoardLogger(run.run_dir, config)


@hookimpl
def mdm_step_end(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    logger = _loggers.get(run.run_dir)
    if logger is not None and metrics:  # metrics are empty off logging steps
        logger.scalars(step, metrics)


@hookimpl
def mdm_eval_end(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    logger = _loggers.get(run.run_dir)
    if logger is not None:
        logger.evaluation(step, metrics)


@hookimpl
def mdm_run_end(run: RunContext) -> None:
    logger = _loggers.pop(run.run_dir, None)
    if logger is not None:
        logger.finish()
