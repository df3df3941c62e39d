"""`Unembed.invert`: logits back to a hidden state."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from lens_hub import LogitLens


@pytest.mark.parametrize("family", ["gpt2", "llama"])  # LayerNorm with bias; RMSNorm
def test_invert_recovers_a_state_whose_unembedding_predicts_the_same_distribution(family):
    model = tiny_model(family)
    unembed = LogitLens.from_model(model).unembed
    with torch.no_grad():
        hidden = model(torch.tensor([[5, 17, 42, 8]]), output_hidden_states=True).hidden_states[2]
        target = unembed(hidden)  # [1, 4, vocab], reachable by construction
    found = unembed.invert(target)
    assert found.hidden.shape == hidden.shape and found.kl.shape == (1, 4)
    assert float(found.kl.max()) < 1e-4
    with torch.no_grad():
        again = unembed(found.hidden).log_softmax(-1)
    assert torch.allclose(again.exp(), target.softmax(-1), atol=1e-3)
    assert all(p.grad is None for p in model.parameters())  # only h was differentiated


def test_invert_of_an_unreachable_distribution_gets_closer_than_its_start_and_reports_the_gap():
    model = tiny_model("llama")
    unembed = LogitLens.from_model(model).unembed
    target = torch.randn(3, unembed.parts.vocab_size) * 4  # 96 free logits from 32 dimensions: no exact preimage
    start = torch.zeros(3, unembed.parts.hidden_size)
    log_p = target.log_softmax(-1)
    with torch.no_grad():
        at_start = (log_p.exp() * (log_p - unembed(start).log_softmax(-1))).sum(-1)
    found = unembed.invert(target, h0=start)
    assert (found.kl < at_start).all() and (found.kl > 0.05).all()  # better, but the bottleneck leaves a gap
    assert found.steps > 1


def test_invert_refuses_shapes_that_do_not_fit():
    unembed = LogitLens.from_model(tiny_model("gpt2")).unembed
    with pytest.raises(ValueError, match="vocabulary"):
        unembed.invert(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="h0 has shape"):
        unembed.invert(torch.zeros(2, unembed.parts.vocab_size), h0=torch.zeros(3, unembed.parts.hidden_size))
