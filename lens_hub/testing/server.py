"""HTTP side of [`LoopbackHub`]: routing and answering the Hub API calls `huggingface_hub` makes.

Only the subset of the Hugging Face Hub API that the client uses for repos, commits (regular and LFS files), refs
and downloads is implemented. Answers follow the Hub closely where the client depends on it: the `X-Error-Code`
header that picks the exception class, the `X-Repo-Commit` / `X-Linked-Etag` / `X-Linked-Size` headers of file
downloads, the `url` in a 409 answer to a repo creation, and so on.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .faults import FaultInjector, corrupt_bytes
from .storage import (
    DEFAULT_BRANCH,
    REPO_TYPES,
    BadRequest,
    Commit,
    Deletion,
    EntryNotFound,
    FileAddition,
    FileEntry,
    Repo,
    RepoNotFound,
    RepoStore,
    StoreError,
    tree_oid,
    validate_path,
)

logger = logging.getLogger(__name__)

# Default rules for the preupload answer: what the Hub's default .gitattributes sends to LFS, plus big files.
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024
DEFAULT_LFS_SUFFIXES: tuple[str, ...] = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".gguf",
    ".onnx",
    ".npy",
    ".npz",
    ".pkl",
    ".png",
    ".jpg",
    ".jpeg",
    ".zip",
    ".tar",
    ".gz",
    ".parquet",
    ".arrow",
)

_PLURAL_TO_TYPE = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class Unauthorized(StoreError):
    """No valid token where one is required."""

    status = 401


class Forbidden(StoreError):
    """A valid token, but for a user who may not write to this namespace."""

    status = 403


class NotImplementedRoute(StoreError):
    """A route or feature of the Hub that the loopback server does not implement."""

    status = 404
    error_code = "NotImplemented"


class MethodNotAllowed(StoreError):
    status = 405


class RangeNotSatisfiable(StoreError):
    status = 416


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it.

    Attributes:
        method (`str`): HTTP method.
        path (`str`): URL path, still URL-quoted.
        query (`str`): Raw query string (`""` if none).
        status (`int`): Status code answered.
        authorized (`bool`): Whether the request carried an `Authorization` header.
        faults (`tuple[str, ...]`): Kinds of the injected faults that fired on it.
        range (`str`, *optional*): The `Range` header, if any (resumed downloads, safetensors header reads).
        time (`float`): `time.time()` when the request arrived.
        user_agent (`str`, *optional*): The `User-Agent` header, if any (which library asked, and its version).
    """

    method: str
    path: str
    query: str
    status: int
    authorized: bool
    faults: tuple[str, ...] = ()
    range: str | None = None
    time: float = 0.0
    user_agent: str | None = None


@dataclass
class Request:
    """A parsed request, as routes see it."""

    method: str
    raw_path: str
    segments: list[str]  # split on "/" before unquoting: a quoted "refs%2Fpr%2F1" stays one segment
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    token: str | None

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as e:
            raise BadRequest(f"Request body is not valid JSON: {e}") from e


@dataclass
class Response:
    """What a route answers. `body` is sent as is; `Content-Length` is always set from it."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def error(
        cls,
        status: int,
        message: str,
        *,
        error_code: str | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        # Header values must be latin-1 and single-line.
        safe = message.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace").decode("latin-1")
        all_headers = {"X-Error-Message": safe, **(headers or {})}
        if error_code is not None:
            all_headers["X-Error-Code"] = error_code
        return cls.json({"error": message, **(extra or {})}, status=status, headers=all_headers)


class HubApp:
    """Routes requests to the [`RepoStore`] and builds Hub-shaped answers.

    Args:
        store (`RepoStore`): Where repositories live.
        tokens (`dict[str, str]`, *optional*): Valid tokens -> user name. `None` opens everything.
        orgs (`dict[str, Sequence[str]]`, *optional*): User name -> organizations they can write to.
        default_user (`str`): Author of commits (and namespace of new repos) when no token identifies a user.
        lfs_threshold (`int`): Files at least this big are uploaded with LFS.
        lfs_suffixes (`tuple[str, ...]`): File name endings uploaded with LFS whatever their size.
    """

    def __init__(
        self,
        store: RepoStore,
        *,
        tokens: Mapping[str, str] | None = None,
        orgs: Mapping[str, Sequence[str]] | None = None,
        default_user: str = "loopback",
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        lfs_suffixes: tuple[str, ...] = DEFAULT_LFS_SUFFIXES,
    ) -> None:
        self.store = store
        self.tokens = dict(tokens) if tokens is not None else None
        self.orgs = {user: list(names) for user, names in (orgs or {}).items()}
        self.default_user = default_user
        self.lfs_threshold = lfs_threshold
        self.lfs_suffixes = lfs_suffixes
        self.endpoint = ""  # set once the server is bound
        self._pending_lfs: dict[str, int] = {}  # oid -> size announced in a batch call, awaiting its PUT
        self._pending_lock = threading.Lock()

    def forget_pending_uploads(self) -> None:
        """Drop the LFS uploads announced by batch calls but not received yet."""
        with self._pending_lock:
            self._pending_lfs.clear()

    # ------------------------------------------------------------------------------------------------ auth

    def user_for(self, req: Request) -> str | None:
        """User the request's token identifies (`default_user` for any token when auth is off).

        Raises:
            [`Unauthorized`]: If a token is sent but is not valid.
        """
        if req.token is None:
            return None
        if self.tokens is None:
            return self.default_user
        user = self.tokens.get(req.token)
        if user is None:
            # Same message as the Hub: the client recognizes it and does not report a missing repo.
            raise Unauthorized("Invalid credentials in Authorization header")
        return user

    def _writable_namespaces(self, user: str) -> set[str]:
        return {user, *self.orgs.get(user, [])}

    def _writer(self, req: Request, namespace: str) -> str:
        """User allowed to write to `namespace`, or raise 401/403."""
        user = self.user_for(req)
        if self.tokens is None:
            return user or self.default_user
        if user is None:
            raise Unauthorized("You must be authenticated (Authorization: Bearer <token>) to write to the Hub")
        if namespace not in self._writable_namespaces(user):
            raise Forbidden(f"You don't have the rights to write to the namespace {namespace!r} (user {user!r})")
        return user

    def _readable(self, req: Request, repo_type: str, repo_id: str) -> Repo:
        repo = self.store.get(repo_type, repo_id)
        if repo.private and self.tokens is not None:
            user = self.user_for(req)
            if user is None or repo.namespace not in self._writable_namespaces(user):
                # The Hub hides private repos: same answer as a missing one.
                raise RepoNotFound(f"Repository not found: {repo_type} {repo_id}")
        return repo

    def _writable(self, req: Request, repo_type: str, repo_id: str) -> tuple[Repo, str]:
        if self.tokens is not None and req.token is None:
            raise Unauthorized("You must be authenticated (Authorization: Bearer <token>) to write to the Hub")
        repo = self._readable(req, repo_type, repo_id)
        return repo, self._writer(req, repo.namespace)

    # ------------------------------------------------------------------------------------------------ routing

    def handle(self, req: Request) -> Response:
        """Answer one request (raises [`StoreError`] subclasses for errors)."""
        segs = req.segments
        if segs and segs[0] == "api":
            return self._route_api(req, segs[1:])
        if segs and segs[0] == "__lfs__":
            return self._route_lfs_transfer(req, segs[1:])
        return self._route_repo_urls(req, segs)

    def _route_api(self, req: Request, segs: list[str]) -> Response:
        m = req.method
        if segs == ["whoami-v2"]:
            return self._only(m, "GET") or self.whoami(req)
        if segs == ["repos", "create"]:
            return self._only(m, "POST") or self.create_repo(req)
        if segs == ["repos", "delete"]:
            return self._only(m, "DELETE") or self.delete_repo(req)
        if segs == ["validate-yaml"]:
            return self._only(m, "POST") or Response.json({"errors": [], "warnings": []})
        if len(segs) >= 3 and segs[0] in _PLURAL_TO_TYPE:
            repo_type = _PLURAL_TO_TYPE[segs[0]]
            repo_id = f"{unquote(segs[1])}/{unquote(segs[2])}"
            rest = segs[3:]
            action = rest[0] if rest else None
            args = rest[1:]
            if action is None:
                return self._only(m, "GET") or self.repo_info(req, repo_type, repo_id, DEFAULT_BRANCH)
            if action == "revision" and len(args) == 1:
                return self._only(m, "GET") or self.repo_info(req, repo_type, repo_id, unquote(args[0]))
            if action == "tree" and args:
                path = "/".join(unquote(a) for a in args[1:])
                return self._only(m, "GET") or self.tree(req, repo_type, repo_id, unquote(args[0]), path)
            if action == "paths-info" and len(args) == 1:
                return self._only(m, "POST") or self.paths_info(req, repo_type, repo_id, unquote(args[0]))
            if action == "refs" and not args:
                return self._only(m, "GET") or self.refs(req, repo_type, repo_id)
            if action == "commits" and len(args) == 1:
                return self._only(m, "GET") or self.commits(req, repo_type, repo_id, unquote(args[0]))
            if action == "preupload" and len(args) == 1:
                return self._only(m, "POST") or self.preupload(req, repo_type, repo_id, unquote(args[0]))
            if action == "commit" and len(args) == 1:
                return self._only(m, "POST") or self.commit(req, repo_type, repo_id, unquote(args[0]))
            if action == "tag" and len(args) == 1:
                if m == "POST":
                    return self.create_tag(req, repo_type, repo_id, unquote(args[0]))
                return self._only(m, "DELETE") or self.delete_tag(req, repo_type, repo_id, unquote(args[0]))
            if action == "branch" and len(args) == 1:
                if m == "POST":
                    return self.create_branch(req, repo_type, repo_id, unquote(args[0]))
                return self._only(m, "DELETE") or self.delete_branch(req, repo_type, repo_id, unquote(args[0]))
        raise NotImplementedRoute(f"LoopbackHub does not implement {m} {req.raw_path}")

    def _route_repo_urls(self, req: Request, segs: list[str]) -> Response:
        repo_type = "model"
        if segs and segs[0] in ("datasets", "spaces"):
            repo_type = _PLURAL_TO_TYPE[segs[0]]
            segs = segs[1:]
        if len(segs) >= 4 and segs[2] == "resolve":
            repo_id = f"{unquote(segs[0])}/{unquote(segs[1])}"
            path = "/".join(unquote(s) for s in segs[4:])
            return self._only(req.method, "GET", "HEAD") or self.resolve(
                req, repo_type, repo_id, unquote(segs[3]), path
            )
        if len(segs) == 6 and segs[1].endswith(".git") and segs[2:] == ["info", "lfs", "objects", "batch"]:
            repo_id = f"{unquote(segs[0])}/{unquote(segs[1])[: -len('.git')]}"
            return self._only(req.method, "POST") or self.lfs_batch(req, repo_type, repo_id)
        raise NotImplementedRoute(f"LoopbackHub does not implement {req.method} {req.raw_path}")

    def _route_lfs_transfer(self, req: Request, segs: list[str]) -> Response:
        if len(segs) == 2 and segs[0] == "upload":
            return self._only(req.method, "PUT") or self.lfs_put(req, segs[1])
        if len(segs) == 2 and segs[0] == "verify":
            return self._only(req.method, "POST") or self.lfs_verify(req, segs[1])
        raise NotImplementedRoute(f"LoopbackHub does not implement {req.method} {req.raw_path}")

    @staticmethod
    def _only(method: str, *allowed: str) -> Response | None:
        if method not in allowed:
            raise MethodNotAllowed(f"Method {method} not allowed here (expected {' or '.join(allowed)})")
        return None

    # ------------------------------------------------------------------------------------------------ account

    def whoami(self, req: Request) -> Response:
        user = None
        with contextlib.suppress(Unauthorized):  # a bad token is answered like no token
            user = self.user_for(req)
        if user is None:
            raise Unauthorized("Invalid credentials in Authorization header")
        orgs = self.orgs.get(user, [])
        return Response.json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "email": None,
                "emailVerified": False,
                "isPro": False,
                "canPay": False,
                "avatarUrl": "",
                "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": "write"} for org in orgs],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "loopback", "role": "write", "createdAt": "1970-01-01T00:00:00Z"},
                },
            }
        )

    # ------------------------------------------------------------------------------------------------ repos

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"

    def _repo_ref_from_body(self, req: Request) -> tuple[str, str, dict]:
        payload = req.json()
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            raise BadRequest("Expected a JSON object with a string 'name'")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise BadRequest(f"Invalid repo type {repo_type!r}: expected one of {', '.join(REPO_TYPES)}")
        namespace = payload.get("organization")
        if not namespace:
            namespace = self.user_for(req)
            if namespace is None:
                if self.tokens is not None:
                    raise Unauthorized("You must be authenticated to create a repo without an organization")
                namespace = self.default_user
        return repo_type, f"{namespace}/{payload['name']}", payload

    def create_repo(self, req: Request) -> Response:
        if self.tokens is not None and req.token is None:
            raise Unauthorized("You must be authenticated (Authorization: Bearer <token>) to create a repo")
        repo_type, repo_id, payload = self._repo_ref_from_body(req)
        self._writer(req, repo_id.split("/")[0])
        url = self.repo_url(repo_type, repo_id)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with self.store.lock:
            if self.store.exists(repo_type, repo_id):
                # `create_repo(exist_ok=True)` reads `url` from this 409 answer.
                return Response.error(409, "You already created this repo", extra={"url": url})
            self.store.create_repo(
                repo_type,  # type: ignore[arg-type]
                repo_id,
                private=private,
                author=self.user_for(req) or self.default_user,
                sdk=payload.get("sdk"),
            )
        return Response.json({"url": url, "name": repo_id, "id": repo_id})

    def delete_repo(self, req: Request) -> Response:
        if self.tokens is not None and req.token is None:
            raise Unauthorized("You must be authenticated (Authorization: Bearer <token>) to delete a repo")
        repo_type, repo_id, _ = self._repo_ref_from_body(req)
        self._writable(req, repo_type, repo_id)
        self.store.delete_repo(repo_type, repo_id)
        return Response.json({})

    def repo_info(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._readable(req, repo_type, repo_id)
        with self.store.lock:
            commit = repo.resolve(revision)
            head = repo.commits[repo.branches[DEFAULT_BRANCH]]
        siblings = []
        for entry in sorted(commit.files.values(), key=lambda e: e.path):
            sibling: dict[str, Any] = {"rfilename": entry.path, "size": entry.size, "blobId": entry.blob_id}
            if entry.lfs:
                sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo.namespace,
            "sha": commit.id,
            "lastModified": head.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.files.values()),
        }
        if repo_type == "space":
            info["sdk"] = repo.sdk
        return Response.json(info)

    # ------------------------------------------------------------------------------------------------ trees

    def _file_json(self, repo: Repo, commit: Commit, entry: FileEntry, expand: bool) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": entry.path}
        if entry.lfs:
            # Never an `xetHash`: the client would switch to the Xet protocol, which cannot be served here.
            data["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        if expand:
            data["lastCommit"] = self._last_commit(repo, commit, lambda c: c.files.get(entry.path))
        return data

    def _folder_json(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "directory", "oid": tree_oid(commit.files, path), "size": 0, "path": path}
        if expand:
            data["lastCommit"] = self._last_commit(repo, commit, lambda c: tree_oid(c.files, path))
        return data

    @staticmethod
    def _last_commit(repo: Repo, commit: Commit, key: Callable[[Commit], object]) -> dict[str, str]:
        # Oldest commit of the unbroken run, going back from `commit`, in which the entry is unchanged.
        current = key(commit)
        last = commit
        for older in repo.history(commit.id):
            if key(older) != current:
                break
            last = older
        return {"id": last.id, "title": last.title, "date": last.date}

    def tree(self, req: Request, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
        repo = self._readable(req, repo_type, repo_id)
        recursive, expand = req.flag("recursive"), req.flag("expand")
        with self.store.lock:
            commit = repo.resolve(revision)
            files = commit.files
            base = path.strip("/")
            if base in files:
                raise EntryNotFound(f"{base!r} is a file, not a folder")
            prefix = f"{base}/" if base else ""
            under = [p for p in files if p.startswith(prefix)]
            if base and not under:
                raise EntryNotFound(f"Folder {base!r} not found at revision {revision!r}")
            folders: set[str] = set()
            listed: list[str] = []
            for p in under:
                parts = p[len(prefix) :].split("/")
                if recursive:
                    folders.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
                    listed.append(p)
                elif len(parts) == 1:
                    listed.append(p)
                else:
                    folders.add(prefix + parts[0])
            out = [self._folder_json(repo, commit, f, expand) for f in sorted(folders)]
            out += [self._file_json(repo, commit, files[p], expand) for p in sorted(listed)]
        return Response.json(out)

    def paths_info(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._readable(req, repo_type, repo_id)
        content_type = req.headers.get("Content-Type", "")
        if "json" in content_type:
            payload = req.json()
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(req.body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = (form.get("expand", ["false"])[-1]).lower() in ("1", "true")
        if isinstance(paths, str):
            paths = [paths]
        out = []
        with self.store.lock:
            commit = repo.resolve(revision)
            for path in paths:
                path = path.strip("/")
                if path in commit.files:
                    out.append(self._file_json(repo, commit, commit.files[path], expand))
                elif path == "" or any(p.startswith(path + "/") for p in commit.files):
                    out.append(self._folder_json(repo, commit, path, expand))
                # Unknown paths are skipped, as on the Hub.
        return Response.json(out)

    # ------------------------------------------------------------------------------------------------ refs

    def refs(self, req: Request, repo_type: str, repo_id: str) -> Response:
        repo = self._readable(req, repo_type, repo_id)
        with self.store.lock:
            data: dict[str, Any] = {
                "branches": [
                    {"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in sorted(repo.branches.items())
                ],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in sorted(repo.tags.items())],
                "converts": [],
            }
        if req.flag("include_prs"):
            data["pullRequests"] = []
        return Response.json(data)

    def commits(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._readable(req, repo_type, repo_id)
        with self.store.lock:
            history = list(repo.history(revision))
        return Response.json(
            [
                {
                    "id": c.id,
                    "title": c.title,
                    "message": c.message,
                    "date": c.date,
                    "authors": [{"user": c.author, "avatar": ""}],
                }
                for c in history
            ]
        )

    def create_tag(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo, _ = self._writable(req, repo_type, repo_id)
        payload = req.json()
        if not isinstance(payload, dict) or not isinstance(payload.get("tag"), str):
            raise BadRequest("Expected a JSON object with a string 'tag'")
        self.store.create_tag(repo, payload["tag"], revision, payload.get("message"))
        return Response.json({})

    def delete_tag(self, req: Request, repo_type: str, repo_id: str, tag: str) -> Response:
        repo, _ = self._writable(req, repo_type, repo_id)
        self.store.delete_tag(repo, tag)
        return Response.json({})

    def create_branch(self, req: Request, repo_type: str, repo_id: str, branch: str) -> Response:
        repo, _ = self._writable(req, repo_type, repo_id)
        payload = req.json() or {}
        self.store.create_branch(repo, branch, payload.get("startingPoint"))
        return Response.json({})

    def delete_branch(self, req: Request, repo_type: str, repo_id: str, branch: str) -> Response:
        repo, _ = self._writable(req, repo_type, repo_id)
        self.store.delete_branch(repo, branch)
        return Response.json({})

    # ------------------------------------------------------------------------------------------------ commits

    def upload_mode(self, path: str, size: int, sample: bytes) -> str:
        """`"lfs"` or `"regular"` for a file about to be committed (the Hub decides with .gitattributes)."""
        if size >= self.lfs_threshold or path.lower().endswith(self.lfs_suffixes) or b"\0" in sample:
            return "lfs"
        return "regular"

    @staticmethod
    def _refuse_pull_requests(req: Request) -> None:
        if req.flag("create_pr"):
            raise BadRequest("LoopbackHub does not support pull requests (create_pr=True); commit to a branch")

    def preupload(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo, _ = self._writable(req, repo_type, repo_id)
        self._refuse_pull_requests(req)
        payload = req.json()
        if not isinstance(payload, dict) or not isinstance(payload.get("files"), list):
            raise BadRequest("Expected a JSON object with a 'files' list")
        with self.store.lock:
            commit = repo.resolve(revision)
        out = []
        for item in payload["files"]:
            try:
                path, size = item["path"], int(item["size"])
                sample = base64.b64decode(item.get("sample", ""))
            except (KeyError, TypeError, ValueError) as e:
                raise BadRequest(f"Malformed file entry in preupload payload: {item!r}") from e
            remote = commit.files.get(path)
            out.append(
                {
                    "path": path,
                    "uploadMode": self.upload_mode(path, size, sample),
                    "shouldIgnore": False,
                    # The client skips unchanged files: it compares this to sha256 (LFS) or the git blob id.
                    "oid": (remote.sha256 if remote.lfs else remote.blob_id) if remote else None,
                }
            )
        return Response.json({"files": out})

    def commit(self, req: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo, user = self._writable(req, repo_type, repo_id)
        self._refuse_pull_requests(req)
        header: dict[str, Any] | None = None
        additions: list[FileAddition] = []
        deletions: list[Deletion] = []
        for number, line in enumerate(req.body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError) as e:
                raise BadRequest(f"Commit payload line {number} is not a {{'key', 'value'}} JSON object") from e
            if key == "header":
                header = value
            elif key == "file":
                encoding = value.get("encoding", "utf-8")
                try:
                    content = (
                        base64.b64decode(value["content"], validate=True)
                        if encoding == "base64"
                        else value["content"].encode()
                    )
                except (KeyError, ValueError) as e:
                    raise BadRequest(f"Commit payload line {number}: bad file content ({e})") from e
                path = validate_path(value.get("path", ""))
                additions.append(FileAddition(path=path, lfs=False, content=content))
            elif key == "lfsFile":
                if value.get("algo", "sha256") != "sha256":
                    raise BadRequest(f"Commit payload line {number}: unsupported LFS algo {value.get('algo')!r}")
                additions.append(
                    FileAddition(
                        path=validate_path(value.get("path", "")),
                        lfs=True,
                        sha256=value.get("oid"),
                        size=value.get("size"),
                    )
                )
            elif key in ("deletedFile", "deletedFolder"):
                deletions.append(Deletion(path=value.get("path", ""), folder=key == "deletedFolder"))
            else:
                raise BadRequest(f"Commit payload line {number}: unknown key {key!r}")
        if header is None or not isinstance(header.get("summary"), str) or not header["summary"]:
            raise BadRequest("Commit payload must start with a 'header' line carrying a non-empty 'summary'")
        commit = self.store.commit(
            repo,
            revision,
            additions=additions,
            deletions=deletions,
            title=header["summary"],
            message=header.get("description") or "",
            author=user,
            parent_commit=header.get("parentCommit"),
        )
        return Response.json(
            {
                "success": True,
                "commitOid": commit.id,
                "commitUrl": f"{self.repo_url(repo_type, repo_id)}/commit/{commit.id}",
                "commitMessage": commit.title,
                "hookOutput": "",
                "pullRequestUrl": None,
            }
        )

    # ------------------------------------------------------------------------------------------------ LFS

    def lfs_batch(self, req: Request, repo_type: str, repo_id: str) -> Response:
        self._writable(req, repo_type, repo_id)
        payload = req.json()
        if not isinstance(payload, dict) or not isinstance(payload.get("objects"), list):
            raise BadRequest("Expected a git-lfs batch request with an 'objects' list")
        if payload.get("operation") != "upload":
            raise BadRequest(
                f"LoopbackHub only implements the 'upload' LFS operation, not {payload.get('operation')!r}"
            )
        if "basic" not in payload.get("transfers", ["basic"]):
            raise BadRequest("LoopbackHub only implements the 'basic' LFS transfer")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int):
                objects.append({"oid": str(oid), "size": 0, "error": {"code": 422, "message": "Invalid oid or size"}})
                continue
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not self.store.has_object(oid, size):
                with self._pending_lock:
                    self._pending_lfs[oid] = size
                answer["actions"] = {
                    "upload": {"href": f"{self.endpoint}/__lfs__/upload/{oid}", "expires_in": 3600},
                    "verify": {"href": f"{self.endpoint}/__lfs__/verify/{oid}", "expires_in": 3600},
                }
            objects.append(answer)
        return Response.json(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def lfs_put(self, req: Request, oid: str) -> Response:
        # Like a pre-signed storage URL: no Authorization header is sent, the batch call was the access check.
        with self._pending_lock:
            expected = self._pending_lfs.get(oid)
        if expected is None:
            raise Forbidden(f"No pending LFS upload for oid {oid}: call the LFS batch endpoint first")
        if len(req.body) != expected:
            raise BadRequest(f"LFS upload of {oid}: got {len(req.body)} bytes, batch announced {expected}")
        actual = hashlib.sha256(req.body).hexdigest()
        if actual != oid:
            raise BadRequest(f"LFS upload content does not match its oid: sha256 is {actual}, expected {oid}")
        self.store.put_object(req.body)
        with self._pending_lock:
            self._pending_lfs.pop(oid, None)
        return Response()

    def lfs_verify(self, req: Request, oid: str) -> Response:
        payload = req.json()
        size = payload.get("size") if isinstance(payload, dict) else None
        if not self.store.has_object(oid, size if isinstance(size, int) else None):
            raise BadRequest(f"LFS object {oid} (size {size}) was not uploaded")
        return Response.json({"success": True})

    # ------------------------------------------------------------------------------------------------ download

    def resolve(self, req: Request, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
        repo = self._readable(req, repo_type, repo_id)
        with self.store.lock:
            commit = repo.resolve(revision)
            entry = commit.files.get(path)
        if entry is None:
            # The client caches "this file does not exist at this commit" from X-Repo-Commit.
            raise _EntryNotFoundAt(f"Entry not found: {path!r} at revision {revision!r}", commit.id)
        data = self.store.read_object(entry.sha256)
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "X-Repo-Commit": commit.id,
            "ETag": f'"{entry.sha256 if entry.lfs else entry.blob_id}"',
        }
        if entry.lfs:
            # Names the cached blob after the sha256, as the Hub does for LFS files.
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        range_header = req.headers.get("Range")
        if range_header:
            start, end = _parse_range(range_header, len(data))
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return Response(206, data[start : end + 1], headers)
        return Response(200, data, headers)


class _EntryNotFoundAt(EntryNotFound):
    def __init__(self, message: str, commit_id: str) -> None:
        super().__init__(message)
        self.commit_id = commit_id


def _parse_range(header: str, total: int) -> tuple[int, int]:
    """Inclusive `(start, end)` of a single `bytes=` range. Raises [`RangeNotSatisfiable`] or [`BadRequest`]."""
    match = _RANGE_RE.match(header)
    if not match or (not match.group(1) and not match.group(2)):
        raise BadRequest(f"Unsupported Range header {header!r} (only one 'bytes=start-end' range)")
    first, last = match.group(1), match.group(2)
    if not first:  # suffix range: the last N bytes
        start, end = max(total - int(last), 0), total - 1
    else:
        start = int(first)
        end = min(int(last), total - 1) if last else total - 1
    if start >= total or start > end:
        raise RangeNotSatisfiable(f"Range {header!r} not satisfiable for {total} bytes")
    return start, end


# ---------------------------------------------------------------------------------------------------- HTTP layer


class RequestLog:
    """Thread-safe list of [`RequestRecord`]."""

    def __init__(self) -> None:
        self._records: list[RequestRecord] = []
        self._lock = threading.Lock()

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


class LoopbackHTTPServer(ThreadingHTTPServer):
    """`ThreadingHTTPServer` that knows its app, log and faults, and can cut its open connections on stop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: HubApp, log: RequestLog, faults: FaultInjector) -> None:
        super().__init__(address, _Handler)
        self.app = app
        self.log = log
        self.faults = faults
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, conn: socket.socket, active: bool) -> None:
        with self._connections_lock:
            (self._connections.add if active else self._connections.discard)(conn)

    def close_connections(self) -> None:
        """Shut the kept-alive client connections, so that no handler thread outlives the server."""
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoopbackHTTPServer
    timeout = 60  # idle keep-alive connections are dropped after this many seconds

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("loopback hub: " + format, *args)

    def _read_body(self) -> bytes:
        # Always read the whole body, even when the route ignores it, so the keep-alive connection stays usable.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        started = time.time()
        method = self.command
        split = urlsplit(self.path)
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        authorization = self.headers.get("Authorization")
        token = None
        if authorization and authorization.lower().startswith("bearer "):
            token = authorization[len("bearer ") :].strip() or None
        fired = self.server.faults.take(method, split.path, has_body=method != "HEAD")
        kinds = {f.kind: f for f in fired}
        if "delay" in kinds:
            time.sleep(kinds["delay"].seconds)
        if "status" in kinds:
            response = Response.error(kinds["status"].status, f"Injected fault: HTTP {kinds['status'].status}")
        else:
            request = Request(
                method=method,
                raw_path=split.path,
                segments=split.path.lstrip("/").split("/"),
                query=parse_qs(split.query, keep_blank_values=True),
                headers=self.headers,  # type: ignore[arg-type]
                body=body,
                token=token,
            )
            response = self._answer(request)
        # Logged before answering: a client that got its answer must find its request in the log.
        self.server.log.add(
            RequestRecord(
                method=method,
                path=split.path,
                query=split.query,
                status=response.status,
                authorized=authorization is not None,
                faults=tuple(f.kind for f in fired),
                range=self.headers.get("Range"),
                time=started,
                user_agent=self.headers.get("User-Agent"),
            )
        )
        payload = response.body
        if "json" in kinds:
            try:
                answer = json.loads(payload)
            except ValueError:
                answer = None
            if isinstance(answer, dict):
                payload = json.dumps(answer | kinds["json"].fields).encode()
        if "body" in kinds:
            payload = kinds["body"].body
        if "corrupt" in kinds:
            payload = corrupt_bytes(payload)
        headers = dict(response.headers) | {"Content-Length": str(len(payload))}
        if "headers" in kinds:  # names are case-insensitive: an override replaces the header whatever its case
            override = kinds["headers"].headers  # a None value removes the header
            headers = {k: v for k, v in headers.items() if k.lower() not in {o.lower() for o in override}}
            headers |= {k: v for k, v in override.items() if v is not None}
            if "content-length" not in {k.lower() for k in headers}:
                headers["Connection"] = "close"  # no length: the body ends where the connection does
                self.close_connection = True
        self.send_response(response.status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "truncate" in kinds:
            self.send_header("Connection", "close")
        self.end_headers()
        if method != "HEAD":
            if "truncate" in kinds:
                payload = payload[: int(len(payload) * kinds["truncate"].keep)]
                self.close_connection = True
            if "drip" in kinds:
                for i in range(len(payload)):
                    self.wfile.write(payload[i : i + 1])
                    self.wfile.flush()
                    time.sleep(kinds["drip"].seconds)
            else:
                self.wfile.write(payload)
        self.wfile.flush()

    def _answer(self, request: Request) -> Response:
        try:
            return self.server.app.handle(request)
        except StoreError as e:
            status = e.status
            headers = {}
            if e.error_code == "RepoNotFound" and request.token is None:
                status = 401  # what the Hub answers to anonymous requests for missing (or hidden) repos
            if isinstance(e, _EntryNotFoundAt):
                headers["X-Repo-Commit"] = e.commit_id
            return Response.error(status, str(e), error_code=e.error_code, headers=headers)
        except Exception as e:
            logger.error("LoopbackHub failed on %s %s:\n%s", request.method, request.raw_path, traceback.format_exc())
            return Response.error(500, f"LoopbackHub internal error: {type(e).__name__}: {e}")
