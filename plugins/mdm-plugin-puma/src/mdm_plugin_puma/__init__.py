"""Registration module of the PUMA plug-in (import-light: no torch here)."""

from __future__ import annotations

from mdm_core.hookspecs import ComponentRef, hookimpl

__version__ = "0.2.0"


@hookimpl
def mdm_components() -> list[ComponentRef]:
    return [
        ComponentRef(
            "forward_process",
            "puma",
            "mdm_plugin_puma.process:PumaProcess",
            "progressive unmasking: a pool of sequences revealed stage by stage by model confidence",
        )
    ]
