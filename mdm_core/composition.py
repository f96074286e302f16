"""Pairs of components that validate one by one but cannot work together are refused here.

``mdm spec validate`` and ``mdm train`` call :func:`check_composition` on a resolved spec, so a
run never starts with a component that would be silently ignored or misused:

- the sampler must honour the generation structure the forward process trains for
  (``Sampler.structures`` ∋ ``ForwardProcess.structure(params)``): e.g. a block-trained model
  with a sampler that ignores blocks is refused;
- a forward process that cannot use a time sampler's law (``uses_time_sampler = False``) accepts
  only the uniform law (``TimeSampler.is_uniform()``), instead of dropping the one it was given;
- the backbone must honour every attention layout the forward process's models are run with
  (``Backbone.layouts`` ⊇ ``ForwardProcess.layouts(params)``, or ``"any"``): e.g. a recurrent
  backbone honouring only ``full`` and ``block_causal`` is refused for BD3 training.

The checks read class attributes and build at most the time sampler (``cls(params)``: cheap, no
run shape needed), so they run before any data is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mdm_core.errors import PluginError, SpecError
from mdm_core.interfaces import ANY_LAYOUT
from mdm_core.kinds import KIND_LABELS
from mdm_core.plugins import get_registry

if TYPE_CHECKING:  # spec.py imports this module: no import at run time
    from mdm_core.spec import Component


def describe(component: Component) -> str:
    """``sampler 'ancestral' (mdm-diffusion 0.2.0)``: the component and the distribution providing it."""
    label = KIND_LABELS.get(component.kind, component.kind)
    try:
        origin = f" ({get_registry().provider(component.kind, component.name).label})"
    except (SpecError, PluginError):  # a class built by hand (tests) has no registry entry
        origin = ""
    return f"{label} '{component.name}'{origin}"


def check_composition(components: dict[str, Component], source: str) -> None:
    """Raise :class:`SpecError` (exit 2) naming both components of a pair that cannot work.

    ``components`` maps each kind (``forward_process``, ``sampler``, ``time_sampler``, ...) to
    its validated choice; kinds that are absent are not checked. ``source`` (the spec file)
    prefixes the message.
    """
    process = components.get("forward_process")
    if process is None:
        return
    sampler = components.get("sampler")
    if sampler is not None:
        structure = process.cls.structure(process.params)
        supported = sampler.cls.structures
        if structure not in supported:
            raise SpecError(
                f"{source}: {describe(sampler)} cannot generate from models trained by "
                f"{describe(process)}: the process trains for the '{structure}' structure and the "
                f"sampler supports {sorted(supported)}; choose a sampler that lists '{structure}'"
            )
    time_sampler = components.get("time_sampler")
    if (
        time_sampler is not None
        and not process.cls.uses_time_sampler
        and not time_sampler.cls(time_sampler.params).is_uniform()
    ):
        raise SpecError(
            f"{source}: {describe(process)} cannot use the law of {describe(time_sampler)}: it "
            "draws no diffusion times from a time sampler, so only the uniform one is accepted "
            "(time_sampler: {name: uniform}); it would otherwise be silently ignored"
        )
    backbone = components.get("backbone")
    if backbone is not None:
        _check_layouts(backbone, process, source)


def _check_layouts(backbone: Component, process: Component, source: str) -> None:
    """The backbone honours every layout the process trains and generates with."""
    claimed = backbone.cls.layouts
    if claimed != ANY_LAYOUT and not (
        isinstance(claimed, frozenset) and all(isinstance(name, str) for name in claimed)
    ):
        raise PluginError(
            f"{describe(backbone)}: layouts must be a frozenset of layout names or 'any', got {claimed!r}"
        )
    missing = sorted(name for name in process.cls.layouts(process.params) if not backbone.cls.honours(name))
    if missing:
        raise SpecError(
            f"{source}: {describe(backbone)} does not honour the attention layout(s) {missing} that "
            f"{describe(process)} trains or generates with; it honours {sorted(claimed)}, so the "
            "model would silently see what the layout hides. Choose a backbone that honours them "
            "(e.g. backbone: {name: dit}) or a process that needs only those"
        )
