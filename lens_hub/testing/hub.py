"""[`LoopbackHub`]: a local Hugging Face Hub for tests, served on 127.0.0.1."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .faults import FaultInjector, FaultKind, FaultRule, corrupt_bytes
from .server import (
    DEFAULT_LFS_SUFFIXES,
    DEFAULT_LFS_THRESHOLD,
    HubApp,
    LoopbackHTTPServer,
    RequestLog,
    RequestRecord,
)
from .storage import (
    DEFAULT_BRANCH,
    Deletion,
    EntryNotFound,
    FileAddition,
    FileEntry,
    RepoStore,
    RepoType,
    RevisionNotFound,
)

LOOPBACK_TOKEN = "hf_loopback_write_token"
"""Token that the `loopback_hub` pytest fixture's hub accepts (and exports as `HF_TOKEN`)."""

LOOPBACK_USER = "loopback"
"""User that [`LOOPBACK_TOKEN`] identifies, and default author of commits."""


class LoopbackHub:
    """A small Hugging Face Hub on 127.0.0.1, for driving the real `huggingface_hub` client in tests.

    It speaks the part of the Hub API that `huggingface_hub` uses to create repos, commit regular and LFS files, tag,
    list refs/commits/trees and download files, and stores repositories on disk. Point the client at it with
    [`hub_environment`] (or `HfApi(endpoint=hub.endpoint)`); Xet storage must be disabled (`HF_HUB_DISABLE_XET=1`).

    Args:
        root (`str` or `Path`, *optional*):
            Directory for the repositories. Defaults to a temporary directory, deleted on [`stop`].
        tokens (`dict[str, str]`, *optional*):
            Valid tokens mapped to user names. When set, writes need `Authorization: Bearer <token>` of a user allowed
            in the namespace (401 / 403 otherwise), and private repos are hidden from other users. When `None`,
            everything is open.
        orgs (`dict[str, Sequence[str]]`, *optional*):
            User name -> organizations the user may write to.
        default_user (`str`, *optional*, defaults to `"loopback"`):
            Author of commits, and namespace of repos created without one, when no token names a user.
        port (`int`, *optional*, defaults to `0`):
            Port to listen on; `0` picks a free one.
        lfs_threshold (`int`, *optional*, defaults to 10 MiB):
            Files at least this big are uploaded with LFS. Smaller ones too if binary or with an LFS-like suffix.
        lfs_suffixes (`tuple[str, ...]`, *optional*):
            File name endings always uploaded with LFS (`.safetensors`, `.bin`, `.pt`, `.png`, ...).

    Example:
        ```py
        >>> from huggingface_hub import HfApi
        >>> from lens_hub.testing import LoopbackHub
        >>> with LoopbackHub() as hub:
        ...     api = HfApi(endpoint=hub.endpoint)
        ...     api.create_repo("me/lens")
        ...     api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="me/lens")
        ...     assert hub.read_file("me/lens", "config.json") == b"{}"
        ```
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        tokens: Mapping[str, str] | None = None,
        orgs: Mapping[str, Sequence[str]] | None = None,
        default_user: str = LOOPBACK_USER,
        port: int = 0,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        lfs_suffixes: tuple[str, ...] = DEFAULT_LFS_SUFFIXES,
    ) -> None:
        self._owns_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="loopback-hub-"))
        self.store = RepoStore(self.root)
        self.app = HubApp(
            self.store,
            tokens=tokens,
            orgs=orgs,
            default_user=default_user,
            lfs_threshold=lfs_threshold,
            lfs_suffixes=lfs_suffixes,
        )
        self._port = port
        self._log = RequestLog()
        self._faults = FaultInjector()
        self._server: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> LoopbackHub:
        """Bind the port and serve in a background thread. Returns `self`."""
        if self._server is not None:
            return self
        server = LoopbackHTTPServer(("127.0.0.1", self._port), self.app, self._log, self._faults)
        self.app.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        self._server = server
        # A short poll interval keeps stop() fast (shutdown waits for the next poll).
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="loopback-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections, and delete `root` if it was a temporary directory."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:54321` (to use as `HF_ENDPOINT`)."""
        if self._server is None:
            raise RuntimeError("LoopbackHub is not started: call start() or use it as a context manager")
        return self.app.endpoint

    @property
    def tokens(self) -> dict[str, str] | None:
        """Valid tokens -> user names (`None`: authentication is off)."""
        return self.app.tokens

    def reset(self) -> None:
        """Delete every repository, clear the request log and the pending faults (server keeps running)."""
        self.store.reset()
        self.app.forget_pending_uploads()
        self.clear_log()
        self.clear_faults()

    # ------------------------------------------------------------------------------------------------ log & faults

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request received since the last [`clear_log`], oldest first."""
        return self._log.snapshot()

    def clear_log(self) -> None:
        """Forget the recorded requests."""
        self._log.clear()

    def inject(
        self,
        method: str | None = None,
        path_regex: str = "",
        kind: FaultKind = "status",
        *,
        status: int = 500,
        times: int = 1,
        seconds: float = 1.0,
        keep: float = 0.5,
        headers: Mapping[str, str | None] | None = None,
        fields: Mapping[str, object] | None = None,
        body: bytes = b"",
    ) -> FaultRule:
        """Make the next `times` matching requests go wrong.

        Args:
            method (`str`, *optional*): HTTP method to match; `None` matches any.
            path_regex (`str`, *optional*): Regex searched in the URL path (still URL-quoted, no query string).
            kind (`str`, *optional*, defaults to `"status"`):
                - `"status"`: answer `status` (with an `X-Error-Message`) instead of handling the request;
                - `"truncate"`: send the full `Content-Length` but only a `keep` fraction of the body, then close;
                - `"corrupt"`: flip bytes of the body, length unchanged;
                - `"delay"`: sleep `seconds`, then answer normally;
                - `"headers"`: answer normally, with `headers` set (a lying ETag, X-Repo-Commit or X-Linked-Size;
                  `None` removes one: without `Content-Length` the body runs until the connection closes);
                - `"json"`: answer normally, with top-level `fields` of a JSON object body replaced;
                - `"body"`: send `body` instead of the answer's (with its true `Content-Length`);
                - `"drip"`: send the body one byte every `seconds`.
                The body kinds skip requests without a response body (HEAD).
            status (`int`, *optional*, defaults to `500`): Status code for `"status"` faults.
            times (`int`, *optional*, defaults to `1`): Number of requests the rule fires on before it disappears.
            seconds (`float`, *optional*, defaults to `1.0`): Sleep for `"delay"` faults.
            keep (`float`, *optional*, defaults to `0.5`): Fraction of the body that `"truncate"` sends.

        Returns:
            [`FaultRule`]: The rule; its `times` attribute counts the firings left.
        """
        return self._faults.add(
            kind=kind,
            method=method,
            path_regex=path_regex,
            times=times,
            status=status,
            seconds=seconds,
            keep=keep,
            headers=dict(headers or {}),
            fields=dict(fields or {}),
            body=body,
        )

    def clear_faults(self) -> None:
        """Remove every pending fault rule."""
        self._faults.clear()

    @property
    def faults(self) -> list[FaultRule]:
        """Fault rules that still have firings left."""
        return self._faults.pending

    # ------------------------------------------------------------------------------------------------ direct state

    def create_repo(
        self,
        repo_id: str,
        *,
        repo_type: RepoType = "model",
        private: bool = False,
        exist_ok: bool = False,
        sdk: str | None = None,
    ) -> str:
        """Create a repository without going through HTTP; returns its URL (only the path before [`start`]).

        Raises:
            [`~lens_hub.testing.storage.Conflict`]: If it exists and `exist_ok` is `False`.
        """
        with self.store.lock:
            if not (exist_ok and self.store.exists(repo_type, repo_id)):
                self.store.create_repo(repo_type, repo_id, private=private, author=self.app.default_user, sdk=sdk)
        return self.app.repo_url(repo_type, repo_id)

    def delete_repo(self, repo_id: str, *, repo_type: RepoType = "model") -> None:
        """Delete a repository."""
        self.store.delete_repo(repo_type, repo_id)

    def commit_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        repo_type: RepoType = "model",
        branch: str = DEFAULT_BRANCH,
        message: str = "Commit from LoopbackHub.commit_files",
        delete: Iterable[str] = (),
        lfs: bool | Iterable[str] | None = None,
        create_repo: bool = True,
    ) -> str:
        """Commit files directly (no HTTP) and return the new commit id.

        Args:
            repo_id (`str`): `namespace/name`.
            files (`dict[str, bytes]`): Path in repo -> content.
            repo_type (`str`, *optional*): `"model"`, `"dataset"` or `"space"`.
            branch (`str`, *optional*): Branch to commit to (must exist).
            message (`str`, *optional*): Commit title.
            delete (`Iterable[str]`, *optional*): Paths to delete; end one with `/` to delete a folder.
            lfs (`bool` or `Iterable[str]`, *optional*): Which files are stored as LFS: all (`True`), none
                (`False`), the listed paths, or (`None`) the same rule the server applies to uploads.
            create_repo (`bool`, *optional*, defaults to `True`): Create the repository if missing.
        """
        if create_repo:
            self.create_repo(repo_id, repo_type=repo_type, exist_ok=True)
        lfs_paths = None if lfs is None or isinstance(lfs, bool) else set(lfs)

        def is_lfs(path: str, data: bytes) -> bool:
            if isinstance(lfs, bool):
                return lfs
            if lfs_paths is not None:
                return path in lfs_paths
            return self.app.upload_mode(path, len(data), data[:512]) == "lfs"

        additions = [FileAddition(path=p, lfs=is_lfs(p, d), content=d) for p, d in files.items()]
        deletions = [Deletion(path=p.rstrip("/"), folder=p.endswith("/")) for p in delete]
        repo = self.store.get(repo_type, repo_id)
        commit = self.store.commit(
            repo, branch, additions=additions, deletions=deletions, title=message, author=self.app.default_user
        )
        return commit.id

    def create_tag(
        self, repo_id: str, tag: str, *, revision: str = DEFAULT_BRANCH, repo_type: RepoType = "model"
    ) -> str:
        """Tag `revision` and return the tagged commit id."""
        return self.store.create_tag(self.store.get(repo_type, repo_id), tag, revision)

    def create_branch(
        self, repo_id: str, branch: str, *, revision: str = DEFAULT_BRANCH, repo_type: RepoType = "model"
    ) -> str:
        """Create `branch` at `revision` and return its head commit id."""
        return self.store.create_branch(self.store.get(repo_type, repo_id), branch, revision)

    def head(self, repo_id: str, branch: str = DEFAULT_BRANCH, *, repo_type: RepoType = "model") -> str:
        """Commit id at the head of `branch`."""
        repo = self.store.get(repo_type, repo_id)
        with self.store.lock:
            if branch not in repo.branches:
                raise RevisionNotFound(f"Branch {branch!r} not found in {repo_id}")
            return repo.branches[branch]

    def branches(self, repo_id: str, *, repo_type: RepoType = "model") -> dict[str, str]:
        """Branch name -> head commit id."""
        with self.store.lock:
            return dict(self.store.get(repo_type, repo_id).branches)

    def tags(self, repo_id: str, *, repo_type: RepoType = "model") -> dict[str, str]:
        """Tag name -> commit id."""
        with self.store.lock:
            return dict(self.store.get(repo_type, repo_id).tags)

    def commit_ids(self, repo_id: str, revision: str = DEFAULT_BRANCH, *, repo_type: RepoType = "model") -> list[str]:
        """Commit ids reachable from `revision`, newest first (the initial empty commit last)."""
        repo = self.store.get(repo_type, repo_id)
        with self.store.lock:
            return [c.id for c in repo.history(revision)]

    def list_files(self, repo_id: str, revision: str = DEFAULT_BRANCH, *, repo_type: RepoType = "model") -> list[str]:
        """Sorted paths of the files at `revision`."""
        return sorted(self._entries(repo_id, revision, repo_type))

    def file_entry(
        self, repo_id: str, path: str, revision: str = DEFAULT_BRANCH, *, repo_type: RepoType = "model"
    ) -> FileEntry:
        """Stored metadata (size, sha256, git blob id, LFS or not) of one file.

        Raises:
            [`~lens_hub.testing.storage.EntryNotFound`]: If the file does not exist at `revision`.
        """
        entry = self._entries(repo_id, revision, repo_type).get(path)
        if entry is None:
            raise EntryNotFound(f"{path!r} not found in {repo_id} at {revision!r}")
        return entry

    def read_file(
        self, repo_id: str, path: str, revision: str = DEFAULT_BRANCH, *, repo_type: RepoType = "model"
    ) -> bytes:
        """Bytes the server would serve for `path` at `revision` (including any corruption)."""
        return self.store.read_object(self.file_entry(repo_id, path, revision, repo_type=repo_type).sha256)

    def corrupt_file(
        self,
        repo_id: str,
        path: str,
        revision: str = DEFAULT_BRANCH,
        *,
        repo_type: RepoType = "model",
        data: bytes | None = None,
    ) -> None:
        """Change the stored bytes of a file, leaving its metadata (sha256, ETag, size) as it was.

        Downloads then serve bytes that do not match the advertised checksum, to test verification downstream.
        Content is stored by hash: every file with the same content, in any repo, is corrupted with it.

        Args:
            data (`bytes`, *optional*): New bytes. Defaults to the original with a few bytes flipped (same length,
                so that the client's size check passes).
        """
        entry = self.file_entry(repo_id, path, revision, repo_type=repo_type)
        original = self.store.read_object(entry.sha256)
        self.store.overwrite_object(entry.sha256, corrupt_bytes(original) if data is None else data)

    def _entries(self, repo_id: str, revision: str, repo_type: RepoType) -> dict[str, FileEntry]:
        repo = self.store.get(repo_type, repo_id)
        with self.store.lock:
            return dict(repo.resolve(revision).files)
