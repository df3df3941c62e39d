"""Fingerprints of a model's unembedding (final norm + output embedding).

A lens is only meaningful on the model it was trained for, so a lens records a fingerprint of that model's
unembedding and the loader compares it with the model at hand. Requirements:

* the same weights held in fp32, bf16 or fp16 must match, so no exact hash of the bytes;
* a different init, a different checkpoint of the same architecture or a resized vocabulary must not match.

Each tensor T (viewed as a matrix R x C) is summarised by k random projections
``s_j = sum_{r,c} a_j(r) T[r, c] b_j(c)`` with pseudo-random signs a, b derived from an integer hash of the index
(so no RNG stream whose output could change between library versions). Casting to a lower precision perturbs each
element by a relative error of at most 2^-8 (bf16), which moves the sketch by at most ~0.25% of its norm, while an
unrelated matrix moves it by ~140%, and a fine-tuned checkpoint by the relative size of the update. Two sketches
match when their distance is under ``TOLERANCE`` of their norm, and shapes must be equal.

The string form is ``lhfp1;<name>=<shape>:<base64 fp32 sketch>;...`` so it can be stored in JSON and YAML.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping

import torch

VERSION = "lhfp1"
NUM_PROJECTIONS = 16
TOLERANCE = 5e-3  # relative L2 distance; bf16 rounding gives <= ~2.5e-3, see the module docstring
_ROWS_PER_CHUNK = 4096
_MASK = 0xFFFFFFFF


def _signs(start: int, stop: int, salt: int) -> torch.Tensor:
    """Rademacher signs for indices [start, stop) x projections, float64, shape (stop - start, k)."""
    i = torch.arange(start, stop, dtype=torch.int64).unsqueeze(1)
    j = torch.arange(NUM_PROJECTIONS, dtype=torch.int64).unsqueeze(0)
    x = (i * 2654435761 + j * 40503 + salt) & _MASK
    for _ in range(2):  # integer avalanche: neighbouring indices get independent-looking bits
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK
    x = x ^ (x >> 16)
    return (1 - 2 * (x & 1)).to(torch.float64)


def sketch(tensor: torch.Tensor) -> list[float]:
    """Random-projection sketch of a tensor, computed in float64 on the CPU, chunk by chunk."""
    if tensor.device.type == "meta":
        raise ValueError("Cannot fingerprint a tensor on the meta device; load the model's weights first.")
    matrix = tensor.detach().reshape(-1, tensor.shape[-1]) if tensor.dim() > 0 else tensor.detach().reshape(1, 1)
    rows, cols = matrix.shape
    col_signs = _signs(0, cols, salt=0x5BD1E995)
    total = torch.zeros(NUM_PROJECTIONS, dtype=torch.float64)
    for start in range(0, rows, _ROWS_PER_CHUNK):
        stop = min(rows, start + _ROWS_PER_CHUNK)
        chunk = matrix[start:stop].to(device="cpu", dtype=torch.float64)
        total += ((chunk @ col_signs) * _signs(start, stop, salt=0x27D4EB2F)).sum(0)
    # Normalise by sqrt(numel) so values stay O(weight scale) whatever the size.
    return (total / math.sqrt(matrix.numel())).tolist()


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """Fingerprint a set of named tensors (the order of names does not matter)."""
    parts = [VERSION]
    for name in sorted(tensors):
        tensor = tensors[name]
        shape = "x".join(str(s) for s in tensor.shape) or "scalar"
        packed = struct.pack(f"<{NUM_PROJECTIONS}f", *sketch(tensor))
        parts.append(f"{name}={shape}:{base64.b64encode(packed).decode('ascii')}")
    return ";".join(parts)


def parse_fingerprint(fingerprint: str) -> dict[str, tuple[str, list[float]]]:
    """Parse a fingerprint string into ``{name: (shape, sketch)}``.

    Raises:
        ValueError: If the string is not a fingerprint of a known version.
    """
    version, *items = fingerprint.split(";")
    if version != VERSION:
        raise ValueError(f"unknown fingerprint version {version!r} (this lens-hub reads {VERSION!r})")
    parsed: dict[str, tuple[str, list[float]]] = {}
    for item in items:
        try:
            name, rest = item.split("=", 1)
            shape, encoded = rest.split(":", 1)
            values = list(struct.unpack(f"<{NUM_PROJECTIONS}f", base64.b64decode(encoded, validate=True)))
        except (ValueError, struct.error) as exc:
            raise ValueError(f"malformed fingerprint component {item[:40]!r}: {exc}") from None
        parsed[name] = (shape, values)
    return parsed


def compare_fingerprints(expected: str, actual: str) -> list[str]:
    """Compare two fingerprints; return one line per differing component (empty when they match)."""
    want, have = parse_fingerprint(expected), parse_fingerprint(actual)
    problems = []
    for name in sorted(set(want) | set(have)):
        if name not in have:
            problems.append(f"the model has no {name} (the lens was trained with one)")
        elif name not in want:
            problems.append(f"the model has an extra {name} the lens was not trained with")
        elif want[name][0] != have[name][0]:
            problems.append(f"{name} has shape {have[name][0]} but the lens expects {want[name][0]}")
        else:
            a, b = want[name][1], have[name][1]
            dist = math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))
            scale = max(math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b)))
            if dist > TOLERANCE * scale + 1e-12:
                problems.append(f"{name} holds different weights (relative distance {dist / scale:.3g})")
    return problems
