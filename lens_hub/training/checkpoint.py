"""Training checkpoints without pickle: lens + optimizer tensors in safetensors, everything else in JSON.

A checkpoint directory ``step-000050/`` holds ``lens.safetensors``, ``optimizer.safetensors`` (every optimizer
state tensor, named ``{param_index}.{key}``) and ``state.json`` (step, scheduler, optimizer hyperparameters and
scalars, the run's settings). ``state.json`` is written last, so a directory without it is an interrupted write and
is ignored. The frozen model weights are never saved.

No RNG state is saved: the data order comes from a seeded generator and nothing else in a run draws random numbers
(the model is in eval mode, the lens has no dropout). Checkpoints of earlier versions also hold an
``rng.safetensors``; it is ignored.

A checkpoint is read as untrusted input: `load_checkpoint` refuses unreadable files, a ``state.json`` of the wrong
shape and non-finite tensors, and `check_resumable` refuses one that the run cannot continue exactly (other tensor
names, shapes or dtypes, other optimizer hyperparameters, a learning rate or scheduler state that is not the
schedule's at that step). Every refusal is a `CheckpointError` naming the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..core.format import nonfinite_tensors, parse_json, read_text_capped, short_repr
from ..errors import CheckpointError

_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_STATE_NAME = re.compile(r"(\d+)\.([A-Za-z_]\w*)")  # optimizer state entries: "{param_index}.{key}"
_FIX = "delete it to resume from the previous checkpoint, or start afresh (--restart; in Python, restart(out))"
MAX_STATE_BYTES = 16 * 2**20  # state.json holds settings, step counts and optimizer scalars: a few kB


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    step: int
    lens: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    settings: dict[str, Any]
    path: Path | None = None  # the directory it was read from (None: received from rank 0)


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


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of one checkpoint safetensors file, refused if unreadable or non-finite."""
    try:
        tensors = load_file(file)
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"checkpoint file {file} is unreadable ({exc}); {_FIX}.") from None
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(
            f"checkpoint file {file}: tensor {bad[0]} holds non-finite values"
            f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}, so the run diverged or the file was "
            f"altered; {_FIX}."
        )
    return tensors


def _read_state(path: Path) -> dict[str, Any]:
    """``state.json``, checked for the fields and types every checkpoint has."""
    file = path / "state.json"
    try:  # capped like any file lens-hub did not just write: size, nesting depth, duplicate keys
        state = parse_json(read_text_capped(file, MAX_STATE_BYTES))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"checkpoint file {file} is unreadable ({why}); {_FIX}.") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint file {file} must hold a JSON object, not {type(state).__name__}; {_FIX}.")
    missing = [k for k in ("step", "optimizer", "scheduler", "settings") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint file {file} lacks {', '.join(missing)}; {_FIX}.")
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"checkpoint file {file}: step must be a whole number >= 0, not {step!r}; {_FIX}.")
    named = _STEP_DIR.match(path.name)
    if named and int(named.group(1)) != step:
        raise CheckpointError(f"checkpoint file {file}: step is {step} but the directory is {path.name}; {_FIX}.")
    for key in ("optimizer", "scheduler", "settings"):
        if not isinstance(state[key], dict):
            raise CheckpointError(
                f"checkpoint file {file}: {key} must be a JSON object, not {type(state[key]).__name__}; {_FIX}."
            )
    optimizer = state["optimizer"]
    groups, scalars = optimizer.get("param_groups"), optimizer.get("scalars")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups) or not isinstance(scalars, dict):
        raise CheckpointError(
            f"checkpoint file {file}: optimizer must hold param_groups (a list of objects) and scalars (an "
            f"object); {_FIX}."
        )
    bad = sorted(k for k in scalars if not _STATE_NAME.fullmatch(k))
    if bad:
        raise CheckpointError(f"checkpoint file {file}: optimizer.scalars has malformed names {bad[:3]}; {_FIX}.")
    return state


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint directory (tensors on the CPU), refusing anything malformed or non-finite.

    Raises:
        CheckpointError: A file is missing, unreadable or malformed (naming the file and the field), or a tensor
            holds NaN or infinite values (naming the file and the tensor).
    """
    state = _read_state(path)
    opt_tensors = _load_tensors(path / "optimizer.safetensors")
    bad = sorted(k for k in opt_tensors if not _STATE_NAME.fullmatch(k))
    if bad:
        raise CheckpointError(
            f"checkpoint file {path / 'optimizer.safetensors'} has malformed tensor names {bad[:3]} (expected "
            f"'{{param_index}}.{{key}}'); {_FIX}."
        )
    lens = _load_tensors(path / "lens.safetensors")
    optimizer = join_optimizer_state(opt_tensors, state["optimizer"])
    return Checkpoint(state["step"], lens, optimizer, state["scheduler"], state["settings"], path)


# How a user changes each recorded setting: its command-line flag, or what else it is (settings without a flag of
# their own name); the rest are spelled --name-with-dashes.
_SETTING_NAMES = {
    "fit_ridge": "fit_ridge (--ridge)",
    "grad_clip": "grad_clip",
    "bias": "bias",
    "num_sequences": "num_sequences (how much --data there is)",
    "world": "world (processes under torchrun)",
}
_IDENTITY_NAMES = {"model": "the model (its unembedding)", "data": "the training tokens (--data)"}


def _describe_setting(name: str, then: Any, now: Any) -> str:
    """One differing setting, with its flag and both values: ``steps (--steps): 2 in the checkpoint, 4 now``."""
    if name in _IDENTITY_NAMES:  # digests: their values mean nothing to a reader
        return f"{_IDENTITY_NAMES[name]}: not the checkpoint's"
    label = _SETTING_NAMES.get(name, f"{name} (--{name.replace('_', '-')})")

    def value(v: Any) -> str:
        return "not set (the default)" if v is None else short_repr(v, 40)

    return f"{label}: {value(then)} in the checkpoint, {value(now)} now"


def check_same_run(ckpt: Checkpoint, identity: Mapping[str, Any], out: Path) -> None:
    """Refuse a checkpoint written by a run with other settings, model or data than ``identity`` (the new run's).

    Raises:
        CheckpointError: Naming each differing setting with its flag, the checkpoint's value and the new one, and
            the ways on: rerun with the checkpoint's settings, write elsewhere, or discard the checkpoints.
    """
    changed = sorted(k for k in set(identity) | set(ckpt.settings) if identity.get(k) != ckpt.settings.get(k))
    if not changed:
        return
    details = "; ".join(_describe_setting(k, ckpt.settings.get(k), identity.get(k)) for k in changed)
    raise CheckpointError(
        f"{out} holds checkpoints of a run with different settings ({', '.join(changed)}): {details}. To resume "
        "that run, rerun with the checkpoint's settings; to train with the new ones, write to another folder (--out) "
        "or discard the checkpoints (--restart; in Python, restart(out))."
    )


@dataclass(frozen=True)
class ResumeSpec:
    """What a checkpoint must hold for a run to continue from it exactly, as the run computes it for that step.

    Attributes:
        lens: Lens tensor name -> (shape, dtype), as the run's lens has them.
        optimizer_tensors: Optimizer state ``"{param_index}.{key}"`` -> (shape, dtype).
        optimizer_values: Optimizer state entries whose value the step fixes (Adam's step count), tensors or
            plain numbers.
        param_groups: The optimizer's parameter groups at that step (hyperparameters, the schedule's ``lr``).
        scheduler: The learning-rate scheduler's state at that step.
    """

    lens: dict[str, tuple[tuple[int, ...], torch.dtype]]
    optimizer_tensors: dict[str, tuple[tuple[int, ...], torch.dtype]]
    optimizer_values: dict[str, Any]
    param_groups: list[dict[str, Any]]
    scheduler: dict[str, Any]


# Optimizer settings that change the result: a checkpoint must record each of them, with the run's value.
_HYPERPARAMETERS = (
    "lr",
    "initial_lr",
    "momentum",
    "dampening",
    "nesterov",
    "weight_decay",
    "betas",
    "eps",
    "amsgrad",
    "maximize",
)


def _same(a: Any, b: Any) -> bool:
    """JSON-level equality, with floats compared to within rounding (``1e-12`` relative)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def _check_tensors(
    where: Path | str, kind: str, have: Mapping[str, torch.Tensor], want: Mapping[str, tuple[tuple[int, ...], Any]]
) -> None:
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint file {where} does not hold this run's {kind}: missing {missing[:4]}, unexpected "
            f"{extra[:4]}; {_FIX}."
        )
    for name, (shape, dtype) in want.items():
        tensor = have[name]
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"checkpoint file {where}: tensor {name} has shape {list(tensor.shape)}, this run's {kind} needs "
                f"{list(shape)}; {_FIX}."
            )
        if tensor.dtype != dtype:
            raise CheckpointError(
                f"checkpoint file {where}: tensor {name} is {tensor.dtype}, this run's {kind} is {dtype} (the run's "
                f"settings or model dtype changed); {_FIX}."
            )


def check_resumable(ckpt: Checkpoint, spec: ResumeSpec) -> None:
    """Refuse a checkpoint that the run described by ``spec`` cannot continue exactly.

    An edited ``state.json`` (a learning rate of 1e6, other momentum) or tensors of other shapes or dtypes would
    otherwise be loaded silently, or fail deep inside torch.

    Raises:
        CheckpointError: Naming the file and the tensor or field that differs.
    """
    where = ckpt.path or Path(f"step-{ckpt.step:06d}")
    _check_tensors(where / "lens.safetensors", "lens", ckpt.lens, spec.lens)
    tensors, meta = split_optimizer_state(ckpt.optimizer)
    _check_tensors(where / "optimizer.safetensors", "optimizer state", tensors, spec.optimizer_tensors)
    for name, want in spec.optimizer_values.items():
        have = tensors.get(name, meta["scalars"].get(name))
        same = (
            isinstance(have, torch.Tensor) and torch.equal(have.cpu(), want.cpu())
            if isinstance(want, torch.Tensor)
            else _same(have, want)
        )
        if not same:
            raise CheckpointError(
                f"checkpoint {where}: optimizer state {name} is {have!r}, but at step {ckpt.step} this run has "
                f"{want!r}; {_FIX}."
            )
    extra = sorted(set(meta["scalars"]) - set(spec.optimizer_values))
    if extra:
        raise CheckpointError(f"checkpoint {where}: unexpected optimizer state {extra[:4]}; {_FIX}.")
    state_file = where / "state.json"
    groups = meta["param_groups"]
    if len(groups) != len(spec.param_groups):
        raise CheckpointError(
            f"checkpoint file {state_file}: optimizer.param_groups has {len(groups)} groups, this run has "
            f"{len(spec.param_groups)}; {_FIX}."
        )
    for i, (have, want) in enumerate(zip(groups, spec.param_groups, strict=True)):
        for key in ("params", *_HYPERPARAMETERS):
            if key not in want:
                continue
            if key not in have or not _same(have[key], want[key]):
                value = have.get(key, "missing")
                expected = f"this run has {want[key]!r}" + (f" at step {ckpt.step}" if key == "lr" else "")
                raise CheckpointError(
                    f"checkpoint file {state_file}: optimizer.param_groups[{i}].{key} is {value!r}, but {expected} "
                    f"(the settings say so); {_FIX}."
                )
    scheduler = ckpt.scheduler
    unknown = sorted(set(scheduler) - set(spec.scheduler))
    if unknown:
        raise CheckpointError(f"checkpoint file {state_file}: scheduler has unexpected fields {unknown[:4]}; {_FIX}.")
    for key in ("last_epoch", "base_lrs", *sorted(set(scheduler) & set(spec.scheduler))):
        if key in spec.scheduler and (key not in scheduler or not _same(scheduler[key], spec.scheduler[key])):
            raise CheckpointError(
                f"checkpoint file {state_file}: scheduler.{key} is {scheduler.get(key, 'missing')!r}, but at step "
                f"{ckpt.step} this run's schedule has {spec.scheduler[key]!r}; {_FIX}."
            )
