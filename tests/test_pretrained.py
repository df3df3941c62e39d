"""from_pretrained end to end against the loopback Hub, driven by the real huggingface_hub client."""

import ctypes
import ctypes.util
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import (
    BASE,
    LENS_REPO,
    legacy_entry,
    lens_entry,
    random_lens,
    same_outputs,
    upload,
    write_old,
)
from huggingface_hub import HfApi, constants
from tiny_models import tiny_model

from lens_hub import IncompatibleLensError, LegacyFormatError, TunedLens, __version__
from lens_hub.errors import (
    AmbiguousNameError,
    ChecksumMismatchError,
    HubUnreachableError,
    LensNotFoundError,
    NotPinnedError,
    OfflineNotCachedError,
    UnknownVersionError,
    UnverifiedLensWarning,
)
from lens_hub.hub.pretrained import download
from lens_hub.registry.schema import RegistryEntry
from lens_hub.registry.store import Registry, write_entry

pytestmark = pytest.mark.usefixtures("own_lens_cache")


def test_alias_loads_the_published_lens_then_the_cache_serves_it_with_no_request(loopback_hub, published, model):
    lens, _, commit, registry = published
    loaded = TunedLens.from_pretrained("TINY-LLAMA", model=model, registry=registry)
    assert same_outputs(lens, loaded, model)
    assert loaded.config == lens.config
    assert any(commit in r.path for r in loopback_hub.requests)
    loopback_hub.clear_log()
    again = TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    assert loopback_hub.requests == []
    assert same_outputs(lens, again, model)


class _KernelOpens:
    """Counts how often the kernel opens and reads each of some files, whoever asks (Python, safetensors' Rust, C).

    Linux inotify on the files themselves (a snapshot link is followed to its blob): ``IN_OPEN`` per open,
    ``IN_ACCESS`` per read call. A close is watched too, so that two opens in a row are never merged into one event.
    """

    _OPEN, _ACCESS, _CLOSE = 0x20, 0x01, 0x10  # IN_OPEN, IN_ACCESS, IN_CLOSE_NOWRITE

    def __init__(self, *paths: Path) -> None:
        if not sys.platform.startswith("linux"):
            pytest.skip("counts file opens with Linux inotify")
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            pytest.skip(f"inotify unavailable: {os.strerror(ctypes.get_errno())}")
        self._names = {}
        for path in paths:
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), self._OPEN | self._ACCESS | self._CLOSE)
            assert wd >= 0, os.strerror(ctypes.get_errno())
            self._names[wd] = path.name
        self.opens: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()

    def collect(self) -> None:
        """Take in the events so far."""
        while True:
            try:
                buf = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(buf):
                wd, mask, _cookie, length = struct.unpack_from("iIII", buf, offset)
                offset += 16 + length
                assert not mask & 0x4000, "inotify queue overflowed"  # IN_Q_OVERFLOW
                if mask & self._OPEN:
                    self.opens[self._names[wd]] += 1
                if mask & self._ACCESS:
                    self.reads[self._names[wd]] += 1

    def close(self) -> None:
        os.close(self._fd)


def test_a_cached_lens_is_read_once_per_load_and_verified_every_time(loopback_hub, published, model):
    """Each file of a cached lens is opened once per load: its bytes are hashed, parsed and loaded from one read.

    Before, the weights were opened five times (the sha256, a header check and a NaN scan in download, a header check
    and the load in core's ``load``), and what was hashed was not what was loaded.
    """
    lens, lens_dir, _, registry = published
    TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)  # downloads
    snapshot = next(Path(constants.HF_HUB_CACHE).glob("models--loopback--tiny-llama-lens/snapshots/*"))
    counter = _KernelOpens(snapshot / "lens.safetensors", snapshot / "config.json")
    try:
        loopback_hub.clear_log()
        loaded = TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
        counter.collect()
    finally:
        counter.close()
    assert loopback_hub.requests == []
    assert same_outputs(lens, loaded, model)
    assert counter.opens == {"lens.safetensors": 1, "config.json": 1}
    assert counter.reads["lens.safetensors"] >= 1
    # Verified every time all the same: a swapped cached file is caught at the next load (and evicted).
    blob = (snapshot / "lens.safetensors").resolve()
    other = random_lens(model, seed=7).save(lens_dir.parent / "other") / "lens.safetensors"
    assert other.stat().st_size == blob.stat().st_size
    blob.write_bytes(other.read_bytes())
    with pytest.raises(ChecksumMismatchError, match="lens.safetensors failed verification .*sha256"):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    assert not blob.exists()
    assert same_outputs(lens, TunedLens.from_pretrained("tiny-llama", model=model, registry=registry), model)


def test_every_download_names_lens_hub_and_its_version(loopback_hub, published, model):
    _, _, commit, registry = published
    loopback_hub.clear_log()
    TunedLens.from_pretrained(f"hf://{LENS_REPO}", model=model)  # repo_info for the commit, then the files
    TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    seen = loopback_hub.requests
    assert any("/api/models/" in r.path for r in seen)
    assert any(commit in r.path and r.path.endswith("lens.safetensors") for r in seen)
    for r in seen:
        assert r.user_agent is not None and f"lens-hub/{__version__}" in r.user_agent, (r.path, r.user_agent)


def test_offline_mode_uses_the_cache_and_explains_a_miss(loopback_hub, published, model, monkeypatch):
    _, _, _, registry = published
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineNotCachedError, match="lens-hub download"):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loopback_hub.clear_log()
    TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    assert loopback_hub.requests == []


def test_without_a_model_the_base_model_is_loaded_from_the_hub(loopback_hub, published, model, tmp_path):
    lens, _, _, registry = published
    model.save_pretrained(tmp_path / "base")
    upload(tmp_path / "base", BASE)
    loaded = TunedLens.from_pretrained("tiny-llama", registry=registry)
    assert same_outputs(lens, loaded, loaded.unembed.parts.model)
    assert torch.equal(loaded.unembed.parts.output_embedding.weight, model.lm_head.weight)


def test_from_model_and_pretrained_finds_the_entry_by_the_models_id(loopback_hub, published, model):
    lens, _, _, registry = published
    assert same_outputs(lens, TunedLens.from_model_and_pretrained(model, registry=registry), model)
    other = tiny_model("llama")
    other.config._name_or_path = "loopback/tiny-lama"
    with pytest.raises(LensNotFoundError, match="Did you mean 'loopback/tiny-llama'"):
        TunedLens.from_model_and_pretrained(other, registry=registry)


def test_corrupted_file_on_the_hub_is_caught_and_not_left_in_the_cache(loopback_hub, published, model, tmp_path):
    lens, lens_dir, _, registry = published
    loopback_hub.corrupt_file(LENS_REPO, "lens.safetensors")
    with pytest.raises(ChecksumMismatchError, match="lens.safetensors failed verification .*sha256"):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    cache = Path(constants.HF_HUB_CACHE)
    good = hashlib.sha256((lens_dir / "lens.safetensors").read_bytes()).hexdigest()
    cached = [
        p
        for p in cache.rglob("*")
        if p.is_file() and p.stat().st_size == (lens_dir / "lens.safetensors").stat().st_size
    ]
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == good for p in cached)  # nothing corrupt stays
    loopback_hub.corrupt_file(LENS_REPO, "lens.safetensors", data=(lens_dir / "lens.safetensors").read_bytes())
    assert same_outputs(lens, TunedLens.from_pretrained("tiny-llama", model=model, registry=registry), model)


def test_corruption_in_transit_is_caught(loopback_hub, published, model):
    _, _, _, registry = published
    loopback_hub.inject("GET", r"lens\.safetensors$", kind="corrupt")
    with pytest.raises(ChecksumMismatchError):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)  # the retry downloads cleanly


def test_registry_checksum_that_differs_from_the_file_is_refused(loopback_hub, published, model, tmp_path):
    _lens, lens_dir, commit, _ = published
    entry = lens_entry(lens_dir, commit).model_dump()
    entry["lenses"][0]["files"][1]["sha256"] = "0" * 64
    write_entry(tmp_path / "reg2", RegistryEntry.model_validate(entry))
    with pytest.raises(ChecksumMismatchError, match="expected 0000"):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "reg2")


def test_lens_that_contradicts_its_entry_or_its_model_is_refused(loopback_hub, published, model, tmp_path):
    _lens, lens_dir, commit, registry = published
    write_entry(tmp_path / "reg2", lens_entry(lens_dir, commit, facts={"vocab_size": 1000}))
    # Through download (no model): from_pretrained(model=...) refuses this entry for the model before fetching.
    with pytest.raises(IncompatibleLensError, match="the registry says vocab_size 1000 but the lens says 96"):
        download("tiny-llama", registry=tmp_path / "reg2")
    with pytest.raises(IncompatibleLensError, match="fingerprint differs"):
        TunedLens.from_pretrained("tiny-llama", model=tiny_model("llama", seed=5), registry=registry)


def test_versions_default_and_unknown(loopback_hub, published, model, tmp_path):
    lens, lens_dir, commit1, _ = published
    lens2 = random_lens(model, seed=1)
    dir2 = lens2.save(tmp_path / "lens2")
    commit2 = upload(dir2, LENS_REPO, subfolder="v2")
    v1 = lens_entry(lens_dir, commit1).lenses[0].model_dump()
    v2 = {**lens_entry(dir2, commit2, subfolder="v2").lenses[0].model_dump(), "version": "1.1.0"}
    v1["default"] = False
    write_entry(tmp_path / "reg2", lens_entry(lens_dir, commit1, versions=[v1, v2]))
    reg = tmp_path / "reg2"
    assert same_outputs(lens2, TunedLens.from_pretrained("tiny-llama", model=model, registry=reg), model)
    assert same_outputs(
        lens, TunedLens.from_pretrained("tiny-llama", version="1.0.0", model=model, registry=reg), model
    )
    with pytest.raises(UnknownVersionError, match=r"no lens version '2.0.0'; available: 1.0.0, 1.1.0"):
        TunedLens.from_pretrained("tiny-llama", version="2.0.0", model=model, registry=reg)


def test_unknown_and_ambiguous_names(loopback_hub, published, model, tmp_path, monkeypatch):
    _, _, _, registry = published
    with pytest.raises(LensNotFoundError, match="Did you mean 'tiny-llama'"):
        TunedLens.from_pretrained("tiny-lama", model=model, registry=registry)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-llama").mkdir()
    with pytest.raises(AmbiguousNameError, match="Write ./tiny-llama"):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    model.save_pretrained(tmp_path / "base")
    upload(tmp_path / "base", "loopback/unlisted-model")
    with pytest.raises(LensNotFoundError, match="holds no lens"):  # a model repo is not a lens repo
        TunedLens.from_pretrained("loopback/unlisted-model", model=model, registry=registry)
    with pytest.raises(LensNotFoundError, match="repository does not exist"):
        TunedLens.from_pretrained("loopback/nothing-here", model=model, registry=registry)


def test_hub_locations_and_local_directories(loopback_hub, published, model, tmp_path):
    lens, lens_dir, commit, registry = published
    commit2 = upload(lens_dir, LENS_REPO, subfolder="nested/lens")
    for name in (f"hf://{LENS_REPO}", f"hf://{LENS_REPO}@{commit}", f"hf://{LENS_REPO}@main/nested/lens", LENS_REPO):
        assert same_outputs(lens, TunedLens.from_pretrained(name, model=model, registry=registry), model), name
    assert commit2 != commit
    HfApi().create_tag(LENS_REPO, tag="nested/v1.0.0", revision=commit2)  # a tag with a slash, percent-encoded
    assert same_outputs(
        lens, TunedLens.from_pretrained(f"hf://{LENS_REPO}@nested%2Fv1.0.0/nested/lens", model=model), model
    )
    assert same_outputs(lens, TunedLens.from_pretrained(str(lens_dir), model=model, registry=registry), model)
    with pytest.raises(NotPinnedError, match="names no commit"):
        TunedLens.from_pretrained(f"hf://{LENS_REPO}", model=model, registry=registry, pinned_only=True)
    with pytest.raises(LensNotFoundError, match="revision does not exist"):
        TunedLens.from_pretrained(f"hf://{LENS_REPO}@{'a' * 40}", model=model, registry=registry)


def test_hub_failures_are_reported_as_unreachable(loopback_hub, published, model):
    _, _, _, registry = published
    # A failing download (GET) surfaces at once; the client retries failing HEADs for ~25 s first, same mapping.
    loopback_hub.inject("GET", r"/resolve/", kind="status", status=500, times=50)
    with pytest.raises(HubUnreachableError, match=r"the Hub failed while fetching .*config.json \(HTTP 500\)"):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)


def test_transient_error_is_retried_by_the_client(loopback_hub, published, model):
    lens, _, _, registry = published
    loopback_hub.inject("HEAD", r"/resolve/", kind="status", status=500, times=1)
    assert same_outputs(lens, TunedLens.from_pretrained("tiny-llama", model=model, registry=registry), model)


def test_unverified_legacy_lens_is_converted_at_each_load_and_nothing_converted_is_kept(
    loopback_hub, model, tmp_path, monkeypatch
):
    lens = random_lens(model)
    upload(write_old(tmp_path / "old", lens), "loopback/tuned-lens", subfolder=f"lens/{BASE}", repo_type="space")
    write_entry(tmp_path / "reg", legacy_entry())
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where the conversion happens, to look for leftovers
    (tmp_path / "tmp").mkdir()
    tempfile.tempdir = None
    try:
        with pytest.warns(UnverifiedLensWarning, match="fetched from main"):
            loaded = TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "reg")
    finally:
        tempfile.tempdir = None
    assert same_outputs(lens, loaded, model)
    assert not list((tmp_path / "lens_hub_cache").rglob("lens.safetensors"))  # nothing cached to plant into
    assert not list((tmp_path / "tmp").iterdir())  # the conversion was read into memory and deleted
    with pytest.raises(NotPinnedError, match="not pinned"):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "reg", pinned_only=True)
    write_entry(tmp_path / "bad", legacy_entry({"num_layers": 4}))
    # Through download (no model): from_pretrained(model=...) refuses this entry for the model before fetching.
    with pytest.warns(UnverifiedLensWarning), pytest.raises(IncompatibleLensError, match="num_layers 4"):
        download("tiny-llama", registry=tmp_path / "bad")


@pytest.mark.filterwarnings("ignore::lens_hub.errors.UnverifiedLensWarning")
def test_unsafe_legacy_pickle_from_the_hub_is_refused(loopback_hub, model, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"d_model": 32, "num_hidden_layers": 3}))
    (old / "params.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'echo hi'\ntR.")
    upload(old, "loopback/tuned-lens", subfolder=f"lens/{BASE}", repo_type="space")
    write_entry(tmp_path / "reg", legacy_entry())
    with pytest.raises(LegacyFormatError, match="weights_only=True"):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "reg")
    assert not list((tmp_path / "lens_hub_cache").rglob("lens.safetensors"))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lens_hub.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_download_then_audit(loopback_hub, published):
    _lens, _, _, registry = published
    done = _cli("download", "tiny-llama", "--registry", str(registry))
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout
    assert (Path(done.stdout.strip().splitlines()[-1]) / "lens.safetensors").is_file()
    audit = _cli("registry", "audit", "--remote", "tiny-llama", "--registry", str(registry))
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "✓ loopback/tiny-llama v1.0.0" in audit.stdout
    loopback_hub.commit_files(LENS_REPO, {"lens.safetensors": b"x" * 10})  # a new main does not matter: pinned
    assert _cli("registry", "audit", "--remote", "--all", "--registry", str(registry)).returncode == 0
    loopback_hub.corrupt_file(LENS_REPO, "config.json", revision=published[2])
    drift = _cli("registry", "audit", "--remote", "tiny-llama", "--registry", str(registry))
    assert drift.returncode == 1
    assert "config.json: sha256" in drift.stdout


def test_cli_audit_of_an_unpinned_entry_reports_what_to_pin(loopback_hub, model, tmp_path):
    upload(write_old(tmp_path / "old", random_lens(model)), "loopback/tuned-lens", f"lens/{BASE}", "space")
    write_entry(tmp_path / "reg", legacy_entry())
    audit = _cli("registry", "audit", "--remote", "tiny-llama", "--registry", str(tmp_path / "reg"))
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "unpinned; spaces/loopback/tuned-lens main is at" in audit.stdout
    assert "params.pt: size" in audit.stdout


def test_registry_object_can_be_passed(loopback_hub, published, model):
    lens, _, _, registry = published
    reg = Registry.load(registry)
    assert same_outputs(lens, TunedLens.from_pretrained("tiny-llama", model=model, registry=reg), model)
