"""Hub I/O: fetch lens files at a pinned commit through the Hugging Face cache, verify them, audit entries.

Downloads go through ``huggingface_hub.hf_hub_download``, so the normal cache, ``HF_HOME``, ``HF_HUB_OFFLINE`` and
tokens all apply, and a file cached at a 40-hex commit is served without any HTTP request. huggingface_hub checks
only sizes; every file is therefore hashed here before use, against the recorded sha256 or, when none is recorded,
against the Hub's own ETag (the name huggingface_hub gives the cached blob: the sha256 of an LFS file, the git blob
oid of a regular one). A lens's files are read once, and the bytes read are what is hashed and then used
(`read_verified`): no check of one read vouches for another, and a file swapped in the cache is caught at every load.
A file that fails is deleted from the cache (blob and snapshot link) so no later call can trust it; nothing outside
the cache is ever followed or deleted. Every request names lens-hub and its version in its User-Agent (`LIBRARY`).

Every answer of the Hub is a stranger's until checked, headers included (`guarded`): while lens-hub talks to the
Hub, a response hook on huggingface_hub's HTTP client refuses a commit id or ETag of the wrong form *before* the
client uses it (huggingface_hub 2.4 names cache files after them: ``blobs/<ETag>``, ``refs/<branch>`` holding
``X-Repo-Commit``), refuses an announced size above the bound, and stops reading a body at the bound or at the
deadline, whatever the server claimed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..core.format import read_bytes_capped, short_repr
from ..core.ids import is_commit
from ..errors import (
    ChecksumMismatchError,
    HubResponseError,
    HubUnreachableError,
    LensAccessError,
    LensHubError,
    LensNotFoundError,
    OfflineNotCachedError,
)

if TYPE_CHECKING:
    pass

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")

# Who is asking, in the User-Agent of every request lens-hub makes through huggingface_hub (as timm and others do):
# ``lens-hub/<version>; hf_hub/...``. The Hub counts downloads by library from it.
LIBRARY = {"library_name": "lens-hub", "library_version": __version__}

API_RESPONSE_BYTES = 16 * 2**20  # a repo's metadata (repo_info, paths-info, refs) is far smaller
TRANSFER_SECONDS = 600.0  # a lens file or API answer must arrive within this, however slowly the server drips it


@dataclass
class _Guard:
    """The bounds of the Hub answers expected now: what is fetched, its largest size, the deadline."""

    what: str
    limit: int
    seconds: float
    deadline: float
    etag: str | None = None  # the last file ETag seen (its partial download is removed if the transfer is refused)


_GUARD: ContextVar[_Guard | None] = ContextVar("lens_hub_hub_guard", default=None)


def _hub_etag(value: str) -> str:
    return value.strip().removeprefix("W/").strip('"')


def _check_response(response: Any) -> None:
    """huggingface_hub's response hook while `guarded`: refuse malformed ids and oversized answers, bound the body."""
    guard = _GUARD.get()
    if guard is None:
        return
    headers = response.headers
    commit = headers.get("x-repo-commit")
    if commit is not None and not _HEX40.match(commit):
        raise HubResponseError(
            f"{guard.what}: the server's X-Repo-Commit {short_repr(commit, 50)} is not a 40-hex commit id, so "
            "nothing it sent was used (a hostile or broken mirror? check HF_ENDPOINT)."
        )
    if "/resolve/" in response.request.url.path:
        for name in ("etag", "x-linked-etag"):  # the linked one (an LFS file's sha256) names the blob: last wins
            if headers.get(name) is not None:
                tag = _hub_etag(headers[name])
                if not (_HEX40.match(tag) or _HEX64.match(tag)):
                    raise HubResponseError(
                        f"{guard.what}: the server's {name} {short_repr(headers[name], 50)} is neither a sha256 nor a "
                        "git blob id, so nothing it sent was used (a hostile or broken mirror? check HF_ENDPOINT)."
                    )
                guard.etag = tag
    for name in ("x-linked-size", "content-length"):
        value = headers.get(name)
        if value is None:
            continue
        if not value.isdigit() or len(value) > 18:
            raise HubResponseError(f"{guard.what}: the server's {name} {short_repr(value, 30)} is not a size.")
        if int(value) > guard.limit:
            raise HubResponseError(
                f"{guard.what}: the server announces {int(value):,} bytes, more than the {guard.limit:,} this file "
                "may have (its record or its format's bound); nothing was downloaded."
            )
    response.stream = _bounded_stream(response.stream, guard)


def _bounded_stream(inner: Any, guard: _Guard) -> Any:
    """``inner`` (huggingface_hub's response body) read through the guard's bounds (see `_BoundedStream`)."""
    import httpx2  # huggingface_hub's HTTP stack since 2.0; its client checks the stream's type

    class _BoundedStream(httpx2.SyncByteStream):
        """A response body read at most to ``limit`` bytes, and complete by the deadline."""

        def __iter__(self) -> Iterator[bytes]:
            return _read_bounded(inner, guard)

        def close(self) -> None:
            inner.close()

    return _BoundedStream()


def _read_bounded(inner: Any, guard: _Guard) -> Iterator[bytes]:

    seen = 0
    for chunk in inner:
        seen += len(chunk)
        if seen > guard.limit:
            raise HubResponseError(
                f"{guard.what}: the server sent more than the {guard.limit:,} bytes this file may have (whatever it "
                "announced); reading stopped there and nothing was kept."
            )
        if time.monotonic() > guard.deadline:
            raise HubResponseError(
                f"{guard.what}: the transfer did not finish within {guard.seconds:.0f} s (the server sends too "
                "slowly); nothing was kept. Retry later, or check HF_ENDPOINT."
            )
        yield chunk


@contextmanager
def guarded(what: str, limit: int, *, seconds: float | None = None) -> Iterator[_Guard]:
    """Hold the Hub's answers inside this block to ``limit`` bytes each and ``seconds`` in all (see the module doc).

    Raises:
        HubResponseError: From inside the block, at the first answer that breaks a bound or a format.
    """
    from huggingface_hub import get_session

    client = get_session()  # the client huggingface_hub shares; recreated if someone closes it, so check each time
    hooks = client.event_hooks
    if _check_response not in hooks["response"]:
        client.event_hooks = {"request": hooks["request"], "response": [*hooks["response"], _check_response]}
    seconds = TRANSFER_SECONDS if seconds is None else seconds
    guard = _Guard(what, limit, seconds, time.monotonic() + seconds)
    token = _GUARD.set(guard)
    try:
        yield guard
    finally:
        _GUARD.reset(token)


@dataclass(frozen=True)
class HubFile:
    """A file to fetch: where it lives, and what it must be (``None``: not recorded)."""

    repo_id: str
    repo_type: str
    revision: str
    path: str
    size: int | None = None
    sha256: str | None = None

    @property
    def url(self) -> str:
        prefix = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"{prefix}{self.repo_id}@{self.revision[:12]}/{self.path}"


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level exception classes of whichever HTTP stack huggingface_hub uses."""
    classes: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException")):
        try:
            classes.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(classes)


def is_offline() -> bool:
    """Whether huggingface_hub is in offline mode (read at call time, so tests can switch it)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub error (None when it carries no response)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _refused(what: str, exc: BaseException) -> LensHubError:
    """The lens-hub error for an HTTP refusal of ``what``: not found / no access for 401, 403 and 404, else the Hub
    failing (5xx, 429, ...), which a later call may not meet."""
    status = _http_status(exc)
    if status in (401, 403):
        return LensAccessError(
            f"{what}: the Hub refused access (HTTP {status}): the repository, revision or file does not exist for "
            "your token, or the token may not read it. Check the name, then log in with `hf auth login` or set "
            "HF_TOKEN to a token that may read it."
        )
    if status == 404:
        return LensNotFoundError(
            f"{what}: not found on the Hub (HTTP 404): the repository, revision or file does not exist, or it is "
            "private (log in with `hf auth login` or set HF_TOKEN). Check the repo id, revision and path."
        )
    return HubUnreachableError(f"the Hub failed while fetching {what} (HTTP {status or '?'}); try again later.")


@contextmanager
def hub_errors(what: str, *, local_files_only: bool = False) -> Iterator[None]:
    """Translate huggingface_hub / transport exceptions into lens-hub's error family.

    Not found and no access (401, 403, 404, a missing or gated repo, revision or file) become `LensNotFoundError`
    (`LensAccessError` for refusals); only failures to reach the Hub, or the Hub failing, are
    `HubUnreachableError`.
    """
    from huggingface_hub import errors as hf

    try:
        yield
    except hf.LocalEntryNotFoundError as exc:
        if local_files_only or is_offline():
            raise OfflineNotCachedError(
                f"{what} is not in the local cache and offline mode is on (HF_HUB_OFFLINE=1 or "
                "local_files_only=True). Fetch it once while online: `lens-hub download NAME`."
            ) from None
        # huggingface_hub reports a refused metadata (HEAD) request as "not in the local cache", chaining the HTTP
        # error: a 403 or 404 is an answer from the Hub, not a connection problem.
        cause = exc.__cause__
        if isinstance(cause, hf.HfHubHTTPError) and _http_status(cause) is not None:
            raise _refused(what, cause) from None
        raise HubUnreachableError(f"could not reach the Hub for {what}: {exc}") from None
    except hf.GatedRepoError:  # before RepositoryNotFoundError, of which it is a subclass
        raise LensAccessError(
            f"{what}: the repository is gated: request access on its Hub page, then log in with `hf auth login` or "
            "set HF_TOKEN."
        ) from None
    except hf.RepositoryNotFoundError:
        raise LensNotFoundError(f"{what}: the repository does not exist on the Hub (or is private: log in).") from None
    except hf.RevisionNotFoundError:
        raise LensNotFoundError(f"{what}: the pinned revision does not exist in the repository.") from None
    except hf.EntryNotFoundError:
        raise LensNotFoundError(f"{what}: the file does not exist at that revision.") from None
    except hf.HfHubHTTPError as exc:
        raise _refused(what, exc) from None
    except _transport_errors() as exc:
        raise HubUnreachableError(f"could not reach the Hub for {what}: {type(exc).__name__}: {exc}") from None


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_oid(path: str | os.PathLike[str]) -> str:
    """The git blob id of a file: sha1 of ``b"blob {size}\\0"`` + content (the Hub's ETag of a regular file)."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_repo_dir(local: Path) -> Path | None:
    """The huggingface_hub cache folder of the repo a snapshot path belongs to (``.../models--org--name``)."""
    parts = local.parts
    for i in range(len(parts) - 2):
        if parts[i].startswith(("models--", "datasets--", "spaces--")) and parts[i + 1] == "snapshots":
            return Path(*parts[: i + 1])
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def evict(local: Path) -> None:
    """Remove a cached file: the snapshot entry and the blob it links to, never anything outside the cache.

    A link whose target lies outside the repo's ``blobs`` folder (planted, or named by a hostile ETag) is removed
    itself; its target is left alone. A path outside any huggingface_hub cache is not touched.
    """
    repo = _cache_repo_dir(local)
    if repo is None:
        return
    if local.is_symlink():
        target = local.resolve()
        local.unlink(missing_ok=True)
        if _inside(target, (repo / "blobs").resolve()):
            target.unlink(missing_ok=True)
    elif _inside(local.resolve(), repo.resolve()):  # a copy instead of a link (Windows without symlinks)
        local.unlink(missing_ok=True)


def hub_api() -> Any:
    """An ``HfApi`` client that names lens-hub (`LIBRARY`) in its User-Agent."""
    from huggingface_hub import HfApi

    return HfApi(**LIBRARY)


def _cached_blob(local: Path, file: HubFile) -> Path:
    """The blob a cache entry links to; an entry linking outside its repo's ``blobs`` folder is removed and refused.

    Raises:
        ChecksumMismatchError: The link leads outside the cache (the link was removed, its target left alone).
    """
    repo = _cache_repo_dir(local)
    blob = local.resolve()
    if repo is not None and local.is_symlink() and not _inside(blob, (repo / "blobs").resolve()):
        evict(local)
        raise ChecksumMismatchError(
            f"{file.url}: the cache entry {local} links outside the cache ({blob}); the link was removed and its "
            "target left alone. A new call downloads the file again."
        )
    return blob


def _content_problem(
    size: int, sha256: Callable[[], str], blob_oid: Callable[[], str], file: HubFile, address: str
) -> str | None:
    """What is wrong with a file of ``size`` bytes whose digests the callables compute, or None.

    Checked against the record (size, then sha256) or, with no sha256 recorded, against the Hub's ETag that names the
    cached blob (``address``): a sha256 for an LFS file, a git blob id for a regular one. No record and no checkable
    name fails closed.
    """
    if file.size is not None and size != file.size:
        return f"size {size} bytes, expected {file.size}"
    if file.sha256 is not None:
        actual = sha256()
        return None if actual == file.sha256 else f"sha256 {actual}, expected {file.sha256}"
    if _HEX64.match(address):
        actual = sha256()
        return None if actual == address else f"sha256 {actual}, but the Hub announced {address}"
    if _HEX40.match(address):
        actual = blob_oid()
        return None if actual == address else f"git blob id {actual}, but the Hub announced {address}"
    return f"no recorded checksum, and its cache name {short_repr(address, 50)} is not one to check it by"


def _refuse(local: Path, file: HubFile, problem: str) -> ChecksumMismatchError:
    """Evict a file that failed verification; the error to raise for it."""
    evict(local)
    return ChecksumMismatchError(
        f"{file.url} failed verification ({problem}). The file was removed from the cache; a new call downloads "
        "it again. If this persists, the file on the Hub differs from what it announces or from the registry: "
        "report it."
    )


def verify_file(local: Path, file: HubFile) -> None:
    """Check a cached file's size and sha256 against the record or, with none recorded, against the Hub's ETag.

    huggingface_hub names each cached blob after the ETag the Hub announced: the sha256 of an LFS file, the git blob
    oid of a regular one. A blob whose content does not hash to its name was corrupted in transit or on disk, even
    when the registry records no checksum (an ``hf://`` lens, an unverified legacy lens).

    This hashes the file on disk; a caller that reads it afterwards reads it again. `read_verified` reads a file
    once and returns the very bytes it checked.

    Raises:
        ChecksumMismatchError: After evicting the file from the cache.
    """
    blob = _cached_blob(local, file)
    problem = _content_problem(
        blob.stat().st_size, lambda: sha256_of(blob), lambda: git_blob_oid(blob), file, blob.name
    )
    if problem:
        raise _refuse(local, file, problem)


def read_verified(local: Path, file: HubFile, *, limit: int) -> bytes:
    """Read a cached file once and verify the bytes read, as `verify_file` does; returns those very bytes.

    What is hashed is what the caller uses: a file swapped in the cache after the download (or
    while it is read) is caught, and nothing is read from the file again after the check. The cache is never
    trusted: every call hashes.

    Args:
        local: The file's path in the huggingface_hub cache (`fetch_unverified`).
        file: Its record; a recorded size bounds the read, and is checked before anything is read.
        limit: The most bytes the file may have when no size is recorded (its format's bound).

    Raises:
        ChecksumMismatchError: The file is larger than its bound, or fails verification (it is removed from the
            cache).
    """
    blob = _cached_blob(local, file)
    bound = file.size if file.size is not None else limit
    try:
        data = read_bytes_capped(blob, bound, follow_symlinks=False)  # a link planted as the blob is refused
    except ValueError as exc:
        raise _refuse(local, file, f"the cached file {exc}") from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise _refuse(local, file, "the cached blob is a symbolic link") from None

    def blob_oid() -> str:
        digest = hashlib.sha1(b"blob %d\0" % len(data), usedforsecurity=False)
        digest.update(data)
        return digest.hexdigest()

    problem = _content_problem(len(data), lambda: hashlib.sha256(data).hexdigest(), blob_oid, file, blob.name)
    if problem:
        raise _refuse(local, file, problem)
    return data


def fetch_file(
    file: HubFile,
    *,
    limit: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """Download (or find in the cache) one file and verify it; returns its local path.

    Args:
        file: What to fetch; its recorded size, when there is one, bounds the download.
        limit: The most bytes the file may have when no size is recorded (its format's bound).

    Raises:
        HubResponseError: The server's answer breaks a bound or a format (nothing of it is kept).
        ChecksumMismatchError: The file fails verification (it is removed from the cache).
    """
    path = fetch_unverified(file, limit=limit, cache_dir=cache_dir, token=token, local_files_only=local_files_only)
    verify_file(path, file)
    return path


def fetch_unverified(
    file: HubFile,
    *,
    limit: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """Download (or find in the cache) one file, bounded like `fetch_file` but not hashed yet: `fetch_file` hashes it
    on disk, or the caller reads it with `read_verified`, which hashes the bytes it returns (read once, and what is
    used is what was checked).

    Raises:
        HubResponseError: The server's answer breaks a bound or a format (nothing of it is kept).
    """
    from huggingface_hub import hf_hub_download

    bound = file.size if file.size is not None else limit
    if bound is None:
        raise ValueError(f"{file.url}: a download needs a recorded size or a limit")
    with hub_errors(file.url, local_files_only=local_files_only), guarded(file.url, bound) as guard:
        try:
            local = hf_hub_download(
                file.repo_id,
                file.path,
                repo_type=file.repo_type,
                revision=file.revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=local_files_only,
                **LIBRARY,
            )
        except HubResponseError:
            _drop_partial(file, guard.etag, cache_dir)
            raise
        except OSError as exc:  # huggingface_hub's own size check ("Consistency check failed") on a lying server
            _drop_partial(file, guard.etag, cache_dir)
            if "onsistency" not in str(exc):
                raise
            raise HubResponseError(
                f"{file.url}: the server sent another number of bytes than it announced; nothing was kept."
            ) from None
    return Path(local)


def _drop_partial(file: HubFile, etag: str | None, cache_dir: str | os.PathLike[str] | None) -> None:
    """Remove the partial download of a refused transfer, which huggingface_hub would otherwise resume."""
    if etag is None:
        return
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(cache_dir or constants.HF_HUB_CACHE)
    blobs = root / repo_folder_name(repo_id=file.repo_id, repo_type=file.repo_type) / "blobs"
    for leftover in (blobs / etag, blobs / f"{etag}.incomplete"):
        if leftover.is_file() and not leftover.is_symlink():
            leftover.unlink(missing_ok=True)


def commit_of(local: Path) -> str | None:
    """The commit a file in the huggingface_hub cache was resolved to (from its ``snapshots/<commit>`` path)."""
    parts = local.parts
    if "snapshots" in parts:
        candidate = parts[parts.index("snapshots") + 1]
        if is_commit(candidate):
            return candidate
    return None


def resolve_commit(repo_id: str, repo_type: str, revision: str, *, token: str | bool | None = None) -> str:
    """Resolve a branch or tag to its 40-hex commit (one request; a commit is returned as is)."""
    if is_commit(revision):
        return revision
    what = f"{repo_id}@{revision}"
    with hub_errors(what), guarded(what, API_RESPONSE_BYTES):
        info = hub_api().repo_info(repo_id, repo_type=repo_type, revision=revision, token=token)
    if not isinstance(info.sha, str) or not is_commit(info.sha):
        # A server's value becomes a cache path (refs/, snapshots/) and a request URL: only a commit id will do.
        raise HubResponseError(
            f"the Hub did not report a commit for {what}: it answered {short_repr(info.sha, 50)}, not a 40-hex "
            "commit id (a hostile or broken mirror? check HF_ENDPOINT)."
        )
    return info.sha


@dataclass
class AuditReport:
    """What ``lens-hub registry audit --remote`` found for one lens version."""

    name: str
    problems: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def audit_version(model_id: str, version: object, facts: object, *, token: str | bool | None = None) -> AuditReport:
    """Check a registry lens version against the live Hub: revision, files (size, sha256), safetensors shapes.

    Args:
        model_id: The entry's canonical model id (for the report).
        version: A `lens_hub.registry.schema.LensVersion`.
        facts: The entry's `lens_hub.registry.schema.ModelFacts`.
        token: Hub token.
    """
    api = hub_api()
    loc = version.location  # type: ignore[attr-defined]
    report = AuditReport(f"{model_id} v{version.version}", [], [])  # type: ignore[attr-defined]
    where = f"{loc.repo_type}s/{loc.repo_id}"
    try:
        commit = resolve_commit(loc.repo_id, loc.repo_type, loc.revision or "main", token=token)
    except LensHubError as exc:
        report.problems.append(str(exc))
        return report
    if loc.revision is None:
        report.notes.append(f"unpinned; {where} main is at {commit} (pin it to verify this entry)")
    paths = [f"{loc.subfolder}/{f.path}" if loc.subfolder else f.path for f in version.files]  # type: ignore[attr-defined]
    with hub_errors(where), guarded(where, API_RESPONSE_BYTES):
        infos = {
            i.path: i
            for i in api.get_paths_info(loc.repo_id, paths, revision=commit, repo_type=loc.repo_type, token=token)
        }
    for file, path in zip(version.files, paths, strict=True):  # type: ignore[attr-defined]
        info = infos.get(path)
        if info is None or not hasattr(info, "size"):
            report.problems.append(f"{path}: missing at {commit[:12]}")
            continue
        if file.size is not None and info.size != file.size:
            report.problems.append(f"{path}: size {info.size} on the Hub, registry says {file.size}")
        remote_sha = info.lfs.sha256 if getattr(info, "lfs", None) else None
        if remote_sha is None:  # a regular (non-LFS) file: the Hub gives only a git oid, so hash the live bytes
            with tempfile.TemporaryDirectory() as fresh:  # never the cache: it may hold an older, good copy
                # Unverified on purpose: the audit reports what the bytes are, and whether they match the ETag.
                live = fetch_unverified(  # bounded by the size the Hub itself announced for it
                    HubFile(loc.repo_id, loc.repo_type, commit, path), limit=info.size, token=token, cache_dir=fresh
                )
                remote_sha = sha256_of(live)
                address = live.resolve().name
                if _HEX40.match(address) and git_blob_oid(live) != address:
                    report.problems.append(f"{path}: the bytes served do not match the Hub's own ETag {address}")
        if file.sha256 is not None and remote_sha != file.sha256:
            report.problems.append(f"{path}: sha256 {remote_sha} on the Hub, registry says {file.sha256}")
        if file.sha256 is None or file.size is None:
            report.notes.append(f"{path}: size {info.size}, sha256 {remote_sha}")
        if path.endswith(".safetensors"):
            report.problems += _audit_shapes(api, loc, commit, path, facts, token)
    return report


def _audit_shapes(
    api: object, loc: object, commit: str, path: str, facts: object, token: str | bool | None
) -> list[str]:
    d, layers = getattr(facts, "hidden_size", None), getattr(facts, "num_layers", None)
    with hub_errors(path), guarded(path, API_RESPONSE_BYTES):
        meta = api.parse_safetensors_file_metadata(  # type: ignore[attr-defined]
            loc.repo_id,
            path,
            repo_type=loc.repo_type,
            revision=commit,
            token=token,  # type: ignore[attr-defined]
        )
    problems = []
    weights = {k: v for k, v in meta.tensors.items() if k.endswith(".weight")}
    if layers is not None and len(weights) != layers:
        problems.append(f"{path}: {len(weights)} translator weights, registry says num_layers {layers}")
    if d is not None:
        bad = sorted(k for k, v in weights.items() if list(v.shape) != [d, d])
        if bad:
            problems.append(f"{path}: {bad[0]} is {list(weights[bad[0]].shape)}, registry says hidden_size {d}")
    return problems
