"""The shipped specs, installed as the package ``mdm_core.specs`` (``package-dir`` in pyproject.toml).

The folder stays ``specs/`` at the repository root, where the documentation names it; this file
only makes it an importable package, so ``importlib.resources`` finds the YAML files in a wheel
and in an editable install alike (see ``mdm_core.shipped_specs``).
"""
