"""Hostile and broken input: decoy registry files, unsafe revisions, corrupt downloads, NaN weights, damaged
checkpoints and Hub refusals. Each test is an attacker's or a broken input, against the real loopback Hub and real
files; each failed before the fix it guards."""

import json
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from helpers import BASE, LENS_REPO, file_records, lens_entry, random_lens, same_outputs, upload, write_old
from huggingface_hub import constants
from safetensors import safe_open
from safetensors.torch import load, load_file, save_file
from tiny_models import tiny_model

from lens_hub import TunedLens
from lens_hub.core.format import read_config, read_tensors
from lens_hub.errors import (
    CheckpointError,
    ChecksumMismatchError,
    HubUnreachableError,
    LegacyFormatError,
    LensAccessError,
    LensFormatError,
    LensHubError,
    LensNotFoundError,
    NonFiniteLossError,
    PublishError,
)
from lens_hub.hub.publish import push
from lens_hub.registry.schema import LensFile, RegistryEntry
from lens_hub.registry.store import Registry, write_entry
from lens_hub.testing.faults import corrupt_bytes
from lens_hub.training.checkpoint import list_checkpoints
from lens_hub.training.data import TokenData
from lens_hub.training.settings import TrainSettings
from lens_hub.training.train import train_lens

pytestmark = pytest.mark.usefixtures("own_lens_cache")
WRITES = {"POST", "PUT", "DELETE", "PATCH"}


# `model` and `published` are conftest.py fixtures.


def _cache(cache_dir: Path | None = None) -> Path:
    return Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)


def _snapshots(name: str, cache_dir: Path | None = None) -> list[Path]:
    """Every snapshot entry of a file called ``name`` in the huggingface_hub cache."""
    return list(_cache(cache_dir).glob(f"**/snapshots/*/**/{name}"))


def _blobs_holding(data: bytes, cache_dir: Path | None = None) -> list[Path]:
    return [p for p in _cache(cache_dir).glob("**/blobs/*") if p.is_file() and p.read_bytes() == data]


def _with_nan(lens_dir: Path, name: str = "translators.1.weight", value: float = float("nan")) -> Path:
    """Rewrite a lens file with one non-finite element (safetensors directly, whatever the writer refuses)."""
    file = lens_dir / "lens.safetensors"
    with safe_open(str(file), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(file)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = value
    save_file(tensors, file, metadata=metadata)
    return lens_dir


# ------------------------------------------------------------------------------------- 1. the declared lens loads


def _registry_with_files(entry: RegistryEntry, files: list[LensFile]) -> Registry:
    """A registry holding ``entry`` with its files replaced, built without the schema (whatever it allows, the
    loader must hold on its own)."""
    version = entry.lenses[0].model_copy(update={"files": files})
    registry = Registry(None)
    assert registry.add(entry.model_copy(update={"lenses": [version]})) == []
    return registry


def _decoy_files(loopback_hub, model, tmp_path) -> tuple[TunedLens, list[LensFile]]:
    """Another lens committed under ``decoy/`` in the lens repo; returns it and its file records."""
    decoy = random_lens(model, seed=7)
    decoy_dir = decoy.save(tmp_path / "decoy")
    upload(decoy_dir, LENS_REPO, subfolder="decoy")
    records = [
        LensFile.model_construct(**{**f, "path": f"decoy/{f['path']}"})
        for f in file_records(decoy_dir, ["config.json", "lens.safetensors"])
    ]
    return decoy, records


def test_the_loaded_lens_is_the_declared_one_not_a_decoy_listed_first(loopback_hub, published, model, tmp_path):
    lens, lens_dir, _, _ = published
    decoy, decoy_files = _decoy_files(loopback_hub, model, tmp_path)
    commit = loopback_hub.head(LENS_REPO)  # holds both the lens (root) and the decoy
    entry = lens_entry(lens_dir, commit)
    registry = _registry_with_files(entry, [*decoy_files, *entry.lenses[0].files])

    loaded = TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    assert same_outputs(lens, loaded, model)
    assert not same_outputs(decoy, loaded, model)
    assert not any("decoy" in r.path for r in loopback_hub.requests if "/resolve/" in r.path)  # not even fetched


def test_an_entry_whose_required_files_are_missing_is_refused(loopback_hub, published, model, tmp_path):
    _, lens_dir, _, _ = published
    _, decoy_files = _decoy_files(loopback_hub, model, tmp_path)
    registry = _registry_with_files(lens_entry(lens_dir, loopback_hub.head(LENS_REPO)), decoy_files)
    with pytest.raises(
        LensFormatError, match=r"registry entry loopback/tiny-llama lens v1\.0\.0 does not list config\.json"
    ):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)


# ------------------------------------------------------------------------------------- 2. unsafe revisions


@pytest.mark.parametrize("where", ["@..%2F..%2Fx/sub", "@%2E%2E", "@main%20x", "@a%3Ab", "@main/../../x"])
def test_an_unsafe_revision_or_subfolder_is_refused_before_any_request(loopback_hub, published, model, where):
    name = f"hf://{LENS_REPO}{where}"
    loopback_hub.clear_log()
    for local_files_only in (False, True):
        with pytest.raises(LensNotFoundError, match=r"not a safe Hub location.*Write hf://org/repo"):
            TunedLens.from_pretrained(name, model=model, local_files_only=local_files_only)
    assert loopback_hub.requests == []
    assert not (Path(constants.HF_HUB_CACHE) / "x").exists()  # where refs/../../x would land


# ------------------------------------------------------------------------------------- 3. unverified files


def test_a_corrupted_download_of_an_hf_lens_is_refused_evicted_and_a_retry_loads(
    loopback_hub, published, model, tmp_path
):
    lens, lens_dir, commit, _ = published
    for name in ("config.json", "lens.safetensors"):
        cache = tmp_path / f"cache-{name}"  # a fresh cache, so that the file is downloaded
        loopback_hub.inject("GET", rf"/resolve/{commit}/{re.escape(name)}$", kind="corrupt")
        with pytest.raises(
            ChecksumMismatchError, match=rf"{re.escape(name)} failed verification.*removed from the cache"
        ):
            TunedLens.from_pretrained(f"hf://{LENS_REPO}@{commit}", model=model, cache_dir=cache)
        assert _snapshots(name, cache) == []
        assert _blobs_holding(corrupt_bytes((lens_dir / name).read_bytes()), cache) == []
        assert loopback_hub.faults == []  # the fault fired: the retry gets the real bytes
        assert same_outputs(
            lens, TunedLens.from_pretrained(f"hf://{LENS_REPO}@{commit}", model=model, cache_dir=cache), model
        )


@pytest.mark.filterwarnings("ignore::lens_hub.errors.UnverifiedLensWarning")
def test_a_corrupted_download_of_an_unverified_legacy_lens_is_evicted_and_a_retry_loads(loopback_hub, model, tmp_path):
    from helpers import legacy_entry

    lens = random_lens(model)
    old = write_old(tmp_path / "old", lens)
    upload(old, "loopback/tuned-lens", subfolder=f"lens/{BASE}", repo_type="space")
    write_entry(tmp_path / "reg", legacy_entry())
    loopback_hub.inject("GET", r"/resolve/[^/]+/lens/.*/config\.json$", kind="corrupt")
    with pytest.raises(ChecksumMismatchError, match="config.json failed verification .*git blob id"):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "reg")
    assert _blobs_holding(corrupt_bytes((old / "config.json").read_bytes())) == []
    assert same_outputs(lens, TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "reg"), model)


def _hub_lens_with(loopback_hub, tmp_path, model, name: str, data: bytes, legacy: bool = False) -> str:
    """Commit a lens (legacy or not) whose file ``name`` holds ``data`` on the Hub itself; returns the commit."""
    lens = random_lens(model)
    folder = write_old(tmp_path / "bad", lens) if legacy else lens.save(tmp_path / "bad")
    (folder / name).write_bytes(data)
    return upload(folder, LENS_REPO)


@pytest.mark.parametrize("name", ["config.json", "lens.safetensors"])
def test_a_file_swapped_in_the_cache_of_an_hf_lens_is_caught_at_the_next_load(loopback_hub, published, model, name):
    """No checksum is recorded for an hf:// lens: the cached blob is checked against the Hub's ETag it is named
    after, at every load, on the very bytes that are loaded."""
    lens, _, commit, _ = published
    where = f"hf://{LENS_REPO}@{commit}"
    TunedLens.from_pretrained(where, model=model)
    (cached,) = _snapshots(name)
    blob = cached.resolve()
    data = bytearray(blob.read_bytes())
    data[-2] ^= 1  # one bit: still a lens (a config's whitespace, a weight's mantissa), no longer the one published
    blob.write_bytes(bytes(data))
    loopback_hub.clear_log()
    with pytest.raises(ChecksumMismatchError, match=rf"{re.escape(name)} failed verification .*the Hub announced"):
        TunedLens.from_pretrained(where, model=model, local_files_only=True)
    assert loopback_hub.requests == []
    assert not blob.exists()
    assert _snapshots(name) == []
    assert same_outputs(lens, TunedLens.from_pretrained(where, model=model), model)


@pytest.mark.filterwarnings("ignore::lens_hub.errors.UnverifiedLensWarning")
@pytest.mark.parametrize(
    ("name", "data", "legacy", "error"),
    [
        ("config.json", b'\xff\xfe{"schema_version": 1', False, LensFormatError),
        ("lens.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}", False, LensFormatError),
        ("params.pt", b"this is not a pickle at all", True, LegacyFormatError),
    ],
)
def test_a_downloaded_file_that_does_not_parse_is_removed_from_the_cache(
    loopback_hub, model, tmp_path, name, data, legacy, error
):
    commit = _hub_lens_with(loopback_hub, tmp_path, model, name, data, legacy)
    with pytest.raises(error, match="removed from the cache; retry"):
        TunedLens.from_pretrained(f"hf://{LENS_REPO}@{commit}", model=model)
    assert _snapshots(name) == []
    assert _blobs_holding(data) == []
    assert not list((tmp_path / "lens_hub_cache").rglob("lens.safetensors"))  # no converted copy either


def _rewrite_header(file: Path, edit) -> None:
    """Rewrite a safetensors file's header through ``edit(header, data) -> data`` (no padding added)."""
    raw = file.read_bytes()
    n = struct.unpack_from("<Q", raw)[0]
    header = json.loads(raw[8 : 8 + n])
    data = edit(header, raw[8 + n :])
    text = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _offsets(header: dict, name: str) -> list[int]:
    return header[name]["data_offsets"]


def _shift(header: dict, name: str, by: int) -> None:
    header[name]["data_offsets"] = [x + by for x in header[name]["data_offsets"]]


def _first_two(header: dict) -> tuple[str, str]:
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    return names[0], names[1]


UNREADABLE = r"is not a readable safetensors file"
LAYOUTS = {
    "two tensors share bytes": (
        lambda h, d: (h["translators.1.bias"].update(data_offsets=_offsets(h, "translators.0.bias")), d)[1],
        UNREADABLE,
    ),
    "bytes after the last tensor": (lambda h, d: d + b"\0" * 8, UNREADABLE),
    "a tensor cut short": (lambda h, d: d[:-4], UNREADABLE),
    "a gap between tensors": (lambda h, d: (_shift(h, _first_two(h)[0], 4), d + b"\0" * 4)[1], UNREADABLE),
    "reversed offsets": (
        lambda h, d: (_offsets(h, _first_two(h)[0]).reverse(), d)[1],
        UNREADABLE,
    ),
    "metadata that is not text": (lambda h, d: (h["__metadata__"].update(n=1), d)[1], UNREADABLE),
    "a shape of booleans": (lambda h, d: (h["translators.0.bias"].update(shape=[True] * 1), d)[1], UNREADABLE),
}


@pytest.mark.parametrize("damage", sorted(LAYOUTS))
def test_weights_whose_layout_breaks_the_format_are_refused(model, tmp_path, damage):
    """The weights are parsed by safetensors from the bytes lens-hub verified: a layout that breaks the format (each
    tensor exactly where its header says, back to back, covering the file) is one clear LensFormatError."""
    lens_dir = random_lens(model).save(tmp_path / "lens")
    edit, message = LAYOUTS[damage]
    _rewrite_header(lens_dir / "lens.safetensors", edit)
    with pytest.raises(LensFormatError, match=message):
        read_tensors(lens_dir, read_config(lens_dir))
    with pytest.raises(LensFormatError, match=message):
        TunedLens.from_pretrained(str(lens_dir), model=model)


def _with_pad(file: Path, n: int) -> dict:
    raw = file.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack_from("<Q", raw)[0]])
    header["__metadata__"]["pad"] = "x" * n
    return header


def test_a_header_of_any_length_reads_the_same_tensors_as_safetensors(model, tmp_path):
    """Without safetensors' padding a tensor may start at an odd byte: it is read (aligned), with the same values."""
    lens = random_lens(model)
    lens_dir = lens.save(tmp_path / "lens")
    file = lens_dir / "lens.safetensors"
    assert {k: v.tolist() for k, v in read_tensors(lens_dir, lens.config).items()} == {
        k: v.tolist() for k, v in load_file(file).items()
    }
    pad = next(n for n in range(1, 4) if (8 + len(json.dumps(_with_pad(file, n)).encode())) % 4)
    _rewrite_header(file, lambda h, d: (h["__metadata__"].update(pad="x" * pad), d)[1])
    assert (struct.unpack_from("<Q", file.read_bytes())[0] + 8) % 4  # misaligned for float32
    ours = read_tensors(lens_dir, lens.config)
    theirs = load(file.read_bytes())
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert all(t.data_ptr() % t.element_size() == 0 for t in ours.values())


# ------------------------------------------------------------------------------------- 4. non-finite weights


def test_a_lens_with_one_nan_is_refused_at_push_before_any_request(loopback_hub, model, tmp_path):
    lens = random_lens(model)
    lens.config = lens.config.model_copy(update={"base_model": BASE})
    lens_dir = _with_nan(lens.save(tmp_path / "lens"))
    with pytest.raises(PublishError, match=r"tensor translators\.1\.weight \(1 NaN, 0 inf\) holds non-finite"):
        push(lens_dir, LENS_REPO, registry=tmp_path / "registry")
    assert not [r for r in loopback_hub.requests if r.method in WRITES]
    assert not (tmp_path / "registry").exists()


def test_a_published_lens_with_nan_is_refused_at_from_pretrained(loopback_hub, model, tmp_path):
    lens = random_lens(model)
    lens_dir = _with_nan(lens.save(tmp_path / "lens"), "translators.2.bias", float("inf"))
    commit = upload(lens_dir, LENS_REPO)
    write_entry(tmp_path / "registry", lens_entry(lens_dir, commit))  # a verified entry: the checksums hold
    with pytest.raises(LensFormatError, match=r"tensor translators\.2\.bias \(0 NaN, 1 inf\) holds non-finite"):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "registry")
    assert _blobs_holding((lens_dir / "lens.safetensors").read_bytes()) == []
    with pytest.raises(LensFormatError, match="non-finite"):  # a local directory too, left as it is
        TunedLens.from_pretrained(str(lens_dir), model=model)
    assert (lens_dir / "lens.safetensors").is_file()


def test_the_core_load_of_a_local_lens_refuses_nan_too(model, tmp_path):
    from lens_hub.core.lens import BaseTunedLens as CoreTunedLens

    lens_dir = _with_nan(random_lens(model).save(tmp_path / "lens"), "translators.0.weight")
    for cls in (TunedLens, CoreTunedLens):
        with pytest.raises(LensFormatError, match=r"translators\.0\.weight \(1 NaN, 0 inf\) holds non-finite"):
            cls.load(lens_dir, model)


def _tiny_data() -> TokenData:
    ids = torch.randint(3, 96, (16, 16), generator=torch.Generator().manual_seed(0))
    return TokenData(ids, num_bytes=1024, num_tokens_read=256, source="tiny.txt")


def _settings(**kw) -> TrainSettings:
    # The paper's recipe (SGD): these checks are of checkpoints, whatever the init (the fit's is one more of them).
    defaults = dict(init="zero", steps=4, tokens_per_step=32, seq_len=16, batch_size=2, checkpoint_every=2, quiet=True)
    return TrainSettings(**{**defaults, **kw})


def test_an_absurd_learning_rate_stops_training_and_saves_no_non_finite_lens(tmp_path):
    out = tmp_path / "out"
    settings = _settings(lr=1e30, optimizer="sgd", checkpoint_every=1)
    with pytest.raises(
        NonFiniteLossError, match=r"diverged at step 2 of 4: the loss of layers \[0, 1, 2\] is not finite"
    ):
        train_lens(tiny_model("gpt2"), _tiny_data(), settings, out)
    assert not (out / "lens.safetensors").exists() and not (out / "config.json").exists()
    kept = list_checkpoints(out / "checkpoints")
    assert [p.name for p in kept] == ["step-000001"]  # the last checkpoint stays, and it is finite
    for file in kept[0].glob("*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(file).values())


# ------------------------------------------------------------------------------------- 5. damaged checkpoints


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A run stopped after step 3, so that step-000002 is its newest checkpoint; (model, output directory)."""
    model = tiny_model("gpt2")
    out = tmp_path_factory.mktemp("interrupted") / "out"

    def stop(step, _losses):
        if step == 3:
            raise _Stop

    with pytest.raises(_Stop):
        train_lens(model, _tiny_data(), _settings(), out, on_step=stop)
    return model, out


def _edit_state(path: Path, edit) -> None:
    state = json.loads((path / "state.json").read_text())
    edit(state)
    (path / "state.json").write_text(json.dumps(state))


def _edit_tensors(file: Path, edit) -> None:
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file)


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _set(tensors, name, value):
    tensors[name] = value


DAMAGE = {
    "truncated lens": (lambda p: _truncate(p / "lens.safetensors"), r"lens\.safetensors is unreadable"),
    "truncated optimizer": (lambda p: _truncate(p / "optimizer.safetensors"), r"optimizer\.safetensors is unreadable"),
    "state not json": (lambda p: (p / "state.json").write_text("{"), r"state\.json is unreadable"),
    "missing key": (lambda p: _edit_state(p, lambda s: s.pop("scheduler")), r"state\.json lacks scheduler"),
    "string step": (lambda p: _edit_state(p, lambda s: s.update(step="2")), r"step must be a whole number.*'2'"),
    "step of another directory": (
        lambda p: _edit_state(p, lambda s: s.update(step=3)),
        r"step is 3 but the directory is step-000002",
    ),
    "settings not an object": (lambda p: _edit_state(p, lambda s: s.update(settings=[])), r"settings must be a JSON"),
    "param_groups not a list": (
        lambda p: _edit_state(p, lambda s: s["optimizer"].update(param_groups="x")),
        r"optimizer must hold param_groups",
    ),
    "edited lr": (
        lambda p: _edit_state(p, lambda s: s["optimizer"]["param_groups"][0].update(lr=1e6)),
        r"state\.json: optimizer\.param_groups\[0\]\.lr is 1000000\.0, but this run has 0\.05 at step 2",
    ),
    "edited initial_lr": (
        lambda p: _edit_state(p, lambda s: s["optimizer"]["param_groups"][0].update(initial_lr=1e6)),
        r"param_groups\[0\]\.initial_lr is 1000000\.0, but this run has 0\.1",
    ),
    "edited momentum": (
        lambda p: _edit_state(p, lambda s: s["optimizer"]["param_groups"][0].update(momentum=0.0)),
        r"param_groups\[0\]\.momentum is 0\.0, but this run has 0\.9",
    ),
    "scheduler state": (
        lambda p: _edit_state(p, lambda s: s["scheduler"].update(last_epoch="x")),
        r"scheduler\.last_epoch is 'x', but at step 2 this run's schedule has 2",
    ),
    "scheduler attribute injected": (
        lambda p: _edit_state(p, lambda s: s["scheduler"].update(optimizer=None)),
        r"scheduler has unexpected fields \['optimizer'\]",
    ),
    "wrong lens shape": (
        lambda p: _edit_tensors(p / "lens.safetensors", lambda t: _set(t, "translators.0.weight", torch.zeros(31, 32))),
        r"lens\.safetensors: tensor translators\.0\.weight has shape \[31, 32\], this run's lens needs \[32, 32\]",
    ),
    "missing lens tensor": (
        lambda p: _edit_tensors(p / "lens.safetensors", lambda t: t.pop("translators.2.bias")),
        r"lens\.safetensors does not hold this run's lens: missing \['translators\.2\.bias'\]",
    ),
    "wrong momentum shape": (
        lambda p: _edit_tensors(p / "optimizer.safetensors", lambda t: _set(t, "0.momentum_buffer", torch.zeros(3))),
        r"optimizer\.safetensors: tensor 0\.momentum_buffer has shape \[3\], this run's optimizer state needs "
        r"\[32, 32\]",
    ),
    "malformed optimizer name": (
        lambda p: _edit_tensors(p / "optimizer.safetensors", lambda t: _set(t, "x.y", torch.zeros(1))),
        r"malformed tensor names \['x\.y'\]",
    ),
    "lens dtype": (
        lambda p: _edit_tensors(p / "lens.safetensors", lambda t: t.update({k: v.half() for k, v in t.items()})),
        r"tensor translators\.0\.weight is torch\.float16, this run's lens is torch\.float32",
    ),
    "inf in the lens": (
        lambda p: _edit_tensors(
            p / "lens.safetensors", lambda t: t["translators.1.weight"].__setitem__((0, 0), float("inf"))
        ),
        r"lens\.safetensors: tensor translators\.1\.weight \(0 NaN, 1 inf\) holds non-finite values",
    ),
    "nan in the optimizer": (
        lambda p: _edit_tensors(
            p / "optimizer.safetensors", lambda t: t["3.momentum_buffer"].__setitem__(0, float("nan"))
        ),
        r"optimizer\.safetensors: tensor 3\.momentum_buffer \(1 NaN, 0 inf\) holds non-finite values",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_refused_at_resume_naming_the_file(interrupted_run, tmp_path, damage):
    model, original = interrupted_run
    out = shutil.copytree(original, tmp_path / "out")
    (newest,) = list_checkpoints(out / "checkpoints")
    edit, message = DAMAGE[damage]
    edit(newest)
    with pytest.raises(CheckpointError, match=message) as caught:
        train_lens(model, _tiny_data(), _settings(), out)
    assert str(newest) in str(caught.value)
    assert not (out / "lens.safetensors").exists()


def test_an_undamaged_checkpoint_still_resumes(interrupted_run, tmp_path):
    model, original = interrupted_run
    out = shutil.copytree(original, tmp_path / "out")
    seen = []
    train_lens(model, _tiny_data(), _settings(), out, on_step=lambda s, _: seen.append(s))
    assert seen == [3, 4]


# ------------------------------------------------------------------------------------- 6. refusals are not outages


@pytest.mark.parametrize("method", ["HEAD", "GET"])
@pytest.mark.parametrize("status", [403, 404])
def test_403_and_404_on_a_file_say_not_found_or_no_access(loopback_hub, published, model, method, status):
    _, _, commit, registry = published
    loopback_hub.inject(method, r"/resolve/.*/config\.json$", kind="status", status=status, times=5)
    with pytest.raises(LensNotFoundError, match=rf"{LENS_REPO}@{commit[:12]}/config\.json: .*HTTP {status}") as caught:
        TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    assert not isinstance(caught.value, HubUnreachableError)
    assert isinstance(caught.value, LensAccessError) == (status == 403)
    assert "could not reach" not in str(caught.value)
    assert isinstance(caught.value, LensHubError)
