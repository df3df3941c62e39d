"""Helpers shared by the test modules (fixtures live in conftest.py; tiny model builders in tiny_models.py)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi
from tiny_models import tiny_model

from lens_hub import TunedLens
from lens_hub.registry.schema import RegistryEntry
from lens_hub.serve.app import make_server, open_socket, url_of
from lens_hub.testing import LOOPBACK_USER


def assert_png(data: bytes, *, min_width: int = 200, min_height: int = 150) -> tuple[int, int]:
    """Check that ``data`` decodes as a PNG of at least that size with something drawn on it; returns (w, h).

    A file that merely starts with the PNG signature, or a blank canvas, fails: the image is decoded and must hold
    more than a few colours (axes, text and data, not one background colour).
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG", image.format
        image.load()  # decodes every row: a truncated or corrupt file fails here
        width, height = image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert width >= min_width and height >= min_height, (width, height)
    assert colours is None or len(colours) > 8, f"only {len(colours)} colours: nothing drawn"
    return width, height


def run_hidden(model: torch.nn.Module, seed: int = 0, batch: int = 2, seq: int = 7):
    """A forward pass with hidden states on random tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    with torch.no_grad():
        return model(ids, output_hidden_states=True)


def random_lens(model: torch.nn.Module, seed: int = 0, std: float = 0.05):
    """A tuned lens with small seeded random translators (so it differs from the logit lens)."""
    from lens_hub import TunedLens

    lens = TunedLens.from_model(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return lens


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


def headless_chromium(profile_dir: Path):
    """Debian's Chromium driven by selenium, with a fresh profile; skips the test when either is missing."""
    import shutil

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium not installed: pip install -r requirements/docs.txt")
    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.access(p, os.X_OK)), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver",) if os.access(p, os.X_OK)), None
    )
    if chromium is None or driver is None:
        pytest.skip("Chromium and chromedriver not installed: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    browser.set_page_load_timeout(30)
    return browser


TOKENIZER = Path(__file__).parent / "data" / "gpt2-tokenizer"


SAMPLE = Path(__file__).parent.parent / "lens_hub" / "samples" / "persuasion-ch1-8.txt"


def gpt2_real_vocab(**kw):
    # initializer_range 0.2 makes layers differ enough from the output for KL to be far from zero.
    return tiny_model("gpt2", vocab_size=50257, n_embd=32, n_layer=3, initializer_range=0.2, **kw)


def save_model(tmp_path):
    model = gpt2_real_vocab()
    model.save_pretrained(tmp_path / "model")
    for f in TOKENIZER.glob("*.json"):
        shutil.copy(f, tmp_path / "model" / f.name)
    return model


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


BASE = f"{LOOPBACK_USER}/tiny-llama"


LENS_REPO = f"{LOOPBACK_USER}/tiny-llama-lens"


def upload(folder: Path, repo_id: str, subfolder: str = "", repo_type: str = "model", skip=()) -> str:
    """Publish every file of a folder (but ``skip``) in one commit with plain huggingface_hub calls; returns the
    commit."""
    api = HfApi()
    sdk = "static" if repo_type == "space" else None
    api.create_repo(repo_id, repo_type=repo_type, exist_ok=True, space_sdk=sdk)
    ops = [
        CommitOperationAdd(path_in_repo=f"{subfolder}/{f.name}" if subfolder else f.name, path_or_fileobj=str(f))
        for f in sorted(folder.iterdir())
        if f.name not in skip
    ]
    return api.create_commit(repo_id, ops, commit_message="add lens", repo_type=repo_type).oid


def file_records(folder: Path, names):
    return [
        {
            "path": n,
            "size": (folder / n).stat().st_size,
            "sha256": hashlib.sha256((folder / n).read_bytes()).hexdigest(),
        }
        for n in names
    ]


def lens_entry(lens_dir: Path, commit: str, *, versions=None, facts=None, subfolder="", aliases=("tiny-llama",)):
    cfg = json.loads((lens_dir / "config.json").read_text())
    base_facts = {k: cfg[k] for k in ("model_type", "hidden_size", "num_layers", "vocab_size", "fingerprint")}
    version = {
        "version": "1.0.0",
        "default": True,
        "format": "safetensors",
        "status": "verified",
        "location": {"repo_id": LENS_REPO, "subfolder": subfolder, "revision": commit},
        "files": file_records(lens_dir, ["config.json", "lens.safetensors"]),
    }
    return RegistryEntry.model_validate(
        {
            "model": BASE,
            "aliases": list(aliases),
            "facts": {**base_facts, **(facts or {})},
            "lenses": versions or [version],
        }
    )


def same_outputs(a, b, model):
    out = run_hidden(model)
    with torch.no_grad():
        return all(torch.equal(a(out.hidden_states[i], i), b(out.hidden_states[i], i)) for i in range(a.num_layers))


def write_old(folder: Path, lens: TunedLens):
    from lens_hub.core.legacy import export_legacy

    return export_legacy(lens, folder)


def legacy_entry(facts=None):
    return RegistryEntry.model_validate(
        {
            "model": BASE,
            "aliases": ["tiny-llama"],
            "facts": {"model_type": "llama", "hidden_size": 32, "num_layers": 3, "vocab_size": 96, **(facts or {})},
            "lenses": [
                {
                    "version": "1.0.0",
                    "default": True,
                    "format": "tuned-lens-legacy",
                    "status": "unverified",
                    "location": {
                        "repo_id": "loopback/tuned-lens",
                        "repo_type": "space",
                        "subfolder": f"lens/{BASE}",
                        "revision": None,
                    },
                    "files": [{"path": "config.json"}, {"path": "params.pt"}],
                }
            ],
        }
    )


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a background thread; yields the base URL."""
    sock = open_socket(0)
    server = make_server(app, port=sock.getsockname()[1])
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def call(url: str, path: str, body: bytes | dict | None = None, *, headers: dict | None = None, timeout: float = 30):
    """One real HTTP request: ``(status, headers, body bytes)``; a dict body is sent as JSON."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url.rstrip("/") + path, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def invoke(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``lens-hub ARGS`` run in this process, through the console script's own `lens_hub.cli.main` (so library
    errors are reported as the command reports them): a subprocess would add only its start-up time.

    ``env`` replaces the environment for the call (read by the code at call time, not by import-time constants);
    the result has the command's exit code, stdout and stderr, like `subprocess.run`.
    """
    from lens_hub.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    code = 0
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        sys.argv = ["lens-hub", *args]
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` of a child that a test stops with Ctrl-C: SIGINT back to its default, since a suite started
    as a background job (``cmd &`` in a script) hands its children an ignored SIGINT, which Python then keeps."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
