"""The conformance kit: hypothesis strategies and one law-checking entry point per component kind.

Plug-in tests call, for example, ``check_time_sampler(lambda: MySampler())``; each check raises
``AssertionError`` naming the violated law. Needs ``hypothesis`` (the ``test`` extra), and
``scipy`` for the NLL oracle law of ``check_evaluator``. Samplers and likelihood evaluators are
also checked against an exact oracle (``OracleBackbone``, the true denoiser of a tiny Markov
chain ``OracleChain``).
"""

from mdm_core.testing.backbone_checks import TinyBackbone, check_backbone
from mdm_core.testing.data_source_checks import check_data_source
from mdm_core.testing.evaluator_checks import check_evaluator
from mdm_core.testing.forward_process_checks import FixedTimeSampler, check_forward_process
from mdm_core.testing.loss_checks import check_loss
from mdm_core.testing.oracle import NEVER_LOGIT, OracleBackbone, OracleChain
from mdm_core.testing.sampler_checks import check_sampler
from mdm_core.testing.strategies import batches, times, training_examples, vocabs
from mdm_core.testing.time_sampler_checks import check_time_sampler

__all__ = [
    "NEVER_LOGIT",
    "FixedTimeSampler",
    "OracleBackbone",
    "OracleChain",
    "TinyBackbone",
    "batches",
    "check_backbone",
    "check_data_source",
    "check_evaluator",
    "check_forward_process",
    "check_loss",
    "check_sampler",
    "check_time_sampler",
    "times",
    "training_examples",
    "vocabs",
]
