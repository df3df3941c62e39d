"""The local explorer (`lens_hub.serve.app`, ``lens-hub serve``): a real uvicorn server on loopback, real HTTP requests
and a real headless Chromium; every number checked against `PredictionTrajectory` computed directly.

Run as a script (``python tests/test_serve.py --lens DIR``) it regenerates the docs' screenshot
(docs/assets/explorer.png) with the real SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # helpers and tiny_models, also when run as a script

from helpers import TOKENIZER, assert_png, call, headless_chromium, random_lens, running, sigint_as_in_a_terminal
from tiny_models import tiny_model
from transformers import AutoTokenizer

from lens_hub import LogitLens
from lens_hub.analysis.trajectory import PredictionTrajectory
from lens_hub.serve.render import write_html, write_png

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from lens_hub.errors import ExplorerRequestError, ServeError
from lens_hub.serve.app import EXAMPLE_PROMPT, MAX_BODY_BYTES, create_app

PROMPT = "The capital of France is <b>Paris</b>."
STATS = ("entropy", "kl", "ce", "rank", "prob", "log_prob", "js", "tv")
TOP_K = 4
MAX_TOKENS = 40  # below the tiny model's window of 64, so both limits can be hit


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2", vocab_size=50257, n_embd=32, n_layer=3, initializer_range=0.2)


@pytest.fixture(scope="module")
def tuned(model):
    return random_lens(model)


@pytest.fixture(scope="module")
def logit(model):
    return LogitLens.from_model(model)


@pytest.fixture(scope="module")
def server(model, tokenizer, tuned, logit) -> Iterator[str]:
    """The explorer of the tuned lens, compared with the logit lens."""
    app = create_app(
        model, tokenizer, tuned, logit, max_tokens=MAX_TOKENS, top_k=TOP_K, lens_name="./lens", compare_name="logit"
    )
    with running(app) as url:
        yield url


@contextlib.contextmanager
def recorded_calls(module: torch.nn.Module) -> Iterator[list[tuple]]:
    """The positional arguments of every call of ``module``, recorded by a forward hook (the module still runs)."""
    calls: list[tuple] = []
    hook = module.register_forward_hook(lambda _module, args, _output: calls.append(args))
    try:
        yield calls
    finally:
        hook.remove()


def expected(tuned, logit, model, tokenizer, prompt: str) -> tuple[PredictionTrajectory, PredictionTrajectory]:
    """Both lenses' trajectories of ``prompt``, computed directly (what the server must answer)."""
    kw = {"top_k": TOP_K, "tokenizer": tokenizer}
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    first = PredictionTrajectory.from_ids(tuned, model, ids, compare_with=logit, **kw)
    second = PredictionTrajectory.from_ids(logit, model, ids, compare_with=tuned, **kw)
    return first, second


def assert_same_values(got: list[list[float | None]], want: torch.Tensor) -> None:
    """Served values (None for undefined) equal a [rows, positions] tensor (NaN for undefined)."""
    assert len(got) == want.shape[0] and all(len(row) == want.shape[1] for row in got)
    for row, want_row in zip(got, want.tolist(), strict=True):
        for g, w in zip(row, want_row, strict=True):
            assert (g is None) == math.isnan(w)
            if g is not None:
                assert g == pytest.approx(w, rel=1e-5, abs=1e-6)


def test_trajectory_api_serves_the_prediction_trajectory(server, model, tokenizer, tuned, logit):
    status, _, body = call(server, "/api/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok"
    assert list(health["statistics"]) == list(STATS) and health["lens"] == "./lens" and health["compare"] == "logit"
    assert health["window"] == 64 and health["limit"] == MAX_TOKENS

    first, second = expected(tuned, logit, model, tokenizer, PROMPT)
    for stat in STATS:
        status, headers, body = call(server, "/api/trajectory", {"prompt": PROMPT, "stat": stat})
        assert status == 200, body
        data = json.loads(body)
        assert data["stat"] == stat and data["rows"] == ["0", "1", "2", "output"]
        assert data["tokens"] == first.input_labels[0] and data["top_k"] == TOP_K
        assert data["targets"] == [*first.input_labels[0][1:], None]  # the next token, none after the last
        lens_panel, compare_panel = data["panels"]
        assert (lens_panel["key"], lens_panel["name"], compare_panel["name"]) == ("lens", "./lens", "logit")
        assert_same_values(lens_panel["values"], first.stat(stat)[0])
        assert_same_values(compare_panel["values"], second.stat(stat)[0])
    for panel, traj in zip(data["panels"], (first, second), strict=True):
        for r in range(traj.num_rows):
            for t in range(len(data["tokens"])):
                labels = [label for label, _ in panel["top"][r][t]]
                assert labels == traj.top_labels[0][r][t]
                probs = [p for _, p in panel["top"][r][t]]
                assert probs == pytest.approx(traj.top_probs[0, r, t].tolist(), rel=1e-5)
    assert headers["Content-Security-Policy"].startswith("default-src 'self'")
    status, headers, page = call(server, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"/explorer.js" in page


def test_bad_requests_get_a_4xx_and_a_message_never_a_500(server, model, tokenizer, tuned, logit):
    json_type = {"Content-Type": "application/json"}
    long_prompt = " word" * (MAX_TOKENS + 1)
    cases = [
        (b'{"prompt": ""}', json_type, 422, "prompt is empty"),
        (json.dumps({"prompt": long_prompt}).encode(), json_type, 422, f"at most {MAX_TOKENS}"),
        (b'\xff\xfe{"prompt": "x"}', json_type, 400, "not UTF-8"),
        (b'{"prompt": "caf\xe9"}', json_type, 400, "not UTF-8"),  # Latin-1, not UTF-8
        (b'{"prompt": "x"', json_type, 400, "not JSON"),
        (b"", json_type, 400, "not JSON"),
        (b"[" * 50_000, json_type, 400, "nests too deeply"),
        (b'["The capital"]', json_type, 400, "JSON object"),
        (b'{"prompt": 3}', json_type, 400, "must be a string"),
        (b'{"prompt": "x", "stat": true}', json_type, 400, '"stat" must be a string, not a boolean'),
        (b'{"text": "x"}', json_type, 400, "unknown field 'text'"),
        (b'{"prompt": "x", "lens": "lens"}', json_type, 400, "unknown field 'lens'"),  # a download's field only
        (b'{"stat": "kl"}', json_type, 400, 'no "prompt"'),
        (b'{"prompt": "\\ud800x"}', json_type, 400, "surrogate"),
        (b'{"prompt": "x", "stat": "loss"}', json_type, 400, "unknown statistic 'loss'"),
        (b'{"prompt": "x", "stat": "' + b"z" * 5000 + b'"}', json_type, 400, "unknown statistic 'zzz"),
        (b'{"prompt": "x", "stat": ' + b"9" * 5000 + b"}", json_type, 400, "cannot be read"),  # int() refuses
        (b'{"prompt": "x"}', {"Content-Type": "text/plain"}, 415, "application/json"),
        (b'{"prompt": "x"}', {}, 415, "application/json"),
        (b'{"prompt": "' + b"a" * MAX_BODY_BYTES + b'"}', json_type, 413, "at most"),
    ]
    started = time.monotonic()
    for body, headers, code, message in cases:
        status, _, answer = call(server, "/api/trajectory", body, headers=headers, timeout=20)
        assert status == code, (body[:40], answer)
        error = json.loads(answer)["error"]
        assert message in error and "\n" not in error and len(error) <= 300, (body[:40], answer)  # one short line
    status, _, answer = call(server, "/api/trajectory.png", {"prompt": "x", "lens": "other"})
    assert status == 400 and '"lens" must be' in json.loads(answer)["error"]
    status, _, answer = call(server, "/api/trajectory.html", {"prompt": "", "stat": "kl", "lens": "compare"})
    assert status == 422 and "prompt is empty" in json.loads(answer)["error"]
    status, _, answer = call(server, "/api/trajectory", {"prompt": "x"}, headers={"Host": "evil.example"})
    assert status == 400  # a DNS-rebinding page's Host header
    status, _, answer = call(server, "/api/nothing")
    assert status == 404 and json.loads(answer)["error"] == "Not Found"
    # No worker hung: a good request right after is answered, and all of it took seconds.
    status, _, answer = call(server, "/api/trajectory", {"prompt": "Fine again"}, timeout=20)
    assert status == 200 and json.loads(answer)["tokens"] == ["Fine", "·again"]
    assert time.monotonic() - started < 30


def test_without_a_comparison_lens_js_is_refused_and_the_window_caps_prompts(model, tokenizer, tuned):
    with pytest.raises(ServeError, match="layer 3 is not a layer of the lens, which reads layers 0 to 2"):
        create_app(model, tokenizer, tuned, layers=[0, 3])
    with pytest.raises(ServeError, match="max_tokens must be at least 1"):
        create_app(model, tokenizer, tuned, max_tokens=0)
    with pytest.raises(ServeError, match="layers is empty"):
        create_app(model, tokenizer, tuned, layers=[])
    app = create_app(model, tokenizer, tuned, max_tokens=256, top_k=TOP_K)
    with running(app) as url:
        health = json.loads(call(url, "/api/health")[2])
        assert "js" not in health["statistics"] and health["compare"] is None and health["limit"] == 64
        status, _, answer = call(url, "/api/trajectory", {"prompt": "Hello", "stat": "js"})
        assert status == 400 and "--compare" in json.loads(answer)["error"]
        status, _, answer = call(url, "/api/trajectory.html", {"prompt": "Hello", "lens": "compare"})
        assert status == 400 and "no comparison lens" in json.loads(answer)["error"]
        status, _, answer = call(url, "/api/trajectory", {"prompt": " word" * 65})
        assert status == 422 and "the model reads at most 64 tokens" in json.loads(answer)["error"]
        status, _, answer = call(url, "/api/trajectory", {"prompt": " word" * 64})
        data = json.loads(answer)
        assert status == 200 and len(data["panels"]) == 1 and len(data["tokens"]) == 64


def test_a_burst_of_parallel_requests_is_served_by_one_model(model, tokenizer, tuned, logit):
    # No cache: every request runs the model, so the lock, not a cache hit, is what keeps the answers right.
    app = create_app(model, tokenizer, tuned, logit, max_tokens=MAX_TOKENS, top_k=TOP_K, cache_size=0)
    explorer = app.state.explorer
    prompts = [f"Request number {i % 4} asks about {('cats', 'dogs', 'birds', 'fish')[i % 4]}" for i in range(20)]
    # Forward passes of the model passed in: every request must run that object, never a copy.
    with recorded_calls(model.base_model) as forward_passes, running(app) as url:
        gate = threading.Barrier(len(prompts) + 1, timeout=20)

        def one(prompt: str):
            gate.wait()
            return call(url, "/api/trajectory", {"prompt": prompt, "stat": "kl"}, timeout=45)

        started = time.monotonic()
        with ThreadPoolExecutor(len(prompts) + 1) as pool:
            futures = [pool.submit(one, p) for p in prompts]
            gate.wait()
            health_started = time.monotonic()
            health = call(url, "/api/health", timeout=10)  # the event loop answers during the burst
            health_took = time.monotonic() - health_started
            answers = [f.result(timeout=60) for f in futures]
        took = time.monotonic() - started
        final = json.loads(call(url, "/api/health")[2])
    assert health[0] == 200 and health_took < 5
    assert [status for status, _, _ in answers] == [200] * len(prompts), [a[2][:200] for a in answers]
    assert took < 60
    by_prompt: dict[str, bytes] = {}
    for prompt, (_, _, body) in zip(prompts, answers, strict=True):
        assert by_prompt.setdefault(prompt, body) == body  # identical prompts, byte-identical answers
    for prompt, body in by_prompt.items():
        first, second = expected(tuned, logit, model, tokenizer, prompt)
        panels = json.loads(body)["panels"]
        assert_same_values(panels[0]["values"], first.kl[0])
        assert_same_values(panels[1]["values"], second.kl[0])
    assert explorer.model is model
    assert len(forward_passes) == explorer.trajectories == final["trajectories"] == len(prompts)  # one per request
    assert final["peak_in_flight"] > 1 and final["in_flight"] == 0  # the requests did overlap


def test_each_lens_reads_all_layers_in_one_batched_pass(model, tokenizer, tuned, logit):
    # Each lens used to run once per layer: one product with the whole unembedding per layer and lens, each reading
    # its weights again (most of a short prompt's time). Now one product per lens covers every layer.
    app = create_app(model, tokenizer, tuned, logit, max_tokens=MAX_TOKENS, top_k=TOP_K)
    head = model.get_output_embeddings()
    positions = len(tokenizer(PROMPT)["input_ids"])
    with (
        recorded_calls(head) as head_calls,
        recorded_calls(tuned.translators[1]) as translator_calls,
        running(app) as url,
    ):
        status, _, body = call(url, "/api/trajectory", {"prompt": PROMPT, "stat": "js"})
        assert status == 200, body
        # The tuned lens's 3 layers in one product, the logit lens's 3 in another (read for the divergences and
        # its own trajectory alike), and the model's output once: nothing twice.
        assert len(head_calls) == 3
        assert sum(args[0].shape[:-1].numel() for args in head_calls) == (3 + 3 + 1) * positions
        assert [args[0].shape[0] for args in translator_calls] == [1]  # the layer's translator, once
        # A download of that prompt reads the cached trajectories: no lens runs again.
        status, headers, _ = call(url, "/api/trajectory.png", {"prompt": PROMPT, "stat": "tv", "lens": "compare"})
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert len(head_calls) == 3 and app.state.explorer.trajectories == 1
        reading = app.state.explorer.read(PROMPT)  # cached: the trajectories the request was answered from
    first, second = expected(tuned, logit, model, tokenizer, PROMPT)
    lens_panel, compare_panel = json.loads(body)["panels"]
    assert_same_values(lens_panel["values"], first.js[0])
    assert_same_values(compare_panel["values"], second.js[0])
    assert (reading.trajectory.lens_name, reading.compared.lens_name) == ("tuned lens", "logit lens")
    for got, want in ((reading.trajectory, first), (reading.compared, second)):
        assert got.lens_name == want.lens_name
        assert got.top_labels == want.top_labels and got.input_labels == want.input_labels
        torch.testing.assert_close(got.tv, want.tv, equal_nan=True)


@pytest.mark.parametrize(
    ("batch_positions", "block_floats", "layers"),
    [(256, 1 << 25, None), (8, 1 << 25, None), (8, 3 * 50257, [0, 2]), (1, 1 << 25, [1])],
    ids=["one-pass", "two-rows-and-a-spare-slot", "chunked-positions", "one-layer"],
)
def test_batched_readings_are_the_trajectories_layer_by_layer(
    monkeypatch, model, tokenizer, tuned, logit, batch_positions, block_floats, layers
):
    # However the layers are laid out in the batch (all in one row; two rows of two slots, one a spare copy of the
    # last layer; positions in chunks), each lens's trajectory is the one `PredictionTrajectory` gives directly.
    import lens_hub.serve.app as serve

    monkeypatch.setattr(serve, "_BATCH_POSITIONS", batch_positions)
    monkeypatch.setattr(serve, "_BLOCK_FLOATS", block_floats)
    explorer = create_app(model, tokenizer, tuned, logit, layers=layers, top_k=TOP_K, cache_size=0).state.explorer
    reading = explorer.read(PROMPT)
    kw = {"top_k": TOP_K, "tokenizer": tokenizer, "layers": layers}
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    first = PredictionTrajectory.from_ids(tuned, model, ids, compare_with=logit, **kw)
    second = PredictionTrajectory.from_ids(logit, model, ids, compare_with=tuned, **kw)
    for got, want in ((reading.trajectory, first), (reading.compared, second)):
        assert (got.layers, got.lengths, got.lens_name) == (want.layers, want.lengths, want.lens_name)
        assert got.input_labels == want.input_labels and got.top_labels == want.top_labels
        for name in ("input_ids", "target_ids", "top_ids"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name
        torch.testing.assert_close(got.top_probs, want.top_probs, equal_nan=True, rtol=1e-5, atol=1e-6)
        for name in STATS:  # a rank deep in a flat distribution moves by one with the last bit of a near-tied logit
            tolerance = {"rtol": 1e-3, "atol": 1} if name == "rank" else {"rtol": 1e-5, "atol": 1e-6}
            torch.testing.assert_close(got.stat(name), want.stat(name), equal_nan=True, **tolerance, msg=name)
        for name in ("kl_to_compared", "kl_from_compared"):  # the directed KLs, where trajectories have them
            if getattr(want, name, None) is not None:
                torch.testing.assert_close(getattr(got, name), getattr(want, name), equal_nan=True, msg=name)


def test_load_app_loads_the_model_once_and_reads_it_through_both_lenses(tmp_path, monkeypatch, model, tokenizer, tuned):
    import lens_hub.core.models
    from lens_hub.serve.app import load_app

    tuned.save(tmp_path / "lens")
    loads = []

    def load(name: str, **options):
        loads.append(name)
        return model, tokenizer

    monkeypatch.setattr(lens_hub.core.models, "load_model_and_tokenizer", load)
    app = load_app("tiny-gpt2", lens=str(tmp_path / "lens"), compare="logit", max_tokens=MAX_TOKENS, top_k=TOP_K)
    explorer = app.state.explorer
    assert loads == ["tiny-gpt2"] and explorer.model is model
    head = model.get_output_embeddings()  # both lenses unembed with the loaded model's own head, not a copy's
    assert all(read.unembed.parts.output_embedding is head for read in (explorer.lens, explorer.compare))
    assert explorer.health()["model"] == "tiny-gpt2" and explorer.health()["compare"] == "logit"


def test_stop_abandons_the_reading_in_progress_and_those_waiting(model, tokenizer, tuned, logit):
    # Ctrl-C used to wait for the reading in progress to run to its end, then for each request queued behind it.
    app = create_app(model, tokenizer, tuned, logit, cache_size=0)
    explorer = app.state.explorer
    blocks = tuned.unembed.parts.layers
    entered, release = threading.Event(), threading.Event()

    def hold(_module, _args, _output):  # the reading in progress, held after the model's first block
        entered.set()
        release.wait(timeout=30)

    hook = blocks[0].register_forward_hook(hold)
    try:
        with recorded_calls(blocks[1]) as later, ThreadPoolExecutor(2) as pool:
            reading = pool.submit(explorer.read, PROMPT)
            assert entered.wait(timeout=30)
            waiting = pool.submit(explorer.read, "Another prompt")  # queued for the model behind it
            explorer.stop()
            release.set()
            for future in (reading, waiting):
                with pytest.raises(ExplorerRequestError, match="stopping") as refused:
                    future.result(timeout=30)
                assert refused.value.status == 503
        assert later == [] and explorer.trajectories == 0  # no block ran after the stop, for either prompt
    finally:
        hook.remove()
    # The server stops its explorer when it shuts down, and a server started on it again resumes it.
    with running(app) as url:
        assert call(url, "/api/trajectory", {"prompt": PROMPT})[0] == 200
    with pytest.raises(ExplorerRequestError, match="stopping"):
        explorer.read("After the server stopped")


def test_untrained_layers_are_marked_in_the_api(model, tokenizer, logit):
    # A lens trained on layers 0 and 2 only: at layer 1 it is the logit lens, which the page must not pass off as
    # tuned.
    partial = lens_trained_on(model, [0, 2])
    assert partial.untrained_layers() == [1]
    app = create_app(model, tokenizer, partial, logit, top_k=TOP_K, lens_name="./partial", compare_name="logit")
    with running(app) as url:
        health = json.loads(call(url, "/api/health")[2])
        assert health["untrained"] == {"lens": [1], "compare": []}
        status, _, body = call(url, "/api/trajectory", {"prompt": PROMPT, "stat": "js"})
        assert status == 200, body
        data = json.loads(body)
        assert [p["untrained"] for p in data["panels"]] == [[1], []]
        assert max(data["panels"][0]["values"][1]) < 1e-5 < min(data["panels"][0]["values"][0])  # the logit lens there
        # The downloads mark it too: they draw the trajectories the answer came from.
        status, _, page = call(url, "/api/trajectory.html", {"prompt": PROMPT, "stat": "js", "lens": "lens"})
        assert status == 200 and "1 (untrained)" in page.decode()
        reading = app.state.explorer.read(PROMPT)
        assert (reading.trajectory.untrained_layers, reading.compared.untrained_layers) == ([1], [])
    alone = create_app(model, tokenizer, partial, layers=[0, 2], top_k=TOP_K).state.explorer
    assert [p["untrained"] for p in alone.payload(alone.read(PROMPT), "kl")["panels"]] == [[]]  # layer 1 not shown
    assert alone.health()["untrained"] == {"lens": [1], "compare": None}


def lens_trained_on(model, layers: list[int]):
    """A tuned lens as training on ``layers`` leaves it: provenance naming them, random translators there only."""
    from lens_hub import TunedLens
    from lens_hub.core.config import TrainingInfo

    lens = TunedLens.from_model(model)
    trained = random_lens(model)
    with torch.no_grad():
        for i in layers:
            lens.translators[i].load_state_dict(trained.translators[i].state_dict())
    lens.config = lens.config.model_copy(update={"training": TrainingInfo(steps=4, loss="kl", layers=layers)})
    return lens


def test_downloads_are_the_render_views(server, model, tokenizer, tuned, logit, tmp_path):
    first, second = expected(tuned, logit, model, tokenizer, PROMPT)
    for key, traj, name in (("lens", first, "./lens"), ("compare", second, "logit")):
        title = f"Prediction trajectory: {name} lens, coloured by js"
        status, headers, page = call(server, "/api/trajectory.html", {"prompt": PROMPT, "stat": "js", "lens": key})
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert headers["Content-Disposition"] == f'attachment; filename="trajectory-{key}-js.html"'
        assert page == write_html(traj, tmp_path / f"{key}.html", "js", title=title).read_bytes()
        assert page.decode().count('class="cell"') == traj.num_rows * len(traj.input_labels[0])
    status, headers, png = call(server, "/api/trajectory.png", {"prompt": PROMPT, "stat": "rank"})
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert_png(png)
    title = "Prediction trajectory: ./lens lens, coloured by rank"
    reference = write_png(first, tmp_path / "lens.png", "rank", title=title).read_bytes()
    assert png[16:24] == reference[16:24]  # the IHDR's width and height: the same figure as the view draws


def _wait(predicate, timeout: float = 20.0, what: str = "the page"):
    """Poll ``predicate`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


CELLS_JS = """
return Array.from(document.querySelectorAll('section.panel')).map(function (p) {
  return Array.from(p.querySelectorAll('td.cell')).map(function (c) {
    return [c.getAttribute('data-value'), c.style.backgroundColor];
  });
});
"""


def _submit(driver, prompt: str) -> int:
    """Type ``prompt`` into the page and submit it; returns the number of the answer it waits for."""
    from selenium.webdriver.common.by import By

    before = int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") or 0)
    box = driver.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(prompt)
    driver.find_element(By.ID, "submit").click()
    return before


def _answered(driver, after: int) -> bool:
    from selenium.webdriver.common.by import By

    return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") or 0) > after


def test_the_page_in_headless_chromium(server, model, tokenizer, tuned, logit, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    first, second = expected(tuned, logit, model, tokenizer, PROMPT)
    rows, positions = first.num_rows, len(first.input_labels[0])
    driver = headless_chromium(tmp_path / "profile")
    try:
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.get(server)
        _wait(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-connected"), what="/api/health")
        assert [o.text for o in Select(driver.find_element(By.ID, "stat")).options] == list(STATS)

        # A new page is not blank: it reads the example at once, and its address becomes a link to it.
        _wait(lambda: _answered(driver, 0), what="the example")
        assert driver.find_element(By.ID, "prompt").get_attribute("value") == EXAMPLE_PROMPT
        example = len(tokenizer(EXAMPLE_PROMPT)["input_ids"]) * rows
        assert len(driver.find_elements(By.CSS_SELECTOR, 'section[data-lens="lens"] td.cell')) == example
        assert _address(driver) == {"prompt": [EXAMPLE_PROMPT], "stat": ["entropy"]}

        # An empty prompt: the server's message in the page, with its 4xx status; the example stays.
        after = _submit(driver, "")
        error = driver.find_element(By.ID, "error")
        _wait(error.is_displayed, what="the error message")
        assert error.get_attribute("data-status") == "422" and "prompt is empty" in error.text
        assert len(driver.find_elements(By.CSS_SELECTOR, 'section[data-lens="lens"] td.cell')) == example
        assert _address(driver)["prompt"] == [EXAMPLE_PROMPT]
        _submit(driver, " word" * (MAX_TOKENS + 1))
        _wait(lambda: "41 tokens long" in error.text, what="the too-long message")
        assert error.get_attribute("data-status") == "422" and f"at most {MAX_TOKENS}" in error.text

        after = _submit(driver, PROMPT)
        _wait(lambda: _answered(driver, after), what="the trajectory")
        assert not driver.find_element(By.ID, "error").is_displayed()
        panels = driver.find_elements(By.CSS_SELECTOR, "section.panel")
        assert [p.get_attribute("data-lens") for p in panels] == ["lens", "compare"]
        for panel in panels:
            assert len(panel.find_elements(By.CSS_SELECTOR, "td.cell")) == rows * positions
            assert len(panel.find_elements(By.CSS_SELECTOR, "th.input")) == positions
        # Token text is set as text: the prompt's "<", "</" and ">." tokens show as written, and make no element.
        heads = [th.text for th in panels[0].find_elements(By.CSS_SELECTOR, "th.input")]
        assert heads == first.input_labels[0] and "·<" in heads and "</" in heads
        assert driver.find_elements(By.CSS_SELECTOR, "#panels b") == []

        # Hover: the tooltip lists the cell's top-k tokens and probabilities.
        cell = driver.find_element(By.CSS_SELECTOR, 'section[data-lens="compare"] td.cell[data-row="1"][data-pos="3"]')
        ActionChains(driver).move_to_element(cell).perform()
        tip = driver.find_element(By.ID, "tip")
        _wait(tip.is_displayed, what="the tooltip")
        lines = tip.text.splitlines()
        assert lines[0] == f"layer 1, position 3 ({second.input_labels[0][3]})" and lines[1] == "lens: logit"
        top = [f"{j + 1}. {label}  {p:.4f}" for j, (label, p) in
               enumerate(zip(second.top_labels[0][1][3], second.top_probs[0, 1, 3].tolist(), strict=True))]  # fmt: skip
        assert lines[-TOP_K:] == top
        label = second.top_labels[0][1][3][0]
        assert cell.text == (label if len(label) <= 10 else label[:9] + "…")

        # Switching the statistic changes the values and the colours, to the trajectory's own numbers.
        entropy = driver.execute_script(CELLS_JS)
        after = int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        Select(driver.find_element(By.ID, "stat")).select_by_value("kl")
        _wait(lambda: _answered(driver, after), what="the kl trajectory")
        kl = driver.execute_script(CELLS_JS)
        for stat, shown in (("entropy", entropy), ("kl", kl)):
            for cells, traj in zip(shown, (first, second), strict=True):
                values = [[float(v) for v, _ in cells[r * positions : (r + 1) * positions]] for r in range(rows)]
                assert_same_values(values, traj.stat(stat)[0])
        assert [c for _, c in kl[0]] != [c for _, c in entropy[0]]
        assert kl[0][-1][0] == "0"  # the output row has no KL to itself, and is coloured as the lowest value
        assert _address(driver) == {"prompt": [PROMPT], "stat": ["kl"]}

        # Download: the PNG view of the compared lens arrives as a file.
        driver.find_element(By.CSS_SELECTOR, 'section[data-lens="compare"] button[data-kind="png"]').click()
        _wait(lambda: "downloaded" in driver.find_element(By.ID, "status").text, what="the download")
        saved = _wait(lambda: list(downloads.glob("trajectory-compare-kl.png")), what="the downloaded file")
        assert_png(saved[0].read_bytes())
        driver.save_screenshot(str(tmp_path / "explorer.png"))

        # A shared link: the page opens on its prompt and statistic.
        shared = "Hello world, again & again?"
        driver.get(server + "?" + urlencode({"prompt": shared, "stat": "kl"}))
        _wait(lambda: _answered(driver, 0), what="the linked prompt")
        assert driver.find_element(By.ID, "prompt").get_attribute("value") == shared
        assert Select(driver.find_element(By.ID, "stat")).first_selected_option.get_attribute("value") == "kl"
        shown = driver.execute_script("return window.lensHubExplorer.last();")
        assert (shown["prompt"], shown["stat"]) == (shared, "kl")
        assert_same_values(shown["panels"][1]["values"], expected(tuned, logit, model, tokenizer, shared)[1].kl[0])
        # A link with a statistic this explorer does not show gets the server's message.
        driver.get(server + "?" + urlencode({"prompt": shared, "stat": "loss"}))
        _wait(lambda: driver.find_element(By.ID, "error").is_displayed(), what="the unknown statistic's message")
        assert "unknown statistic 'loss'" in driver.find_element(By.ID, "error").text

        # Layers a lens was not trained on are marked: row label and a note.
        partial = create_app(model, tokenizer, lens_trained_on(model, [0, 2]), logit, top_k=TOP_K)
        with running(partial) as url:
            driver.get(url + "?" + urlencode({"prompt": PROMPT}))
            _wait(lambda: _answered(driver, 0), what="the partly trained lens")
            marked = driver.find_elements(By.CSS_SELECTOR, 'section[data-lens="lens"] th.row.untrained')
            assert [th.text for th in marked] == ["1*"]
            note = driver.find_element(By.CSS_SELECTOR, 'section[data-lens="lens"] .untrained-note').text
            assert note.startswith("* untrained layer 1:") and "logit lens" in note
            assert driver.find_elements(By.CSS_SELECTOR, 'section[data-lens="compare"] th.row.untrained') == []
    finally:
        driver.quit()


def _address(driver) -> dict[str, list[str]]:
    """The query of the page's address, decoded."""
    return parse_qs(urlsplit(driver.current_url).query)


# --------------------------------------------------------------------------------------------------------- CLI


def _saved_model(tmp_path: Path, model, tuned) -> None:
    model.save_pretrained(tmp_path / "model")
    for f in TOKENIZER.glob("*.json"):
        shutil.copy(f, tmp_path / "model" / f.name)
    tuned.save(tmp_path / "lens")


def test_cli_serve_answers_and_stops_on_ctrl_c(tmp_path, model, tuned):
    _saved_model(tmp_path, model, tuned)
    args = ["serve", "model", "--lens", "./lens", "--compare", "logit", "--port", "0", "--device", "cpu"]
    args += ["--layers", "0,2", "--top-k", "3"]
    child = subprocess.Popen(
        [sys.executable, "-m", "lens_hub", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        preexec_fn=sigint_as_in_a_terminal,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in child.stdout], daemon=True).start()
    try:
        deadline = time.monotonic() + 120  # start-up: imports, the model, the example read
        url = None
        while url is None:
            assert child.poll() is None, child.stderr.read()
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                if "lens-hub explorer on http://127.0.0.1:" in line:
                    url = line.split(" on ")[1].split()[0]
            assert time.monotonic() < deadline, "no address printed"
        health = json.loads(call(url, "/api/health")[2])
        assert (health["lens"], health["compare"], health["layers"], health["top_k"]) == ("./lens", "logit", [0, 2], 3)
        # The page's example was read before the address was printed: the first page shows it at once.
        assert health["example"] == EXAMPLE_PROMPT and health["trajectories"] == 1
        assert call(url, "/api/trajectory", {"prompt": EXAMPLE_PROMPT})[0] == 200
        status, _, body = call(url, "/api/trajectory", {"prompt": "Hello there", "stat": "js"})
        data = json.loads(body)
        assert status == 200 and data["rows"] == ["0", "2", "output"] and len(data["panels"][0]["top"][0][0]) == 3
        assert json.loads(call(url, "/api/health")[2])["trajectories"] == 2  # one forward pass per prompt
        # A browser keeps its connection open after an answer; Ctrl-C must not wait for it (nor for anything).
        browser = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/")), timeout=10)
        browser.request("GET", "/api/health")
        assert browser.getresponse().read() and browser.sock is not None  # kept alive
        child.send_signal(signal.SIGINT)  # Ctrl-C
        child.wait(timeout=5)
        browser.close()
        stderr = child.stderr.read()
        assert child.returncode == 0, stderr
        assert "Traceback" not in stderr
        time.sleep(0.2)
        rest = []
        with contextlib.suppress(queue.Empty):
            while True:
                rest.append(lines.get(timeout=0.5))
        assert "explorer stopped" in "".join(rest)
        with pytest.raises(ConnectionRefusedError):  # the port is closed
            socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))), timeout=2).close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


def test_cli_serve_checks_its_arguments_before_loading_the_model(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "lens_hub", "serve", "no-such-model", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = run("--port", str(port))
    # The port's error, not the missing model's: the port is bound before the model loads.
    assert done.returncode == 1 and "PortInUseError" in done.stderr and f"127.0.0.1:{port}" in done.stderr
    assert "--port 0" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 30
    done = run("--lens", "logit", "--compare", "logit")
    assert done.returncode == 2 and "same lens" in done.stderr
    done = run("--max-tokens", "0")
    assert done.returncode == 2 and "--max-tokens" in done.stderr
    done = run("--layers", "1-x")
    assert done.returncode == 2 and "--layers" in done.stderr


def test_fastapi_is_imported_only_by_the_explorer():
    code = (
        "import sys, lens_hub, lens_hub.cli, lens_hub.serve.app\n"
        "sys.argv = ['lens-hub', 'serve', '--help']\n"
        "try:\n    lens_hub.cli.app()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert "Example: lens-hub serve" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"
    # Without the extra (an import of fastapi fails), a LensHubError names the install command.
    missing = (
        "import sys; sys.modules['fastapi'] = None\n"
        "from lens_hub.errors import LensHubError\n"
        "from lens_hub.serve.app import check_serve_extra\n"
        "try:\n    check_serve_extra()\nexcept LensHubError as e:\n    print(type(e).__name__, e)"
    )
    done = subprocess.run([sys.executable, "-c", missing], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.startswith("MissingExtraError") and 'pip install "lens-hub[serve]"' in done.stdout


# ------------------------------------------------------------------------------------------ the docs' screenshot


def make_screenshot(lens_dir: Path, out: Path, prompt: str, stat: str) -> None:
    """Serve the real SmolLM2-135M-Instruct with ``lens_dir`` beside the logit lens, and save the page, hovered.

    The docs' screenshot shows the lens ``lens-hub demo`` trains (``out/demo/lens``).
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from lens_hub import TunedLens
    from lens_hub.core.models import load_smollm2

    net, tok = load_smollm2()
    lens = TunedLens.load(lens_dir, net)
    app = create_app(net, tok, lens, LogitLens.from_model(net), lens_name="tuned lens", compare_name="logit lens",
                     model_name="SmolLM2-135M-Instruct")  # fmt: skip
    with running(app) as url, contextlib.ExitStack() as stack:
        import tempfile

        driver = headless_chromium(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        stack.callback(driver.quit)
        driver.set_window_size(1500, 1060)
        driver.get(url)
        _wait(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-connected"))
        Select(driver.find_element(By.ID, "stat")).select_by_value(stat)
        after = _submit(driver, prompt)
        _wait(lambda: _answered(driver, after), timeout=120)
        # Hover the model's output at the last position: what the page's tooltip shows for the next token.
        cell = driver.find_elements(By.CSS_SELECTOR, 'section[data-lens="lens"] td.cell')[-1]
        ActionChains(driver).move_to_element(cell).perform()
        _wait(lambda: driver.find_element(By.ID, "tip").is_displayed())
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Regenerate the explorer's screenshot for the docs.")
    parser.add_argument("--lens", type=Path, default=Path("out/demo/lens"), help="A SmolLM2-135M lens.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "docs" / "assets" / "explorer.png")
    parser.add_argument("--prompt", default="The Eiffel Tower is in the city of")
    parser.add_argument("--stat", default="rank")
    options = parser.parse_args()
    make_screenshot(options.lens, options.out, options.prompt, options.stat)
