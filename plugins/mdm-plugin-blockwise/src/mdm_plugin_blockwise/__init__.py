"""Registration module of the blockwise plug-in (import-light: no torch here)."""

from __future__ import annotations

from mdm_core.hookspecs import ComponentRef, hookimpl

__version__ = "0.2.0"

_P = "mdm_plugin_blockwise"


@hookimpl
def mdm_components() -> list[ComponentRef]:
    return [
        ComponentRef(
            "forward_process", "bd3", f"{_P}.bd3:BD3Process", "block diffusion over z ⊕ x, one t per block"
        ),
        ComponentRef(
            "forward_process", "ar", f"{_P}.ar:ARProcess", "autoregressive reference: causal next-token CE"
        ),
        ComponentRef(
            "sampler",
            "block",
            f"{_P}.block_sampler:BlockSampler",
            "BD3: block by block with an exact KV cache",
        ),
        ComponentRef("sampler", "ar", f"{_P}.ar:ARSampler", "left-to-right decoding with an exact KV cache"),
        ComponentRef(
            "evaluator",
            "bd3_interval_search",
            f"{_P}.bd3:IntervalSearch",
            "BD3: clipped mask-rate interval of least per-block loss variance",
        ),
        ComponentRef(
            "forward_process",
            "block",
            f"{_P}.locality:BlockProcess",
            "blockwise locality: causal across blocks",
        ),
        ComponentRef(
            "forward_process",
            "scatter",
            f"{_P}.locality:ScatterProcess",
            "blockwise locality: causal over offsets",
        ),
        ComponentRef(
            "forward_process",
            "jigsaw",
            f"{_P}.locality:JigsawProcess",
            "blockwise locality: whole masked blocks",
        ),
        ComponentRef(
            "sampler",
            "locality",
            f"{_P}.locality_sampler:LocalitySampler",
            "decodes block / scatter / jigsaw models",
        ),
    ]
