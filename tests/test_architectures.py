"""The architecture matrix: every supported family, built tiny and random, must unembed exactly like the model."""

import re

import pytest
import torch
from helpers import run_hidden
from tiny_models import FAMILIES, LAYERS, tiny_model
from torch import nn

from lens_hub import ArchitectureSpec, LensHubError, LogitLens, TunedLens, UnsupportedArchitectureError


def _pre_norm_state(model, lens, ids):
    """The last layer's raw output (the final norm's input), captured with a hook."""
    parts = lens.unembed.parts
    captured = []
    target = parts.final_norm or parts.post_norm or parts.output_embedding
    handle = target.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    handle.remove()
    return captured[0], out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_unembed_reproduces_model_logits(family):
    model = tiny_model(family)
    lens = LogitLens.from_model(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    raw_last, out = _pre_norm_state(model, lens, ids)
    assert lens.num_layers == LAYERS
    assert len(out.hidden_states) == LAYERS + 1
    with torch.no_grad():
        assert torch.equal(lens.unembed(raw_last), out.logits)
        # transformers returns the last hidden state already final-normed: only the head applies to it.
        assert torch.equal(lens.unembed.head(out.hidden_states[-1]), out.logits)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fresh_tuned_lens_is_the_logit_lens_bit_for_bit(family):
    model = tiny_model(family)
    out = run_hidden(model)
    logit, tuned = LogitLens.from_model(model), TunedLens.from_model(model)
    with torch.no_grad():
        for i in range(LAYERS):
            assert torch.equal(tuned(out.hidden_states[i], i), logit(out.hidden_states[i], i))
        both = tuned.all_logits(out.hidden_states), logit.all_logits(out.hidden_states)
    assert both[0].shape == (LAYERS + 1, 2, 7, model.config.vocab_size)
    assert torch.equal(*both)
    assert torch.equal(both[0][-1], out.logits)


def test_softcapping_is_applied_for_gemma2():
    # With a small cap the logits must be bounded by it; without applying it they would not be.
    model = tiny_model("gemma2", final_logit_softcapping=0.5)
    out = run_hidden(model)
    logits = LogitLens.from_model(model)(out.hidden_states[1], 1)
    assert logits.abs().max() <= 0.5
    assert LogitLens.from_model(model).unembed.parts.logit_softcap == 0.5


def test_opt_with_projection_and_no_final_norm():
    # OPT-350m: post-LN blocks (no final norm) and a projection from the residual width to the embedding width.
    model = tiny_model("opt", word_embed_proj_dim=16, do_layer_norm_before=False)
    lens = LogitLens.from_model(model)
    assert lens.unembed.parts.final_norm is None
    assert lens.unembed.parts.post_norm is model.model.decoder.project_out
    assert lens.unembed.parts.hidden_size == 32
    raw_last, out = _pre_norm_state(model, lens, torch.tensor([[3, 4, 5]]))
    assert torch.equal(lens.unembed(raw_last), out.logits)
    tuned = TunedLens.from_model(model)
    assert torch.equal(tuned(out.hidden_states[0], 0), lens(out.hidden_states[0], 0))


@pytest.mark.parametrize(
    ("family", "extra"),
    [("cohere", dict(logit_scale=0.25)), ("granite", dict(logits_scaling=4.0))],
)
def test_logit_scaling_families(family, extra):
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    config = CONFIG_MAPPING[family](
        vocab_size=96,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **extra,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    lens = LogitLens.from_model(model)
    raw_last, out = _pre_norm_state(model, lens, torch.tensor([[3, 4, 5, 6]]))
    assert torch.equal(lens.unembed(raw_last), out.logits)


def test_tied_embedding_is_shared_not_copied():
    model = tiny_model("llama", tie_word_embeddings=True)
    lens = TunedLens.from_model(model)
    head = lens.unembed.parts.output_embedding.weight
    assert head.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    # The lens's own state is only the translators: the model's weights are neither saved nor moved with it.
    assert set(lens.state_dict()) == {f"translators.{i}.{p}" for i in range(LAYERS) for p in ("weight", "bias")}
    assert sum(p.numel() for p in lens.parameters()) == LAYERS * (32 * 32 + 32)


def test_bias_false():
    model = tiny_model("gpt2")
    out = run_hidden(model)
    lens = TunedLens.from_model(model, bias=False)
    assert all(t.bias is None for t in lens.translators)
    assert set(lens.state_dict()) == {f"translators.{i}.weight" for i in range(LAYERS)}
    with torch.no_grad():
        lens.translators[1].weight.normal_(std=0.1)
        expected = LogitLens.from_model(model)(
            out.hidden_states[1] + out.hidden_states[1] @ lens.translators[1].weight.T, 1
        )
        assert torch.allclose(lens(out.hidden_states[1], 1), expected, atol=1e-6)


def test_translator_math_is_h_plus_wh_plus_b():
    model = tiny_model("llama")
    out = run_hidden(model)
    tuned, logit = TunedLens.from_model(model), LogitLens.from_model(model)
    t = tuned.translators[2]
    with torch.no_grad():
        t.weight.normal_(std=0.05)
        t.bias.normal_(std=0.05)
        h = out.hidden_states[2]
        assert torch.allclose(tuned(h, 2), logit(h + h @ t.weight.T + t.bias, 2), atol=1e-6)
        assert not torch.allclose(tuned(h, 2), logit(h, 2))


def test_half_precision_model_with_fp32_lens():
    model = tiny_model("llama", dtype=torch.bfloat16)
    out = run_hidden(model)
    tuned = TunedLens.from_model(model)
    logits = tuned(out.hidden_states[1], 1)
    assert logits.dtype == torch.bfloat16
    assert torch.equal(logits, LogitLens.from_model(model)(out.hidden_states[1], 1))


def test_layer_index_out_of_range_is_explained():
    model = tiny_model("gpt2")
    lens = LogitLens.from_model(model)
    with pytest.raises(IndexError, match=r"hidden_states\[0\.\.2\]"):
        lens(torch.zeros(1, 1, 32), 3)
    with pytest.raises(ValueError, match="expected 4 hidden states"):
        lens.all_logits(run_hidden(model).hidden_states[:-1])


class _Unusual(nn.Module):
    """A model whose pieces sit under names no probe knows."""

    def __init__(self, inner):
        super().__init__()
        self.config = inner.config
        self.trunk = inner.transformer
        self.readout = inner.lm_head

    def get_output_embeddings(self):
        return self.readout


def test_unknown_architecture_names_what_was_tried_and_the_override():
    wrapped = _Unusual(tiny_model("gpt2"))
    with pytest.raises(UnsupportedArchitectureError, match=r"layers of _Unusual.*tried.*ArchitectureSpec\(layers="):
        LogitLens.from_model(wrapped)
    spec = ArchitectureSpec(layers="trunk.h", final_norm="trunk.ln_f")
    lens = TunedLens.from_model(wrapped, architecture=spec)
    assert lens.num_layers == LAYERS
    assert lens.unembed.parts.final_norm is wrapped.trunk.ln_f
    with pytest.raises(UnsupportedArchitectureError, match="no attribute path 'trunk.nope'"):
        LogitLens.from_model(wrapped, architecture=ArchitectureSpec(layers="trunk.nope"))
    with pytest.raises(UnsupportedArchitectureError, match="points at a LayerNorm, expected ModuleList"):
        LogitLens.from_model(wrapped, architecture=ArchitectureSpec(layers="trunk.ln_f"))


@pytest.mark.parametrize(
    ("field", "path", "failed", "existing"),
    [
        # A typo at the top level: the children of the model itself are listed.
        ("output_embedding", "lm_haed", "LlamaForCausalLM has no 'lm_haed'", ["model", "lm_head"]),
        # A typo one level down: the children of the base model, as full paths.
        ("post_norm", "model.nrom", "'model' (LlamaModel) has no 'nrom'", ["model.norm", "model.layers"]),
        ("layers", "model.layerz", "'model' (LlamaModel) has no 'layerz'", ["model.layers", "model.norm"]),
        ("final_norm", "model.norms", "'model' (LlamaModel) has no 'norms'", ["model.norm", "model.embed_tokens"]),
        # Wrong in the middle: the failing part is reported, not the last one.
        (
            "output_embedding",
            "model.lm_head.weight",
            "'model' (LlamaModel) has no 'lm_head'",
            ["model.embed_tokens", "model.layers"],
        ),
    ],
)
def test_wrong_spec_path_names_the_field_the_failing_part_and_what_exists(field, path, failed, existing):
    model = tiny_model("llama")
    with pytest.raises(UnsupportedArchitectureError) as info:
        LogitLens.from_model(model, architecture=ArchitectureSpec(**{field: path}))
    assert isinstance(info.value, LensHubError)
    message = str(info.value)
    assert f"no attribute path {path!r} (given as ArchitectureSpec.{field})" in message
    assert failed in message
    listed = re.search(r"Attribute paths that exist there: (.*?)\.(?: |$)", message)
    assert listed, message
    assert set(existing) <= set(listed.group(1).split(", ")), message


def test_wrong_spec_path_suggests_the_close_existing_path():
    model = tiny_model("gpt2")
    with pytest.raises(UnsupportedArchitectureError, match=r"Did you mean 'transformer\.ln_f'\?"):
        LogitLens.from_model(model, architecture=ArchitectureSpec(post_norm="transformer.lnf"))
    with pytest.raises(UnsupportedArchitectureError, match=r"Did you mean 'lm_head'\?"):
        LogitLens.from_model(model, architecture=ArchitectureSpec(output_embedding="lm_haed"))


def test_spec_path_through_a_tensor_says_it_has_no_children():
    model = tiny_model("llama")
    with pytest.raises(UnsupportedArchitectureError) as info:
        LogitLens.from_model(model, architecture=ArchitectureSpec(final_norm="model.norm.weight.x"))
    assert "'model.norm.weight' (Parameter) has no 'x'. It has no child modules." in str(info.value)


def test_spec_paths_must_point_at_modules_of_the_right_kind():
    model = tiny_model("llama")
    with pytest.raises(UnsupportedArchitectureError, match=r"output_embedding='model.layers' points at a ModuleList"):
        LogitLens.from_model(model, architecture=ArchitectureSpec(output_embedding="model.layers"))
    with pytest.raises(UnsupportedArchitectureError, match=r"output_embedding='lm_head.weight' points at a Param"):
        LogitLens.from_model(model, architecture=ArchitectureSpec(output_embedding="lm_head.weight"))
    with pytest.raises(UnsupportedArchitectureError, match=r"post_norm='model.norm.weight' points at a Parameter"):
        LogitLens.from_model(model, architecture=ArchitectureSpec(post_norm="model.norm.weight"))
    with pytest.raises(UnsupportedArchitectureError, match=r"post_norm='config' points at a LlamaConfig"):
        LogitLens.from_model(model, architecture=ArchitectureSpec(post_norm="config"))


def test_explicit_output_embedding_and_post_norm_are_used():
    model = tiny_model("opt", word_embed_proj_dim=16, do_layer_norm_before=False)
    spec = ArchitectureSpec(output_embedding="lm_head", post_norm="model.decoder.project_out")
    parts = LogitLens.from_model(model, architecture=spec).unembed.parts
    assert parts.output_embedding is model.lm_head
    assert parts.post_norm is model.model.decoder.project_out


def test_model_without_head_is_refused():
    from tiny_models import tiny_config
    from transformers import AutoModel

    bare = AutoModel.from_config(tiny_config("llama"))
    with pytest.raises(UnsupportedArchitectureError, match="AutoModelForCausalLM"):
        LogitLens.from_model(bare)
