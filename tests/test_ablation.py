"""Whole-layer ablation (`lens_hub.analysis.ablation.ablate_layer`), checked against the clean run's residuals."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from lens_hub.analysis.ablation import ablate_layer
from lens_hub.errors import AblationError

IDS = torch.tensor([[5, 17, 42, 8, 9], [1, 2, 3, 4, 5], [60, 61, 62, 63, 64]])


def _hidden(model, ids=IDS):
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_zero_and_mean_ablation_replace_the_blocks_residual(family):
    model = tiny_model(family)
    clean = _hidden(model)
    residual = clean[2] - clean[1]  # what block 1 adds
    with ablate_layer(model, 1, "zero"):
        zero = _hidden(model)
    assert torch.equal(zero[1], clean[1])  # the block's input is untouched
    assert torch.allclose(zero[2], clean[1])  # and it adds nothing
    with ablate_layer(model, 1, "mean"):
        mean = _hidden(model)
    assert torch.allclose(mean[2], clean[1] + residual.mean(0, keepdim=True), atol=1e-6)
    with ablate_layer(model, 1, "mean", mode="token"):
        token_mean = _hidden(model)
    assert torch.allclose(token_mean[2], clean[1] + residual.flatten(0, 1).mean(0), atol=1e-6)
    assert torch.equal(_hidden(model)[2], clean[2])  # the hook is gone after the context


def test_resample_gives_each_sequence_another_sequences_residual():
    model = tiny_model("gpt2")
    clean = _hidden(model)
    residual = clean[2] - clean[1]
    with ablate_layer(model, 1, "resample", generator=torch.Generator().manual_seed(0)):
        taken = _hidden(model)[2] - clean[1]
    sources = [int(torch.cdist(taken[b].flatten()[None], residual.flatten(1)).argmin()) for b in range(3)]
    assert sorted(sources) == [0, 1, 2] and all(s != b for b, s in enumerate(sources))  # a derangement
    for b, s in enumerate(sources):
        assert torch.allclose(taken[b], residual[s], atol=1e-5)


def test_ablation_refuses_what_it_cannot_do():
    model = tiny_model("gpt2")
    with pytest.raises(AblationError, match="unknown ablation method"), ablate_layer(model, 0, "noise"):  # type: ignore[arg-type]
        pass
    with pytest.raises(AblationError, match=r"blocks 0\.\.2"), ablate_layer(model, 3):
        pass
    with pytest.raises(AblationError, match="mode='token'"), ablate_layer(model, 0, "mean"):
        _hidden(model, IDS[:1])  # one sequence: nothing to average over in batch mode
    with ablate_layer(model, 0, "resample", mode="token"):
        assert torch.isfinite(_hidden(model, IDS[:1])[-1]).all()  # token mode works on one sequence
