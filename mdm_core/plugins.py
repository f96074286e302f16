"""Plug-in discovery (entry points + pluggy) and the lazy component registry.

pluggy's plug-in manager is the one source of truth: discovery registers each plug-in's small
registration module with it, and the component and spec-section tables are built from
``pm.hook.mdm_components`` and ``pm.hook.mdm_spec_sections``, one implementation at a time so that
each entry is attributed to its plug-in and a plug-in whose hook raises is reported, never fatal
(unless ``MDM_STRICT_PLUGINS=1``). An object registered later with ``registry.pm.register`` is
listed and loadable like any discovered plug-in: the tables are rebuilt whenever the set of
registered plug-ins changes. Component classes are imported only when ``load`` is asked for them.
A name two plug-ins register is a conflict; a spec picks one provider as ``dist:name``
(``mdm-plugin-bell:bell``). Lifecycle hooks run through :class:`RunHooks`: a plug-in whose hook
raises is reported once and left out for the rest of the run, never the run's failure.

Environment:
  MDM_STRICT_PLUGINS=1           load errors and name conflicts raise instead of being reported
  MDM_DISABLE_PLUGINS=a,b        block these plug-ins (entry-point or distribution names)
  MDM_LOAD_PLUGINS=a,b           load only these plug-ins (the built-ins are always loaded)
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from mdm_core import hookspecs
from mdm_core.errors import PluginError, SpecError
from mdm_core.hookspecs import ComponentRef, SpecSection
from mdm_core.kinds import BY_NAME, KIND_LABELS, KIND_TABLE, KINDS

CORE_DISTRIBUTION = "mdm-diffusion"
BUILTIN_MODULE = "mdm_core.builtin"
BUILTIN_NAME = "core"
#: The conflict-table kind of spec sections (beside the component kinds).
SECTION = "spec_section"
#: Top-level spec keys the core owns; a plug-in may not declare a section under one of them.
CORE_SECTIONS = frozenset(
    {"base", "name", "description", "requires", "out_dir", "trainer"} | {k.section for k in KIND_TABLE}
)
UNKNOWN_VERSION = "unknown"


def _label(kind: str) -> str:
    return "spec section" if kind == SECTION else KIND_LABELS.get(kind, kind)


@dataclass
class PluginInfo:
    """One registered (or failed) plug-in and where it came from."""

    name: str
    distribution: str
    version: str
    module: str
    error: str | None = None
    components: list[ComponentRef] = field(default_factory=list)
    sections: list[SpecSection] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``mdm-plugin-bell 0.2.0``, or ``name (in-process)`` for an object no distribution installed."""
        if self.version == UNKNOWN_VERSION:
            return f"{self.distribution} (in-process)"
        return f"{self.distribution} {self.version}"


@dataclass(frozen=True)
class Entry:
    ref: ComponentRef
    plugin: PluginInfo


@dataclass(frozen=True)
class SectionEntry:
    section: SpecSection
    plugin: PluginInfo


@dataclass
class _Index:
    """What the registered plug-ins declare, built from their hook implementations."""

    plugins: list[PluginInfo]
    entries: dict[tuple[str, str], Entry]
    sections: dict[str, SectionEntry]
    conflicts: dict[tuple[str, str], list[PluginInfo]]
    #: (kind, name) → every plug-in's entry for it, first registered first (conflicts included).
    providers: dict[tuple[str, str], list[Entry]] = field(default_factory=dict)


def normalise(name: str) -> str:
    """A distribution or plug-in name as the package index compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_list(name: str) -> set[str]:
    return {normalise(x.strip()) for x in os.environ.get(name, "").split(",") if x.strip()}


def strict() -> bool:
    return os.environ.get("MDM_STRICT_PLUGINS", "") not in ("", "0", "false", "False")


def core_version() -> str:
    try:
        return metadata.version(CORE_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        from mdm_core import __version__

        return __version__


def _top_level(dist: metadata.Distribution) -> set[str]:
    """The top-level import names a distribution installs (``top_level.txt``, else its files)."""
    listed = dist.read_text("top_level.txt")
    if listed:
        return {line.strip() for line in listed.splitlines() if line.strip()}
    return {
        f.parts[0].removesuffix(".py") for f in dist.files or [] if f.parts and ".dist-info" not in f.parts[0]
    }


def core_shadowing() -> list[str]:
    """One line per problem with the ``mdm_core`` import package: another installed distribution
    that also provides it (``mdm-core`` on PyPI is an unrelated project with the same import
    name, and the core's own name before 0.2.0), saying whether the ``mdm_core`` imported now is
    that one's; or ``mdm_core`` imported while the core's distribution is not installed."""
    from pathlib import Path

    from packaging.utils import canonicalize_name

    import mdm_core

    imported = Path(mdm_core.__file__ or "").resolve()
    ours = canonicalize_name(CORE_DISTRIBUTION)
    fix = f"pip uninstall {{name}} && pip install --force-reinstall {CORE_DISTRIBUTION}"
    lines: list[str] = []
    seen: set[str] = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or "?"
        if canonicalize_name(name) in seen | {ours} or "mdm_core" not in _top_level(dist):
            continue
        seen.add(canonicalize_name(name))
        label = f"{name} {dist.version}"
        if any(Path(str(dist.locate_file(f))).resolve() == imported for f in dist.files or []):
            lines.append(
                f"mdm_core is imported from {imported}, which belongs to {label}, not to "
                f"{CORE_DISTRIBUTION}: a different project with the same import name; "
                + fix.format(name=name)
            )
        else:
            lines.append(
                f"{label} also installs a top-level mdm_core package (a different project, or the "
                f"core's name before 0.2.0); it can overwrite {CORE_DISTRIBUTION}'s files; "
                + fix.format(name=name)
            )
    try:
        metadata.distribution(CORE_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        lines.append(
            f"mdm_core is imported from {imported} but {CORE_DISTRIBUTION} is not installed, so "
            f"plug-ins cannot declare their core range; pip install {CORE_DISTRIBUTION} (in a "
            "checkout: pip install -e .)"
        )
    return lines


def _core_info() -> PluginInfo:
    return PluginInfo(BUILTIN_NAME, CORE_DISTRIBUTION, core_version(), BUILTIN_MODULE)


class Registry:
    """All discovered plug-ins, their components by kind, and the pluggy manager."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        #: Entry-point attribution by plug-in name (distribution, version, module).
        self._origins: dict[str, PluginInfo] = {}
        #: Plug-ins whose registration module failed to import (never registered with pluggy).
        self._failed: list[PluginInfo] = []
        self._indexed: list[tuple[str, object]] | None = None
        self._index_cache: _Index | None = None
        self._package_owners: Mapping[str, list[str]] | None = None

    # -- discovery -------------------------------------------------------------------------

    def discover(self) -> Registry:
        """Register the built-ins and every ``mdm`` entry point not disabled, then index them."""
        self._origins[BUILTIN_NAME] = _core_info()
        self.pm.register(importlib.import_module(BUILTIN_MODULE), name=BUILTIN_NAME)
        disabled, only = _env_list("MDM_DISABLE_PLUGINS"), _env_list("MDM_LOAD_PLUGINS")
        for name in disabled - {BUILTIN_NAME}:
            self.pm.set_blocked(name)
        for ep in sorted(metadata.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
            if ep.value == BUILTIN_MODULE:
                continue
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            names = {normalise(ep.name), normalise(dist)}
            if names & disabled or (only and not names & only):
                self.pm.set_blocked(ep.name)
            if self.pm.is_blocked(ep.name):
                continue
            info = PluginInfo(ep.name, dist, version, ep.value)
            try:
                module = ep.load()
            except Exception as exc:  # a broken plug-in is reported, never fatal
                info.error = f"{type(exc).__name__}: {exc}"
                self._failed.append(info)
                if strict():
                    raise PluginError(f"plug-in {info.label} failed to load: {info.error}") from exc
                continue
            self._origins[ep.name] = info
            self.pm.register(module, name=ep.name)
        self._index()  # strict mode reports a bad plug-in now, not at first use
        return self

    # -- the tables, rebuilt when the registered plug-ins change -----------------------------

    def _index(self) -> _Index:
        registered = [(n, p) for n, p in self.pm.list_name_plugin() if p is not None]
        seen = self._indexed
        if (
            self._index_cache is not None
            and seen is not None
            and len(seen) == len(registered)
            and all(a[0] == b[0] and a[1] is b[1] for a, b in zip(seen, registered, strict=True))
        ):
            return self._index_cache
        infos = {}
        for name, plugin in registered:
            origin = self._origins.get(name) or self._origin_of(name, plugin)
            infos[name] = PluginInfo(origin.name, origin.distribution, origin.version, origin.module)
        index = _Index([*infos.values(), *self._failed], {}, {}, {})
        for name, ref in self._declared(self.pm.hook.mdm_components, infos, ComponentRef):
            info = infos[name]
            if ref.kind not in BY_NAME:
                self._fail(info, f"mdm_components: unknown kind '{ref.kind}' (kinds: {', '.join(KINDS)})")
                continue
            info.components.append(ref)
            key = (ref.kind, ref.name)
            index.providers.setdefault(key, []).append(Entry(ref, info))
            if key in index.entries:
                self._conflict(index, key, index.entries[key].plugin, info)
            else:
                index.entries[key] = Entry(ref, info)
        core = infos.get(BUILTIN_NAME) or _core_info()
        for name, section in self._declared(self.pm.hook.mdm_spec_sections, infos, SpecSection):
            info = infos[name]
            info.sections.append(section)
            key = (SECTION, section.name)
            if section.name in CORE_SECTIONS:
                self._conflict(index, key, core, info)
            elif section.name in index.sections:
                self._conflict(index, key, index.sections[section.name].plugin, info)
            else:
                index.sections[section.name] = SectionEntry(section, info)
        self._indexed, self._index_cache = registered, index
        return index

    def _origin_of(self, name: str, plugin: object) -> PluginInfo:
        """Attribution for a plug-in registered in-process (not through an entry point): the
        distribution that installed its top-level package, if any."""
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
        if self._package_owners is None:  # scanning every distribution takes a while: once
            self._package_owners = metadata.packages_distributions()
        owners = self._package_owners.get(module.partition(".")[0], [])
        if owners:
            return PluginInfo(name, owners[0], metadata.version(owners[0]), module)
        return PluginInfo(name, name, UNKNOWN_VERSION, module)

    def _declared(
        self, hook: pluggy.HookCaller, infos: dict[str, PluginInfo], record: type[Any]
    ) -> list[tuple[str, Any]]:
        """(plug-in name, record) for every record each plug-in's implementation of ``hook``
        returns; what one raises or returns wrongly becomes that plug-in's error."""
        out = []
        for name, result, error in self.call_each(hook):
            declared = list(result or []) if error is None else []
            wrong = [d for d in declared if not isinstance(d, record)]
            if wrong:
                error = f"{hook.name} returned {wrong[0]!r}, not a {record.__name__}"
            if error is not None:
                self._fail(infos[name], error)
                continue
            out += [(name, d) for d in declared]
        return out

    def call_each(
        self, hook: pluggy.HookCaller, skip: Collection[str] = (), **kwargs: Any
    ) -> Iterator[tuple[str, Any, str | None]]:
        """Call each plug-in's implementation of ``hook`` alone, in registration order, yielding
        (plug-in name, result, error): one broken plug-in is reported, never the host's failure.
        Plug-ins named in ``skip`` are not called."""
        for impl in hook.get_hookimpls():
            if impl.hookwrapper or impl.wrapper or impl.plugin_name in skip:
                continue
            try:
                result = impl.function(*(kwargs[arg] for arg in impl.argnames))
            except Exception as exc:  # isolated: the caller reports it against the plug-in
                yield impl.plugin_name, None, f"{hook.name} raised {type(exc).__name__}: {exc}"
            else:
                yield impl.plugin_name, result, None

    def _fail(self, info: PluginInfo, error: str) -> None:
        info.error = f"{info.error}; {error}" if info.error else error
        if strict():
            raise PluginError(f"plug-in {info.label} failed to load: {error}")

    def _conflict(self, index: _Index, key: tuple[str, str], first: PluginInfo, other: PluginInfo) -> None:
        index.conflicts.setdefault(key, [first]).append(other)
        if strict():
            raise PluginError(_conflict_message(key, index.conflicts[key]))

    @property
    def plugins(self) -> list[PluginInfo]:
        """Every registered plug-in, then every one whose module failed to import."""
        return self._index().plugins

    def info(self, name: str) -> PluginInfo:
        """The plug-in registered with pluggy as ``name`` (its distribution and version)."""
        for plugin in self.plugins:
            if plugin.name == name:
                return plugin
        return PluginInfo(name, name, UNKNOWN_VERSION, "?")

    @property
    def entries(self) -> dict[tuple[str, str], Entry]:
        """(kind, name) → the component entry (names registered twice are in ``conflicts``)."""
        return self._index().entries

    @property
    def sections(self) -> dict[str, SectionEntry]:
        """Top-level spec key → the plug-in section declared under it."""
        return self._index().sections

    @property
    def conflicts(self) -> dict[tuple[str, str], list[PluginInfo]]:
        """(kind or ``spec_section``, name) → every plug-in that declares it, first one first."""
        return self._index().conflicts

    # -- lookup ----------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        return sorted(name for k, name in self.entries if k == kind)

    def providers(self, kind: str, name: str) -> list[Entry]:
        """Every plug-in's entry for ``name`` (two or more when it is a conflict)."""
        return list(self._index().providers.get((kind, name), []))

    def owners_of(self, cls: type) -> list[Entry]:
        """The entries whose target is ``cls`` (a class may be registered under several names)."""
        target = f"{cls.__module__}:{cls.__qualname__}"
        return [e for entries in self._index().providers.values() for e in entries if e.ref.target == target]

    def entry(self, kind: str, name: str, where: str | None = None) -> Entry:
        """The entry a spec's ``name`` means: ``bell``, or ``mdm-plugin-bell:bell`` to choose
        one provider of a name two plug-ins register."""
        dist, _, bare = name.rpartition(":")
        key = (kind, bare)
        if dist:
            return self._chosen(key, dist, where or f"{kind}.name")
        if key in self.conflicts:
            raise PluginError(_conflict_message(key, self.conflicts[key]))
        if key not in self.entries:
            raise SpecError(self._unknown_message(kind, name, where or f"{kind}.name"))
        return self.entries[key]

    def _chosen(self, key: tuple[str, str], dist: str, where: str) -> Entry:
        """The provider ``dist`` (a distribution or plug-in name) of ``key``, or a clear error."""
        entries = self.providers(*key)
        for e in entries:
            if normalise(dist) in {normalise(e.plugin.distribution), normalise(e.plugin.name)}:
                return e
        if not entries:
            raise SpecError(self._unknown_message(key[0], key[1], where))
        offered = ", ".join(f"{e.plugin.distribution}:{key[1]} ({e.plugin.label})" for e in entries)
        raise SpecError(
            f"{where}: '{dist}:{key[1]}': {dist} provides no {_label(key[0])} '{key[1]}'; "
            f"providers: {offered}"
        )

    def _unknown_message(self, kind: str, name: str, where: str) -> str:
        names = self.names(kind)
        msg = f"{where}: no {_label(kind)} called '{name}'"
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        if close:
            msg += "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
        installed = ", ".join(f"{n} ({self.entries[(kind, n)].plugin.label})" for n in names)
        msg += f"\n       installed: {installed or 'none'}"
        for p in self.plugins:
            if p.error:
                msg += f"\n       note: plug-in {p.label} failed to load ({p.error}); it may provide '{name}'"
        return msg

    def load(self, kind: str, name: str, where: str | None = None) -> type[Any]:
        """Import and return the class registered as ``name`` for ``kind``."""
        entry = self.entry(kind, name, where)
        base_module, _, base_name = BY_NAME[kind].base.partition(":")
        base = getattr(importlib.import_module(base_module), base_name)
        cls = _import(entry.ref.target, f"{_label(kind)} '{name}' from {entry.plugin.label}")
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"{entry.ref.target} from {entry.plugin.label} is registered as {_label(kind)} "
                f"'{name}' but is not a subclass of {base_module}.{base_name}"
            )
        return cls

    def section(self, name: str) -> SectionEntry:
        """The plug-in section declared as top-level spec key ``name`` (conflicts raise)."""
        key = (SECTION, name)
        if key in self.conflicts:
            raise PluginError(_conflict_message(key, self.conflicts[key]))
        return self.sections[name]

    def load_section(self, name: str) -> type[Any]:
        """Import the pydantic model of the plug-in section ``name``."""
        from pydantic import BaseModel

        entry = self.section(name)
        model = _import(entry.section.target, f"spec section '{name}' from {entry.plugin.label}")
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise PluginError(
                f"{entry.section.target} from {entry.plugin.label} is declared as spec section "
                f"'{name}' but is not a pydantic model (a subclass of pydantic.BaseModel)"
            )
        return model

    def provider(self, kind: str, name: str) -> PluginInfo:
        return self.entry(kind, name).plugin


def _import(target: str, what: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except Exception as exc:
        raise PluginError(f"{what} failed to import ({target}): {type(exc).__name__}: {exc}") from exc


def _conflict_message(key: tuple[str, str], owners: list[PluginInfo]) -> str:
    names = " and ".join(p.label for p in owners)
    message = f"{_label(key[0])} '{key[1]}' is registered by both {names}; "
    if key[0] == SECTION:
        return message + "uninstall one of them or disable it with MDM_DISABLE_PLUGINS"
    return message + (
        f'choose one in the spec as name: "{owners[0].distribution}:{key[1]}", '
        "or uninstall or disable (MDM_DISABLE_PLUGINS) one of them"
    )


#: The hooks a training run calls (:class:`RunHooks`).
LIFECYCLE_HOOKS = ("mdm_run_start", "mdm_step_end", "mdm_eval_end", "mdm_run_end")


class RunHooks:
    """One run's lifecycle hooks, each plug-in's implementation called on its own.

    A plug-in whose hook raises is reported once, on stderr, with its distribution and version,
    and none of its lifecycle hooks is called again in this run: after an exception its state is
    unknown, so its other hooks would act on half-made state. Training goes on; with
    ``MDM_STRICT_PLUGINS=1`` the run stops instead (exit 3). ``hooks.mdm_step_end(run=..., ...)``
    reads like pluggy's ``pm.hook.mdm_step_end(...)``.
    """

    def __init__(self, registry: Registry, rank: int = 0) -> None:
        self.registry = registry
        self.rank = rank
        #: Plug-in name → the error that disabled it.
        self.disabled: dict[str, str] = {}

    def __getattr__(self, hook: str) -> Callable[..., None]:
        if hook not in LIFECYCLE_HOOKS:
            raise AttributeError(hook)
        return lambda **kwargs: self.call(hook, **kwargs)

    def call(self, hook: str, **kwargs: Any) -> None:
        caller = getattr(self.registry.pm.hook, hook)
        for name, _, error in self.registry.call_each(caller, skip=self.disabled, **kwargs):
            if error is not None:
                self._disable(name, error)

    def _disable(self, name: str, error: str) -> None:
        label = self.registry.info(name).label
        if strict():
            raise PluginError(f"plug-in {label}: {error} (MDM_STRICT_PLUGINS=1 stops the run)")
        self.disabled[name] = error
        rank = f"rank {self.rank}: " if self.rank else ""
        print(
            f"warning: {rank}plug-in {label}: {error}; its lifecycle hooks are disabled for the rest "
            "of this run (MDM_STRICT_PLUGINS=1 stops the run instead)",
            file=sys.stderr,
        )


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry (discovered once; re-indexed when plug-ins are registered)."""
    return Registry().discover()


def reset_registry() -> None:
    """Forget the cached registry (tests that install or disable plug-ins call this)."""
    get_registry.cache_clear()
