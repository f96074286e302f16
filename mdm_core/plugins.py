"""Plug-in discovery (entry points + pluggy) and the lazy component registry.

Discovery imports only each plug-in's small registration module; a module that fails to import
is recorded with its distribution, version and error and never takes the host down (unless
``MDM_STRICT_PLUGINS=1``). Component classes are imported only when ``load`` is asked for them.

Environment:
  MDM_STRICT_PLUGINS=1           load errors and name conflicts raise instead of being reported
  MDM_DISABLE_PLUGINS=a,b        skip these plug-ins (entry-point or distribution names)
  MDM_LOAD_PLUGINS=a,b           load only these plug-ins (the built-ins are always loaded)
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any

import pluggy

from mdm_core import hookspecs
from mdm_core.errors import PluginError, SpecError
from mdm_core.hookspecs import ComponentRef

CORE_DISTRIBUTION = "mdm-core"
BUILTIN_MODULE = "mdm_core.builtin"

KIND_LABELS = {
    "time_sampler": "time sampler",
    "forward_process": "forward process",
    "loss": "loss",
    "backbone": "backbone",
    "sampler": "sampler",
    "evaluator": "evaluator",
    "data": "data source",
}


@dataclass
class PluginInfo:
    """One registered (or failed) plug-in module and where it came from."""

    name: str
    distribution: str
    version: str
    module: str
    error: str | None = None
    components: list[ComponentRef] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.distribution} {self.version}"


@dataclass(frozen=True)
class Entry:
    ref: ComponentRef
    plugin: PluginInfo


def _env_list(name: str) -> set[str]:
    return {x.strip() for x in os.environ.get(name, "").split(",") if x.strip()}


def strict() -> bool:
    return os.environ.get("MDM_STRICT_PLUGINS", "") not in ("", "0", "false", "False")


def core_version() -> str:
    try:
        return metadata.version(CORE_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        from mdm_core import __version__

        return __version__


class Registry:
    """All discovered plug-ins, their components by kind, and the pluggy manager."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self.entries: dict[tuple[str, str], Entry] = {}
        self.conflicts: dict[tuple[str, str], list[PluginInfo]] = {}

    # -- discovery -------------------------------------------------------------------------

    def discover(self) -> Registry:
        builtin = PluginInfo("core", CORE_DISTRIBUTION, core_version(), BUILTIN_MODULE)
        self._register(builtin, importlib.import_module(BUILTIN_MODULE))
        disabled, only = _env_list("MDM_DISABLE_PLUGINS"), _env_list("MDM_LOAD_PLUGINS")
        for ep in sorted(metadata.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
            if ep.value == BUILTIN_MODULE:
                continue
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            if {ep.name, dist} & disabled or (only and not {ep.name, dist} & only):
                continue
            info = PluginInfo(ep.name, dist, version, ep.value)
            try:
                module = ep.load()
            except Exception as exc:  # a broken plug-in is reported, never fatal
                info.error = f"{type(exc).__name__}: {exc}"
                self.plugins.append(info)
                if strict():
                    raise PluginError(f"plug-in {info.label} failed to load: {info.error}") from exc
                continue
            self._register(info, module)
        return self

    def _register(self, info: PluginInfo, module: Any) -> None:
        self.pm.register(module, name=info.name)
        self.plugins.append(info)
        impl = getattr(module, "mdm_components", None)
        refs = list(impl() or []) if callable(impl) else []
        for ref in refs:
            info.components.append(ref)
            key = (ref.kind, ref.name)
            if key in self.entries:
                first = self.entries[key].plugin
                self.conflicts.setdefault(key, [first]).append(info)
                if strict():
                    raise PluginError(self._conflict_message(key))
                continue
            self.entries[key] = Entry(ref, info)

    def _conflict_message(self, key: tuple[str, str]) -> str:
        owners = " and ".join(p.label for p in self.conflicts[key])
        return (
            f"{KIND_LABELS[key[0]]} '{key[1]}' is registered by both {owners}; "
            "uninstall one of them or disable it with MDM_DISABLE_PLUGINS"
        )

    # -- lookup ----------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(name for k, name in self.entries if k == kind)

    def entry(self, kind: str, name: str, where: str | None = None) -> Entry:
        key = (kind, name)
        if key in self.conflicts:
            raise PluginError(self._conflict_message(key))
        if key not in self.entries:
            raise SpecError(self._unknown_message(kind, name, where or f"{kind}.name"))
        return self.entries[key]

    def _unknown_message(self, kind: str, name: str, where: str) -> str:
        label = KIND_LABELS.get(kind, kind)
        names = self.names(kind)
        msg = f"{where}: no {label} called '{name}'"
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        if close:
            msg += "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
        installed = ", ".join(f"{n} ({self.entries[(kind, n)].plugin.label})" for n in names)
        msg += f"\n       installed: {installed or 'none'}"
        broken = [p for p in self.plugins if p.error]
        for p in broken:
            msg += f"\n       note: plug-in {p.label} failed to load ({p.error}); it may provide '{name}'"
        return msg

    def load(self, kind: str, name: str, where: str | None = None) -> type[Any]:
        """Import and return the class registered as ``name`` for ``kind``."""
        from mdm_core.interfaces import KIND_BASES

        entry = self.entry(kind, name, where)
        module_name, _, attr = entry.ref.target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:
            raise PluginError(
                f"{KIND_LABELS[kind]} '{name}' from {entry.plugin.label} failed to import "
                f"({entry.ref.target}): {type(exc).__name__}: {exc}"
            ) from exc
        base = KIND_BASES[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"{entry.ref.target} from {entry.plugin.label} is registered as {KIND_LABELS[kind]} "
                f"'{name}' but is not a subclass of mdm_core.interfaces.{base.__name__}"
            )
        return cls

    def provider(self, kind: str, name: str) -> PluginInfo:
        return self.entry(kind, name).plugin


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry (discovered once)."""
    return Registry().discover()


def reset_registry() -> None:
    """Forget the cached registry (tests that install or disable plug-ins call this)."""
    get_registry.cache_clear()
