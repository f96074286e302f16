"""``mdm new-plugin``: write a plug-in distribution that installs, registers and passes its tests.

The files come from ``mdm_core/templates`` (``string.Template``, ``$placeholder``). Each kind's
component works as written, so the author starts from green tests and edits from there.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from mdm_core.errors import MdmError
from mdm_core.plugins import KIND_LABELS, get_registry

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class _KindTemplate:
    """How the scaffold writes and tests one kind."""

    suffix: str  # class-name suffix
    check: str  # the conformance-kit entry point
    make: str  # factory passed to the check, with {cls} for the class


KINDS: dict[str, _KindTemplate] = {
    "time_sampler": _KindTemplate("TimeSampler", "check_time_sampler", "lambda: {cls}()"),
    "forward_process": _KindTemplate("ForwardProcess", "check_forward_process", "lambda: {cls}()"),
    "loss": _KindTemplate("Loss", "check_loss", "lambda: {cls}()"),
    "backbone": _KindTemplate(
        "Backbone", "check_backbone", "lambda vocab, max_len: {cls}(None, vocab, max_len)"
    ),
    "sampler": _KindTemplate("Sampler", "check_sampler", "lambda: {cls}()"),
    "data": _KindTemplate("DataSource", "check_data_source", "lambda: {cls}()"),
}
SUPPORTED_KINDS = tuple(KINDS)
PREFIX = "mdm-plugin-"


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


def _check_kind(kind: str, ident: str) -> None:
    if kind == "evaluator":
        raise MdmError(
            "new-plugin: --kind evaluator cannot be scaffolded (the conformance kit has no evaluator "
            f"check to start from); choose one of {', '.join(SUPPORTED_KINDS)}, or subclass "
            "mdm_core.interfaces.Evaluator by hand (docs/writing-a-plugin.md)",
            exit_code=2,
        )
    if kind not in KINDS:
        raise MdmError(
            f"new-plugin: unknown --kind '{kind}'; choose one of {', '.join(SUPPORTED_KINDS)}", exit_code=2
        )
    registry = get_registry()
    if ident in registry.names(kind):
        owner = registry.provider(kind, ident).label
        raise MdmError(
            f"new-plugin: a {KIND_LABELS[kind]} called '{ident}' is already registered by {owner}; "
            "two distributions may not register the same name, so choose another",
            exit_code=2,
        )


def new_plugin(name: str, kind: str, dest: Path) -> Path:
    """Create ``dest/mdm-plugin-<name>`` with a working ``kind`` component named ``<name>``.

    ``name`` may be given with or without the ``mdm-plugin-`` prefix. Returns the new folder.
    """
    name = name.removeprefix(PREFIX)
    ident = _check_name(name)
    _check_kind(kind, ident)
    root = Path(dest) / f"{PREFIX}{name}"
    if root.exists():
        raise MdmError(f"new-plugin: {root} already exists; choose another name or --dest", exit_code=2)
    spec = KINDS[kind]
    cls = "".join(part.capitalize() for part in ident.split("_")) + spec.suffix
    values = {
        "dist": f"{PREFIX}{name}",
        "package": f"mdm_plugin_{ident}",
        "ident": ident,
        "kind": kind,
        "kind_label": KIND_LABELS[kind],
        "cls": cls,
        "check": spec.check,
        "make": spec.make.format(cls=cls),
        "summary": f"A {KIND_LABELS[kind]} from {PREFIX}{name}",
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
