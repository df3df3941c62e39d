"""Training checkpoints without pickle: lens + optimizer tensors in safetensors, everything else in JSON.

A checkpoint directory ``step-000050/`` holds ``lens.safetensors``, ``optimizer.safetensors`` (every optimizer
state tensor, named ``{param_index}.{key}``) and ``state.json`` (step, scheduler, optimizer hyperparameters and
scalars, the run's settings). ``state.json`` is written last, so a directory without it is an interrupted write and
is ignored. The frozen model weights are never saved.

No RNG state is saved: the data order comes from a seeded generator and nothing else in a run draws random numbers
(the model is in eval mode, the lens has no dropout). Checkpoints of earlier versions also hold an
``rng.safetensors``; it is ignored.
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
    settings: dict[str, Any]


def split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into its tensors (named ``{param_index}.{key}``) and JSON-able rest.

    `join_optimizer_state` is the inverse. The tensors are detached but stay on their device.
    """
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The optimizer ``state_dict`` that `split_optimizer_state` split into ``tensors`` and ``meta``."""
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = value
    return {"state": per_param, "param_groups": meta["param_groups"]}


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors as safetensors writes them: detached, on the CPU, contiguous."""
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


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
    save_file(_cpu(lens), tmp / "lens.safetensors")
    opt_tensors, opt_meta = split_optimizer_state(optimizer)
    save_file(_cpu(opt_tensors), tmp / "optimizer.safetensors")
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
    """Read a checkpoint directory (tensors on the CPU).

    Raises:
        CheckpointError: A file is missing or unreadable.
    """
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        opt_tensors = load_file(path / "optimizer.safetensors")
        lens = load_file(path / "lens.safetensors")
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({exc}); delete it to start from the previous one."
        ) from None
    optimizer = join_optimizer_state(opt_tensors, state["optimizer"])
    return Checkpoint(state["step"], lens, optimizer, state["scheduler"], state["settings"])
