"""mdm plug-in: the MDLM loss as fused Triton kernels (loss name ``mdlm_triton``).

This registration module imports neither torch nor Triton: listing plug-ins stays instant, and
the kernels are imported only when a spec names the loss on a machine that can run them.
"""

from __future__ import annotations

from mdm_core.hookspecs import ComponentRef, hookimpl

__version__ = "0.2.0"


@hookimpl
def mdm_components() -> list[ComponentRef]:
    return [
        ComponentRef(
            "loss",
            "mdlm_triton",
            "mdm_plugin_triton_loss.loss:FusedMDLMLoss",
            "MDLM SUBS NELBO as fused Triton kernels (PyTorch fallback without a GPU)",
        ),
    ]


@hookimpl
def mdm_status() -> dict[str, str]:
    from mdm_plugin_triton_loss.backend import active_path

    return {"mdlm_triton": active_path()}
