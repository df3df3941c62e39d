"""The lens registry: the shipped catalogue, its JSON Schema, located validation errors, name resolution, the
``LENS_HUB_REGISTRY`` override, YAML round trips and the registry inside the wheel. Real files, no mocks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from helpers import invoke

import lens_hub
from lens_hub.errors import LensNotFoundError, RegistryError
from lens_hub.hub.pretrained import resolve
from lens_hub.registry import store
from lens_hub.registry.catalogue import list_pretrained
from lens_hub.registry.schema import (
    HubLocation,
    LensFile,
    LensVersion,
    ModelFacts,
    RegistryEntry,
    TrainingInfo,
    registry_json_schema,
    semver_key,
)
from lens_hub.registry.store import (
    RACY_SECONDS,
    REGISTRY_ENV,
    Registry,
    default_registry_dir,
    dump_entry,
    parse_entry_file,
    write_entry,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "registry"
BROKEN = Path(__file__).resolve().parent / "data" / "registry_broken"

SHA = "0123456789abcdef" * 4
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cli(*args: str, cwd: Path = REPO, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``lens-hub`` (in-process), plain text, the registry not overridden unless ``env_extra`` says so."""
    env = {k: v for k, v in os.environ.items() if k != REGISTRY_ENV}
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="200", **(env_extra or {}))
    return invoke(*args, cwd=cwd, env=env)


@pytest.fixture
def shipped(monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    return Registry.load()


# --- 1. the shipped registry -------------------------------------------------------------------------------------

PYTHIA_DEDUPED = ["70m", "160m", "410m", "1.4b", "2.8b", "6.9b", "12b"]
PYTHIA_DEDUPED_V0 = ["70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]
# The models of the upstream Space AlignmentResearch/tuned-lens (lens/<model>/), by the name the catalogue uses.
CATALOGUE = [
    "gpt2",
    "gpt2-large",
    "gpt2-xl",
    *[f"EleutherAI/pythia-{s}-deduped" for s in PYTHIA_DEDUPED],
    *[f"EleutherAI/pythia-{s}-deduped-v0" for s in PYTHIA_DEDUPED_V0],
    "EleutherAI/gpt-neox-20b",
    "facebook/opt-125m",
    "facebook/opt-1.3b",
    "facebook/opt-6.7b",
    "facebook/llama-7b",
    "facebook/llama-13b",
    "facebook/llama-30b",
    "facebook/llama-65b",
    "lmsys/vicuna-13b-v1.1",
    "CarperAI/stable-vicuna-13b",
    "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-7b-chat-hf",
    "meta-llama/Llama-2-13b-hf",
    "meta-llama/Llama-2-13b-chat-hf",
    "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Meta-Llama-3-8B-Instruct",
]


def test_catalogue_list_itself_has_34_distinct_models():
    assert len(CATALOGUE) == len(set(CATALOGUE)) == 34


def test_shipped_registry_loads_and_holds_the_34_catalogue_models(shipped):
    if Path(lens_hub.__file__).resolve().parent.parent == REPO:
        assert shipped.directory.resolve() == SHIPPED.resolve()  # a checkout reads its own registry/
    assert len(shipped.entries) == 34
    resolved = {name: shipped.get(name).model for name in CATALOGUE}
    assert len(set(resolved.values())) == 34  # every catalogue name is its own entry
    for size in ("", "-large", "-xl"):
        assert resolved[f"gpt2{size}"] == f"openai-community/gpt2{size}"
    for name in CATALOGUE[3:]:
        assert resolved[name] == name  # the other catalogue names are canonical ids
    for size in ("7b", "13b", "30b", "65b"):
        assert shipped.get(f"huggyllama/llama-{size}").model == f"facebook/llama-{size}"
        assert f"huggyllama/llama-{size}" in shipped.entries[f"facebook/llama-{size}"].aliases


def test_shipped_entries_are_unverified_with_nothing_invented(shipped):
    for model_id, entry in shipped.entries.items():
        assert shipped.files[model_id].name == model_id.replace("/", "--") + ".yaml"
        assert entry.facts.revision is None, model_id
        assert len(entry.lenses) == 1, model_id
        lens = entry.default_version
        assert lens.format == "tuned-lens-legacy", model_id
        assert lens.status == "unverified", model_id
        assert lens.location.revision is None, model_id
        assert (lens.location.repo_id, lens.location.repo_type) == ("AlignmentResearch/tuned-lens", "space")
        assert lens.location.subfolder.startswith("lens/"), model_id
        assert sorted(f.path for f in lens.files) == ["config.json", "params.pt"], model_id
        assert all(f.sha256 is None and f.size is None for f in lens.files), model_id


def test_shipped_files_have_no_hash_like_strings():
    """No hash was made up: nothing that looks like a sha256 or a commit appears in any shipped file."""
    for path in SHIPPED.glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\b[0-9a-f]{40}\b", text), path.name
        assert not re.search(r"^\s*(- )?(sha256|size):", text, re.MULTILINE), path.name


def test_cli_validates_the_shipped_registry():
    result = _cli("registry", "validate")
    assert result.returncode == 0, result.stderr
    assert "✓" in result.stdout and "34 models, 34 lens versions, valid" in result.stdout
    assert result.stderr == ""


def test_cli_validates_a_registry_given_by_path():
    result = _cli("registry", "validate", str(SHIPPED), cwd=BROKEN)
    assert result.returncode == 0, result.stderr
    assert "34 models" in result.stdout


# --- 2. the JSON Schema ------------------------------------------------------------------------------------------


def test_schema_json_is_current():
    text = (SHIPPED / "schema.json").read_text(encoding="utf-8")
    assert text == json.dumps(registry_json_schema(), indent=2) + "\n", "run `lens-hub registry schema --out ...`"
    schema = json.loads(text)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"model", "facts", "lenses"} <= set(schema["required"])
    assert schema["additionalProperties"] is False


def test_cli_schema_check_passes_on_the_shipped_copy():
    result = _cli("registry", "schema", "--out", "registry/schema.json", "--check")
    assert result.returncode == 0, result.stderr
    assert "is current" in result.stdout


def test_cli_schema_check_fails_on_a_stale_copy_and_write_fixes_it(tmp_path):
    stale = tmp_path / "schema.json"
    schema = registry_json_schema()
    schema["title"] = "an older title"
    stale.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    result = _cli("registry", "schema", "--out", str(stale), "--check")
    assert result.returncode == 1
    assert "stale" in result.stderr
    assert _cli("registry", "schema", "--out", str(tmp_path / "missing.json"), "--check").returncode == 1

    assert _cli("registry", "schema", "--out", str(stale)).returncode == 0
    assert stale.read_text(encoding="utf-8") == (SHIPPED / "schema.json").read_text(encoding="utf-8")
    assert _cli("registry", "schema", "--out", str(stale), "--check").returncode == 0


# --- 3. broken registry files: every problem, located by file and field ------------------------------------------

# file -> the problems it must produce, each as (location after "<file>: ", fragments the line must contain).
EXPECTED: dict[str, list[tuple[str, ...]]] = {
    "broken--type-confusion.yaml": [
        ("lenses[0].location.subfolder", "valid string", "(got 0)"),
        ("lenses[0].files[1].path", "valid string", "(got 0)"),
    ],
    "broken--float-version.yaml": [("lenses[0].version", "valid string", "(got 1.0)")],
    "broken--unknown-key.yaml": [
        ("lenses[0].location.revison", "Extra inputs are not permitted"),
        ("lenses[0].location.revision", "Field required"),
    ],
    "broken--duplicate-key.yaml": [("cannot parse", "duplicate key 'format'", "first on line 7", "line 9")],
    "broken--bad-sha256.yaml": [
        ("lenses[0].files[0].sha256", "pattern", "a str of 64 characters"),  # long values: never echoed
        ("lenses[0].files[1].sha256", "pattern", "'deadbeef'"),
    ],
    "broken--verified-unpinned.yaml": [("lenses[0]", "verified lens must be pinned", "location.revision")],
    "broken--verified-no-checksums.yaml": [("lenses[0]", "size and sha256", "['params.pt']")],
    "broken--safetensors-unpinned.yaml": [("lenses[0]", "safetensors lenses must be pinned", "location.revision")],
    "broken--two-defaults.yaml": [("lenses", "exactly one lens version must be the default", "found 2")],
    "broken--no-default.yaml": [("lenses", "exactly one lens version must be the default", "found 0")],
    "broken--versions-out-of-order.yaml": [("lenses", "oldest first", "['1.10.0', '1.9.0']")],
    "broken--duplicate-version.yaml": [("lenses", "versions repeat", "2.0.0")],
    "broken--alias-a.yaml": [],  # valid: the first to claim its alias
    "broken--alias-b.yaml": [("aliases[0]", "'shared-name' is already used by broken/alias-a", "broken--alias-a.yaml")],
    "broken--alias-steals-id.yaml": [("aliases[0]", "'BROKEN/Alias-A' is already used by broken/alias-a")],
    "broken--alias-is-own-id.yaml": [("aliases", "must not repeat the canonical id", "broken/alias-is-own-id")],
    "broken--misnamed.yaml": [("model", "broken/not-the-file-name", "must be named broken--not-the-file-name.yaml")],
    "broken--deprecated-default.yaml": [("lenses[0]", "deprecated version cannot be the default")],
    "broken--missing-required-file.yaml": [
        ("lenses[0]", "tuned-lens-legacy lens needs files", "missing ['params.pt']")
    ],
    "broken--malformed-revision.yaml": [
        ("facts.revision", "pattern", "'0123abc'"),
        ("lenses[0].location.revision", "pattern", "'main'"),
    ],
    "broken--not-a-mapping.yaml": [("must hold a mapping", "not list")],
    "broken--empty.yaml": [("must hold a mapping", "not NoneType")],
    "broken--unparsable.yaml": [("cannot parse", "line 2")],
    "broken--bad-json.json": [("cannot parse", "line 1 column")],
    # Hostile input (tests/test_hostile_inputs.py has the attacks these stand for).
    "broken--decoy-files.yaml": [
        ("lenses[0].files[0].path", "not a plain file name", "'decoy/config.json'"),
        ("lenses[0].files[1].path", "not a plain file name", "'decoy/lens.safetensors'"),
    ],
    "broken--pickle-in-safetensors.yaml": [("lenses[0]", "exactly the files", "remove ['params.pt']", "pickle")],
    "broken--path-traversal.yaml": [("lenses[0].files[2].path", "not a plain file name", "'../../etc/passwd'")],
    "broken--repo-id-dot-git.yaml": [("lenses[0].location.repo_id", "ends with '.git'")],
    "broken--repo-id-non-ascii.yaml": [("lenses[0].location.repo_id", "non-ASCII", "U+0435")],
    "broken--confusable-alias.yaml": [("aliases", "non-ASCII", "U+0440")],
    "broken--bad-version.yaml": [("lenses[0].version", "not a semantic version", "'1.0.2-a..b'")],
    "broken--bad-subfolder.yaml": [("lenses[0].location.subfolder", "'my lens'", "no spaces")],
    "broken--huge-facts.yaml": [("facts.num_layers", "less than or equal to 1024", "30000000")],
    "broken--strict-types.yaml": [
        ("lenses[0].training.steps", "valid integer", "(got '5')"),
        ("lenses[0].training.bias_only", "valid boolean", "(got 'yes')"),
    ],
    "broken--long-notes.yaml": [("lenses[0].notes", "at most 2000 characters")],
    "broken--control-chars.yaml": [("lenses[0].notes", "control character U+001B")],
    "broken--yaml-alias.yaml": [("cannot parse", "YAML aliases", "line 14")],
    "broken--deeply-nested.yaml": [("cannot parse", "more than 32 levels deep", "line 4")],
    "broken--deeply-nested.json": [("cannot parse", "more than 32 levels deep")],
}
N_PROBLEMS = sum(len(v) for v in EXPECTED.values())


def _match(problems: list[str], path: Path, expected: list[tuple[str, ...]]) -> None:
    """Each expected problem matches its own problem line; no line is left unexplained."""
    mine = [p for p in problems if p.startswith(f"{path}: ")]
    left = list(mine)
    for location, *fragments in expected:
        hits = [p for p in left if p.startswith(f"{path}: {location}") and all(f in p for f in fragments)]
        assert hits, f"no problem '{path.name}: {location}' with {fragments} in:\n" + "\n".join(mine)
        left.remove(hits[0])
    assert not left, "unexpected problems:\n" + "\n".join(left)


@pytest.fixture(scope="module")
def broken_check() -> tuple[Registry, list[str]]:
    return Registry.check(BROKEN)


def test_every_broken_fixture_file_is_covered():
    files = {p.name for p in BROKEN.iterdir() if p.suffix in (".yaml", ".yml", ".json")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_file_is_reported_by_file_and_field(broken_check, name):
    _, problems = broken_check
    _match(problems, BROKEN / name, EXPECTED[name])


def test_every_problem_is_reported_not_just_the_first(broken_check):
    registry, problems = broken_check
    assert len(problems) == N_PROBLEMS
    assert len({p.split(": ", 1)[0] for p in problems}) == len([k for k, v in EXPECTED.items() if v])
    # What is valid still loads (and misnamed files are indexed, so the name rule is the only complaint).
    assert set(registry.entries) == {"broken/alias-a", "broken/not-the-file-name"}
    with pytest.raises(RegistryError) as info:
        Registry.load(BROKEN)
    assert info.value.problems == problems
    assert all(p in str(info.value) for p in problems)


def test_cli_validate_lists_every_problem_and_exits_1(broken_check):
    _, problems = broken_check
    result = _cli("registry", "validate", str(BROKEN))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == len(problems) + 1  # one line per problem, none wrapped or dropped
    # Every problem verbatim, also those Rich would read as markup (test_cli_validate_prints_problems_verbatim).
    assert lines[:-1] == [f"✗ {problem}" for problem in problems]
    assert re.fullmatch(rf"{N_PROBLEMS} problem\(s\) in .*registry_broken", lines[-1])
    for name, expected in EXPECTED.items():
        for location, *_ in expected:
            assert any(f"{name}: {location}" in line for line in lines), (name, location)


def _markup_like(text: str) -> bool:
    """Whether Rich would read part of ``text`` as a markup tag."""
    return re.search(r"\[[a-zA-Z/#@]", text) is not None


def test_cli_validate_prints_problems_verbatim(tmp_path):
    (tmp_path / "a--b.yaml").write_text("model: a/b\nfacts: {model_type: [/x\nlenses: []\n", encoding="utf-8")
    (tmp_path / "a--c.yaml").write_text("model: a/c\nfacts: {model_type: [gpt2\nlenses: []\n", encoding="utf-8")
    _, problems = Registry.check(tmp_path)
    assert len(problems) == 2 and all(_markup_like(p) for p in problems)
    result = _cli("registry", "validate", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.splitlines()[:-1] == [f"✗ {p}" for p in problems]


def test_cli_validate_on_a_missing_directory_fails(tmp_path):
    result = _cli("registry", "validate", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "registry directory does not exist" in result.stderr


def test_parse_entry_file_locates_problems_of_one_file():
    entry, problems = parse_entry_file(BROKEN / "broken--verified-unpinned.yaml")
    assert entry is None
    assert len(problems) == 1 and problems[0].startswith(f"{BROKEN / 'broken--verified-unpinned.yaml'}: lenses[0]: ")


def _lens(version: str, *, default: bool = False, **changes) -> LensVersion:
    fields = dict(
        version=version,
        default=default,
        format="tuned-lens-legacy",
        status="unverified",
        location=HubLocation(repo_id="org/lenses", subfolder=f"v{version}", revision=None),
        files=[LensFile(path="config.json"), LensFile(path="params.pt")],
    )
    return LensVersion(**{**fields, **changes})


def test_rules_accept_what_they_should(tmp_path):
    """The counterparts of the broken files: numeric version order, pre-releases, a verified pinned lens."""
    assert semver_key("1.9.0") < semver_key("1.10.0") < semver_key("2.0.0-rc.1") < semver_key("2.0.0")
    assert semver_key("2.0.0-rc.2") < semver_key("2.0.0-rc.10")
    verified = _lens(
        "2.0.0",
        default=True,
        format="safetensors",
        status="verified",
        location=HubLocation(repo_id="org/lenses", revision=COMMIT),
        files=[
            LensFile(path="config.json", size=10, sha256=SHA),
            LensFile(path="lens.safetensors", size=1, sha256=SHA),
        ],
    )
    entry = RegistryEntry(
        model="org/model",
        aliases=["Model", "other-org/model"],
        facts=ModelFacts(),
        lenses=[_lens("1.9.0", status="deprecated"), _lens("1.10.0"), _lens("2.0.0-rc.1"), verified],
    )
    write_entry(tmp_path, entry)
    registry = Registry.load(tmp_path)
    assert registry.get("MODEL").default_version.version == "2.0.0"


# --- 4. name resolution ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("GPT2", "openai-community/gpt2"),
        ("gpt2", "openai-community/gpt2"),
        ("OpenAI-Community/GPT2-XL", "openai-community/gpt2-xl"),
        ("huggyllama/llama-7b", "facebook/llama-7b"),
        ("HuggyLlama/Llama-65B", "facebook/llama-65b"),
        ("eleutherai/PYTHIA-70M-DEDUPED", "EleutherAI/pythia-70m-deduped"),
        ("pythia-1b-deduped-v0", "EleutherAI/pythia-1b-deduped-v0"),
    ],
)
def test_names_resolve_case_insensitively(shipped, name, canonical):
    assert shipped.get(name).model == canonical
    assert shipped.find(name) is shipped.entries[canonical]


def test_canonical_ids_and_aliases_resolve_to_their_entry(shipped):
    for model_id, entry in shipped.entries.items():
        assert shipped.get(model_id) is entry
        for alias in entry.aliases:
            assert shipped.get(alias) is entry


def _quoted(message: str) -> list[str]:
    return re.findall(r"'([^']+)'", message)


def test_unknown_name_suggests_a_few_close_matches(shipped):
    with pytest.raises(LensNotFoundError) as info:
        shipped.get("pythia-70m-dedup")
    message = str(info.value)
    suggested = [q for q in _quoted(message) if q != "pythia-70m-dedup"]
    assert "pythia-70m-deduped" in suggested
    assert 1 <= len(suggested) <= 3
    assert all(shipped.find(s) is not None for s in suggested)
    assert len(message.splitlines()) == 1 and len(message) < 400  # a hint, not the catalogue
    assert shipped.find("pythia-70m-dedup") is None


def test_unknown_name_without_close_match_has_no_suggestion(shipped):
    with pytest.raises(LensNotFoundError) as info:
        shipped.get("zzzz-qqqq-xxxx")
    message = str(info.value)
    assert "Did you mean" not in message
    assert _quoted(message) == ["zzzz-qqqq-xxxx"]


def test_suggestions_are_few(shipped):
    for name in ("gtp2", "llama2-7b", "meta-llama/Llama-2-7b", "opt-125", "EleutherAI/pythia"):
        close = shipped.suggestions(name)
        assert len(close) <= 3, (name, close)
        assert all(shipped.find(c) is not None for c in close)
    assert shipped.suggestions("gtp2")[0] == "gpt2"


# --- 5. LENS_HUB_REGISTRY -----------------------------------------------------------------------------------------


def _entry(model: str = "my-org/tiny", **changes) -> RegistryEntry:
    fields = dict(
        model=model, aliases=["tiny"], facts=ModelFacts(model_type="llama"), lenses=[_lens("1.0.0", default=True)]
    )
    return RegistryEntry(**{**fields, **changes})


def test_env_var_points_the_registry_elsewhere(tmp_path, monkeypatch):
    write_entry(tmp_path, _entry())
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path))
    assert default_registry_dir() == tmp_path
    registry = Registry.load()
    assert registry.directory == tmp_path
    assert list(registry.entries) == ["my-org/tiny"]
    assert registry.get("TINY").model == "my-org/tiny"
    assert registry.find("gpt2") is None

    monkeypatch.delenv(REGISTRY_ENV)
    assert Registry.load().find("gpt2") is not None


def test_env_var_reaches_the_cli(tmp_path):
    write_entry(tmp_path, _entry())
    result = _cli("registry", "validate", env_extra={REGISTRY_ENV: str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "1 models, 1 lens versions" in result.stdout


# --- 6. dump_entry / write_entry round trip ------------------------------------------------------------------------


def test_write_entry_round_trips_and_keeps_strings_strings(tmp_path):
    numeric = "1" * 40  # a commit of digits only would read back as an int if left unquoted
    entry = RegistryEntry(
        model="0/0",
        aliases=["null", "true", "1e3", "0x10"],
        facts=ModelFacts(model_type="gpt2", hidden_size=8, revision=numeric),
        lenses=[
            _lens("1.9.0", location=HubLocation(repo_id="0/0", subfolder="0", revision=None), notes="yes"),
            _lens(
                "1.10.0",
                default=True,
                status="verified",
                location=HubLocation(repo_id="org/0", repo_type="dataset", subfolder="1.10", revision=numeric),
                files=[
                    LensFile(path="config.json", size=0, sha256="1" * 64),
                    LensFile(path="params.pt", size=123, sha256=SHA),
                ],
                license="2024-01-01",
                training=TrainingInfo(dataset="on", lens_hub_version="0.10", steps=5),
                notes="multi\nline: {not: a mapping}",
            ),
        ],
    )
    path = write_entry(tmp_path, entry)
    assert path == tmp_path / "0--0.yaml"
    assert not list(tmp_path.glob(".*"))  # the atomic write leaves no temporary file behind

    text = path.read_text(encoding="utf-8")
    assert text.startswith("schema_version: 1\nmodel: 0/0\n")
    raw = yaml.safe_load(text)
    assert raw["lenses"][1]["version"] == "1.10.0"
    assert raw["lenses"][0]["location"]["subfolder"] == "0"
    assert raw["lenses"][1]["location"]["revision"] == numeric
    assert raw["lenses"][1]["files"][0]["sha256"] == "1" * 64
    assert raw["lenses"][1]["training"]["lens_hub_version"] == "0.10"
    assert raw["aliases"] == ["null", "true", "1e3", "0x10"]
    assert "default" not in raw["lenses"][0]  # defaults are omitted ...
    assert raw["lenses"][0]["location"]["revision"] is None  # ... but an unpinned revision is written out

    loaded, problems = parse_entry_file(path)
    assert problems == []
    assert loaded == entry
    assert Registry.load(tmp_path).get("0/0") == entry
    assert dump_entry(loaded) == text  # the canonical layout is stable


def test_write_entry_replaces_an_entry(tmp_path):
    write_entry(tmp_path, _entry())
    newer = _entry(lenses=[_lens("1.0.0"), _lens("1.1.0", default=True)])
    write_entry(tmp_path, newer)
    assert [p.name for p in tmp_path.iterdir()] == ["my-org--tiny.yaml"]
    assert Registry.load(tmp_path).get("tiny") == newer


# --- 7. parsed once, until a file changes --------------------------------------------------------------------------


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the registry files parsed, in order (the real parser, counted)."""
    seen: list[str] = []
    real = store.parse_entry_file

    def counting(path: Path):
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(store, "parse_entry_file", counting)
    return seen


def _settle(directory: Path) -> None:
    """Date every file back beyond RACY_SECONDS, as a registry's files usually are (ctime moves on regardless)."""
    then = time.time() - 10 * RACY_SECONDS - len(list(directory.iterdir()))
    for path in directory.iterdir():
        os.utime(path, (then, then))


def test_a_second_resolve_parses_nothing_and_every_kind_of_edit_is_seen(tmp_path, parses):
    write_entry(tmp_path, _entry())
    write_entry(tmp_path, _entry("my-org/other", aliases=["other"]))
    _settle(tmp_path)
    assert resolve("tiny", registry=tmp_path).entry.model == "my-org/tiny"
    assert parses == ["my-org--other.yaml", "my-org--tiny.yaml"]
    parses.clear()
    assert resolve("TINY", registry=tmp_path).version.version == "1.0.0"
    assert resolve("other", registry=str(tmp_path)).entry.model == "my-org/other"
    assert [r.model for r in list_pretrained(registry=tmp_path)] == ["my-org/other", "my-org/tiny"]
    assert parses == []  # nor the catalogue

    # Each call gets a registry of its own: adding to one changes no other's.
    mine = Registry.load(tmp_path)
    assert mine.add(_entry("my-org/third", aliases=["third"])) == []
    assert Registry.load(tmp_path).find("third") is None

    # Replaced (write_entry renames a new file into place): seen at once, and parsed at each call until it settles.
    write_entry(tmp_path, _entry(lenses=[_lens("1.0.0"), _lens("1.1.0", default=True)]))
    assert resolve("tiny", registry=tmp_path).version.version == "1.1.0"
    assert resolve("tiny", registry=tmp_path).version.version == "1.1.0"
    assert parses.count("my-org--tiny.yaml") == 2
    _settle(tmp_path)
    parses.clear()
    resolve("tiny", registry=tmp_path)
    resolve("tiny", registry=tmp_path)
    assert len(parses) == 2  # once, both files

    # Edited in place, to the same size, and dated back as if long ago: size and mtime alone could miss it.
    path = tmp_path / "my-org--tiny.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("- tiny\n", "- tinz\n"), encoding="utf-8")
    assert path.stat().st_size == len(text.encode())
    _settle(tmp_path)
    assert resolve("tinz", registry=tmp_path).entry.model == "my-org/tiny"
    with pytest.raises(LensNotFoundError):
        resolve("tiny", registry=tmp_path)

    # Added and removed files.
    write_entry(tmp_path, _entry("my-org/third", aliases=["third"]))
    assert resolve("third", registry=tmp_path).entry.model == "my-org/third"
    (tmp_path / "my-org--third.yaml").unlink()
    with pytest.raises(LensNotFoundError):
        resolve("third", registry=tmp_path)

    # A file broken in place is reported at the next call, not served from before.
    _settle(tmp_path)
    resolve("tinz", registry=tmp_path)
    path.write_text(text.replace("model: my-org/tiny", "model: [oops"), encoding="utf-8")
    _settle(tmp_path)
    with pytest.raises(RegistryError, match="my-org--tiny.yaml: cannot parse"):
        resolve("tinz", registry=tmp_path)


def test_shipped_entries_survive_a_round_trip(shipped, tmp_path):
    for entry in shipped.entries.values():
        write_entry(tmp_path, entry)
    again = Registry.load(tmp_path)
    assert again.entries == shipped.entries


# --- 7. the wheel ships the registry ------------------------------------------------------------------------------

_NETWORK_ERRORS = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Failed to establish a new connection",
    "No matching distribution found for hatchling",
    "Could not find a version that satisfies the requirement hatchling",
    "ProxyError",
    "Network is unreachable",
)


def test_wheel_ships_the_registry(tmp_path):
    """``pip wheel`` fetches hatchling from PyPI (build isolation): skipped, with the reason, when that fails."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0 and any(marker in output for marker in _NETWORK_ERRORS):
        pytest.skip(f"cannot build the wheel without PyPI (for hatchling): {output.strip().splitlines()[-1]}")
    assert result.returncode == 0, output
    (wheel,) = tmp_path.glob("lens_hub-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lens_hub/_registry/openai-community--gpt2.yaml" in names
    assert "lens_hub/_registry/schema.json" in names
    shipped = {p.name for p in SHIPPED.iterdir() if p.suffix in (".yaml", ".json")}
    assert {n.removeprefix("lens_hub/_registry/") for n in names if n.startswith("lens_hub/_registry/")} >= shipped
    assert not any(n.startswith("registry/") for n in names)


def test_quality_fields_are_optional_checked_and_round_trip(tmp_path):
    from pydantic import ValidationError

    # An entry without untrained_layers stays valid: None means "not checked".
    assert _lens("1.0.0").untrained_layers is None
    evaluated = _lens("1.0.0", default=True, untrained_layers=[0, 3], training=TrainingInfo(num_tokens=4096))
    write_entry(tmp_path, _entry(lenses=[evaluated]))
    (loaded,) = Registry.load(tmp_path).get("my-org/tiny").lenses
    assert loaded.untrained_layers == [0, 3] and loaded.training.num_tokens == 4096
    for bad in ([-1], ["1"], [True]):
        with pytest.raises(ValidationError, match="untrained_layers"):
            _lens("1.0.0", untrained_layers=bad)
    field = registry_json_schema()["$defs"]["LensVersion"]["properties"]["untrained_layers"]
    assert "integrity" in field["description"]
