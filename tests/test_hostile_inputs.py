"""Hostile and broken input: every test is an attacker's file or argument, and lens-hub must refuse it early, with
a located `LensHubError`, leaving nothing behind. Real files, real safetensors, real torch.save pickles, the real
mkdocs build; no mocks.

New names of lens-hub (``ids.check_revision``, ``format.atomic_write``...) are looked up inside the tests, so that
each test fails on its own against a lens-hub without the fix.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import LAYERS, tiny_model

import lens_hub.core.ids as ids
from lens_hub import LegacyFormatError, LensConfig, LensFormatError, TunedLens, convert_legacy
from lens_hub.core.format import expected_shapes, read_config, read_tensors
from lens_hub.errors import LensHubError, RegistryError
from lens_hub.registry.schema import HubLocation, LensFile, LensVersion, ModelFacts, RegistryEntry
from lens_hub.registry.store import REGISTRY_ENV, Registry, parse_entry_file, write_entry

ROOT = Path(__file__).resolve().parent.parent
D = 32
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHA = "0123456789abcdef" * 4


# --- helpers --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def address_space_cap(extra: int = 2 * 2**30):
    """Limit this process to its current address space plus ``extra`` bytes, so that a regression (an allocation
    proportional to what a hostile file declares) fails with MemoryError instead of taking the machine's memory."""
    try:
        import resource
    except ImportError:  # not Linux/Unix: no cap, the test still checks the refusal
        yield
        return
    status = Path("/proc/self/status")
    if not status.exists():
        yield
        return
    vm_kb = int(re.search(r"VmSize:\s+(\d+) kB", status.read_text()).group(1))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm_kb * 1024 + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _old_params(layers: int = LAYERS, bias: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {f"{i}.weight": torch.randn(D, D, generator=g) * 0.05 for i in range(layers)}
    if bias:
        state |= {f"{i}.bias": torch.randn(D, generator=g) * 0.05 for i in range(layers)}
    return state


def _write_old(directory: Path, params: object = None, *, save: bool = True, **config: object) -> Path:
    """An old tuned-lens lens: config.json + params.pt written by torch.save (as tuned-lens wrote them)."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {"base_model_name_or_path": "gpt2", "d_model": D, "num_hidden_layers": LAYERS, "bias": True}
    cfg.update(config)
    if save:
        torch.save(_old_params() if params is None else params, directory / "params.pt")
    (directory / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return directory


def _lens_dir(tmp_path: Path) -> Path:
    return TunedLens.from_model(tiny_model("gpt2"), base_model="openai-community/gpt2").save(tmp_path / "lens")


def _edit_config(directory: Path, **changes: object) -> None:
    data = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    data.update(changes)
    (directory / "config.json").write_text(json.dumps(data), encoding="utf-8")


def _legacy_version(**changes: object) -> dict:
    version = {
        "version": "1.0.0",
        "default": True,
        "format": "tuned-lens-legacy",
        "status": "unverified",
        "location": {"repo_id": "org/lenses", "revision": None},
        "files": [{"path": "config.json"}, {"path": "params.pt"}],
    }
    return {**version, **changes}


def _entry_dict(model: str = "org/model", **changes: object) -> dict:
    return {"schema_version": 1, "model": model, "facts": {}, "lenses": [_legacy_version()], **changes}


def _write_yaml(directory: Path, data: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (data["model"].replace("/", "--") + ".yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != REGISTRY_ENV}
    env.update(NO_COLOR="1", TERM="dumb", PYTHONIOENCODING="utf-8", COLUMNS="200", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )


# --- 1. stored XSS in the docs catalogue ----------------------------------------------------------------------

XSS_MODEL = "evil-org/xss-model"
XSS = {
    "notes": "<script>alert('notes')</script><img src=x onerror=alert('notes-img')> [click](javascript:alert('link'))"
    " {: onclick=\"alert('attr')\" }\n```\n<script>alert('fence')</script>\n````\n<script>alert('fence4')</script>",
    "license": "<script>alert('license')</script>",
    "training": "<img src=x onerror=alert('training')>",
    "evaluation": "<script>alert('evaluation')</script>",
    "model_type": "<img src=x onerror=alert('model_type')>",
}
XSS_ENTRY = {
    "schema_version": 1,
    "model": XSS_MODEL,
    "aliases": ["xss-alias"],
    "facts": {"model_type": XSS["model_type"], "hidden_size": 64, "num_layers": 4, "vocab_size": 1000},
    "lenses": [
        {
            "version": "1.0.0",
            "default": True,
            "format": "safetensors",
            "status": "verified",
            "location": {"repo_id": "evil-org/xss-lens", "revision": "a" * 40},
            "files": [
                {"path": "config.json", "size": 512, "sha256": "b" * 64},
                {"path": "lens.safetensors", "size": 66_000, "sha256": "c" * 64},
            ],
            "license": XSS["license"],
            "training": {"dataset": XSS["training"], "steps": 5},
            "evaluation": {
                "dataset": XSS["evaluation"],
                "tuned": {"kl": [2.1, 1.4, 0.8, 0.3]},
                "logit": {"kl": [6.2, 5.1, 3.3, 1.0]},
            },
            "notes": XSS["notes"],
        }
    ],
}


class _PageScan(HTMLParser):
    """Every element that would run script: <script> elements, on* attributes, javascript: URLs; and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.active: list[str] = []
        self.text: list[str] = []
        self._script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith("on") or (value or "").strip().lower().startswith("javascript:"):
                self.active.append(f"<{tag} {name}={value!r}>")
        self._script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._script = False

    def handle_data(self, data: str) -> None:
        if self._script and "alert" in data:
            self.active.append(f"<script>{data}</script>")
        self.text.append(data)


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real site (`mkdocs build --strict`, as tests/test_docs.py builds it) from a registry holding XSS_ENTRY."""
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"docs packages not installed ({', '.join(missing)}): pip install -r requirements/docs.txt")
    tmp = tmp_path_factory.mktemp("hostile-docs")
    _write_yaml(tmp / "registry", XSS_ENTRY)
    out = tmp / "site"
    env = {**os.environ, REGISTRY_ENV: str(tmp / "registry"), "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@pytest.mark.parametrize("page", ["catalogue/evil-org--xss-model/index.html", "catalogue/index.html"])
def test_docs_catalogue_never_runs_registry_html(hostile_site: Path, page: str) -> None:
    scan = _PageScan()
    scan.feed((hostile_site / page).read_text(encoding="utf-8"))
    assert scan.active == [], f"registry text became active HTML in {page}: {scan.active}"


def test_docs_catalogue_shows_registry_html_as_text(hostile_site: Path) -> None:
    scan = _PageScan()
    scan.feed((hostile_site / "catalogue/evil-org--xss-model/index.html").read_text(encoding="utf-8"))
    text = "".join(scan.text)
    for shown in (
        "<script>alert('notes')</script><img src=x onerror=alert('notes-img')>",
        "[click](javascript:alert('link'))",
        "<script>alert('fence')</script>",
        XSS["license"],
        XSS["training"],
        XSS["evaluation"],
        XSS["model_type"],
    ):
        assert shown in text, f"{shown!r} is not shown as text"
    assert "<script>alert" not in (hostile_site / "search" / "search_index.json").read_text(encoding="utf-8")


# --- 2. unbounded work from a tiny file -----------------------------------------------------------------------


def test_legacy_config_declaring_30_million_layers_is_refused_before_any_allocation(tmp_path):
    old = _write_old(tmp_path / "old", num_hidden_layers=30_000_000)
    start = time.perf_counter()
    with address_space_cap(), pytest.raises(LegacyFormatError, match=r"num_hidden_layers is 30,000,000, more than"):
        convert_legacy(old, tmp_path / "new")
    assert time.perf_counter() - start < 1.0
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [("num_layers", 30_000_000, 1024), ("hidden_size", 10**6, 65536), ("vocab_size", 2**40, 2**22)],
)
def test_lens_config_declaring_huge_sizes_is_refused(tmp_path, field, value, limit):
    lens = _lens_dir(tmp_path)
    _edit_config(lens, **{field: value})
    with address_space_cap(), pytest.raises(LensFormatError, match=rf"{field}: .*less than or equal to {limit}"):
        TunedLens.load(lens, tiny_model("gpt2"))


def test_expected_shapes_refuses_an_unvalidated_config():
    """``model_construct`` skips validation; expected_shapes (push, read_tensors) is the last line."""
    config = LensConfig.model_construct(num_layers=30_000_000, hidden_size=32, bias=True, dtype="float32")
    with address_space_cap(), pytest.raises(LensFormatError, match="at most 1024 layers"):
        expected_shapes(config)


def _zip_bomb(path: Path, declared: int) -> None:
    """A real torch.save archive whose first tensor record is replaced by deflated zeros declaring ``declared`` bytes.

    The deflate stream really inflates to ``declared`` bytes (1 MiB blocks of zeros, each compressed to ~1 kB); only
    its CRC is not computed, since nothing may read that far.
    """
    torch.save(_old_params(), path)
    with zipfile.ZipFile(path) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    victim = next(name for name, _ in records if name.endswith("/data/0"))
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    one_mib = block.compress(bytes(2**20)) + block.flush(zlib.Z_FULL_FLUSH)
    bomb = one_mib * (declared // 2**20) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records:
            archive.writestr(name, bomb if name == victim else data)
    # Mark the record as deflated and declare its inflated size, in its local header and the central directory.
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo(victim).header_offset
    struct.pack_into("<H", raw, offset + 8, zipfile.ZIP_DEFLATED)
    struct.pack_into("<I", raw, offset + 22, declared)
    eocd = raw.rindex(b"PK\x05\x06")
    central = struct.unpack_from("<I", raw, eocd + 16)[0]
    while raw[central : central + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", raw, central + 28)
        if raw[central + 46 : central + 46 + name_len].decode() == victim:
            struct.pack_into("<H", raw, central + 10, zipfile.ZIP_DEFLATED)
            struct.pack_into("<I", raw, central + 24, declared)
        central += 46 + name_len + extra_len + comment_len
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("config", [{}, {"d_model": 65536, "num_hidden_layers": 1024}], ids=["small", "huge-config"])
def test_zip_bomb_params_is_refused_by_its_declared_sizes_before_torch_load(tmp_path, config):
    old = _write_old(tmp_path / "old", **config)
    _zip_bomb(old / "params.pt", 3 * 2**30)
    assert (old / "params.pt").stat().st_size < 4 * 2**20
    with zipfile.ZipFile(old / "params.pt") as archive:
        assert sum(i.file_size for i in archive.infolist()) > 3 * 2**30
    start = time.perf_counter()
    with address_space_cap(), pytest.raises(LegacyFormatError, match=r"refused before loading: its records declare"):
        convert_legacy(old, tmp_path / "new")
    assert time.perf_counter() - start < 2.0
    assert not (tmp_path / "new").exists()


def test_params_far_larger_than_its_config_needs_is_refused_before_loading(tmp_path):
    old = _write_old(tmp_path / "old", {**_old_params(), "extra": torch.zeros(2**21)})  # 8 MiB nobody asked for
    with pytest.raises(LegacyFormatError, match=r"records declare 8,4\d\d,\d\d\d bytes.*need at most"):
        convert_legacy(old, tmp_path / "new")


def test_params_in_the_pre_zip_torch_format_is_refused(tmp_path):
    """torch < 1.6's format declares storage sizes inside the pickle, where they cannot be checked first."""
    old = _write_old(tmp_path / "old", save=False)
    torch.save(_old_params(), old / "params.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(LegacyFormatError, match="not a torch.save zip archive"):
        convert_legacy(old, tmp_path / "new")


def test_safetensors_header_declaring_gigabytes_is_refused_before_parsing(tmp_path):
    lens = _lens_dir(tmp_path)
    weights = lens / "lens.safetensors"
    weights.write_bytes(struct.pack("<Q", 2**33) + b"{}")
    with pytest.raises(LensFormatError, match=r"declares a 8,589,934,592-byte safetensors header"):
        read_tensors(lens, read_config(lens))


# --- 3. the loaded lens is the declared one -------------------------------------------------------------------


def _safetensors_version(files: list[dict]) -> dict:
    return {
        "version": "1.0.0",
        "default": True,
        "format": "safetensors",
        "status": "verified",
        "location": {"repo_id": "org/lenses", "revision": COMMIT},
        "files": [{**f, "size": 10, "sha256": SHA} for f in files],
    }


def test_decoy_files_listed_before_the_root_files_are_refused(tmp_path):
    files = [{"path": p} for p in ("decoy/config.json", "decoy/lens.safetensors", "config.json", "lens.safetensors")]
    path = _write_yaml(tmp_path, _entry_dict(lenses=[_safetensors_version(files)]))
    entry, problems = parse_entry_file(path)
    assert entry is None
    assert [p.split(": ")[1] for p in problems] == ["lenses[0].files[0].path", "lenses[0].files[1].path"]
    assert all("not a plain file name" in p for p in problems)


@pytest.mark.parametrize(
    ("extra", "message"),
    [("params.pt", r"remove \['params.pt'\] \(a pickle is never part"), ("README.md", r"remove \['README.md'\]")],
)
def test_entries_list_exactly_the_files_their_format_loads(extra, message):
    with pytest.raises(ValueError, match=message):
        LensVersion.model_validate(
            _safetensors_version([{"path": "config.json"}, {"path": "lens.safetensors"}, {"path": extra}])
        )


# --- 4. paths and ids -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["../../etc/passwd", "decoy/config.json", "..", "a\\b.json", "con\x00fig.json", "config.json\n", " x"]
)
def test_file_paths_are_plain_names(path):
    with pytest.raises(ValueError, match="not a plain file name"):
        LensFile(path=path)


@pytest.mark.parametrize(
    ("repo_id", "message"),
    [
        ("org/lenses.git", "ends with '.git'"),
        ("org/lеnses", r"non-ASCII character 'е' \(U\+0435"),
        ("orgé/lenses", "non-ASCII"),
        ("org/a--b", "'--'"),
        ("org/" + "x" * 97, "(longer than|at most) 96"),
        ("org/lenses\n", "control character"),
        ("org/-lenses", "starting and ending"),
    ],
)
def test_repo_ids_follow_the_hubs_ascii_rules(repo_id, message):
    with pytest.raises(ValueError, match=message):
        HubLocation(repo_id=repo_id, revision=None)
    with pytest.raises(LensHubError, match=message):  # also a LensHubError, for callers that catch those
        ids.validate_repo_id(repo_id)


@pytest.mark.parametrize("ok", ["gpt2", "openai-community/gpt2", "EleutherAI/pythia-1.4b-deduped-v0", "a/b", "0/0"])
def test_real_repo_ids_still_validate(ok):
    assert ids.validate_repo_id(ok) == ok


@pytest.mark.parametrize(
    "revision",
    [
        "../../etc",
        "main/../x",
        "/main",
        "main/",
        "a//b",
        "ma\x00in",
        "ma in",
        "v1\n",
        ".hidden",
        "x.lock",
        "a@{1}",
        "",
        "x" * 257,
        "mаin",
    ],
)
def test_check_revision_refuses_unsafe_refs(revision):
    with pytest.raises(LensHubError, match="revision|a revision"):
        ids.check_revision(revision)


@pytest.mark.parametrize("revision", ["main", "v1.0.0", "lens/gpt2/v1.0.0", COMMIT, "refs/pr/3", "release-2024_01"])
def test_check_revision_accepts_real_refs(revision):
    assert ids.check_revision(revision) == revision


@pytest.mark.parametrize(
    ("alias", "message"),
    [("gрt2", r"'р' \(U\+0440 CYRILLIC SMALL LETTER ER\)"), ("ｇｐｔ２", "did you mean 'gpt2'"), ("gpt2.git", ".git")],
)
def test_confusable_aliases_are_refused(alias, message):
    with pytest.raises(ValueError, match=message):
        RegistryEntry.model_validate(_entry_dict(aliases=[alias]))


def test_case_only_collision_blames_the_later_file_whatever_the_file_name_case(tmp_path):
    # "Zeta--model.yaml" sorts before "alpha--model.yaml" by code point; names are case-insensitive, so the order
    # deciding who claimed a name first is too: alpha claims 'GPT2' first and Zeta is blamed, naming both.
    _write_yaml(tmp_path, _entry_dict("Zeta/model", aliases=["gpt2"]))
    _write_yaml(tmp_path, _entry_dict("alpha/model", aliases=["GPT2"]))
    for _ in range(2):  # deterministic
        registry, problems = Registry.check(tmp_path)
        assert problems == [
            f"{tmp_path / 'Zeta--model.yaml'}: aliases[0]: 'gpt2' is already used by alpha/model "
            f"({tmp_path / 'alpha--model.yaml'}, as 'GPT2'; names are case-insensitive); rename or remove it here"
        ]
        assert registry.get("gpt2").model == "alpha/model"


# --- 5. strict versions and subfolders before any write -------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("version", "1.0.2-a..b"),
        ("version", "1.0.3-."),
        ("version", "1.0.0-01"),
        ("version", "1.0.0\n"),
        ("version", "1.0.1٠"),  # an Arabic-Indic zero: \d matches it, [0-9] does not
        ("subfolder", "my lens"),
        ("subfolder", "lens/.hidden"),
        ("subfolder", "lens/x.lock"),
        ("subfolder", "lens/gрt2"),
    ],
)
def test_push_refuses_bad_versions_and_subfolders_before_anything_is_written(
    loopback_hub, tmp_path, own_lens_cache, option, value
):
    from lens_hub.errors import InvalidNameError, PublishError
    from lens_hub.hub.publish import plan_push

    lens = _lens_dir(tmp_path)
    registry = tmp_path / "registry"
    with pytest.raises(InvalidNameError if option == "version" else PublishError, match=rf"--{option}\b"):
        plan_push(lens, "loopback/evil-lens", registry=registry, **{option: value})
    assert loopback_hub.requests == []  # refused before even reading from the Hub, so nothing was written
    assert not registry.exists()


@pytest.mark.parametrize("version", ["1.0.0", "1.0.0-rc.1", "2.10.3-alpha.beta-2.0a", "1.0.0-0"])
def test_real_versions_are_semver(version):
    assert ids.is_semver(version)


# --- 6. deeply nested files -----------------------------------------------------------------------------------

DEPTH = 100_000


def test_deep_registry_files_are_located_problems_and_other_files_still_load(tmp_path):
    good = _write_yaml(tmp_path, _entry_dict("org/good"))
    deep_yaml = tmp_path / "org--deep.yaml"
    deep_yaml.write_text("model: org/deep\nfacts: {}\nlenses: " + "[" * DEPTH + "]" * DEPTH + "\n", encoding="utf-8")
    deep_json = tmp_path / "org--deep-json.json"
    deep_json.write_text('{"model": "org/deep-json", "facts": ' + '{"a": ' * DEPTH + "1" + "}" * DEPTH + "}")
    registry, problems = Registry.check(tmp_path)
    assert list(registry.entries) == ["org/good"] and registry.files["org/good"] == good
    assert len(problems) == 2
    assert problems[0].startswith(f"{deep_json}: cannot parse: ") and "more than 32 levels deep" in problems[0]
    assert problems[1].startswith(f"{deep_yaml}: cannot parse: ") and "more than 32 levels deep" in problems[1]
    with pytest.raises(RegistryError) as info:  # what name resolution uses: refuses, naming the files
        Registry.load(tmp_path)
    assert info.value.problems == problems

    result = _cli("registry", "validate", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr
    assert "2 problem(s)" in result.stderr


def test_a_mapping_used_as_a_yaml_key_is_a_located_problem_not_a_traceback(tmp_path):
    (tmp_path / "org--model.yaml").write_text("model: org/model\nfacts: {[x]: 1}\nlenses: []\n", encoding="utf-8")
    _, problems = Registry.check(tmp_path)
    assert len(problems) == 1 and "cannot parse: a key must be a plain value, not a list" in problems[0]
    assert "line 2" in problems[0]


def test_deep_lens_config_is_a_located_format_error(tmp_path):
    lens = _lens_dir(tmp_path)
    config = json.loads((lens / "config.json").read_text(encoding="utf-8"))
    text = json.dumps(config)[:-1] + ', "training": {"hyperparameters": {"x": ' + "[" * DEPTH + "]" * DEPTH + "}}}"
    (lens / "config.json").write_text(text, encoding="utf-8")
    with pytest.raises(LensFormatError, match=r"config.json nests lists or objects more than 32 levels deep"):
        read_config(lens)


def test_deep_legacy_config_is_a_located_format_error(tmp_path):
    old = _write_old(tmp_path / "old")
    (old / "config.json").write_text('{"d_model": 32, "x": ' + "[" * DEPTH + "]" * DEPTH + "}", encoding="utf-8")
    with pytest.raises(LegacyFormatError, match=r"config.json nests lists or objects more than 32 levels deep"):
        convert_legacy(old, tmp_path / "new")


def test_duplicate_keys_in_a_lens_config_are_refused(tmp_path):
    """Parsers disagree on which duplicate wins: another tool would read another lens."""
    lens = _lens_dir(tmp_path)
    text = (lens / "config.json").read_text(encoding="utf-8")
    (lens / "config.json").write_text(text.replace('"hidden_size": 32', '"hidden_size": 32, "hidden_size": 64'))
    with pytest.raises(LensFormatError, match="'hidden_size' appears twice"):
        read_config(lens)


# --- 7. strict typed fields and caps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("hidden_size", "32", "hidden_size: Input should be a valid integer"),
        ("bias", "yes", "bias: Input should be a valid boolean"),
        ("vocab_size", True, "vocab_size: Input should be a valid integer"),
        ("num_layers", 3.0, "num_layers: Input should be a valid integer"),
        ("schema_version", True, "schema_version: .*not a boolean"),
        ("model_type", "gpt2\x1b[2J", "model_type: .*control character U\\+001B"),
        ("base_revision", "../../x", "base_revision: .*contains '..'"),
        ("training", {"steps": "20"}, "training.steps: Input should be a valid integer"),
        ("training", {"dataset": "d" * 1001}, "training.dataset: String should have at most 1000 characters"),
    ],
)
def test_lens_config_fields_are_strict_not_coerced(tmp_path, field, value, message):
    lens = _lens_dir(tmp_path)
    _edit_config(lens, **{field: value})
    with pytest.raises(LensFormatError, match=message):
        read_config(lens)


def test_json_natural_types_still_load(tmp_path):
    lens = _lens_dir(tmp_path)
    metrics = {"kl": [1, 0.5, 0], "cross_entropy": [3, 2, 1]}  # ints where floats are expected: JSON's own types
    _edit_config(
        lens,
        training={"learning_rate": 1, "layers": [0, 2], "hyperparameters": {"lr": 1, "schedule": {"warmup": [1]}}},
        evaluation={"tuned": metrics, "logit": metrics, "model_cross_entropy": 2},
    )
    config = read_config(lens)
    assert config.training.learning_rate == 1.0 and config.evaluation.tuned.kl == [1.0, 0.5, 0.0]


def test_a_30_mb_notes_field_is_refused_in_well_under_a_second(tmp_path):
    path = _write_yaml(tmp_path, _entry_dict(lenses=[_legacy_version(notes="x")]))
    path.write_text(path.read_text(encoding="utf-8").replace("notes: x", "notes: " + "x" * 30_000_000))
    start = time.perf_counter()
    _, problems = Registry.check(tmp_path)
    elapsed = time.perf_counter() - start
    assert len(problems) == 1 and "more than the 1,048,576 bytes" in problems[0], problems
    assert elapsed < 0.5, elapsed


def test_notes_longer_than_2000_characters_are_refused():
    with pytest.raises(ValueError, match="notes\n.*at most 2000 characters"):
        LensVersion.model_validate(_legacy_version(notes="n" * 2001))
    assert LensVersion.model_validate(_legacy_version(notes="n" * 2000)).notes == "n" * 2000


# --- 8. permissions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_saved_lens_and_registry_files_get_normal_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        lens = _lens_dir(tmp_path)
        registry_file = write_entry(
            tmp_path / "registry",
            RegistryEntry(
                model="org/model", facts=ModelFacts(), lenses=[LensVersion.model_validate(_legacy_version())]
            ),
        )
    finally:
        os.umask(old)
    for path in (lens / "config.json", lens / "lens.safetensors", registry_file):
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask, path
    assert sorted(p.name for p in lens.iterdir()) == ["config.json", "lens.safetensors"]  # no temporary left


# --- 9. the legacy pickle refusal -----------------------------------------------------------------------------


class _Exploit:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_refused_pickle_message_never_advises_weights_only_false(tmp_path):
    sentinel = tmp_path / "pwned"
    old = _write_old(tmp_path / "old", {"0.weight": _Exploit(sentinel)})  # a real torch.save archive
    with pytest.raises(LegacyFormatError) as info:
        convert_legacy(old, tmp_path / "new")
    message = str(info.value)
    assert not re.search(r"weights_only.{0,20}False", message), message
    assert "holds code or objects other than tensors" in message
    assert "posix.system" in message or "nt.system" in message  # what it asked for
    assert "torch.save that dict and run `lens-hub convert`" in message  # how to convert safely
    assert not sentinel.exists() and not (tmp_path / "new").exists()
