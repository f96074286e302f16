"""Run specs: OmegaConf for composition, pydantic for validation.

Loading goes: YAML file → ``base:`` chain merged (the file's own keys win) → dotlist overrides →
``${...}`` interpolation resolved → phase 1, the run-level schema (``RunSpec``) → phase 2, each
component's ``Params`` looked up by ``name`` in the plug-in registry, and each plug-in section
(a top-level key a plug-in declares through ``mdm_spec_sections``) by its model → phase 3, the
composition check (pairs of components that cannot work together). Every error names the dotted
key, the file (or "override") it came from, the bad value and, where possible, a "did you mean"
suggestion; it is raised as ``SpecError`` (exit code 2).

Specs name registered components, never import paths: a YAML file cannot run arbitrary code.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mdm_core.errors import SpecError
from mdm_core.kinds import KIND_LABELS, KIND_TABLE, SINGLE_SECTIONS
from mdm_core.plugins import Registry, get_registry

#: Spec sections that hold a list of components (``evaluators``) → their kind.
LIST_SECTIONS: dict[str, str] = {k.section: k.name for k in KIND_TABLE if k.is_list}


#: Components a spec may leave out: the MDLM baseline.
DEFAULT_COMPONENTS: dict[str, Any] = {
    "forward_process": {"name": "absorbing"},
    "time_sampler": {"name": "uniform"},
    "loss": {"name": "mdlm"},
    "sampler": {"name": "ancestral"},
    "evaluators": [{"name": "nll"}],
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentChoice(BaseModel):
    """``{name: ..., <params>}``; the params are validated in phase 2 by the component."""

    model_config = ConfigDict(extra="allow")
    name: str


class TrainerSpec(_Strict):
    max_steps: int = Field(1000, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch (all ranks, all micro-steps)")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup: int = Field(100, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    ema: float = Field(0.0, ge=0, lt=1, description="EMA decay; 0 disables EMA")
    seed: int = 0
    ckpt_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    num_samples: int = Field(3, ge=0, description="samples printed at the end of training")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")


class RunSpec(_Strict):
    """The run-level schema; its component fields are the sections of ``mdm_core.kinds`` (a test
    keeps the two equal). Plug-in sections are validated beside it, not in it."""

    name: str = "run"
    description: str = ""
    requires: list[str] = []
    out_dir: str = "runs"
    data: ComponentChoice
    backbone: ComponentChoice
    forward_process: ComponentChoice = ComponentChoice(name="absorbing")
    time_sampler: ComponentChoice = ComponentChoice(name="uniform")
    loss: ComponentChoice = ComponentChoice(name="mdlm")
    sampler: ComponentChoice = ComponentChoice(name="ancestral")
    evaluators: list[ComponentChoice] = [ComponentChoice(name="nll")]
    trainer: TrainerSpec = TrainerSpec()


@dataclass
class Component:
    """A validated component choice: the class, its parameters, and where it came from."""

    kind: str
    name: str
    cls: type[Any]
    params: Any
    where: str

    def build(self, *args: Any) -> Any:
        return self.cls(self.params, *args)


@dataclass
class ResolvedSpec:
    """A fully validated run spec, ready to build."""

    run: RunSpec
    components: dict[str, Component]
    evaluators: list[Component]
    resolved: dict[str, Any]
    source: str
    raw_text: str
    overrides: list[str] = field(default_factory=list)
    #: Plug-in sections the spec writes, validated: top-level key → an instance of its model.
    sections: dict[str, BaseModel] = field(default_factory=dict)

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(self.resolved))


# -- loading -----------------------------------------------------------------------------------


def _read(path: Path, chain: list[Path]) -> DictConfig:
    if path in chain:
        raise SpecError(f"{chain[-1]}: base: circular reference to {path}")
    if not path.is_file():
        where = f"{chain[-1]}: base" if chain else "spec"
        raise SpecError(f"{where}: file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError shares no base class with OmegaConf's errors
        raise SpecError(f"{path}: not a valid YAML spec: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, DictConfig):
        raise SpecError(f"{path}: a spec must be a mapping of keys to values")
    base = cfg.pop("base", None)
    if base is None:
        return cfg
    base_path = _find_base(str(base), path)
    return _merge(_read(base_path, [*chain, path]), cfg)


def _merge(base: DictConfig, child: DictConfig) -> DictConfig:
    """Deep merge, except that a component section naming another component replaces the base's
    section: swapping a component must not inherit the old component's parameters."""
    merged = OmegaConf.merge(base, child)
    assert isinstance(merged, DictConfig)
    for section in SINGLE_SECTIONS:
        new, old = child.get(section), base.get(section)
        if (
            isinstance(new, DictConfig)
            and isinstance(old, DictConfig)
            and new.get("name", old.get("name")) != old.get("name")
        ):
            merged[section] = new
    return merged


def _find_base(base: str, spec_path: Path) -> Path:
    """``base:`` is relative to the working directory, else to the spec file's folder or one of
    its ancestors (so ``base: specs/quickstart.yaml`` works from any directory), first match wins."""
    candidate = Path(base)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    for folder in [spec_path.parent, *spec_path.resolve().parent.parents]:
        if (folder / candidate).is_file():
            return folder / candidate
    return spec_path.parent / candidate


def _key_sources(path: Path) -> dict[str, str]:
    """Dotted key → the file in the base chain that last sets it (for error messages)."""
    sources: dict[str, str] = {}
    chain: list[Path] = []
    current: Path | None = path
    while current is not None and current.is_file() and current not in chain:
        chain.append(current)
        try:
            cfg = OmegaConf.load(current)
        except Exception:
            break
        base = cfg.get("base") if isinstance(cfg, DictConfig) else None
        current = _find_base(str(base), current) if base else None
    for file in reversed(chain):
        cfg = OmegaConf.load(file)
        for key in _dotted_keys(OmegaConf.to_container(cfg, resolve=False)):
            sources[key] = str(file)
    return sources


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, dict):
        for k, v in node.items():
            dotted = f"{prefix}{k}"
            keys.append(dotted)
            keys.extend(_dotted_keys(v, dotted + "."))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            dotted = f"{prefix[:-1]}[{i}]" if prefix else f"[{i}]"
            keys.append(dotted)
            keys.extend(_dotted_keys(v, dotted + "."))
    return keys


def load_spec(
    path: str | Path, overrides: list[str] | None = None, registry: Registry | None = None
) -> ResolvedSpec:
    """Load, compose, override, resolve and validate a spec file."""
    path = Path(path)
    overrides = list(overrides or [])
    cfg = _merge(OmegaConf.create(DEFAULT_COMPONENTS), _read(path, []))
    for item in overrides:
        if "=" not in item:
            raise SpecError(
                f"{path} (override): '{item}' is not key=value; write e.g. trainer.max_steps=2000"
            )
    for item in overrides:
        key, _, text = item.partition("=")
        try:
            value = OmegaConf.from_dotlist([f"value={text}"])["value"]
            section, _, field = key.partition(".")
            if field == "name" and section in SINGLE_SECTIONS and OmegaConf.select(cfg, key) != value:
                cfg[section] = {"name": value}  # swapping a component drops its old params
            else:
                # A mapping replaces the whole section, so a component comes with its params.
                OmegaConf.update(cfg, key, value, merge=not isinstance(value, DictConfig))
        except (OmegaConfBaseException, TypeError, ValueError, IndexError) as exc:
            raise SpecError(f"{path} (override): {item}: {str(exc).splitlines()[0]}") from None
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise SpecError(f"{path}: {str(exc).splitlines()[0]}") from None
    assert isinstance(container, dict)
    resolved = {str(k): v for k, v in container.items()}
    origin = _Origin(path, overrides)
    registry = registry or get_registry()
    core_keys = set(RunSpec.model_fields)
    plugin_keys = [k for k in resolved if k not in core_keys and k in registry.sections]
    run = _validate_run({k: v for k, v in resolved.items() if k not in plugin_keys}, origin, registry)
    components = {
        section: _validate_component(kind, getattr(run, section), section, registry, origin)
        for section, kind in SINGLE_SECTIONS.items()
    }
    evaluators = [
        _validate_component(kind, choice, f"{section}[{i}]", registry, origin)
        for section, kind in LIST_SECTIONS.items()
        for i, choice in enumerate(getattr(run, section))
    ]
    sections = {key: _validate_section(key, resolved[key], registry, origin) for key in plugin_keys}
    _check_requires(run.requires, origin)
    from mdm_core.composition import check_composition  # lazily: composition imports this module

    check_composition(components, source=str(path))
    return ResolvedSpec(
        run=run,
        components=components,
        evaluators=evaluators,
        resolved=resolved,
        source=str(path),
        raw_text=path.read_text(),
        overrides=overrides,
        sections=sections,
    )


@dataclass
class _Origin:
    path: Path
    overrides: list[str]

    def of(self, dotted: str) -> str:
        for item in self.overrides:
            key = item.split("=", 1)[0].lstrip("+~")
            if dotted == key or dotted.startswith(key + ".") or key.startswith(dotted + "."):
                return f"{self.path} (override)"
        source = _key_sources(self.path).get(dotted)
        if source is None and "." in dotted:
            source = _key_sources(self.path).get(dotted.rsplit(".", 1)[0])
        return source or str(self.path)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=2, cutoff=0.6)
    return (" did you mean " + " or ".join(f"'{c}'" for c in close) + "?") if close else ""


def _fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _validate_run(resolved: dict[str, Any], origin: _Origin, registry: Registry) -> RunSpec:
    try:
        return RunSpec.model_validate(resolved)
    except ValidationError as exc:
        err = exc.errors()[0]
        dotted = _loc(err["loc"])
        where = origin.of(dotted)
        if err["type"] == "extra_forbidden":
            parent, _, key = dotted.rpartition(".")
            keys = (
                _fields(TrainerSpec) if parent == "trainer" else _fields(RunSpec) + sorted(registry.sections)
            )
            msg = f"{where}: {dotted}: unknown key;{_suggest(key, keys)}"
            msg += f"\n       keys of {parent or 'a spec'}: {', '.join(keys)}"
        elif err["type"] == "missing":
            msg = f"{where}: {dotted}: required but missing"
        else:
            msg = f"{where}: {dotted}: {err['msg']} (got {err.get('input')!r})"
        raise SpecError(msg) from None


def _validate_component(
    kind: str, choice: ComponentChoice, section: str, registry: Registry, origin: _Origin
) -> Component:
    where = origin.of(f"{section}.name")
    try:
        cls = registry.load(kind, choice.name, where=f"{section}.name")
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    params_in = dict(choice.model_extra or {})
    try:
        params = cls.Params.model_validate(params_in)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _loc(err["loc"])
        dotted = f"{section}.{key}" if key else section
        where = origin.of(dotted)
        names = _fields(cls.Params)
        if err["type"] == "extra_forbidden":
            head = key.split(".")[-1]
            msg = f"{where}: {dotted}: unknown parameter of '{choice.name}';{_suggest(head, names)}"
            msg += f"\n       parameters of {choice.name}: {', '.join(names) or '(none)'}"
        else:
            msg = f"{where}: {dotted}: {err['msg']} (got {err.get('input')!r})"
        plugin = registry.provider(kind, choice.name)
        msg += f"\n       ({KIND_LABELS[kind]} '{choice.name}' from {plugin.label})"
        raise SpecError(msg) from None
    return Component(kind, choice.name, cls, params, section)


def _validate_section(key: str, value: Any, registry: Registry, origin: _Origin) -> BaseModel:
    """A plug-in section, validated by the model the plug-in declared for it."""
    entry = registry.section(key)
    model = registry.load_section(key)
    try:
        return model.model_validate({} if value is None else value)
    except ValidationError as exc:
        err = exc.errors()[0]
        inner = _loc(err["loc"])
        dotted = f"{key}.{inner}" if inner else key
        where = origin.of(dotted)
        names = _fields(model)
        if err["type"] == "extra_forbidden":
            head = inner.split(".")[-1]
            msg = f"{where}: {dotted}: unknown key;{_suggest(head, names)}"
            msg += f"\n       keys of {key}: {', '.join(names) or '(none)'}"
        elif err["type"] == "missing":
            msg = f"{where}: {dotted}: required but missing"
        else:
            msg = f"{where}: {dotted}: {err['msg']} (got {err.get('input')!r})"
        msg += f"\n       (spec section '{key}' from {entry.plugin.label})"
        raise SpecError(msg) from None


def _check_requires(requires: list[str], origin: _Origin) -> None:
    """``requires: ["mdm-plugin-bell>=0.1"]``: fail early, naming what is missing."""
    if not requires:
        return
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement

    for item in requires:
        try:
            req = Requirement(item)
        except InvalidRequirement as exc:
            raise SpecError(
                f"{origin.of('requires')}: requires: '{item}' is not a requirement: {exc}"
            ) from None
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            raise SpecError(
                f"{origin.of('requires')}: requires {item}, which is not installed; pip install '{item}'"
            ) from None
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            raise SpecError(f"{origin.of('requires')}: requires {item} but {req.name} {version} is installed")
