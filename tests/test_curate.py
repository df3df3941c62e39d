"""Curation (``lens-hub registry add`` / ``registry pin``) against the loopback Hub: real HTTP, real files, no mocks.

Lenses are uploaded with plain huggingface_hub calls, adopted or pinned into a temporary registry, then loaded
back with ``TunedLens.from_pretrained`` through that registry.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import BASE, LENS_REPO, random_lens, run_hidden, upload
from huggingface_hub import HfApi
from tiny_models import tiny_model

from lens_hub import TunedLens
from lens_hub.core.legacy import export_legacy
from lens_hub.errors import CurateError, LensContentError, MissingLensFileError
from lens_hub.hub.curate import AdoptResult, adopt, pin
from lens_hub.registry.schema import RegistryEntry
from lens_hub.registry.store import Registry, entry_text, write_entry
from lens_hub.testing import LOOPBACK_USER

SPACE = f"{LOOPBACK_USER}/tuned-lens"
SPACE_DIR = f"lens/{BASE}"

pytestmark = pytest.mark.usefixtures("own_lens_cache")


@pytest.fixture
def model():
    m = tiny_model("llama")
    m.config._name_or_path = BASE
    return m


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same(a, b, model) -> bool:
    out = run_hidden(model)
    with torch.no_grad():
        return all(torch.equal(a(out.hidden_states[i], i), b(out.hidden_states[i], i)) for i in range(a.num_layers))


def _load(name: str, model, registry: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a verified entry loads without an UnverifiedLensWarning
        return TunedLens.from_pretrained(name, model=model, registry=registry)


# --- registry add: lens-hub format ---------------------------------------------------------------------------------


def test_adopt_pins_the_commit_of_a_moving_branch(loopback_hub, model, tmp_path):
    lens = random_lens(model)
    lens_dir = lens.save(tmp_path / "lens")
    commit = upload(lens_dir, LENS_REPO)
    reg = tmp_path / "registry"

    result = adopt(f"hf://{LENS_REPO}@main", registry=reg, aliases=["tiny-llama"])
    assert isinstance(result, AdoptResult)
    assert result.commit == commit
    assert result.written
    assert result.format == "safetensors"
    assert result.registry_file == reg / "loopback--tiny-llama.yaml"
    assert result.diff.startswith("--- /dev/null\n+++ b/loopback--tiny-llama.yaml")
    assert result.notes == []  # a lens-hub lens records every fact
    entry = Registry.load(reg).get("tiny-llama")
    v = entry.default_version
    assert (v.version, v.status, v.location.revision, v.location.repo_id) == ("1.0.0", "verified", commit, LENS_REPO)
    assert {f.path: (f.size, f.sha256) for f in v.files} == {
        n: ((lens_dir / n).stat().st_size, _sha(lens_dir / n)) for n in ("config.json", "lens.safetensors")
    }
    assert entry.facts.hidden_size == 32 and entry.facts.num_layers == lens.num_layers
    assert entry.facts.fingerprint == lens.config.fingerprint

    # main moves on: the entry still loads the commit it pinned
    other = random_lens(model, seed=7).save(tmp_path / "other")
    assert upload(other, LENS_REPO) != commit
    assert _same(lens, _load("tiny-llama", model, reg), model)

    # adopting main again adds the new commit as the next version, the default
    again = adopt(f"hf://{LENS_REPO}", registry=reg)
    assert again.version == "1.0.1"
    assert "-  default: true" in again.diff  # the old version is no longer the default
    assert _same(random_lens(model, seed=7), _load("tiny-llama", model, reg), model)
    assert _same(lens, TunedLens.from_pretrained("tiny-llama", version="1.0.0", model=model, registry=reg), model)
    with pytest.raises(CurateError, match="already pins this lens"):
        adopt(f"hf://{LENS_REPO}", registry=reg)
    upload(random_lens(model, seed=8).save(tmp_path / "third"), LENS_REPO)
    with pytest.raises(CurateError, match="already has version 1.0.0"):
        adopt(f"hf://{LENS_REPO}", registry=reg, version="1.0.0")


def test_dry_run_writes_nothing(loopback_hub, model, tmp_path):
    upload(random_lens(model).save(tmp_path / "lens"), LENS_REPO)
    result = adopt(f"hf://{LENS_REPO}", registry=tmp_path / "registry", dry_run=True)
    assert not result.written
    # A new file: every line of the entry is an addition, and the additions are exactly the entry's file.
    added = [line[1:] for line in result.diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    removed = [line for line in result.diff.splitlines()[2:] if line.startswith("-")]
    assert result.diff.startswith("--- /dev/null") and not removed
    assert "\n".join(added) + "\n" == entry_text(result.registry_file, result.entry)
    assert result.entry.default_version.status == "verified"
    assert not (tmp_path / "registry").exists()


def test_a_config_that_lies_about_its_shapes_is_refused(loopback_hub, model, tmp_path):
    lens_dir = random_lens(model).save(tmp_path / "lens")
    config = json.loads((lens_dir / "config.json").read_text())
    config["num_layers"] += 1  # the weights hold one translator fewer
    (lens_dir / "config.json").write_text(json.dumps(config))
    upload(lens_dir, LENS_REPO)
    with pytest.raises(LensContentError, match="does not match its config"):
        adopt(f"hf://{LENS_REPO}", registry=tmp_path / "registry")
    assert not (tmp_path / "registry").exists()


def test_a_legacy_config_that_lies_about_its_shapes_is_refused(loopback_hub, model, tmp_path):
    old = export_legacy(random_lens(model), tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    config["d_model"] = 64
    (old / "config.json").write_text(json.dumps(config))
    upload(old, SPACE, SPACE_DIR, "space")
    with pytest.raises(LensContentError, match=r"has shape \[32, 32\], expected \[64, 64\]"):
        adopt(f"hf://spaces/{SPACE}/{SPACE_DIR}", registry=tmp_path / "registry")


def test_missing_files_are_refused(loopback_hub, model, tmp_path):
    lens_dir = random_lens(model).save(tmp_path / "lens")
    upload(lens_dir, LENS_REPO, skip={"lens.safetensors"})
    with pytest.raises(MissingLensFileError, match="neither lens.safetensors .* nor params.pt"):
        adopt(f"hf://{LENS_REPO}", registry=tmp_path / "registry")
    upload(lens_dir, LENS_REPO, subfolder="nested", skip={"config.json"})
    with pytest.raises(MissingLensFileError, match="has no config.json"):
        adopt(f"hf://{LENS_REPO}@main/nested", registry=tmp_path / "registry")
    with pytest.raises(CurateError, match="not a Hub location"):
        adopt(LENS_REPO, registry=tmp_path / "registry")


# --- registry add: legacy tuned-lens format -----------------------------------------------------------------------


def test_adopt_a_legacy_lens_with_and_without_the_model(loopback_hub, model, tmp_path):
    lens = random_lens(model)
    commit = upload(export_legacy(lens, tmp_path / "old"), SPACE, SPACE_DIR, "space")
    location = f"hf://spaces/{SPACE}@main/{SPACE_DIR}"

    bare = adopt(location, registry=tmp_path / "bare")
    assert bare.format == "tuned-lens-legacy"
    assert bare.commit == commit
    assert any("unknown: model_type, vocab_size, fingerprint" in n and "--model" in n for n in bare.notes)
    facts = bare.entry.facts
    assert (facts.hidden_size, facts.num_layers, facts.model_type, facts.fingerprint) == (32, 3, None, None)
    v = bare.entry.default_version
    assert v.status == "verified"
    assert [f.path for f in v.files] == ["config.json", "params.pt"]
    assert all(f.sha256 and f.size for f in v.files)
    assert _same(lens, _load(BASE, model, tmp_path / "bare"), model)

    full = adopt(location, model=model, registry=tmp_path / "full")
    assert full.notes == []
    assert full.entry.facts.model_type == "llama"
    assert full.entry.facts.vocab_size == 96
    assert full.entry.facts.fingerprint == lens.config.fingerprint
    with pytest.raises(LensContentError, match="num_layers"):  # a model the lens does not fit
        adopt(location, model=tiny_model("llama", num_hidden_layers=4), registry=tmp_path / "other")


def test_a_legacy_lens_naming_a_local_path_needs_base_model(loopback_hub, model, tmp_path):
    lens = random_lens(model)
    old = export_legacy(lens, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    config["base_model_name_or_path"] = "/home/someone/models/tiny"
    (old / "config.json").write_text(json.dumps(config))
    upload(old, SPACE, SPACE_DIR, "space")
    location = f"hf://spaces/{SPACE}/{SPACE_DIR}"
    with pytest.raises(CurateError, match="local path .*--base-model"):
        adopt(location, registry=tmp_path / "registry")
    result = adopt(location, base_model=BASE, registry=tmp_path / "registry")
    assert result.entry.model == BASE
    with pytest.raises(CurateError, match="not a Hub model id"):
        adopt(location, base_model="../x", registry=tmp_path / "registry")


def test_convert_to_publishes_the_safe_copy_as_the_default(loopback_hub, model, tmp_path):
    lens = random_lens(model)
    upload(export_legacy(lens, tmp_path / "old"), SPACE, SPACE_DIR, "space")
    reg = tmp_path / "registry"
    safe_repo = f"{LOOPBACK_USER}/tiny-llama-safe"
    result = adopt(f"hf://spaces/{SPACE}/{SPACE_DIR}", model=model, registry=reg, convert_to=safe_repo)
    assert result.converted is not None
    assert result.converted.commit is not None
    entry = Registry.load(reg).get(BASE)
    assert [(v.version, v.format, v.default) for v in entry.lenses] == [
        ("1.0.0", "tuned-lens-legacy", False),
        ("1.0.1", "safetensors", True),
    ]
    assert entry.default_version.location.repo_id == safe_repo
    assert "lens.safetensors" in HfApi().list_repo_files(safe_repo)
    assert _same(lens, _load(BASE, model, reg), model)


# --- registry pin -------------------------------------------------------------------------------------------------


def _legacy_entry(files=None, facts=None, revision=None) -> RegistryEntry:
    return RegistryEntry.model_validate(
        {
            "model": BASE,
            "aliases": ["tiny-llama"],
            "facts": {"model_type": "llama", "hidden_size": 32, "num_layers": 3, **(facts or {})},
            "lenses": [
                {
                    "version": "1.0.0",
                    "default": True,
                    "format": "tuned-lens-legacy",
                    "status": "unverified",
                    "location": {"repo_id": SPACE, "repo_type": "space", "subfolder": SPACE_DIR, "revision": revision},
                    "files": files or [{"path": "config.json"}, {"path": "params.pt"}],
                    "notes": "Nobody here has downloaded it.",
                }
            ],
        }
    )


def test_pin_verifies_an_unverified_legacy_entry(loopback_hub, model, tmp_path):
    lens = random_lens(model)
    old = export_legacy(lens, tmp_path / "old")
    commit = upload(old, SPACE, SPACE_DIR, "space")
    reg = tmp_path / "registry"
    write_entry(reg, _legacy_entry())

    result = pin("tiny-llama", model=model, registry=reg)
    assert result.commit == commit
    assert result.written
    assert "-    revision: null" in result.diff
    assert f"+    revision: '{commit}'" in result.diff or f"+    revision: {commit}" in result.diff
    entry = Registry.load(reg).get("tiny-llama")
    v = entry.default_version
    assert (v.status, v.location.revision, v.notes) == ("verified", commit, None)
    assert {f.path: f.sha256 for f in v.files} == {n: _sha(old / n) for n in ("config.json", "params.pt")}
    assert entry.facts.vocab_size == 96  # learnt from the model
    assert entry.facts.fingerprint == lens.config.fingerprint
    assert _same(lens, _load("tiny-llama", model, reg), model)
    with pytest.raises(CurateError, match="is verified, not unverified"):
        pin("tiny-llama", registry=reg)


def test_pin_refuses_files_that_no_longer_match_the_entry(loopback_hub, model, tmp_path):
    old = export_legacy(random_lens(model), tmp_path / "old")
    upload(old, SPACE, SPACE_DIR, "space")
    stale = [
        {"path": "config.json", "size": (old / "config.json").stat().st_size},
        {"path": "params.pt", "sha256": "0" * 64},
    ]
    write_entry(tmp_path / "hashes", _legacy_entry(files=stale))
    with pytest.raises(LensContentError, match=r"params.pt: sha256 .* the entry records 0000"):
        pin("tiny-llama", registry=tmp_path / "hashes")
    assert Registry.load(tmp_path / "hashes").get("tiny-llama").default_version.status == "unverified"

    write_entry(tmp_path / "facts", _legacy_entry(facts={"num_layers": 4}))
    with pytest.raises(LensContentError, match="num_layers 4 but the lens says 3"):
        pin("tiny-llama", registry=tmp_path / "facts")

    write_entry(tmp_path / "gone", _legacy_entry())
    HfApi().delete_file(f"{SPACE_DIR}/params.pt", SPACE, repo_type="space")
    with pytest.raises(MissingLensFileError, match="lacks params.pt"):
        pin("tiny-llama", registry=tmp_path / "gone")


# --- the command line ---------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=180,
    )


def test_cli_add_and_pin(loopback_hub, model, tmp_path):
    lens_dir = random_lens(model).save(tmp_path / "lens")
    commit = upload(lens_dir, LENS_REPO)
    reg = tmp_path / "registry"
    done = _cli("registry", "add", f"hf://{LENS_REPO}@main", "--registry", str(reg), "--aliases", "tiny-llama")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "+++ b/loopback--tiny-llama.yaml" in done.stdout
    assert commit in done.stdout
    assert Registry.load(reg).get("tiny-llama").default_version.location.revision == commit
    listed = _cli("registry", "list", "--json", "--registry", str(reg))
    assert json.loads(listed.stdout)[0]["status"] == "verified"

    old = export_legacy(random_lens(model), tmp_path / "old")
    upload(old, SPACE, SPACE_DIR, "space")
    write_entry(tmp_path / "legacy", _legacy_entry())
    pinned = _cli("registry", "pin", "tiny-llama", "--registry", str(tmp_path / "legacy"))
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    assert "Note:" in pinned.stdout and "--model" in pinned.stdout
    refused = _cli("registry", "pin", "tiny-llama", "--registry", str(tmp_path / "legacy"))
    assert refused.returncode == 1
    assert "CurateError" in refused.stderr
