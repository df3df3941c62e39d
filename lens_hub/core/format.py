"""The lens directory format: ``config.json`` + ``lens.safetensors``, nothing pickled.

Tensors are named ``translators.{i}.weight`` ([d, d], acting as ``h @ W.T``) and ``translators.{i}.bias`` ([d]).
Files are written to a temporary name and renamed into place, config last, so an interrupted save never leaves a
directory that looks complete but is not. They get the permissions of any file the user creates (``0o666`` less
the umask), not a temporary file's ``0o600``.

Lens files come from strangers, so reading them is bounded before any work proportional to what they declare: a
config is at most `MAX_CONFIG_BYTES`, nested at most `MAX_NESTING` levels, holds no key twice, and declares sizes
within the caps of `lens_hub.core.config`; the weights file must hold exactly the tensors the config describes, checked
from its header before a single tensor is made. Each file is read once, into one buffer no larger than such a file
can be, and what is checked (a checksum, the header) is that buffer, which the tensors are then views of.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from ..errors import LensFormatError
from .config import CONFIG_NAME, MAX_HIDDEN_SIZE, MAX_LAYERS, WEIGHTS_NAME, LensConfig

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# A real config.json is a few kB (with per-layer metrics of a 1024-layer model, some 200 kB).
MAX_CONFIG_BYTES = 4 * 2**20
# A real config or registry file nests 6 levels at most (entry > lenses > version > evaluation > tuned > kl).
MAX_NESTING = 32


def read_text_capped(file: Path, max_bytes: int) -> str:
    """The UTF-8 text of a small file, refusing one larger than ``max_bytes`` before reading it.

    Raises:
        ValueError: The file is too large (the message says how large and the limit).
        OSError, UnicodeDecodeError: As ``Path.read_text``.
    """
    with open(file, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise ValueError(f"is {size:,} bytes, more than the {max_bytes:,} bytes such a file may have")
        data = f.read(max_bytes + 1)  # the file may have grown since fstat
    if len(data) > max_bytes:
        raise ValueError(f"is more than the {max_bytes:,} bytes such a file may have")
    return data.decode("utf-8")


def read_bytes_capped(file: str | os.PathLike[str], max_bytes: int, *, follow_symlinks: bool = True) -> bytes:
    """The bytes of a regular file, read once, refusing a file larger than ``max_bytes`` before reading it.

    What the caller checks (a checksum, a header) is then exactly what it uses, whatever happens to the file
    meanwhile. The file is opened without blocking (a FIFO planted in its place is refused, not waited on) and,
    with ``follow_symlinks=False``, never through a symbolic link.

    Raises:
        ValueError: Not a regular file, larger than ``max_bytes``, or its size changed while it was read.
        OSError: As ``os.open`` (``ELOOP`` for a link when not following them).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(file, flags)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("is not a regular file")
        if info.st_size > max_bytes:
            raise ValueError(f"is {info.st_size:,} bytes, more than the {max_bytes:,} bytes such a file may have")
        data = f.read(info.st_size + 1)
    if len(data) != info.st_size:
        raise ValueError(f"changed size while it was read ({info.st_size:,} bytes when opened); retry")
    return data


def nesting_depth(value: object, limit: int = MAX_NESTING) -> int:
    """How deeply lists and dicts nest in ``value`` (a scalar is 0), counted without recursion.

    Stops counting (and returns ``limit + 1``) as soon as ``limit`` is exceeded, so a hostile structure costs
    nothing more.
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return limit + 1
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            # Parsers disagree on which duplicate wins; another tool could read a different lens than we do.
            raise ValueError(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


def parse_json(text: str) -> object:
    """Parse JSON from a file someone else wrote: duplicate keys and nesting deeper than `MAX_NESTING` are refused.

    Raises:
        ValueError: Naming the problem (invalid JSON with its position, a duplicate key, too deep).
    """
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        # The C decoder gives up at Python's recursion limit; say what it means instead of crashing.
        raise ValueError(f"nests lists or objects more than {MAX_NESTING} levels deep") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON: {exc}") from None
    if nesting_depth(value) > MAX_NESTING:
        raise ValueError(f"nests lists or objects more than {MAX_NESTING} levels deep")
    return value


def text_lines(file: Path, *, records: bool) -> Iterator[tuple[int, object]]:
    """The non-blank lines of a stranger's text file, read one at a time, with their line numbers (from 1).

    Args:
        file: The file.
        records: Parse each line with `parse_json` (a JSON-lines file) instead of yielding its text.

    Raises:
        ValueError: ``"{file}:{n} is not UTF-8 text (...)"`` or ``"{file}:{n} is not a JSON record (...)"``; the
            caller adds how to fix it and raises its own error class.
    """
    with file.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{file}:{n} is not UTF-8 text ({exc.reason})") from None
            if not line.strip():
                continue
            if not records:
                yield n, line.rstrip("\n")
                continue
            try:
                yield n, parse_json(line)
            except ValueError as exc:
                raise ValueError(f"{file}:{n} is not a JSON record ({' '.join(str(exc).split())[:200]})") from None


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as ``field: message (got value)`` items, ``;``-separated (long values are cut short)."""
    problems = []
    for e in exc.errors():
        where = ".".join(map(str, e["loc"])) or "<root>"
        got = e.get("input")
        hidden = e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict | list)
        shown = "" if hidden else f" (got {echo_value(got)})"
        problems.append(f"{where}: {e['msg']}{shown}")
    return "; ".join(problems)


def echo_value(value: object) -> str:
    """A hostile value as an error message may quote it: short numbers and words as they are, anything longer by
    its type and length only (a registry or config file may hold a pasted token; messages end up in CI logs)."""
    text = repr(value)
    if len(text) <= 24:
        return text
    return f"a {type(value).__name__} of {len(value) if isinstance(value, str | bytes) else len(text)} characters"


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (saying how long it was): error messages quote hostile input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def dtype_name(dtype: torch.dtype) -> str:
    """The config name of a torch dtype (``torch.float16`` -> ``"float16"``)."""
    for name, value in TORCH_DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported lens dtype {dtype}; use one of {', '.join(TORCH_DTYPES)}")


def expected_shapes(config: LensConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a lens with this config must hold, with its shape.

    Raises:
        LensFormatError: The config declares more layers or a wider lens than lens-hub accepts (a config built
            with ``model_construct`` skips validation; this is the last line before work proportional to it).
    """
    if not 0 < config.num_layers <= MAX_LAYERS or not 0 < config.hidden_size <= MAX_HIDDEN_SIZE:
        raise LensFormatError(
            f"a lens config declares num_layers {config.num_layers} and hidden_size {config.hidden_size}; lens-hub "
            f"accepts at most {MAX_LAYERS} layers of width {MAX_HIDDEN_SIZE}"
        )
    d = config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(config.num_layers):
        shapes[f"translators.{i}.weight"] = (d, d)
        if config.bias:
            shapes[f"translators.{i}.bias"] = (d,)
    return shapes


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Write ``path`` through ``write(temporary_name)``, then rename it into place (a reader never sees half a file).

    The temporary file is created exclusively (never following a planted link) with mode ``0o666``, which the
    kernel reduces by the umask, and that mode is set again after ``write`` (which may replace the file): the
    result has the permissions of any file the user creates, where ``tempfile.mkstemp`` would leave ``0o600`` and
    other users of a shared lens directory could not read it. Nothing is left behind if ``write`` fails.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(f"could not create a temporary file next to {path}")
    try:
        mode = os.fstat(fd).st_mode & 0o777  # 0o666 less the umask, as the kernel applied it
    finally:
        os.close(fd)
    try:
        write(str(tmp))
        os.chmod(tmp, mode)  # the writer may have replaced the file (safetensors writes a fresh 0o600 one)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(cpu, tmp, metadata=metadata))
    text = config.model_dump_json(indent=2) + "\n"
    atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
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
        data = read_bytes_capped(file, MAX_CONFIG_BYTES)
    except ValueError as exc:
        raise _config_error(file, exc) from None
    return parse_config(data, file)


def _config_error(file: Path, exc: ValueError) -> LensFormatError:
    if isinstance(exc, UnicodeDecodeError):
        return LensFormatError(f"{file} is not valid JSON: it is not UTF-8 text ({exc.reason})")
    return LensFormatError(
        f"{file} {exc}. A lens config.json is small, plain JSON as TunedLens.save writes it; re-create it (or run "
        "`lens-hub convert` on an old tuned-lens lens)."
    )


def parse_config(data: bytes, file: Path) -> LensConfig:
    """Validate a lens config from the bytes of its file, read once by the caller (`read_config` reads them; a Hub
    download is read and checked against its checksum first). ``file`` names it in messages.

    Raises:
        LensFormatError: As `read_config`.
    """
    try:
        if len(data) > MAX_CONFIG_BYTES:
            raise ValueError(f"is {len(data):,} bytes, more than the {MAX_CONFIG_BYTES:,} bytes such a file may have")
        raw = parse_json(data.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError included
        raise _config_error(file, exc) from None
    if isinstance(raw, dict) and isinstance(raw.get("schema_version"), int) and raw["schema_version"] > 1:
        raise LensFormatError(f"{file} uses lens schema {raw['schema_version']}; upgrade lens-hub to read it.")
    if isinstance(raw, dict) and "d_model" in raw and "schema_version" not in raw:
        raise LensFormatError(f"{file} is an old tuned-lens config; run `lens-hub convert` on its directory.")
    if not isinstance(raw, dict):
        raise LensFormatError(f"{file} must hold a JSON object (the lens config), not {type(raw).__name__}.")
    try:
        return LensConfig.model_validate(raw)
    except ValidationError as exc:
        raise LensFormatError(f"{file} is not a valid lens config: {validation_problems(exc)}") from None


def read_tensors(directory: str | os.PathLike[str], config: LensConfig) -> dict[str, torch.Tensor]:
    """Read the lens tensors, checking names, shapes and dtype against ``config`` before returning any.

    The file is read once, into memory, refused first if it is larger than a lens of this config can be
    (`lens_file_bytes`); `tensors_from_bytes` checks the bytes read and returns views of them.

    Raises:
        LensFormatError: If the file is missing, unreadable, or its contents differ from the config.
    """
    file = Path(directory) / WEIGHTS_NAME
    if not file.is_file():
        raise LensFormatError(f"{file} does not exist.")
    bound = lens_file_bytes(config)
    try:
        data = read_bytes_capped(file, bound)
    except ValueError as exc:
        raise LensFormatError(
            f"{file} {exc}: the tensors of {config.num_layers} layers of width {config.hidden_size} in "
            f"{config.dtype} and a header. The file does not hold this config's lens; re-create it."
        ) from None
    return tensors_from_bytes(data, config, file)


def lens_file_bytes(config: LensConfig) -> int:
    """The most bytes the weights file of a lens with this config can have: its tensors and the largest header."""
    numel = sum(math.prod(shape) for shape in expected_shapes(config).values())
    return 8 + MAX_HEADER_BYTES + numel * TORCH_DTYPES[config.dtype].itemsize


def tensors_from_bytes(data: bytes, config: LensConfig, file: Path) -> dict[str, torch.Tensor]:
    """The lens tensors in the bytes of a safetensors file, checked against ``config``.

    ``data`` is the file as read once by the caller (`read_tensors` reads it; a Hub download is read and checked
    against its checksum first), and ``file`` names it in messages. A header larger than any lens needs is refused
    before it is parsed; safetensors' own parser then checks the layout, and the names, shapes and dtypes must be
    exactly the config's before any tensor is returned. The file's size is bounded by the caller
    (`lens_file_bytes`), so parsing it whole costs no more memory than the lens itself.

    Raises:
        LensFormatError: The bytes are not a safetensors file, or not this config's lens.
    """
    expected = expected_shapes(config)
    want = TORCH_DTYPES[config.dtype]
    _check_header_length(data, file)
    try:
        tensors = load_safetensors(data)
    except SafetensorError as exc:
        raise LensFormatError(f"{file} is not a readable safetensors file: {exc}") from None
    names = set(tensors)
    if names != set(expected):
        missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
        raise LensFormatError(
            f"{file} does not match its config ({config.num_layers} layers, bias={config.bias}): "
            f"missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, shape in expected.items():
        actual = tuple(tensors[name].shape)
        if actual != shape:
            raise LensFormatError(f"{file}: tensor {name} has shape {list(actual)}, config implies {list(shape)}")
        if tensors[name].dtype != want:
            raise LensFormatError(f"{file}: tensor {name} is {tensors[name].dtype}, config says {config.dtype}")
    return tensors


def _check_header_length(data: bytes, file: Path) -> None:
    """Refuse a safetensors file whose declared header is larger than any lens needs, before it is parsed."""
    declared = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if declared > MAX_HEADER_BYTES:
        raise LensFormatError(
            f"{file} declares a {declared:,}-byte safetensors header; a lens's header is at most "
            f"{MAX_HEADER_BYTES:,} bytes. The file is not a lens written by lens-hub; re-create it."
        )


def declared_shape(raw: dict, where: str) -> tuple[int, int]:
    """The hidden size and layer count a config declares (lens-hub's or tuned-lens's keys), checked and capped.

    Raises:
        LensFormatError: Missing, not positive integers, or beyond lens-hub's caps.
    """
    shape = []
    for keys, cap in ((("hidden_size", "d_model"), MAX_HIDDEN_SIZE), (("num_layers", "num_hidden_layers"), MAX_LAYERS)):
        value = next((raw[k] for k in keys if k in raw), None)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= cap:
            raise LensFormatError(
                f"{where}: {keys[0]} must be a positive integer of at most {cap:,}, not {short_repr(value, 30)}."
            )
        shape.append(value)
    return shape[0], shape[1]


def max_weights_bytes(hidden_size: int, num_layers: int) -> int:
    """The most bytes a lens's weights file may have for this shape, in either format (for bounding downloads).

    ``num_layers`` translators of ``d x d + d`` values in the widest dtype a file could claim (8 bytes), plus the
    largest header lens-hub reads (`MAX_HEADER_BYTES`; a ``params.pt`` needs far less around its tensors).
    """
    return num_layers * (hidden_size * hidden_size + hidden_size) * 8 + MAX_HEADER_BYTES + 8


# The dtype names of a safetensors header, as torch dtypes (for the messages).
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
# The JSON header of a lens's safetensors file: about 100 bytes per tensor, so some 200 kB for 1024 layers.
MAX_HEADER_BYTES = 4 * 2**20


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """One description per tensor holding NaN or infinite values (``"translators.1.weight (1 NaN, 0 inf)"``).

    A non-finite translator weight turns every logit of its layer into NaN, so lens-hub refuses such tensors
    wherever a lens enters or leaves: loading, publishing, and resuming training.
    """
    found = []
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        # One pass, no temporary: a NaN or an inf makes the sum non-finite. A finite sum proves the tensor finite;
        # a sum that overflowed proves nothing, so the exact count below decides.
        wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        if bool(torch.isfinite(tensor.sum(dtype=wide))):
            continue
        nan = int(torch.isnan(tensor).sum())
        inf = int(torch.isinf(tensor).sum())
        if nan or inf:
            found.append(f"{name} ({nan} NaN, {inf} inf)")
    return found
