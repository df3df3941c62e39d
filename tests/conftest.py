import os
import sys
from pathlib import Path

# No test may reach the real Hub: offline unless a test opts into the loopback Hub (its fixture lifts this), and
# never Xet, telemetry or update checks. Set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

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


def run_hidden(model: torch.nn.Module, seed: int = 0, batch: int = 2, seq: int = 7):
    """A forward pass with hidden states on random tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    with torch.no_grad():
        return model(ids, output_hidden_states=True)
