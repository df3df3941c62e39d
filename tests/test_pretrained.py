"""from_pretrained end to end against the loopback Hub, driven by the real huggingface_hub client."""

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import random_lens, run_hidden
from huggingface_hub import CommitOperationAdd, HfApi, constants
from tiny_models import tiny_model

from lens_hub import IncompatibleLensError, LegacyFormatError, TunedLens
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
from lens_hub.testing import LOOPBACK_USER

BASE = f"{LOOPBACK_USER}/tiny-llama"
LENS_REPO = f"{LOOPBACK_USER}/tiny-llama-lens"

pytestmark = pytest.mark.usefixtures("own_lens_cache")


@pytest.fixture
def model():
    m = tiny_model("llama")
    m.config._name_or_path = BASE
    return m


def _upload(folder: Path, repo_id: str, subfolder: str = "", repo_type: str = "model", skip=()) -> str:
    """Publish every file of a folder (but ``skip``) in one commit with plain huggingface_hub calls; returns the
    commit."""
    api = HfApi()
    sdk = "static" if repo_type == "space" else None
    api.create_repo(repo_id, repo_type=repo_type, exist_ok=True, space_sdk=sdk)
    ops = [
        CommitOperationAdd(path_in_repo=f"{subfolder}/{f.name}" if subfolder else f.name, path_or_fileobj=str(f))
        for f in sorted(folder.iterdir())
        if f.name not in skip
    ]
    return api.create_commit(repo_id, ops, commit_message="add lens", repo_type=repo_type).oid


def _files(folder: Path, names):
    return [
        {
            "path": n,
            "size": (folder / n).stat().st_size,
            "sha256": hashlib.sha256((folder / n).read_bytes()).hexdigest(),
        }
        for n in names
    ]


def _entry(lens_dir: Path, commit: str, *, versions=None, facts=None, subfolder="", aliases=("tiny-llama",)):
    cfg = json.loads((lens_dir / "config.json").read_text())
    base_facts = {k: cfg[k] for k in ("model_type", "hidden_size", "num_layers", "vocab_size", "fingerprint")}
    version = {
        "version": "1.0.0",
        "default": True,
        "format": "safetensors",
        "status": "verified",
        "location": {"repo_id": LENS_REPO, "subfolder": subfolder, "revision": commit},
        "files": _files(lens_dir, ["config.json", "lens.safetensors"]),
    }
    return RegistryEntry.model_validate(
        {
            "model": BASE,
            "aliases": list(aliases),
            "facts": {**base_facts, **(facts or {})},
            "lenses": versions or [version],
        }
    )


@pytest.fixture
def published(loopback_hub, tmp_path, model):
    """A trained lens uploaded to the loopback Hub and described by a verified entry in a temporary registry."""
    lens = random_lens(model)
    lens_dir = lens.save(tmp_path / "lens")
    commit = _upload(lens_dir, LENS_REPO)
    registry = tmp_path / "registry"
    write_entry(registry, _entry(lens_dir, commit))
    return lens, lens_dir, commit, registry


def _same_outputs(a, b, model):
    out = run_hidden(model)
    with torch.no_grad():
        return all(torch.equal(a(out.hidden_states[i], i), b(out.hidden_states[i], i)) for i in range(a.num_layers))


def test_alias_loads_the_published_lens_then_the_cache_serves_it_with_no_request(loopback_hub, published, model):
    lens, _, commit, registry = published
    loaded = TunedLens.from_pretrained("TINY-LLAMA", model=model, registry=registry)
    assert _same_outputs(lens, loaded, model)
    assert loaded.config == lens.config
    assert any(commit in r.path for r in loopback_hub.requests)
    loopback_hub.clear_log()
    again = TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    assert loopback_hub.requests == []
    assert _same_outputs(lens, again, model)


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
    _upload(tmp_path / "base", BASE)
    loaded = TunedLens.from_pretrained("tiny-llama", registry=registry)
    assert _same_outputs(lens, loaded, loaded.unembed.parts.model)
    assert torch.equal(loaded.unembed.parts.output_embedding.weight, model.lm_head.weight)


def test_from_model_and_pretrained_finds_the_entry_by_the_models_id(loopback_hub, published, model):
    lens, _, _, registry = published
    assert _same_outputs(lens, TunedLens.from_model_and_pretrained(model, registry=registry), model)
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
    assert _same_outputs(lens, TunedLens.from_pretrained("tiny-llama", model=model, registry=registry), model)


def test_corruption_in_transit_is_caught(loopback_hub, published, model):
    _, _, _, registry = published
    loopback_hub.inject("GET", r"lens\.safetensors$", kind="corrupt")
    with pytest.raises(ChecksumMismatchError):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)  # the retry downloads cleanly


def test_registry_checksum_that_differs_from_the_file_is_refused(loopback_hub, published, model, tmp_path):
    _lens, lens_dir, commit, _ = published
    entry = _entry(lens_dir, commit).model_dump()
    entry["lenses"][0]["files"][1]["sha256"] = "0" * 64
    write_entry(tmp_path / "reg2", RegistryEntry.model_validate(entry))
    with pytest.raises(ChecksumMismatchError, match="expected 0000"):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "reg2")


def test_lens_that_contradicts_its_entry_or_its_model_is_refused(loopback_hub, published, model, tmp_path):
    _lens, lens_dir, commit, registry = published
    write_entry(tmp_path / "reg2", _entry(lens_dir, commit, facts={"vocab_size": 1000}))
    # Through download (no model): from_pretrained(model=...) refuses this entry for the model before fetching.
    with pytest.raises(IncompatibleLensError, match="the registry says vocab_size 1000 but the lens says 96"):
        download("tiny-llama", registry=tmp_path / "reg2")
    with pytest.raises(IncompatibleLensError, match="fingerprint differs"):
        TunedLens.from_pretrained("tiny-llama", model=tiny_model("llama", seed=5), registry=registry)


def test_versions_default_and_unknown(loopback_hub, published, model, tmp_path):
    lens, lens_dir, commit1, _ = published
    lens2 = random_lens(model, seed=1)
    dir2 = lens2.save(tmp_path / "lens2")
    commit2 = _upload(dir2, LENS_REPO, subfolder="v2")
    v1 = _entry(lens_dir, commit1).lenses[0].model_dump()
    v2 = {**_entry(dir2, commit2, subfolder="v2").lenses[0].model_dump(), "version": "1.1.0"}
    v1["default"] = False
    write_entry(tmp_path / "reg2", _entry(lens_dir, commit1, versions=[v1, v2]))
    reg = tmp_path / "reg2"
    assert _same_outputs(lens2, TunedLens.from_pretrained("tiny-llama", model=model, registry=reg), model)
    assert _same_outputs(
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
    _upload(tmp_path / "base", "loopback/unlisted-model")
    with pytest.raises(LensNotFoundError, match="holds no lens"):  # a model repo is not a lens repo
        TunedLens.from_pretrained("loopback/unlisted-model", model=model, registry=registry)
    with pytest.raises(LensNotFoundError, match="repository does not exist"):
        TunedLens.from_pretrained("loopback/nothing-here", model=model, registry=registry)


def test_hub_locations_and_local_directories(loopback_hub, published, model, tmp_path):
    lens, lens_dir, commit, registry = published
    commit2 = _upload(lens_dir, LENS_REPO, subfolder="nested/lens")
    for name in (f"hf://{LENS_REPO}", f"hf://{LENS_REPO}@{commit}", f"hf://{LENS_REPO}@main/nested/lens", LENS_REPO):
        assert _same_outputs(lens, TunedLens.from_pretrained(name, model=model, registry=registry), model), name
    assert commit2 != commit
    HfApi().create_tag(LENS_REPO, tag="nested/v1.0.0", revision=commit2)  # a tag with a slash, percent-encoded
    assert _same_outputs(
        lens, TunedLens.from_pretrained(f"hf://{LENS_REPO}@nested%2Fv1.0.0/nested/lens", model=model), model
    )
    assert _same_outputs(lens, TunedLens.from_pretrained(str(lens_dir), model=model, registry=registry), model)
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
    assert _same_outputs(lens, TunedLens.from_pretrained("tiny-llama", model=model, registry=registry), model)


def _write_old(folder: Path, lens: TunedLens):
    from lens_hub.core.legacy import export_legacy

    return export_legacy(lens, folder)


def _legacy_entry(facts=None):
    return RegistryEntry.model_validate(
        {
            "model": BASE,
            "aliases": ["tiny-llama"],
            "facts": {"model_type": "llama", "hidden_size": 32, "num_layers": 3, "vocab_size": 96, **(facts or {})},
            "lenses": [
                {
                    "version": "1.0.0",
                    "default": True,
                    "format": "tuned-lens-legacy",
                    "status": "unverified",
                    "location": {
                        "repo_id": "loopback/tuned-lens",
                        "repo_type": "space",
                        "subfolder": f"lens/{BASE}",
                        "revision": None,
                    },
                    "files": [{"path": "config.json"}, {"path": "params.pt"}],
                }
            ],
        }
    )


def test_unverified_legacy_lens_is_converted_at_each_load_and_nothing_converted_is_kept(
    loopback_hub, model, tmp_path, monkeypatch
):
    lens = random_lens(model)
    _upload(_write_old(tmp_path / "old", lens), "loopback/tuned-lens", subfolder=f"lens/{BASE}", repo_type="space")
    write_entry(tmp_path / "reg", _legacy_entry())
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where the conversion happens, to look for leftovers
    (tmp_path / "tmp").mkdir()
    tempfile.tempdir = None
    try:
        with pytest.warns(UnverifiedLensWarning, match="fetched from main"):
            loaded = TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "reg")
    finally:
        tempfile.tempdir = None
    assert _same_outputs(lens, loaded, model)
    assert not list((tmp_path / "lens_hub_cache").rglob("lens.safetensors"))  # nothing cached to plant into
    assert not list((tmp_path / "tmp").iterdir())  # the conversion was read into memory and deleted
    with pytest.raises(NotPinnedError, match="not pinned"):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "reg", pinned_only=True)
    write_entry(tmp_path / "bad", _legacy_entry({"num_layers": 4}))
    # Through download (no model): from_pretrained(model=...) refuses this entry for the model before fetching.
    with pytest.warns(UnverifiedLensWarning), pytest.raises(IncompatibleLensError, match="num_layers 4"):
        download("tiny-llama", registry=tmp_path / "bad")


@pytest.mark.filterwarnings("ignore::lens_hub.errors.UnverifiedLensWarning")
def test_unsafe_legacy_pickle_from_the_hub_is_refused(loopback_hub, model, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"d_model": 32, "num_hidden_layers": 3}))
    (old / "params.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'echo hi'\ntR.")
    _upload(old, "loopback/tuned-lens", subfolder=f"lens/{BASE}", repo_type="space")
    write_entry(tmp_path / "reg", _legacy_entry())
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
    _upload(_write_old(tmp_path / "old", random_lens(model)), "loopback/tuned-lens", f"lens/{BASE}", "space")
    write_entry(tmp_path / "reg", _legacy_entry())
    audit = _cli("registry", "audit", "--remote", "tiny-llama", "--registry", str(tmp_path / "reg"))
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "unpinned; spaces/loopback/tuned-lens main is at" in audit.stdout
    assert "params.pt: size" in audit.stdout


def test_registry_object_can_be_passed(loopback_hub, published, model):
    lens, _, _, registry = published
    reg = Registry.load(registry)
    assert _same_outputs(lens, TunedLens.from_pretrained("tiny-llama", model=model, registry=reg), model)
