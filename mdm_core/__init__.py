"""mdm: a plug-in ecosystem for training and evaluating masked diffusion language models.

This module stays import-light (no torch): plug-in registration modules import ``hookimpl``
and ``ComponentRef`` from here, and ``mdm plugins`` must list them without building anything.
"""

from typing import TYPE_CHECKING, Any

from mdm_core.hookspecs import ComponentRef, SpecSection, hookimpl

if TYPE_CHECKING:
    from mdm_core.pretrained import load_pretrained

__version__ = "0.2.0"

__all__ = ["ComponentRef", "SpecSection", "__version__", "hookimpl", "load_pretrained"]


def __getattr__(name: str) -> Any:
    """``mdm_core.load_pretrained`` imports torch only when it is first used (PEP 562)."""
    if name == "load_pretrained":
        from mdm_core.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'mdm_core' has no attribute {name!r}")
