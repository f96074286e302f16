"""Test-wide settings for the core and every plug-in under this checkout.

Third-party plug-ins installed in the environment the tests run in (a tutorial's, a user's) are
disabled (``MDM_DISABLE_PLUGINS``), so they cannot change what the core's tests see: a name they
register twice would otherwise be a conflict, fatal in strict mode. Subprocesses inherit the
setting. Plug-ins a test installs itself (on ``sys.path`` or ``PYTHONPATH``) stay visible.
"""

import atexit
import os
import shutil
import tempfile
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
import torch

from mdm_core.plugins import BUILTIN_MODULE, normalise

ROOT = Path(__file__).resolve().parent
#: The first-party distributions: those under plugins/ (the core's built-ins are always loaded).
FIRST_PARTY = frozenset(
    normalise(tomllib.loads(path.read_text())["project"]["name"])
    for path in ROOT.glob("plugins/*/pyproject.toml")
)


def foreign_plugins() -> list[str]:
    """The installed distributions with an ``mdm`` entry point that are neither the core's nor
    first-party."""
    found = {
        ep.dist.name
        for ep in metadata.entry_points(group="mdm")
        if ep.dist is not None and ep.value != BUILTIN_MODULE and normalise(ep.dist.name) not in FIRST_PARTY
    }
    return sorted(found)


@pytest.fixture(name="foreign_plugins")
def _foreign_plugins() -> Callable[[], list[str]]:
    """:func:`foreign_plugins`, for the test that shows the setting works."""
    return foreign_plugins


_disabled = [x for x in os.environ.get("MDM_DISABLE_PLUGINS", "").split(",") if x.strip()]
if foreign := foreign_plugins():
    os.environ["MDM_DISABLE_PLUGINS"] = ",".join(_disabled + foreign)
# Plug-in load errors fail loudly in tests instead of being reported and skipped.
os.environ.setdefault("MDM_STRICT_PLUGINS", "1")
# Shard stores built by tests go to a throwaway folder, never the user's ~/.cache/mdm.
if "MDM_CACHE_DIR" not in os.environ:
    os.environ["MDM_CACHE_DIR"] = tempfile.mkdtemp(prefix="mdm-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MDM_CACHE_DIR"], ignore_errors=True)
# Tests use tiny tensors: one thread avoids oversubscription on small shared machines.
torch.set_num_threads(1)
