"""The ``tensorboard`` spec section (imported only when a spec writes ``tensorboard:``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class TensorBoardConfig(BaseModel):
    """Where and how a run writes TensorBoard event files; off unless ``enabled``, so a base spec
    can configure it and ``tensorboard.enabled=true`` on the command line turns it on."""

    model_config = ConfigDict(extra="forbid")  # a misspelled key is exit 2 with "did you mean"

    enabled: bool = Field(False, description="write event files for this run")
    log_dir: str | None = Field(
        None,
        description="None: RUN/tensorboard; a folder: <folder>/<run directory name>, so that "
        "`tensorboard --logdir <folder>` shows several runs side by side",
    )
    flush_secs: int = Field(30, ge=1, description="seconds between flushes of the event file to disk")
    samples: bool = Field(True, description="add the run's samples.txt as text at the end")

    def directory(self, run_dir: Path) -> Path:
        """The event-file folder of the run in ``run_dir``."""
        return run_dir / "tensorboard" if self.log_dir is None else Path(self.log_dir) / run_dir.name
