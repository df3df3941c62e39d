import os

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
from helpers import BASE, LENS_REPO, lens_entry, random_lens, upload
from tiny_models import tiny_model

from lens_hub.registry.store import write_entry


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


@pytest.fixture
def model():
    m = tiny_model("llama")
    m.config._name_or_path = BASE
    return m


@pytest.fixture
def published(loopback_hub, tmp_path, model):
    """A trained lens uploaded to the loopback Hub and described by a verified entry in a temporary registry."""
    lens = random_lens(model)
    lens_dir = lens.save(tmp_path / "lens")
    commit = upload(lens_dir, LENS_REPO)
    registry = tmp_path / "registry"
    write_entry(registry, lens_entry(lens_dir, commit))
    return lens, lens_dir, commit, registry
