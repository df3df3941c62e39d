"""Loading a lens onto a model that does not fit it fails before any tensor is read, naming each mismatch."""

import pytest
import torch
from tiny_models import tiny_model

from lens_hub import IncompatibleLensError, LensCompatibilityWarning, TunedLens


@pytest.fixture
def saved(tmp_path):
    TunedLens.from_model(tiny_model("llama")).save(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (lambda: tiny_model("llama", hidden_size=64), "lens expects hidden_size 32 but the model has 64"),
        (lambda: tiny_model("llama", num_hidden_layers=5), "lens expects num_layers 3 but the model has 5"),
        (lambda: tiny_model("llama", vocab_size=100), "lens expects vocab_size 96 but the model has 100"),
        (lambda: tiny_model("mistral"), "lens expects model_type 'llama' but the model has 'mistral'"),
        (lambda: tiny_model("llama", seed=1), "unembedding fingerprint differs: .*holds different weights"),
    ],
    ids=["hidden_size", "num_layers", "vocab_size", "model_type", "fingerprint"],
)
def test_each_mismatch_is_named_with_both_values(saved, other, message):
    with pytest.raises(IncompatibleLensError, match=message) as info:
        TunedLens.load(saved, other())
    assert info.value.mismatches


def test_all_mismatches_are_reported_together(saved):
    with pytest.raises(IncompatibleLensError) as info:
        TunedLens.load(saved, tiny_model("mistral", vocab_size=100, num_hidden_layers=2))
    text = str(info.value)
    for part in ("num_layers 3 but the model has 2", "vocab_size 96", "model_type 'llama'"):
        assert part in text


def test_check_runs_before_tensors_are_read(saved):
    (saved / "lens.safetensors").write_bytes(b"not even safetensors")
    with pytest.raises(IncompatibleLensError):
        TunedLens.load(saved, tiny_model("llama", seed=3))


def test_expert_opt_out_warns_for_soft_mismatches(saved):
    other = tiny_model("llama", seed=1, vocab_size=100)
    with pytest.warns(LensCompatibilityWarning) as record:
        lens = TunedLens.load(saved, other, allow_mismatch=True)
    messages = [str(w.message) for w in record]
    assert any("vocab_size 96 but the model has 100" in m for m in messages)
    assert any("fingerprint" in m for m in messages)
    assert lens(torch.zeros(1, 2, 32), 0).shape == (1, 2, 100)


def test_structural_mismatch_cannot_be_overridden(saved):
    with pytest.raises(IncompatibleLensError, match="cannot be overridden"):
        TunedLens.load(saved, tiny_model("llama", hidden_size=64), allow_mismatch=True)


def test_matching_model_in_other_dtype_loads_without_warning(saved, recwarn):
    model = tiny_model("llama").to(torch.bfloat16)
    TunedLens.load(saved, model)
    assert not [w for w in recwarn if issubclass(w.category, LensCompatibilityWarning)]


def test_a_lens_adopted_by_another_model_records_that_model_and_loads_with_it(saved, tmp_path):
    other = tiny_model("llama", seed=1, vocab_size=100)
    other.config._name_or_path = "org/chat-variant"
    with pytest.warns(LensCompatibilityWarning):
        lens = TunedLens.load(saved, other, allow_mismatch=True)
    lens.config = lens.config.model_copy(update={"base_model": "org/base"})
    lens.adopt_model()
    assert (lens.config.base_model, lens.config.vocab_size) == ("org/chat-variant", 100)
    TunedLens.load(lens.save(tmp_path / "adopted"), other)  # no mismatch left, no warning needed

    own = TunedLens.load(saved, tiny_model("llama"))
    own.config = own.config.model_copy(update={"base_model": "org/base"})
    own.adopt_model()  # its own model: the id it records stays (a local model directory names no id)
    assert own.config.base_model == "org/base"
