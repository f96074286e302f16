"""mdm: a plug-in ecosystem for training and evaluating masked diffusion language models.

This module stays import-light (no torch): plug-in registration modules import ``hookimpl``
and ``ComponentRef`` from here, and ``mdm plugins`` must list them without building anything.
"""

from mdm_core.hookspecs import ComponentRef, SpecSection, hookimpl

__version__ = "0.2.0"

__all__ = ["ComponentRef", "SpecSection", "__version__", "hookimpl"]
