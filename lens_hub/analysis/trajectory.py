"""Prediction trajectories: what each layer of a model predicts, position by position, read through a lens.

A `PredictionTrajectory` holds, for every row (the lens layers asked for, then the model's own output as the last
row) and every position, small summaries of the predicted distribution: the top-k tokens and probabilities, the
entropy, the cross-entropy against the next token, KL(final || layer), and the rank and probability of a target
token. The full [layers, positions, vocab] logits are never held at once: rows are computed one at a time over
chunks of positions, and all statistics are computed in float32 whatever the model's dtype.

Comparing two lenses (say the tuned lens with the logit lens) needs both full distributions, so it is done during
construction: pass ``compare_with=other_lens`` and the trajectory also holds the Jensen-Shannon divergence
(``.js``, in nats, at most ln 2), the total-variation distance (``.tv``, in [0, 1]) and the KL divergence both
ways (``.kl_to_compared``: KL(lens || compared), ``.kl_from_compared``: KL(compared || lens)) between the two
lenses' distributions at every row and position. Two trajectories read from different hidden states of the same
input (a clean and an ablated run, two residual components) are compared after construction instead: build both
with ``keep_log_probs=True`` (which keeps the full distributions) and call `PredictionTrajectory.kl_divergence`.
`js_divergence` and `tv_distance` implement the definitions on explicit log-probabilities (e.g. two such
trajectories' ``log_probs``, or two prompts of the same length read layer by layer with ``lens(h, i)``).

Positions can be masked (``mask_positions``: hold no prediction, e.g. a BOS token), and input tokens excluded from
the distributions (``mask_input``, as in the original). `PredictionTrajectory.mean` averages a statistic over the
batch; ``traj[b, 2:5]``, ``traj[:, 2:5]`` and `PredictionTrajectory.slice_positions` cut a trajectory.

Targets and anti-targets: ``target`` (default: the next input token) is tracked everywhere by its rank, probability
and log-probability; an ``anti_target`` adds its log-probability, and `PredictionTrajectory.log_prob_diff` gives
log p(target) - log p(anti-target) per row and position (optionally as the change from the previous row).

A trajectory can be built from text (`PredictionTrajectory.from_text`), token ids (`PredictionTrajectory.from_ids`),
hidden states computed elsewhere, for example saved in an nnsight trace (`PredictionTrajectory.from_hidden_states`),
or a TransformerLens activation cache (`PredictionTrajectory.from_cache`, through `lens_hub.analysis.interop`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from ..core.lens import BaseTunedLens, Lens
from ..core.models import hidden_states
from ..core.options import STATISTICS
from ..errors import TrajectoryError
from .interop import check_transformer_bridge, hidden_states_from_cache

# The statistics every trajectory has (the CLI's --stat choices). log_prob_diff and delta_log_prob_diff need an
# anti-target, js and tv a compared lens; `PredictionTrajectory.stat` serves those too.
STAT_LABELS = {
    "entropy": "entropy (nats)",
    "kl": "KL(final || layer) (nats)",
    "ce": "cross-entropy vs next token (nats)",
    "rank": "rank of the target token (0 = top-1)",
    "prob": "probability of the target token",
    "log_prob": "log-probability of the target token (nats)",
    "log_prob_diff": "log p(target) - log p(anti-target) (nats)",
    "delta_log_prob_diff": "change of log p(target) - log p(anti-target) from the previous row (nats)",
    "kl_to_compared": "KL(lens || compared lens) (nats)",
    "kl_from_compared": "KL(compared lens || lens) (nats)",
}
# Visible stand-ins for whitespace in token labels.
_VISIBLE = {" ": "·", "\n": "⏎", "\t": "→", "\r": "␍"}
_LN2 = math.log(2.0)


def visible(text: str) -> str:
    """``text`` with spaces, newlines, tabs and carriage returns made visible ('·', '⏎', '→', '␍')."""
    return "".join(_VISIBLE.get(c, c) for c in text) or "∅"


def token_label(tokenizer: Any, token_id: int) -> str:
    """A printable label for one token: its decoded text with whitespace made visible (plain text, not escaped)."""
    if tokenizer is None:
        return f"#{int(token_id)}"
    return visible(tokenizer.decode([int(token_id)]))


def _plogq(p: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """sum_v p (log p - log q), with 0 log 0 = 0 (no NaN where p underflows to zero)."""
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def js_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between distributions given as log-probabilities over the last dimension:
    JS(P, Q) = 0.5 KL(P || M) + 0.5 KL(Q || M) with M = (P + Q) / 2. Symmetric, in [0, ln 2]."""
    return _between(_Distribution.of(logp.float()), _Distribution.of(logq.float()))["js"]


def tv_distance(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Total-variation distance 0.5 * sum |P - Q| over the last dimension (inputs are log-probabilities); in [0, 1]."""
    return _between(_Distribution.of(logp.float()), _Distribution.of(logq.float()))["tv"]


# The tensor fields, by how `PredictionTrajectory._select` cuts them: [batch, rows, positions, ...] or
# [batch, positions].
_ROW_TENSORS = (
    "top_ids", "top_probs", "entropy", "ce", "kl", "rank", "prob", "js", "tv", "log_prob", "anti_log_prob",
    "kl_to_compared", "kl_from_compared", "log_probs",
)  # fmt: skip
_POSITION_IDS = ("input_ids", "target_ids", "anti_target_ids")

# A tracked token: one id for every position, one per sequence ([batch]), or one per position ([batch, positions];
# -1 where there is none). `TrajectoryOptions` also takes a token's text, turned into its id with the tokenizer.
TokenSpec = int | torch.Tensor


@dataclass(frozen=True, kw_only=True)
class TrajectoryOptions:
    """The keyword options of the `PredictionTrajectory` constructors, each described here once.

    `PredictionTrajectory.from_ids`, `PredictionTrajectory.from_hidden_states` and
    `PredictionTrajectory.from_cache` take every option as a keyword argument, e.g.
    ``from_ids(lens, model, ids, layers=[0, 6], top_k=3)``; `PredictionTrajectory.from_text` takes all but
    ``tokenizer`` (one of its arguments) and ``lengths`` (it measures the texts). A name that is not an option raises
    TypeError, as for any function.

    Attributes:
        layers: Lens layers to read, each once, in increasing order whatever the order given (default: all,
            0 .. num_layers - 1). The model's output is always added as the last row.
        top_k: How many top tokens (``top_ids``, ``top_probs``) to keep per row and position; at most the vocabulary.
        target: The token tracked at every position by its rank, probability and log-probability: a token's text
            (exactly one token, e.g. ``" Paris"``; needs the tokenizer), an id, ids per sequence ([batch]) or per
            position ([batch, positions], -1 for none). Default: the next input token.
        anti_target: A second token, compared with ``target`` by `PredictionTrajectory.log_prob_diff` (the same
            forms as ``target``). Default: none.
        compare_with: A second lens of the same model; fills ``.js`` and ``.tv`` between the two lenses'
            distributions.
        read_compared: With ``compare_with``, also build that lens's own trajectory in the same pass (``.compared``:
            what a second call with the two lenses swapped would give), from the logits the divergences need
            anyway: one forward pass and one product with the unembedding per lens and layer instead of two.
        tokenizer: Decodes the token labels (without one, a token is labelled by its id, ``#123``) and turns a
            text ``target`` or ``anti_target`` into its id.
        lengths: The true length of each right-padded sequence (default: every sequence fills all positions).
        chunk_size: Positions read at a time (default: about 64 Mi floats of logits per chunk).
        mask_positions: Positions that hold no prediction, as padding does (NaN statistics, the id -1 in the
            top-k, no target; an empty label in the views), e.g. ``0`` to hide a BOS token. One position or a
            list of them, counted in every sequence (a negative one from that sequence's end: ``-1`` is its last
            token), or a bool tensor, True where masked, [positions] or [batch, positions]. The model still reads
            these tokens: only their predictions are hidden, and the means leave them out.
        mask_input: Exclude every token of a sequence's input from the distributions read on it (the original
            tuned-lens's ``mask_input``): those tokens get probability 0 in every row and the rest is renormalised,
            which shows what a layer predicts besides copying the prompt. The original masks only the lens rows;
            here the output row is masked too, so that KL(final || layer) compares two distributions of the same
            support (with the output row unmasked it is infinite everywhere). A next token or target that occurs
            in the input then has probability 0 (ce infinite).
        keep_log_probs: Also keep every row's full log-probabilities (``log_probs``, [batch, rows, positions,
            vocab] float32 on the CPU: batch x rows x positions x vocab x 4 bytes, 52 MB for 13 rows of 20 GPT-2
            positions), which `PredictionTrajectory.kl_divergence` needs to compare two trajectories.
    """

    layers: Sequence[int] | None = None
    top_k: int = 5
    target: TokenSpec | str | None = None
    anti_target: TokenSpec | str | None = None
    compare_with: Lens | None = None
    read_compared: bool = False
    tokenizer: Any = None
    lengths: Sequence[int] | None = None
    chunk_size: int | None = None
    mask_positions: int | Sequence[int] | torch.Tensor | None = None
    mask_input: bool = False
    keep_log_probs: bool = False

    def __post_init__(self) -> None:
        if self.read_compared and self.compare_with is None:  # before any forward pass
            raise TrajectoryError("read_compared=True reads the compared lens: give it as compare_with")

    @classmethod
    def _of_call(cls, caller: str, options: dict[str, Any], *, taken: tuple[str, ...] = ()) -> TrajectoryOptions:
        """The options of one constructor call, given as keywords; ``taken`` names those ``caller`` does not take.

        Raises:
            TypeError: If a keyword is not an option of ``caller`` (named with those it takes).
        """
        names = [f.name for f in fields(cls) if f.name not in taken]
        for name in options:
            if name not in names:
                raise TypeError(
                    f"PredictionTrajectory.{caller}() got an unexpected keyword argument {name!r}; its options are "
                    f"{', '.join(names)} (see TrajectoryOptions)"
                )
        return cls(**options)

    def _with_token_ids(self) -> TrajectoryOptions:
        """These options with a text ``target`` and ``anti_target`` replaced by their token ids.

        Raises:
            TrajectoryError: If a text is not exactly one token, or there is no tokenizer to encode it.
        """
        return replace(
            self,
            target=_single_token(self.tokenizer, self.target, "target"),
            anti_target=_single_token(self.tokenizer, self.anti_target, "anti_target"),
        )


@dataclass
class PredictionTrajectory:
    """Per-row, per-position prediction statistics of a lens over one batch of sequences.

    Rows are the lens layers in ``layers`` followed by the model's output (``row_labels[-1] == "output"``). All
    tensors are on the CPU, float32 (ranks and ids int64), with shapes [batch, rows, positions] (``top_ids`` and
    ``top_probs``: [batch, rows, positions, k]). Positions past a sequence's length (right padding) hold no
    prediction: NaN in every float tensor (``top_probs`` included) and the id -1, which is no token, in ``top_ids``,
    ``rank``, ``target_ids`` and ``anti_target_ids`` (``input_ids`` keeps the padding token). Positions without a
    target hold NaN in ``prob`` and ``log_prob`` and -1 in ``rank``, and positions without a next token NaN in
    ``ce``. Positions masked with ``mask_positions`` hold no prediction either, as padding does.

    ``traj[b]`` is sequence ``b`` alone, cut to its length (``traj[-1]``: the last sequence); ``traj[b, 2:5]`` and
    ``traj[:, 2:5]`` also cut positions (see `__getitem__` and `slice_positions`). `mean` averages a statistic over
    the batch, `kl_divergence` compares two trajectories built with ``keep_log_probs=True``.

    ``log_prob`` is the log-probability of the target token (``prob`` is its exponential); ``anti_target_ids`` and
    ``anti_log_prob`` are set when the trajectory was built with an ``anti_target`` (see `log_prob_diff`). The
    constructors always fill ``log_prob``; it is optional only so that trajectories built field by field by older
    code stay valid.
    """

    input_ids: torch.Tensor  # [B, T]
    lengths: list[int]
    layers: list[int]
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    entropy: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    rank: torch.Tensor
    prob: torch.Tensor
    target_ids: torch.Tensor  # [B, T], -1 where there is no target
    js: torch.Tensor | None = None
    tv: torch.Tensor | None = None
    log_prob: torch.Tensor | None = None
    anti_target_ids: torch.Tensor | None = None  # [B, T], -1 where there is no anti-target
    anti_log_prob: torch.Tensor | None = None
    input_labels: list[list[str]] = field(default_factory=list)
    top_labels: list[list[list[list[str]]]] = field(default_factory=list)
    # With compare_with: KL(this lens || compared lens) and KL(compared lens || this lens), nats.
    kl_to_compared: torch.Tensor | None = None
    kl_from_compared: torch.Tensor | None = None
    # With keep_log_probs=True: every row's full log-probabilities, [B, rows, T, vocab] (NaN where no prediction).
    log_probs: torch.Tensor | None = None
    # What was read, for the views' default titles ("tuned lens" / "logit lens"; the model's Hub id or directory).
    lens_name: str | None = None
    model_name: str | None = None
    # The layers of ``layers`` where the lens read is exactly the logit lens (an untrained, identity translator:
    # `lens.untrained_layers()`), so that the views can mark them without the lens. Empty for the logit lens.
    untrained_layers: list[int] = field(default_factory=list)
    # With read_compared=True: the compared lens's own trajectory (its js and tv are these, its KLs these swapped).
    compared: PredictionTrajectory | None = None

    # ----------------------------------------------------------------------------------------------- construction

    @classmethod
    def from_text(
        cls, lens: Lens, model: nn.Module, tokenizer: Any, text: str | Sequence[str], **options: Any
    ) -> PredictionTrajectory:
        """Tokenize ``text`` (one string, or a list for a batch; shorter ones are right-padded) and read it.

        Args:
            lens: The lens to read the model's hidden states with.
            model: The Hugging Face causal LM the lens belongs to.
            tokenizer: The model's tokenizer (also used for the labels and to encode text targets).
            text: One text, or a list of texts for a batch.
            **options: Any of the keyword options described in `TrajectoryOptions` except ``tokenizer`` and
                ``lengths``, e.g. ``layers=[0, 6]``, ``top_k=3``, ``target=" Paris"``, ``compare_with=logit_lens``.

        Returns:
            The trajectory of the batch.

        Raises:
            TypeError: If an option is unknown here.
            TrajectoryError: If there is no text, a text tokenizes to nothing, a target text is not one token, or an
                option does not fit (as in `from_ids`).
            IndexError: If a layer is out of the lens's range.
        """
        opts = TrajectoryOptions._of_call("from_text", options, taken=("tokenizer", "lengths"))
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise TrajectoryError("no text given")
        encoded = [tokenizer(t, return_tensors="pt")["input_ids"][0] for t in texts]
        if any(len(e) == 0 for e in encoded):
            raise TrajectoryError("a text tokenizes to no tokens")
        lengths = [len(e) for e in encoded]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        ids = torch.full((len(texts), max(lengths)), int(pad), dtype=torch.long)
        for b, e in enumerate(encoded):
            ids[b, : len(e)] = e
        return cls._run(lens, model, ids, replace(opts, tokenizer=tokenizer, lengths=lengths))

    @classmethod
    def from_ids(cls, lens: Lens, model: nn.Module, input_ids: torch.Tensor, **options: Any) -> PredictionTrajectory:
        """Run the model on ``input_ids`` ([batch, positions] or [positions]) and read its hidden states.

        The model runs once (its base model only, with padding masked out); its hidden states are then read as
        `from_hidden_states` reads them.

        Args:
            lens: The lens to read the model's hidden states with.
            model: The Hugging Face causal LM the lens belongs to.
            input_ids: Token ids, [batch, positions] or [positions]; right-padded sequences need ``lengths``.
            **options: Any of the keyword options described in `TrajectoryOptions`, e.g. ``layers=[0, 6]``,
                ``top_k=3``, ``target=5``, ``tokenizer=tokenizer``, ``lengths=[7, 4]``.

        Returns:
            The trajectory of the batch.

        Raises:
            TypeError: If an option is unknown.
            TrajectoryError: If ``lengths`` or a target does not fit ``input_ids``, a target text is not one token
                or comes without a tokenizer, or ``compare_with`` reads a different number of layers.
            IndexError: If a layer is out of the lens's range.
        """
        return cls._run(lens, model, input_ids, TrajectoryOptions._of_call("from_ids", options))

    @classmethod
    def from_hidden_states(
        cls, lens: Lens, hidden_states: Sequence[torch.Tensor], input_ids: torch.Tensor, **options: Any
    ) -> PredictionTrajectory:
        """Read hidden states computed elsewhere (saved in an nnsight trace, taken from a cache) through ``lens``.

        ``hidden_states`` follows Hugging Face's ``output_hidden_states=True`` convention: ``num_layers + 1``
        tensors of shape [batch, positions, hidden], where ``hidden_states[i]`` is the residual stream before layer
        ``i`` (``[0]`` is the embedding output) and the last one is already final-normed. Lens row ``i`` reads
        ``hidden_states[i]``; the output row is ``lens.unembed.head(hidden_states[-1])``.

        Args:
            lens: The lens to read the hidden states with.
            hidden_states: ``num_layers + 1`` tensors [batch, positions, hidden] (or [positions, hidden]).
            input_ids: The token ids the hidden states were computed from, [batch, positions] or [positions].
            **options: Any of the keyword options described in `TrajectoryOptions`, as for `from_ids`.

        Returns:
            The trajectory of the batch.

        Raises:
            TypeError: If an option is unknown.
            TrajectoryError: If the hidden states are not ``num_layers + 1`` tensors shaped like ``input_ids``, or an
                option does not fit (as in `from_ids`).
            IndexError: If a layer is out of the lens's range.
        """
        return cls._read(lens, hidden_states, input_ids, TrajectoryOptions._of_call("from_hidden_states", options))

    @classmethod
    def from_cache(
        cls,
        lens: Lens,
        cache: Any,
        input_ids: torch.Tensor,
        *,
        residual_component: str = "resid_pre",
        model: Any = None,
        **options: Any,
    ) -> PredictionTrajectory:
        """Read a TransformerLens activation cache through ``lens`` (``pip install "lens-hub[transformer-lens]"``).

        Lens row ``i`` reads ``blocks.{i}.hook_{residual_component}``; with ``"resid_pre"`` (the default) that is
        exactly the Hugging Face ``hidden_states[i]`` the lens was trained on, and the trajectory equals
        `from_ids` on the Hugging Face model. The other components (``resid_mid``, ``resid_post``, ``attn_out``,
        ``mlp_out``) are read with the same layer's translator, as the original tuned-lens does; a tuned lens was
        not trained on them, the logit lens applies to any of them. The output row is the lens's own unembedding
        of the last block's ``resid_post``. Before a tensor is used, the bridge that made the cache is checked
        (`lens_hub.analysis.interop.check_transformer_bridge`): processed weights (fold_ln, centring) are refused.

        Args:
            lens: The lens to read the activations with (built on the Hugging Face model the bridge wraps; load it
                before booting the bridge, which replaces the model's modules with wrappers).
            cache: The ``ActivationCache`` of ``bridge.run_with_cache(input_ids)``, or a mapping of hook names to
                tensors.
            input_ids: The token ids the cache was computed from, [batch, positions] or [positions].
            residual_component: One of ``lens_hub.analysis.interop.RESIDUAL_COMPONENTS``.
            model: The ``TransformerBridge`` that produced the cache (default: ``cache.model``).
            **options: Any of the keyword options described in `TrajectoryOptions`, as for `from_ids`; the
                ``tokenizer`` defaults to the bridge's.

        Returns:
            The trajectory of the batch.

        Raises:
            TypeError: If an option is unknown.
            lens_hub.errors.MissingExtraError: TransformerLens is not installed.
            lens_hub.errors.InteropError: No bridge to check (a plain mapping without ``model=``), an unknown
                component, or a hook missing from the cache.
            lens_hub.errors.ProcessedWeightsError: The bridge's weights were processed.
            lens_hub.errors.IncompatibleLensError: The bridge's model does not fit the lens.
            TrajectoryError: The activations, ids, lengths or targets do not fit together.
        """
        opts = TrajectoryOptions._of_call("from_cache", options)
        bridge = model if model is not None else getattr(cache, "model", None)
        check_transformer_bridge(bridge, lens)
        if opts.tokenizer is None:
            opts = replace(opts, tokenizer=getattr(bridge, "tokenizer", None))
        hidden = hidden_states_from_cache(cache, lens, component=residual_component)
        return cls._read(lens, hidden, input_ids, opts)

    @classmethod
    @torch.no_grad()
    def _run(
        cls, lens: Lens, model: nn.Module, input_ids: torch.Tensor, opts: TrajectoryOptions
    ) -> PredictionTrajectory:
        """`from_ids` with its options checked: everything that can be checked is, before the forward pass."""
        opts = opts._with_token_ids()
        input_ids, lengths = _check_ids_and_lengths(input_ids, opts.lengths)
        _check_rows(lens, opts.layers, opts.compare_with)
        valid = _valid_mask(input_ids, lengths)
        device = next(model.parameters()).device
        hidden = _run_model(model, input_ids.to(device), valid.long().to(device))
        traj = cls._read(lens, hidden, input_ids, replace(opts, lengths=lengths))
        traj.model_name = getattr(getattr(model, "config", None), "_name_or_path", None) or None
        if traj.compared is not None:
            traj.compared.model_name = traj.model_name
        return traj

    @classmethod
    @torch.no_grad()
    def _read(
        cls, lens: Lens, hidden_states: Sequence[torch.Tensor], input_ids: torch.Tensor, opts: TrajectoryOptions
    ) -> PredictionTrajectory:
        """`from_hidden_states` with its options checked: what every constructor ends in."""
        opts = opts._with_token_ids()
        input_ids, lengths = _check_ids_and_lengths(input_ids, opts.lengths)
        rows = _check_rows(lens, opts.layers, opts.compare_with)
        hidden = _check_hidden_states(lens, hidden_states, input_ids)
        batch, seq = input_ids.shape
        # Masked positions are treated as padding from here on: no target, no prediction.
        valid = _valid_mask(input_ids, lengths) & ~_masked_positions(opts.mask_positions, lengths, seq)
        device = hidden[0].device
        vocab = lens.unembed.parts.output_embedding.weight.shape[0]
        next_ids, target_ids = _next_and_target_ids(input_ids, lengths, valid, opts.target, vocab)
        next_ids[~valid] = -1
        anti_ids = None if opts.anti_target is None else _tracked_ids(valid, opts.anti_target, vocab, "anti_target")
        compare_with = opts.compare_with
        excluded = _input_tokens(input_ids, lengths, vocab).to(device) if opts.mask_input else None

        k = min(opts.top_k, vocab)
        chunk = opts.chunk_size or max(1, (1 << 26) // max(1, batch * vocab))

        def accumulator(compared: bool) -> _Accumulator:
            shape = (batch, len(rows) + 1, seq)
            vocab_kept = vocab if opts.keep_log_probs else None
            return _Accumulator.empty(shape, k, compared=compared, anti=anti_ids is not None, vocab=vocab_kept)

        acc = accumulator(compare_with is not None)
        # The compared lens's own statistics; its divergences are this lens's (below).
        acc_compared = accumulator(False) if opts.read_compared else None
        for start in range(0, seq, chunk):
            sl = slice(start, min(seq, start + chunk))
            chunk_hidden = [h[:, sl] for h in hidden]
            nxt, tgt = next_ids[:, sl].to(device), target_ids[:, sl].to(device)
            anti = None if anti_ids is None else anti_ids[:, sl].to(device)
            _read_chunk(acc, sl, lens, compare_with, chunk_hidden, rows, nxt, tgt, anti, k, excluded, acc_compared)
        acc.mask_padding(valid)

        def build(acc: _Accumulator, lens: Lens, **divergences: torch.Tensor | None) -> PredictionTrajectory:
            traj = cls(
                input_ids=input_ids.cpu(),
                lengths=lengths,
                layers=rows,
                top_ids=acc.top_ids,
                top_probs=acc.top_probs,
                entropy=acc.entropy,
                ce=acc.ce,
                kl=acc.kl,
                rank=acc.rank,
                prob=acc.prob,
                target_ids=target_ids,
                log_prob=acc.log_prob,
                anti_target_ids=anti_ids,
                anti_log_prob=acc.anti_log_prob,
                log_probs=acc.log_probs,
                lens_name="tuned lens" if isinstance(lens, BaseTunedLens) else "logit lens",
                untrained_layers=_untrained_rows(lens, rows),
                **divergences,
            )
            traj.set_labels(opts.tokenizer)
            return traj

        between = {"js": acc.js, "tv": acc.tv, "kl_to_compared": acc.kl_to_compared}
        traj = build(acc, lens, **between, kl_from_compared=acc.kl_from_compared)
        if acc_compared is not None and compare_with is not None:
            acc_compared.mask_padding(valid)
            # What reading compare_with with compare_with=lens would give: the same js and tv, the KLs swapped.
            swapped = {"js": acc.js, "tv": acc.tv, "kl_to_compared": acc.kl_from_compared}
            swapped["kl_from_compared"] = acc.kl_to_compared
            copies = {name: None if t is None else t.clone() for name, t in swapped.items()}  # each its own tensors
            traj.compared = build(acc_compared, compare_with, **copies)
        return traj

    def set_labels(self, tokenizer) -> None:
        """(Re)compute the printable labels of the input tokens and top-k tokens.

        Args:
            tokenizer: Decodes the ids; ``None`` labels tokens by id (``#123``). The id -1 (no prediction, at a
                masked position) is labelled "".
        """
        cache: dict[int, str] = {-1: ""}

        def label(i: int) -> str:
            if i not in cache:
                cache[i] = token_label(tokenizer, i)
            return cache[i]

        self.input_labels = [
            [label(int(i)) for i in row[:n]] for row, n in zip(self.input_ids, self.lengths, strict=True)
        ]
        self.top_labels = [
            [[[label(int(i)) for i in cell] for cell in pos_row[:n]] for pos_row in rows]
            for rows, n in zip(self.top_ids.tolist(), self.lengths, strict=True)
        ]

    # --------------------------------------------------------------------------------------------------- access

    @property
    def row_labels(self) -> list[str]:
        return [str(i) for i in self.layers] + ["output"]

    @property
    def untrained_rows(self) -> list[bool]:
        """One flag per row (layers, then the output): True where the lens is untrained there (see
        ``untrained_layers``), which the views mark. The output row is never untrained."""
        untrained = set(self.untrained_layers)
        return [i in untrained for i in self.layers] + [False]

    @property
    def num_rows(self) -> int:
        return len(self.layers) + 1

    @property
    def top_k(self) -> int:
        return self.top_ids.shape[-1]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    # ------------------------------------------------------------------------------------------------------ repr

    def statistics(self) -> list[str]:
        """The statistics this trajectory holds (the names `stat` accepts for it)."""
        names = ["entropy", "kl", "ce", "rank", "prob"]
        names += ["log_prob"] if self.log_prob is not None else []
        names += ["log_prob_diff", "delta_log_prob_diff"] if self.anti_log_prob is not None else []
        compared = ("js", "tv", "kl_to_compared", "kl_from_compared")
        return names + [name for name in compared if getattr(self, name) is not None]

    def _summary(self) -> dict[str, str]:
        """The facts `__repr__` and `_repr_html_` show (never the tensors: they are thousands of numbers)."""
        rows = self.row_labels
        shown = rows if len(rows) <= 12 else [*rows[:5], "…", *rows[-5:]]  # a 30-layer model stays one line
        ragged = len(set(self.lengths)) > 1
        return {
            "batch": str(len(self)),
            "rows": f"{self.num_rows} ({', '.join(shown)})",
            "positions": str(self.input_ids.shape[1]) + (f" (lengths {self.lengths})" if ragged else ""),
            "top_k": str(self.top_k),
            "statistics": ", ".join(self.statistics()),
        }

    def __repr__(self) -> str:
        """One short line: batch, rows with their labels, positions, top_k and the statistics present."""
        return "PredictionTrajectory(" + ", ".join(f"{k}={v}" for k, v in self._summary().items()) + ")"

    def _repr_html_(self) -> str:
        """A small table for notebooks (Jupyter calls this instead of dumping the tensors)."""
        import html

        left = "style='text-align:left'"
        cells = "".join(
            f"<tr><th {left}>{html.escape(k)}</th><td {left}>{html.escape(v)}</td></tr>"
            for k, v in self._summary().items()
        )
        return f"<table><caption>PredictionTrajectory</caption>{cells}</table>"

    def __getitem__(self, key: int | tuple[int | slice, int | slice]) -> PredictionTrajectory:
        """One sequence (``traj[b]``), or sequences and positions (``traj[b, 2:5]``, ``traj[:, 2:5]``).

        ``traj[b]`` is sequence ``b`` alone, cut to its length. ``traj[b, positions]`` then cuts that sequence's
        positions (so ``traj[b, -3:]`` is its last three tokens); ``traj[sequences, positions]`` with a slice of
        sequences keeps those sequences and cuts their positions as `slice_positions` does. A position given as an
        integer keeps that one position (the result is still a trajectory). A bare slice (``traj[0:2]``) is
        refused, as before: write ``traj[0:2, :]``.

        Args:
            key: A sequence's index (negative: from the end, as for a list), or a pair (sequences, positions) of an
                index or slice each; position slices take no step.

        Returns:
            A trajectory with every tensor, length and label cut alike.

        Raises:
            IndexError: If an index is out of range (the message gives the valid range).
            TypeError: If a sequence index is neither an integer nor, in a pair, a slice.
            TrajectoryError: If the positions leave a sequence empty, or a slice has a step.
        """
        if isinstance(key, tuple):
            if len(key) != 2:
                raise TypeError(f"a trajectory is indexed by [sequences, positions], not {len(key)} indices")
            seqs, positions = key
            if isinstance(seqs, slice):
                chosen = list(range(*seqs.indices(len(self))))
                if not chosen:
                    raise IndexError(f"sequence slice {seqs} selects none of the {len(self)} sequences")
                sub = self._select(chosen, 0, self.input_ids.shape[1])
            else:
                sub = self[seqs]
            if isinstance(positions, slice):
                if positions.step not in (None, 1):
                    raise TrajectoryError("a position slice takes no step: positions stay contiguous")
                return sub.slice_positions(positions.start, positions.stop)
            t, width = operator.index(positions), sub.input_ids.shape[1]
            if not -width <= t < width:
                raise IndexError(f"position {t} is out of range: index {-width} .. {width - 1}")
            return sub.slice_positions(t % width, t % width + 1)
        try:
            b = operator.index(key)
        except TypeError:
            raise TypeError(
                "a trajectory is indexed by one sequence's integer index (traj[0]) or by [sequences, positions] "
                f"(traj[0:2, :], traj[0, 2:5]), not {type(key).__name__}"
            ) from None
        size = len(self)
        if not -size <= b < size:
            raise IndexError(
                f"sequence index {b} is out of range: this trajectory holds {size} sequence"
                f"{'s' if size != 1 else ''}, index {-size} .. {size - 1}"
            )
        b %= size
        return self._select([b], 0, self.lengths[b])

    def slice_positions(self, start: int | None = None, stop: int | None = None) -> PredictionTrajectory:
        """Positions ``start`` .. ``stop - 1`` of every sequence (the original tuned-lens's ``slice_sequence``).

        Every tensor, length and label is cut alike; ``lengths`` become what is left of each sequence. The
        statistics stay those computed on the whole input (``ce`` at the slice's last position is still against
        the next input token, which the slice no longer shows).

        Args:
            start: First position kept (default 0); negative counts from the padded width, as for a list (for one
                sequence's own end, index it first: ``traj[b, -3:]``).
            stop: The position after the last one kept (default: the end).

        Returns:
            The cut trajectory, as wide as its longest remaining sequence.

        Raises:
            TrajectoryError: If the slice leaves a sequence with no position (cut it out first, e.g. ``traj[0:1,
                5:]``).
        """
        first, last, _ = slice(start, stop).indices(self.input_ids.shape[1])
        return self._select(list(range(len(self))), first, last)

    def _select(self, seqs: list[int], start: int, stop: int) -> PredictionTrajectory:
        """Sequences ``seqs`` cut to positions ``start`` .. ``stop - 1`` (0 <= start, stop <= width), every
        tensor, length and label alike.

        Raises:
            TrajectoryError: If a sequence would be left with no position.
        """
        lengths = [min(self.lengths[b], stop) - start for b in seqs]
        if any(n <= 0 for n in lengths):
            empty = [b for b, n in zip(seqs, lengths, strict=True) if n <= 0]
            raise TrajectoryError(
                f"positions {start} .. {stop - 1} leave sequence{'s' if len(empty) > 1 else ''} {empty} (lengths "
                f"{[self.lengths[b] for b in empty]}) with no position: leave them out, e.g. traj[b, {start}:{stop}]"
            )
        end = start + max(lengths)
        # A run of consecutive sequences is cut by slicing (a view); any other choice by indexing (a copy).
        contiguous = seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        which: slice | torch.Tensor = slice(seqs[0], seqs[0] + len(seqs)) if contiguous else torch.tensor(seqs)

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[which][:, :, start:end]

        def cut_ids(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[which][:, start:end]

        labelled = bool(self.input_labels)  # a trajectory built field by field may have none yet
        return replace(
            self,
            compared=None if self.compared is None else self.compared._select(seqs, start, stop),
            **{name: cut(getattr(self, name)) for name in _ROW_TENSORS},
            **{name: cut_ids(getattr(self, name)) for name in _POSITION_IDS},
            lengths=lengths,
            input_labels=[self.input_labels[b][start : start + n] for b, n in zip(seqs, lengths, strict=True)]
            if labelled
            else [],
            top_labels=[
                [row[start : start + n] for row in self.top_labels[b]] for b, n in zip(seqs, lengths, strict=True)
            ]
            if labelled
            else [],
        )

    def log_prob_diff(self, *, delta: bool = False) -> torch.Tensor:
        """log p(target) - log p(anti-target) at every row and position (the original tuned-lens's statistic).

        Args:
            delta: Return the change from the previous row instead (row ``r`` minus row ``r - 1``: what the layers
                between them added); the first row, which has no previous one, is NaN.

        Returns:
            A float tensor [batch, rows, positions], NaN where a position has no target or no anti-target.

        Raises:
            TrajectoryError: If the trajectory was built without an ``anti_target``.
        """
        if self.anti_log_prob is None or self.log_prob is None:
            raise TrajectoryError(
                "no anti-target: build the trajectory with anti_target=<token> (e.g. from_text(..., "
                'target=" Paris", anti_target=" London")) to compare two tokens'
            )
        diff = self.log_prob - self.anti_log_prob
        if not delta:
            return diff
        change = torch.full_like(diff, float("nan"))
        change[:, 1:] = diff[:, 1:] - diff[:, :-1]
        return change

    def stat(self, name: str) -> torch.Tensor:
        """One statistic as a float tensor [batch, rows, positions].

        Args:
            name: One of `STATISTICS`; also ``js``, ``tv``, ``kl_to_compared`` and ``kl_from_compared`` for a
                compared trajectory, and ``log_prob_diff`` and ``delta_log_prob_diff`` (`log_prob_diff` with
                ``delta=True``) for one with an anti-target.

        Returns:
            The statistic, NaN where it is undefined (rank: where there is no target).

        Raises:
            TrajectoryError: If the name is unknown, or the trajectory was built without what the statistic needs.
        """
        if name == "rank":
            return torch.where(self.rank >= 0, self.rank.float(), torch.tensor(float("nan")))
        if name in ("entropy", "kl", "ce", "prob"):
            return getattr(self, name)
        if name == "log_prob":
            if self.log_prob is None:
                raise TrajectoryError("no log_prob: this trajectory was built without it; rebuild it")
            return self.log_prob
        if name in ("log_prob_diff", "delta_log_prob_diff"):
            return self.log_prob_diff(delta=name == "delta_log_prob_diff")
        if name in ("js", "tv", "kl_to_compared", "kl_from_compared"):
            value = getattr(self, name)
            if value is None:
                raise TrajectoryError(f"no {name}: build the trajectory with compare_with=another lens")
            return value
        raise TrajectoryError(
            f"unknown statistic {name!r}: choose from {', '.join(STATISTICS)}, js, tv, kl_to_compared, "
            "kl_from_compared, log_prob_diff, delta_log_prob_diff"
        )

    def mean_by_row(self, name: str) -> list[float]:
        """Per-row mean of a statistic over all (valid) positions of all sequences; NaNs ignored.

        Args:
            name: A statistic `stat` accepts.

        Returns:
            One mean per row (layers, then the output).
        """
        value = self.stat(name)
        return [float(value[:, r].nanmean()) for r in range(self.num_rows)]

    def mean(self, name: str) -> torch.Tensor:
        """A statistic averaged over the batch: position ``t`` of row ``r`` is the mean over the sequences that
        have a value there (padding, masked positions and other NaNs are left out).

        The original tuned-lens averages every statistic over the batch this way when it plots, but counts every
        sequence (its batches are never padded); ``rank`` there is 1-based, here 0-based.

        Args:
            name: A statistic `stat` accepts.

        Returns:
            A float tensor [rows, positions]; NaN where no sequence has a value.
        """
        return self.stat(name).nanmean(dim=0)

    def kl_divergence(self, other: PredictionTrajectory) -> torch.Tensor:
        """KL(self || other) between the two trajectories' distributions at every row and position, in nats.

        Both must be built with ``keep_log_probs=True`` from the same input (same ids and lengths) and the same
        rows, e.g. from a model's clean and ablated hidden states, or two residual components of one cache. For
        two lenses on the same hidden states, ``compare_with=`` gives this (``kl_to_compared``) without keeping
        the distributions. The original tuned-lens's ``kl_divergence(other)`` is the same sum averaged over the
        batch: ``.nanmean(0)`` of this.

        Args:
            other: The trajectory to compare with.

        Returns:
            A float tensor [batch, rows, positions]: 0 where the two agree, infinite where ``other`` gives
            probability 0 to a token ``self`` does not (``mask_input``), NaN where either holds no prediction.

        Raises:
            TrajectoryError: If either has no ``log_probs``, or the two differ in rows, input ids, lengths or
                vocabulary.
        """
        mine, theirs = self.log_probs, other.log_probs
        if mine is None or theirs is None:
            missing = [which for which, t in (("self", mine), ("other", theirs)) if t is None]
            raise TrajectoryError(
                f"no log_probs in {' and '.join(missing)}: build both trajectories with keep_log_probs=True (or, for "
                "two lenses on the same hidden states, one with compare_with=the other lens: kl_to_compared)"
            )
        if other.layers != self.layers:
            raise TrajectoryError(f"the trajectories read different rows: layers {self.layers} and {other.layers}")
        if other.lengths != self.lengths or not torch.equal(other.input_ids, self.input_ids):
            raise TrajectoryError(
                "the trajectories were read from different inputs (input ids or lengths differ): compare two reads "
                "of the same tokens"
            )
        if theirs.shape != mine.shape:
            raise TrajectoryError(
                f"the trajectories' distributions differ in shape: {tuple(mine.shape)} and {tuple(theirs.shape)} "
                "(two vocabularies?)"
            )
        # Row by row, so the temporaries stay one row's size.
        kl = torch.stack([_plogq(p.exp(), p, q) for p, q in zip(mine.unbind(1), theirs.unbind(1), strict=True)], dim=1)
        # _plogq reads NaN probabilities as 0; where either holds no prediction there is no KL.
        missing_here = mine[..., 0].isnan() | theirs[..., 0].isnan()
        return kl.clamp_min(0.0).masked_fill(missing_here, float("nan"))


# ------------------------------------------------------------------------------------------ construction pieces


def _single_token(tokenizer, token: int | str | torch.Tensor | None, what: str) -> TokenSpec | None:
    """A target given as text, as its one token id; other forms pass through.

    Raises:
        TrajectoryError: If the text is not exactly one token, or there is no tokenizer to encode it.
    """
    if not isinstance(token, str):
        return token
    if tokenizer is None:
        raise TrajectoryError(
            f"{what} {token!r} is text, and there is no tokenizer to turn it into its id: pass tokenizer= too, "
            "or the token's id"
        )
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise TrajectoryError(f"{what} {token!r} is {len(ids)} tokens, not one: pass a token id instead")
    return int(ids[0])


def _check_ids_and_lengths(input_ids: torch.Tensor, lengths: Sequence[int] | None) -> tuple[torch.Tensor, list[int]]:
    """``input_ids`` as int64 [batch, positions] and the true length of each sequence (default: all of it).

    Raises:
        TrajectoryError: If a length is not in 1 .. positions, or there is not one length per sequence.
    """
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    input_ids = input_ids.long()
    batch, seq = input_ids.shape
    lengths = [seq] * batch if lengths is None else [int(n) for n in lengths]
    if len(lengths) != batch or any(not 0 < n <= seq for n in lengths):
        raise TrajectoryError(f"lengths {lengths} do not fit input_ids of shape {tuple(input_ids.shape)}")
    return input_ids, lengths


def _valid_mask(input_ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """[batch, positions] bool: True inside each sequence's length, False on right padding."""
    return torch.arange(input_ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]


def _masked_positions(mask: int | Sequence[int] | torch.Tensor | None, lengths: list[int], seq: int) -> torch.Tensor:
    """[batch, positions] bool: True at the positions ``mask_positions`` masks (see `TrajectoryOptions`).

    Raises:
        TrajectoryError: If a position is outside the padded width, or a bool mask is not [positions] or
            [batch, positions].
    """
    batch = len(lengths)
    masked = torch.zeros((batch, seq), dtype=torch.bool)
    if mask is None:
        return masked
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        if tuple(mask.shape) not in ((seq,), (batch, seq)):
            raise TrajectoryError(
                f"mask_positions has shape {tuple(mask.shape)}: pass a bool mask of [{seq}] or [{batch}, {seq}] "
                "(True where masked), or positions"
            )
        return masked | mask.cpu()
    if isinstance(mask, torch.Tensor):
        positions = [int(p) for p in mask.reshape(-1).tolist()]
    else:
        positions = [operator.index(mask)] if not isinstance(mask, Sequence) else [operator.index(p) for p in mask]
    for p in positions:
        if not -seq <= p < seq:
            raise TrajectoryError(f"mask_positions {p} is outside the {seq} positions (index {-seq} .. {seq - 1})")
    for b, n in enumerate(lengths):
        for p in positions:
            if -n <= p < n:  # a position past a shorter sequence's end is padding already
                masked[b, p % n] = True
    return masked


def _input_tokens(input_ids: torch.Tensor, lengths: list[int], vocab: int) -> torch.Tensor:
    """[batch, vocab] bool: True at the tokens of each sequence's input (``mask_input``)."""
    excluded = torch.zeros((len(lengths), vocab), dtype=torch.bool)
    for b, n in enumerate(lengths):
        excluded[b, input_ids[b, :n]] = True
    return excluded


def _check_rows(lens: Lens, layers: Sequence[int] | None, compare_with: Lens | None) -> list[int]:
    """The sorted, distinct lens layers to read (default all of them), each checked against the lens.

    Raises:
        TrajectoryError: If ``compare_with`` reads a different number of layers than ``lens``.
        IndexError: If a layer is out of the lens's range.
    """
    if compare_with is not None and compare_with.num_layers != lens.num_layers:
        raise TrajectoryError(
            f"compare_with reads {compare_with.num_layers} layers but lens reads {lens.num_layers}: compare two "
            "lenses of the same model"
        )
    rows = list(range(lens.num_layers)) if layers is None else sorted({int(i) for i in layers})
    for i in rows:
        lens._check_index(i)
    return rows


def _untrained_rows(lens: Lens, rows: list[int]) -> list[int]:
    """The layers of ``rows`` where ``lens`` is the logit lens (`Lens.untrained_layers`)."""
    marked = set(lens.untrained_layers())
    return [i for i in rows if i in marked]


def _check_hidden_states(
    lens: Lens, hidden_states: Sequence[torch.Tensor], input_ids: torch.Tensor
) -> list[torch.Tensor]:
    """The hidden states as a list of [batch, positions, hidden] tensors, checked against the lens and the ids.

    Raises:
        TrajectoryError: If there are not ``num_layers + 1`` tensors, or one is not shaped like ``input_ids``.
    """
    expected = lens.num_layers + 1
    if len(hidden_states) != expected:
        raise TrajectoryError(
            f"expected {expected} hidden states (the embedding output, then one per layer, the last one "
            f"final-normed, as Hugging Face's output_hidden_states=True returns them), got {len(hidden_states)}"
        )
    shape = tuple(input_ids.shape)
    hidden = [h[None] if h.dim() == 2 else h for h in hidden_states]
    for i, h in enumerate(hidden):
        if h.dim() != 3 or tuple(h.shape[:2]) != shape:
            raise TrajectoryError(
                f"hidden_states[{i}] has shape {tuple(h.shape)} but input_ids has shape {shape}: pass "
                "[batch, positions, hidden] states computed from these input_ids"
            )
    return hidden


def _run_model(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All hidden states of the model on ``input_ids`` (already on the model's device), padding masked out.

    Only the base model runs: the output row is computed chunk by chunk from the last (final-normed) hidden
    state, so the model's own [batch, positions, vocab] logits would only cost memory.
    """
    return hidden_states(model, input_ids, attention_mask=attention_mask)


def _tracked_ids(valid: torch.Tensor, token: TokenSpec, vocab: int, what: str) -> torch.Tensor:
    """[batch, positions] ids of a tracked token: ``token`` at every valid position, -1 elsewhere.

    Args:
        valid: [batch, positions] mask of the positions inside each sequence.
        token: One id, one per sequence ([batch]) or one per position ([batch, positions]; -1 for none).
        vocab: Size of the lens's vocabulary.
        what: The argument's name, for messages.

    Raises:
        TrajectoryError: If the ids are not shaped as above, or one is outside the vocabulary.
    """
    batch, seq = valid.shape
    ids = torch.as_tensor(token).long().cpu()
    if ids.dim() == 0:
        ids = ids.expand(batch, seq)
    elif ids.dim() == 1 and ids.shape[0] == batch:
        ids = ids[:, None].expand(batch, seq)
    elif tuple(ids.shape) != (batch, seq):
        raise TrajectoryError(
            f"{what} has shape {tuple(ids.shape)}: pass one id, one per sequence ([{batch}]) or one per position "
            f"([{batch}, {seq}])"
        )
    if bool((ids >= vocab).any()):
        raise TrajectoryError(f"{what} id {int(ids.max())} is outside the lens's vocabulary of {vocab} tokens")
    return torch.where(valid & (ids >= 0), ids, torch.tensor(-1))


def _next_and_target_ids(
    input_ids: torch.Tensor, lengths: list[int], valid: torch.Tensor, target: TokenSpec | None, vocab: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token of every position and the token tracked for rank and probability; -1 where there is none.

    The next token is missing at the last position of each sequence and on padding; a fixed ``target`` applies to
    every valid position (see `_tracked_ids` for its forms).
    """
    batch, seq = input_ids.shape
    next_ids = torch.full((batch, seq), -1, dtype=torch.long)
    next_ids[:, :-1] = input_ids[:, 1:]
    next_ids[~(torch.arange(seq)[None, :] + 1 < torch.tensor(lengths)[:, None])] = -1
    target_ids = next_ids if target is None else _tracked_ids(valid, target, vocab, "target")
    return next_ids, target_ids


_DIVERGENCES = ("js", "tv", "kl_to_compared", "kl_from_compared")  # between two lenses, not of one


def _dot_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a * b over the vocabulary, overwriting ``a`` (a temporary of the caller's) with the products.

    torch's sum adds in a cascade, so the result has float32's precision at any vocabulary size and does not depend
    on the batch; a batched matrix product (einsum) is faster but adds in sequence: 1e-5 relative error at 50k
    tokens, and different digits for the same row read in another batch.
    """
    return a.mul_(b).sum(-1)


@dataclass
class _Distribution:
    """One row's [batch, chunk, vocab] distribution and what several statistics read from it, computed once."""

    logp: torch.Tensor  # float32 log-probabilities; -inf only for an excluded token (mask_input)
    p: torch.Tensor  # probabilities
    safe: torch.Tensor  # logp with -inf as the most negative float, so that 0 * it is 0 in a product
    plogp: torch.Tensor  # sum_v p log p (minus the entropy), [batch, chunk]

    @classmethod
    def of(cls, logp: torch.Tensor, finite: bool = False) -> _Distribution:
        """``finite``: ``logp`` is known to hold no -inf (no excluded tokens), so it is its own safe form."""
        safe = logp if finite else logp.clamp_min(torch.finfo(logp.dtype).min)
        p = logp.exp()
        return cls(logp, p, safe, (p * safe).sum(-1))


def _between(row: _Distribution, other: _Distribution) -> dict[str, torch.Tensor]:
    """The divergences between two distributions (`_DIVERGENCES`): each a sum of probabilities times a difference of
    log-probabilities, in one reused [..., vocab] buffer."""
    work = row.safe - other.safe
    kl_to = (work * row.p).sum(-1).clamp_min(0.0)
    kl_from = _dot_(work, other.p).neg_().clamp_min(0.0)
    log_mixture = torch.logaddexp(row.safe, other.safe).sub_(_LN2)
    js = _dot_(torch.sub(row.safe, log_mixture, out=work), row.p)
    js += _dot_(torch.sub(other.safe, log_mixture, out=work), other.p)
    tv = torch.sub(row.p, other.p, out=work).abs_().sum(-1).mul_(0.5)
    return {"js": js.mul_(0.5).clamp(0.0, _LN2), "tv": tv.clamp(0.0, 1.0), "kl_to_compared": kl_to,
            "kl_from_compared": kl_from}  # fmt: skip


def _row_statistics(
    row: _Distribution,
    final: _Distribution,
    other: _Distribution | None,
    nxt: torch.Tensor,
    tgt: torch.Tensor,
    anti: torch.Tensor | None,
    k: int,
    keep: bool = False,
) -> dict[str, torch.Tensor]:
    """The statistics of one row over one chunk of positions, moved to the CPU.

    Every divergence is a sum of probabilities times a difference of log-probabilities, never a difference of two
    large sums: a KL of 1e-5 nats keeps its digits. The definitions are
    those of `js_divergence` and `tv_distance`. A row compared with itself (the output row, shared by both lenses)
    has divergences of exactly 0.

    Args:
        row: The row's distribution.
        final: The model's own distribution at the same positions (the KL reference).
        other: The compared lens's distribution (for js, tv and the directed KLs), or None.
        nxt: Next-token ids [batch, chunk], -1 where there is none (ce is NaN there).
        tgt: Tracked token ids [batch, chunk], -1 where there is none (rank -1, prob and log_prob NaN there).
        anti: Anti-target ids [batch, chunk] (-1: none, anti_log_prob NaN there), or None without an anti-target.
        k: How many top tokens to keep.
        keep: Also return the row's log-probabilities (``keep_log_probs``).
    """
    nan = float("nan")
    logp = row.logp
    vals, idx = logp.topk(k, dim=-1)
    ce = -logp.gather(-1, nxt.clamp_min(0)[..., None])[..., 0]
    tgt_logp = logp.gather(-1, tgt.clamp_min(0)[..., None])
    tgt_rank = (logp > tgt_logp).sum(-1, dtype=torch.int32).long()  # an int32 count is twice as fast
    tp = tgt_logp[..., 0].exp()
    has_tgt = tgt >= 0
    stats = {
        "top_ids": idx,
        "top_probs": vals.exp(),
        "entropy": -row.plogp,
        "kl": _dot_(final.safe - row.safe, final.p).clamp_min(0.0),
        "ce": torch.where(nxt >= 0, ce, torch.full_like(ce, nan)),
        "rank": torch.where(has_tgt, tgt_rank, torch.full_like(tgt_rank, -1)),
        "prob": torch.where(has_tgt, tp, torch.full_like(tp, nan)),
        "log_prob": torch.where(has_tgt, tgt_logp[..., 0], torch.full_like(tp, nan)),
    }
    if anti is not None:
        anti_logp = logp.gather(-1, anti.clamp_min(0)[..., None])[..., 0]
        stats["anti_log_prob"] = torch.where(anti >= 0, anti_logp, torch.full_like(anti_logp, nan))
    if other is row:
        stats |= dict.fromkeys(_DIVERGENCES, torch.zeros_like(row.plogp))
    elif other is not None:
        stats |= _between(row, other)
    if keep:
        stats["log_probs"] = logp
    return {name: value.cpu() for name, value in stats.items()}


def _read_chunk(
    acc: _Accumulator,
    positions: slice,
    lens: Lens,
    compare_with: Lens | None,
    hidden: list[torch.Tensor],
    rows: list[int],
    nxt: torch.Tensor,
    tgt: torch.Tensor,
    anti: torch.Tensor | None,
    k: int,
    excluded: torch.Tensor | None = None,
    acc_compared: _Accumulator | None = None,
) -> None:
    """Every row's statistics over one chunk of ``positions`` (``hidden``: all hidden states cut to the chunk).

    The lens rows come first, the model's own output last. One row's [batch, chunk, vocab] distribution (two with
    ``compare_with``) exists at a time, besides the output row's, which every row's KL needs.
    ``excluded`` ([batch, vocab] bool, ``mask_input``) names the tokens given probability 0 in every row.
    ``acc_compared`` receives ``compare_with``'s own statistics (``read_compared``), all but the divergences.
    """

    def distribution(logits: torch.Tensor) -> _Distribution:
        logits = logits.float()
        if excluded is not None:
            logits = logits.masked_fill(excluded[:, None, :], float("-inf"))
        return _Distribution.of(torch.log_softmax(logits, dim=-1), finite=excluded is None)

    keep = acc.log_probs is not None
    # The model's own distribution: the last hidden state is already final-normed, only the head applies.
    final = distribution(lens.unembed.head(hidden[-1]))
    for r, i in enumerate(rows):
        row = distribution(lens(hidden[i], i))
        other = None if compare_with is None else distribution(compare_with(hidden[i], i))
        acc.write(r, positions, _row_statistics(row, final, other, nxt, tgt, anti, k, keep))
        if acc_compared is not None and other is not None:
            acc_compared.write(r, positions, _row_statistics(other, final, None, nxt, tgt, anti, k, keep))
        del row, other
    # Both lenses share the output row, so with compare_with it is compared with itself (js = tv = kl = 0).
    output = _row_statistics(final, final, None if compare_with is None else final, nxt, tgt, anti, k, keep)
    acc.write(len(rows), positions, output)
    if acc_compared is not None:
        acc_compared.write(len(rows), positions, {n: v for n, v in output.items() if n not in _DIVERGENCES})


@dataclass
class _Accumulator:
    """The output tensors of a trajectory ([batch, rows, positions], top-k with a trailing [k]), on the CPU,
    filled one row and one chunk of positions at a time."""

    top_ids: torch.Tensor
    top_probs: torch.Tensor
    entropy: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    rank: torch.Tensor
    prob: torch.Tensor
    log_prob: torch.Tensor
    anti_log_prob: torch.Tensor | None
    js: torch.Tensor | None
    tv: torch.Tensor | None
    kl_to_compared: torch.Tensor | None
    kl_from_compared: torch.Tensor | None
    log_probs: torch.Tensor | None

    @classmethod
    def empty(
        cls, shape: tuple[int, int, int], k: int, *, compared: bool, anti: bool, vocab: int | None = None
    ) -> _Accumulator:
        """Tensors of ``shape`` = (batch, rows, positions): NaN statistics, rank -1; js, tv and the two KLs only
        if ``compared``, anti_log_prob only if there is an ``anti``-target, log_probs only with a ``vocab``."""
        nan = float("nan")
        return cls(
            top_ids=torch.zeros((*shape, k), dtype=torch.long),
            top_probs=torch.zeros((*shape, k)),
            entropy=torch.full(shape, nan),
            ce=torch.full(shape, nan),
            kl=torch.full(shape, nan),
            rank=torch.full(shape, -1, dtype=torch.long),
            prob=torch.full(shape, nan),
            log_prob=torch.full(shape, nan),
            anti_log_prob=torch.full(shape, nan) if anti else None,
            js=torch.zeros(shape) if compared else None,
            tv=torch.zeros(shape) if compared else None,
            kl_to_compared=torch.zeros(shape) if compared else None,
            kl_from_compared=torch.zeros(shape) if compared else None,
            log_probs=torch.full((*shape, vocab), nan) if vocab is not None else None,
        )

    def write(self, row: int, positions: slice, stats: dict[str, torch.Tensor]) -> None:
        """Store the `_row_statistics` of one row over one chunk of positions."""
        for name, value in stats.items():
            getattr(self, name)[:, row, positions] = value

    def mask_padding(self, valid: torch.Tensor) -> None:
        """No prediction at padding (and masked) positions: NaN for the distribution statistics, the top-k
        probabilities and the kept log-probabilities, -1 for the top-k ids (ce, rank, prob and the target's
        log-probabilities are masked by their ids)."""
        pad = ~valid[:, None, :].expand(self.entropy.shape)
        for t in (self.entropy, self.kl, self.js, self.tv, self.kl_to_compared, self.kl_from_compared, self.log_probs):
            if t is not None:
                t[pad] = float("nan")
        self.top_probs[pad] = float("nan")
        self.top_ids[pad] = -1
