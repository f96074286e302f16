"""``mdm new-plugin``: write a plug-in distribution that installs, registers and passes its tests.

The files come from ``mdm_core/templates`` (``string.Template``, ``$placeholder``), one component
template per kind of ``mdm_core.kinds``. Each kind's component works as written against the v2
contracts, so the author starts from green tests and edits from there.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from mdm_core.errors import MdmError
from mdm_core.kinds import KIND_TABLE, Kind, resolve_kind
from mdm_core.plugins import CORE_DISTRIBUTION, get_registry

TEMPLATES = Path(__file__).parent / "templates"
PREFIX = "mdm-plugin-"
#: What a new plug-in's pyproject requires of the core (the one place this range is written).
CORE_REQUIREMENT = f"{CORE_DISTRIBUTION}>=0.2,<0.3"
#: Every kind with a component template.
SUPPORTED_KINDS = tuple(k.name for k in KIND_TABLE if (TEMPLATES / f"component_{k.name}.py.tmpl").is_file())
#: Kinds built with their run's shape, ``cls(params, shape)``: the kit hands ``make`` the shape.
#: The backbone template keeps no KV cache, so its check skips that law.
_CHECK_ARGS = {
    "forward_process": "lambda shape: {cls}(None, shape)",
    "backbone": "lambda shape: {cls}(None, shape), kv_cache=False",
}


def _class_suffix(kind: Kind) -> str:
    """``TimeSampler`` for time samplers: the name of the kind's interface class."""
    return kind.base.partition(":")[2]


def _check_function(kind: Kind) -> str:
    """``check_time_sampler``: the conformance-kit entry point of the kind's interface."""
    return "check_" + re.sub(r"(?<!^)(?=[A-Z])", "_", _class_suffix(kind)).lower()


def _check_name(name: str) -> str:
    """The Python identifier for ``name`` (``cosine-t`` → ``cosine_t``), or a clear error."""
    ident = name.replace("-", "_")
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name) or keyword.iskeyword(ident):
        raise MdmError(
            f"new-plugin: '{name}' cannot name a plug-in; use lower-case letters and digits, words "
            "joined by single '-', starting with a letter and not a Python keyword (e.g. cosine-t)",
            exit_code=2,
        )
    return ident


def _check_kind(text: str, ident: str) -> Kind:
    """The kind ``--kind`` means (``time-sampler``, ``samplers`` … as ``mdm components`` takes)."""
    kind = resolve_kind(text)
    if kind is None or kind.name not in SUPPORTED_KINDS:
        raise MdmError(
            f"new-plugin: unknown --kind '{text}'; choose one of {', '.join(SUPPORTED_KINDS)}", exit_code=2
        )
    registry = get_registry()
    if ident in registry.names(kind.name):
        owner = registry.provider(kind.name, ident).label
        raise MdmError(
            f"new-plugin: a {kind.label} called '{ident}' is already registered by {owner}; "
            "two distributions may not register the same name, so choose another",
            exit_code=2,
        )
    return kind


def new_plugin(name: str, kind: str, dest: Path) -> Path:
    """Create ``dest/mdm-plugin-<name>`` with a working ``kind`` component named ``<name>``.

    ``name`` may be given with or without the ``mdm-plugin-`` prefix. Returns the new folder.
    """
    name = name.removeprefix(PREFIX)
    ident = _check_name(name)
    spec = _check_kind(kind, ident)
    kind = spec.name
    root = Path(dest) / f"{PREFIX}{name}"
    if root.exists():
        raise MdmError(f"new-plugin: {root} already exists; choose another name or --dest", exit_code=2)
    cls = "".join(part.capitalize() for part in ident.split("_")) + _class_suffix(spec)
    choice = f"{{name: {ident}}}"
    values = {
        "dist": f"{PREFIX}{name}",
        "package": f"mdm_plugin_{ident}",
        "ident": ident,
        "kind": kind,
        "kind_label": spec.label,
        "spec_line": f"{spec.section}: [{choice}]" if spec.is_list else f"{spec.section}: {choice}",
        "core_requirement": CORE_REQUIREMENT,
        "core_distribution": CORE_DISTRIBUTION,
        "cls": cls,
        "check": _check_function(spec),
        "make": _CHECK_ARGS.get(kind, "lambda: {cls}()").format(cls=cls),
        "summary": f"A {spec.label} from {PREFIX}{name}",
    }
    files = {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        f"src/{values['package']}/__init__.py": "__init__.py.tmpl",
        f"src/{values['package']}/component.py": f"component_{kind}.py.tmpl",
        f"tests/test_{ident}.py": "test_component.py.tmpl",
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template((TEMPLATES / template).read_text()).substitute(values))
    return root
