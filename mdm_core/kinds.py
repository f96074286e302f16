"""The seven component kinds, in one table that everything else derives from.

Import-light (no torch): the CLI, the registry, the spec loader, the scaffold, the catalogue and
the noxfile all read this table, and ``mdm plugins`` must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """One component kind.

    name: what ``ComponentRef.kind`` says; label: how messages name it; section: the spec key
    that chooses it (``evaluators`` is a list); base: the interface class, as ``module:Class``
    (imported only when a component is loaded); aliases: other spellings ``mdm components`` takes.
    """

    name: str
    label: str
    section: str
    base: str
    aliases: tuple[str, ...] = ()

    @property
    def is_list(self) -> bool:
        """True when the spec holds a list of these (evaluators), not one choice."""
        return self.section != self.name


KIND_TABLE: tuple[Kind, ...] = (
    Kind(
        "time_sampler", "time sampler", "time_sampler", "mdm_core.interfaces:TimeSampler", ("time_samplers",)
    ),
    Kind(
        "forward_process",
        "forward process",
        "forward_process",
        "mdm_core.interfaces:ForwardProcess",
        ("forward_processes", "process"),
    ),
    Kind("loss", "loss", "loss", "mdm_core.interfaces:Loss", ("losses",)),
    Kind("backbone", "backbone", "backbone", "mdm_core.interfaces:Backbone", ("backbones", "model")),
    Kind("sampler", "sampler", "sampler", "mdm_core.interfaces:Sampler", ("samplers",)),
    Kind("evaluator", "evaluator", "evaluators", "mdm_core.interfaces:Evaluator", ("evaluators",)),
    Kind("data", "data source", "data", "mdm_core.interfaces:DataSource", ("data_source", "data_sources")),
)

KINDS: tuple[str, ...] = tuple(k.name for k in KIND_TABLE)
BY_NAME: dict[str, Kind] = {k.name: k for k in KIND_TABLE}
KIND_LABELS: dict[str, str] = {k.name: k.label for k in KIND_TABLE}
#: Spec sections that hold exactly one component, in the order a run builds them.
SINGLE_SECTIONS: dict[str, str] = {k.section: k.name for k in KIND_TABLE if not k.is_list}


def resolve_kind(text: str) -> Kind | None:
    """The kind a user means by ``text`` (``time-sampler``, ``samplers``, ``data_source`` …)."""
    key = text.strip().replace("-", "_")
    for kind in KIND_TABLE:
        if key == kind.name or key in kind.aliases:
            return kind
    return None
