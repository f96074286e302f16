"""The specs shipped with the package, addressable by name from any directory.

``specs/*.yaml`` at the repository root is installed as the package ``mdm_core.specs`` (its
``package-dir`` in pyproject.toml), so a wheel and an editable install both carry it and
``importlib.resources`` finds it. ``mdm train quickstart``, ``mdm spec show bell-markov`` and
``base: quickstart`` resolve here when no such file exists; a file of the same name always wins.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path, PurePath

from mdm_core.errors import SpecError

_FOLDER = "specs"


def shipped_dir() -> Path:
    """The folder holding the shipped specs (site-packages, or ``specs/`` of a source checkout)."""
    return Path(str(resources.files("mdm_core.specs")))


def shipped_specs() -> dict[str, Path]:
    """Name (file stem, e.g. ``quickstart``) → path, for every shipped spec; none in an editable
    install made before the specs were packaged (reinstalling it adds them)."""
    try:
        folder = shipped_dir()
    except ModuleNotFoundError:
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def shipped_spec(reference: str) -> Path | None:
    """The shipped spec that ``reference`` names, or None.

    A reference is a bare name (``quickstart``), a file name (``quickstart.yaml``) or the path
    the documentation uses (``specs/quickstart.yaml``)."""
    path = PurePath(reference)
    if path.is_absolute() or path.parent.parts not in ((), (_FOLDER,)):
        return None
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    return shipped_specs().get(stem)


def resolve_spec(reference: str | Path) -> Path:
    """The spec file ``reference`` means: an existing path as given, else a shipped spec.

    Neither: a :class:`SpecError` (exit 2) listing the shipped specs."""
    path = Path(reference)
    if path.exists():
        return path
    found = shipped_spec(str(reference))
    if found is not None:
        return found
    raise SpecError(unknown_spec_message(str(reference)))


def unknown_spec_message(reference: str) -> str:
    names = ", ".join(shipped_specs()) or "(none installed: reinstall mdm-diffusion)"
    return (
        f"spec: file not found: {reference}; give a spec file or the name of a shipped spec: {names} "
        "(e.g. mdm train quickstart)"
    )
