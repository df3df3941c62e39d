"""Commands that read a model through its lenses: `show`, `detect`, `serve`."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..core.options import (
    Statistic,
)
from .app import (
    AllowMismatchOption,
    DeviceOption,
    DtypeOption,
    Flag,
    ModelArg,
    RevisionOption,
    _device,
    _dtype,
    _parse_layers,
    app,
    console,
)


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
        str | None,
        typer.Option(
            help="A second lens ('logit', directory or name): print the per-layer mean JS divergence, and draw both "
            "lenses side by side in the PNG and HTML."
        ),
    ] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Top tokens kept per cell (shown on hover in the HTML page).")] = 5,
    allow_mismatch: AllowMismatchOption = False,
    revision: RevisionOption = None,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
) -> None:
    """Show a prediction trajectory: the top-1 token every layer predicts at every position, coloured by a statistic.

    Layers where a tuned lens is untrained (an identity translator, which reads what the logit lens reads) are
    marked. A long text is split into blocks of positions that fit the terminal.

    Example: lens-hub show smollm2-offline "The capital of France is" --stat kl --html traj.html --compare logit
    """
    from ..analysis.trajectory import PredictionTrajectory
    from ..core.adapters import find_model_parts
    from ..core.models import load_model_and_tokenizer, max_positions
    from ..hub.mixin import load_lens
    from ..serve.render import js_summary, terminal_table, write_html, write_png
    from ..training.train import check_layers

    # Cheap checks first: loading the model takes the longest.
    if not text.strip():
        raise typer.BadParameter("TEXT is empty: give the text to read through the lens, e.g. 'The capital of'")
    if compare is not None and compare == lens:
        raise typer.BadParameter(f"--compare names the same lens as --lens ({lens!r}): compare two different lenses")
    show_layers = _parse_layers(layers)
    show_device = _device(device)
    from .preflight import check_lens_arg, check_model_args

    config = check_model_args(model, revision=revision, layers=show_layers)
    check_lens_arg(lens, config, flag="--lens")
    if compare:
        check_lens_arg(compare, config, flag="--compare")
    net, tokenizer = load_model_and_tokenizer(model, revision=revision, dtype=_dtype(dtype), device=show_device)
    check_layers(show_layers, len(find_model_parts(net).layers))
    window, n_tokens = max_positions(net), len(tokenizer(text)["input_ids"])  # type: ignore[operator]
    if window is not None and n_tokens > window:
        raise typer.BadParameter(f"TEXT is {n_tokens} tokens, longer than the model's window of {window}; shorten it.")

    def lens_label(name: str) -> str:  # the views' name of a lens: which kind, and which tuned lens
        return "logit lens" if name == "logit" else f"tuned lens ({name})"

    reader = load_lens(lens, net, allow_mismatch=allow_mismatch)
    other = load_lens(compare, net, allow_mismatch=allow_mismatch) if compare else None
    # The views draw the compared lens's own predictions too: its trajectory, read in the same pass.
    options = {"layers": show_layers, "top_k": top_k, "compare_with": other, "read_compared": other is not None}
    traj = PredictionTrajectory.from_text(reader, net, tokenizer, text, **options)
    compared = traj.compared
    traj.lens_name = lens_label(lens)
    if compared is not None:
        compared.lens_name = lens_label(compare)  # type: ignore[arg-type]
    console.print(terminal_table(traj, stat))
    if compared is not None:
        console.print()
        console.print(js_summary(traj, compared.lens_name))
    if html:
        console.print(f"wrote {write_html(traj, html, stat, compare=compared)}")
    if png:
        console.print(f"wrote {write_png(traj, png, stat, compare=compared)}")


class DetectMethod(str, Enum):
    """The detectors of `lens-hub detect` (those of lens_hub.analysis.anomaly.METHODS)."""

    iforest = "iforest"
    lof = "lof"
    mahalanobis = "mahalanobis"


PromptFileOption = "a .jsonl file with one JSON object per line (the prompt in --text-field), or a text file"


@app.command()
def detect(
    model: ModelArg,
    normal: Annotated[Path | None, typer.Option(help=f"Normal prompts: {PromptFileOption}.")] = None,
    anomalous: Annotated[
        Path | None, typer.Option(help=f"Anomalous prompts (e.g. injections): {PromptFileOption}.")
    ] = None,
    task: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME|FILE.jsonl",
            help="Run the paper's prompt-injection experiment instead, on this multiple-choice task, repeatable: a "
            "shipped task (arithmetic, capitals, antonyms, sentiment) or a .jsonl file (context, question, choices, "
            "answer). Features: each choice's log-likelihood per layer; baseline: the paper's hidden-state "
            "Mahalanobis; 10 seeds x --bootstrap resamples. Replaces --normal/--anomalous.",
        ),
    ] = None,
    shots: Annotated[int, typer.Option(min=1, help="--task: solved examples before each question.")] = 5,
    items: Annotated[
        int | None, typer.Option(min=1, help="--task: items per task (default: all; the paper used 500).")
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="--task: train/test splits per detector (the paper: 10).")] = 10,
    png: Annotated[Path | None, typer.Option(help="--task: write a plot of the AUROCs (PNG) here.")] = None,
    baseline_every: Annotated[
        int, typer.Option(min=1, help="--task: the baseline keeps every N-th hidden state (the paper: 4).")
    ] = 4,
    baseline_index: Annotated[
        int, typer.Option(help="--task: which kept hidden state the baseline scores (the paper's notebook: -5).")
    ] = -5,
    lens: Annotated[
        list[str] | None,
        typer.Option(
            metavar="LENS|logit|hidden",
            help="Feature source, repeatable: a tuned lens (directory, registry name or hf://...), 'logit' (logit "
            "lens) or 'hidden' (the final hidden state, the paper's baseline). Default: logit and hidden.",
        ),
    ] = None,
    method: Annotated[
        list[DetectMethod] | None,
        typer.Option(help="Detector, repeatable (default: all three; with --task the paper's iforest and lof)."),
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
    allow_mismatch: AllowMismatchOption = False,
    revision: RevisionOption = None,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
) -> None:
    """Detect abnormal prompts (e.g. prompt injections) from their prediction trajectories, as in the tuned-lens
    paper: fit anomaly detectors on part of the normal prompts only, score the held-out normal and the anomalous
    prompts, and print the AUROC with a 95% bootstrap confidence interval per feature source and detector.

    Needs scikit-learn (every detector, and the AUROC): pip install "lens-hub\\[anomaly]". An example set (normal.jsonl,
    injected.jsonl) ships in lens_hub/samples/prompt-injection/.

    With --task it runs the paper's experiment as the paper ran it: few-shot multiple-choice prompts with and
    without an injected instruction, read through each lens, beside the paper's hidden-state baseline.

    Example: lens-hub detect gpt2 --lens ./lens --lens logit --normal normal.jsonl --anomalous injected.jsonl

    Example: lens-hub detect smollm2-offline --lens ./lens --lens logit --task capitals --task sentiment --items 200
    """
    # Everything that can be checked without the model is checked first: loading it takes the longest.
    names = lens or (["logit"] if task else ["logit", "hidden"])
    if len(set(names)) != len(names):
        raise typer.BadParameter(f"--lens was given the same source twice: {names}")
    if task:
        _detect_tasks(model, task, names, method, shots=shots, items=items, seeds=seeds, bootstrap=bootstrap,
                      seed=seed, json_out=json_out, png=png, revision=revision, dtype=dtype, device=device,
                      baseline_every=baseline_every, baseline_index=baseline_index,
                      allow_mismatch=allow_mismatch)  # fmt: skip
        return
    if normal is None or anomalous is None:
        raise typer.BadParameter("give --normal and --anomalous prompt files, or --task for the paper's experiment")
    if png is not None:
        raise typer.BadParameter("--png plots the --task experiment; without --task, write --json", param_hint="--png")

    from .. import TunedLens
    from ..analysis.anomaly import (
        HIDDEN,
        LOGIT,
        check_methods,
        evaluate_detection,
        read_prompts,
        results_table,
        split_normal,
    )
    from ..analysis.anomaly import write_json as write_detection_json
    from ..core.models import load_model_and_tokenizer

    methods = check_methods([m.value for m in method] if method else [m.value for m in DetectMethod])
    read_layers = _parse_layers(layers)
    fit, held_out = split_normal(read_prompts(normal, field=text_field), fit_fraction, seed=seed)
    attacks = read_prompts(anomalous, field=text_field)
    tuned_names = [n for n in names if n not in (LOGIT, HIDDEN)]
    labels = {n: n if n in (LOGIT, HIDDEN) else "tuned" if len(tuned_names) == 1 else f"tuned:{n}" for n in names}
    from .preflight import check_lens_arg, check_model_args

    # --layers are lens layers: checked against the model's layer count when a lens reads them (not 'hidden').
    config = check_model_args(model, revision=revision, layers=read_layers if names != [HIDDEN] else None)
    for name in tuned_names:
        check_lens_arg(name, config, flag="--lens")

    net, tokenizer = load_model_and_tokenizer(model, revision=revision, dtype=_dtype(dtype), device=_device(device))
    sources = {
        labels[n]: n if n in (LOGIT, HIDDEN) else TunedLens.from_pretrained(n, model=net, allow_mismatch=allow_mismatch)
        for n in names
    }
    from ..core.progress import ProgressReport

    total, reading = len(fit) + len(held_out) + len(attacks), f"through {', '.join(sources)}"
    with ProgressReport("detect", console, total=total, unit="prompts", info=reading) as progress:
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
            progress=progress,
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


def _detect_tasks(
    model: str,
    specs: list[str],
    names: list[str],
    method: list[DetectMethod] | None,
    *,
    shots: int,
    items: int | None,
    seeds: int,
    bootstrap: int,
    seed: int,
    json_out: Path | None,
    png: Path | None,
    revision: str | None,
    dtype: str,
    device: str | None,
    baseline_every: int,
    baseline_index: int,
    allow_mismatch: bool,
) -> None:
    """`detect --task`: the paper's prompt-injection experiment (`lens_hub.analysis.injection`)."""
    from .. import TunedLens
    from ..analysis.injection import PAPER_METHODS, check_protocol_methods, paper_table, run_injection_experiment
    from ..analysis.injection import write_injection_png as write_png
    from ..analysis.tasks import resolve_task
    from ..core.models import load_model_and_tokenizer
    from ..core.progress import ProgressReport
    from .preflight import check_lens_arg, check_model_args

    if "hidden" in names:
        raise typer.BadParameter("with --task the hidden-state baseline is always reported: drop --lens hidden")
    methods = check_protocol_methods([m.value for m in method] if method else list(PAPER_METHODS))
    tasks = [resolve_task(spec) for spec in specs]
    tuned_names = [n for n in names if n != "logit"]
    labels = {n: n if n == "logit" else "tuned" if len(tuned_names) == 1 else f"tuned:{n}" for n in names}
    config = check_model_args(model, revision=revision, layers=None)
    for name in tuned_names:
        check_lens_arg(name, config, flag="--lens")

    net, tokenizer = load_model_and_tokenizer(model, revision=revision, dtype=_dtype(dtype), device=_device(device))
    sources = {
        labels[n]: n if n == "logit" else TunedLens.from_pretrained(n, model=net, allow_mismatch=allow_mismatch)
        for n in names
    }
    with ProgressReport("detect", console, unit="prompts", info=f"through {', '.join(sources)}") as progress:
        report = run_injection_experiment(
            net, tokenizer, sources, tasks, shots=shots, limit=items, prompt_seed=seed, seeds=seeds,
            bootstrap=bootstrap, methods=methods, baseline_every=baseline_every, baseline_index=baseline_index,
            progress=progress,
        )  # fmt: skip
    report.meta = {"model": model, "lenses": {labels[n]: n for n in names}}
    console.print(report.table(title=f"{model}: prompt-injection detection, median AUROC [95% range]"))
    console.print(paper_table())
    if json_out:
        console.print(f"wrote {report.write_json(json_out)}")
    if png:
        console.print(f"wrote {write_png(report, png, title=f'{model}: prompt-injection detection')}")


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
    allow_mismatch: AllowMismatchOption = False,
    revision: RevisionOption = None,
    dtype: DtypeOption = "auto",
    device: DeviceOption = None,
) -> None:
    """Explore prediction trajectories in the browser: a local page (127.0.0.1 only) where you type a prompt and
    see what every layer predicts, through the lens and --compare side by side, coloured by a statistic, with the
    top tokens on hover and PNG/HTML downloads. The page opens on an example; its address links to the prompt and
    statistic shown (?prompt=...&stat=kl). The model loads once; Ctrl-C stops the server.

    Needs FastAPI and uvicorn: pip install "lens-hub\\[serve]".

    Example: lens-hub serve smollm2-offline --lens ./my-lens --compare logit --port 8000
    """
    # Cheap checks first, binding the port included: loading the model takes the longest.
    if compare is not None and compare == lens:
        raise typer.BadParameter(f"--compare names the same lens as --lens ({lens!r}): compare two different lenses")
    read_layers = _parse_layers(layers)
    from ..serve.app import check_serve_extra, load_app, open_socket, url_of
    from ..serve.app import serve as run_server

    check_serve_extra()
    sock = open_socket(port)
    try:
        with console.status(f"Loading {model} and its lens{'es' if compare else ''}..."):
            explorer_app = load_app(
                model,
                lens=lens,
                compare=compare,
                allow_mismatch=allow_mismatch,
                revision=revision,
                dtype=_dtype(dtype),
                device=_device(device),
                layers=read_layers,
                max_tokens=max_tokens,
                top_k=top_k,
            )
            explorer = explorer_app.state.explorer
            if explorer.example is not None:  # the page opens on it: read now, it shows at once (and warms up torch)
                explorer.read(explorer.example)
        console.print(f"lens-hub explorer on {url_of(sock)} (Ctrl-C to stop)", highlight=False, soft_wrap=True)
        sys.stdout.flush()  # a pipe (a log, a test) sees the address now, not when the buffer fills
        run_server(explorer_app, sock=sock)
    except KeyboardInterrupt:
        pass  # Ctrl-C while loading: nothing to clean up but the socket
    finally:
        sock.close()
    console.print("explorer stopped")
