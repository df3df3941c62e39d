"""The unembedding fingerprint: equal across dtypes, different across models."""

import pytest
import torch
from tiny_models import tiny_model

from lens_hub.core.adapters import find_model_parts
from lens_hub.core.fingerprint import TOLERANCE, compare_fingerprints, fingerprint_tensors, parse_fingerprint, sketch

# Wide enough that rounding noise averages as it does in real models.
WIDE = dict(hidden_size=128, vocab_size=2048, intermediate_size=128)


def _fp(model):
    return find_model_parts(model).fingerprint


@pytest.fixture(scope="module")
def base():
    return tiny_model("llama", **WIDE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_same_weights_in_lower_precision_match(base, dtype):
    lowered = tiny_model("llama", **WIDE).to(dtype)
    assert compare_fingerprints(_fp(base), _fp(lowered)) == []


def test_fingerprint_is_deterministic(base):
    assert _fp(base) == _fp(tiny_model("llama", **WIDE))


def test_different_init_does_not_match(base):
    problems = compare_fingerprints(_fp(base), _fp(tiny_model("llama", seed=1, **WIDE)))
    assert any("output_embedding.weight holds different weights" in p for p in problems)


def test_resized_vocabulary_does_not_match(base):
    resized = tiny_model("llama", **WIDE)
    resized.resize_token_embeddings(2048 + 64)
    assert compare_fingerprints(_fp(base), _fp(resized)) == [
        "output_embedding.weight has shape 2112x128 but the lens expects 2048x128"
    ]


def test_a_later_checkpoint_of_the_same_model_does_not_match(base):
    # A real "next checkpoint": a few optimizer steps of language-model training on the same architecture.
    model = tiny_model("llama", **WIDE).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 2048, (4, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    problems = compare_fingerprints(_fp(base), _fp(model))
    assert problems and all("holds different weights" in p for p in problems)


def test_sketch_noise_from_bf16_is_well_under_tolerance():
    w = torch.randn(4096, 256, generator=torch.Generator().manual_seed(0)) * 0.02
    a, b = torch.tensor(sketch(w)), torch.tensor(sketch(w.to(torch.bfloat16)))
    assert (a - b).norm() / a.norm() < TOLERANCE / 2


def test_string_form_round_trips_and_rejects_garbage():
    fp = fingerprint_tensors({"b": torch.ones(3), "a": torch.eye(4)})
    parsed = parse_fingerprint(fp)
    assert list(parsed) == ["a", "b"]
    assert parsed["a"][0] == "4x4" and parsed["b"][0] == "3"
    with pytest.raises(ValueError, match="unknown fingerprint version"):
        parse_fingerprint("sha256:deadbeef")
    with pytest.raises(ValueError, match="malformed"):
        parse_fingerprint("lhfp1;a=4x4:!!!")


def test_norm_weights_are_part_of_the_fingerprint(base):
    other = tiny_model("llama", **WIDE)
    with torch.no_grad():
        other.model.norm.weight.mul_(1.5)
    problems = compare_fingerprints(_fp(base), _fp(other))
    assert problems == [p for p in problems if p.startswith("final_norm.weight")] and problems
