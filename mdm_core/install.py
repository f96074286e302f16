"""``mdm install`` / ``mdm uninstall``: pip, run by the interpreter ``mdm`` itself runs in.

As ``llm install`` does, this guarantees that a plug-in lands in the environment whose ``mdm``
will load it (a bare ``pip`` on PATH may belong to another one). Short names expand to
distributions (``bell`` → ``mdm-plugin-bell``); anything else passes through to pip untouched:
requirement specifiers (``bell>=0.2`` → ``mdm-plugin-bell>=0.2``), paths, URLs and pip's own flags
(``-e PATH``, ``--upgrade``, ``--no-deps``, ``--target DIR``, ...).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Sequence

from mdm_core.errors import MdmError

PREFIX = "mdm-plugin-"
#: A bare project name with an optional version specifier or extras: ``bell``, ``bell[x]>=0.2``.
_NAME = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<rest>(\[[^\]]*\])?\s*([<>=!~;@].*)?)$")
#: pip options of install/uninstall that take a value: the value is never a plug-in name.
_VALUED = frozenset(
    {
        "-e", "--editable", "-r", "--requirement", "-c", "--constraint", "-t", "--target",
        "-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--prefix", "--root",
        "--src", "--upgrade-strategy", "--platform", "--python-version", "--implementation",
        "--abi", "--config-settings", "-C", "--global-option", "--progress-bar", "--report",
        "--cache-dir", "--log", "--proxy", "--timeout", "--retries", "--trusted-host", "--cert",
        "--client-cert", "--exists-action", "--no-binary", "--only-binary", "--python",
    }
)  # fmt: skip
#: What ``mdm`` itself is: never expanded (``mdm install mdm-diffusion --upgrade`` upgrades it).
_KEEP = frozenset({"mdm-diffusion", "mdm_diffusion"})


def expand(name: str) -> str:
    """``bell`` → ``mdm-plugin-bell``; full names, paths, URLs and non-names stay as given."""
    match = _NAME.match(name)
    if match is None or "/" in name or name.startswith(".") or name.endswith((".whl", ".tar.gz", ".zip")):
        return name
    base = match.group("name")
    if base.lower().startswith(("mdm-plugin-", "mdm_plugin_")) or base.lower() in _KEEP:
        return name
    return f"{PREFIX}{base}{match.group('rest')}"


def pip_arguments(args: Sequence[str]) -> list[str]:
    """``args`` with every plug-in name expanded; options and their values pass through."""
    out: list[str] = []
    takes_value = False
    for arg in args:
        if takes_value:
            out.append(arg)
            takes_value = False
        elif arg.startswith("-"):
            out.append(arg)
            takes_value = arg in _VALUED  # ``--target=DIR`` carries its own value
        else:
            out.append(expand(arg))
    return out


def pip_command(action: str, args: Sequence[str]) -> list[str]:
    """The pip command line: ``python -m pip install|uninstall ...`` for this interpreter."""
    if action not in ("install", "uninstall"):
        raise MdmError(f"pip action must be install or uninstall, not {action!r}")
    command = [sys.executable, "-m", "pip", action, *pip_arguments(args)]
    if action == "uninstall" and not {"-y", "--yes"} & set(args):
        command.append("--yes")  # as ``llm uninstall``: the command line is the confirmation
    return command


def run_pip(action: str, args: Sequence[str]) -> int:
    """Run pip (its output goes straight to the terminal) and return its exit status.

    No name at all is exit 2; pip missing from this interpreter is a clear error (exit 1)."""
    if not [a for a in args if not a.startswith("-")]:
        raise MdmError(f"{action}: name at least one plug-in, e.g. mdm {action} bell", exit_code=2)
    if importlib.util.find_spec("pip") is None:
        raise MdmError(
            f"{action}: the environment of {sys.executable} has no pip; add it with "
            f"{sys.executable} -m ensurepip, or create the environment without --without-pip"
        )
    command = pip_command(action, args)
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    try:
        return subprocess.run(command, check=False).returncode
    except OSError as exc:  # the interpreter itself cannot be started
        raise MdmError(f"{action}: cannot run {sys.executable} -m pip: {exc}") from None
