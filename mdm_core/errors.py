"""Errors that reach the user as one clear message and an exit code, never a traceback."""

from __future__ import annotations


class MdmError(Exception):
    """A problem the user can fix; the CLI prints ``error: <message>`` and exits ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class SpecError(MdmError):
    """The spec (a file, an override) names something wrong: exit code 2."""

    exit_code = 2


class PluginError(MdmError):
    """A plug-in could not be loaded or conflicts with another: exit code 3."""

    exit_code = 3


class TrainingDiverged(MdmError):
    """Loss or gradients became NaN/Inf: exit code 4 (the last checkpoint is intact)."""

    exit_code = 4
