"""Which implementation the fused loss runs here: compiled Triton, its interpreter, or PyTorch.

Kept free of Triton imports so that ``mdm plugins --status`` can answer on any machine, Triton
installed or not.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache

TRITON_GPU = "triton (GPU)"
TRITON_INTERPRETER = "triton interpreter (TRITON_INTERPRET=1)"
TORCH_FALLBACK = "PyTorch fallback (no GPU)"
TORCH_NO_TRITON = "PyTorch fallback (triton not installed)"
TORCH_FORCED = "PyTorch reference (backend: torch)"

_TRUE = {"1", "true", "yes", "y", "on"}


def interpreter_requested() -> bool:
    """True when ``TRITON_INTERPRET`` asks Triton to run kernels on the CPU (Triton's spelling)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


@cache
def triton_installed() -> bool:
    """Whether Triton can be imported (looked up once: a search of sys.path costs ~0.1 ms)."""
    return importlib.util.find_spec("triton") is not None


def gpu_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def active_path() -> str:
    """The path ``backend: auto`` takes on this machine for logits on its default device."""
    if not triton_installed():
        return TORCH_NO_TRITON
    if interpreter_requested():
        return TRITON_INTERPRETER
    if gpu_available():
        return TRITON_GPU
    return TORCH_FALLBACK


def path_for(choice: str) -> str:
    """The path a loss with ``backend: choice`` takes here (``mdm plugins --status`` shows ``auto``'s)."""
    return TORCH_FORCED if choice == "torch" else active_path()
