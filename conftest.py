"""Test-wide settings for the core and every plug-in under this checkout."""

import os

import torch

# Plug-in load errors fail loudly in tests instead of being reported and skipped.
os.environ.setdefault("MDM_STRICT_PLUGINS", "1")
# Tests use tiny tensors: one thread avoids oversubscription on small shared machines.
torch.set_num_threads(1)
