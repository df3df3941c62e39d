"""Training a tuned lens: a closed-form fit (`lens_hub.training.fit`) polished with the paper's KL loss, or the
paper's recipe.

Two recipes (`TrainSettings`):

* ``init="fit"`` (the default): every translator is solved by ridge regression from hidden-state moments, which
  costs forward passes only, then polished by a few steps of the KL loss (`POLISH`; measured in bench/RESULTS.md).
* ``init="zero"``: the paper's recipe, for reproduction: zero translators (the logit lens), KL(final || lens) per
  layer without token shift, SGD with Nesterov momentum 0.9 and an effective learning rate of 0.1, weight decay
  1e-3, gradient clipping at norm 1.0, linear decay to zero, 250 steps of 2^18 tokens (`PAPER`).

Both use the fused step of `lens_hub.training.losses` with bf16 autocast on GPU. Runs on CPU, one GPU, or several with
``torchrun`` (data parallel: each rank reads its own shard of the fit's data and of every step; moments are summed
and gradients averaged). Only rank 0 writes checkpoints and the lens, and only rank 0 reads checkpoints: it sends
the resume step and state to the other ranks, so a run resumes the same way on node-local disks as on a shared one.
The fitted lens is checkpointed as step 0 as soon as the fit is solved, so resuming never refits; a run stopped
during the fit starts it again (the fit is forward passes over ``fit_tokens``, a small part of a run).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from .._version import __version__
from ..core.config import TrainingInfo
from ..core.models import hidden_states
from ..core.options import DEFAULT_FIT_TOKENS, Optimizer
from ..core.progress import ProgressReport
from ..errors import (
    CheckpointError,
    DataError,
    LayerRangeError,
    LensHubError,
    NonFiniteLossError,
    TrainingInterrupted,
    TrainSettingsError,
)
from ..hub.mixin import TunedLens
from .checkpoint import (
    Checkpoint,
    ResumeSpec,
    check_resumable,
    check_same_run,
    join_optimizer_state,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    split_optimizer_state,
)
from .data import TokenData, is_local, local_path, shuffled
from .fit import FitReport, fit_lens
from .losses import choose_kernel, fused_lens_losses
from .settings import TrainSettings

__all__ = [
    "LayerRangeError",
    "NonFiniteLossError",
    "Optimizer",
    "Plan",
    "TrainSettings",
    "TrainSettingsError",
    "TrainingInterrupted",
    "check_data_source",
    "check_layers",
    "describe_trained_layers",
    "hidden_states",
    "make_plan",
    "plan_for",
    "restart",
    "shard_model",
    "train_lens",
    "trainable_parameters",
]

# Settings that do not change the result (the kernel: only in rounding): a run may be resumed with other values.
_RESUMABLE = {"checkpoint_every", "keep_checkpoints", "log", "quiet", "kernel", "fit_memory"}


def check_layers(layers: list[int] | None, num_layers: int) -> None:
    """Refuse layer indices the model does not have, naming its range.

    Raises:
        LayerRangeError: Some index is not in ``0 .. num_layers - 1``.
    """
    bad = [i for i in layers or [] if not 0 <= i < num_layers]
    if bad:
        raise LayerRangeError(
            f"layers {bad} (--layers) do not exist: the model has {num_layers} layers, 0..{num_layers - 1}; choose "
            "layers in that range."
        )


def check_data_source(source: str | os.PathLike[str]) -> None:
    """The checks of a local data path that need no tokenizer or model: it exists and is not empty.

    Run before the model loads, since loading takes the longest. Hub datasets are checked when streamed.

    Raises:
        DataError: A local path that does not exist, or an empty file.
    """
    if not is_local(source):
        return
    path = local_path(source)
    if not path.exists():
        raise DataError(f"--data {source}: no such file or folder; give a .txt/.md/.jsonl file or a folder of them.")
    if path.is_file() and not path.read_bytes().strip():
        raise DataError(f"--data {source}: the file is empty; give a file with text to train on.")


def describe_trained_layers(layers: list[int] | None, num_layers: int) -> str:
    """``"all 3 layers trained"`` or ``"layers 0, 10 trained of 30; others identity"``."""
    if layers is None or sorted(set(layers)) == list(range(num_layers)):
        return f"all {num_layers} layers trained"
    return f"layers {', '.join(map(str, sorted(layers)))} trained of {num_layers}; others identity"


@dataclass
class Plan:
    """How the step's tokens are split into forward passes, derived from settings, data and world size."""

    accum: int  # forward passes per step and process
    world: int
    batch: int

    @property
    def sequences_per_step(self) -> int:
        return self.accum * self.world * self.batch

    def indices(self, order: torch.Tensor, step: int, micro: int, rank: int) -> torch.Tensor:
        start = ((step * self.accum + micro) * self.world + rank) * self.batch
        return order[start : start + self.batch]


def plan_for(settings: TrainSettings, seq_len: int, world: int) -> Plan:
    """Split each step's tokens into forward passes of ``batch_size`` sequences on each of ``world`` processes.

    The run reads ``settings.steps * plan.sequences_per_step`` sequences in all, and every step exactly
    ``settings.tokens_per_step`` tokens: a step size that no whole number of forward passes gives is refused
    rather than rounded, since the run would then not be the one its settings (and its provenance) describe.

    Raises:
        TrainSettingsError: ``batch_size`` below 1, ``steps`` below 1 (0 is allowed after a fit: the fit alone), or
            ``tokens_per_step`` not a positive multiple of ``batch_size * seq_len * world`` (naming the two nearest
            valid values).
    """
    if settings.steps < 0 or (settings.steps == 0 and settings.initialisation != "fit"):
        start = "a lens given by init_from" if settings.initialisation == "lens" else "zero translators"
        raise TrainSettingsError(
            f"steps (--steps) must be at least 1, not {settings.steps}: a run that starts from {start} needs a step "
            "to train (steps=0 is for init='fit', --init fit: the closed-form fit alone)."
        )
    if settings.batch_size < 1:
        raise TrainSettingsError(f"batch_size (--batch-size) must be at least 1, not {settings.batch_size}.")
    if settings.steps == 0:  # the fit alone: the step size does not matter
        return Plan(1, world, settings.batch_size)
    per_pass = settings.batch_size * seq_len * world  # tokens of one forward pass on every process
    accum, rest = divmod(settings.tokens_per_step, per_pass)
    if accum < 1 or rest:
        lower = max(1, accum) * per_pass
        upper = lower + per_pass
        processes = f" x {world} processes" if world > 1 else ""
        raise TrainSettingsError(
            f"tokens_per_step {settings.tokens_per_step} (--tokens-per-step) is not a multiple of the {per_pass} "
            f"tokens of one forward pass (batch_size {settings.batch_size} x seq_len {seq_len}{processes}); use "
            f"tokens_per_step {lower} or {upper}, or change batch_size / seq_len."
        )
    return Plan(accum, world, settings.batch_size)


def make_plan(settings: TrainSettings, data: TokenData, world: int) -> Plan:
    """Check the data suffices for the whole run, up front; return the split of each step.

    Raises:
        TrainSettingsError: See `plan_for`.
        DataError: Naming how much data the run needs and how much there is.
    """
    plan = plan_for(settings, data.seq_len, world)
    needed = settings.steps * plan.sequences_per_step
    if needed > len(data.sequences):
        raise DataError(
            f"{settings.steps} steps of {plan.sequences_per_step * data.seq_len} tokens need {needed} sequences of "
            f"{data.seq_len} tokens ({needed * data.seq_len:,} tokens), but {data.source} gives "
            f"{len(data.sequences)}. Add data, or lower steps (--steps), tokens_per_step (--tokens-per-step) or "
            "seq_len (--seq-len)."
        )
    if settings.initialisation == "fit":
        fit_sequences(settings, data)
    return plan


def fit_sequences(settings: TrainSettings, data: TokenData) -> int:
    """How many sequences (the first of the run's data order) the closed-form fit reads.

    ``fit_tokens`` is rounded down to whole sequences; left None, the fit reads all the data up to
    `DEFAULT_FIT_TOKENS`.

    Raises:
        TrainSettingsError: ``fit_tokens`` below one sequence.
        DataError: ``fit_tokens`` beyond the data.
    """
    available, seq_len = len(data.sequences), data.seq_len
    if settings.fit_tokens is None:
        return min(available, max(1, DEFAULT_FIT_TOKENS // seq_len))
    wanted = settings.fit_tokens // seq_len
    if wanted < 1:
        raise TrainSettingsError(
            f"fit_tokens {settings.fit_tokens} (--fit-tokens) is less than one sequence of {seq_len} tokens (seq_len); "
            "fit on at least that many."
        )
    if wanted > available:
        raise DataError(
            f"fit_tokens {settings.fit_tokens:,} (--fit-tokens) needs {wanted} sequences of {seq_len} tokens, but "
            f"{data.source} gives {available} ({available * seq_len:,} tokens). Add data, or lower fit_tokens."
        )
    return wanted


def _schedule(settings: TrainSettings) -> Callable[[int], float]:
    """The learning rate factor of each step: linear warm-up, then linear decay to zero at the last step."""
    warm, total = settings.warmup_steps, settings.steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def _optimizer(params: list[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, or AdamW, as the settings say."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=settings.learning_rate,
            momentum=settings.momentum,
            nesterov=True,
            weight_decay=settings.weight_decay,
        )
    return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def trainable_parameters(lens: TunedLens, layers: list[int], bias_only: bool) -> list[nn.Parameter]:
    """Freeze everything but the chosen translators (their biases only with ``bias_only``)."""
    chosen = []
    for i, translator in enumerate(lens.translators):
        for name, p in translator.named_parameters():
            p.requires_grad_(i in layers and (name == "bias" or not bias_only))
            if p.requires_grad:
                chosen.append(p)
    if not chosen:
        raise TrainSettingsError(
            "nothing to train: bias_only (--bias-only) needs a lens with biases, and layers must not be empty"
        )
    return chosen


def _distributed() -> tuple[int, int]:
    """This process's rank and the world size, joining the process group torchrun's environment describes."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_fsdp_launch() -> None:
    """Refuse ``--fsdp`` outside torchrun, from the environment alone (before the model loads).

    Raises:
        LensHubError: This process was not launched by torchrun with several processes.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise LensHubError("--fsdp shards the model across processes: launch with torchrun --nproc-per-node N")


def shard_model(model: nn.Module) -> nn.Module:
    """Shard a frozen model's transformer layers across processes with FSDP2 (``torchrun ... --fsdp``).

    Only the layers are sharded (each is gathered for its own forward pass); embeddings, final norm and output
    embedding stay whole on every process, because the lens applies them outside the model's forward pass.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from ..core.adapters import find_model_parts

    _, world = _distributed()
    if world < 2:
        raise LensHubError("--fsdp shards the model across processes: launch with torchrun --nproc-per-node N")
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (world,))
    for layer in find_model_parts(model).layers:
        fully_shard(layer, mesh=mesh)
    return model


def _all_reduce_grads(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients of ``params`` over the ranks, in place."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)  # one collective per step, not one per tensor
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


@dataclass
class _Run:
    """The moving parts of one training run, built by `_build_run` and advanced by `_train_step` and `_apply_step`."""

    model: nn.Module
    data: TokenData
    settings: TrainSettings
    lens: TunedLens
    layers: list[int]
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    plan: Plan
    order: torch.Tensor  # the data order: a permutation of sequence indices, the same on every rank
    kernel: Literal["eager", "triton"]
    device: torch.device
    rank: int
    world: int
    model_digest: str = ""  # of the unembedding's fingerprint
    data_digest: str = ""  # of the training tokens
    fit: FitReport | None = None  # the closed-form fit of this session (None: none ran, or resumed after it)

    @property
    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the checkpoints it resumes from (recorded in them): the settings, the
        model (its unembedding's fingerprint) and the training tokens (a digest), so that another model of the same
        shapes, or other text of the same length, never continues this run."""
        kept = {k: v for k, v in self.settings.to_dict().items() if k not in _RESUMABLE}
        return kept | {
            "seq_len": self.data.seq_len,
            "num_sequences": len(self.data.sequences),
            "world": self.world,
            "model": self.model_digest,
            "data": self.data_digest,
        }


def _build_run(
    model: nn.Module, data: TokenData, settings: TrainSettings, lens: TunedLens | None, rank: int, world: int
) -> _Run:
    """Check the settings against the data, then set up the lens, its trainable parameters and the optimizer.

    Raises:
        TrainSettingsError, DataError: Before anything is loaded or written.
        LayerRangeError: Layers the model does not have.
        ValueError: Nothing to train.
    """
    plan = make_plan(settings, data, world)
    model.eval().requires_grad_(False)
    if lens is None:
        lens = (
            TunedLens.from_pretrained(settings.init_from, model=model)  # a local directory, registry name or hf://
            if settings.init_from
            else TunedLens.from_model(model, bias=settings.bias)
        )
    lens.adopt_model()  # what it is trained for is what it will be checked against when loaded
    layers = settings.layers if settings.layers is not None else list(range(lens.num_layers))
    check_layers(layers, lens.num_layers)
    params = trainable_parameters(lens, layers, settings.bias_only)
    opt = _optimizer(params, settings)
    device = lens.unembed.parts.output_embedding.weight.device
    return _Run(
        model=model,
        data=data,
        settings=settings,
        lens=lens,
        layers=layers,
        params=params,
        opt=opt,
        sched=torch.optim.lr_scheduler.LambdaLR(opt, _schedule(settings)),
        plan=plan,
        order=shuffled(len(data.sequences), settings.seed),
        kernel=choose_kernel(settings.kernel, settings.loss, lens, device),
        device=device,
        rank=rank,
        world=world,
        model_digest=_digest(lens.unembed.parts.fingerprint.encode()),
        data_digest=_digest(data.sequences.contiguous().numpy().tobytes()),
    )


def _digest(data: bytes) -> str:
    """A short content digest for a run's identity (16 hex digits of sha256)."""
    return hashlib.sha256(data).hexdigest()[:16]


def _newest_checkpoint(ckpt_dir: Path, identity: dict[str, Any]) -> Checkpoint | None:
    """The newest checkpoint in ``ckpt_dir`` (None: there is none), refused if its run had other settings."""
    previous = list_checkpoints(ckpt_dir)
    if not previous:
        return None
    ckpt = load_checkpoint(previous[-1])
    check_same_run(ckpt, identity, ckpt_dir.parent)
    return ckpt


def _resume_spec(run: _Run, step: int) -> ResumeSpec:
    """What a checkpoint after ``step`` steps of this run must hold, recomputed rather than trusted.

    A stand-in optimizer and scheduler with the run's settings, on one two-element parameter per real one, take
    ``step`` steps (zero gradients): their state gives the learning rate and scheduler state the schedule implies
    at that step, the optimizer's state keys, and which of them are per element (shaped like the parameter) or
    fixed by the step count (Adam's ``step``).
    """
    probes = [nn.Parameter(torch.zeros(2, dtype=p.dtype)) for p in run.params]
    opt = _optimizer(probes, run.settings)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(run.settings))
    for _ in range(step):
        for probe in probes:
            probe.grad = torch.zeros_like(probe)
        opt.step()
        sched.step()
    state = opt.state_dict()
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    values: dict[str, Any] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            name = f"{index}.{key}"
            if isinstance(value, torch.Tensor) and tuple(value.shape) == (2,):  # per element: the parameter's shape
                shapes[name] = (tuple(run.params[index].shape), run.params[index].dtype)
            else:  # a count or scalar the step fixes
                values[name] = value
                if isinstance(value, torch.Tensor):
                    shapes[name] = (tuple(value.shape), value.dtype)
    # Through JSON, as the checkpoint's own state went: tuples become lists.
    groups = json.loads(json.dumps(state["param_groups"]))
    lens = {k: (tuple(v.shape), v.dtype) for k, v in run.lens.state_dict().items()}
    return ResumeSpec(lens, shapes, values, groups, json.loads(json.dumps(sched.state_dict())))


def _load_into_run(run: _Run, ckpt: Checkpoint) -> None:
    """Load a checked checkpoint into the run; whatever torch still refuses is a `CheckpointError`."""
    try:
        run.lens.load_state_dict(ckpt.lens)
        run.opt.load_state_dict(ckpt.optimizer)
        run.sched.load_state_dict(ckpt.scheduler)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        where = ckpt.path or f"the checkpoint of step {ckpt.step}"
        raise CheckpointError(
            f"checkpoint {where} does not fit this run ({type(exc).__name__}: {str(exc).splitlines()[0]}); delete "
            "it to resume from the previous checkpoint, or start afresh (--restart; in Python, restart(out))."
        ) from None


def _broadcast_object(value: Any, device: torch.device) -> Any:
    """Rank 0's ``value`` on every rank (small values only: it travels pickled)."""
    box = [value]
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]


def _broadcast_tensors(tensors: dict[str, torch.Tensor] | None, device: torch.device) -> dict[str, torch.Tensor]:
    """Rank 0's ``tensors`` (None on the other ranks) on every rank, on ``device``.

    Only names, shapes and dtypes travel pickled; the tensors go as tensors, one broadcast each, so a lens of a
    large model is never serialised. ``device`` is where the gradients are all-reduced (NCCL needs CUDA tensors).
    """
    spec = _broadcast_object(None if tensors is None else [(k, v.shape, v.dtype) for k, v in tensors.items()], device)
    received = {}
    for name, shape, dtype in spec:
        if tensors is not None:
            tensor = tensors[name].to(device).contiguous()
        else:
            tensor = torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(tensor, src=0)
        received[name] = tensor
    return received


def _share_checkpoint(
    ckpt: Checkpoint | None, problem: str | None, device: torch.device
) -> tuple[Checkpoint | None, str | None]:
    """Send rank 0's resume decision (a checkpoint, None to start afresh, or a problem) to every rank."""
    head, lens, opt_tensors = None, None, None
    if dist.get_rank() == 0 and ckpt is not None:
        lens = ckpt.lens
        opt_tensors, opt_meta = split_optimizer_state(ckpt.optimizer)
        head = {"step": ckpt.step, "scheduler": ckpt.scheduler, "settings": ckpt.settings, "optimizer": opt_meta}
    problem, head = _broadcast_object((problem, head), device)
    if problem is not None or head is None:
        return None, problem
    lens = _broadcast_tensors(lens, device)
    optimizer = join_optimizer_state(_broadcast_tensors(opt_tensors, device), head["optimizer"])
    return Checkpoint(head["step"], lens, optimizer, head["scheduler"], head["settings"]), None


def _resume(run: _Run, out: Path) -> int | None:
    """Load the newest checkpoint in ``out/checkpoints`` into the run; return its step (None: there is none).

    Step 0 is the fitted lens, checkpointed before the first KL step.

    Only rank 0 writes checkpoints, so only rank 0's directory is read: on node-local disks the other ranks have
    none (or stale ones), and a rank that started at another step would wait forever in the gradient all-reduce.
    Rank 0 decides and sends the step and the lens, optimizer and scheduler states to every rank; a refusal is
    raised on every rank, so none is left waiting.

    Raises:
        CheckpointError: The newest checkpoint is unreadable or belongs to a run with other settings.
    """
    ckpt, problem, failure = None, None, None
    if run.rank == 0:
        try:
            ckpt = _newest_checkpoint(out / "checkpoints", run.identity)
            if ckpt is not None:
                check_resumable(ckpt, _resume_spec(run, ckpt.step))
        except Exception as exc:  # whatever stops rank 0 must reach the other ranks, or they wait for it forever
            failure = exc
            problem = str(exc) if isinstance(exc, CheckpointError) else f"rank 0 could not resume ({exc!r})"
    if run.world > 1:
        ckpt, problem = _share_checkpoint(ckpt, problem, run.device)
    if failure is not None:
        raise failure
    if problem is not None:
        raise CheckpointError(problem)
    if ckpt is None:
        return None
    _load_into_run(run, ckpt)
    return ckpt.step


def _fit(run: _Run, console: Any) -> FitReport:
    """Fit the run's translators in closed form on the first `fit_sequences` of the data order (this rank's share)."""
    count = fit_sequences(run.settings, run.data)
    mine = run.order[:count][run.rank :: run.world]
    progress = _FitProgress(run, count, console) if run.rank == 0 and not run.settings.quiet else None
    try:
        report = fit_lens(
            run.lens,
            run.model,
            run.data,
            mine,
            run.layers,
            batch_size=run.settings.batch_size,
            ridge=run.settings.fit_ridge,
            memory=run.settings.fit_memory,
            bias_only=run.settings.bias_only,
            progress=progress.update if progress else None,
        )
    finally:
        if progress:
            progress.close()
    if run.rank == 0 and console is not None and not run.settings.quiet:
        passes = f" in {report.passes} passes (memory)" if report.passes > 1 else ""
        console.print(
            f"fitted {len(run.layers)} translators in closed form on {report.tokens:,} tokens{passes}: forward passes "
            f"{report.forward_seconds:.1f} s, moments and solve {report.fit_seconds:.1f} s (ridge {report.ridge:g})",
            highlight=False,
        )
    return report


def _train_step(run: _Run, step: int) -> list[float]:
    """One step's gradients: forward passes over this rank's share of the step's sequences, gradients averaged
    over ranks and clipped (`_apply_step` applies them). Returns the per-layer losses (nats, averaged over ranks)."""
    plan, settings = run.plan, run.settings
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.device.type == "cuda")
    running = torch.zeros(len(run.layers), device=run.device)
    for micro in range(plan.accum):
        ids = run.data.sequences[plan.indices(run.order, step, micro, run.rank)].to(run.device)
        with autocast:
            with torch.no_grad():
                hs = hidden_states(run.model, ids)
            losses = fused_lens_losses(run.lens, hs, run.layers, loss=settings.loss, input_ids=ids, kernel=run.kernel)
        (losses.sum() / plan.accum).backward()
        running += losses.detach() / plan.accum
    if run.world > 1:
        _all_reduce_grads(run.params, run.world)
        dist.all_reduce(running)
        running /= run.world
    norm = torch.nn.utils.clip_grad_norm_(run.params, settings.grad_clip)
    # The step's only host sync, before the update: a NaN or infinite loss or gradient norm stops the run with the
    # lens as the previous step left it (after the all-reduce, every rank sees the same values and stops alike).
    *losses, total = torch.cat([running, norm.reshape(1).to(running)]).tolist()
    if not all(math.isfinite(v) for v in (*losses, total)):
        raise _non_finite(run, step, losses, total)
    return losses


def _apply_step(run: _Run) -> None:
    """Apply the gradients of the step `_train_step` computed and advance the learning-rate schedule."""
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)


@contextmanager
def _interrupt_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) until the block ends, then raise it as `KeyboardInterrupt`.

    The optimizer update, the step's log line and a due checkpoint are one unit: a Ctrl-C inside it would leave
    parameters half-updated, or a step applied and saved but never logged. Only Python's own Ctrl-C handler is
    replaced: an ignored SIGINT (``nohup``, a background job) stays ignored, a program's own handler is left alone,
    and outside the main thread (where handlers cannot be set) the block runs as it is.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _non_finite(run: _Run, step: int, losses: list[float], norm: float) -> NonFiniteLossError:
    """The error for a diverged step, naming the step and the layers whose loss or gradient is not finite."""
    bad_loss = [i for i, v in zip(run.layers, losses, strict=True) if not math.isfinite(v)]
    bad_grad = [i for i in run.layers if not _finite_grads(run.lens.translators[i])]
    parts = []
    if bad_loss:
        parts.append(f"the loss of layers {bad_loss} is not finite")
    if bad_grad:
        parts.append(f"the gradients of layers {bad_grad} are not finite")
    if not parts:
        parts.append(f"the gradient norm is {norm}")
    s = run.settings
    return NonFiniteLossError(
        f"training diverged at step {step + 1} of {s.steps}: {' and '.join(parts)}. The step was not applied and "
        "no lens was saved; the checkpoints already written are kept. Lower the learning rate (lr, --lr; now "
        f"{s.learning_rate:g}) or add warm-up steps (warmup_steps, --warmup-steps), and start afresh (--restart; in "
        "Python, restart(out)): other settings cannot resume these checkpoints."
    )


def _finite_grads(module: nn.Module) -> bool:
    """Whether every gradient of ``module``'s parameters is finite (parameters without one count as finite)."""
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in module.parameters())


def _save_checkpoint(run: _Run, out: Path, step: int) -> None:
    """Checkpoint the run after ``step`` in ``out/checkpoints`` (rank 0 only)."""
    save_checkpoint(
        out / "checkpoints",
        step,
        run.lens.state_dict(),
        run.opt.state_dict(),
        run.sched.state_dict(),
        run.identity,
        run.settings.keep_checkpoints,
    )


def _hub_init_from(init_from: str | None) -> str | None:
    """``init_from`` as provenance: a Hub name as given, a local path not at all.

    A local directory means nothing on another machine and would publish the trainer's file system layout.
    """
    if init_from is None or (not init_from.startswith("hf://") and Path(init_from).exists()):
        return None
    return init_from


# What the trainer resolved, where the setting of the same name holds a request ("auto", None: the recipe's).
_STEP_ONLY = ("loss", "optimizer", "learning_rate", "momentum", "weight_decay", "warmup_steps", "grad_clip")


def _provenance(run: _Run, dataset_name: str | None) -> TrainingInfo:
    """The run's `TrainingInfo`: the settings it shares with `TrainSettings` by name, then what the run resolved."""
    s, data = run.settings, run.data
    fitted, stepped = s.initialisation == "fit", s.steps > 0
    shared = {name: getattr(s, name) for name in TrainingInfo.model_fields if hasattr(s, name)}
    resolved = dict(
        dataset=dataset_name or data.source,
        init=s.initialisation,
        fit_tokens=fit_sequences(s, data) * data.seq_len if fitted else None,
        fit_ridge=s.fit_ridge if fitted else None,
        num_tokens=s.steps * s.tokens_per_step,
        layers=None if s.layers is None else run.layers,
        seq_len=data.seq_len,
        world_size=run.world,
        init_from=_hub_init_from(s.init_from),
        tokens_per_byte=data.tokens_per_byte,
        lens_hub_version=__version__,
        learning_rate=s.learning_rate,
        momentum=s.momentum if s.optimizer == "sgd" else None,  # AdamW does not use it
        # The kernel may change on resuming (it only changes rounding): this is the one of the last session.
        kernel=run.kernel if stepped else None,
        hyperparameters={},
    )
    info = shared | resolved
    if not stepped:  # a fit without steps used no optimizer: its settings would describe nothing that happened
        info |= dict.fromkeys((*_STEP_ONLY, "tokens_per_step"), None)
    return TrainingInfo(**info)


def _log_step(
    run: _Run,
    step: int,
    losses: list[float],
    seconds: float,
    progress: _Progress | None,
    loggers: list[Callable[[int, dict[str, float]], None]],
) -> None:
    """Show the step on the progress bar and send its losses, throughput and learning rate to the loggers."""
    rate = run.settings.tokens_per_step / seconds
    if progress:
        progress.update(step, losses, rate)
    values = {f"loss/layer_{i}": v for i, v in zip(run.layers, losses, strict=True)}
    values |= {"tokens_per_second": rate, "lr": run.sched.get_last_lr()[0]}
    for log in loggers:
        log(step, values)


def train_lens(
    model: nn.Module,
    data: TokenData,
    settings: TrainSettings,
    out: str | os.PathLike[str],
    *,
    lens: TunedLens | None = None,
    dataset_name: str | None = None,
    on_step: Callable[[int, list[float]], None] | None = None,
    console: Any = None,
) -> TunedLens:
    """Train (or resume training) a tuned lens for ``model`` and save it to ``out``.

    Rerunning with the same settings and ``out`` resumes from the newest checkpoint in ``out/checkpoints``;
    a resumed run ends with the same weights as an uninterrupted one. Under ``torchrun``, rank 0's ``out``
    decides for every rank.

    Args:
        model: The frozen base model (left in eval mode; its weights are never saved).
        data: Token sequences (see `lens_hub.training.data`).
        settings: The run's hyperparameters.
        out: Output lens directory (``config.json`` + ``lens.safetensors``; checkpoints in ``checkpoints/``).
        lens: A lens to start from (fine-tuning); default: a fresh identity lens, or ``settings.init_from``.
        dataset_name: Recorded in the lens's provenance (default: ``data.source``).
        on_step: Called after every step with the step number and the per-layer losses (nats).
        console: A rich console for the progress display.

    Raises:
        TrainSettingsError: Settings no run can follow (checked before training starts).
        DataError: Too little data for the requested steps (checked before training starts).
        CheckpointError: ``out`` holds checkpoints of a run with different settings, or a checkpoint that is
            unreadable, altered (hyperparameters, tensor shapes or dtypes) or holds non-finite tensors.
        NonFiniteLossError: A step's loss or gradient became NaN or infinite; nothing of that step is applied or
            saved (the checkpoints already written are kept, no lens is written).
    """
    rank, world = _distributed()
    out = Path(out)
    run = _build_run(model, data, settings, lens, rank, world)
    resumed = _resume(run, out)
    start = resumed or 0
    if rank == 0 and console is not None and resumed is not None:
        _say_start(console, start, settings.steps, out)
    if resumed is None and settings.initialisation == "fit":
        try:
            run.fit = _fit(run, console)
        except KeyboardInterrupt:
            raise TrainingInterrupted(0, settings.steps, None, during_fit=True) from None
        if rank == 0:
            _save_checkpoint(run, out, 0)  # resuming starts from the fitted lens, never refits
    loggers = _loggers(settings.log, out) if rank == 0 else []
    progress = _Progress(run, start, console) if rank == 0 and not settings.quiet and settings.steps else None
    done, saved = start, start
    try:
        for step in range(start, settings.steps):
            t0 = time.perf_counter()
            losses = _train_step(run, step)
            with _interrupt_deferred():
                _apply_step(run)
                done = step + 1
                if rank == 0:
                    _log_step(run, done, losses, time.perf_counter() - t0, progress, loggers)
                    if done % settings.checkpoint_every == 0 or done == settings.steps:
                        _save_checkpoint(run, out, done)
                        saved = done
            if on_step:
                on_step(done, losses)
    except KeyboardInterrupt:
        # Ctrl-C lands in a step's forward or backward pass, or is held until its update, log line and checkpoint
        # are done: the lens and optimizer are always as the last completed step left them, so save those.
        checkpoint = None
        if rank == 0 and done > saved:
            _save_checkpoint(run, out, done)
        if done > 0 or settings.initialisation == "fit":  # step 0 of a fitted run is the fitted lens
            checkpoint = out / "checkpoints" / f"step-{done:06d}"
        raise TrainingInterrupted(done, settings.steps, checkpoint) from None
    finally:
        if progress:
            progress.close()
    if rank == 0:
        # A lens fine-tuned from another would carry that lens's evaluation, which does not describe this one.
        update = {"training": _provenance(run, dataset_name), "evaluation": None}
        run.lens.config = run.lens.config.model_copy(update=update)
        run.lens.save(out)
    if world > 1:
        dist.barrier()
    return run.lens


def _say_start(console: Any, start: int, steps: int, out: Path) -> None:
    """Say whether the run starts afresh, resumes, or was complete already (and so trains nothing)."""
    if start >= steps:
        console.print(
            f"training is already complete: {out / 'checkpoints'} holds step {start} of {steps}; nothing to "
            "retrain (--restart trains afresh).",
            highlight=False,
        )
    elif start > 0:
        console.print(f"resuming from step {start} of {steps} ({out / 'checkpoints'})", highlight=False)
    else:
        console.print(
            f"resuming from the fitted lens, before step 1 of {steps} ({out / 'checkpoints'})", highlight=False
        )


def restart(out: str | os.PathLike[str]) -> None:
    """Discard the checkpoints of a previous run in ``out``."""
    shutil.rmtree(Path(out) / "checkpoints", ignore_errors=True)


def _loggers(kinds: list[str], out: Path) -> list[Callable[[int, dict[str, float]], None]]:
    """One ``log(step, values)`` function per requested logger (tensorboard, wandb, jsonl)."""
    loggers = []
    for kind in kinds:
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise DataError("--log tensorboard needs the tensorboard package: pip install tensorboard") from None
            writer = SummaryWriter(str(out / "tensorboard"))
            loggers.append(lambda step, d, w=writer: [w.add_scalar(k, v, step) for k, v in d.items()] and w.flush())
        elif kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise DataError("--log wandb needs the wandb package: pip install wandb") from None
            run = wandb.init(project="lens-hub", dir=str(out))
            loggers.append(lambda step, d, r=run: r.log(d, step=step))
        elif kind == "jsonl":
            path = out / "train_log.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)

            def write(step: int, values: dict[str, float], p: Path = path) -> None:
                with p.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": step, **values}) + "\n")

            loggers.append(write)
    return loggers


class _Progress:
    """Training progress (`ProgressReport`): step, tokens/s, the lens loss in bits per byte (as ``lens-hub eval``).

    With up to 4 trained layers each layer's loss is shown; with more, the mean of three groups of layers, each
    labelled with its layer range.
    """

    def __init__(self, run: _Run, start: int, console: Any) -> None:
        self.layers = run.layers
        self.data = run.data
        self.name = "KL" if run.settings.loss == "kl" else "CE"
        label = "polishing" if run.settings.initialisation == "fit" else "training"
        self.report = ProgressReport(label, console, total=run.settings.steps, unit="steps", done=start)

    def describe(self, losses: list[float]) -> str:
        """The losses (nats per token) as bits per byte, per layer or per group of layers."""
        bpb = [self.data.bits_per_byte(v) for v in losses]
        if len(bpb) <= 4:
            parts = [f"L{layer} {v:.3f}" for layer, v in zip(self.layers, bpb, strict=True)]
        else:
            n = len(bpb)
            parts = []
            for i in range(3):
                lo, hi = i * n // 3, (i + 1) * n // 3
                group = bpb[lo:hi]
                first, last = self.layers[lo], self.layers[hi - 1]
                label = f"L{first}" if first == last else f"L{first}-{last}"
                parts.append(f"{label} {sum(group) / len(group):.3f}")
        return f"{self.name} bits/byte: {'  '.join(parts)}"

    def update(self, step: int, losses: list[float], rate: float) -> None:
        self.report.update(step, info=f"{rate:,.0f} tok/s  {self.describe(losses)}")

    def close(self) -> None:
        self.report.close()


class _FitProgress:
    """Progress of the closed-form fit (`ProgressReport`): forward passes done (of all passes over the data),
    tokens/s."""

    def __init__(self, run: _Run, sequences: int, console: Any) -> None:
        self.tokens_per_batch = run.settings.batch_size * run.data.seq_len * run.world
        self.start = time.perf_counter()
        info = f"{len(run.layers)} layers, {sequences} sequences"
        self.report = ProgressReport("fitting", console, unit="forward passes", info=info)

    def update(self, done: int, total: int) -> None:
        rate = done * self.tokens_per_batch / max(time.perf_counter() - self.start, 1e-9)
        self.report.update(done, total, info=f"{rate:,.0f} tok/s")

    def close(self) -> None:
        self.report.close()
