"""Training checkpoints without pickle: lens + optimizer tensors in safetensors, everything else in JSON.

A checkpoint directory ``step-000050/`` holds ``lens.safetensors``, ``optimizer.safetensors`` (every optimizer
state tensor, named ``{param_index}.{key}``), ``rng.safetensors`` (RNG states as uint8 tensors) and ``state.json``
(step, scheduler, optimizer hyperparameters, data position, the run's settings). ``state.json`` is written last, so
a directory without it is an interrupted write and is ignored. The frozen model weights are never saved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import LensHubError

_STEP_DIR = re.compile(r"^step-(\d{6,})$")


class CheckpointError(LensHubError):
    """A checkpoint is unreadable or belongs to a run with different settings."""


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    step: int
    lens: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, torch.Tensor]
    settings: dict[str, Any]


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, meta = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                meta[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": meta}


def save_checkpoint(
    root: Path,
    step: int,
    lens: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    settings: dict[str, Any],
    keep: int,
) -> Path:
    """Write a checkpoint for ``step`` and delete all but the newest ``keep``."""
    target = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in lens.items()}, tmp / "lens.safetensors")
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    save_file(rng, tmp / "rng.safetensors")
    state = {"step": step, "optimizer": opt_meta, "scheduler": scheduler, "settings": settings}
    (tmp / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint directory."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        opt_tensors = load_file(path / "optimizer.safetensors")
        lens = load_file(path / "lens.safetensors")
        rng = load_file(path / "rng.safetensors")
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({exc}); delete it to start from the previous one."
        ) from None
    per_param: dict[int, dict[str, Any]] = {}
    for name, tensor in opt_tensors.items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = tensor
    for name, value in state["optimizer"]["scalars"].items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = value
    optimizer = {"state": per_param, "param_groups": state["optimizer"]["param_groups"]}
    return Checkpoint(state["step"], lens, optimizer, state["scheduler"], rng, state["settings"])
