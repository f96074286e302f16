"""The conformance kit: hypothesis strategies and one law-checking entry point per component kind.

Plug-in tests call, for example, ``check_time_sampler(lambda: MySampler())``; each check raises
``AssertionError`` naming the violated law. Needs ``hypothesis`` (the ``test`` extra).
"""

from mdm_core.testing.conformance import (
    FixedTimeSampler,
    TinyBackbone,
    check_backbone,
    check_data_source,
    check_forward_process,
    check_loss,
    check_sampler,
    check_time_sampler,
)
from mdm_core.testing.strategies import batches, times, training_examples, vocabs

__all__ = [
    "FixedTimeSampler",
    "TinyBackbone",
    "batches",
    "check_backbone",
    "check_data_source",
    "check_forward_process",
    "check_loss",
    "check_sampler",
    "check_time_sampler",
    "times",
    "training_examples",
    "vocabs",
]
