"""A local Hugging Face Hub for tests: [`LoopbackHub`] serves the Hub API on 127.0.0.1.

Tests drive the real, unmodified `huggingface_hub` client against it through `HF_ENDPOINT` (see
[`hub_environment`]), with repositories stored on disk, a request log, and injectable faults. With pytest, add
`pytest_plugins = ["lens_hub.testing.pytest_plugin"]` to a root `conftest.py` and use the `loopback_hub` fixture.

This package needs only the standard library (and `huggingface_hub` on the client side).
"""

from .env import hub_environment
from .faults import FaultKind, FaultRule
from .hub import LOOPBACK_TOKEN, LOOPBACK_USER, LoopbackHub
from .server import RequestRecord
from .storage import FileEntry

__all__ = [
    "LOOPBACK_TOKEN",
    "LOOPBACK_USER",
    "FaultKind",
    "FaultRule",
    "FileEntry",
    "LoopbackHub",
    "RequestRecord",
    "hub_environment",
]
