"""Run the Triton kernels on the CPU interpreter unless a GPU can run them compiled.

Triton reads ``TRITON_INTERPRET`` when the kernels are defined, so it is set here, before any
test module imports them. An explicit setting in the environment always wins.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the kernels run: CPU under the interpreter, else the GPU."""
    from mdm_plugin_triton_loss.backend import interpreter_requested

    return torch.device("cpu" if interpreter_requested() else "cuda")
