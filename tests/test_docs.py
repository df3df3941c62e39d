"""The documentation site: `mkdocs build --strict`, then a headless Chromium checks the generated lens catalogue.

The site is built from a temporary registry (``LENS_HUB_REGISTRY``): a copy of the shipped one plus one verified
entry that holds evaluation metrics, so that the per-layer plot is drawn. Skipped when mkdocs (requirements/docs.txt)
or Chromium + chromedriver (Debian: ``apt-get install chromium chromium-driver``) are not installed.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from helpers import headless_chromium

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")

EXTRA_MODEL = "lens-hub-docs/tiny-gpt2"
EXTRA_ALIAS = "docs-test-tiny-gpt2"
EXTRA_ENTRY = {
    "schema_version": 1,
    "model": EXTRA_MODEL,
    "aliases": [EXTRA_ALIAS],
    "facts": {"model_type": "gpt2", "hidden_size": 64, "num_layers": 4, "vocab_size": 1000},
    "lenses": [
        {
            "version": "1.0.0",
            "default": True,
            "format": "safetensors",
            "status": "verified",
            "location": {"repo_id": "lens-hub-docs/tiny-gpt2-lens", "revision": "a" * 40},
            "files": [
                {"path": "config.json", "size": 512, "sha256": "b" * 64},
                {"path": "lens.safetensors", "size": 66_000, "sha256": "c" * 64},
            ],
            "license": "mit",
            "evaluation": {
                "dataset": "austen (held out)",
                "num_tokens": 4096,
                "layers": [0, 1, 2, 3],
                "tuned": {"kl": [2.1, 1.4, 0.8, 0.3], "cross_entropy": [4.0, 3.5, 3.1, 2.9]},
                "logit": {"kl": [6.2, 5.1, 3.3, 1.0], "cross_entropy": [7.9, 6.6, 4.8, 3.2]},
                "model_cross_entropy": 2.7,
            },
        }
    ],
}


def _first(paths: tuple[str, ...], which: str) -> str | None:
    found = next((p for p in paths if os.access(p, os.X_OK)), None)
    return found or shutil.which(which)


def _requirements() -> tuple[str, str]:
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python", "selenium") if not _has_module(m)]
    if missing:
        pytest.skip(f"docs packages not installed ({', '.join(missing)}): pip install -r requirements/docs.txt")
    chromium = _first(CHROMIUM_CANDIDATES, "chromium")
    driver = _first(DRIVER_CANDIDATES, "chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Chromium and chromedriver not installed: apt-get install -y chromium chromium-driver")
    return chromium, driver


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """Build the site from the shipped registry plus one entry with metrics; serve it on 127.0.0.1."""
    _requirements()
    tmp = tmp_path_factory.mktemp("docs")
    registry = tmp / "registry"
    shutil.copytree(ROOT / "registry", registry)
    (registry / (EXTRA_MODEL.replace("/", "--") + ".yaml")).write_text(yaml.safe_dump(EXTRA_ENTRY, sort_keys=False))
    out = tmp / "site"
    env = {**os.environ, "LENS_HUB_REGISTRY": str(registry), "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert "WARNING" not in proc.stderr, proc.stderr

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_address[1]}", "dir": out, "registry": registry, "tmp": tmp}
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(site):

    _requirements()
    driver = headless_chromium(Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=site["tmp"])))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout: float = 15):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # Material re-renders parts of the page (search results, code buttons): retry on stale elements.
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def test_catalogue_lists_every_entry_and_filters(site, browser) -> None:
    from selenium.webdriver.common.by import By

    from lens_hub.registry.store import Registry

    registry = Registry.load(site["registry"])
    browser.get(site["url"] + "/catalogue/")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".catalogue-table tbody tr"))
    rows = browser.find_elements(By.CSS_SELECTOR, ".catalogue-table tbody tr")
    listed = {r.find_element(By.CSS_SELECTOR, "td:first-child").text for r in rows}
    assert listed == set(registry.entries), set(registry.entries) ^ listed
    assert len(registry.entries) == 35  # 34 shipped + the test's entry

    count = browser.find_element(By.ID, "catalogue-count")
    _wait(browser, lambda d: count.text == f"{len(rows)} of {len(rows)} models")
    screenshot = site["tmp"] / "catalogue.png"
    browser.save_screenshot(str(screenshot))
    print(f"catalogue screenshot: {screenshot}")

    # The client-side filter: typing an alias leaves only its model.
    box = browser.find_element(By.ID, "catalogue-filter")
    box.send_keys(EXTRA_ALIAS)
    _wait(browser, lambda d: count.text == f"1 of {len(rows)} models")
    visible = [r for r in rows if r.is_displayed()]
    assert [r.find_element(By.CSS_SELECTOR, "td:first-child").text for r in visible] == [EXTRA_MODEL]
    assert "KL 3.90 → 1.15" in visible[0].text  # the headline metric, mean over layers (logit → tuned)
    box.clear()
    box.send_keys("pythia 70m")
    _wait(browser, lambda d: count.text == f"2 of {len(rows)} models")


def test_model_page_has_snippet_and_plot(site, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(site["url"] + "/catalogue/")
    link = _wait(browser, lambda d: d.find_element(By.LINK_TEXT, EXTRA_MODEL))
    link.click()
    _wait(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, "h1") and EXTRA_MODEL in d.find_element(By.CSS_SELECTOR, "h1").text,
    )
    codes = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "pre code")]
    assert f'lens = TunedLens.from_pretrained("{EXTRA_MODEL}")' in "\n".join(codes)
    assert _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "button[data-md-type='copy'], .md-clipboard")), (
        "no code copy button"
    )
    assert "a" * 40 in browser.page_source  # the pinned commit
    plot = browser.find_element(By.CSS_SELECTOR, "img.lens-plot")
    _wait(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot) > 0)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)
    browser.save_screenshot(str(site["tmp"] / "model-page.png"))
    print(f"model page screenshot: {site['tmp'] / 'model-page.png'}")

    # A shipped entry without metrics: the snippet, and no plot.
    browser.get(site["url"] + "/catalogue/openai-community--gpt2/")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "pre code"))
    codes = "\n".join(c.text for c in browser.find_elements(By.CSS_SELECTOR, "pre code"))
    assert 'lens = TunedLens.from_pretrained("openai-community/gpt2")' in codes
    assert not browser.find_elements(By.CSS_SELECTOR, "img.lens-plot")


def test_search_finds_a_model_by_alias(site, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(site["url"] + "/")
    query = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "input.md-search__input"))
    if not query.is_displayed():  # narrow windows hide the search box behind the header's search button
        browser.find_element(By.CSS_SELECTOR, "label.md-header__button[for='__search']").click()
        _wait(browser, lambda d: query.is_displayed())
    query.click()
    query.send_keys(EXTRA_ALIAS)

    def hit(d):
        return d.execute_script(
            "return Array.from(document.querySelectorAll('.md-search-result__item a'))"
            ".some(a => a.href.includes(arguments[0]))",
            "/catalogue/lens-hub-docs--tiny-gpt2/",
        )

    assert _wait(browser, hit, timeout=20)


def test_generated_references(site) -> None:
    cli = (site["dir"] / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for command in ("lens-hub train", "lens-hub eval", "lens-hub push", "lens-hub registry validate"):
        assert command in cli
    schema = (site["dir"] / "reference" / "registry-schema" / "index.html").read_text(encoding="utf-8")
    for model in ("RegistryEntry", "LensVersion", "HubLocation", "ModelFacts", "EvaluationInfo"):
        assert model in schema
    api = (site["dir"] / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name in (
        "lens_hub.hub.mixin.TunedLens",
        "lens_hub.core.lens.BaseTunedLens",
        "lens_hub.core.lens.LogitLens",
        "lens_hub.cli.workflows.train_evaluate_publish",
        "lens_hub.hub.publish.plan_push",
        "lens_hub.hub.publish.execute",
        "LoopbackHub",
        "from_pretrained",
    ):
        assert name in api


# ---------------------------------------------------------------------------------------------------------------
# checks on the sources and the generated markdown (no browser, no site build)


def _hook_module():
    """docs/hooks/generate.py, imported as mkdocs imports it (it needs mkdocs installed)."""
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("lens_hub_docs_hook", ROOT / "docs" / "hooks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fences(markdown: str) -> tuple[list[str], dict[str, list[str]]]:
    """The prose lines of ``markdown`` and the lines inside its fenced blocks, by the fence's language."""
    prose: list[str] = []
    blocks: dict[str, list[str]] = {}
    fence, language = None, ""
    for line in markdown.splitlines():
        opening = line.lstrip()
        if fence is None and opening.startswith("```"):
            fence = opening[: len(opening) - len(opening.lstrip("`"))]
            language = opening[len(fence) :].strip()
        elif fence is not None and opening == fence:
            fence = None
        elif fence is not None:
            blocks.setdefault(language, []).append(line)
        else:
            prose.append(line)
    return prose, blocks


def test_cli_reference_renders_examples_as_bash_blocks() -> None:
    from typer.main import get_command

    from lens_hub.cli import app

    page = _hook_module()._cli_page()
    prose, blocks = _fences(page)
    bash = "\n".join(blocks.get("bash", []))

    # Every example command of every help text, read from the CLI itself, is in a bash block, and none is prose.
    examples: list[str] = []

    def walk(cmd) -> None:
        for line in inspect.cleandoc(cmd.help or "").splitlines():
            command = re.sub(r"^Examples?:", "", line.strip()).strip()
            if command.startswith("lens-hub "):
                examples.append(command)
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(get_command(app))
    assert len(examples) >= 12  # the root's list and one per command
    for command in examples:
        assert command in bash, command
    assert not [line for line in prose if re.match(r"\s*(Examples?:|lens-hub )", line)]

    # The root's "Examples:" list is one block, a backslash-continued command kept as two lines.
    root = page.split("## `lens-hub`", 1)[1].split("```text", 1)[0]
    assert root.count("```bash") == 1 and "**Examples**" in root
    assert "\\\n  --" in root
    assert "\\&#91;" not in page  # Typer's markup escape of a bracket never reaches the page


def test_lens_diagram_reads_the_input_of_block_l() -> None:
    """The diagram places the read-out where lens layer ℓ reads: hidden_states[ℓ], before block ℓ (the convention
    `tests/test_architectures.py` checks on the models themselves)."""
    import xml.etree.ElementTree as ET

    svg = ET.parse(ROOT / "docs" / "assets" / "lens-diagram.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    by_id = {e.get("id"): e for e in svg.iter() if e.get("id")}
    block_0, block_l, readout = by_id["block-0"], by_id["block-l"], by_id["readout"]
    x = float(readout.get("cx"))
    assert float(block_0.get("x")) + float(block_0.get("width")) < x < float(block_l.get("x"))
    assert abs(float(readout.get("cy")) - (float(block_l.get("y")) + float(block_l.get("height")) / 2)) < 1
    label = by_id["readout-label"].text
    assert "hidden_states[ℓ]" in label and "input of block ℓ" in label
    texts = " ".join(t.text or "" for t in svg.iter(f"{ns}text")) + svg.find(f"{ns}desc").text
    assert "embedding output" in texts and "after layer" not in texts
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert "(hidden_states[ℓ]; layer 0 reads the embedding output)" in " ".join(index.split())
