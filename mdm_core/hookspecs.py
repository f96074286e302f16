"""Hook specifications of the ``mdm`` plug-in system (pluggy project ``mdm``).

A plug-in is a module exposed through the ``mdm`` entry-point group (or any object registered
with ``get_registry().pm.register``). It implements any of the hooks below with
``@mdm_core.hookimpl``. Its module must stay import-light: components and spec sections are
declared as records naming ``"package.module:Name"``, imported only when a spec uses them.
Hook signatures only ever gain arguments. Every hook is documented in ``docs/hooks.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import argparse

    from mdm_core.trainer import RunContext

PROJECT = "mdm"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class ComponentRef:
    """A component declared without importing it.

    kind: one of ``mdm_core.kinds.KINDS``; name: what specs write; target:
    ``"package.module:Class"``; summary: one line for listings.
    """

    kind: str
    name: str
    target: str
    summary: str = ""


@dataclass(frozen=True)
class SpecSection:
    """A top-level spec key a plug-in owns (pytest's ``addoption``, for YAML), declared without
    importing its model.

    name: the top-level key (``tensorboard``); target: ``"package.module:Model"``, a pydantic
    model imported only when a spec writes ``name``; summary: one line for listings.
    """

    name: str
    target: str
    summary: str = ""


@hookspec
def mdm_components() -> list[ComponentRef]:  # type: ignore[empty-body]
    """Declare the components this plug-in provides (called when the registry indexes plug-ins);
    each ``ComponentRef.kind`` is one of ``mdm_core.kinds.KINDS``."""


@hookspec
def mdm_spec_sections() -> list[SpecSection]:  # type: ignore[empty-body]
    """Declare top-level spec sections this plug-in validates; a spec's section is then at
    ``run.spec.sections[name]`` as an instance of the section's model."""


@hookspec
def mdm_run_start(run: RunContext) -> None:
    """A training run starts; ``run`` holds its directory, resolved spec, rank and model."""


@hookspec
def mdm_step_end(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    """An optimiser step finished; ``metrics`` holds this step's logged values (empty off log steps)."""


@hookspec
def mdm_eval_end(run: RunContext, step: int, metrics: dict[str, float]) -> None:
    """A periodic evaluation finished with ``metrics`` (keys prefixed ``val/``)."""


@hookspec
def mdm_run_end(run: RunContext, metrics: dict[str, float]) -> None:
    """A training run ended normally with its final ``metrics``."""


@hookspec
def mdm_cli_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add sub-commands to ``mdm``: ``subparsers.add_parser(...)`` then ``set_defaults(func=f)``
    where ``f(args)`` returns an exit code. Called whenever ``mdm`` builds its parser."""


@hookspec
def mdm_status() -> dict[str, str]:  # type: ignore[empty-body]
    """Optional run-time status lines for ``mdm plugins --status`` (imports the plug-in's code)."""
