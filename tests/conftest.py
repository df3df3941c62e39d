import os
import sys
from pathlib import Path

# No test may reach the real Hub: offline unless a test opts into the loopback Hub (its fixture lifts this), and
# never Xet, telemetry or update checks. Set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# Triton kernels run on the CPU under Triton's interpreter, which must be chosen before Triton is imported. Only an
# explicit kernel="triton" uses it; "auto" stays eager off CUDA (tests/test_kernels.py).
os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import tiny_model


@pytest.fixture
def gpt2_model() -> torch.nn.Module:
    return tiny_model("gpt2")


@pytest.fixture
def llama_model() -> torch.nn.Module:
    return tiny_model("llama")


@pytest.fixture
def own_lens_cache(tmp_path, monkeypatch):
    """A lens-hub cache of the test's own (converted legacy lenses), not the user's ~/.cache/lens_hub."""
    monkeypatch.setenv("LENS_HUB_CACHE", str(tmp_path / "lens_hub_cache"))
    return tmp_path / "lens_hub_cache"


def run_hidden(model: torch.nn.Module, seed: int = 0, batch: int = 2, seq: int = 7):
    """A forward pass with hidden states on random tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    with torch.no_grad():
        return model(ids, output_hidden_states=True)


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


def random_lens(model: torch.nn.Module, seed: int = 0, std: float = 0.05):
    """A tuned lens with small seeded random translators (so it differs from the logit lens)."""
    from lens_hub import TunedLens

    lens = TunedLens.from_model(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return lens
