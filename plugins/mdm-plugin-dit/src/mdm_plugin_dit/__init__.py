"""Registration module of the DiT backbone plug-in (import-light: no torch here)."""

from __future__ import annotations

from mdm_core.hookspecs import ComponentRef, hookimpl

__version__ = "0.2.0"


@hookimpl
def mdm_components() -> list[ComponentRef]:
    return [
        ComponentRef(
            "backbone",
            "dit",
            "mdm_plugin_dit.model:DiT",
            "diffusion transformer: adaLN blocks, rotary positions, layouts, KV cache",
        )
    ]
