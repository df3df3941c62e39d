"""On-disk repository store behind [`LoopbackHub`].

The store keeps, for each repository (model, dataset or space), its commits, branches and tags, and for each commit
the full file tree. File contents live in a content-addressed object store keyed by sha256, so the bytes of an LFS
file are stored once whatever the number of commits or repos that reference them.

The state of each repository is one JSON file, rewritten atomically after every change: a commit is therefore all
or nothing, and a store reopened on the same directory finds the repositories it left.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

RepoType = Literal["model", "dataset", "space"]

REPO_TYPES: tuple[RepoType, ...] = ("model", "dataset", "space")
DEFAULT_BRANCH = "main"
LFS_POINTER_TEMPLATE = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"

_COMMIT_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class StoreError(Exception):
    """Base class of the errors raised by [`RepoStore`]; the server turns each into an HTTP answer.

    Attributes:
        status (`int`): HTTP status the server answers with.
        error_code (`str`, *optional*): Value of the `X-Error-Code` header, read by `huggingface_hub` to pick the
            exception class it raises.
    """

    status: int = 400
    error_code: str | None = None


class RepoNotFound(StoreError):
    """The repository does not exist (or is private and the caller may not see it)."""

    status = 404
    error_code = "RepoNotFound"


class RevisionNotFound(StoreError):
    """The branch, tag or commit does not exist in the repository."""

    status = 404
    error_code = "RevisionNotFound"


class EntryNotFound(StoreError):
    """The file or folder does not exist at the requested revision."""

    status = 404
    error_code = "EntryNotFound"


class Conflict(StoreError):
    """The object to create already exists (repository, tag, branch)."""

    status = 409


class PreconditionFailed(StoreError):
    """The branch moved since the `parentCommit` the client based its commit on."""

    status = 412


class BadRequest(StoreError):
    """The request is malformed or asks for something the store does not support."""

    status = 400


def git_blob_id(data: bytes) -> str:
    """Git object id of a blob: sha1 of `b"blob <size>\\0" + data`, as `huggingface_hub` computes it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """Content of the git-lfs pointer file that stands in the git tree for an LFS file."""
    return LFS_POINTER_TEMPLATE.format(oid=sha256, size=size).encode()


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit's tree.

    Attributes:
        path (`str`): Path relative to the repository root, `/`-separated.
        size (`int`): Size of the content in bytes.
        sha256 (`str`): Hex sha256 of the content; the key of the content in the object store.
        blob_id (`str`): Git blob id: of the content for a regular file, of the LFS pointer for an LFS file.
        lfs (`bool`): Whether the file is stored with git-lfs.
    """

    path: str
    size: int
    sha256: str
    blob_id: str
    lfs: bool

    @property
    def pointer_size(self) -> int:
        """Size of the LFS pointer file (only meaningful for LFS files)."""
        return len(lfs_pointer(self.sha256, self.size))


@dataclass
class Commit:
    """A commit: a full snapshot of the tree plus its metadata.

    Attributes:
        id (`str`): 40-hex commit id.
        parent (`str`, *optional*): Id of the parent commit, `None` for the initial commit.
        title (`str`): First line of the message (the `summary` sent by the client).
        message (`str`): The commit description.
        author (`str`): User that made the commit.
        date (`str`): ISO 8601 UTC timestamp.
        files (`dict[str, FileEntry]`): The tree, keyed by path.
    """

    id: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry] = field(default_factory=dict)

    def to_json(self) -> dict:
        data = asdict(self)
        data["files"] = [asdict(entry) for entry in self.files.values()]
        return data

    @classmethod
    def from_json(cls, data: dict) -> Commit:
        files = {entry["path"]: FileEntry(**entry) for entry in data.pop("files")}
        return cls(**data, files=files)


@dataclass
class Repo:
    """State of one repository.

    Attributes:
        repo_type (`str`): `"model"`, `"dataset"` or `"space"`.
        repo_id (`str`): `namespace/name`.
        private (`bool`): Whether reads need a token.
        created_at (`str`): ISO 8601 creation time.
        commits (`dict[str, Commit]`): Every commit, keyed by id.
        branches (`dict[str, str]`): Branch name -> head commit id.
        tags (`dict[str, str]`): Tag name -> commit id.
        tag_messages (`dict[str, str]`): Tag name -> annotation message (if any).
        sdk (`str`, *optional*): Space SDK, for space repos.
    """

    repo_type: RepoType
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    tag_messages: dict[str, str] = field(default_factory=dict)
    sdk: str | None = None

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/", 1)[0]

    def resolve(self, revision: str) -> Commit:
        """Return the commit a branch, tag or full commit id designates.

        Raises:
            [`RevisionNotFound`]: If `revision` is none of these.
        """
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.tags:
            return self.commits[self.tags[revision]]
        if _COMMIT_SHA_RE.match(revision) and revision in self.commits:
            return self.commits[revision]
        raise RevisionNotFound(f"Invalid rev id: {revision}")

    def history(self, revision: str) -> Iterator[Commit]:
        """Commits reachable from `revision`, newest first."""
        commit: Commit | None = self.resolve(revision)
        while commit is not None:
            yield commit
            commit = self.commits[commit.parent] if commit.parent else None

    def to_json(self) -> dict:
        return {
            "repo_type": self.repo_type,
            "repo_id": self.repo_id,
            "private": self.private,
            "created_at": self.created_at,
            "sdk": self.sdk,
            "branches": self.branches,
            "tags": self.tags,
            "tag_messages": self.tag_messages,
            "commits": [commit.to_json() for commit in self.commits.values()],
        }

    @classmethod
    def from_json(cls, data: dict) -> Repo:
        commits = [Commit.from_json(c) for c in data.pop("commits")]
        return cls(**data, commits={c.id: c for c in commits})


@dataclass(frozen=True)
class FileAddition:
    """A file to add in a commit: either its bytes, or the sha256 of an object already in the store (LFS)."""

    path: str
    lfs: bool
    content: bytes | None = None
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Deletion:
    """A file (or, with `folder=True`, every file under a folder) to delete in a commit."""

    path: str
    folder: bool = False


def validate_repo_id(repo_id: str) -> None:
    """Check that `repo_id` is `namespace/name` with Hub-like characters.

    Raises:
        [`BadRequest`]: If it is not.
    """
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_NAME_RE.match(p) for p in parts) or any(".." in p for p in parts):
        raise BadRequest(f"Invalid repo id {repo_id!r}: expected 'namespace/name' (letters, digits, '-', '_', '.').")


def validate_path(path: str) -> str:
    """Check that a path in a repo is relative, `/`-separated and free of `.`/`..` parts.

    Raises:
        [`BadRequest`]: If it is not.
    """
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in path:
        raise BadRequest(f"Invalid path in repo: {path!r}")
    return path


class RepoStore:
    """Thread-safe store of repositories persisted under `root`.

    Args:
        root (`str` or `Path`): Directory holding the store; created if missing. Reopening a store on the same
            directory restores its repositories.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._repos_dir = self.root / "repos"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._repos_dir.mkdir(parents=True, exist_ok=True)
        # One lock for the whole store: commits are small and tests are not throughput-bound, and a single lock
        # makes every multi-step change (validate, write objects, move the branch) atomic.
        self.lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        for state in self._repos_dir.glob("*/*/*.json"):
            repo = Repo.from_json(json.loads(state.read_text()))
            self._repos[(repo.repo_type, repo.repo_id)] = repo

    # ----------------------------------------------------------------------------------------------- objects

    def object_path(self, sha256: str) -> Path:
        """Where the content with this sha256 is stored."""
        return self._objects / sha256[:2] / sha256

    def has_object(self, sha256: str, size: int | None = None) -> bool:
        """Whether the object store holds `sha256` (and, if given, with this size)."""
        path = self.object_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def put_object(self, data: bytes) -> str:
        """Store `data` and return its sha256. Idempotent."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.object_path(sha256)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return sha256

    def read_object(self, sha256: str) -> bytes:
        """Bytes stored under `sha256`."""
        return self.object_path(sha256).read_bytes()

    def overwrite_object(self, sha256: str, data: bytes) -> None:
        """Replace the stored bytes of `sha256` without updating any metadata (corruption for tests)."""
        self.object_path(sha256).write_bytes(data)

    # ----------------------------------------------------------------------------------------------- repos

    def get(self, repo_type: str, repo_id: str) -> Repo:
        """Return a repository.

        Raises:
            [`RepoNotFound`]: If it does not exist.
        """
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise RepoNotFound(f"Repository not found: {repo_type} {repo_id}")
        return repo

    def exists(self, repo_type: str, repo_id: str) -> bool:
        return (repo_type, repo_id) in self._repos

    def list(self) -> list[Repo]:
        """All repositories."""
        with self.lock:
            return list(self._repos.values())

    def create_repo(
        self,
        repo_type: RepoType,
        repo_id: str,
        *,
        private: bool = False,
        author: str = "loopback",
        sdk: str | None = None,
    ) -> Repo:
        """Create a repository with one empty initial commit on `main`, as the Hub does.

        Raises:
            [`Conflict`]: If it already exists.
            [`BadRequest`]: If the type or id is invalid.
        """
        if repo_type not in REPO_TYPES:
            raise BadRequest(f"Invalid repo type {repo_type!r}: expected one of {', '.join(REPO_TYPES)}.")
        validate_repo_id(repo_id)
        with self.lock:
            if self.exists(repo_type, repo_id):
                raise Conflict("You already created this model repo" if repo_type == "model" else "Repo exists")
            now = _now_iso()
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=now, sdk=sdk)
            initial = Commit(
                id=self._new_commit_id(repo, None, "initial commit"),
                parent=None,
                title="initial commit",
                message="",
                author=author,
                date=now,
            )
            repo.commits[initial.id] = initial
            repo.branches[DEFAULT_BRANCH] = initial.id
            self._repos[(repo_type, repo_id)] = repo
            self._save(repo)
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        """Delete a repository (its objects stay: they may be shared)."""
        with self.lock:
            self.get(repo_type, repo_id)
            del self._repos[(repo_type, repo_id)]
            self._state_path(repo_type, repo_id).unlink(missing_ok=True)

    def reset(self) -> None:
        """Delete every repository and object."""
        with self.lock:
            self._repos.clear()
            shutil.rmtree(self._repos_dir, ignore_errors=True)
            shutil.rmtree(self._objects, ignore_errors=True)
            self._objects.mkdir(parents=True, exist_ok=True)
            self._repos_dir.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------------------------------- refs

    def create_tag(self, repo: Repo, tag: str, revision: str, message: str | None = None) -> str:
        """Tag the commit `revision` designates and return its id.

        Raises:
            [`Conflict`]: If the tag exists.
        """
        with self.lock:
            self._check_ref_name(tag)
            if tag in repo.tags:
                raise Conflict(f"Tag {tag!r} already exists")
            commit = repo.resolve(revision)
            repo.tags[tag] = commit.id
            if message:
                repo.tag_messages[tag] = message
            self._save(repo)
            return commit.id

    def delete_tag(self, repo: Repo, tag: str) -> None:
        with self.lock:
            if tag not in repo.tags:
                raise RevisionNotFound(f"Tag {tag!r} not found")
            del repo.tags[tag]
            repo.tag_messages.pop(tag, None)
            self._save(repo)

    def create_branch(self, repo: Repo, branch: str, starting_point: str | None = None) -> str:
        """Create `branch` at `starting_point` (default: head of `main`) and return its head.

        Raises:
            [`Conflict`]: If the branch exists.
        """
        with self.lock:
            self._check_ref_name(branch)
            if branch in repo.branches:
                raise Conflict(f"Reference already exists: refs/heads/{branch}")
            commit = repo.resolve(starting_point or DEFAULT_BRANCH)
            repo.branches[branch] = commit.id
            self._save(repo)
            return commit.id

    def delete_branch(self, repo: Repo, branch: str) -> None:
        with self.lock:
            if branch not in repo.branches:
                raise RevisionNotFound(f"Branch {branch!r} not found")
            if branch == DEFAULT_BRANCH:
                raise BadRequest("Cannot delete the default branch")
            del repo.branches[branch]
            self._save(repo)

    # ----------------------------------------------------------------------------------------------- commits

    def commit(
        self,
        repo: Repo,
        branch: str,
        *,
        additions: Iterable[FileAddition] = (),
        deletions: Iterable[Deletion] = (),
        title: str,
        message: str = "",
        author: str = "loopback",
        parent_commit: str | None = None,
    ) -> Commit:
        """Create a commit on `branch`, all or nothing.

        Every operation is checked before anything changes; the branch moves only once the new state is written.

        Raises:
            [`RevisionNotFound`]: If `branch` is not a branch.
            [`PreconditionFailed`]: If `parent_commit` is given and is not the branch head.
            [`EntryNotFound`]: If a deleted file or folder does not exist.
            [`BadRequest`]: If an LFS file references content that was not uploaded, or a path is invalid.
        """
        additions = list(additions)
        deletions = list(deletions)
        with self.lock:
            head = self._branch_head(repo, branch, parent_commit)
            files = dict(head.files)
            _apply_deletions(files, deletions)
            new_contents: list[bytes] = []
            for addition in additions:
                entry, content = self._file_entry(addition)
                _check_no_file_folder_conflict(files, entry.path)
                files[entry.path] = entry
                if content is not None:
                    new_contents.append(content)
            # Objects are written only once every operation was accepted: a refused commit stores nothing.
            for data in new_contents:
                self.put_object(data)
            commit = Commit(
                id=self._new_commit_id(repo, head.id, title),
                parent=head.id,
                title=title,
                message=message,
                author=author,
                date=_now_iso(),
                files=files,
            )
            self._move_branch(repo, branch, head, commit)
            return commit

    def _branch_head(self, repo: Repo, branch: str, parent_commit: str | None) -> Commit:
        """The head commit of ``branch``, checked against the ``parent_commit`` the client based its commit on.

        Raises:
            [`RevisionNotFound`]: If `branch` is not a branch.
            [`PreconditionFailed`]: If `parent_commit` is given and is not (a prefix of) the branch head.
        """
        if branch not in repo.branches:
            raise RevisionNotFound(f"Invalid rev id: {branch} is not a branch")
        head = repo.commits[repo.branches[branch]]
        # The Hub accepts a shortened parent id: compare on the given prefix.
        if parent_commit is not None and not head.id.startswith(parent_commit.lower()):
            raise PreconditionFailed(
                f"A commit has happened since. Please refresh and try again. (head of {branch!r} is {head.id},"
                f" parentCommit was {parent_commit})"
            )
        return head

    def _file_entry(self, addition: FileAddition) -> tuple[FileEntry, bytes | None]:
        """The tree entry of ``addition``, and the bytes to store for it (``None`` for an already uploaded LFS file).

        Raises:
            [`BadRequest`]: If the path is invalid, or an LFS file references content the store does not hold or
                gives a size that differs from the stored one.
        """
        path = validate_path(addition.path)
        content = addition.content
        if content is not None:
            sha256 = hashlib.sha256(content).hexdigest()
            size = len(content)
        else:
            if addition.sha256 is None:
                raise BadRequest(f"File {path!r} has neither content nor LFS oid")
            sha256 = addition.sha256.lower()
            if not self.has_object(sha256):
                raise BadRequest(
                    f"Your push was rejected because an LFS pointer pointed to a file that does not exist:"
                    f" {path} (oid {sha256}). Upload it through the LFS batch API first."
                )
            size = self.object_path(sha256).stat().st_size
            if addition.size is not None and addition.size != size:
                raise BadRequest(f"LFS file {path!r}: size {addition.size} does not match stored {size}")
        # Git's tree holds the pointer for an LFS file, the content itself for a regular one.
        if addition.lfs:
            blob_id = git_blob_id(lfs_pointer(sha256, size))
        elif content is not None:
            blob_id = git_blob_id(content)
        else:
            blob_id = git_blob_id(self.read_object(sha256))
        return FileEntry(path=path, size=size, sha256=sha256, blob_id=blob_id, lfs=addition.lfs), content

    def _move_branch(self, repo: Repo, branch: str, head: Commit, commit: Commit) -> None:
        """Add ``commit`` to ``repo``, point ``branch`` at it and persist; on a failed write, undo both and raise."""
        repo.commits[commit.id] = commit
        repo.branches[branch] = commit.id
        try:
            self._save(repo)
        except BaseException:
            # Keep memory in line with disk if the state could not be written.
            repo.branches[branch] = head.id
            del repo.commits[commit.id]
            raise

    # ----------------------------------------------------------------------------------------------- internals

    @staticmethod
    def _check_ref_name(name: str) -> None:
        if not name or name.startswith(("/", "-")) or ".." in name or any(c in name for c in " ~^:?*[\\"):
            raise BadRequest(f"Invalid reference name: {name!r}")

    @staticmethod
    def _new_commit_id(repo: Repo, parent: str | None, title: str) -> str:
        unique = f"{repo.repo_type}/{repo.repo_id}\0{parent}\0{title}\0{time.time_ns()}\0{uuid.uuid4()}"
        return hashlib.sha1(unique.encode()).hexdigest()

    def _state_path(self, repo_type: str, repo_id: str) -> Path:
        namespace, name = repo_id.split("/")
        return self._repos_dir / repo_type / namespace / f"{name}.json"

    def _save(self, repo: Repo) -> None:
        path = self._state_path(repo.repo_type, repo.repo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(repo.to_json(), f)
        os.replace(tmp, path)


def _apply_deletions(files: dict[str, FileEntry], deletions: list[Deletion]) -> None:
    """Remove each deleted file, or every file under a deleted folder, from the tree ``files`` (in place).

    Raises:
        [`EntryNotFound`]: If a deleted file or folder is not in the tree.
    """
    for deletion in deletions:
        path = deletion.path.rstrip("/")
        if deletion.folder:
            under = [p for p in files if p.startswith(path + "/")]
            if not under:
                raise EntryNotFound(f"A folder with this name doesn't exist: {path}")
            for p in under:
                del files[p]
        else:
            if path not in files:
                raise EntryNotFound(f"A file with this name doesn't exist: {path}")
            del files[path]


def _check_no_file_folder_conflict(files: Mapping[str, FileEntry], path: str) -> None:
    """Refuse adding ``path`` where a folder of that name exists, or where one of its parents is a file.

    Raises:
        [`BadRequest`]: On such a conflict.
    """
    if any(p.startswith(path + "/") for p in files) or any(parent in files for parent in _parents(path)):
        raise BadRequest(f"Path {path!r} conflicts with an existing file or folder")


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def tree_oid(entries: Mapping[str, FileEntry], folder: str) -> str:
    """A stable id for a folder: sha1 over the sorted (path, blob id) pairs beneath it."""
    prefix = folder + "/"
    digest = hashlib.sha1(b"tree\0")
    for path in sorted(p for p in entries if p.startswith(prefix)):
        digest.update(f"{path}\0{entries[path].blob_id}\n".encode())
    return digest.hexdigest()
