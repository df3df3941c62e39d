"""Tiny randomly initialised causal LMs, one per supported family, built from configs (no downloads)."""

from __future__ import annotations

import torch
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, PretrainedConfig

VOCAB = 96
HIDDEN = 32
LAYERS = 3
HEADS = 4

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=64,
    max_position_embeddings=64,
)

# Family -> config kwargs. Most families accept the common names; the older ones use their own.
FAMILIES: dict[str, dict] = {
    "gpt2": dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=64),
    "gpt_neox": dict(_COMMON),
    "gptj": dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=64, rotary_dim=4),
    "gpt_neo": dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_layers=LAYERS,
        num_heads=HEADS,
        attention_types=[[["global", "local"], 1], [["global"], 1]],
        max_position_embeddings=64,
        window_size=8,
    ),
    "opt": dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        ffn_dim=64,
        max_position_embeddings=64,
        word_embed_proj_dim=HIDDEN,
    ),
    "bloom": dict(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS),
    "llama": dict(_COMMON, num_key_value_heads=2),
    "mistral": dict(_COMMON, num_key_value_heads=2),
    "mixtral": dict(_COMMON, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
    "gemma": dict(_COMMON, num_key_value_heads=2, head_dim=8),
    "gemma2": dict(
        _COMMON,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=5.0,
        attn_logit_softcapping=50.0,
        sliding_window=16,
    ),
    "gemma3_text": dict(_COMMON, num_key_value_heads=2, head_dim=8, final_logit_softcapping=5.0, sliding_window=16),
    "qwen2": dict(_COMMON, num_key_value_heads=2),
    "qwen3": dict(_COMMON, num_key_value_heads=2, head_dim=8),
    "phi3": dict(_COMMON, num_key_value_heads=2),
    "olmo2": dict(_COMMON, num_key_value_heads=2),
    "falcon": dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        new_decoder_architecture=True,
        num_kv_heads=2,
    ),
    "stablelm": dict(_COMMON, num_key_value_heads=2),
    "starcoder2": dict(_COMMON, num_key_value_heads=2),
}


# In-vocabulary special tokens (the real ones lie outside the tiny vocabulary and make transformers warn).
_SPECIAL = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)


def tiny_config(family: str, **overrides) -> PretrainedConfig:
    """The tiny config of ``family`` with ``overrides`` applied."""
    return CONFIG_MAPPING[family](**{**_SPECIAL, **FAMILIES[family], **overrides})


def tiny_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> torch.nn.Module:
    """A tiny random model of ``family`` in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), dtype=dtype)
    return model.eval()
