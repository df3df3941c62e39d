"""The lens directory format: ``config.json`` + ``lens.safetensors``, nothing pickled.

Tensors are named ``translators.{i}.weight`` ([d, d], acting as ``h @ W.T``) and ``translators.{i}.bias`` ([d]).
Files are written to a temporary name and renamed into place, config last, so an interrupted save never leaves a
directory that looks complete but is not.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import CONFIG_NAME, WEIGHTS_NAME, LensConfig
from .errors import LensFormatError

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype) -> str:
    """The config name of a torch dtype (``torch.float16`` -> ``"float16"``)."""
    for name, value in TORCH_DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported lens dtype {dtype}; use one of {', '.join(TORCH_DTYPES)}")


def expected_shapes(config: LensConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a lens with this config must hold, with its shape."""
    d = config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(config.num_layers):
        shapes[f"translators.{i}.weight"] = (d, d)
        if config.bias:
            shapes[f"translators.{i}.bias"] = (d,)
    return shapes


def _atomic_write(path: Path, write: callable) -> None:  # type: ignore[valid-type]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_lens_dir(directory: str | os.PathLike[str], config: LensConfig, tensors: dict[str, torch.Tensor]) -> Path:
    """Write a lens directory; returns its path.

    Raises:
        LensFormatError: If ``tensors`` does not hold exactly the tensors ``config`` describes.
    """
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if shapes != expected_shapes(config):
        raise LensFormatError(
            f"tensors do not match the config: got {sorted(shapes)[:4]}..., expected the layout "
            f"of {config.num_layers} layers of width {config.hidden_size}"
        )
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {"format": "pt", "lens_hub_schema": str(config.schema_version)}
    _atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(cpu, tmp, metadata=metadata))
    text = config.model_dump_json(indent=2) + "\n"
    _atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def read_config(directory: str | os.PathLike[str]) -> LensConfig:
    """Read and validate a lens directory's ``config.json``.

    Raises:
        LensFormatError: If the file is missing, not JSON, from a newer schema, or invalid (naming each field).
    """
    file = Path(directory) / CONFIG_NAME
    if not file.is_file():
        hint = (
            " It looks like an old tuned-lens lens: run `lens-hub convert`."
            if (Path(directory) / "params.pt").exists()
            else ""
        )
        raise LensFormatError(f"{file} does not exist; a lens directory holds {CONFIG_NAME} and {WEIGHTS_NAME}.{hint}")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LensFormatError(f"{file} is not valid JSON: {exc}") from None
    if isinstance(raw, dict) and isinstance(raw.get("schema_version"), int) and raw["schema_version"] > 1:
        raise LensFormatError(f"{file} uses lens schema {raw['schema_version']}; upgrade lens-hub to read it.")
    if isinstance(raw, dict) and "d_model" in raw and "schema_version" not in raw:
        raise LensFormatError(f"{file} is an old tuned-lens config; run `lens-hub convert` on its directory.")
    try:
        return LensConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise LensFormatError(f"{file} is not a valid lens config: {problems}") from None


def read_tensors(directory: str | os.PathLike[str], config: LensConfig) -> dict[str, torch.Tensor]:
    """Read the lens tensors, checking names, shapes and dtype against ``config`` before returning any.

    Raises:
        LensFormatError: If the file is missing, unreadable, or its contents differ from the config.
    """
    file = Path(directory) / WEIGHTS_NAME
    if not file.is_file():
        raise LensFormatError(f"{file} does not exist.")
    expected = expected_shapes(config)
    try:
        with safe_open(str(file), framework="pt") as f:
            names = set(f.keys())
            if names != set(expected):
                missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
                raise LensFormatError(
                    f"{file} does not match its config ({config.num_layers} layers, bias={config.bias}): "
                    f"missing {missing[:5]}, unexpected {extra[:5]}"
                )
            for name, shape in expected.items():
                actual = tuple(f.get_slice(name).get_shape())
                if actual != shape:
                    raise LensFormatError(
                        f"{file}: tensor {name} has shape {list(actual)}, config implies {list(shape)}"
                    )
            tensors = {name: f.get_tensor(name) for name in expected}
    except SafetensorError as exc:
        raise LensFormatError(f"{file} is not a readable safetensors file: {exc}") from None
    want = TORCH_DTYPES[config.dtype]
    for name, tensor in tensors.items():
        if tensor.dtype != want:
            raise LensFormatError(f"{file}: tensor {name} is {tensor.dtype}, config says {config.dtype}")
    return tensors
