"""Checks of a command's arguments that run before its model loads.

Loading a model takes most of a minute; its config, its tokenizer and a lens's config.json take a second or
two. Whatever those can refute (a layer the model does not have, a lens that is missing or made for another
architecture, data shorter than the run needs) is refused first, naming the flag to change.
"""

from __future__ import annotations

import os

from ..core.models import config_num_layers, load_config, load_tokenizer, max_positions, text_config
from ..errors import AmbiguousNameError, IncompatibleLensError, LensFormatError, LensNotFoundError, UnknownVersionError
from ..training.data import is_local, load_token_data
from ..training.settings import TrainSettings
from ..training.train import check_layers, make_plan, plan_for


def check_model_args(model: str, *, revision: str | None, layers: list[int] | None) -> object:
    """Check the model name and ``--layers`` against the model's config (read without the weights).

    Returns:
        The model's config, for the other checks.

    Raises:
        ModelNotFoundError: The model cannot be found (see `lens_hub.core.models.check_model_name`).
        LayerRangeError: ``--layers`` names layers the model does not have.
    """
    config = load_config(model, revision=revision)
    num_layers = config_num_layers(config)
    if num_layers is not None:  # a config without the count: the check after the load still runs
        check_layers(layers, num_layers)
    return config


def capped_seq_len(seq_len: int, config: object) -> int:
    """``--seq-len`` capped by the model's window, as the command will use it."""
    return min(seq_len, max_positions(config) or seq_len)


def check_lens_arg(name: str, config: object, *, flag: str) -> None:
    """Check a lens argument without loading the model: a local path must be a lens directory whose config.json
    fits the model's layer count and hidden size; a registry name must exist. Hub lenses are fetched later.

    ``logit`` (and other built-in sources, which the caller skips) are not lens names.

    Raises:
        LensNotFoundError, AmbiguousNameError, UnknownVersionError: The name resolves to nothing, or to two things.
        LensFormatError: The directory holds no valid lens config.json.
        IncompatibleLensError: The lens was made for a model with another layer count or hidden size.
    """
    from ..core.compat import structural_mismatches
    from ..core.format import read_config
    from ..hub.pretrained import resolve

    if name == "logit":
        return
    try:
        ref = resolve(name)  # local paths and registry names, no network request
        lens_config = read_config(ref.path) if ref.kind == "local" and ref.path is not None else None
    except (LensNotFoundError, AmbiguousNameError, UnknownVersionError, LensFormatError) as exc:
        raise type(exc)(f"{flag} {name}: {exc}") from None
    if lens_config is None:
        return
    hidden_size = getattr(text_config(config), "hidden_size", None)
    mismatches = structural_mismatches(lens_config, hidden_size, config_num_layers(config))
    if mismatches:
        made_for = f" (trained for {lens_config.base_model})" if lens_config.base_model else ""
        raise IncompatibleLensError(
            mismatches, hint=f"{flag} {name}{made_for} was made for a different model; pass a lens of this model."
        )


def check_eval_data(data: str, *, model: str, revision: str | None, seq_len: int, text_column: str) -> None:
    """Refuse local data that holds less than one sequence of ``seq_len`` tokens, reading only that far.

    Raises:
        DataError: Naming the tokens the data holds, the sequence length and ``--seq-len``.
    """
    if not is_local(data):  # a Hub dataset is streamed from the network: checked when it is read
        return
    tokenizer = load_tokenizer(model, revision=revision)
    load_token_data(data, tokenizer, seq_len=seq_len, text_column=text_column, max_sequences=1)


def check_train_data(
    data: str, *, model: str, revision: str | None, settings: TrainSettings, heldout: int, text_column: str
) -> None:
    """Refuse local data too short for the run (its steps, its fit, its held-out sequences), and a step size no
    batch gives, reading and tokenizing only as much data as the run needs.

    ``settings.seq_len`` must already be capped by the model's window (`capped_seq_len`).

    Raises:
        TrainSettingsError: See `lens_hub.training.train.plan_for`.
        DataError: Naming what the run needs, what the data gives, and the flags to lower.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plan = plan_for(settings, settings.seq_len, world)
    if not is_local(data):  # a Hub dataset is streamed only as far as needed: checked when it is read
        return
    needed = max(settings.steps * plan.sequences_per_step, (settings.fit_tokens or 0) // settings.seq_len, 1)
    tokenizer = load_tokenizer(model, revision=revision)
    tokens = load_token_data(
        data, tokenizer, seq_len=settings.seq_len, text_column=text_column, max_sequences=needed + heldout
    )
    make_plan(settings, tokens.split(heldout)[0] if heldout else tokens, world)
