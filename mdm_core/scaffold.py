"""``mdm new-plugin``: write a plug-in distribution that installs, registers and passes its tests."""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from mdm_core.errors import MdmError
from mdm_core.plugins import KIND_LABELS

TEMPLATES = Path(__file__).parent / "templates"
SUPPORTED_KINDS = ("time_sampler", "loss", "forward_process")


def new_plugin(name: str, kind: str, dest: Path) -> Path:
    """Create ``dest/mdm-plugin-<name>`` with a working ``kind`` component named ``<name>``."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name) or name.endswith("-"):
        raise MdmError(
            f"new-plugin: '{name}' is not a plug-in name; use lower-case letters, digits and '-', "
            "starting with a letter (e.g. cosine-t)",
            exit_code=2,
        )
    if kind not in SUPPORTED_KINDS:
        raise MdmError(
            f"new-plugin: --kind {kind} cannot be scaffolded; choose one of {', '.join(SUPPORTED_KINDS)}",
            exit_code=2,
        )
    ident = name.replace("-", "_")
    root = Path(dest) / f"mdm-plugin-{name}"
    if root.exists():
        raise MdmError(f"new-plugin: {root} already exists; choose another name or --dest", exit_code=2)
    values = {
        "dist": f"mdm-plugin-{name}",
        "package": f"mdm_plugin_{ident}",
        "ident": ident,
        "kind": kind,
        "kind_label": KIND_LABELS[kind],
        "cls": "".join(part.capitalize() for part in ident.split("_")) + kind.title().replace("_", ""),
        "summary": f"A {KIND_LABELS[kind]} from mdm-plugin-{name}",
    }
    files = {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        f"src/{values['package']}/__init__.py": "__init__.py.tmpl",
        f"src/{values['package']}/component.py": f"component_{kind}.py.tmpl",
        f"tests/test_{ident}.py": f"test_{kind}.py.tmpl",
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template((TEMPLATES / template).read_text()).substitute(values))
    return root
