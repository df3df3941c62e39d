"""Training a tuned lens: the paper's recipe, with the fused step from `lens_hub.losses`.

Defaults reproduce the reference recipe: KL(final || lens) per layer without token shift, SGD with Nesterov
momentum 0.9 and an effective learning rate of 0.1, weight decay 1e-3, gradient clipping at norm 1.0, linear decay
to zero, 250 steps of 2^18 tokens, bf16 autocast on GPU. Runs on CPU, one GPU, or several with ``torchrun`` (data
parallel: each rank reads its own shard of every step and gradients are averaged).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from ._version import __version__
from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainingInfo
from .data import DataError, TokenData, shuffled
from .errors import LensHubError
from .lens import TunedLens
from .losses import Kernel, Loss, fused_lens_losses
from .models import hidden_states

# Settings that do not change the result (the kernel: only in rounding): a run may be resumed with other values.
Optimizer = Literal["sgd", "adam"]  # SGD with Nesterov momentum (the paper's), or AdamW

_RESUMABLE = {"checkpoint_every", "keep_checkpoints", "log", "quiet", "kernel"}


@dataclass
class TrainSettings:
    """Everything that defines a training run (recorded in the lens config and in checkpoints)."""

    steps: int = 250
    tokens_per_step: int = 1 << 18
    seq_len: int = 2048
    batch_size: int = 8  # sequences per forward pass (per process)
    optimizer: Optimizer = "sgd"
    lr: float | None = None  # effective learning rate; None: 0.1 for SGD (lr_scale 1 x (1 - momentum)), 1e-3 Adam
    momentum: float = 0.9
    weight_decay: float = 1e-3
    warmup_steps: int = 0
    clip: float = 1.0
    loss: Loss = "kl"
    layers: list[int] | None = None  # None: all
    bias_only: bool = False
    bias: bool = True
    init_from: str | None = None
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    kernel: Kernel = "auto"  # softmax/KL implementation (lens_hub.losses)
    log: list[str] = field(default_factory=list)  # "tensorboard", "wandb"
    quiet: bool = False

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (0.1 if self.optimizer == "sgd" else 1e-3)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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

    The run reads ``settings.steps * plan.sequences_per_step`` sequences in all.
    """
    accum = max(1, settings.tokens_per_step // (settings.batch_size * seq_len * world))
    return Plan(accum, world, settings.batch_size)


def make_plan(settings: TrainSettings, data: TokenData, world: int) -> Plan:
    """Check the data suffices for the whole run, up front; return the split of each step.

    Raises:
        DataError: Naming how much data the run needs and how much there is.
    """
    plan = plan_for(settings, data.seq_len, world)
    needed = settings.steps * plan.sequences_per_step
    if needed > len(data.sequences):
        raise DataError(
            f"{settings.steps} steps of {plan.sequences_per_step * data.seq_len} tokens need {needed} sequences of "
            f"{data.seq_len} tokens ({needed * data.seq_len:,} tokens), but {data.source} gives "
            f"{len(data.sequences)}. Add data, or lower --steps / --tokens-per-step / --seq-len."
        )
    return plan


def _schedule(settings: TrainSettings) -> Callable[[int], float]:
    warm, total = settings.warmup_steps, settings.steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return factor


def _optimizer(params: list[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
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
        raise ValueError("nothing to train: bias_only needs a lens with biases, and layers must not be empty")
    return chosen


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_model(model: nn.Module) -> nn.Module:
    """Shard a frozen model's transformer layers across processes with FSDP2 (``torchrun ... --fsdp``).

    Only the layers are sharded (each is gathered for its own forward pass); embeddings, final norm and output
    embedding stay whole on every process, because the lens applies them outside the model's forward pass.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from .adapters import find_model_parts

    _, world = _distributed()
    if world < 2:
        raise LensHubError("--fsdp shards the model across processes: launch with torchrun --nproc-per-node N")
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (world,))
    for layer in find_model_parts(model).layers:
        fully_shard(layer, mesh=mesh)
    return model


def _all_reduce_grads(params: list[nn.Parameter], world: int) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)  # one collective per step, not one per tensor
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


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
    a resumed run ends with the same weights as an uninterrupted one.

    Args:
        model: The frozen base model (left in eval mode; its weights are never saved).
        data: Token sequences (see `lens_hub.data`).
        settings: The run's hyperparameters.
        out: Output lens directory (``config.json`` + ``lens.safetensors``; checkpoints in ``checkpoints/``).
        lens: A lens to start from (fine-tuning); default: a fresh identity lens, or ``settings.init_from``.
        dataset_name: Recorded in the lens's provenance (default: ``data.source``).
        on_step: Called after every step with the step number and the per-layer losses (nats).
        console: A rich console for the progress display.

    Raises:
        DataError: Too little data for the requested steps (checked before training starts).
        CheckpointError: ``out`` holds checkpoints of a run with different settings.
    """
    rank, world = _distributed()
    out = Path(out)
    model.eval().requires_grad_(False)
    if lens is None:
        lens = (
            TunedLens.load(settings.init_from, model)
            if settings.init_from
            else TunedLens.from_model(model, bias=settings.bias)
        )
    layers = settings.layers if settings.layers is not None else list(range(lens.num_layers))
    bad = [i for i in layers if not 0 <= i < lens.num_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist: the model has layers 0..{lens.num_layers - 1}")
    params = trainable_parameters(lens, layers, settings.bias_only)
    plan = make_plan(settings, data, world)
    order = shuffled(len(data.sequences), settings.seed)
    opt = _optimizer(params, settings)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(settings))

    ckpt_dir = out / "checkpoints"
    recorded = {k: v for k, v in settings.to_dict().items() if k not in _RESUMABLE}
    recorded |= {"seq_len": data.seq_len, "num_sequences": len(data.sequences), "world": world}
    start = 0
    previous = list_checkpoints(ckpt_dir)
    if previous:
        ckpt = load_checkpoint(previous[-1])
        changed = sorted(k for k in set(recorded) | set(ckpt.settings) if recorded.get(k) != ckpt.settings.get(k))
        if changed:
            raise CheckpointError(
                f"{out} holds checkpoints of a run with different settings ({', '.join(changed)}); "
                "use another --out, or --restart to discard them."
            )
        lens.load_state_dict(ckpt.lens)
        opt.load_state_dict(ckpt.optimizer)
        sched.load_state_dict(ckpt.scheduler)
        torch.set_rng_state(ckpt.rng["cpu"])
        cuda_keys = sorted((k for k in ckpt.rng if k.startswith("cuda")), key=lambda k: int(k[4:]))
        cuda_states = [ckpt.rng[k] for k in cuda_keys]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
        start = ckpt.step

    device = lens.unembed.parts.output_embedding.weight.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    loggers = _loggers(settings.log, out) if rank == 0 else []
    progress = _Progress(settings, plan, data, start, console) if rank == 0 and not settings.quiet else None
    tokens_per_step = plan.sequences_per_step * data.seq_len
    try:
        for step in range(start, settings.steps):
            t0 = time.perf_counter()
            running = torch.zeros(len(layers), device=device)
            for micro in range(plan.accum):
                ids = data.sequences[plan.indices(order, step, micro, rank)].to(device)
                with autocast:
                    with torch.no_grad():
                        hs = hidden_states(model, ids)
                    losses = fused_lens_losses(
                        lens, hs, layers, loss=settings.loss, input_ids=ids, kernel=settings.kernel
                    )
                (losses.sum() / plan.accum).backward()
                running += losses.detach() / plan.accum
            if world > 1:
                _all_reduce_grads(params, world)
                dist.all_reduce(running)
                running /= world
            torch.nn.utils.clip_grad_norm_(params, settings.clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step_losses = running.tolist()  # the step's only host sync
            done = step + 1
            if rank == 0:
                rate = tokens_per_step / (time.perf_counter() - t0)
                if progress:
                    progress.update(done, step_losses, rate)
                for log in loggers:
                    log(
                        done,
                        {f"loss/layer_{i}": v for i, v in zip(layers, step_losses, strict=True)}
                        | {"tokens_per_second": rate, "lr": sched.get_last_lr()[0]},
                    )
                if done % settings.checkpoint_every == 0 or done == settings.steps:
                    save_checkpoint(
                        ckpt_dir,
                        done,
                        lens.state_dict(),
                        opt.state_dict(),
                        sched.state_dict(),
                        recorded,
                        settings.keep_checkpoints,
                    )
            if on_step:
                on_step(done, step_losses)
    finally:
        if progress:
            progress.close()
    if rank == 0:
        info = TrainingInfo(
            dataset=dataset_name or data.source,
            num_tokens=settings.steps * tokens_per_step,
            steps=settings.steps,
            loss=settings.loss,
            layers=None if settings.layers is None else layers,
            hyperparameters={k: v for k, v in settings.to_dict().items() if k not in _RESUMABLE}
            | {
                "learning_rate": settings.learning_rate,
                "tokens_per_step": tokens_per_step,
                "world_size": world,
                "seq_len": data.seq_len,
                "tokens_per_byte": data.tokens_per_byte,
            },
            lens_hub_version=__version__,
        )
        lens.config = lens.config.model_copy(update={"training": info})
        lens.save(out)
    if world > 1:
        dist.barrier()
    return lens


def restart(out: str | os.PathLike[str]) -> None:
    """Discard the checkpoints of a previous run in ``out``."""
    shutil.rmtree(Path(out) / "checkpoints", ignore_errors=True)


def _loggers(kinds: list[str], out: Path) -> list[Callable[[int, dict[str, float]], None]]:
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
        else:
            raise ValueError(f"unknown logger {kind!r}; use tensorboard, wandb or jsonl")
    return loggers


class _Progress:
    """Rich progress bar: step, tokens/s, KL of early / middle / late layers, ETA."""

    def __init__(self, settings: TrainSettings, plan: Plan, data: TokenData, start: int, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=settings.steps, completed=start, info="")
        self.tpb = data.tokens_per_byte

    def update(self, step: int, losses: list[float], rate: float) -> None:
        thirds = [losses[i * len(losses) // 3 : (i + 1) * len(losses) // 3] or losses for i in range(3)]
        groups = "/".join(f"{sum(g) / len(g):.3f}" for g in thirds)
        self.bar.update(self.task, completed=step, info=f"{rate:,.0f} tok/s  loss early/mid/late {groups} nats")

    def close(self) -> None:
        self.bar.stop()
