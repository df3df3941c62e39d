"""Anomaly detection on prediction trajectories: flag prompts (e.g. prompt injections) the model reads abnormally.

This is the prompt-injection application of the tuned-lens paper (Belrose et al. 2023, arXiv 2303.08112): read each
prompt's prediction trajectory at its final token, turn it into a feature vector, fit an unsupervised anomaly
detector on *normal* prompts only, and score held-out normal and anomalous prompts; the detector is good if the
anomalous ones score higher, measured by the AUROC with a bootstrap confidence interval. The paper compares
tuned-lens trajectories, logit-lens trajectories and a baseline on the model's final hidden state (Mahalanobis
distance); `evaluate_detection` reruns that comparison in one call.

Feature sources:

- a lens (a `TunedLens`, a `LogitLens`, or the name ``"logit"``): the paper (as we read it) gives the detectors
  the lens's trajectory at the last token as one vector. A whole distribution per layer is ``vocab`` numbers, far
  too many for a few dozen fitting prompts, so each layer ``i`` is summarised here by four vocabulary-free
  statistics of the lens distribution ``q_i`` (`LENS_STATISTICS`): its entropy H(q_i); KL(p || q_i) to the
  model's output ``p``; the Jensen-Shannon divergence JS(q_i, q_next) to the next row read (the next chosen layer,
  or the output after the last one), which is how much the prediction still moves; and log q_i(argmax p), how
  much the layer already believes the model's final top-1 token. One extra feature, H(p), closes the vector:
  ``4 * len(layers) + 1`` numbers per prompt, in nats, averaged over the prompt's last ``last_tokens`` positions;
- ``"hidden"``: the model's final (final-normed) hidden state at the last token(s), ``hidden_size`` numbers: the
  paper's baseline input.

The paper reads the final token of benchmark prompts, where the model predicts the answer. For a chat model,
``chat_template=True`` gets the same reading: each prompt becomes the user turn of the chat template, and the last
position is the one where the model starts its reply.

Detectors (`fit_detector`, `score`; a higher score is more anomalous), each fitted on normal prompts only, on
features standardised with the fitting set's mean and standard deviation:

- ``"iforest"``: scikit-learn's isolation forest;
- ``"lof"``: scikit-learn's local outlier factor in novelty mode (``novelty=True``, so it scores unseen points);
- ``"mahalanobis"``: the Mahalanobis distance to the fitting set's mean under scikit-learn's Ledoit-Wolf shrinkage
  covariance.

The AUROC and the ROC curve (`auroc`, `bootstrap_auroc`, `roc_curve`) are scikit-learn's too. scikit-learn is an
optional extra (``pip install "lens-hub[anomaly]"``) that every detector and metric needs; it is imported only when
one of them runs, so importing this module (and reading prompts or extracting features) never imports it.

Example:
    >>> from lens_hub import TunedLens
    >>> from lens_hub.analysis.anomaly import evaluate_detection, read_prompts, split_normal
    >>> normal = read_prompts("lens_hub/samples/prompt-injection/normal.jsonl")
    >>> fit, test = split_normal(normal, 0.5, seed=0)
    >>> report = evaluate_detection(model, tokenizer, {"tuned": lens, "logit": "logit", "hidden": "hidden"},
    ...                             fit, test, read_prompts("lens_hub/samples/prompt-injection/injected.jsonl"))
    >>> report.result("tuned", "iforest").auroc
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..core.format import text_lines
from ..core.lens import BaseTunedLens, Lens, LogitLens
from ..core.models import hidden_states, max_positions
from ..core.progress import Progress
from ..errors import AnomalyError, MissingExtraError, PromptFileError

Method = Literal["iforest", "lof", "mahalanobis"]
METHODS: tuple[str, ...] = ("iforest", "lof", "mahalanobis")
LENS_STATISTICS: tuple[str, ...] = ("entropy", "kl_to_final", "js_to_next", "logp_final_top1")
HIDDEN = "hidden"
LOGIT = "logit"
SCHEMA = "lens-hub-anomaly/1"
INSTALL_HINT = 'pip install "lens-hub[anomaly]"'

FeatureSource = Lens | str
"""A lens object, or the name ``"logit"`` (the model's logit lens) or ``"hidden"`` (the final hidden state)."""


# --------------------------------------------------------------------------------------------------- prompts


MAX_PROMPT_FILE_BYTES = 64 * 2**20  # a prompt set of thousands of prompts is a few MB


def read_prompts(path: str | os.PathLike[str], *, field: str = "text") -> list[str]:
    """Read prompts from a ``.jsonl`` file (one JSON object per line, the prompt in ``field``) or a text file
    (one prompt per non-empty line).

    Args:
        path: The file.
        field: The key holding the prompt in each JSON object.

    Returns:
        The prompts, in file order.

    Raises:
        PromptFileError: If the file is missing, a line is not a JSON object with a non-empty string ``field``,
            or the file holds no prompt.
    """
    file = Path(path)
    if not file.is_file():
        raise PromptFileError(f"prompt file {file} does not exist: pass a .jsonl file with a {field!r} field per line")
    if file.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise PromptFileError(
            f"prompt file {file} is {file.stat().st_size:,} bytes, more than the {MAX_PROMPT_FILE_BYTES:,} a prompt "
            "set may have; split it or sample from it"
        )
    prompts: list[str] = []
    jsonl = file.suffix == ".jsonl"
    try:
        for n, line in text_lines(file, records=jsonl):
            text = line.get(field) if isinstance(line, dict) else None if jsonl else line
            if not isinstance(text, str) or not text.strip():
                raise PromptFileError(
                    f"{file}:{n} has no non-empty string field {field!r}: add it, or name the key that holds the "
                    "prompt with field=... (--text-field)"
                )
            prompts.append(text)
    except ValueError as exc:  # not UTF-8, or not JSON
        raise PromptFileError(f"{exc}: write one prompt per line, or one JSON object per line in a .jsonl") from None
    if not prompts:
        raise PromptFileError(f"{file} holds no prompts: write one JSON object with a {field!r} field per line")
    return prompts


def split_normal(texts: Sequence[str], fit_fraction: float = 0.5, *, seed: int = 0) -> tuple[list[str], list[str]]:
    """Shuffle normal prompts with ``seed`` and split them into a fitting set and a held-out test set.

    Args:
        texts: The normal prompts.
        fit_fraction: Share of them the detectors are fitted on (rounded, at least 2, leaving at least 1).
        seed: Seed of the shuffle.

    Returns:
        ``(fit, test)``.

    Raises:
        AnomalyError: If ``fit_fraction`` is not strictly between 0 and 1, or there are too few prompts for both
            sets (2 to fit on, 1 to test).
    """
    if not 0.0 < fit_fraction < 1.0:
        raise AnomalyError(
            f"fit_fraction (--fit-fraction) must be strictly between 0 and 1, not {fit_fraction}: try 0.5"
        )
    if len(texts) < 3:
        raise AnomalyError(
            f"{len(texts)} normal prompt(s) (--normal) cannot be split: give at least 3 (2 to fit, 1 to test)"
        )
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_fit = min(len(texts) - 1, max(2, round(fit_fraction * len(texts))))
    return [texts[i] for i in order[:n_fit]], [texts[i] for i in order[n_fit:]]


# ------------------------------------------------------------------------------------------ feature extraction


def source_label(source: FeatureSource) -> str:
    """The short name of a feature source: ``"tuned"``, ``"logit"`` or ``"hidden"`` (other lenses: their class).

    Raises:
        AnomalyError: If ``source`` is a string other than ``"logit"`` and ``"hidden"``.
    """
    if isinstance(source, str):
        if source not in (LOGIT, HIDDEN):
            raise AnomalyError(
                f"unknown feature source {source!r}: use 'logit', 'hidden', or a lens object "
                "(for a tuned lens, TunedLens.from_pretrained(name, model=model))"
            )
        return source
    if isinstance(source, BaseTunedLens):
        return "tuned"
    if isinstance(source, LogitLens):
        return LOGIT
    return type(source).__name__


def lens_feature_names(layers: Sequence[int]) -> list[str]:
    """Names of the lens features for ``layers``, in the order of the feature vector: ``"<layer>.<statistic>"``
    for each layer and each of `LENS_STATISTICS`, then ``"output.entropy"``."""
    return [f"{i}.{stat}" for i in layers for stat in LENS_STATISTICS] + ["output.entropy"]


def _named_sources(
    sources: FeatureSource | Sequence[FeatureSource] | Mapping[str, FeatureSource], model: nn.Module
) -> dict[str, Lens | str]:
    """``sources`` as {label: lens or "hidden"}, with "logit" replaced by the model's logit lens.

    Raises:
        AnomalyError: If no source is given, a name is unknown, or two sources get the same label.
    """
    if isinstance(sources, Mapping):
        items = [(str(k), v) for k, v in sources.items()]
    else:
        given = [sources] if isinstance(sources, (str, Lens)) else list(sources)
        items = [(source_label(s), s) for s in given]
        labels = [label for label, _ in items]
        if len(set(labels)) != len(labels):
            raise AnomalyError(f"two feature sources are both called {labels}: pass a dict {{label: source}} instead")
    if not items:
        raise AnomalyError("no feature source given: pass a lens, 'logit' or 'hidden'")
    named: dict[str, Lens | str] = {}
    logit: LogitLens | None = None
    for label, source in items:
        source_label(source)  # validates names
        if source == LOGIT:
            logit = logit or LogitLens.from_model(model)
            named[label] = logit
        else:
            named[label] = source
    return named


def _resolve_layers(named: Mapping[str, Lens | str], layers: Sequence[int] | None) -> list[int] | None:
    """The sorted, distinct lens layers to read (default: all), checked against every lens; None if no lens.

    Raises:
        AnomalyError: If the lenses read different numbers of layers or a layer is out of range.
    """
    lenses = [s for s in named.values() if isinstance(s, Lens)]
    if not lenses:
        return None
    depths = {lens.num_layers for lens in lenses}
    if len(depths) != 1:
        raise AnomalyError(f"the lenses read different numbers of layers ({sorted(depths)}): use lenses of one model")
    (depth,) = depths
    rows = list(range(depth)) if layers is None else sorted({int(i) for i in layers})
    bad = [i for i in rows if not 0 <= i < depth]
    if bad or not rows:
        raise AnomalyError(f"layers {bad or '[]'} (--layers) are not lens layers: choose from 0..{depth - 1}")
    return rows


def _encode(tokenizer: Any, texts: Sequence[str], limit: int | None, chat: bool) -> list[torch.Tensor]:
    """Token ids of each text, keeping only the last ``limit`` tokens of a longer one (its end is what we read).

    With ``chat``, a text becomes the user turn of the tokenizer's chat template, followed by the generation
    prompt; the rendered template already holds its special tokens, so none are added again (as
    ``apply_chat_template`` itself tokenizes).

    Raises:
        AnomalyError: If a text is empty or tokenizes to no tokens, or ``chat`` is asked of a tokenizer without a
            chat template.
    """
    if chat and not getattr(tokenizer, "chat_template", None):
        raise AnomalyError(
            "this tokenizer has no chat template: read the prompts as plain text (chat_template=False; without --chat)"
        )
    encoded = []
    for n, text in enumerate(texts):
        ids = None
        if isinstance(text, str) and text:
            if chat:
                turn = [{"role": "user", "content": text}]
                rendered = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
                ids = tokenizer(rendered, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            else:
                ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
        if ids is None or len(ids) == 0:
            raise AnomalyError(f"prompt {n} ({text!r}) is empty or tokenizes to no tokens: remove it")
        encoded.append(ids[-limit:] if limit else ids)
    return encoded


def _last_positions(lengths: torch.Tensor, last_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [batch, k] of each sequence's last ``k = last_tokens`` positions and their weights (1, or 0 for the
    slots of a sequence shorter than k, whose index is clamped to 0), so a weighted mean averages real positions."""
    offsets = torch.arange(last_tokens - 1, -1, -1)  # k-1 .. 0 positions before the last
    idx = lengths[:, None] - 1 - offsets[None, :]
    weight = (idx >= 0).float()
    return idx.clamp_min(0), weight


def _gather(h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``h`` [batch, seq, d] at positions ``idx`` [batch, k] -> [batch, k, d]."""
    return h.gather(1, idx.to(h.device)[..., None].expand(-1, -1, h.shape[-1]))


def _mean(stat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean over the positions axis: [batch, k] -> [batch]."""
    return (stat * weight).sum(-1) / weight.sum(-1)


def _lens_features(
    lens: Lens, hidden: Sequence[torch.Tensor], idx: torch.Tensor, weight: torch.Tensor, rows: list[int]
) -> torch.Tensor:
    """The lens features (see the module docstring) of one batch, [batch, 4 * len(rows) + 1], float64 on the CPU.

    Only the last positions go through the unembedding, one layer at a time. Every statistic is written with
    entropies and one inner product so each vocabulary-wide tensor is touched few times (``H`` is entropy, ``p``
    the output distribution, ``m = (q_i + q_next) / 2``):

    - KL(p || q_i) = -H(p) - sum p log q_i;
    - JS(q_i, q_next) = H(m) - (H(q_i) + H(q_next)) / 2.

    Sums over the vocabulary accumulate in float64, which keeps these differences accurate.
    """
    weight = weight.to(hidden[-1].device).double()
    final = torch.log_softmax(lens.unembed.head(_gather(hidden[-1], idx)).float(), dim=-1)
    p = final.exp()
    h_final = torch.special.entr(p).sum(-1, dtype=torch.float64)
    top = final.argmax(-1, keepdim=True)
    per_row: list[list[torch.Tensor]] = []
    prev_q, prev_h = p, h_final  # placeholders until the first row exists
    for n, i in enumerate(rows):
        logq = torch.log_softmax(lens(_gather(hidden[i], idx), i).float(), dim=-1)
        q = logq.exp()
        h = torch.special.entr(q).sum(-1, dtype=torch.float64)
        if n:  # the previous row's JS to this one
            per_row[-1][2] = _mean(_js(prev_q, q, prev_h, h), weight)
        kl = (-h_final - (p * logq).sum(-1, dtype=torch.float64)).clamp_min(0.0)
        per_row.append([_mean(h, weight), _mean(kl, weight), weight[:, 0], _mean(logq.gather(-1, top)[..., 0], weight)])
        prev_q, prev_h = q, h
    per_row[-1][2] = _mean(_js(prev_q, p, prev_h, h_final), weight)
    columns = [value for row in per_row for value in row]
    columns.append(_mean(h_final, weight))
    return torch.stack(columns, dim=-1).cpu()


def _js(q1: torch.Tensor, q2: torch.Tensor, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) of two distributions with entropies ``h1``, ``h2``: H(mix) - mean entropy,
    clamped to [0, ln 2] against rounding."""
    mix = torch.special.entr(0.5 * (q1 + q2)).sum(-1, dtype=torch.float64)
    return (mix - 0.5 * (h1 + h2)).clamp(0.0, math.log(2.0))


@torch.no_grad()
def extract_features(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    sources: FeatureSource | Sequence[FeatureSource] | Mapping[str, FeatureSource],
    *,
    layers: Sequence[int] | None = None,
    last_tokens: int = 1,
    batch_size: int = 8,
    chat_template: bool = False,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Features of every prompt from every source, running the model once per batch for all sources.

    Args:
        model: The causal LM.
        tokenizer: Its tokenizer (prompts are tokenized one by one, as ``tokenizer(text)`` does, so special tokens
            such as BOS are added where the tokenizer adds them; a prompt longer than the model's context keeps its
            last tokens).
        texts: The prompts.
        sources: One source, a list of them (labelled by `source_label`), or a dict {label: source}. A source is a
            lens, ``"logit"`` or ``"hidden"`` (see the module docstring).
        layers: Lens layers to read (default: all of them); ignored by ``"hidden"``.
        last_tokens: Average the features over each prompt's last this many positions (1: the final token only,
            as in the paper).
        batch_size: Prompts per forward pass (right-padded; padding is masked out and never read).
        chat_template: Wrap each prompt as the user turn of the tokenizer's chat template plus the generation
            prompt, so the last position is where the model starts its reply: for chat models, the analogue of
            the paper's reading of the answer prediction.
        progress: Called with (prompts read, prompts in all) after every batch.

    Returns:
        {label: float64 array}. Lens sources: [len(texts), 4 * len(layers) + 1], columns named by
        `lens_feature_names`; ``"hidden"``: [len(texts), hidden_size].

    Raises:
        AnomalyError: No prompts, an empty prompt, an unknown source, bad layers, ``last_tokens`` or
            ``batch_size`` below 1, or ``chat_template`` without a chat template.
    """
    if not texts:
        raise AnomalyError("no prompts given: pass at least one")
    if last_tokens < 1 or batch_size < 1:
        raise AnomalyError(
            f"last_tokens ({last_tokens}, --last-tokens) and batch_size ({batch_size}, --batch-size) must be at least 1"
        )
    named = _named_sources(sources, model)
    rows = _resolve_layers(named, layers)
    encoded = _encode(tokenizer, texts, max_positions(model), chat_template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    device = next(model.parameters()).device
    # Similar lengths share a batch, so little compute goes to padding.
    order = sorted(range(len(texts)), key=lambda n: len(encoded[n]))
    out: dict[str, list[torch.Tensor | None]] = {label: [None] * len(texts) for label in named}
    for start in range(0, len(order), batch_size):
        members = order[start : start + batch_size]
        lengths = torch.tensor([len(encoded[n]) for n in members])
        ids = torch.full((len(members), int(lengths.max())), int(pad), dtype=torch.long)
        for b, n in enumerate(members):
            ids[b, : lengths[b]] = encoded[n]
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        hidden = hidden_states(model, ids.to(device), attention_mask=mask.to(device))
        idx, weight = _last_positions(lengths, last_tokens)
        for label, source in named.items():
            if source == HIDDEN:
                last = _gather(hidden[-1], idx).float()
                w = weight.to(last.device)[..., None]
                feats = ((last * w).sum(1) / w.sum(1)).double().cpu()
            else:
                feats = _lens_features(source, hidden, idx, weight, rows)  # type: ignore[arg-type]
            for b, n in enumerate(members):
                out[label][n] = feats[b]
        if progress is not None:
            progress(start + len(members), len(texts))
    return {label: torch.stack(values).numpy() for label, values in out.items()}  # type: ignore[arg-type]


@torch.no_grad()
def lens_statistics(lens: Lens, hidden: Sequence[torch.Tensor], *, layers: Sequence[int] | None = None) -> np.ndarray:
    """The lens features of `extract_features` (``last_tokens=1``) at the last position of hidden states already
    computed, so a caller that runs the model anyway needs no second pass (`lens_hub.analysis.injection` does).

    Args:
        lens: The lens.
        hidden: All hidden states of a forward pass (``num_layers + 1`` tensors [batch, seq, d]), unpadded: the
            last position of every row is read.
        layers: Lens layers to read (default: all).

    Returns:
        A float64 array [batch, 4 * len(layers) + 1], columns named by `lens_feature_names`.

    Raises:
        AnomalyError: If a layer is out of range.
    """
    rows = _resolve_layers({"lens": lens}, layers) or []
    batch, length = hidden[-1].shape[:2]
    idx, weight = _last_positions(torch.full((batch,), length), 1)
    return _lens_features(lens, hidden, idx, weight, rows).numpy()


def trajectory_features(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    source: FeatureSource,
    *,
    layers: Sequence[int] | None = None,
    last_tokens: int = 1,
    batch_size: int = 8,
    chat_template: bool = False,
) -> np.ndarray:
    """The features of every prompt from one source: `extract_features` for a single source.

    Args:
        model: The causal LM.
        tokenizer: Its tokenizer.
        texts: The prompts.
        source: A lens, ``"logit"`` or ``"hidden"``.
        layers: Lens layers to read (default: all).
        last_tokens: Positions averaged at the end of each prompt.
        batch_size: Prompts per forward pass.
        chat_template: Read each prompt as a user turn of the chat template (see `extract_features`).

    Returns:
        A float64 array [len(texts), num_features] (see `extract_features`).
    """
    (features,) = extract_features(
        model,
        tokenizer,
        texts,
        {"source": source},
        layers=layers,
        last_tokens=last_tokens,
        batch_size=batch_size,
        chat_template=chat_template,
    ).values()
    return features


# ------------------------------------------------------------------------------------------------- detectors


def _sklearn(what: str) -> Any:
    """The scikit-learn submodule ``what``, or a `MissingExtraError` saying how to install it."""
    import importlib

    try:
        return importlib.import_module(f"sklearn.{what}")
    except ImportError as exc:
        raise MissingExtraError(
            f"anomaly detection needs scikit-learn (for every detector and for the AUROC): {INSTALL_HINT}"
        ) from exc


def check_methods(methods: Sequence[str]) -> list[str]:
    """Check detector names, and that scikit-learn (which every detector needs) is installed, before any work.

    Args:
        methods: Detector names.

    Returns:
        The names, as a list.

    Raises:
        AnomalyError: If the list is empty or names an unknown detector.
        MissingExtraError: If scikit-learn is not installed.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise AnomalyError(f"unknown detection method(s) {unknown or '[]'}: choose from {', '.join(METHODS)}")
    _sklearn("base")
    return list(methods)


def _check_features(features: Any, name: str, num_features: int | None = None) -> np.ndarray:
    """``features`` as a finite float64 [samples, features] array.

    Raises:
        AnomalyError: If it is not 2-D, is empty, holds NaN or infinity, or has the wrong number of columns.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise AnomalyError(f"{name} must be a non-empty [samples, features] array, not of shape {x.shape}")
    if not np.isfinite(x).all():
        raise AnomalyError(f"{name} holds NaN or infinite values: check how the features were computed")
    if num_features is not None and x.shape[1] != num_features:
        raise AnomalyError(f"{name} has {x.shape[1]} features but the detector was fitted on {num_features}")
    return x


@dataclass
class _Mahalanobis:
    """Mahalanobis distance to ``mean`` under a covariance given by its eigendecomposition.

    Attributes:
        mean: Mean of the fitting samples.
        eigenvectors: Eigenvectors of the covariance, one per column.
        inv_sqrt_eigenvalues: One over the square root of each eigenvalue.
        shrinkage: The Ledoit-Wolf shrinkage of the covariance, in [0, 1].
    """

    mean: np.ndarray
    eigenvectors: np.ndarray
    inv_sqrt_eigenvalues: np.ndarray
    shrinkage: float

    @classmethod
    def fit(cls, x: np.ndarray) -> _Mahalanobis:
        """Fit on samples ``x`` [samples, dims] with scikit-learn's Ledoit-Wolf shrinkage covariance.

        Shrinkage keeps the covariance well conditioned with fewer samples than dimensions (a few dozen prompts).

        Raises:
            MissingExtraError: If scikit-learn is not installed.
        """
        cov, shrinkage = _sklearn("covariance").ledoit_wolf(x)
        # A small ridge keeps constant features (zero variance, e.g. a layer that never changes) invertible.
        cov += 1e-6 * max(float(np.trace(cov)) / cov.shape[0], 1e-12) * np.eye(cov.shape[0])
        values, vectors = np.linalg.eigh(cov)
        return cls(x.mean(axis=0), vectors, 1.0 / np.sqrt(np.clip(values, 1e-300, None)), shrinkage)

    def distance(self, x: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``x`` [samples, dims] to the mean."""
        z = (x - self.mean) @ self.eigenvectors * self.inv_sqrt_eigenvalues
        return np.sqrt((z**2).sum(axis=1))


@dataclass
class Detector:
    """An anomaly detector fitted on normal features (`fit_detector`); `score` applies it.

    Attributes:
        method: ``"iforest"``, ``"lof"`` or ``"mahalanobis"``.
        center: Per-feature mean of the fitting set (features are standardised with it first; zeros when fitted
            with ``standardize=False``).
        scale: Per-feature standard deviation of the fitting set (1 where a feature is constant; ones when fitted
            with ``standardize=False``).
        estimator: The fitted scikit-learn estimator, or the Mahalanobis model (built on scikit-learn's
            Ledoit-Wolf covariance).
        num_samples: How many normal samples it was fitted on.
    """

    method: str
    center: np.ndarray
    scale: np.ndarray
    estimator: Any
    num_samples: int

    @property
    def num_features(self) -> int:
        """Length of the feature vectors it takes."""
        return int(self.center.shape[0])


def fit_detector(
    features: Any,
    method: Method = "iforest",
    *,
    seed: int = 0,
    n_estimators: int = 200,
    n_neighbors: int = 20,
    standardize: bool = True,
) -> Detector:
    """Fit an anomaly detector on the features of normal prompts only.

    Features are standardised with the fitting set's mean and standard deviation first, so features in different
    units (nats, log-probabilities, hidden-state coordinates) weigh alike in LOF's distances and the shrinkage.

    Args:
        features: Normal samples, [samples, features], at least 2.
        method: ``"iforest"`` (isolation forest), ``"lof"`` (local outlier factor, novelty mode) or
            ``"mahalanobis"`` (Ledoit-Wolf shrinkage covariance).
        seed: Random state of the isolation forest (the other two are deterministic).
        n_estimators: Trees of the isolation forest.
        n_neighbors: Neighbours of the local outlier factor (capped at samples - 1).
        standardize: Standardise the features first (False: use them as they are, as the paper's scripts did;
            `lens_hub.analysis.injection` replays those).

    Returns:
        The fitted `Detector`.

    Raises:
        AnomalyError: An unknown method, fewer than 2 samples, or non-finite features.
        MissingExtraError: If scikit-learn is not installed.
    """
    if method not in METHODS:
        raise AnomalyError(f"unknown detection method {method!r}: choose from {', '.join(METHODS)}")
    x = _check_features(features, "the fitting features")
    if x.shape[0] < 2:
        raise AnomalyError(f"a detector needs at least 2 normal samples to fit on, got {x.shape[0]}")
    center = x.mean(axis=0)
    std = x.std(axis=0)
    # Relative threshold: a constant feature's computed std can be rounding noise, not exactly zero.
    scale = np.where(std > 1e-9 * np.maximum(1.0, np.abs(center)), std, 1.0)
    if not standardize:  # the identity transform, so `score` stays one code path
        center, scale = np.zeros_like(center), np.ones_like(scale)
    z = (x - center) / scale
    if method == "mahalanobis":
        estimator: Any = _Mahalanobis.fit(z)
    elif method == "iforest":
        estimator = _sklearn("ensemble").IsolationForest(n_estimators=n_estimators, random_state=seed).fit(z)
    else:
        lof = _sklearn("neighbors").LocalOutlierFactor
        estimator = lof(n_neighbors=max(1, min(n_neighbors, x.shape[0] - 1)), novelty=True).fit(z)
    return Detector(method, center, scale, estimator, int(x.shape[0]))


def score(detector: Detector, features: Any) -> np.ndarray:
    """Anomaly scores of ``features`` [samples, features]: higher is more anomalous.

    Isolation forest and LOF: minus scikit-learn's ``score_samples`` (the negated anomaly score of the original
    papers); Mahalanobis: the distance to the fitting set's mean.

    Args:
        detector: A fitted `Detector`.
        features: Samples with the detector's number of features.

    Returns:
        A float64 array [samples].

    Raises:
        AnomalyError: If the features are not finite or have the wrong number of columns.
    """
    x = _check_features(features, "the features to score", detector.num_features)
    z = (x - detector.center) / detector.scale
    if detector.method == "mahalanobis":
        return detector.estimator.distance(z)
    return -np.asarray(detector.estimator.score_samples(z), dtype=np.float64)


# --------------------------------------------------------------------------------------------------- metrics


def _check_scores(scores_normal: Any, scores_anomalous: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both score sets as non-empty, finite 1-D float64 arrays.

    Raises:
        AnomalyError: If either is empty, not 1-D, or holds NaN or infinity.
    """
    out = []
    for name, s in (("scores_normal", scores_normal), ("scores_anomalous", scores_anomalous)):
        a = np.asarray(s, dtype=np.float64)
        if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all():
            raise AnomalyError(f"{name} must be a non-empty 1-D sequence of finite numbers, got shape {a.shape}")
        out.append(a)
    return out[0], out[1]


def _labelled(normal: np.ndarray, anomalous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's form of two score sets, stacked along the first axis: ``(labels, scores)``, label 1 for an
    anomalous score (the positive class) and 0 for a normal one; labels take the scores' shape."""
    scores = np.concatenate([normal, anomalous])
    labels = np.zeros(scores.shape, dtype=np.int8)
    labels[normal.shape[0] :] = 1
    return labels, scores


def _aurocs(normal: np.ndarray, anomalous: np.ndarray) -> np.ndarray:
    """scikit-learn's AUROC of checked score arrays: of each column if they are 2-D, as a 1-D array."""
    return np.atleast_1d(_sklearn("metrics").roc_auc_score(*_labelled(normal, anomalous), average=None))


def auroc(scores_normal: Any, scores_anomalous: Any) -> float:
    """Area under the ROC curve for telling anomalous from normal by score (higher score = more anomalous).

    scikit-learn's ``roc_auc_score``, which equals the Mann-Whitney U statistic over all (normal, anomalous) pairs:
    the share of pairs where the anomalous score is higher, ties counted half. 1 is perfect, 0.5 is chance, 0 is
    perfectly inverted.

    Args:
        scores_normal: Scores of normal samples.
        scores_anomalous: Scores of anomalous samples.

    Returns:
        The AUROC in [0, 1].

    Raises:
        AnomalyError: If either set is empty or holds a non-finite score.
        MissingExtraError: If scikit-learn is not installed.
    """
    return float(_aurocs(*_check_scores(scores_normal, scores_anomalous))[0])


def bootstrap_auroc(
    scores_normal: Any, scores_anomalous: Any, *, n: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """The AUROC with a percentile bootstrap confidence interval.

    Each of the ``n`` resamples draws the normal and the anomalous scores separately, with replacement and in their
    own sizes (a stratified bootstrap, so every resample has both classes), and computes its AUROC as `auroc` does.

    Args:
        scores_normal: Scores of normal samples.
        scores_anomalous: Scores of anomalous samples.
        n: Bootstrap resamples.
        seed: Seed of the resampling (same seed, same interval).
        confidence: Coverage of the interval, e.g. 0.95 for the 2.5 and 97.5 percentiles.

    Returns:
        ``(auroc, low, high)``: the AUROC of the full sets and the interval's bounds.

    Raises:
        AnomalyError: Empty or non-finite scores, ``n`` below 1, or ``confidence`` not strictly between 0 and 1.
        MissingExtraError: If scikit-learn is not installed.
    """
    normal, anomalous = _check_scores(scores_normal, scores_anomalous)
    _check_bootstrap(n, confidence, "n")
    rng = np.random.default_rng(seed)
    resampled_normal = np.empty((normal.size, n))
    resampled_anomalous = np.empty((anomalous.size, n))
    for r in range(n):  # draws in the order of one resample after another, so a seed keeps its interval
        resampled_normal[:, r] = normal[rng.integers(0, normal.size, normal.size)]
        resampled_anomalous[:, r] = anomalous[rng.integers(0, anomalous.size, anomalous.size)]
    # One call for all resamples (a column each): scikit-learn's input checks cost more than the AUROC itself.
    stats = _aurocs(resampled_normal, resampled_anomalous)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return auroc(normal, anomalous), float(low), float(high)


def _check_bootstrap(n: int, confidence: float, name: str) -> None:
    """Check a number of bootstrap resamples (the argument called ``name``) and a confidence level.

    Raises:
        AnomalyError: If ``n`` is below 1 or ``confidence`` is not strictly between 0 and 1.
    """
    if n < 1:
        flag = " (--bootstrap 1000)" if name == "n_bootstrap" else ""
        raise AnomalyError(f"bootstrap needs at least 1 resample, not {name}={n}: try {name}=1000{flag}")
    if not 0.0 < confidence < 1.0:
        raise AnomalyError(f"confidence must be strictly between 0 and 1, not {confidence}: try confidence=0.95")


def roc_curve(scores_normal: Any, scores_anomalous: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve: false- and true-positive rates as the threshold falls through every distinct score.

    scikit-learn's ``roc_curve``, keeping every point (``drop_intermediate=False``). Flagging every score >= t as
    anomalous, the curve starts at (0, 0) (nothing flagged) and ends at (1, 1); tied scores move both rates at
    once, so the trapezoidal area under it equals `auroc`.

    Args:
        scores_normal: Scores of normal samples.
        scores_anomalous: Scores of anomalous samples.

    Returns:
        ``(fpr, tpr)``, float64 arrays of equal length, one point more than there are distinct scores.

    Raises:
        AnomalyError: If either set is empty or holds a non-finite score.
        MissingExtraError: If scikit-learn is not installed.
    """
    labels, scores = _labelled(*_check_scores(scores_normal, scores_anomalous))
    fpr, tpr, _ = _sklearn("metrics").roc_curve(labels, scores, drop_intermediate=False)
    return np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)


# ------------------------------------------------------------------------------------------------ evaluation


Verdict = Literal["detects", "chance", "inverted"]
VERDICTS: dict[str, str] = {
    "detects": "the confidence interval lies above 0.5: anomalous prompts score higher",
    "chance": "the confidence interval contains 0.5: no better than chance",
    "inverted": "the confidence interval lies below 0.5: the detector scores normal prompts as more anomalous",
}


@dataclass
class DetectionResult:
    """How well one detector on one feature source separated anomalous from held-out normal prompts.

    Attributes:
        source: Feature source label (``"tuned"``, ``"logit"``, ``"hidden"``, or the caller's own).
        method: Detector (``"iforest"``, ``"lof"``, ``"mahalanobis"``).
        auroc: AUROC of anomalous vs held-out normal scores (`auroc`).
        ci_low: Lower bound of the bootstrap confidence interval.
        ci_high: Upper bound.
        num_features: Length of the feature vectors.
        scores_normal: Anomaly scores of the held-out normal prompts.
        scores_anomalous: Anomaly scores of the anomalous prompts.
    """

    source: str
    method: str
    auroc: float
    ci_low: float
    ci_high: float
    num_features: int
    scores_normal: list[float]
    scores_anomalous: list[float]

    @property
    def verdict(self) -> Verdict:
        """What the confidence interval says (`VERDICTS`): ``"detects"`` (all of it above 0.5), ``"chance"`` (it
        contains 0.5) or ``"inverted"`` (all of it below 0.5: normal prompts score as more anomalous)."""
        if self.ci_high < 0.5:
            return "inverted"
        return "chance" if self.ci_low <= 0.5 else "detects"

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (keys as the attributes, and ``verdict``)."""
        return {
            "source": self.source,
            "method": self.method,
            "auroc": self.auroc,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "verdict": self.verdict,
            "num_features": self.num_features,
            "scores_normal": self.scores_normal,
            "scores_anomalous": self.scores_anomalous,
        }


@dataclass
class DetectionReport:
    """The results of `evaluate_detection`: one `DetectionResult` per (source, method), plus the set-up.

    Attributes:
        results: Source-major, in the order the sources and methods were given.
        sources: {label: description} of each feature source.
        layers: The lens layers read (None if only ``"hidden"`` was used).
        last_tokens: Positions averaged at the end of each prompt.
        counts: Prompts ``fit`` (normal, fitted on), ``normal_test`` (held out) and ``anomalous``.
        seed: Seed of the isolation forest and the bootstrap.
        n_bootstrap: Bootstrap resamples.
        confidence: Coverage of the confidence intervals.
        meta: Anything else worth recording (the CLI adds the model and the prompt files).
        chat_template: Whether prompts were read as user turns of the chat template.
    """

    results: list[DetectionResult]
    sources: dict[str, str]
    layers: list[int] | None
    last_tokens: int
    counts: dict[str, int]
    seed: int
    n_bootstrap: int
    confidence: float
    meta: dict[str, Any] = field(default_factory=dict)
    chat_template: bool = False

    def result(self, source: str, method: str) -> DetectionResult:
        """The result of ``method`` on ``source``.

        Raises:
            KeyError: If the report has no such pair.
        """
        for r in self.results:
            if r.source == source and r.method == method:
                return r
        raise KeyError(f"no result for source {source!r} and method {method!r}")

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dict: ``schema`` (``"lens-hub-anomaly/1"``), ``sources``, ``layers``,
        ``last_tokens``, ``chat_template``, ``methods``, ``counts``, ``seed``, ``n_bootstrap``, ``confidence``,
        ``results`` (each as `DetectionResult.to_json`), and ``meta``'s keys at the top level."""
        return {
            "schema": SCHEMA,
            **self.meta,
            "sources": self.sources,
            "layers": self.layers,
            "last_tokens": self.last_tokens,
            "chat_template": self.chat_template,
            "methods": list(dict.fromkeys(r.method for r in self.results)),
            "counts": self.counts,
            "seed": self.seed,
            "n_bootstrap": self.n_bootstrap,
            "confidence": self.confidence,
            "results": [r.to_json() for r in self.results],
        }


def evaluate_features(
    fit: Any,
    normal_test: Any,
    anomalous: Any,
    *,
    source: str = "features",
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
) -> list[DetectionResult]:
    """Fit each detector on ``fit`` (normal features) and score held-out normal and anomalous features.

    Args:
        fit: Normal features to fit on, [samples, features].
        normal_test: Held-out normal features.
        anomalous: Anomalous features.
        source: Label recorded in the results.
        methods: Detectors to run.
        seed: Seed of the isolation forest and of the bootstrap.
        n_bootstrap: Bootstrap resamples for the confidence interval.
        confidence: Coverage of the interval.

    Returns:
        One `DetectionResult` per method.

    Raises:
        AnomalyError: An unknown method, too few samples, features of different widths, ``n_bootstrap`` below 1,
            or ``confidence`` not strictly between 0 and 1.
        MissingExtraError: If scikit-learn is not installed.
    """
    _check_bootstrap(n_bootstrap, confidence, "n_bootstrap")
    results = []
    for method in methods:
        detector = fit_detector(fit, method, seed=seed)
        normal_scores, anomalous_scores = score(detector, normal_test), score(detector, anomalous)
        value, low, high = bootstrap_auroc(
            normal_scores, anomalous_scores, n=n_bootstrap, seed=seed, confidence=confidence
        )
        scores = normal_scores.tolist(), anomalous_scores.tolist()
        results.append(DetectionResult(source, method, value, low, high, detector.num_features, *scores))
    return results


def _describe(source: Lens | str) -> str:
    """A one-line description of a feature source for reports."""
    if source == HIDDEN:
        return "final hidden state at the last token(s) (the paper's Mahalanobis baseline input)"
    if isinstance(source, BaseTunedLens):
        return f"tuned lens ({source.config.base_model or 'local model'}, {source.num_layers} layers)"
    if isinstance(source, LogitLens):
        return "logit lens"
    return type(source).__name__


def evaluate_detection(
    model: nn.Module,
    tokenizer: Any,
    sources: FeatureSource | Sequence[FeatureSource] | Mapping[str, FeatureSource],
    normal_fit: Sequence[str],
    normal_test: Sequence[str],
    anomalous: Sequence[str],
    *,
    methods: Sequence[str] = METHODS,
    layers: Sequence[int] | None = None,
    last_tokens: int = 1,
    seed: int = 0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    batch_size: int = 8,
    chat_template: bool = False,
    progress: Progress | None = None,
) -> DetectionReport:
    """The paper's comparison in one call: for each feature source and detector, fit on ``normal_fit``, score
    ``normal_test`` and ``anomalous``, and report the AUROC with a bootstrap confidence interval.

    Args:
        model: The causal LM.
        tokenizer: Its tokenizer.
        sources: One source, a list of them, or {label: source}; a source is a lens, ``"logit"`` or ``"hidden"``.
            For the paper's comparison: ``{"tuned": lens, "logit": "logit", "hidden": "hidden"}``.
        normal_fit: Normal prompts the detectors are fitted on (at least 2).
        normal_test: Held-out normal prompts.
        anomalous: Anomalous prompts (e.g. with an injected instruction).
        methods: Detectors, from `METHODS`.
        layers: Lens layers to read (default: all).
        last_tokens: Positions averaged at the end of each prompt.
        seed: Seed of the isolation forest and the bootstrap.
        n_bootstrap: Bootstrap resamples.
        confidence: Coverage of the confidence intervals.
        batch_size: Prompts per forward pass.
        chat_template: Read each prompt as a user turn of the chat template (see `extract_features`).
        progress: Called with (prompts read, prompts in all) after every batch (see `lens_hub.core.progress`).

    Returns:
        A `DetectionReport`.

    Raises:
        AnomalyError: Too few prompts, an unknown method or source, bad layers, ``n_bootstrap`` below 1, or
            ``confidence`` not strictly between 0 and 1 (all checked before the model runs).
        MissingExtraError: If scikit-learn is not installed.
    """
    methods = check_methods(methods)  # fails before the model runs, not after
    _check_bootstrap(n_bootstrap, confidence, "n_bootstrap")
    if len(normal_fit) < 2 or not normal_test or not anomalous:
        raise AnomalyError(
            f"need at least 2 normal prompts to fit on and 1 each to test (got {len(normal_fit)} to fit, "
            f"{len(normal_test)} normal and {len(anomalous)} anomalous to test): add prompts (--normal, "
            "--anomalous) or change fit_fraction (--fit-fraction)"
        )
    named = _named_sources(sources, model)
    rows = _resolve_layers(named, layers)
    texts = [*normal_fit, *normal_test, *anomalous]
    features = extract_features(
        model,
        tokenizer,
        texts,
        named,
        layers=rows,
        last_tokens=last_tokens,
        batch_size=batch_size,
        chat_template=chat_template,
        progress=progress,
    )
    a, b = len(normal_fit), len(normal_fit) + len(normal_test)
    results: list[DetectionResult] = []
    for label, x in features.items():
        results += evaluate_features(
            x[:a],
            x[a:b],
            x[b:],
            source=label,
            methods=methods,
            seed=seed,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
        )
    return DetectionReport(
        results=results,
        sources={label: _describe(source) for label, source in named.items()},
        layers=rows,
        last_tokens=last_tokens,
        counts={"fit": len(normal_fit), "normal_test": len(normal_test), "anomalous": len(anomalous)},
        seed=seed,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        chat_template=chat_template,
    )


def results_table(report: DetectionReport, *, title: str | None = None) -> Any:
    """A rich table of the report: one row per (source, method) with the AUROC, its confidence interval and its
    verdict; the caption explains the verdicts that occur (an inverted ranking or one within chance)."""
    from rich.table import Table

    c = report.counts
    pct = f"{100 * report.confidence:g}%"
    table = Table(title=title or "Anomaly detection: AUROC of anomalous vs held-out normal prompts")
    columns = (("features", "left"), ("method", "left"), ("AUROC", "right"), (f"{pct} CI", "right"))
    for column, justify in (*columns, ("verdict", "left"), ("dims", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    previous = None
    styles = {"detects": "green", "chance": "yellow", "inverted": "bold red"}
    for r in report.results:
        table.add_row(
            r.source if r.source != previous else "",
            r.method,
            f"{r.auroc:.3f}",
            f"[{r.ci_low:.3f}, {r.ci_high:.3f}]",
            f"[{styles[r.verdict]}]{r.verdict}[/]",
            str(r.num_features),
        )
        previous = r.source
    seen = [v for v in VERDICTS if v != "detects" and any(r.verdict == v for r in report.results)]
    notes = "".join(f"\n{v}: {VERDICTS[v]}" for v in seen)
    table.caption = (
        f"fitted on {c['fit']} normal prompts; scored {c['normal_test']} held-out normal and {c['anomalous']} "
        f"anomalous; 0.5 = chance, 1 = perfect; {report.n_bootstrap} bootstrap resamples{notes}"
    )
    return table


def write_json(report: DetectionReport, path: str | os.PathLike[str]) -> Path:
    """Write ``report.to_json()`` to ``path`` (parent folders created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return out
