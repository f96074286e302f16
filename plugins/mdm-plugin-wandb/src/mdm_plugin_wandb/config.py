"""The ``wandb`` spec section (imported only when a spec writes ``wandb:``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WandbConfig(BaseModel):
    """Which Weights & Biases project a run logs to, and how; off unless ``enabled``, so a base
    spec can name the project and ``wandb.enabled=true`` on the command line turns it on."""

    model_config = ConfigDict(extra="forbid")  # a misspelled key is exit 2 with "did you mean"

    enabled: bool = Field(False, description="log this run to Weights & Biases")
    project: str = Field("mdm", min_length=1, description="the W&B project")
    entity: str | None = Field(None, description="the W&B user or team (None: your default entity)")
    mode: Literal["online", "offline", "disabled"] = Field(
        "offline",
        description="offline: write RUN/wandb/ only (upload later with `wandb sync`); online: "
        "stream to the server (needs `wandb login`); disabled: a no-op run",
    )
    name: str | None = Field(None, description="the W&B run name (None: the run directory's name)")
    tags: list[str] = Field(default_factory=list, description="W&B tags of the run")
    samples: bool = Field(True, description="log the run's samples.txt as a table at the end")
