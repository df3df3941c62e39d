"""The model card (``README.md``) published with a lens: YAML metadata for the Hub, then a plain Markdown body.

The text is built directly (no template engine), so what is uploaded is exactly what `build_card` returns.
The metadata block is written with ``yaml.safe_dump``, which quotes whatever needs quoting; ``huggingface_hub``'s
``ModelCard`` parses it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote

import yaml

from .config import LayerMetrics, LensConfig

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
    parts = [f"---\n{meta}---\n", _intro(config, info), _usage(info), _training(config), _evaluation(config, info)]
    return "\n".join(p for p in parts if p).rstrip("\n") + "\n"


def _intro(config: LensConfig, info: CardInfo) -> str:
    where = f"`{info.repo_id}`" + (f", folder `{info.subfolder}`" if info.subfolder else "")
    revision = f" at revision `{config.base_revision}`" if config.base_revision else ""
    bias = "a weight matrix and a bias" if config.bias else "a weight matrix (no bias)"
    return (
        f"# Tuned lens for {info.base_model}\n\n"
        f"A **tuned lens** (Belrose et al. 2023, [arXiv 2303.08112](https://arxiv.org/abs/2303.08112)) for "
        f"[{info.base_model}](https://huggingface.co/{info.base_model}){revision}, version **{info.version}** "
        f"(tag `{info.tag}` in {where}), published with [lens-hub](https://pypi.org/project/lens-hub/).\n\n"
        "A lens reads what the model predicts after each layer. The tuned lens applies one learned affine "
        f"*translator* per layer ({bias}, here {config.num_layers} of width {config.hidden_size}), then the model's "
        "own final norm and unembedding: `unembed(final_norm(h + W h + b))`. It is trained to minimise "
        "KL(final-layer distribution ‖ lens distribution); with `W = b = 0` it is exactly the logit lens.\n\n"
        "| file | content |\n|---|---|\n"
        f"| `config.json` | what the lens fits: model type `{config.model_type}`, {config.num_layers} layers, hidden "
        f"size {config.hidden_size}, vocabulary {config.vocab_size}, unembedding fingerprint; provenance |\n"
        f"| `lens.safetensors` | the translators (`translators.{{i}}.weight`, `translators.{{i}}.bias`), "
        f"{config.dtype}, safetensors (no pickle) |\n"
    )


def pinned_uri(info: CardInfo) -> str:
    """The ``hf://`` name that loads exactly this release: the tag, percent-encoded (``sub%2Fv1.0.0``) in a folder."""
    return f"hf://{info.repo_id}@{quote(info.tag, safe='')}" + (f"/{info.subfolder}" if info.subfolder else "")


def _usage(info: CardInfo) -> str:
    direct = (
        "# straight from this repository, pinned to the release tag\n"
        f'lens = TunedLens.from_pretrained("{pinned_uri(info)}", model=model)'
    )
    return (
        "## Usage\n\n"
        "```bash\npip install lens-hub\n```\n\n"
        "```python\n"
        "from transformers import AutoModelForCausalLM\n"
        "from lens_hub import TunedLens\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{info.base_model}")\n'
        f'lens = TunedLens.from_pretrained("{info.base_model}", model=model)  # the registry\'s default lens\n'
        f'lens = TunedLens.from_pretrained("{info.base_model}", version="{info.version}", model=model)  # this one\n'
        f"{direct}\n\n"
        "hidden = model(input_ids, output_hidden_states=True).hidden_states\n"
        "logits = lens(hidden[5], 5)  # what layer 5 predicts\n"
        "```\n\n"
        "Every file is checked (size, sha256, and the lens's facts against the model) before a tensor is used.\n"
    )


def _training(config: LensConfig) -> str:
    t = config.training
    if t is None:
        return "## Training\n\nNo training provenance is recorded in `config.json`.\n"
    rows = [
        ("dataset", t.dataset),
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
    rows += [(f"`{k}`", json.dumps(v)) for k, v in sorted(t.hyperparameters.items())]  # lenses of older versions
    lines = ["## Training\n", "| | |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in rows if v is not None]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:g}"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _fmt(metrics: LayerMetrics, key: str, i: int) -> str:
    values = getattr(metrics, key)
    return f"{values[i]:.3f}" if values is not None and i < len(values) else "–"


def _evaluation(config: LensConfig, info: CardInfo) -> str:
    ev = config.evaluation
    if ev is None or not has_metrics(config):
        return "## Evaluation\n\nNo evaluation is recorded in `config.json`; run `lens-hub eval LENS --store`.\n"
    where = f" on {ev.dataset}" if ev.dataset else ""
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
    return "\n".join(lines) + "\n"
