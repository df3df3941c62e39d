"""Import of lenses made by the old ``tuned-lens`` package (``config.json`` + pickled ``params.pt``).

``params.pt`` is a pickle, so it is read only with ``torch.load(weights_only=True)``, which refuses anything but
tensors and plain containers; the result must then be exactly a state dict of ``{i}.weight`` / ``{i}.bias``
tensors. Nothing else is ever unpickled.

Both files come from strangers, so nothing proportional to what they declare is built before it is bounded: the
config's ``d_model`` and ``num_hidden_layers`` are capped (`lens_hub.core.config.MAX_HIDDEN_SIZE`, ``MAX_LAYERS``), and
``params.pt`` must be a ``torch.save`` zip archive whose records, by the sizes its directory declares, hold no more
than the config's tensors need and no more than the file could decompress to honestly (a zip bomb is refused
before ``torch.load`` allocates anything).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from ..errors import LegacyFormatError
from .adapters import ArchitectureSpec, ModelParts, find_model_parts
from .compat import check_compatibility
from .config import MAX_HIDDEN_SIZE, MAX_LAYERS, LensConfig
from .format import (
    MAX_CONFIG_BYTES,
    TORCH_DTYPES,
    dtype_name,
    parse_json,
    read_text_capped,
    short_repr,
    validation_problems,
    write_lens_dir,
)
from .lens import BaseTunedLens

logger = logging.getLogger(__name__)

LEGACY_CONFIG = "config.json"
LEGACY_PARAMS = "params.pt"
_KNOWN_KEYS = {
    "base_model_name_or_path",
    "d_model",
    "num_hidden_layers",
    "bias",
    "base_model_revision",
    "unembed_hash",
    "unemebd_hash",  # sic: old files misspell it
    "lens_type",
}


# Room in params.pt beyond the tensors' bytes: the pickle (about 100 bytes per tensor) and torch's small records.
_PARAMS_SLACK_BYTES = 2**20
# torch.save stores records uncompressed; a record may still be deflated, but never by more than this honestly.
_MAX_COMPRESSION_RATIO = 8
_LIMITS = {"d_model": MAX_HIDDEN_SIZE, "num_hidden_layers": MAX_LAYERS}


def _read_legacy_config(src: Path) -> dict:
    file = src / LEGACY_CONFIG
    try:
        raw = parse_json(read_text_capped(file, MAX_CONFIG_BYTES))
    except FileNotFoundError:
        raise LegacyFormatError(
            f"{file} does not exist; an old tuned-lens lens holds {LEGACY_CONFIG} and {LEGACY_PARAMS}."
        ) from None
    except UnicodeDecodeError as exc:
        raise LegacyFormatError(f"{file} is not valid JSON: it is not UTF-8 text ({exc.reason})") from None
    except ValueError as exc:
        raise LegacyFormatError(
            f"{file} {exc}. An old tuned-lens config.json is a small flat JSON object (d_model, "
            "num_hidden_layers, ...)."
        ) from None
    if not isinstance(raw, dict):
        raise LegacyFormatError(f"{file} must hold a JSON object, not {type(raw).__name__}.")
    if "schema_version" in raw:
        raise LegacyFormatError(f"{src} is already a lens-hub lens; load it with TunedLens.load.")
    for key, limit in _LIMITS.items():
        if not isinstance(raw.get(key), int) or isinstance(raw.get(key), bool) or raw[key] <= 0:
            raise LegacyFormatError(f"{file}: {key} must be a positive integer, got {raw.get(key)!r}.")
        if raw[key] > limit:
            raise LegacyFormatError(
                f"{file}: {key} is {raw[key]:,}, more than lens-hub accepts ({limit:,}, far beyond any real model); "
                "the file is corrupt or hostile and was not converted."
            )
    lens_type = raw.get("lens_type", "linear_tuned_lens")
    if lens_type != "linear_tuned_lens":
        raise LegacyFormatError(f"{file}: lens_type {lens_type!r} is not supported (only 'linear_tuned_lens').")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        logger.info("ignoring unknown keys in %s: %s", file, ", ".join(unknown))
    return raw


_SAFE_CONVERSION = (
    "To convert such a file, load it yourself only if you trust its author, in a throw-away environment, keep "
    "nothing but its tensors (a dict of '{i}.weight' / '{i}.bias'), torch.save that dict and run `lens-hub convert` "
    "on the result."
)


def _check_params_archive(file: Path, d: int, num_layers: int) -> None:
    """Refuse a ``params.pt`` that could make ``torch.load`` allocate more than the config's tensors need.

    ``torch.load`` allocates each record at the size the zip directory declares, before decompressing it, so the
    declared sizes are checked here: in total at most what ``num_layers`` translators of width ``d`` take in
    float32 (plus room for the pickle), and at most `_MAX_COMPRESSION_RATIO` times what is stored in the file.
    """
    try:
        with zipfile.ZipFile(file) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        # Only the zip format (torch >= 1.6, so every tuned-lens release) declares its sizes before loading.
        raise LegacyFormatError(
            f"{file} was refused: it is not a torch.save zip archive ({exc}), the format of every tuned-lens "
            "release, so its sizes cannot be checked before loading. lens-hub reads params.pt only with "
            "torch.load(weights_only=True) and never unpickles arbitrary objects. Re-save it with torch.save "
            "(torch >= 1.6)."
        ) from None
    needed = num_layers * (d * d + d) * 4 + _PARAMS_SLACK_BYTES  # float32: the widest dtype accepted
    declared = sum(r.file_size for r in records)
    stored = min(sum(r.compress_size for r in records), file.stat().st_size)  # compress_size is declared too
    if declared > needed or declared > _MAX_COMPRESSION_RATIO * stored + _PARAMS_SLACK_BYTES:
        biggest = max(records, key=lambda r: r.file_size)
        raise LegacyFormatError(
            f"{file} was refused before loading: its records declare {declared:,} bytes ({biggest.filename!r} "
            f"alone {biggest.file_size:,} bytes, stored in {biggest.compress_size:,}), but {num_layers} translators "
            f"of width {d} need at most {needed:,} bytes. It is corrupt, a zip bomb, or not this config's lens."
        )


def _read_legacy_params(src: Path, d: int, num_layers: int) -> tuple[dict[str, torch.Tensor], bool]:
    file = src / LEGACY_PARAMS
    if not file.is_file():
        raise LegacyFormatError(f"{file} does not exist.")
    _check_params_archive(file, d, num_layers)
    try:
        with warnings.catch_warnings():  # torch's remark on foreign pickle protocols adds nothing to our refusal
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message suggests weights_only=False, i.e. running the file's code: never repeat that advice.
        found = _refused_global(str(exc))
        raise LegacyFormatError(
            f"{file} was refused: it holds code or objects other than tensors{found}, which "
            "torch.load(weights_only=True) does not load and lens-hub never unpickles. " + _SAFE_CONVERSION
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LegacyFormatError(
            f"{file} was refused: torch.load(weights_only=True) cannot read it as a plain tensor state dict "
            f"({type(exc).__name__}: {first[:200]}). lens-hub never unpickles arbitrary objects."
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise LegacyFormatError(f"{file} must hold a dict of tensors, got {type(state).__name__}.")
    for key, tensor in state.items():
        problem = _unbacked(tensor)
        if problem:
            raise LegacyFormatError(
                f"{file}: tensor {short_repr(key, 40)} {problem}; only plain dense tensors that hold their own values "
                "are read (nothing was converted)."
            )
    # Some versions prefixed the keys with the ModuleList's name.
    state = {k.removeprefix("layer_translators."): v for k, v in state.items()}
    has_bias = any(k.endswith(".bias") for k in state)
    expected = {f"{i}.weight": (d, d) for i in range(num_layers)}
    if has_bias:
        expected |= {f"{i}.bias": (d,) for i in range(num_layers)}
    if set(state) != set(expected):
        raise LegacyFormatError(
            f"{file} does not match its config (d_model={d}, num_hidden_layers={num_layers}): "
            f"{_describe_keys(state, num_layers)}."
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise LegacyFormatError(f"{file}: {key} has shape {list(state[key].shape)}, expected {list(shape)}.")
        if state[key].dtype not in TORCH_DTYPES.values():
            raise LegacyFormatError(f"{file}: {key} has unsupported dtype {state[key].dtype}.")
    return state, has_bias


def _unbacked(tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` is not a plain dense tensor backed by its own values (None: it is), checked before any copy.

    ``torch.load(weights_only=True)`` accepts views: a 3 kB file can hold ``zeros(1).expand(8192, 8192)``, whose
    storage is one value but whose copy (any conversion) is 256 MiB; and meta, sparse or quantized tensors, which
    are not weights at all.
    """
    if tensor.is_meta or tensor.device.type == "meta":
        return "is a meta tensor (no values)"
    if tensor.layout != torch.strided:
        return f"is a {str(tensor.layout).removeprefix('torch.')} tensor, not a dense one"
    if tensor.is_quantized:
        return "is a quantized tensor"
    needed = tensor.numel() * tensor.element_size()
    available = tensor.untyped_storage().nbytes() - tensor.storage_offset() * tensor.element_size()
    repeated = any(stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape, strict=True))
    if available < needed or repeated:
        return (
            f"is a view of {max(available, 0):,} bytes presenting {needed:,} bytes (strides {list(tensor.stride())}): "
            "it would be inflated on conversion"
        )
    return None


def _describe_keys(state: Mapping[str, torch.Tensor], num_layers: int) -> str:
    """``missing [...], unexpected [...]`` for a state dict against the layout of ``num_layers`` translators."""
    has_bias = any(k.endswith(".bias") for k in state)
    expected = {f"{i}.weight" for i in range(num_layers)}
    if has_bias:
        expected |= {f"{i}.bias" for i in range(num_layers)}
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    return f"missing {missing[:5]}, unexpected {extra[:5]}"


def _refused_global(message: str) -> str:
    """`` (it asks for posix.system)`` from torch's refusal message, or ``""``: what the pickle wanted to load.

    Only that name is kept: the rest of torch's message advises ``weights_only=False``, i.e. running the file.
    """
    match = re.search(r"GLOBAL ([A-Za-z0-9_.]{1,100})", message)
    return f" (it asks for {match.group(1)})" if match else ""


def _convert(
    src: str | os.PathLike[str],
    model: nn.Module | None,
    base_model: str | None,
    architecture: ArchitectureSpec | None,
    known_facts: Mapping[str, object] | None = None,
) -> tuple[LensConfig, dict[str, torch.Tensor], ModelParts | None]:
    """Read an old lens; when ``model`` is given, record its facts and check the lens fits it."""
    path = Path(src)
    raw = _read_legacy_config(path)
    d, num_layers = raw["d_model"], raw["num_hidden_layers"]
    for key, value in (("hidden_size", d), ("num_layers", num_layers)):  # before params.pt is read at all
        known = (known_facts or {}).get(key)
        if known is not None and known != value:
            raise LegacyFormatError(
                f"{path / LEGACY_CONFIG}: declares {key} {value}, but the registry entry says {known}; params.pt was "
                "not read. The files do not belong to this entry: report it."
            )
    params, has_bias = _read_legacy_params(path, d, num_layers)
    if raw.get("bias") is not None and bool(raw["bias"]) != has_bias:
        logger.warning(
            "%s says bias=%s but params.pt %s bias tensors; trusting params.pt",
            path / LEGACY_CONFIG,
            raw["bias"],
            "holds" if has_bias else "has no",
        )
    # Upcast to fp32: lossless, and the old package computed its translators in fp32 whatever the file held.
    dtype = torch.float32

    name = base_model or raw.get("base_model_name_or_path")
    if name and not base_model and (os.path.isabs(name) or name.startswith((".", "~"))):
        logger.warning("the old config names a local path (%s) as base model; pass base_model='org/name'", name)
        name = None
    facts: dict = {k: (known_facts or {}).get(k) for k in ("model_type", "vocab_size", "fingerprint")}
    parts = find_model_parts(model, architecture) if model is not None else None
    if parts is not None:
        facts = {
            "model_type": parts.model_type,
            "vocab_size": parts.vocab_size,
            "fingerprint": parts.fingerprint,
        }
    try:
        config = LensConfig(
            base_model=name,
            base_revision=raw.get("base_model_revision") or None,
            hidden_size=d,
            num_layers=num_layers,
            bias=has_bias,
            dtype=dtype_name(dtype),
            **facts,
        )
    except ValidationError as exc:
        raise LegacyFormatError(f"{path}: cannot convert: {validation_problems(exc)}") from None
    if parts is not None:
        check_compatibility(config, parts)
    tensors = {f"translators.{k}": v.to(dtype) for k, v in params.items()}
    return config, tensors, parts


def convert_legacy(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    base_model: str | None = None,
    architecture: ArchitectureSpec | None = None,
    known_facts: Mapping[str, object] | None = None,
) -> LensConfig:
    """Convert an old ``tuned-lens`` lens directory into a lens-hub directory.

    Args:
        src: Directory with the old ``config.json`` and ``params.pt``.
        dst: Output directory (``config.json`` + ``lens.safetensors``).
        model: The base model, if at hand: its model_type, vocabulary size and unembedding fingerprint are then
            recorded (and its hidden size and layer count checked), so later loads are fully verified.
        base_model: Hub id of the base model, overriding the old config's (which may be a local path).
        architecture: Explicit module paths for ``model``, if the built-in probes do not cover it.
        known_facts: ``model_type`` / ``vocab_size`` / ``fingerprint`` to record when no ``model`` is given
            (e.g. from a registry entry).

    Returns:
        The written config.

    Raises:
        LegacyFormatError: The old lens is malformed or ``params.pt`` is not a plain tensor state dict.
        IncompatibleLensError: ``model`` is given and the lens does not fit it.
    """
    config, tensors, _ = _convert(src, model, base_model, architecture, known_facts)
    write_lens_dir(dst, config, tensors)
    return config


def load_legacy_lens(
    src: str | os.PathLike[str],
    model: nn.Module,
    *,
    base_model: str | None = None,
    architecture: ArchitectureSpec | None = None,
) -> BaseTunedLens:
    """Load an old ``tuned-lens`` lens directly onto ``model`` (converted in memory, nothing written)."""
    config, tensors, parts = _convert(src, model, base_model, architecture)
    assert parts is not None
    lens = BaseTunedLens(parts, config)
    lens.load_state_dict(tensors)
    return lens


def export_legacy(lens: BaseTunedLens, dst: str | os.PathLike[str]) -> Path:
    """Write ``lens`` in the old ``tuned-lens`` format (``config.json`` + ``params.pt``), for tools that need it.

    ``params.pt`` is written with ``torch.save`` of a plain tensor dict, so it stays loadable with
    ``torch.load(weights_only=True)``.
    """
    path = Path(dst)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "base_model_name_or_path": lens.config.base_model,
        "d_model": lens.config.hidden_size,
        "num_hidden_layers": lens.config.num_layers,
        "bias": lens.config.bias,
        "base_model_revision": lens.config.base_revision,
        "lens_type": "linear_tuned_lens",
    }
    state = {k.removeprefix("translators."): v.detach().cpu().contiguous() for k, v in lens.state_dict().items()}
    torch.save(state, path / LEGACY_PARAMS)
    (path / LEGACY_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path
