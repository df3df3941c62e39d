"""pytest fixtures for [`LoopbackHub`].

Enable them with `pytest_plugins = ["lens_hub.testing.pytest_plugin"]` in a root `conftest.py`, or with
`-p lens_hub.testing.pytest_plugin` on the command line.

Fixtures:
    loopback_hub: A running [`LoopbackHub`] with `huggingface_hub` pointed at it (see [`hub_environment`]), a fresh
        `HF_HOME` under the test's temporary directory, and `HF_TOKEN` set to [`LOOPBACK_TOKEN`], which the hub
        accepts as user [`LOOPBACK_USER`]. The server is shared by the whole session; every test starts with no
        repositories, an empty request log and no pending faults.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .env import hub_environment
from .hub import LOOPBACK_TOKEN, LOOPBACK_USER, LoopbackHub

__all__ = ["LOOPBACK_TOKEN", "LOOPBACK_USER", "loopback_hub"]


@pytest.fixture(scope="session")
def _loopback_hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackHub]:
    # One server for the session: tests reset its state rather than paying for a new server and connection pool.
    hub = LoopbackHub(
        tmp_path_factory.mktemp("loopback-hub"),
        tokens={LOOPBACK_TOKEN: LOOPBACK_USER},
        default_user=LOOPBACK_USER,
    )
    with hub:
        yield hub


@pytest.fixture
def loopback_hub(_loopback_hub_server: LoopbackHub, tmp_path: Path) -> Iterator[LoopbackHub]:
    """A running [`LoopbackHub`] with `huggingface_hub` pointed at it; state is reset for each test."""
    hub = _loopback_hub_server
    hub.reset()
    with hub_environment(hub, tmp_path / "hf_home", token=LOOPBACK_TOKEN):
        yield hub
    hub.clear_faults()
