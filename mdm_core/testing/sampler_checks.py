"""Conformance laws of a Sampler (see ``mdm_core.testing``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from hypothesis import given
from hypothesis import strategies as st

from mdm_core.builtin.schedules import Cosine
from mdm_core.interfaces import (
    Sampler,
    SamplingContext,
)
from mdm_core.testing.backbone_checks import TinyBackbone
from mdm_core.testing.laws import generator, law_settings, require
from mdm_core.testing.strategies import vocabs


def check_sampler(make: Callable[[], Sampler], *, max_examples: int = 10) -> None:
    """On a tiny real backbone: [N, L] regular ids (no MASK/PAD), prompt kept, integer NFE ≥ 0,
    same seed ⇒ same samples, and the model's train/eval mode left as it was."""

    @law_settings(max_examples)
    @given(
        data=st.data(),
        seed=st.integers(0, 2**31 - 1),
        uses_time=st.booleans(),
        prompted=st.booleans(),
        cosine=st.booleans(),
        training=st.booleans(),
    )
    def laws(
        data: st.DataObject, seed: int, uses_time: bool, prompted: bool, cosine: bool, training: bool
    ) -> None:
        vocab = data.draw(vocabs(2, 12), label="vocab")
        num, length = data.draw(st.integers(1, 3), label="N"), data.draw(st.integers(1, 10), label="L")
        model = TinyBackbone(TinyBackbone.Params(uses_time=uses_time, seed=seed), vocab, length)
        model.train(training)
        alpha = Cosine(1e-3).alpha if cosine else None
        ctx = SamplingContext(vocab=vocab, device=torch.device("cpu"), alpha=alpha)
        g = generator(seed)
        prompt = torch.randint(0, vocab.num_regular, (num, length), generator=g) if prompted else None
        prompt_mask = torch.rand((num, length), generator=g) < 0.4 if prompted else None
        sampler = make()
        out = sampler.generate(model, ctx, num, length, generator(seed), prompt, prompt_mask)
        tokens = out.tokens
        require(tokens.shape == (num, length), f"tokens {tuple(tokens.shape)} must be [num_samples, length]")
        require(not tokens.is_floating_point(), "tokens must be integer ids")
        require(
            ((tokens >= 0) & (tokens < vocab.num_regular)).all(),
            "every generated id must be a regular id (no MASK or PAD left)",
        )
        if prompt is not None and prompt_mask is not None:
            require(torch.equal(tokens[prompt_mask], prompt[prompt_mask]), "prompt positions must be kept")
        require(isinstance(out.nfe, int) and out.nfe >= 0, f"nfe must be an int ≥ 0, got {out.nfe!r}")
        require(model.training == training, "the sampler must leave the model's train/eval mode as it was")
        again = make().generate(model, ctx, num, length, generator(seed), prompt, prompt_mask)
        require(torch.equal(tokens, again.tokens), "same seed must give the same samples")

    laws()
