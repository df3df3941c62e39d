"""The local explorer behind ``lens-hub serve``: a web page where you type a prompt and see its prediction
trajectory, what every layer predicts at every position, through a lens and a second lens beside it.

The app is FastAPI on uvicorn, bound to 127.0.0.1 only (``pip install "lens-hub[serve]"``). It loads the model and
the lenses once; every request reads them. Routes:

``GET /``
    The page (``lens_hub/serve/static/``: one HTML file, one script, one stylesheet; nothing from other hosts).
``GET /api/health``
    Liveness, the configuration the page needs (lens names, statistics, limits, the example prompt it opens on, each
    lens's untrained layers) and counters: how many prompts were read (forward passes run) and how many requests are
    in flight.
``POST /api/trajectory``
    `TrajectoryRequest`, ``{"prompt": str, "stat": str}`` -> the input tokens, the row labels and, for each lens
    (``panels``), the statistic's value and the top-k tokens with their probabilities at every row and position, and
    the layers shown that the lens has not trained.
``POST /api/trajectory.png`` and ``POST /api/trajectory.html``
    `DownloadRequest`, ``{"prompt": str, "stat": str, "lens": "lens" | "compare"}`` -> the file
    `lens_hub.serve.render.write_png` or `lens_hub.serve.render.write_html` writes for that lens's trajectory, as a
    download.

Every number comes from `PredictionTrajectory` (the page only maps values to colours). A bad request (an empty
prompt, one longer than the model's window or ``max_tokens``, a body that is not UTF-8 JSON, an unknown field or
statistic) gets a 4xx status and ``{"error": message}``, one line naming the field, which the page shows. Forward
passes are serialised by one lock and run in a worker thread, so the event loop keeps answering (a second request
waits for the first, it never loads a second model copy).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) as objects; names
# imported only for type checkers are quoted instead.
import json
import math
import socket
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .._version import __version__
from ..errors import ExplorerRequestError, LensHubError, MissingExtraError, PortInUseError, ServeError

if TYPE_CHECKING:  # the heavy imports wait until an app is built, so `lens-hub serve` checks options in a blink
    import torch
    import uvicorn
    from fastapi import FastAPI
    from starlette.requests import Request
    from torch import nn

    from ..analysis.trajectory import PredictionTrajectory
    from ..core.lens import Lens

HOST = "127.0.0.1"  # never another interface: the explorer has no authentication
DEFAULT_PORT = 8000
DEFAULT_MAX_TOKENS = 256
DEFAULT_TOP_K = 5
MAX_BODY_BYTES = 256 * 1024  # a request body past this is refused (413) before it is parsed
SHUTDOWN_SECONDS = 2  # Ctrl-C waits at most this for requests in flight (a stopped reading ends sooner)
_EXTRA = 'pip install "lens-hub[serve]"'
_STATIC = "static"
_COMPARE_LABELS = {
    "js": "Jensen-Shannon divergence between the two lenses (nats, at most ln 2)",
    "tv": "total-variation distance between the two lenses (0 to 1)",
}
_STATISTICS = ("entropy", "kl", "ce", "rank", "prob", "log_prob")  # every explorer's; js and tv need --compare
_EMPTY_PROMPT = "the prompt is empty: type some text first"
EXAMPLE_PROMPT = "The capital of France is"  # what the page shows before anything is typed (read at start-up)


def check_serve_extra() -> None:
    """Check that FastAPI and uvicorn can be imported (without importing anything else of the explorer).

    Raises:
        MissingExtraError: If either is missing, naming the install command.
    """
    missing = []
    for name in ("fastapi", "uvicorn"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(f"lens-hub serve needs {' and '.join(missing)}, which are not installed: {_EXTRA}")


def open_socket(port: int = DEFAULT_PORT) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:``port`` (0: any free port), for `serve` or `make_server`.

    Binding first, before the model loads, makes a taken port fail at once, and with ``port=0`` tells the real
    port (``sock.getsockname()[1]``) before the server starts.

    Raises:
        PortInUseError: If the port is taken or not allowed, naming another choice.
    """
    if not 0 <= port <= 65535:
        raise PortInUseError(f"port {port} is not a TCP port: pass --port 0 to 65535 (0: any free port)")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As uvicorn does: a restart may rebind at once despite the last run's connections in TIME_WAIT (a port
    # another process listens on is still refused).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise PortInUseError(
            f"cannot listen on {HOST}:{port} ({exc.strerror or exc}): pass another --port, or --port 0 for any free one"
        ) from exc
    return sock


def url_of(sock: socket.socket) -> str:
    """The page's address for a socket from `open_socket`."""
    return f"http://{HOST}:{sock.getsockname()[1]}/"


# ------------------------------------------------------------------------------------------------- the explorer


@dataclass(frozen=True)
class Reading:
    """One prompt read through the explorer's lens(es): built under the lock, then only read (and cached)."""

    prompt: str
    trajectory: "PredictionTrajectory"
    compared: "PredictionTrajectory | None"  # the comparison lens's own trajectory (compared with the first lens)
    targets: list[str | None]  # label of the next token at each position (None at the last one)


class Explorer:
    """The state of one explorer app: the model, tokenizer and lenses (loaded once), limits and counters.

    All model, lens and tokenizer work happens under one lock: torch on the CPU is not re-entrant friendly, one
    model copy is shared, and Hugging Face's fast tokenizers mutate their settings on every call ("Already
    borrowed" under concurrent use). Readings of recent prompts are cached, so switching the statistic or
    downloading a view does not rerun the model.

    Args:
        model: The Hugging Face causal LM (put in eval mode).
        tokenizer: Its tokenizer.
        lens: The lens to explore.
        compare: A second lens of the same model, or None.
        lens_name: How the page names ``lens``.
        compare_name: How the page names ``compare`` (default ``"compare"``).
        model_name: How the page names the model (default: its ``name_or_path``).
        layers: Lens layers to show (default: all); the output row is always last.
        max_tokens: Longest prompt accepted, in tokens (the model's window caps it too).
        top_k: Top tokens kept per cell.
        cache_size: Readings of recent prompts kept (0: none).
        lock_timeout: Seconds a request waits for the model before it is answered 503.

    Raises:
        ServeError: If ``max_tokens`` or ``top_k`` is below 1, ``layers`` is empty or holds a layer that is not the
            lens's, or the lenses read different numbers of layers.

    Attributes:
        trajectories: How many prompts were read (forward passes run), cache hits excluded.
        in_flight: Trajectory and download requests being served now; ``peak_in_flight`` is the most at once.
        untrained: ``{"lens": [...], "compare": [...] | None}``, each lens's ``untrained_layers()``: layers it reads
            exactly as the logit lens does (identity translators), which the page marks.
        example: `EXAMPLE_PROMPT`, shown before anything is typed; None if it is longer than `limit`.
    """

    def __init__(
        self,
        model: "nn.Module",
        tokenizer: Any,
        lens: "Lens",
        compare: "Lens | None" = None,
        *,
        lens_name: str = "lens",
        compare_name: str | None = None,
        model_name: str | None = None,
        layers: Sequence[int] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        top_k: int = DEFAULT_TOP_K,
        cache_size: int = 16,
        lock_timeout: float = 120.0,
    ) -> None:
        from ..analysis.trajectory import STAT_LABELS
        from ..core.models import max_positions

        if max_tokens < 1:
            raise ServeError(f"max_tokens must be at least 1, got {max_tokens}")
        if top_k < 1:
            raise ServeError(f"top_k must be at least 1, got {top_k}")
        if compare is not None and compare.num_layers != lens.num_layers:
            raise ServeError(
                f"the comparison lens reads {compare.num_layers} layers but the lens reads {lens.num_layers}: "
                "compare two lenses of the same model"
            )
        if layers is not None and len(layers) == 0:
            raise ServeError("layers is empty: pass the layers to show, or None for all of them")
        outside = [i for i in layers or () if not 0 <= int(i) < lens.num_layers]
        if outside:  # checked now: at request time it would be every request's error
            raise ServeError(
                f"layer {outside[0]} is not a layer of the lens, which reads layers 0 to {lens.num_layers - 1}: "
                "pass --layers within that range"
            )
        self.layers = None if layers is None else sorted({int(i) for i in layers})
        self.model = model.eval()  # dropout off: the same prompt must always give the same trajectory
        self.tokenizer = tokenizer
        self.lens = lens.eval()
        self.compare = None if compare is None else compare.eval()
        self.lens_name = lens_name
        self.compare_name = None if compare is None else (compare_name or "compare")
        self.model_name = model_name or str(getattr(model, "name_or_path", "") or type(model).__name__)
        self.window = max_positions(model)
        self.max_tokens = max_tokens
        self.top_k = top_k
        self.cache_size = max(0, cache_size)
        self.lock_timeout = lock_timeout
        self.statistics = {name: STAT_LABELS[name] for name in _STATISTICS}
        if compare is not None:
            self.statistics.update(_COMPARE_LABELS)
        self.trajectories = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._cache: OrderedDict[str, Reading] = OrderedDict()
        # Layers each lens leaves as the logit lens reads them (identity translators), to be marked as such.
        self.untrained = {
            "lens": lens.untrained_layers(),
            "compare": None if compare is None else compare.untrained_layers(),
        }
        self.example: str | None = EXAMPLE_PROMPT
        try:
            self._encode(EXAMPLE_PROMPT)
        except ExplorerRequestError:  # longer than this explorer takes: the page opens empty
            self.example = None

    @property
    def limit(self) -> int:
        """The longest prompt accepted, in tokens: ``max_tokens``, or the model's window if that is shorter."""
        return self.max_tokens if self.window is None else min(self.max_tokens, self.window)

    def health(self) -> dict[str, Any]:
        """What ``GET /api/health`` answers: configuration for the page, limits and counters."""
        return {
            "status": "ok",
            "version": __version__,
            "model": self.model_name,
            "lens": self.lens_name,
            "compare": self.compare_name,
            "layers": self.layers,
            "statistics": self.statistics,
            "max_tokens": self.max_tokens,
            "window": self.window,
            "limit": self.limit,
            "top_k": self.top_k,
            "example": self.example,
            "untrained": self.untrained,
            "trajectories": self.trajectories,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
        }

    def read(self, prompt: str) -> Reading:
        """Read ``prompt`` through the lens (and the comparison lens), or take its cached reading.

        Blocks while another request holds the model, at most ``lock_timeout`` seconds.

        Raises:
            ExplorerRequestError: 422 for an empty prompt or one past `limit` tokens; 503 if the model stayed busy.
        """
        if not prompt:  # refused before waiting for the model (`TrajectoryRequest` refuses it first over HTTP)
            raise ExplorerRequestError(422, _EMPTY_PROMPT)
        self._check_stopping()
        if not self._lock.acquire(timeout=self.lock_timeout):
            raise ExplorerRequestError(
                503, f"the explorer was busy for {self.lock_timeout:.0f} s with other prompts: try again"
            )
        try:
            self._check_stopping()  # stopped while this request waited: the model is not run again
            cached = self._cache.get(prompt)
            if cached is not None:
                self._cache.move_to_end(prompt)
                return cached
            reading = self._compute(prompt, self._encode(prompt))
            self.trajectories += 1
            if self.cache_size:
                self._cache[prompt] = reading
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return reading
        finally:
            self._lock.release()

    def _encode(self, prompt: str) -> "torch.Tensor":
        """The prompt's token ids, as `PredictionTrajectory.from_text` tokenizes it; checked against `limit`."""
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"][0]
        if len(ids) == 0:
            raise ExplorerRequestError(422, "the prompt tokenizes to no tokens: type some other text")
        if len(ids) > self.limit:
            if self.window is not None and self.window <= self.max_tokens:
                why = f"the model reads at most {self.window} tokens"
            else:
                why = f"this explorer takes at most {self.max_tokens} (lens-hub serve --max-tokens raises it"
                why += f" up to the model's window of {self.window})" if self.window else ")"
            raise ExplorerRequestError(422, f"the prompt is {len(ids)} tokens long and {why}: shorten it")
        return ids

    def _compute(self, prompt: str, ids: "torch.Tensor") -> Reading:
        """One forward pass, then every lens's trajectory from its hidden states (called under the lock).

        `_read_lenses` reads all layers of all lenses in a few batched passes; `stop` aborts both steps between
        layers.
        """
        import torch

        from ..analysis.trajectory import token_label
        from ..core.models import hidden_states

        ids = ids[None]
        device = next(self.model.parameters()).device
        lenses = [self.lens] if self.compare is None else [self.lens, self.compare]
        with torch.inference_mode(), self._abortable():
            hidden = hidden_states(self.model, ids.to(device), attention_mask=torch.ones_like(ids).to(device))
            rows = self.layers if self.layers is not None else list(range(self.lens.num_layers))
            trajectories = _read_lenses(lenses, hidden, ids, rows, self.top_k, self.tokenizer, self._check_stopping)
        traj, compared = trajectories[0], trajectories[1] if len(trajectories) > 1 else None
        targets = [None if i < 0 else token_label(self.tokenizer, i) for i in traj.target_ids[0].tolist()]
        return Reading(prompt=prompt, trajectory=traj, compared=compared, targets=targets)

    def stop(self) -> None:
        """Stop reading prompts, as Ctrl-C asks: the reading in progress is abandoned at its next layer, and every
        request still waiting for the model, or arriving later, is answered 503 (`resume` undoes it)."""
        self._stopping.set()

    def resume(self) -> None:
        """Read prompts again after `stop` (a server started on this explorer calls it)."""
        self._stopping.clear()

    def _check_stopping(self) -> None:
        if self._stopping.is_set():
            raise ExplorerRequestError(503, "the explorer is stopping (Ctrl-C): start lens-hub serve again")

    @contextmanager
    def _abortable(self) -> Iterator[None]:
        """While it lasts, each block of the model checks `stop` before it runs (in this thread only: the model may
        be shared), so a forward pass in progress ends at the next block instead of running to its end."""
        thread = threading.get_ident()

        def check(_module: Any, _args: Any) -> None:
            if threading.get_ident() == thread:
                self._check_stopping()

        hooks = [block.register_forward_pre_hook(check) for block in self.lens.unembed.parts.layers]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def payload(self, reading: Reading, stat: str) -> dict[str, Any]:
        """The JSON answer of ``POST /api/trajectory``: labels, and each lens's values and top-k per cell.

        Each panel's ``untrained`` lists the layers shown that its lens has not trained (its trajectory's
        ``untrained_layers``).
        """
        panels = [_panel("lens", self.lens_name, reading.trajectory, stat)]
        if reading.compared is not None:
            panels.append(_panel("compare", self.compare_name or "compare", reading.compared, stat))
        traj = reading.trajectory
        return {
            "prompt": reading.prompt,
            "stat": stat,
            "stat_label": self.statistics[stat],
            "tokens": traj.input_labels[0],
            "targets": reading.targets,
            "rows": traj.row_labels,
            "top_k": traj.top_k,
            "panels": panels,
        }

    def render(self, reading: Reading, stat: str, which: str, kind: str) -> tuple[bytes, str]:
        """The PNG or HTML view (`lens_hub.serve.render.write_png` / `write_html`) of one lens's trajectory.

        Args:
            reading: The prompt's reading.
            stat: The colour statistic.
            which: ``"lens"`` or ``"compare"``.
            kind: ``"png"`` or ``"html"``.

        Returns:
            The file's bytes and a download name.

        Raises:
            ExplorerRequestError: 400 if ``which`` is neither, or names a comparison lens there is none of.
        """
        from .render import write_html, write_png

        if which not in ("lens", "compare"):
            raise ExplorerRequestError(400, f'"lens" must be "lens" or "compare", not {_shown(which)}')
        traj = reading.trajectory if which == "lens" else reading.compared
        if traj is None:
            raise ExplorerRequestError(400, "there is no comparison lens: start lens-hub serve with --compare")
        name = self.lens_name if which == "lens" else self.compare_name
        title = f"Prediction trajectory: {name} lens, coloured by {stat}"
        filename = f"trajectory-{which}-{stat}.{kind}"
        # Figures are built outside pyplot (`lens_hub.core.plots`), one per request: no lock needed.
        with tempfile.TemporaryDirectory(prefix="lens-hub-serve-") as tmp:
            path = Path(tmp) / filename
            (write_png if kind == "png" else write_html)(traj, path, stat, title=title)
            return path.read_bytes(), filename


def _finite(rows: list[list[float]]) -> list[list[float | None]]:
    """NaN and infinities as None (JSON has no NaN): the page shows those cells as undefined."""
    return [[v if math.isfinite(v) else None for v in row] for row in rows]


def _panel(key: str, name: str, traj: "PredictionTrajectory", stat: str) -> dict[str, Any]:
    """One lens's part of the trajectory answer: values [rows][positions], top-k [rows][positions][k], and the
    layers shown that the lens has not trained."""
    probs = traj.top_probs[0].tolist()
    labels = traj.top_labels[0]
    top = [
        [[[label, p] for label, p in zip(cell_labels, cell_probs, strict=True)] for cell_labels, cell_probs in
         zip(row_labels, row_probs, strict=True)]
        for row_labels, row_probs in zip(labels, probs, strict=True)
    ]  # fmt: skip
    values = _finite(traj.stat(stat)[0].tolist())
    return {"key": key, "name": name, "values": values, "top": top, "untrained": list(traj.untrained_layers)}


# Layers are read this many prompt positions at a time at least (`_read_lenses`): enough for one product with the
# unembedding to be bound by arithmetic, not by reading its weights; more would only repeat the output row.
_BATCH_POSITIONS = 64
_BLOCK_FLOATS = 1 << 25  # the most floats of one [batch, positions, vocabulary] block of statistics (128 MB)


def _read_lenses(
    lenses: Sequence["Lens"],
    hidden: Sequence["torch.Tensor"],
    ids: "torch.Tensor",
    rows: Sequence[int],
    top_k: int,
    tokenizer: Any,
    check: Callable[[], None],
) -> list["PredictionTrajectory"]:
    """The trajectory of one prompt through each of ``lenses`` (the lens, then the comparison lens if any), as
    ``PredictionTrajectory.from_hidden_states(lens, hidden, ids, layers=rows, compare_with=other)`` gives it.

    That call reads one layer at a time: for a short prompt each layer's product with the unembedding is bound by
    reading its weights, and each of some thirty statistics is a small operation, slow on a busy CPU. Here layers
    are read as a batch instead: slot ``b`` of the batch holds the prompt's state at layer ``rows[b * R + r]`` in
    the batch's row ``r``, so R rows of B slots (B * R >= the number of layers; spare slots repeat the last layer)
    cover every layer, B the fewest that fill `_BATCH_POSITIONS`. The output row, the same in every slot, is
    unembedded once. The batch is then cut back into one trajectory per lens: every number still comes from
    `PredictionTrajectory`.

    The comparison lens's trajectory comes from the same reading (``read_compared``): each of its rows is unembedded
    once, for the divergences between the two lenses and for its own statistics alike.

    Args:
        lenses: The lens, and the comparison lens if any (of the same model).
        hidden: The prompt's hidden states, ``num_layers + 1`` tensors [1, positions, hidden].
        ids: Its token ids, [1, positions].
        rows: The lens layers to read, sorted.
        top_k: Top tokens kept per cell.
        tokenizer: Labels the tokens.
        check: Called before each batch row is unembedded; raises to abandon the reading.

    Returns:
        One trajectory per lens.
    """
    import torch

    from ..analysis.trajectory import PredictionTrajectory
    from ..core.lens import BaseTunedLens, Lens, Unembed

    positions = ids.shape[1]
    slots = min(len(rows), max(1, -(-_BATCH_POSITIONS // positions)))
    depth = -(-len(rows) // slots)  # R, the batch's rows
    slots = -(-len(rows) // depth)  # B: as few slots as R rows need

    def layer(b: int, r: int) -> int:
        return rows[min(b * depth + r, len(rows) - 1)]

    parts = lenses[0].unembed.parts
    stacked = [torch.cat([hidden[layer(b, r)] for b in range(slots)]) for r in range(depth)]
    # The unused rows' states are never read; the last state feeds the output row, the same in every slot.
    states = [*stacked, *[stacked[0]] * (parts.num_layers - depth), hidden[-1].expand(slots, -1, -1)]

    class FirstCopyHead(Unembed):
        """The model's head on the first slot only, shared by all (every slot holds the same last state)."""

        def head(self, h: torch.Tensor) -> torch.Tensor:
            return super().head(h[:1]).expand(h.shape[0], *h.shape[1:-1], -1)

    class Batched(Lens):
        """``lens`` on a batch row: slot ``b`` through the translator of its layer, one unembedding for all."""

        def __init__(self, lens: Lens) -> None:
            super().__init__(parts)
            self.unembed = FirstCopyHead(parts)
            self.lens = lens

        def forward(self, h: torch.Tensor, r: int) -> torch.Tensor:
            check()
            translated = [self.lens.transform_hidden(h[b : b + 1], layer(b, r)) for b in range(slots)]
            return self.lens.unembed(torch.cat(translated))

    def cut(batch: PredictionTrajectory, lens: Lens) -> PredictionTrajectory:
        """The batch's reading as the trajectory of the prompt alone through ``lens``.

        What the batch read through the `Batched` wrapper says of the wrapper, not of ``lens``: its name and its
        untrained layers (which the views and downloads mark) are ``lens``'s.
        """
        tensors = {f.name: unbatch(v) for f in fields(batch) if isinstance(v := getattr(batch, f.name), torch.Tensor)}
        untrained = set(lens.untrained_layers())
        traj = replace(
            batch,
            **tensors,
            lengths=[positions],
            layers=list(rows),
            input_labels=[],
            top_labels=[],
            compared=None,
            untrained_layers=[i for i in rows if i in untrained],
        )
        traj.lens_name = "tuned lens" if isinstance(lens, BaseTunedLens) else "logit lens"  # views' titles
        traj.set_labels(tokenizer)
        return traj

    def unbatch(value: torch.Tensor) -> torch.Tensor:
        """A batch tensor as the trajectory of the prompt alone holds it."""
        if value.dim() == 2:  # [batch, positions]: the same in every slot
            return value[:1]
        per_layer = value[:, :depth].reshape(slots * depth, *value.shape[2:])[: len(rows)]
        return torch.cat([per_layer, value[0, depth][None]])[None]

    other = Batched(lenses[1]) if len(lenses) > 1 else None
    batch = PredictionTrajectory.from_hidden_states(
        Batched(lenses[0]),
        states,
        ids.expand(slots, -1),
        layers=range(depth),
        top_k=top_k,
        compare_with=other,
        read_compared=other is not None,
        chunk_size=max(1, _BLOCK_FLOATS // (slots * parts.vocab_size)),
    )
    read = [cut(batch, lenses[0])]
    if batch.compared is not None:
        read.append(cut(batch.compared, lenses[1]))
    return read


# -------------------------------------------------------------------------------------------------------- HTTP


class TrajectoryRequest(BaseModel):
    """The JSON body of ``POST /api/trajectory``; the downloads' `DownloadRequest` adds one field.

    Validate it with ``context={"statistics": ...}``, the statistics the explorer shows (without one, every
    statistic an explorer can show is accepted). `_refusal` turns a `pydantic.ValidationError` into the explorer's
    one-line answer.

    Attributes:
        prompt: The text to read, not empty (its length in tokens is checked once it is tokenized).
        stat: The statistic that colours the cells (default ``"entropy"``).
    """

    # strict: a number or a boolean is refused, never turned into a string.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt: str = Field(min_length=1)
    stat: str = "entropy"

    @field_validator("stat")
    @classmethod
    def known_statistic(cls, stat: str, info: ValidationInfo) -> str:
        """``stat`` if the explorer shows it; a ValueError naming those it shows otherwise."""
        statistics = (info.context or {}).get("statistics", (*_STATISTICS, *_COMPARE_LABELS))
        if stat in statistics:
            return stat
        hint = " (js and tv compare two lenses: start lens-hub serve with --compare)" if stat in _COMPARE_LABELS else ""
        raise ValueError(f"unknown statistic {_shown(stat)}{hint}: choose one of {', '.join(statistics)}")


class DownloadRequest(TrajectoryRequest):
    """The JSON body of ``POST /api/trajectory.png`` and ``POST /api/trajectory.html``: a `TrajectoryRequest` and
    the lens whose view to download.

    Attributes:
        lens: ``"lens"`` (the default) or ``"compare"`` (the comparison lens).
    """

    lens: Literal["lens", "compare"] = "lens"


_Body = TypeVar("_Body", bound=TrajectoryRequest)
# Which of a body's errors is reported: the most basic one (an unknown field before a missing one, a wrong type
# before a wrong value); any other error ranks 3, and the empty prompt (422) last.
_PRECEDENCE = {
    "model_type": 0, "extra_forbidden": 0, "missing": 1, "string_type": 2, "string_unicode": 2, "string_too_short": 4
}  # fmt: skip
_JSON_TYPES = {bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object"}


def _shown(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters: a refusal quotes what was sent, never echoes all of it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _refusal(exc: ValidationError, model: type[BaseModel]) -> ExplorerRequestError:
    """The explorer's answer to a body that ``model`` refused: one line naming the field, never pydantic's dump.

    The status is 422 for an empty prompt (a well-formed request, as one with a prompt too long for the model), and
    400 for the rest: not an object, an unknown or missing field, a wrong type, a value not among the choices.
    """
    error = min(exc.errors(), key=lambda e: _PRECEDENCE.get(e["type"], 3))
    kind, loc, value = error["type"], error["loc"], error["input"]
    name = str(loc[0]) if loc else ""
    if kind == "model_type":
        return ExplorerRequestError(400, 'send a JSON object such as {"prompt": "The capital of France is"}')
    if kind == "extra_forbidden":
        fields = ", ".join(model.model_fields)
        return ExplorerRequestError(400, f"unknown field {_shown(name)}: the fields are {fields}")
    if kind == "missing":
        return ExplorerRequestError(400, f'the request has no "{name}"')
    if kind == "string_type":
        return ExplorerRequestError(400, f'"{name}" must be a string, not {_JSON_TYPES.get(type(value), "null")}')
    if kind == "string_unicode":  # a lone surrogate such as "\ud800" is valid JSON but no text
        return ExplorerRequestError(400, f'"{name}" holds an unpaired UTF-16 surrogate: send valid text')
    if kind == "string_too_short":  # only the prompt has a minimum length
        return ExplorerRequestError(422, _EMPTY_PROMPT)
    if kind == "value_error":  # a validator's own message, such as the unknown statistic's
        return ExplorerRequestError(400, str(error["ctx"]["error"]))
    if kind == "literal_error":
        return ExplorerRequestError(400, f'"{name}" must be {error["ctx"]["expected"]}, not {_shown(value)}')
    return ExplorerRequestError(400, f'"{name}": {error["msg"]}')  # a constraint without its own message yet


async def _read_body(request: "Request", model: type[_Body], statistics: Sequence[str]) -> _Body:
    """The request's JSON body as ``model``: decoded by `_read_json`, then validated by pydantic.

    Args:
        request: The request.
        model: `TrajectoryRequest` or `DownloadRequest`.
        statistics: The statistics the explorer shows.

    Raises:
        ExplorerRequestError: 413, 415 or 400 from `_read_json`; 400 or 422 from `_refusal`.
    """
    data = await _read_json(request)
    try:
        return model.model_validate(data, context={"statistics": statistics})
    except ValidationError as exc:
        raise _refusal(exc, model) from None


async def _read_json(request: "Request") -> Any:
    """The request's JSON value, decoded under guards pydantic never gets to see: size, content type, UTF-8,
    JSON syntax, nesting depth, and numbers Python will not convert.

    Raises:
        ExplorerRequestError: 413 past `MAX_BODY_BYTES`, 415 for another content type, 400 for anything else.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        # Also what keeps other web sites out: a cross-origin JSON POST needs a CORS preflight, never granted.
        raise ExplorerRequestError(415, f"send the request as application/json, not {content_type or 'no type'}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ExplorerRequestError(413, f"the request is {declared} bytes; at most {MAX_BODY_BYTES} are accepted")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ExplorerRequestError(413, f"the request is over {MAX_BODY_BYTES} bytes: shorten the prompt")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExplorerRequestError(
            400, f"the request body is not UTF-8 (byte 0x{body[exc.start]:02x} at offset {exc.start}): send UTF-8 JSON"
        ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExplorerRequestError(
            400, f"the request body is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from exc
    except ValueError as exc:  # valid JSON Python will not convert: a number of more than 4,300 digits
        raise ExplorerRequestError(400, f"the request body holds a value that cannot be read ({exc})"[:300]) from exc
    except RecursionError as exc:  # "[[[[...", deep enough to exhaust the parser's stack
        raise ExplorerRequestError(400, "the request body nests too deeply: send a flat JSON object") from exc
    return data


def _static(name: str) -> bytes:
    """A file of the page, shipped in the package."""
    return resources.files("lens_hub.serve").joinpath(_STATIC, name).read_bytes()


_SECURITY_HEADERS = {
    # The page loads nothing from other hosts and may not be framed by them.
    "content-security-policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def build_app(explorer: Explorer) -> "FastAPI":
    """The FastAPI app serving ``explorer`` (``app.state.explorer``); see the module's docstring for the routes.

    Raises:
        MissingExtraError: If FastAPI is not installed.
    """
    check_serve_extra()
    from fastapi import Depends, FastAPI
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request

    app = FastAPI(title="lens-hub explorer", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explorer = explorer
    # A DNS-rebinding page (evil.example resolving to 127.0.0.1) sends its own Host header: refused.
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=[HOST, "localhost"])
    page = {name: _static(name) for name in ("index.html", "explorer.js", "explorer.css")}

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    @app.exception_handler(ExplorerRequestError)
    async def refused(request: Request, exc: ExplorerRequestError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(LensHubError)
    async def library_error(request: Request, exc: LensHubError) -> JSONResponse:
        # A trajectory the library refuses (TrajectoryError and friends) is the request's fault, not the server's.
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        # A bug of ours; uvicorn still logs the traceback. The page shows this line instead of a blank failure.
        return JSONResponse({"error": f"internal error ({type(exc).__name__}): please report it"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page["index.html"], media_type="text/html; charset=utf-8")

    @app.get("/explorer.js", include_in_schema=False)
    async def script() -> Response:
        return Response(page["explorer.js"], media_type="text/javascript; charset=utf-8")

    @app.get("/explorer.css", include_in_schema=False)
    async def stylesheet() -> Response:
        return Response(page["explorer.css"], media_type="text/css; charset=utf-8")

    @app.get("/api/health")
    async def health() -> JSONResponse:
        return JSONResponse(explorer.health())

    async def counted(fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking model or rendering work in a worker thread, counting the requests in flight."""
        explorer.in_flight += 1  # only the event loop's thread touches these counters
        explorer.peak_in_flight = max(explorer.peak_in_flight, explorer.in_flight)
        try:
            return await run_in_threadpool(fn, *args)
        finally:
            explorer.in_flight -= 1

    # Bodies are read by these dependencies, not by FastAPI: its own parsing would skip `_read_json`'s guards and
    # answer a bad body with its 422 dump instead of the page's one-line message.
    async def trajectory_body(request: Request) -> TrajectoryRequest:
        return await _read_body(request, TrajectoryRequest, tuple(explorer.statistics))

    async def download_body(request: Request) -> DownloadRequest:
        return await _read_body(request, DownloadRequest, tuple(explorer.statistics))

    @app.post("/api/trajectory")
    async def trajectory(body: Annotated[TrajectoryRequest, Depends(trajectory_body)]) -> JSONResponse:
        reading = await counted(explorer.read, body.prompt)
        return JSONResponse(explorer.payload(reading, body.stat))

    async def download(body: DownloadRequest, kind: str) -> Response:
        reading = await counted(explorer.read, body.prompt)
        data, filename = await counted(explorer.render, reading, body.stat, body.lens, kind)
        media = "image/png" if kind == "png" else "text/html; charset=utf-8"
        return Response(data, media_type=media, headers={"content-disposition": f'attachment; filename="{filename}"'})

    @app.post("/api/trajectory.png")
    async def trajectory_png(body: Annotated[DownloadRequest, Depends(download_body)]) -> Response:
        return await download(body, "png")

    @app.post("/api/trajectory.html")
    async def trajectory_html(body: Annotated[DownloadRequest, Depends(download_body)]) -> Response:
        return await download(body, "html")

    return app


def create_app(
    model: "nn.Module", tokenizer: Any, lens: "Lens", compare: "Lens | None" = None, **options: Any
) -> "FastAPI":
    """The explorer app for a loaded model and lens(es), testable without a port (e.g. with httpx's ASGI transport).

    Args:
        model: The Hugging Face causal LM (put in eval mode).
        tokenizer: Its tokenizer.
        lens: The lens to explore (a `lens_hub.TunedLens` or `lens_hub.LogitLens`).
        compare: A second lens of the same model, shown beside the first; adds the js and tv statistics.
        **options: The `Explorer`'s keyword options (``max_tokens``, ``top_k``, ``layers``, the names the page
            shows, ``cache_size``), documented there once.

    Returns:
        The FastAPI app; its `Explorer` is ``app.state.explorer``.

    Raises:
        MissingExtraError: If FastAPI is not installed.
        ServeError: As `Explorer`.
        TypeError: An option `Explorer` does not have.
    """
    check_serve_extra()
    return build_app(Explorer(model, tokenizer, lens, compare, **options))


def load_app(
    model: str,
    *,
    lens: str = "logit",
    compare: str | None = None,
    revision: str | None = None,
    dtype: "torch.dtype | None" = None,
    device: str | None = None,
    allow_mismatch: bool = False,
    **options: Any,
) -> "FastAPI":
    """Load a model and its lens(es) by name, once, and build the explorer app (what ``lens-hub serve`` does).

    Args:
        model: Hub id, local directory, or ``smollm2-offline``.
        lens: Lens directory, registry name, ``hf://...``, or ``"logit"`` for the logit lens.
        compare: A second lens in the same forms, or None.
        revision: Model revision.
        dtype: Model dtype (None: as saved).
        device: Device to run on (None: the CPU).
        allow_mismatch: Load a lens despite a model type, vocabulary or fingerprint mismatch (warns).
        **options: The `Explorer`'s keyword options (``layers``, ``max_tokens``, ``top_k``, ...); the page names
            the model and lenses as given here unless told otherwise.

    Returns:
        The FastAPI app.

    Raises:
        MissingExtraError: If FastAPI or uvicorn is not installed (checked before loading anything).
        lens_hub.errors.LensHubError: If the model or a lens cannot be loaded, or a lens does not fit the model.
    """
    check_serve_extra()
    from ..core.models import load_model_and_tokenizer
    from ..hub.mixin import load_lens

    net, tokenizer = load_model_and_tokenizer(model, revision=revision, dtype=dtype, device=device)

    reader = load_lens(lens, net, allow_mismatch=allow_mismatch)
    other = None if compare is None else load_lens(compare, net, allow_mismatch=allow_mismatch)
    names = {"lens_name": lens, "compare_name": compare, "model_name": model}
    return create_app(net, tokenizer, reader, other, **names | options)


def make_server(app: "FastAPI", *, port: int = DEFAULT_PORT) -> "uvicorn.Server":
    """A uvicorn server for ``app`` on 127.0.0.1 (run it with ``server.run(sockets=[sock])``, stop it with
    ``server.should_exit = True``).

    Stopping (Ctrl-C) is prompt: idle keep-alive connections are closed at once, the app's `Explorer` is stopped
    (`Explorer.stop`: the reading in progress ends at its next layer, with a 503), and what is still in flight after
    `SHUTDOWN_SECONDS` is cancelled. Otherwise a long prompt's reading would run to its end first (seconds to
    minutes on a CPU), and each request queued behind it after that.

    Raises:
        MissingExtraError: If uvicorn is not installed.
    """
    check_serve_extra()
    import uvicorn

    explorer = getattr(app.state, "explorer", None)

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            if explorer is not None:
                explorer.resume()
            await super().startup(sockets)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if explorer is not None:
                explorer.stop()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        host=HOST,
        port=port,
        http=_header_deadline_protocol(),
        log_level="warning",
        access_log=False,
        server_header=False,
        limit_concurrency=128,  # past this, new connections get 503 at once instead of piling up
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
        lifespan="off",
    )
    return Server(config)


HEADER_SECONDS = 10.0  # a connection must send a whole request head within this, or it is closed


def _header_deadline_protocol() -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head within `HEADER_SECONDS`.

    uvicorn times out idle keep-alive connections only after a first response, and counts every open connection
    against ``limit_concurrency``: without this, a few hundred connections that never finish their headers
    (slowloris) would hold every slot and leave real requests with 503s.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _head_timer: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(HEADER_SECONDS, self._head_overdue)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._restart_head_timer()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before and self._head_timer is not None:  # a whole request head arrived
                self._head_timer.cancel()
                self._head_timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _restart_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(HEADER_SECONDS, self._head_overdue)

        def _head_overdue(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                if self.conn.our_state != h11.ERROR:
                    with suppress(h11.LocalProtocolError):
                        self.conn.send(h11.ConnectionClosed())
                self.transport.close()

    return HeaderDeadlineProtocol


def serve(app: "FastAPI", *, port: int = DEFAULT_PORT, sock: socket.socket | None = None) -> None:
    """Serve ``app`` on 127.0.0.1 until Ctrl-C (or SIGTERM), then return.

    Args:
        app: An app from `create_app` or `load_app`.
        port: Port to bind (0: any free one), unless ``sock`` is given.
        sock: A listening socket from `open_socket` (bind it before loading the model to fail early).

    Raises:
        PortInUseError: If the port cannot be bound.
        MissingExtraError: If uvicorn is not installed.
    """
    own = sock is None
    sock = open_socket(port) if sock is None else sock
    server = make_server(app, port=sock.getsockname()[1])
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn shut down gracefully, then re-raised the Ctrl-C it caught: stopping is what was asked for
    finally:
        if own:
            sock.close()
