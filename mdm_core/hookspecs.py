"""Hook specifications of the ``mdm`` plug-in system (pluggy project name ``mdm``).

A plug-in is a module exposed through the ``mdm`` entry-point group. It implements any of the
hooks below with ``@mdm_core.hookimpl``. Its module must stay import-light: components are
declared as ``ComponentRef`` records naming ``"package.module:Class"``, and only the components a
spec names are ever imported. Hook signatures only ever gain arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pluggy

PROJECT = "mdm"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class ComponentRef:
    """A component declared without importing it.

    kind: one of ``mdm_core.interfaces.KINDS``; name: what specs write; target:
    ``"package.module:Class"``; summary: one line for listings.
    """

    kind: str
    name: str
    target: str
    summary: str = ""


@hookspec
def mdm_components() -> list[ComponentRef]:  # type: ignore[empty-body]
    """Declare the components this plug-in provides (called when plug-ins are listed)."""


@hookspec
def mdm_run_start(run: Any) -> None:
    """A training run starts; ``run`` is the ``mdm_core.trainer.RunContext`` (dir, spec, rank)."""


@hookspec
def mdm_step_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    """An optimiser step finished; ``metrics`` holds this step's logged values."""


@hookspec
def mdm_eval_end(run: Any, step: int, metrics: dict[str, float]) -> None:
    """A periodic evaluation finished with ``metrics``."""


@hookspec
def mdm_run_end(run: Any, metrics: dict[str, float]) -> None:
    """A training run ended normally with its final ``metrics``."""


@hookspec
def mdm_cli_commands(subparsers: Any) -> None:
    """Add sub-commands to ``mdm`` (``subparsers`` is argparse's); set ``func=callable(args)``."""


@hookspec
def mdm_status() -> dict[str, str]:  # type: ignore[empty-body]
    """Optional run-time status lines for ``mdm plugins --status`` (imports the plug-in's code)."""
