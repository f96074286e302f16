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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mdm_core.errors import SpecError
from mdm_core.kinds import KIND_LABELS, KIND_TABLE, SINGLE_SECTIONS
from mdm_core.plugins import Registry, get_registry
from mdm_core.shipped_specs import resolve_spec, shipped_spec

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
    # NaN and ±inf are never a meaningful run setting (``lr=inf`` would train on garbage).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


#: Seeds are 0 ≤ seed < 2^32, as in Lightning's ``seed_everything``: every generator a run derives
#: from its seed (per-rank seeds are ``seed * 1000 + rank``) stays inside torch's range.
MAX_SEED = 2**32
#: A momentum coefficient of Adam: 0 ≤ beta < 1 (beta = 1 never forgets, > 1 diverges).
Beta = Annotated[float, Field(ge=0, lt=1)]


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
    betas: tuple[Beta, Beta] = (0.9, 0.98)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    ema: float = Field(0.0, ge=0, lt=1, description="EMA decay; 0 disables EMA")
    seed: int = Field(0, ge=0, lt=MAX_SEED, description="0 ≤ seed < 2^32")
    ckpt_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    num_samples: int = Field(3, ge=0, description="samples printed at the end of training")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
    dist_timeout_s: float = Field(
        600.0, gt=0, le=86400, description="torchrun: seconds a collective waits for a stopped rank"
    )


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

    @field_validator("name")
    @classmethod
    def _name_stays_in_out_dir(cls, name: str) -> str:
        """The run directory is ``out_dir/<name>-<time>``: a name is one plain folder name, so a
        run can never write outside ``out_dir`` (``../../x``, ``/etc/x``)."""
        bad = [c for c in name if c in "/\\\0" or not c.isprintable()]
        if not name.strip() or name in (".", "..") or bad:
            raise ValueError(
                "a run name is one folder name (not empty, no '/', '\\\\', '..' or control "
                "characters); put the folder in out_dir instead, e.g. out_dir=runs/exp1"
            )
        return name


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


def _yaml_problem(exc: Exception, value: str | None = None) -> str:
    """A YAML error as ``line L, column C: problem (context)`` (PyYAML counts from 0); for an
    override's ``value``, the position inside the value."""
    if not (isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    mark = exc.problem_mark
    problem = f"{exc.problem}" + (f" ({exc.context})" if exc.context else "")
    if value is None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    lines = value.splitlines() or [""]
    if mark.line >= len(lines):
        return f"{problem} at the end of the value (a bracket or quote is not closed?)"
    if len(lines) == 1:
        return f"{problem} at column {mark.column + 1} of the value"
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1} of the value"


def _read(path: Path, chain: list[Path]) -> DictConfig:
    where = f"{chain[-1]}: base" if chain else "spec"
    if path in chain:
        raise SpecError(f"{chain[-1]}: base: circular reference to {path}")
    if path.is_dir():
        raise SpecError(f"{where}: {path} is a folder; name a YAML file, e.g. specs/quickstart.yaml")
    if not path.is_file():
        raise SpecError(f"{where}: file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not a valid YAML spec: {_yaml_problem(exc)}") from None
    except (OmegaConfBaseException, ValueError, TypeError) as exc:  # e.g. a mapping key that is a list
        raise SpecError(f"{path}: not a valid spec: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, DictConfig):
        raise SpecError(f"{path}: a spec must be a mapping of keys to values, e.g. 'data: {{name: markov}}'")
    if not cfg and not chain:
        raise SpecError(
            f"{path}: the spec is empty; start from specs/quickstart.yaml or write 'base: <spec>'"
        )
    base = cfg.pop("base", None)
    if base is None:
        return cfg
    base_path = _find_base(str(base), path)
    return _merge_onto(_read(base_path, [*chain, path]), cfg, path, f"the one in {base_path}")


def _merge_onto(base: DictConfig, child: DictConfig, path: Path, base_name: str) -> DictConfig:
    """``_merge``, with a section whose type differs (a mapping against a list) as a SpecError."""
    try:
        return _merge(base, child)
    except (OmegaConfBaseException, TypeError, ValueError) as exc:
        key = _type_clash(base, child) or "a section"
        raise SpecError(
            f"{path}: {key}: cannot be merged onto {base_name} ({str(exc).splitlines()[0]}); "
            "a section keeps its type (a mapping stays a mapping, a list a list)"
        ) from None


def _type_clash(base: Any, child: Any, prefix: str = "") -> str | None:
    """The first dotted key that is a mapping on one side and a list on the other."""
    if not (isinstance(base, DictConfig) and isinstance(child, DictConfig)):
        return None
    for item in child:
        key = str(item)
        old, new = base.get(key), child.get(key)
        if (
            isinstance(old, DictConfig) != isinstance(new, DictConfig)
            and isinstance(old, DictConfig | ListConfig)
            and isinstance(new, DictConfig | ListConfig)
        ):
            return f"{prefix}{key}"
        found = _type_clash(old, new, f"{prefix}{key}.")
        if found:
            return found
    return None


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
    its ancestors, else a shipped spec (``base: quickstart`` or ``base: specs/quickstart.yaml``
    work from any directory, with or without the repository); first match wins."""
    candidate = Path(base)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    for folder in [spec_path.parent, *spec_path.resolve().parent.parents]:
        if (folder / candidate).is_file():
            return folder / candidate
    return shipped_spec(base) or spec_path.parent / candidate


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
    """Load, compose, override, resolve and validate a spec file (or a shipped spec by name)."""
    path = resolve_spec(path)
    overrides = list(overrides or [])
    cfg = _merge_onto(OmegaConf.create(DEFAULT_COMPONENTS), _read(path, []), path, "the default component")
    for item in overrides:
        if "=" not in item:
            raise SpecError(
                f"{path} (override): '{item}' is not key=value; write e.g. trainer.max_steps=2000"
            )
    for item in overrides:
        _apply_override(cfg, path, item)
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
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


def _apply_override(cfg: DictConfig, path: Path, item: str) -> None:
    """``key=value`` with a YAML value; ``+key=value`` (Hydra's spelling of a new key) is accepted."""
    key, _, text = item.partition("=")
    key = key.strip().removeprefix("+")
    where = f"{path} (override) {item!r}"
    if not key:
        raise SpecError(f"{where}: the key is empty; write key=value, e.g. trainer.lr=1e-3")
    try:
        value = OmegaConf.from_dotlist([f"value={text}"])["value"]
    except yaml.YAMLError as exc:
        raise SpecError(
            f"{where}: the value is not valid YAML: {_yaml_problem(exc, text)}; "
            f"quote a value meant as text, e.g. {key}='{text}'"
        ) from None
    except (OmegaConfBaseException, ValueError, TypeError) as exc:
        raise SpecError(f"{where}: {str(exc).splitlines()[0]}") from None
    try:
        current = OmegaConf.select(cfg, key, default=None)
        if isinstance(current, DictConfig) and isinstance(value, ListConfig):
            raise SpecError(
                f"{where}: {key} is a mapping of keys to values, not a list; set one of its keys "
                f"({key}.<key>=<value>) or give a whole mapping ({key}={{<key>: <value>}})"
            )
        section, _, name = key.partition(".")
        if name == "name" and section in SINGLE_SECTIONS and current != value:
            cfg[section] = {"name": value}  # swapping a component drops its old params
        else:
            # A mapping replaces the whole section, so a component comes with its params.
            OmegaConf.update(cfg, key, value, merge=not isinstance(value, DictConfig))
    except (OmegaConfBaseException, TypeError, ValueError, IndexError, KeyError) as exc:
        raise SpecError(f"{where}: {str(exc).splitlines()[0]}") from None


@dataclass
class _Origin:
    path: Path
    overrides: list[str]

    def of(self, dotted: str) -> str:
        for item in self.overrides:
            key = item.split("=", 1)[0].lstrip("+~")
            if dotted == key or dotted.startswith((key + ".", key + "[")) or key.startswith(dotted + "."):
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


def _problem(err: Any) -> str:
    """A pydantic error in the words of a spec: what the value should be, and what it was."""
    kind, msg = err["type"], err["msg"].removeprefix("Value error, ")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        if err.get("ctx", {}).get("class_name") == "ComponentChoice":
            msg = "should be a component: a mapping with a name, e.g. {name: absorbing}"
        else:
            msg = "should be a mapping of keys to values, e.g. {key: value}"
    elif kind in ("list_type", "tuple_type"):
        msg = "should be a list, e.g. [a, b] (or one '- item' per line)"
    elif kind == "finite_number":
        msg = "should be a finite number (NaN and infinity are not settings)"
    got = repr(err.get("input"))
    return f"{msg} (got {got if len(got) <= 80 else got[:77] + '...'})"


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
            msg = f"{where}: {dotted}: {_problem(err)}"
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
            msg = f"{where}: {dotted}: {_problem(err)}"
        plugin = registry.provider(kind, choice.name)
        msg += f"\n       ({KIND_LABELS[kind]} '{choice.name}' from {plugin.label})"
        raise SpecError(msg) from None
    _refuse_non_finite(params, section, origin, f"{KIND_LABELS[kind]} '{choice.name}'")
    return Component(kind, choice.name, cls, params, section)


def _non_finite(value: Any, dotted: str) -> tuple[str, float] | None:
    """The first NaN/±inf float inside validated parameters, with its dotted key."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (dotted, value)
    if isinstance(value, BaseModel):
        value = dict(value)
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list | tuple)
        else ()
    )
    for key, item in items:
        found = _non_finite(item, f"{dotted}[{key}]" if isinstance(key, int) else f"{dotted}.{key}")
        if found:
            return found
    return None


def _refuse_non_finite(params: BaseModel, section: str, origin: _Origin, what: str) -> None:
    """Plug-ins' parameter models may allow NaN/inf; a spec never means them (a time sampler with
    ``eps: nan`` trains on nothing), so the core refuses them for every component and section."""
    found = _non_finite(params, section)
    if found:
        dotted, value = found
        raise SpecError(
            f"{origin.of(dotted)}: {dotted}: should be a finite number (got {value}); "
            f"NaN and infinity are not settings of {what}"
        )


def _validate_section(key: str, value: Any, registry: Registry, origin: _Origin) -> BaseModel:
    """A plug-in section, validated by the model the plug-in declared for it."""
    entry = registry.section(key)
    model = registry.load_section(key)
    try:
        validated = model.model_validate({} if value is None else value)
        _refuse_non_finite(validated, key, origin, f"spec section '{key}'")
        return validated
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
            msg = f"{where}: {dotted}: {_problem(err)}"
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


# -- can this machine run it? ------------------------------------------------------------------

#: More torch threads than this many per CPU core only slow a run down.
THREADS_PER_CPU = 4
#: Sampler ``steps`` above this are refused: each step is a forward pass over every sample.
MAX_SAMPLER_STEPS = 1_000_000
_GIB = 2**30


def _host_memory() -> int:
    """Physical memory, or the container's limit (cgroup v2 or v1) when that is smaller.

    Total rather than currently free memory: a spec that validates here today validates tomorrow;
    the check is for runs that can never fit, not for a busy machine."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _data_shape(data: dict[str, Any]) -> tuple[int | None, int]:
    """(sequence length, a lower bound of the vocabulary + PAD and MASK) from the data section's
    usual keys; a character vocabulary is known only after reading the text, so it counts as 2."""
    seq_len = data.get("seq_len")
    found = data.get("tokenizer")
    tokenizer: dict[str, Any] = found if isinstance(found, dict) else {}
    vocab = 2
    if _is_int(data.get("vocab_size")):
        vocab = data["vocab_size"]
    elif tokenizer.get("name") == "byte":
        vocab = 256
    elif tokenizer.get("name") == "bpe":
        vocab = tokenizer["vocab_size"] if _is_int(tokenizer.get("vocab_size")) else 256
    return (seq_len if _is_int(seq_len) else None), max(vocab, 2) + 2


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _memory_needs(spec: ResolvedSpec) -> list[tuple[str, int, str]]:
    """(spec key, bytes at least, what) for the largest tensors a run is sure to allocate."""
    t = spec.run.trainer
    data = spec.resolved.get("data") or {}
    seq_len, vocab = _data_shape(data)
    needs: list[tuple[str, int, str]] = []
    if seq_len is not None:
        world = max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
        micro = -(-t.batch_size // (world * t.grad_accum))
        row = seq_len * vocab * 4  # float32 logits of one sequence
        needs.append(
            (
                "trainer.batch_size",
                2 * micro * row,
                f"logits and their gradient: 2 x {micro} x {seq_len} x {vocab} x 4 bytes",
            )
        )
        needs.append(
            (
                "trainer.eval_batch_size",
                t.eval_batch_size * row,
                f"evaluation logits: {t.eval_batch_size} x {seq_len} x {vocab} x 4 bytes",
            )
        )
        needs.append(
            (
                "trainer.num_samples",
                t.num_samples * row,
                f"sampling logits: {t.num_samples} x {seq_len} x {vocab} x 4 bytes",
            )
        )
        rows = sum(v for k in ("num_train", "num_val") if isinstance(v := data.get(k), int))
        needs.append(("data.num_train", rows * seq_len * 8, f"the corpus: {rows} x {seq_len} x 8 bytes"))
    return needs


def check_runnable(spec: ResolvedSpec) -> None:
    """Refuse (exit 2), before any data is read, a run this machine can never start: a CUDA device
    that is not there, absurd thread counts, sampler steps, or tensors larger than its memory.

    Separate from ``load_spec`` because a finished run is still loaded on other machines (a run
    trained on a GPU is evaluated on a laptop); ``mdm train`` and ``mdm spec validate`` call it."""
    import torch

    t = spec.run.trainer
    origin = _Origin(Path(spec.source), spec.overrides)
    if t.device == "cuda" and not torch.cuda.is_available():
        raise SpecError(
            f"{origin.of('trainer.device')}: trainer.device: cuda, but this machine has no usable "
            "CUDA device (torch.cuda.is_available() is False); use trainer.device=auto or cpu"
        )
    cpus = os.cpu_count() or 1
    if t.threads is not None and t.threads > THREADS_PER_CPU * cpus:
        raise SpecError(
            f"{origin.of('trainer.threads')}: trainer.threads: {t.threads} threads on {cpus} CPU cores "
            f"(at most {THREADS_PER_CPU * cpus}); use about one per core, e.g. trainer.threads={cpus}"
        )
    steps = getattr(spec.components["sampler"].params, "steps", None)
    if isinstance(steps, int) and steps > MAX_SAMPLER_STEPS:
        raise SpecError(
            f"{origin.of('sampler.steps')}: sampler.steps: {steps} steps is more than "
            f"{MAX_SAMPLER_STEPS:,} forward passes per sample; use at most a few times data.seq_len"
        )
    on_gpu = t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available())
    if on_gpu:
        budget, memory = torch.cuda.get_device_properties(0).total_memory, "GPU memory"
    else:
        budget, memory = _host_memory(), "memory"
    for key, need, what in _memory_needs(spec):
        if need > budget:
            # Blame the file or override that set the size, or else the one that set seq_len.
            sources = [origin.of(key), origin.of("data.seq_len")]
            where = next((s for s in sources if s.endswith("(override)")), sources[0])
            raise SpecError(
                f"{where}: {key}: this run needs at least {need / _GIB:,.1f} GiB for {what}, "
                f"more than the {budget / _GIB:,.1f} GiB of {memory} here; lower {key} or data.seq_len"
            )
