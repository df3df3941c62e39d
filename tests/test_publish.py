"""Publishing (``lens-hub push``) end to end against the loopback Hub: real HTTP, real files, no mocks."""

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from helpers import BASE, assert_png, run_hidden
from huggingface_hub import HfApi, ModelCard
from rich.console import Console
from tiny_models import tiny_model

from lens_hub import TunedLens
from lens_hub.cli.reports import print_push
from lens_hub.core.config import EvaluationInfo, LayerMetrics, TrainingInfo
from lens_hub.errors import (
    AuthenticationError,
    ConcurrentUpdateError,
    HubUnreachableError,
    InvalidNameError,
    LensHubError,
    PublishError,
    VersionExistsError,
)
from lens_hub.hub.publish import execute, next_version, plan_push, push
from lens_hub.registry.store import Registry
from lens_hub.testing import LOOPBACK_USER

REPO = f"{LOOPBACK_USER}/tiny-llama-lens"
WRITES = {"POST", "PUT", "DELETE", "PATCH"}

pytestmark = pytest.mark.usefixtures("own_lens_cache")


@pytest.fixture
def registry(tmp_path):
    return tmp_path / "registry"


def _lens(model, seed=0, *, metrics=True, base_model=BASE):
    lens = TunedLens.from_model(model, base_model=base_model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    update = {
        "training": TrainingInfo(
            dataset="notes.txt",
            init="fit",
            fit_tokens=8192,
            fit_ridge=1e-4,
            num_tokens=4096,
            steps=20,
            loss="kl",
            hyperparameters={"lr": 1.0},
        )
    }
    if metrics:
        update["evaluation"] = EvaluationInfo(
            dataset="heldout.txt",
            num_tokens=2048,
            tuned=LayerMetrics(kl=[0.5, 0.3, 0.1], cross_entropy=[2.0, 1.8, 1.6]),
            logit=LayerMetrics(kl=[3.0, 2.0, 0.9], cross_entropy=[5.0, 4.0, 2.1]),
            model_cross_entropy=1.5,
        )
    lens.config = lens.config.model_copy(update=update)
    return lens


@pytest.fixture
def lens_dir(model, tmp_path):
    return _lens(model).save(tmp_path / "lens")


def _push(lens_dir, registry, repo=REPO, **kwargs):
    """Publish through the library, and render the report the CLI prints for it."""
    out = io.StringIO()
    result = push(lens_dir, repo, registry=registry, **kwargs)
    print_push(result, Console(file=out, width=200))
    return result, out.getvalue()


def _same_outputs(a, b, model):
    out = run_hidden(model)
    with torch.no_grad():
        return all(torch.equal(a(out.hidden_states[i], i), b(out.hidden_states[i], i)) for i in range(a.num_layers))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _snapshot(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir()} if directory.exists() else None


def test_first_push_is_one_commit_tagged_registered_and_loads_identically(loopback_hub, lens_dir, registry, model):
    result, output = _push(lens_dir, registry, license="mit", aliases="tiny-llama")

    commits = loopback_hub.commit_ids(REPO)
    assert len(commits) == 2  # the create-repo commit + exactly one upload
    assert result.commit == commits[0] == loopback_hub.head(REPO)
    assert loopback_hub.list_files(REPO) == ["README.md", "config.json", "eval.png", "lens.safetensors"]
    assert loopback_hub.tags(REPO) == {"v1.0.0": result.commit}
    assert (result.version, result.tag) == ("1.0.0", "v1.0.0")
    assert sum(r.method == "POST" and "/commit/" in r.path for r in loopback_hub.requests) == 1

    # The registry entry: pinned to the commit, checksums of the two artifact files, the new default.
    reg = Registry.load(registry)
    entry = reg.get("tiny-llama")
    assert entry.model == BASE and result.registry_file == registry / "loopback--tiny-llama.yaml"
    (version,) = entry.lenses
    assert (version.version, version.default, version.status) == ("1.0.0", True, "verified")
    assert version.format == "safetensors"
    loc = version.location
    assert (loc.repo_id, loc.subfolder, loc.revision) == (REPO, "", result.commit)
    assert version.license == "mit"
    assert version.training.dataset == "notes.txt" and version.training.steps == 20
    t = version.training  # the init and the fit are part of the provenance the registry carries
    assert (t.init, t.fit_tokens, t.fit_ridge) == ("fit", 8192, 1e-4)
    assert version.evaluation.tuned.kl == [0.5, 0.3, 0.1]
    files = {f.path: f for f in version.files}
    assert set(files) == {"config.json", "lens.safetensors"}
    for name in files:
        data = loopback_hub.read_file(REPO, name)
        assert files[name].size == len(data) == (lens_dir / name).stat().st_size
        assert files[name].sha256 == _sha(data) == _sha((lens_dir / name).read_bytes())
    cfg = json.loads((lens_dir / "config.json").read_text())
    assert entry.facts.model_dump(exclude_none=True) == {
        k: cfg[k] for k in ("model_type", "hidden_size", "num_layers", "vocab_size", "fingerprint")
    }
    assert "+model: loopback/tiny-llama" in result.diff and result.diff in output

    # The model card, parsed back by huggingface_hub from the repo.
    card = ModelCard.load(REPO)
    assert card.data.base_model == BASE
    assert card.data.base_model_relation == "adapter"
    assert card.data.library_name == "lens-hub"
    assert card.data.tags == ["tuned-lens", "interpretability", "lens-hub"]
    assert card.data.license == "mit"
    text = loopback_hub.read_file(REPO, "README.md").decode()
    assert text == result.card
    assert f'TunedLens.from_pretrained("{BASE}", model=model)' in text
    assert f'TunedLens.from_pretrained("hf://{REPO}@v1.0.0", model=model)' in text
    assert "one learned affine *translator* per layer" in text
    assert "| notes.txt |" in text and "| 20 |" in text  # training provenance
    assert "| initialisation | closed-form fit on 8,192 tokens (ridge 0.0001), then 20 KL steps |" in text
    assert "| 0 | 0.500 | 3.000 | 2.000 | 5.000 |" in text  # KL / cross-entropy, tuned vs logit
    assert "](eval.png)" in text
    assert_png(loopback_hub.read_file(REPO, "eval.png"))

    # Loads through the registry by base model id, with identical outputs; and straight from the tag.
    lens = TunedLens.load(lens_dir, model)
    loaded = TunedLens.from_pretrained(BASE, model=model, registry=registry)
    assert _same_outputs(lens, loaded, model) and loaded.config == lens.config
    assert _same_outputs(lens, TunedLens.from_pretrained(f"hf://{REPO}@v1.0.0", model=model), model)


def test_card_rows_are_labelled_by_the_evaluated_layers(loopback_hub, registry, model, tmp_path):
    lens = _lens(model)
    subset = EvaluationInfo(
        dataset="heldout.txt",
        num_tokens=2048,
        layers=[0, 2],
        tuned=LayerMetrics(kl=[0.5, 0.1], cross_entropy=[2.0, 1.6]),
        logit=LayerMetrics(kl=[3.0, 0.9], cross_entropy=[5.0, 2.1]),
    )
    lens.config = lens.config.model_copy(update={"evaluation": subset})
    result, _ = _push(lens.save(tmp_path / "subset"), registry)

    card = loopback_hub.read_file(REPO, "README.md").decode()
    rows = [line for line in card.splitlines() if line.startswith("| ") and line.count("|") == 6]
    table = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    assert table[0][0] == "layer"
    assert [r[0] for r in table[1:]] == ["0", "2"]  # the evaluated layers, not row numbers 0, 1
    assert table[2][1:3] == ["0.100", "0.900"]  # layer 2's KL, tuned and logit
    assert result.card == card


def test_second_version_becomes_the_default_and_the_first_stays_loadable(loopback_hub, lens_dir, registry, model):
    first, _ = _push(lens_dir, registry)
    newer = _lens(model, seed=1)
    second = newer.push_to_hub(REPO, registry=registry)

    assert second.version == "1.0.1" and second.tag == "v1.0.1"
    assert loopback_hub.tags(REPO) == {"v1.0.0": first.commit, "v1.0.1": second.commit}
    assert len(loopback_hub.commit_ids(REPO)) == 3
    entry = Registry.load(registry).get(BASE)
    assert [(v.version, v.default) for v in entry.lenses] == [("1.0.0", False), ("1.0.1", True)]
    assert entry.lenses[0].location.revision == first.commit
    assert "-  default: true" in second.diff and "+- version: 1.0.1" in second.diff

    old = TunedLens.load(lens_dir, model)
    assert _same_outputs(newer, TunedLens.from_pretrained(BASE, model=model, registry=registry), model)
    assert _same_outputs(old, TunedLens.from_pretrained(BASE, version="1.0.0", model=model, registry=registry), model)
    assert not _same_outputs(old, newer, model)


def test_an_existing_tag_is_refused_before_anything_is_uploaded(loopback_hub, lens_dir, registry):
    _push(lens_dir, registry)
    commits, reg = loopback_hub.commit_ids(REPO), _snapshot(registry)
    loopback_hub.clear_log()

    with pytest.raises(VersionExistsError, match=r"already has the tag v1\.0\.0.*next free one is 1\.0\.1"):
        _push(lens_dir, registry, version="v1.0.0")
    assert loopback_hub.commit_ids(REPO) == commits
    assert not [r for r in loopback_hub.requests if r.method in WRITES]
    assert _snapshot(registry) == reg


def test_a_branch_moved_during_the_push_is_a_concurrent_update_error(loopback_hub, lens_dir, registry):
    # The commit request is held for a second on arrival; meanwhile someone else commits to main.
    rule = loopback_hub.inject("POST", r"/commit/main$", kind="delay", seconds=1.0)
    moved = {}

    def other_writer():
        deadline = time.monotonic() + 20
        while rule.times > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        moved["commit"] = loopback_hub.commit_files(REPO, {"notes.md": b"someone else"})

    thread = threading.Thread(target=other_writer)
    thread.start()
    try:
        with pytest.raises(ConcurrentUpdateError, match="moved while publishing") as caught:
            _push(lens_dir, registry)
    finally:
        thread.join()
    assert moved["commit"][:12] in str(caught.value)
    assert loopback_hub.head(REPO) == moved["commit"]
    assert loopback_hub.list_files(REPO) == ["notes.md"]  # nothing of the lens was committed
    assert loopback_hub.tags(REPO) == {}
    assert not registry.exists()


def test_dry_run_reads_only_and_writes_nothing(loopback_hub, lens_dir, registry, model):
    _push(lens_dir, registry)
    before, commits = _snapshot(registry), loopback_hub.commit_ids(REPO)
    loopback_hub.clear_log()

    result, output = _push(_lens(model, seed=1).save(lens_dir.parent / "v2"), registry, dry_run=True)

    assert not [r for r in loopback_hub.requests if r.method in WRITES]
    assert _snapshot(registry) == before and loopback_hub.commit_ids(REPO) == commits
    assert result.commit is None and result.dry_run and result.tag == "v1.0.1"
    assert [f.path_in_repo for f in result.files] == ["config.json", "lens.safetensors", "README.md", "eval.png"]
    for f in result.files:
        assert f.path_in_repo in output and f"{f.size:,}" in output
    assert "v1.0.1" in output and "Nothing was uploaded" in output
    assert "# Tuned lens for loopback/tiny-llama" in output  # the card
    assert "+- version: 1.0.1" in result.diff and "<commit of the upload>" in result.diff and result.diff in output


def test_subfolders_have_their_own_tags_cards_and_versions(loopback_hub, lens_dir, registry, model):
    root, _ = _push(lens_dir, registry)
    first, _ = _push(lens_dir, registry, subfolder="/llama/", version="2.0.0")
    second, _ = _push(_lens(model, seed=2, metrics=False).save(lens_dir.parent / "v3"), registry, subfolder="llama")

    assert loopback_hub.tags(REPO) == {
        "v1.0.0": root.commit,
        "llama/v2.0.0": first.commit,
        "llama/v2.0.1": second.commit,
    }
    files = loopback_hub.list_files(REPO)
    assert [f for f in files if f.startswith("llama/")] == [
        "llama/README.md",
        "llama/config.json",
        "llama/eval.png",  # from 2.0.0; 2.0.1 has no metrics, so its commit holds no new plot
        "llama/lens.safetensors",
    ]
    assert len(loopback_hub.commit_ids(REPO)) == 4
    assert loopback_hub.read_file(REPO, "README.md", revision="v1.0.0") == loopback_hub.read_file(REPO, "README.md")
    card = ModelCard(loopback_hub.read_file(REPO, "llama/README.md").decode())
    assert card.data.base_model == BASE and card.data.base_model_relation == "adapter"
    assert "eval.png" not in card.text and "No evaluation is recorded" in card.text
    # The card names the release itself (the tag, percent-encoded), not whatever is on main, and that name loads.
    pinned = f"hf://{REPO}@llama%2Fv2.0.1/llama"
    assert f'TunedLens.from_pretrained("{pinned}", model=model)' in card.text
    assert f'hf://{REPO}/llama"' not in card.text
    assert _same_outputs(
        TunedLens.load(lens_dir.parent / "v3", model), TunedLens.from_pretrained(pinned, model=model), model
    )

    entry = Registry.load(registry).get(BASE)
    assert [(v.version, v.location.subfolder, v.default) for v in entry.lenses] == [
        ("1.0.0", "", False),
        ("2.0.0", "llama", False),
        ("2.0.1", "llama", True),
    ]
    lens = TunedLens.load(lens_dir, model)
    assert _same_outputs(lens, TunedLens.from_pretrained(BASE, version="2.0.0", model=model, registry=registry), model)


def test_a_missing_or_rejected_token_is_an_authentication_error(loopback_hub, lens_dir, registry, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_valid_token")
    with pytest.raises(AuthenticationError, match="rejected the token.*run `hf auth login` or set HF_TOKEN"):
        _push(lens_dir, registry)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(AuthenticationError, match="token and none was found: run `hf auth login` or set HF_TOKEN"):
        _push(lens_dir, registry)
    assert not [r for r in loopback_hub.requests if r.method in WRITES]
    assert not registry.exists()


def test_a_namespace_the_token_may_not_write_is_refused(loopback_hub, lens_dir, registry):
    with pytest.raises(AuthenticationError, match="may not write to the namespace 'someone-else'"):
        _push(lens_dir, registry, repo="someone-else/lens")
    assert not [r for r in loopback_hub.requests if r.method in WRITES]


def test_a_lens_made_from_a_local_path_needs_base_model_and_private_works(loopback_hub, registry, model, tmp_path):
    lens = _lens(model, metrics=False)
    lens.config = lens.config.model_copy(update={"base_model": None})
    lens_dir = lens.save(tmp_path / "local")
    with pytest.raises(PublishError, match="--base-model ORG/NAME"):
        _push(lens_dir, registry)
    assert not loopback_hub.requests

    _push(lens_dir, registry, base_model=BASE, private=True)
    assert HfApi().repo_info(REPO).private
    uploaded = json.loads(loopback_hub.read_file(REPO, "config.json"))
    assert uploaded["base_model"] == BASE
    assert json.loads((lens_dir / "config.json").read_text())["base_model"] is None  # the local lens is untouched
    assert loopback_hub.list_files(REPO) == ["README.md", "config.json", "lens.safetensors"]  # no metrics, no plot
    assert _same_outputs(lens, TunedLens.from_pretrained(BASE, model=model, registry=registry), model)


def test_a_lens_contradicting_the_registry_facts_is_refused_before_upload(loopback_hub, lens_dir, registry):
    _push(lens_dir, registry)
    commits = loopback_hub.commit_ids(REPO)
    other = TunedLens.from_model(tiny_model("gpt2"), base_model=BASE).save(lens_dir.parent / "gpt2")
    with pytest.raises(PublishError, match="model_type 'llama' but the lens says 'gpt2'"):
        _push(other, registry)
    assert loopback_hub.commit_ids(REPO) == commits


def test_bad_arguments_are_refused_without_a_request(loopback_hub, lens_dir, registry):
    for kwargs, error, message in [
        ({"repo": "no-namespace"}, PublishError, "names no namespace"),
        ({"version": "1.0"}, InvalidNameError, r"version '1.0' \(--version\) is not a semantic version"),
        ({"subfolder": "a/../b"}, PublishError, "relative folder"),
    ]:
        with pytest.raises(error, match=message):
            _push(lens_dir, registry, **kwargs)
    with pytest.raises(LensHubError, match="does not exist"):
        _push(lens_dir.parent / "nowhere", registry)
    assert not loopback_hub.requests


def test_next_version():
    assert next_version([]) == "1.0.0"
    assert next_version(["1.0.0", "1.2.9", "1.10.0", "1.10.1-rc.1"]) == "1.10.2"


def test_cli_push_end_to_end(loopback_hub, lens_dir, registry):
    cmd = [
        sys.executable,
        "-m",
        "lens_hub.cli",
        "push",
        str(lens_dir),
        "--repo",
        REPO,
        "--registry",
        str(registry),
    ]
    done = subprocess.run([*cmd, "--license", "apache-2.0", "--aliases", "tiny,tl"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "tagged v1.0.0" in done.stdout and "+model: loopback/tiny-llama" in done.stdout
    entry = Registry.load(registry).get("TL")
    assert entry.aliases == ["tiny", "tl"] and entry.default_version.license == "apache-2.0"
    assert loopback_hub.tags(REPO) == {"v1.0.0": entry.default_version.location.revision}

    again = subprocess.run([*cmd, "--version", "1.0.0"], capture_output=True, text=True)
    assert again.returncode == 1
    assert "VersionExistsError" in again.stderr and "Traceback" not in again.stderr


def test_train_with_push_evaluates_publishes_and_registers(loopback_hub, tmp_path):
    from helpers import SAMPLE, save_model

    model = save_model(tmp_path)
    args = [
        "train",
        "model",
        "--data",
        str(SAMPLE),
        "--out",
        "lens",
        "--steps",
        "2",
        "--tokens-per-step",
        "64",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--layers",
        "0,2",
        "--heldout",
        "4",
        "--base-model",
        "loopback/tiny-gpt2",
        "--push",
        "loopback/tiny-gpt2-lens",
        "--registry",
        "reg",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    entry = Registry.load(tmp_path / "reg").get("loopback/tiny-gpt2")
    version = entry.default_version
    assert version.status == "verified"
    assert version.evaluation is not None
    assert version.evaluation.layers == [0, 2]
    assert len(version.evaluation.tuned.kl) == 2
    model.config._name_or_path = "loopback/tiny-gpt2"
    loaded = TunedLens.from_pretrained("loopback/tiny-gpt2", model=model, registry=tmp_path / "reg")
    local = TunedLens.load(tmp_path / "lens", model)
    for a, b in zip(local.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ publishing honestly


def _unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_offline_dry_run_shows_everything_and_says_what_it_could_not_check(lens_dir, registry):
    # No loopback Hub here: the tests run with HF_HUB_OFFLINE=1, so every Hub request fails at once.
    plan = plan_push(lens_dir, REPO, registry=registry, dry_run=True, token="hf_not_checked")
    assert not plan.hub_checked and plan.version == "1.0.0" and plan.tag == "v1.0.0"
    out = io.StringIO()
    print_push(plan.result(), Console(file=out, width=200))
    output = out.getvalue()
    for f in plan.files:  # files and sizes, the card and the registry entry are all shown
        assert f.path_in_repo in output and f"{f.size:,}" in output
    assert "# Tuned lens for loopback/tiny-llama" in output and "+- version: 1.0.0" in output
    flat = " ".join(output.split())  # rich wraps long sentences
    assert "tag it v1.0.0 (not checked to be free)" in flat
    note = flat.split("Note: offline dry run", 1)[1]
    for unchecked in (f"whether {REPO} exists", "whether the tag v1.0.0 is free", "whether your token may write"):
        assert unchecked in note
    assert not registry.exists()  # nothing written

    with pytest.raises(PublishError, match="without reaching the Hub"):
        execute(plan)  # a plan nobody checked against the Hub is never carried out
    with pytest.raises(HubUnreachableError):
        plan_push(lens_dir, REPO, registry=registry, token="hf_not_checked")  # a real push still fails


def test_cli_dry_run_with_the_hub_unreachable_picks_the_version_from_the_registry(lens_dir, registry, model, tmp_path):
    # A first version in the registry (written offline, as a plan's entry would be): the dry run picks the next one.
    from lens_hub.registry.store import write_entry

    write_entry(registry, plan_push(lens_dir, REPO, registry=registry, dry_run=True, token=False).entry)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_unused_port()}", HF_HOME=str(tmp_path / "hf"), HF_TOKEN="hf_x")
    env.update(HF_HUB_OFFLINE="0", NO_COLOR="1", TERM="dumb", COLUMNS="200")
    cmd = [sys.executable, "-m", "lens_hub.cli", "push", str(lens_dir), "--repo", REPO, "--registry", str(registry)]
    done = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "lens.safetensors" in done.stdout and "+- version: 1.0.1" in done.stdout
    assert "Note: offline dry run: could not reach the Hub" in " ".join(done.stdout.split())
    assert "Nothing was uploaded or written (dry run)." in done.stdout
    real = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert real.returncode == 1 and "HubUnreachableError" in real.stderr


def _private_lens(model, tmp_path, *, zero_layer: int | None = None, trained=None):
    """A lens whose provenance names a private absolute path, as a local training run records it."""
    lens = _lens(model)
    if zero_layer is not None:
        with torch.no_grad():
            for p in lens.translators[zero_layer].parameters():
                p.zero_()
    training = lens.config.training.model_copy(update={"dataset": "/home/me/private/notes.txt", "layers": trained})
    evaluation = lens.config.evaluation.model_copy(
        update={"dataset": "/home/me/private/notes.txt (held out)", "num_tokens": 1024}
    )
    lens.config = lens.config.model_copy(update={"training": training, "evaluation": evaluation})
    return lens.save(tmp_path / "private")


def test_card_config_and_entry_name_the_data_without_its_path_and_read_a_trained_layer(
    loopback_hub, registry, model, tmp_path
):
    # Layer 2 was never trained (provenance), layer 1's translator is all zero: only layer 0 is trained.
    result, output = _push(_private_lens(model, tmp_path, zero_layer=1, trained=[0, 1]), registry)

    card = loopback_hub.read_file(REPO, "README.md").decode()
    config = loopback_hub.read_file(REPO, "config.json").decode()
    entry_text = (registry / "loopback--tiny-llama.yaml").read_text()
    for published in (card, config, entry_text, output):
        assert "/home/me" not in published and "private" not in published
    assert "Held-out evaluation on notes.txt (1,024 tokens), in bits per byte" in card
    assert card.count("held out") == 0 and "tokens) (" not in card  # said once, by "Held-out evaluation"
    assert "| dataset | notes.txt |" in card
    assert "logits = lens(hidden[0], 0)  # what layer 0 predicts" in card  # the one trained layer
    version = Registry.load(registry).get(BASE).default_version
    assert version.training.dataset == "notes.txt"
    assert version.evaluation.dataset == "notes.txt (held out)"
    assert version.untrained_layers == [1, 2]
    assert json.loads(config)["training"]["dataset"] == "notes.txt"
    assert any("2 of 3 layers are untrained (1-2)" in w for w in result.warnings)
    assert "**Caveat:** 2 of 3 layers are untrained (1-2)" in card


def test_the_card_example_reads_the_middle_trained_layer(loopback_hub, registry, model, tmp_path):
    result, _ = _push(_lens(model).save(tmp_path / "all"), registry, dry_run=True)
    assert "logits = lens(hidden[1], 1)" in result.card  # all three trained: the middle one


def _evaluated(model, tmp_path, tuned_kl, name):
    lens = _lens(model)
    evaluation = lens.config.evaluation.model_copy(update={"tuned": LayerMetrics(kl=tuned_kl)})
    lens.config = lens.config.model_copy(update={"evaluation": evaluation})
    return lens.save(tmp_path / name)


def test_a_good_lens_is_published_with_its_quality_and_no_warning(loopback_hub, registry, model, tmp_path):
    result, output = _push(_evaluated(model, tmp_path, [0.5, 0.3, 0.1], "good"), registry)
    assert result.warnings == [] and "Warning" not in output
    reg = Registry.load(registry)  # the entry validates, with what a reader judges quality by
    version = reg.get(BASE).default_version
    assert version.status == "verified"
    assert (version.training.fit_tokens, version.training.num_tokens) == (8192, 4096)
    assert version.evaluation.tuned.kl == [0.5, 0.3, 0.1] and version.evaluation.logit.kl == [3.0, 2.0, 0.9]
    assert version.evaluation.dataset == "heldout.txt" and version.untrained_layers == []
    from lens_hub.registry.catalogue import list_pretrained

    (record,) = list_pretrained(registry=registry)
    assert record.quality.summary() == "KL 1.97 → 0.30" and record.tokens_seen == 12288


def test_a_barely_trained_lens_is_flagged_at_push_and_in_the_dry_run(loopback_hub, registry, model, tmp_path):
    barely = _evaluated(model, tmp_path, [2.9, 1.95, 0.88], "barely")  # 0.97x the logit lens's KL
    dry, dry_output = _push(barely, registry, dry_run=True)
    pushed, output = _push(barely, registry)
    for result, text in ((dry, dry_output), (pushed, output)):
        (warning,) = result.warnings
        assert "the lens is barely better than the logit lens: mean held-out KL 1.910 against" in warning
        assert "(0.97x; a trained tuned lens is well under 0.9x)" in warning and "--steps" in warning
        assert f"Warning: {warning}" in " ".join(text.split())
    card = loopback_hub.read_file(REPO, "README.md").decode()
    assert "**Caveat:** the lens is barely better than the logit lens" in card

    unevaluated, text = _push(_lens(model, seed=2, metrics=False).save(tmp_path / "none"), registry, dry_run=True)
    (warning,) = unevaluated.warnings
    assert warning.startswith("the lens has no held-out evaluation recorded") and "lens-hub eval" in warning
    assert "--store" in warning and "Warning: the lens has no held-out evaluation" in text


def test_push_to_hub_of_an_unevaluated_lens_names_a_fix_that_works_in_python(loopback_hub, registry, model):
    from lens_hub.analysis.evaluate import evaluate
    from lens_hub.training.data import TokenData

    lens = _lens(model, seed=3, metrics=False)
    (warning,) = lens.push_to_hub(REPO, registry=registry, dry_run=True).warnings
    assert "lens-hub-push-" not in warning  # not the temporary directory, gone before anyone reads this
    assert "evaluate(model, heldout, lens).summary()" in warning and "lens.save(DIR)" in warning

    # The fix as the warning spells it, on held-out tokens.
    ids = torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    heldout = TokenData(ids, num_bytes=4 * 16 * 4, num_tokens_read=4 * 16, source="heldout.txt")
    lens.config = lens.config.model_copy(update={"evaluation": evaluate(model, heldout, lens).summary()})
    after = lens.push_to_hub(REPO, registry=registry, dry_run=True).warnings
    assert not any("no held-out evaluation" in w for w in after)  # (a random lens may still be judged barely better)
