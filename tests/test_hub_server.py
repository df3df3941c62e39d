"""LoopbackHub driven by the real, unmodified `huggingface_hub` client (no mocks)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from lens_hub.testing import LOOPBACK_TOKEN, LOOPBACK_USER, LoopbackHub, hub_environment
from lens_hub.testing.storage import BadRequest, Deletion, EntryNotFound, FileAddition, RepoStore

REPO = f"{LOOPBACK_USER}/lens"
WEIGHTS = bytes(range(256)) * 40  # binary, and a *.safetensors name: uploaded with LFS
CONFIG = b'{"d_model": 8}'


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


@pytest.fixture
def api(loopback_hub: LoopbackHub) -> HfApi:
    # No endpoint argument: `hub_environment` patched `huggingface_hub.constants`, imported before it ran.
    return HfApi()


@pytest.fixture
def repo(loopback_hub: LoopbackHub) -> str:
    """A model repo with a regular and an LFS file, committed by the hub directly."""
    loopback_hub.commit_files(REPO, {"config.json": CONFIG, "weights/lens.safetensors": WEIGHTS})
    return REPO


def blobs_and_snapshots(cache: Path) -> list[str]:
    return sorted(
        str(p.relative_to(cache))
        for p in cache.rglob("*")
        if p.is_file() and ("blobs" in p.parts or "snapshots" in p.parts)
    )


# ---------------------------------------------------------------------------------------------------- repos


def test_create_repo_conflict_and_exist_ok(loopback_hub: LoopbackHub, api: HfApi) -> None:
    url = api.create_repo(REPO)
    assert url.repo_id == REPO
    assert url.repo_type == "model"
    assert url.endpoint == loopback_hub.endpoint

    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo(REPO)
    assert info.value.response.status_code == 409

    assert api.create_repo(REPO, exist_ok=True) == url  # reads `url` from the 409 answer
    assert loopback_hub.head(REPO)  # created with an initial commit on main, like the Hub

    api.delete_repo(REPO)
    assert not api.repo_exists(REPO)
    api.delete_repo(REPO, missing_ok=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # emitted inside huggingface_hub's LFS PUT
def test_create_commit_regular_and_lfs_in_one_commit(loopback_hub: LoopbackHub, api: HfApi) -> None:
    api.create_repo(REPO)
    before = loopback_hub.commit_ids(REPO)
    loopback_hub.clear_log()

    info = api.create_commit(
        REPO,
        [
            CommitOperationAdd("config.json", CONFIG),
            CommitOperationAdd("weights/lens.safetensors", WEIGHTS),
        ],
        commit_message="Add lens",
        commit_description="two files",
    )

    assert loopback_hub.commit_ids(REPO) == [info.oid, *before]  # exactly one new commit
    assert info.repo_url.repo_id == REPO
    config = loopback_hub.file_entry(REPO, "config.json")
    weights = loopback_hub.file_entry(REPO, "weights/lens.safetensors")
    assert (config.lfs, config.blob_id) == (False, git_blob_id(CONFIG))
    assert (weights.lfs, weights.sha256, weights.size) == (True, sha256(WEIGHTS), len(WEIGHTS))
    assert loopback_hub.read_file(REPO, "weights/lens.safetensors") == WEIGHTS

    calls = [(r.method, r.path.split("/")[-1], r.authorized) for r in loopback_hub.requests]
    assert calls == [
        ("POST", "main", True),  # preupload
        ("POST", "batch", True),  # LFS batch
        ("PUT", sha256(WEIGHTS), False),  # upload to the "storage" URL, without the token
        ("POST", sha256(WEIGHTS), True),  # verify
        ("POST", "main", True),  # commit
    ]

    # Committing the same content again: the client sees the remote oids and skips the commit.
    again = api.create_commit(REPO, [CommitOperationAdd("config.json", CONFIG)], commit_message="no-op")
    assert again.oid == info.oid
    assert len(loopback_hub.commit_ids(REPO)) == 2


def test_parent_commit_mismatch_is_refused(loopback_hub: LoopbackHub, api: HfApi, repo: str) -> None:
    old = loopback_hub.head(repo)
    newer = loopback_hub.commit_files(repo, {"notes.txt": b"moved on"})

    with pytest.raises(HfHubHTTPError) as info:
        api.create_commit(repo, [CommitOperationAdd("stale.txt", b"x")], commit_message="stale", parent_commit=old)
    assert info.value.response.status_code == 412
    assert loopback_hub.head(repo) == newer

    ok = api.create_commit(repo, [CommitOperationAdd("fresh.txt", b"y")], commit_message="ok", parent_commit=newer)
    assert loopback_hub.head(repo) == ok.oid


def test_commit_is_all_or_nothing(loopback_hub: LoopbackHub, api: HfApi, repo: str) -> None:
    head = loopback_hub.head(repo)
    with pytest.raises(EntryNotFoundError):
        api.create_commit(
            repo,
            [CommitOperationAdd("new.txt", b"new"), CommitOperationDelete("missing.txt")],
            commit_message="half valid",
        )
    assert loopback_hub.head(repo) == head
    assert "new.txt" not in loopback_hub.list_files(repo)


def test_store_commit_checks_every_operation_before_changing_anything(tmp_path: Path, monkeypatch) -> None:
    store = RepoStore(tmp_path)
    repo = store.create_repo("model", "me/r")
    weights = FileAddition("w.bin", lfs=True, content=WEIGHTS)
    first = store.commit(repo, "main", additions=[FileAddition("a/b.txt", lfs=False, content=b"b"), weights], title="1")
    assert first.files["a/b.txt"].blob_id == git_blob_id(b"b")
    assert first.files["w.bin"].blob_id == git_blob_id(
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256(WEIGHTS)}\nsize {len(WEIGHTS)}\n".encode()
    )

    fresh = b"never stored"
    refused = [
        ([FileAddition("new.txt", lfs=False, content=fresh), FileAddition("a", lfs=False, content=b"x")], BadRequest),
        (
            [FileAddition("new.txt", lfs=False, content=fresh), FileAddition("a/b.txt/c", lfs=False, content=b"x")],
            BadRequest,
        ),
        ([FileAddition("l.bin", lfs=True, sha256="0" * 64, size=1)], BadRequest),  # content never uploaded
        ([FileAddition("l.bin", lfs=True, sha256=sha256(WEIGHTS), size=3)], BadRequest),  # wrong size
        ([FileAddition("l.bin", lfs=True)], BadRequest),  # neither content nor oid
        ([FileAddition("../x", lfs=False, content=b"x")], BadRequest),
    ]
    for additions, error in refused:
        with pytest.raises(error):
            store.commit(repo, "main", additions=additions, title="refused")
    for deletion in (Deletion("missing.txt"), Deletion("nowhere", folder=True)):
        with pytest.raises(EntryNotFound):
            store.commit(
                repo,
                "main",
                additions=[FileAddition("new.txt", lfs=False, content=fresh)],
                deletions=[deletion],
                title="refused",
            )
    assert repo.branches["main"] == first.id
    assert not store.has_object(hashlib.sha256(fresh).hexdigest())  # a refused commit stores no object

    # An LFS addition by oid reuses the stored object; a folder deletion removes everything under it.
    second = store.commit(
        repo,
        "main",
        additions=[FileAddition("copy.bin", lfs=True, sha256=sha256(WEIGHTS).upper(), size=len(WEIGHTS))],
        deletions=[Deletion("a/", folder=True)],
        title="2",
    )
    assert sorted(second.files) == ["copy.bin", "w.bin"] and second.parent == first.id
    assert second.files["copy.bin"].blob_id == first.files["w.bin"].blob_id

    # A state that cannot be written leaves the branch and the commits as they were.
    def fail(_repo: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store, "_save", fail)
    with pytest.raises(OSError, match="disk full"):
        store.commit(repo, "main", additions=[FileAddition("late.txt", lfs=False, content=b"l")], title="3")
    assert repo.branches["main"] == second.id and len(repo.commits) == 3


def test_create_pr_is_refused_clearly(api: HfApi, repo: str) -> None:
    with pytest.raises(HfHubHTTPError, match="pull requests"):
        api.create_commit(repo, [CommitOperationAdd("a.txt", b"a")], commit_message="pr", create_pr=True)


# ---------------------------------------------------------------------------------------------------- refs


def test_tags_refs_and_commits(loopback_hub: LoopbackHub, api: HfApi, repo: str) -> None:
    first = loopback_hub.head(repo)
    api.create_tag(repo, tag="v1", tag_message="first release")
    with pytest.raises(HfHubHTTPError) as info:
        api.create_tag(repo, tag="v1")
    assert info.value.response.status_code == 409
    api.create_tag(repo, tag="v1", exist_ok=True)

    second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="notes.txt", repo_id=repo, commit_message="v2")
    api.create_branch(repo, branch="feature/x", revision="v1")

    refs = api.list_repo_refs(repo)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": second.oid, "feature/x": first}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", first)]
    assert refs.converts == []

    commits = api.list_repo_commits(repo)
    assert [c.commit_id for c in commits] == loopback_hub.commit_ids(repo)
    assert [c.title for c in commits] == ["v2", "Commit from LoopbackHub.commit_files", "initial commit"]
    assert commits[0].authors == [LOOPBACK_USER]
    assert [c.commit_id for c in api.list_repo_commits(repo, revision="v1")] == loopback_hub.commit_ids(repo)[1:]

    api.delete_tag(repo, tag="v1")
    assert loopback_hub.tags(repo) == {}


# ---------------------------------------------------------------------------------------------------- metadata


def test_model_info_with_files_metadata(loopback_hub: LoopbackHub, api: HfApi, repo: str) -> None:
    info = api.model_info(repo, files_metadata=True)
    assert info.id == repo
    assert info.sha == loopback_hub.head(repo)
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == {"config.json", "weights/lens.safetensors"}
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == git_blob_id(CONFIG)
    lfs = siblings["weights/lens.safetensors"].lfs
    assert lfs is not None
    assert (lfs.sha256, lfs.size) == (sha256(WEIGHTS), len(WEIGHTS))

    old = info.sha
    loopback_hub.commit_files(repo, {"config.json": b"{}"})
    assert api.repo_info(repo, revision=old).sha == old


def test_list_repo_tree_and_paths_info(loopback_hub: LoopbackHub, api: HfApi, repo: str) -> None:
    top = {e.path: type(e).__name__ for e in api.list_repo_tree(repo)}
    assert top == {"config.json": "RepoFile", "weights": "RepoFolder"}

    everything = {e.path: e for e in api.list_repo_tree(repo, recursive=True)}
    assert set(everything) == {"config.json", "weights", "weights/lens.safetensors"}
    weights = everything["weights/lens.safetensors"]
    assert weights.lfs is not None and weights.lfs.sha256 == sha256(WEIGHTS)
    assert weights.xet_hash is None

    inside = list(api.list_repo_tree(repo, path_in_repo="weights", expand=True))
    assert [e.path for e in inside] == ["weights/lens.safetensors"]
    assert inside[0].last_commit is not None and inside[0].last_commit.oid == loopback_hub.head(repo)

    infos = api.get_paths_info(repo, ["config.json", "weights", "missing.txt"])
    assert [(type(e).__name__, e.path) for e in infos] == [("RepoFile", "config.json"), ("RepoFolder", "weights")]
    assert infos[0].blob_id == git_blob_id(CONFIG)


# ---------------------------------------------------------------------------------------------------- downloads


def test_download_at_branch_tag_and_commit(loopback_hub: LoopbackHub, repo: str) -> None:
    first = loopback_hub.head(repo)
    loopback_hub.create_tag(repo, "v1")
    loopback_hub.create_branch(repo, "feature/x")  # a quoted "feature%2Fx" in URLs
    loopback_hub.commit_files(repo, {"config.json": b'{"d_model": 16}'})

    assert read(hf_hub_download(repo, "config.json")) == b'{"d_model": 16}'
    assert read(hf_hub_download(repo, "config.json", revision="v1")) == CONFIG
    assert read(hf_hub_download(repo, "config.json", revision="feature/x")) == CONFIG
    assert read(hf_hub_download(repo, "config.json", revision=first)) == CONFIG
    weights = hf_hub_download(repo, "weights/lens.safetensors", revision="v1")
    assert read(weights) == WEIGHTS
    assert Path(weights).resolve().name == sha256(WEIGHTS)  # LFS blobs are cached under their sha256


def test_cached_download_at_commit_makes_no_request(loopback_hub: LoopbackHub, repo: str) -> None:
    sha = loopback_hub.head(repo)
    first = hf_hub_download(repo, "weights/lens.safetensors", revision=sha)
    assert loopback_hub.requests  # the first one did go to the server
    loopback_hub.clear_log()

    again = hf_hub_download(repo, "weights/lens.safetensors", revision=sha)

    assert again == first
    assert loopback_hub.requests == []


def test_snapshot_download(loopback_hub: LoopbackHub, repo: str) -> None:
    folder = Path(snapshot_download(repo))
    assert folder.name == loopback_hub.head(repo)
    assert read(folder / "config.json") == CONFIG
    assert read(folder / "weights" / "lens.safetensors") == WEIGHTS

    loopback_hub.clear_log()
    assert Path(snapshot_download(repo, revision=folder.name)) == folder
    assert loopback_hub.requests == []  # the tree listing of a commit is cached too


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_space_repo_with_subfolder(loopback_hub: LoopbackHub, api: HfApi) -> None:
    space = f"{LOOPBACK_USER}/demo"
    url = api.create_repo(space, repo_type="space", space_sdk="static")
    assert url.repo_type == "space"
    image = b"\x89PNG\r\n\x1a\n" + bytes(100)
    api.create_commit(
        space,
        [
            CommitOperationAdd("README.md", b"---\ntitle: demo\nsdk: static\n---\n"),  # validated by the server
            CommitOperationAdd("assets/index.html", b"<html></html>"),
            CommitOperationAdd("assets/logo.png", image),
        ],
        commit_message="site",
        repo_type="space",
    )
    assert loopback_hub.file_entry(space, "assets/logo.png", repo_type="space").lfs
    assert any(r.path == f"/spaces/{space}.git/info/lfs/objects/batch" for r in loopback_hub.requests)

    html = hf_hub_download(space, "index.html", subfolder="assets", repo_type="space")
    assert read(html) == b"<html></html>"
    assert read(hf_hub_download(space, "logo.png", subfolder="assets", repo_type="space")) == image
    assert api.space_info(space).sha == loopback_hub.head(space, repo_type="space")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(space)  # right id, wrong type


def test_errors_map_to_client_exceptions(api: HfApi, repo: str) -> None:
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{LOOPBACK_USER}/missing", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "config.json", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError) as info:
        hf_hub_download(repo, "no-such-file.json")
    assert isinstance(info.value, HfHubHTTPError)  # RemoteEntryNotFoundError, not a local cache miss
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"{LOOPBACK_USER}/missing")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_commits(repo, revision="0" * 40)
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo, path_in_repo="nowhere"))


def test_parse_safetensors_metadata_with_range_requests(loopback_hub: LoopbackHub, api: HfApi) -> None:
    def safetensors_bytes(metadata: dict[str, str]) -> bytes:
        header = {
            "__metadata__": metadata,
            "layer.0.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        }
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + bytes(16)

    small = safetensors_bytes({"format": "pt"})
    big = safetensors_bytes({"format": "pt", "padding": "x" * 150_000})  # header beyond the first 100 kB read
    loopback_hub.commit_files(REPO, {"small.safetensors": small, "big.safetensors": big})
    loopback_hub.clear_log()

    for name in ("small.safetensors", "big.safetensors"):
        meta = api.parse_safetensors_file_metadata(REPO, name)
        assert meta.metadata["format"] == "pt"
        assert meta.tensors["layer.0.weight"].shape == [2, 2]
        assert meta.tensors["layer.0.weight"].dtype == "F32"

    ranges = [(r.status, r.range) for r in loopback_hub.requests]
    assert ranges[0] == (206, "bytes=0-100000")
    assert ranges[1] == (206, "bytes=0-100000")
    assert ranges[2][0] == 206 and ranges[2][1].startswith("bytes=8-")
    assert len(ranges) == 3


# ---------------------------------------------------------------------------------------------------- auth


@pytest.fixture
def auth_hub(tmp_path: Path) -> Iterator[LoopbackHub]:
    hub = LoopbackHub(tokens={"alice-token": "alice", "bob-token": "bob"}, orgs={"alice": ["lab"]})
    # No HF_TOKEN in this environment: every call passes its token explicitly.
    with hub, hub_environment(hub, tmp_path / "hf_home"):
        yield hub


def test_auth_for_writes_and_whoami(auth_hub: LoopbackHub) -> None:
    api = HfApi()

    with pytest.raises(HfHubHTTPError) as missing:
        api.create_repo("alice/private", private=True)
    assert missing.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as bad:
        api.create_repo("alice/private", token="wrong-token")
    assert bad.value.response.status_code == 401
    assert "Invalid credentials" in str(bad.value)
    with pytest.raises(HfHubHTTPError) as forbidden:
        api.create_repo("alice/private", token="bob-token")
    assert forbidden.value.response.status_code == 403

    api.create_repo("alice/private", private=True, token="alice-token")
    api.create_repo("lab/shared", token="alice-token")  # one of alice's orgs
    api.upload_file(path_or_fileobj=b"s", path_in_repo="s.txt", repo_id="alice/private", token="alice-token")
    with pytest.raises(HfHubHTTPError) as no_token_commit:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="lab/shared")
    assert no_token_commit.value.response.status_code == 401

    # A private repo is invisible to anonymous users and to other users.
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/private")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/private", "s.txt", token="bob-token")
    assert read(hf_hub_download("alice/private", "s.txt", token="alice-token")) == b"s"

    assert api.whoami(token="alice-token")["name"] == "alice"
    assert [o["name"] for o in api.whoami(token="alice-token")["orgs"]] == ["lab"]
    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        api.whoami(token="wrong-token")


def test_fixture_exports_a_valid_token(loopback_hub: LoopbackHub, api: HfApi) -> None:
    assert os.environ["HF_TOKEN"] == LOOPBACK_TOKEN
    assert api.whoami()["name"] == LOOPBACK_USER
    assert loopback_hub.tokens == {LOOPBACK_TOKEN: LOOPBACK_USER}


# ---------------------------------------------------------------------------------------------------- faults


@pytest.mark.dependency_internals  # huggingface_hub's retry sequence
def test_status_500_on_metadata_is_retried_but_on_download_is_raised(loopback_hub: LoopbackHub, repo: str) -> None:
    # hf_hub_download falls back to a second HEAD (with retries) when the first one fails with a 5xx.
    loopback_hub.inject("HEAD", r"/resolve/", "status", status=500)
    assert read(hf_hub_download(repo, "config.json")) == CONFIG
    assert [(r.method, r.status) for r in loopback_hub.requests] == [("HEAD", 500), ("HEAD", 200), ("GET", 200)]

    # ...but the GET that streams the file only retries 408/429: a 500 reaches the caller.
    loopback_hub.inject("GET", r"/resolve/", "status", status=500)
    with pytest.raises(HfHubHTTPError) as info:
        hf_hub_download(repo, "weights/lens.safetensors")
    assert info.value.response.status_code == 500
    assert loopback_hub.faults == []


@pytest.mark.dependency_internals  # huggingface_hub's retry sequence
def test_truncated_body_is_resumed_once_then_raised(loopback_hub: LoopbackHub, repo: str, tmp_path: Path) -> None:
    # One truncation: the client sees a protocol error, waits 1 s and downloads again.
    loopback_hub.inject("GET", r"/resolve/", "truncate")
    assert read(hf_hub_download(repo, "weights/lens.safetensors")) == WEIGHTS
    assert [r.faults for r in loopback_hub.requests if r.method == "GET"] == [("truncate",), ()]

    # Truncated every time: after 5 retries (~5 s) the error surfaces and nothing complete is left in the cache.
    cache = tmp_path / "cache"
    loopback_hub.inject("GET", r"/resolve/", "truncate", times=6)
    with pytest.raises(httpx2.RemoteProtocolError):
        hf_hub_download(repo, "weights/lens.safetensors", cache_dir=cache)
    assert blobs_and_snapshots(cache) == []
    assert loopback_hub.faults == []


def test_corrupted_body_is_not_detected_by_the_client(loopback_hub: LoopbackHub, repo: str) -> None:
    loopback_hub.inject("GET", r"/resolve/", "corrupt")
    path = hf_hub_download(repo, "weights/lens.safetensors")
    got = read(path)
    assert len(got) == len(WEIGHTS)  # the client only checks the size...
    assert got != WEIGHTS  # ...so corrupted bytes land in the cache
    assert sha256(got) != Path(path).resolve().name


def test_corrupt_stored_file(loopback_hub: LoopbackHub, repo: str) -> None:
    loopback_hub.corrupt_file(repo, "weights/lens.safetensors")
    served = read(hf_hub_download(repo, "weights/lens.safetensors"))
    assert len(served) == len(WEIGHTS) and served != WEIGHTS
    assert loopback_hub.file_entry(repo, "weights/lens.safetensors").sha256 == sha256(WEIGHTS)


def test_delay(loopback_hub: LoopbackHub, api: HfApi, repo: str) -> None:
    loopback_hub.inject("GET", r"/api/models/", "delay", seconds=0.4)
    start = time.monotonic()
    api.model_info(repo)
    assert time.monotonic() - start >= 0.4
    assert loopback_hub.requests[-1].faults == ("delay",)


def test_inject_rejects_bad_arguments(loopback_hub: LoopbackHub) -> None:
    with pytest.raises(ValueError, match="kind"):
        loopback_hub.inject(kind="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        loopback_hub.inject(times=0)


# ---------------------------------------------------------------------------------------------------- plumbing


def test_hub_environment_patches_and_restores(tmp_path: Path) -> None:
    endpoint, cache, offline = constants.ENDPOINT, constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
    env_before = os.environ.get("HF_ENDPOINT")
    with LoopbackHub() as hub, hub_environment(hub, tmp_path / "home") as hub_cache:
        assert constants.ENDPOINT == hub.endpoint == os.environ["HF_ENDPOINT"]
        assert constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith(hub.endpoint + "/")
        assert constants.HF_HUB_CACHE == str(hub_cache) == str(tmp_path / "home" / "hub")
        assert Path(constants.HF_TOKEN_PATH) == tmp_path / "home" / "token"
        assert constants.HF_HUB_DISABLE_XET is True
        assert "HF_TOKEN" not in os.environ
    restored = (constants.ENDPOINT, constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE)
    assert restored == (endpoint, cache, offline)
    assert os.environ.get("HF_ENDPOINT") == env_before


def test_store_survives_a_restart(tmp_path: Path) -> None:
    with LoopbackHub(tmp_path / "store") as hub:
        sha = hub.commit_files("me/kept", {"a.txt": b"a", "b.bin": WEIGHTS})
        hub.create_tag("me/kept", "v1")
    with LoopbackHub(tmp_path / "store") as hub:
        assert hub.head("me/kept") == sha
        assert hub.tags("me/kept") == {"v1": sha}
        assert hub.read_file("me/kept", "b.bin", "v1") == WEIGHTS
