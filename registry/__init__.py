"""The plug-in catalogue, installed as the package ``mdm_core.registry`` (``package-dir`` in
pyproject.toml) so that ``mdm plugins --available`` reads it without the repository; the folder
stays ``registry/`` at the repository root (see ``mdm_core.registry_catalog``).
"""
