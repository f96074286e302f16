"""Registration module of the bell-shaped time sampler plug-in (import-light: no torch, no scipy)."""

from __future__ import annotations

from mdm_core.hookspecs import ComponentRef, hookimpl

__version__ = "0.2.0"


@hookimpl
def mdm_components() -> list[ComponentRef]:
    return [
        ComponentRef(
            "time_sampler",
            "bell",
            "mdm_plugin_bell.sampler:BellTimeSampler",
            "bell-shaped t (beta, logit-normal, truncated normal), stratified, mixable with uniform",
        )
    ]
