"""The model card (``README.md``) published with a lens: YAML metadata for the Hub, then a plain Markdown body.

The text is built directly (no template engine), so what is uploaded is exactly what `build_card` returns.
The metadata block is written with ``yaml.safe_dump``, which quotes whatever needs quoting; ``huggingface_hub``'s
``ModelCard`` parses it back.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from urllib.parse import quote

import yaml

from ..core.config import LayerMetrics, LensConfig, TrainingInfo
from ..registry.quality import assess

CARD_NAME = "README.md"
PLOT_NAME = "eval.png"
CARD_TAGS = ("tuned-lens", "interpretability", "lens-hub")


@dataclass(frozen=True)
class CardInfo:
    """Where the card's lens lives and under which names it loads."""

    base_model: str  # canonical Hub id of the base model
    repo_id: str
    version: str
    tag: str
    subfolder: str = ""
    license: str | None = None
    has_plot: bool = False
    untrained_layers: tuple[int, ...] | None = None  # from the weights (None: not checked; the push always checks)


def has_metrics(config: LensConfig) -> bool:
    """Whether the config holds evaluation metrics worth a table and a plot."""
    ev = config.evaluation
    if ev is None:
        return False
    return any(getattr(m, key) for m in (ev.tuned, ev.logit) for key in ("kl", "cross_entropy"))


def card_metadata(info: CardInfo) -> dict:
    """The YAML metadata of the card (the keys the Hub indexes)."""
    data: dict = {
        "base_model": info.base_model,
        "base_model_relation": "adapter",
        "library_name": "lens-hub",
        "tags": list(CARD_TAGS),
    }
    if info.license:
        data["license"] = info.license
    return data


def build_card(config: LensConfig, info: CardInfo) -> str:
    """The full text of the model card for ``config`` published as described by ``info``."""
    meta = yaml.safe_dump(card_metadata(info), sort_keys=False, allow_unicode=True, width=1000)
    parts = [
        f"---\n{meta}---\n",
        _intro(config, info),
        _usage(info, example_layer(config, info.untrained_layers or ())),
        _training(config),
        _evaluation(config, info),
    ]
    return "\n".join(p for p in parts if p).rstrip("\n") + "\n"


def _intro(config: LensConfig, info: CardInfo) -> str:
    where = _code(info.repo_id) + (f", folder {_code(info.subfolder)}" if info.subfolder else "")
    revision = f" at revision {_code(config.base_revision)}" if config.base_revision else ""
    bias = "a weight matrix and a bias" if config.bias else "a weight matrix (no bias)"
    return (
        f"# Tuned lens for {info.base_model}\n\n"
        f"A **tuned lens** (Belrose et al. 2023, [arXiv 2303.08112](https://arxiv.org/abs/2303.08112)) for "
        f"[{info.base_model}](https://huggingface.co/{info.base_model}){revision}, version **{info.version}** "
        f"(tag {_code(info.tag)} in {where}), published with [lens-hub](https://pypi.org/project/lens-hub/).\n\n"
        "A lens reads what the model predicts after each layer. The tuned lens applies one learned affine "
        f"*translator* per layer ({bias}, here {_translators(config)}), then the model's "
        "own final norm and unembedding: `unembed(final_norm(h + W h + b))`. It is trained to minimise "
        "KL(final-layer distribution ‖ lens distribution); with `W = b = 0` it is exactly the logit lens.\n\n"
        "| file | content |\n|---|---|\n"
        f"| `config.json` | what the lens fits: model type {_cell(config.model_type)}, {config.num_layers} layers, "
        f"hidden size {config.hidden_size}, vocabulary {config.vocab_size}, unembedding fingerprint; provenance |\n"
        f"| `lens.safetensors` | the translators (`translators.{{i}}.weight`, `translators.{{i}}.bias`), "
        f"{config.dtype}, safetensors (no pickle) |\n"
    )


def _translators(config: LensConfig) -> str:
    """Which translators the lens holds: all layers, or only the trained ones (the others are the identity)."""
    t = config.training
    trained = sorted(set(t.layers)) if t is not None and t.layers is not None else None
    if trained is None or len(trained) >= config.num_layers:
        return f"{config.num_layers} of width {config.hidden_size}"
    return (
        f"translators for layers {', '.join(map(str, trained))} (of {config.num_layers}) of width "
        f"{config.hidden_size}; the others are identity"
    )


def pinned_uri(info: CardInfo) -> str:
    """The ``hf://`` name that loads exactly this release: the tag, percent-encoded (``sub%2Fv1.0.0``) in a folder."""
    return f"hf://{info.repo_id}@{quote(info.tag, safe='')}" + (f"/{info.subfolder}" if info.subfolder else "")


def example_layer(config: LensConfig, untrained: Collection[int]) -> int:
    """The layer the card's snippet reads: the middle trained one (a layer left untrained would show the logit lens
    and teach nothing). ``untrained``: what ``untrained_translators`` found in the weights."""
    skip = set(untrained)
    trained = [i for i in range(config.num_layers) if i not in skip] or list(range(config.num_layers))
    return trained[len(trained) // 2]


def _usage(info: CardInfo, layer: int) -> str:
    direct = (
        "# straight from this repository, pinned to the release tag\n"
        f'lens = TunedLens.from_pretrained("{pinned_uri(info)}", model=model)'
    )
    return (
        "## Usage\n\n"
        "```bash\npip install lens-hub\n```\n\n"
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from lens_hub import TunedLens\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{info.base_model}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{info.base_model}")\n'
        f'lens = TunedLens.from_pretrained("{info.base_model}", model=model)  # the registry\'s default lens\n'
        f'lens = TunedLens.from_pretrained("{info.base_model}", version="{info.version}", model=model)  # this one\n'
        f"{direct}\n\n"
        'input_ids = tokenizer("The capital of France is", return_tensors="pt").input_ids\n'
        "hidden = model(input_ids, output_hidden_states=True).hidden_states\n"
        f"logits = lens(hidden[{layer}], {layer})  # what layer {layer} predicts\n"
        "```\n\n"
        "Every file is checked (size, sha256, and the lens's facts against the model) before a tensor is used.\n"
    )


def _training(config: LensConfig) -> str:
    t = config.training
    if t is None:
        return "## Training\n\nNo training provenance is recorded in `config.json`.\n"
    rows = [
        ("dataset", public_dataset(t.dataset)),
        ("initialisation", _initialisation(t)),
        ("tokens", f"{t.num_tokens:,}" if t.num_tokens is not None else None),
        ("steps", t.steps),
        ("objective", t.loss),
        ("layers trained", "all" if t.layers is None else ", ".join(map(str, t.layers))),
        ("optimizer", t.optimizer),
        ("learning rate", _number(t.learning_rate)),
        ("momentum", _number(t.momentum)),
        ("weight decay", _number(t.weight_decay)),
        ("warm-up steps", t.warmup_steps),
        ("gradient clipping", _number(t.grad_clip)),
        ("tokens per step", f"{t.tokens_per_step:,}" if t.tokens_per_step is not None else None),
        ("sequence length", t.seq_len),
        ("processes", t.world_size),
        ("biases only", t.bias_only or None),
        ("started from", t.init_from),
        ("softmax/KL kernel", t.kernel),
        ("seed", t.seed),
        ("lens-hub version", t.lens_hub_version or config.lens_hub_version),
    ]
    # Lenses of older versions recorded values in a free mapping, often under a field's own (or a synonymous)
    # name: show each under the field's label, once, and only where the field itself is empty.
    shown = {label for label, value in rows if value is not None}
    for key, value in sorted(t.hyperparameters.items()):
        label = _SYNONYMS.get(key.lower().replace("-", "_"), _key_label(key))
        if label not in shown:
            rows.append((label, _value(value)))
            shown.add(label)
    lines = ["## Training\n", "| | |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in rows if v is not None]
    return "\n".join(lines) + "\n"


def _initialisation(t: TrainingInfo) -> str | None:
    """How the translators started, in words: the closed-form fit (tokens, ridge), zero, or another lens."""
    if t.init == "fit":
        tokens = f" on {t.fit_tokens:,} tokens" if t.fit_tokens is not None else ""
        ridge = f" (ridge {_number(t.fit_ridge)})" if t.fit_ridge is not None else ""
        polish = f", then {t.steps} KL steps" if t.steps else ", no KL steps"
        return f"closed-form fit{tokens}{ridge}{polish}"
    if t.init == "zero":
        return "zero (the logit lens), the paper's recipe"
    if t.init == "lens":
        return "an existing lens (fine-tuned)"
    return None


# Names older lens-hub versions (and tuned-lens) used in ``hyperparameters`` -> the label of the field they duplicate.
_SYNONYMS = {
    "dataset": "dataset",
    "num_tokens": "tokens",
    "tokens": "tokens",
    "steps": "steps",
    "num_steps": "steps",
    "loss": "objective",
    "objective": "objective",
    "layers": "layers trained",
    "optimizer": "optimizer",
    "lr": "learning rate",
    "learning_rate": "learning rate",
    "momentum": "momentum",
    "weight_decay": "weight decay",
    "wd": "weight decay",
    "warmup_steps": "warm-up steps",
    "grad_clip": "gradient clipping",
    "clip": "gradient clipping",
    "tokens_per_step": "tokens per step",
    "seq_len": "sequence length",
    "seed": "seed",
}


def _number(value: float | None) -> str | None:
    """4 significant digits: a learning rate of 0.1000000001 is 0.1 on a card."""
    return None if value is None else f"{value:.4g}"


def _value(value: object) -> str:
    """A free-form value as a reader wants it: strings unquoted, floats rounded, lists comma-separated."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return _number(value) if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items())
    return str(value)


_TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".csv", ".text")


def _looks_local(name: str) -> bool:
    """Whether a recorded dataset names a local file or folder rather than a Hub dataset ``org/name[:config]``
    (the test of `lens_hub.training.data.is_local`, without touching the file system: the card is built elsewhere)."""
    return (
        name.startswith((".", "/", "~", "\\"))
        or name.endswith(("/", "\\"))
        or PureWindowsPath(name).drive != ""
        or name.lower().endswith(_TEXT_SUFFIXES)
    )


_SUFFIX = re.compile(r"^(?P<path>.*?)(?P<rest> \([^()]*\))?$")
HELD_OUT = " (held out)"  # what `lens_hub.training.data.TokenData.split` appends to the held-out part's source


def public_dataset(dataset: str | None) -> str | None:
    """The dataset as a published lens records it: a Hub dataset as recorded (``org/name@commit (train)``); a local
    file or folder by its name only (``/home/me/notes.txt (held out)`` -> ``notes.txt (held out)``), since a path
    tells a reader nothing and leaks the publisher's directory layout. Idempotent."""
    if not dataset:
        return dataset
    match = _SUFFIX.match(dataset)
    path, rest = (match["path"], match["rest"] or "") if match else (dataset, "")
    if not _looks_local(path):
        return dataset
    name = PureWindowsPath(path).name if "\\" in path or PureWindowsPath(path).drive else PurePosixPath(path).name
    return f"{name if name and name not in ('~', '.', '..') else 'local text'}{rest}"


# Markdown that could turn recorded text into a link, an image, emphasis or a table column; HTML is escaped first.
_MARKDOWN = re.compile(r"([\\`*_\[\]|])")


def _cell(value: object) -> str:
    """Recorded text as inert Markdown: HTML escaped, link/image/emphasis/table syntax backslash-escaped, one line.

    Config values come from strangers (a converted legacy lens, an adopted repo): ``<script>``, ``<img onerror>``
    or ``[x](javascript:...)`` must reach a card as text, never as markup.
    """
    return _MARKDOWN.sub(r"\\\1", html.escape(str(value), quote=False).replace("\n", " ").replace("\r", " "))


def _key_label(key: str) -> str:
    """A hyperparameter's name: code when it is a plain identifier, escaped text otherwise (no markup either way)."""
    return f"`{key}`" if re.fullmatch(r"[A-Za-z0-9_.-]+", key) else _cell(key)


def _code(value: object) -> str:
    """Recorded text as an inline code span (which shows HTML as text): backticks and line breaks replaced, pipes
    escaped (a table cell ends at a pipe even inside code)."""
    text = str(value).replace("`", "'").replace("\n", " ").replace("\r", " ").replace("|", "\\|")
    return f"`{text}`"


def _fmt(metrics: LayerMetrics, key: str, i: int) -> str:
    values = getattr(metrics, key)
    return f"{values[i]:.3f}" if values is not None and i < len(values) else "–"


def _evaluation(config: LensConfig, info: CardInfo) -> str:
    ev = config.evaluation
    caveats = quality_caveats(config, info)
    if ev is None or not has_metrics(config):
        return (
            "## Evaluation\n\nNo evaluation is recorded in `config.json`, so nothing here says how well this lens "
            "reads the model (run `lens-hub eval LENS --store` before publishing).\n" + caveats
        )
    # The sentence says "held-out" itself: the dataset's own " (held out)" would say it twice.
    where = f" on {_cell(public_dataset(ev.dataset).removesuffix(HELD_OUT))}" if ev.dataset else ""  # type: ignore[union-attr]
    tokens = f" ({ev.num_tokens:,} tokens)" if ev.num_tokens else ""
    n = max(len(getattr(m, k) or []) for m in (ev.tuned, ev.logit) for k in ("kl", "cross_entropy"))
    lines = [
        "## Evaluation\n",
        f"Held-out evaluation{where}{tokens}, in bits per byte (lower is better): KL(final layer ‖ lens) and "
        "cross-entropy against the next token, tuned lens vs logit lens.\n",
        "| layer | KL tuned | KL logit | cross-entropy tuned | cross-entropy logit |",
        "|---:|---:|---:|---:|---:|",
    ]
    labels = ev.layers if ev.layers is not None else list(range(n))  # the evaluated layers, not row numbers
    lines += [
        f"| {layer} | {_fmt(ev.tuned, 'kl', i)} | {_fmt(ev.logit, 'kl', i)} | {_fmt(ev.tuned, 'cross_entropy', i)} "
        f"| {_fmt(ev.logit, 'cross_entropy', i)} |"
        for i, layer in enumerate(labels[:n])
    ]
    if ev.model_cross_entropy is not None:
        lines.append(f"\nThe model's own cross-entropy: {ev.model_cross_entropy:.3f} bits per byte.")
    if info.has_plot:
        lines.append(f"\n![KL and cross-entropy per layer, tuned lens vs logit lens]({PLOT_NAME})")
    return "\n".join(lines) + "\n" + caveats


def quality_caveats(config: LensConfig, info: CardInfo) -> str:
    """The card's warning paragraph: what `lens_hub.registry.quality` flags (barely better than the logit lens,
    untrained layers), but not the missing evaluation, which the section says itself; '' when nothing is flagged."""
    quality = assess(config.evaluation, config.training, info.untrained_layers, config.num_layers)
    problems = [p for key, p in quality.problems().items() if key != "unevaluated"]
    return "".join(f"\n**Caveat:** {_cell(p)}.\n" for p in problems)
