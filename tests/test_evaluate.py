"""`evaluate`'s label shift and transfer cross-entropy, checked against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import SAMPLE, TOKENIZER, gpt2_real_vocab, random_lens

from lens_hub.analysis.evaluate import evaluate, shifted_labels
from lens_hub.training.data import load_token_data


@pytest.fixture(scope="module")
def setup():
    from transformers import AutoTokenizer

    model = gpt2_real_vocab()
    tokens = load_token_data(SAMPLE, AutoTokenizer.from_pretrained(TOKENIZER), seq_len=16, max_sequences=3)
    return model, tokens, random_lens(model)


def _direct_cross_entropy(model, tokens, shift: int) -> float:
    """The model's own cross-entropy against the tokens ``shift`` ahead, in bits per byte."""
    ids = tokens.sequences
    with torch.no_grad():
        log_p = model(ids).logits.float().log_softmax(-1)
    t = ids.shape[1]
    positions = range(max(0, -shift), min(t, t - shift))
    nats = -sum(float(log_p[:, i].gather(-1, ids[:, i + shift, None]).sum()) for i in positions)
    return nats / (ids.shape[0] * len(positions)) * tokens.tokens_per_byte / math.log(2)


@pytest.mark.parametrize("shift", [1, 0, -1, 2])
def test_token_shift_moves_the_cross_entropy_labels_and_nothing_else(setup, shift):
    model, tokens, lens = setup
    result = evaluate(model, tokens, lens, batch_size=2, token_shift=shift)
    assert result.model_cross_entropy == pytest.approx(_direct_cross_entropy(model, tokens, shift), rel=1e-5)
    assert result.token_shift == shift and result.to_json()["token_shift"] == shift
    default = evaluate(model, tokens, lens, batch_size=2)
    assert result.tuned["kl"] == pytest.approx(default.tuned["kl"])  # KL reads no labels
    if shift == 1:
        assert result.tuned["cross_entropy"] == pytest.approx(default.tuned["cross_entropy"])
    else:
        assert result.tuned["cross_entropy"] != pytest.approx(default.tuned["cross_entropy"])


def test_shifted_labels_and_a_shift_that_leaves_no_label():
    ids = torch.tensor([[10, 11, 12, 13]])
    assert shifted_labels(ids, 1).tolist() == [[11, 12, 13, -1]]
    assert shifted_labels(ids, -2).tolist() == [[-1, -1, 10, 11]]
    assert shifted_labels(ids, 0).tolist() == ids.tolist()
    from transformers import AutoTokenizer

    tokens = load_token_data(SAMPLE, AutoTokenizer.from_pretrained(TOKENIZER), seq_len=16, max_sequences=1)
    with pytest.raises(ValueError, match="token_shift=16"):
        evaluate(gpt2_real_vocab(), tokens, None, token_shift=16)


def test_transfer_cross_entropy_diagonal_is_the_lens_own_cross_entropy(setup):
    model, tokens, lens = setup
    result = evaluate(model, tokens, lens, batch_size=2, transfer=True)
    matrix = result.transfer_cross_entropy
    assert matrix is not None and len(matrix) == len(result.layers) == len(matrix[0])
    diagonal = [matrix[k][k] for k in range(len(matrix))]  # translator i on its own layer i: the tuned lens
    assert diagonal == pytest.approx(result.tuned["cross_entropy"], rel=1e-6)
    assert matrix[0][1] != pytest.approx(matrix[1][1])  # another translator on layer 1 reads it differently
    assert result.to_json()["transfer_cross_entropy"] == matrix
