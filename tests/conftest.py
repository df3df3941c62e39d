import sys
from pathlib import Path

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
