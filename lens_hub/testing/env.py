"""Point `huggingface_hub` at a [`LoopbackHub`], and put everything back afterwards.

`huggingface_hub` reads its environment variables once, when `huggingface_hub.constants` is imported. Setting the
variables is therefore enough only before that import; afterwards the derived constants must be patched too. This
module does both, so it works whatever the import order.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from .hub import LoopbackHub

_MISSING = object()

# Variables that would otherwise leak the user's real Hub account, cache or offline setting into the tests.
_CLEARED_ENV = ("HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_HUB_CACHE", "HUGGINGFACE_ASSETS_CACHE")


def _env_values(endpoint: str, hf_home: Path, token: str | None) -> dict[str, str | None]:
    return {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        # Xet storage cannot be self-hosted: without this the client uploads/downloads through Xet servers.
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": None,
        "HF_DATASETS_CACHE": str(hf_home / "datasets"),
        "HF_MODULES_CACHE": str(hf_home / "modules"),
        "HF_TOKEN": token,
        **dict.fromkeys(_CLEARED_ENV),
    }


def _constant_values(constants: Any, endpoint: str, hf_home: Path) -> dict[str, Any]:
    """Values of the `huggingface_hub.constants` derived from the variables above (as in 2.4.0)."""
    hub_cache, assets_cache, xet_cache = str(hf_home / "hub"), str(hf_home / "assets"), str(hf_home / "xet")
    token_path = str(hf_home / "token")
    values: dict[str, Any] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(hf_home),
        "default_cache_path": hub_cache,
        "default_assets_cache_path": assets_cache,
        "default_xet_cache_path": xet_cache,
        "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HUGGINGFACE_ASSETS_CACHE": assets_cache,
        "HF_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": assets_cache,
        "HF_XET_CACHE": xet_cache,
        "HF_TOKEN_PATH": token_path,
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(hf_home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(hf_home / ".check_for_skill_update_done"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
    }
    hosts = getattr(constants, "HF_URL_HOSTS", None)
    host = urlsplit(endpoint).hostname
    if isinstance(hosts, frozenset) and host:
        values["HF_URL_HOSTS"] = hosts | {host}
    # Only patch what this version of huggingface_hub defines.
    return {name: value for name, value in values.items() if hasattr(constants, name)}


def _datasets_values(config: Any, endpoint: str, hf_home: Path) -> dict[str, Any]:
    """The `datasets.config` values (as in datasets 5.2) that it derived from the same variables at import time."""
    cache = hf_home / "datasets"
    values: dict[str, Any] = {
        "HF_ENDPOINT": endpoint,
        "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "HF_CACHE_HOME": str(hf_home),
        "HF_DATASETS_CACHE": cache,
        "HF_MODULES_CACHE": hf_home / "modules",
        "DEFAULT_DOWNLOADED_DATASETS_PATH": str(cache / "downloads"),
        "DOWNLOADED_DATASETS_PATH": cache / "downloads",
        "DEFAULT_EXTRACTED_DATASETS_PATH": str(cache / "downloads" / "extracted"),
        "EXTRACTED_DATASETS_PATH": cache / "downloads" / "extracted",
    }
    return {name: value for name, value in values.items() if hasattr(config, name)}


# Modules that copied a constant at import time with `from ..constants import X`.
_COPIED_CONSTANTS: dict[str, tuple[str, ...]] = {
    "huggingface_hub.utils._cache_manager": ("HF_HUB_CACHE",),
    "huggingface_hub.utils._cache_assets": ("HF_ASSETS_CACHE",),
}


def _close_client_session() -> None:
    # Pooled keep-alive connections belong to the previous endpoint (or a stopped server): start afresh.
    http = sys.modules.get("huggingface_hub.utils._http")
    if http is not None:
        http.close_session()
    # fsspec caches HfFileSystem instances (used by `datasets`), each holding the endpoint it was created with.
    hffs = sys.modules.get("huggingface_hub.hf_file_system")
    if hffs is not None:
        hffs.HfFileSystem.clear_instance_cache()


@contextmanager
def hub_environment(hub: LoopbackHub, hf_home: str | Path, *, token: str | None = None) -> Iterator[Path]:
    """Point `huggingface_hub` at `hub`, with its cache and token file under `hf_home`.

    Sets `HF_ENDPOINT`, `HF_HOME` (and the cache and token paths under it), `HF_HUB_DISABLE_XET=1`,
    `HF_HUB_DISABLE_TELEMETRY=1`, `HF_HUB_OFFLINE=0`, `HF_DATASETS_CACHE` under `hf_home`, and `HF_TOKEN` to
    `token` (unset if `None`). If `huggingface_hub` or `datasets` is already imported, the constants they derived
    from these variables are patched as well. Everything is restored on exit.

    Args:
        hub ([`LoopbackHub`]): A started hub.
        hf_home (`str` or `Path`): Directory used as `HF_HOME` (created if missing).
        token (`str`, *optional*): Token the client sends implicitly (via `HF_TOKEN`).

    Yields:
        `Path`: The Hub cache directory (`hf_home/hub`), where `hf_hub_download` stores files.

    Example:
        ```py
        >>> with LoopbackHub() as hub, hub_environment(hub, tmp_path / "hf") as cache:
        ...     hub.commit_files("me/lens", {"config.json": b"{}"})
        ...     path = hf_hub_download("me/lens", "config.json")
        ```
    """
    hf_home = Path(hf_home).absolute()
    hf_home.mkdir(parents=True, exist_ok=True)
    endpoint = hub.endpoint

    saved_env = {name: os.environ.get(name) for name in _env_values(endpoint, hf_home, token)}
    saved_constants: list[tuple[Any, str, Any]] = []

    def patch(module: Any, name: str, value: Any) -> None:
        saved_constants.append((module, name, getattr(module, name, _MISSING)))
        setattr(module, name, value)

    try:
        for name, value in _env_values(endpoint, hf_home, token).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        constants = sys.modules.get("huggingface_hub.constants")
        if constants is not None:
            for name, value in _constant_values(constants, endpoint, hf_home).items():
                patch(constants, name, value)
        datasets_config = sys.modules.get("datasets.config")
        if datasets_config is not None:
            for name, value in _datasets_values(datasets_config, endpoint, hf_home).items():
                patch(datasets_config, name, value)
        for module_name, names in _COPIED_CONSTANTS.items():
            module = sys.modules.get(module_name)
            for name in names:
                if module is not None and hasattr(module, name) and constants is not None:
                    patch(module, name, getattr(constants, name))
        _close_client_session()
        yield hf_home / "hub"
    finally:
        for module, name, value in reversed(saved_constants):
            if value is _MISSING:
                delattr(module, name)
            else:
                setattr(module, name, value)
        for name, old in saved_env.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        _close_client_session()
