"""Hostile input, round 2: a stranger's repo, a Hub mirror that lies, a planted cache or registry file, huge data.

Each test plays the attacker against the real code, on the loopback Hub (with fault rules that make it lie) or on
real files, and checks that the attack is refused with a one-line LensHubError and leaves nothing behind.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import BASE, LENS_REPO, SAMPLE, TOKENIZER, legacy_entry, random_lens, same_outputs, upload, write_old
from huggingface_hub import HfApi, constants
from tiny_models import tiny_model
from transformers import AutoTokenizer

import lens_hub.hub.files
from lens_hub import TunedLens
from lens_hub.core.config import LensConfig, TrainingInfo
from lens_hub.core.format import MAX_CONFIG_BYTES
from lens_hub.core.legacy import convert_legacy
from lens_hub.errors import (
    CheckpointError,
    ChecksumMismatchError,
    DataError,
    HubResponseError,
    LegacyFormatError,
    LensHubError,
    PublishError,
    RegistryError,
    UnverifiedLensWarning,
)
from lens_hub.hub.card import CardInfo, build_card
from lens_hub.hub.publish import execute, plan_push
from lens_hub.registry.schema import RegistryEntry
from lens_hub.registry.store import Registry, write_entry
from lens_hub.training.checkpoint import load_checkpoint, save_checkpoint
from lens_hub.training.data import PIECE_CHARS, TokenData, load_token_data
from lens_hub.training.settings import TrainSettings
from lens_hub.training.train import train_lens

pytestmark = pytest.mark.usefixtures("own_lens_cache")


def _cache_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _gets(hub, name: str) -> list:
    return [r for r in hub.requests if r.method == "GET" and r.path.endswith("/" + name)]


# --------------------------------------------------------------------------------- 1. views in params.pt


def _old_lens(folder: Path, d: int, params: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"d_model": d, "num_hidden_layers": 1, "bias": True}))
    torch.save(params, folder / "params.pt")
    return folder


@pytest.mark.parametrize(
    ("weight", "why"),
    [
        (lambda d: torch.zeros(1).expand(d, d), r"view of 4 bytes presenting 16,777,216 bytes"),
        (lambda d: torch.zeros(d).expand(d, d), r"view of 8,192 bytes presenting 16,777,216 bytes"),
        (lambda d: torch.empty(d, d, device="meta"), r"is a meta tensor"),
        (lambda d: torch.eye(d).to_sparse(), r"sparse_coo tensor|not a plain tensor state dict"),
    ],
    ids=["stride-0 scalar", "stride-0 row", "meta", "sparse"],
)
def test_params_that_are_not_plain_dense_tensors_are_refused_before_any_copy(tmp_path, weight, why):
    d = 2048  # a converted copy of the view would be 16 MiB per layer; near the caps, 16 GiB
    src = _old_lens(tmp_path / "old", d, {"0.weight": weight(d), "0.bias": torch.zeros(d)})
    assert (src / "params.pt").stat().st_size < 100_000
    with pytest.raises(LegacyFormatError, match=why):
        convert_legacy(src, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_registry_lens_whose_config_contradicts_the_facts_is_refused_before_its_weights(
    loopback_hub, model, tmp_path
):
    old = write_old(tmp_path / "old", random_lens(model))
    raw = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps(raw | {"d_model": 64}))  # the entry says hidden_size 32
    upload(old, "loopback/tuned-lens", subfolder=f"lens/{BASE}", repo_type="space")
    write_entry(tmp_path / "reg", legacy_entry())
    loopback_hub.clear_log()
    with (
        pytest.warns(UnverifiedLensWarning),
        pytest.raises(LensHubError, match=r"hidden_size 32 but the lens's config.json declares 64"),
    ):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "reg")
    assert not [r for r in loopback_hub.requests if r.path.endswith("params.pt")]  # never even asked for


# -------------------------------------------------------------------------------- 2. bounded downloads


def _lens_repo(tmp_path: Path, model, *, pad_config: int = 0, pad_weights: int = 0) -> Path:
    lens_dir = random_lens(model).save(tmp_path / "lens")
    if pad_config:
        cfg = json.loads((lens_dir / "config.json").read_text())
        (lens_dir / "config.json").write_text(json.dumps(cfg | {"notes": "x"}) + " " * pad_config)
    if pad_weights:
        with (lens_dir / "lens.safetensors").open("ab") as f:
            f.write(b"\0" * pad_weights)
    upload(lens_dir, LENS_REPO)
    return lens_dir


def test_a_config_announced_over_its_cap_is_never_downloaded(loopback_hub, model, tmp_path):
    _lens_repo(tmp_path, model, pad_config=MAX_CONFIG_BYTES + 1)
    loopback_hub.clear_log()
    with pytest.raises(HubResponseError, match=r"config.json: the server announces 4,19\d,\d{3} bytes, more than"):
        TunedLens.from_pretrained(f"hf://{LENS_REPO}", model=model)
    assert not _gets(loopback_hub, "config.json")
    assert not _cache_files(Path(constants.HF_HUB_CACHE) / "models--loopback--tiny-llama-lens" / "blobs")


def test_weights_larger_than_their_config_implies_are_never_downloaded(loopback_hub, model, tmp_path):
    _lens_repo(tmp_path, model, pad_weights=6 * 2**20)  # 3 layers of 32 x 32 need ~13 kB
    loopback_hub.clear_log()
    with pytest.raises(HubResponseError, match=r"lens.safetensors: the server announces 6,30\d,\d{3} bytes"):
        TunedLens.from_pretrained(f"hf://{LENS_REPO}", model=model)
    assert not _gets(loopback_hub, "lens.safetensors")


def test_a_server_that_lies_about_a_size_is_cut_off_at_the_bound(loopback_hub, model, tmp_path):
    _lens_repo(tmp_path, model, pad_config=6 * 2**20)
    # The metadata claims a small file, and the body comes without a length: only the bound can stop it.
    loopback_hub.inject("HEAD", "config.json$", "headers", headers={"Content-Length": "900", "X-Linked-Size": "900"})
    loopback_hub.inject("GET", "config.json$", "headers", headers={"Content-Length": None})
    with pytest.raises(HubResponseError, match=r"sent more than the 4,194,304 bytes .* reading stopped there"):
        TunedLens.from_pretrained(f"hf://{LENS_REPO}", model=model)
    blobs = Path(constants.HF_HUB_CACHE) / "models--loopback--tiny-llama-lens" / "blobs"
    assert not _cache_files(blobs)  # no partial download left for a later call to resume


def test_a_size_announced_smaller_than_sent_is_a_hub_response_error(loopback_hub, model, tmp_path):
    _lens_repo(tmp_path, model)
    small = {"Content-Length": "100", "X-Linked-Size": "100"}  # the truth (13 kB) is within the bound, not the claim
    loopback_hub.inject("HEAD", "lens.safetensors$", "headers", headers=small, times=3)
    with pytest.raises(HubResponseError, match="another number of bytes than it announced"):
        TunedLens.from_pretrained(f"hf://{LENS_REPO}", model=model)


def test_a_dripping_server_meets_the_deadline(loopback_hub, model, tmp_path, monkeypatch):
    _lens_repo(tmp_path, model)
    monkeypatch.setattr(lens_hub.hub.files, "TRANSFER_SECONDS", 1.0)
    loopback_hub.inject("GET", "config.json$", "drip", seconds=0.25)
    start = time.monotonic()
    with pytest.raises(HubResponseError, match=r"did not finish within 1 s"):
        TunedLens.from_pretrained(f"hf://{LENS_REPO}", model=model)
    assert time.monotonic() - start < 20  # the drip alone would take minutes


def test_pin_refuses_a_file_larger_than_its_record_before_downloading(loopback_hub, model, tmp_path):
    from lens_hub.errors import LensContentError
    from lens_hub.hub.curate import pin

    old = write_old(tmp_path / "old", random_lens(model))
    upload(old, "loopback/tuned-lens", subfolder=f"lens/{BASE}", repo_type="space")
    entry = legacy_entry().model_dump()
    entry["lenses"][0]["files"] = [{"path": "config.json", "size": 15}, {"path": "params.pt"}]
    write_entry(tmp_path / "reg", RegistryEntry.model_validate(entry))
    loopback_hub.clear_log()
    with pytest.raises(LensContentError, match=r"announces \d+ bytes, more than the 15"):
        pin("tiny-llama", registry=tmp_path / "reg")
    assert not _gets(loopback_hub, "config.json")


# ------------------------------------------------------------------------ 3 and 4. the cache and its paths


def test_a_planted_link_out_of_the_cache_is_never_followed_to_delete(loopback_hub, published, model, tmp_path):
    _, _, commit, registry = published
    TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    snapshot = Path(constants.HF_HUB_CACHE) / "models--loopback--tiny-llama-lens" / "snapshots" / commit
    precious = tmp_path / "precious.bin"
    precious.write_bytes(b"the user's own file")
    (snapshot / "lens.safetensors").unlink()
    (snapshot / "lens.safetensors").symlink_to(precious)
    with pytest.raises(ChecksumMismatchError, match="links outside the cache"):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)
    assert precious.read_bytes() == b"the user's own file"
    assert not (snapshot / "lens.safetensors").exists()  # the link is gone; a new call downloads again
    TunedLens.from_pretrained("tiny-llama", model=model, registry=registry)


@pytest.mark.parametrize("header", ["ETag", "X-Linked-Etag"])
def test_an_etag_that_is_a_path_is_refused_before_the_client_uses_it(loopback_hub, model, tmp_path, header):
    _lens_repo(tmp_path, model)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    evil = f'"{os.path.relpath(victim, Path(constants.HF_HUB_CACHE) / "models--loopback--tiny-llama-lens" / "blobs")}"'
    loopback_hub.inject("HEAD", "lens.safetensors$", "headers", headers={header: evil}, times=3)
    with pytest.raises(HubResponseError, match=rf"{header.lower()} .* is neither a sha256 nor a git blob id"):
        TunedLens.from_pretrained(f"hf://{LENS_REPO}", model=model)
    assert victim.read_text() == "keep me"


def test_a_commit_that_is_a_path_is_refused_and_nothing_is_written_outside_the_cache(loopback_hub, model, tmp_path):
    _lens_repo(tmp_path, model)
    loopback_hub.inject("GET", f"api/models/{LENS_REPO}/revision/main", "json", fields={"sha": "../../../evil.pth"})
    with pytest.raises(HubResponseError, match=r"did not report a commit .* '../../../evil.pth'"):
        TunedLens.from_pretrained(f"hf://{LENS_REPO}", model=model)
    loopback_hub.inject("HEAD", "config.json$", "headers", headers={"X-Repo-Commit": "../../evil.pth"}, times=3)
    with pytest.raises(HubResponseError, match=r"X-Repo-Commit '../../evil.pth' is not a 40-hex commit id"):
        TunedLens.from_pretrained(f"hf://{LENS_REPO}@main", model=model)
    assert not list(tmp_path.rglob("evil.pth"))


def test_verification_fails_closed_when_nothing_can_check_a_file(loopback_hub, model, tmp_path):
    _lens_repo(tmp_path, model)
    TunedLens.from_pretrained(f"hf://{LENS_REPO}", model=model)
    repo = Path(constants.HF_HUB_CACHE) / "models--loopback--tiny-llama-lens"
    (link,) = repo.glob("snapshots/*/lens.safetensors")
    blob = link.resolve()
    renamed = blob.with_name("not-a-hash")
    blob.rename(renamed)
    with renamed.open("r+b") as f:  # swapped bytes, under a name that no hash can be checked against
        f.seek(200)
        f.write(b"\x7f")
    link.unlink()
    link.symlink_to(renamed)
    with pytest.raises(ChecksumMismatchError, match=r"no recorded checksum, and its cache name 'not-a-hash'"):
        TunedLens.from_pretrained(f"hf://{LENS_REPO}", model=model)


def test_a_planted_conversion_in_lens_hubs_cache_is_never_read(loopback_hub, model, tmp_path, own_lens_cache):
    lens = random_lens(model)
    upload(write_old(tmp_path / "old", lens), "loopback/tuned-lens", subfolder=f"lens/{BASE}", repo_type="space")
    write_entry(tmp_path / "reg", legacy_entry())
    commit = HfApi().repo_info("loopback/tuned-lens", repo_type="space").sha
    # Where earlier versions kept their converted copy, and read it back whenever a config existed there.
    planted = own_lens_cache / "converted" / "spaces--loopback--tuned-lens" / commit / f"lens/{BASE}"
    random_lens(model, seed=7).save(planted)
    with pytest.warns(UnverifiedLensWarning):
        loaded = TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "reg")
    assert same_outputs(lens, loaded, model)


def test_parallel_loads_of_one_legacy_lens_all_succeed(loopback_hub, model, tmp_path):
    lens = random_lens(model)
    upload(write_old(tmp_path / "old", lens), "loopback/tuned-lens", subfolder=f"lens/{BASE}", repo_type="space")
    write_entry(tmp_path / "reg", legacy_entry())
    with pytest.warns(UnverifiedLensWarning):
        TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "reg")  # cached once
    outcomes: list[object] = []

    def load() -> None:
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outcomes.append(TunedLens.from_pretrained("tiny-llama", model=model, registry=tmp_path / "reg"))
        except Exception as exc:  # collected, so the assertion names what failed
            outcomes.append(exc)

    threads = [threading.Thread(target=load) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == 12 and all(isinstance(o, TunedLens) for o in outcomes), outcomes


def test_adopting_an_unparseable_config_leaves_no_blob_in_the_cache(loopback_hub, model, tmp_path):
    from lens_hub.errors import LensContentError
    from lens_hub.hub.curate import adopt

    lens_dir = random_lens(model).save(tmp_path / "lens")
    (lens_dir / "config.json").write_text("{not json")
    upload(lens_dir, LENS_REPO)
    with pytest.raises(LensContentError, match="was not adopted"):
        adopt(f"hf://{LENS_REPO}", registry=tmp_path / "reg", base_model=BASE)
    repo = Path(constants.HF_HUB_CACHE) / "models--loopback--tiny-llama-lens"
    assert not _cache_files(repo / "blobs") and not list(repo.glob("snapshots/*/config.json"))


# ----------------------------------------------------------------------------- 5. markup in model cards


def test_model_cards_show_strangers_values_as_text(tmp_path):
    model = tiny_model("llama")
    lens = TunedLens.from_model(model, base_model=BASE)
    training = TrainingInfo(
        dataset="<img src=x onerror=alert(1)>",
        loss="<svg onload=alert(2)>",
        hyperparameters={"<script>alert(3)</script>": "[click](javascript:alert(4))", "a|b": "`code` | cell"},
    )
    config = lens.config.model_copy(update={"model_type": "[x](javascript:alert(5))", "training": training})
    card = build_card(config, CardInfo(BASE, LENS_REPO, "1.0.0", "v1.0.0"))
    body = card.split("---\n", 2)[2]
    for raw in ("<img", "<svg", "<script"):
        assert raw not in body, raw
    assert not re.search(r"(?<!\\)\]\(javascript:", body)  # every bracket escaped: no link can form
    assert "&lt;img src=x onerror=alert(1)&gt;" in body  # shown, as text
    assert all(line.count("|") - line.count("\\|") in (0, 3) for line in body.splitlines() if line.startswith("| "))
    with pytest.raises(ValueError, match=r"contains '<'"):
        LensConfig.model_validate(lens.config.model_dump() | {"base_revision": "<script>alert(6)</script>"})


def test_an_old_config_with_markup_in_its_revision_is_not_converted(tmp_path, gpt2_model):
    old = write_old(tmp_path / "old", random_lens(gpt2_model))
    raw = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps(raw | {"base_model_revision": "<script>alert(1)</script>"}))
    with pytest.raises(LegacyFormatError, match="base_revision"):
        convert_legacy(old, tmp_path / "new")


# ------------------------------------------------------------------------------ 7. registry files


def test_a_symlinked_registry_file_is_refused_and_secrets_are_never_echoed(tmp_path):
    secret = "hf_" + "A1b2C3d4" * 5
    secrets = tmp_path / "token"
    secrets.write_text(f"model: org/name\nlenses: []\nfacts: {{}}\ntoken: {secret}\n")
    reg = tmp_path / "reg"
    reg.mkdir()
    (reg / "org--name.yaml").symlink_to(secrets)
    with pytest.raises(RegistryError, match="is a symbolic link") as refused:
        Registry.load(reg)
    assert secret not in str(refused.value)
    (reg / "org--name.yaml").unlink()
    shutil.copy(secrets, reg / "org--name.yaml")  # a regular file with an unknown key holding the token
    done = subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", "registry", "validate", str(reg)],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "token" in done.stderr + done.stdout
    assert secret not in done.stderr + done.stdout and secret[:12] not in done.stderr + done.stdout


# ------------------------------------------------------------------------------- 8. one long document


class _Recording:
    """The real tokenizer, recording the longest text it was given."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.longest = tokenizer, 0
        self.eos_token_id = tokenizer.eos_token_id

    def __call__(self, texts, **kwargs):
        self.longest = max(self.longest, *(len(t) for t in texts))
        return self.tokenizer(texts, **kwargs)


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_one_huge_document_is_tokenized_in_pieces_and_only_as_far_as_needed(tmp_path, kind):
    text = "the lens reads what the model predicts " * (20 * 2**20 // 40)  # 20 MiB on one line
    path = tmp_path / f"huge.{kind}"
    path.write_text(text if kind == "txt" else json.dumps({"text": text}) + "\n")
    tokenizer = _Recording(AutoTokenizer.from_pretrained(TOKENIZER))
    data = load_token_data(path, tokenizer, seq_len=16, max_sequences=8)
    assert data.sequences.shape == (8, 16)
    assert tokenizer.longest <= PIECE_CHARS  # never the whole 20 MiB at once
    assert data.num_bytes <= 2 * PIECE_CHARS  # and only as far as the run needs


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\xff\xfe\x00binary", r"not UTF-8"),
        (b'{"text": 1' + b"1" * 5000 + b"}\n", r"not a JSON record"),
        (b'{"text": ' + b"[" * 100_000 + b"\n", r"not a JSON record"),
    ],
    ids=["binary", "5000 digits", "deeply nested"],
)
def test_bad_eval_and_detect_files_are_one_line_errors(tmp_path, content, why):
    from lens_hub.analysis.anomaly import read_prompts
    from lens_hub.errors import PromptFileError

    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    with pytest.raises(DataError, match=why):
        load_token_data(path, tokenizer, seq_len=16)
    with pytest.raises(PromptFileError, match=why.replace("not a JSON record", "is not a JSON record")):
        read_prompts(path)


# ------------------------------------------------------------------------------------------- bugs


def test_a_deeply_nested_checkpoint_state_is_a_checkpoint_error(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {"state": {}, "param_groups": []}, {}, {}, 2)
    (state,) = tmp_path.glob("step-*/state.json")
    state.write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match=r"unreadable \(nests lists or objects more than"):
        load_checkpoint(state.parent)


def test_a_run_never_resumes_another_models_or_another_texts_checkpoints(tmp_path):
    tokens = load_token_data(SAMPLE, AutoTokenizer.from_pretrained(TOKENIZER), seq_len=16)
    settings = TrainSettings(init="zero", steps=2, tokens_per_step=32, seq_len=16, batch_size=2, quiet=True)
    model = tiny_model("gpt2", vocab_size=50257, n_embd=32, n_layer=3)
    train_lens(model, tokens, settings, tmp_path)
    other_model = tiny_model("gpt2", seed=1, vocab_size=50257, n_embd=32, n_layer=3)  # the same shapes
    with pytest.raises(CheckpointError, match=r"different settings \(model\): the model \(its unembedding\)"):
        train_lens(other_model, tokens, settings, tmp_path)
    shuffled = TokenData(tokens.sequences.flip(0), tokens.num_bytes, tokens.num_tokens_read, tokens.source)
    with pytest.raises(CheckpointError, match=r"different settings \(data\): the training tokens"):
        train_lens(model, shuffled, settings, tmp_path)


def test_a_long_license_is_refused_before_anything_is_built(loopback_hub, model, tmp_path):
    lens_dir = random_lens(model).save(tmp_path / "lens")
    with pytest.raises(PublishError, match=r"--license 'x{40}'\.\.\. is not a license id"):
        plan_push(lens_dir, LENS_REPO, license="x" * 300, registry=tmp_path / "reg", base_model=BASE)
    assert not (tmp_path / "reg").exists()


def test_a_tag_made_between_plan_and_execute_is_not_raced(loopback_hub, model, tmp_path):
    lens_dir = random_lens(model).save(tmp_path / "lens")
    HfApi().create_repo(LENS_REPO)
    plan = plan_push(lens_dir, LENS_REPO, registry=tmp_path / "reg", base_model=BASE)
    head = loopback_hub.head(LENS_REPO)
    HfApi().create_tag(LENS_REPO, tag=plan.tag, revision=head)  # someone else releases meanwhile
    with pytest.raises(LensHubError, match=rf"got the tag {plan.tag} .* nothing was uploaded"):
        execute(plan)
    assert loopback_hub.head(LENS_REPO) == head  # no untagged commit on main


def test_info_shows_markup_in_a_config_as_text(tmp_path):
    lens = TunedLens.from_model(tiny_model("llama"))
    training = TrainingInfo(dataset="[/] [link=https://evil.example]click[/link]")
    lens.config = lens.config.model_copy(update={"model_type": "[bold red]x[/]", "training": training})
    lens.save(tmp_path / "lens")
    done = subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", "info", str(tmp_path / "lens")],
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    flat = " ".join(done.stdout.split())
    assert "[bold red]x[/]" in flat and "[link=https://evil.example]click[/link]" in flat
    assert "\x1b]8;" not in done.stdout  # no terminal hyperlink


def test_slowloris_connections_do_not_lock_out_the_explorer(monkeypatch):
    pytest.importorskip("uvicorn")
    from helpers import call, running

    import lens_hub.serve.app as serve

    monkeypatch.setattr(serve, "HEADER_SECONDS", 1.0)
    model = tiny_model("gpt2", vocab_size=50257, n_embd=32, n_layer=3)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    app = serve.create_app(model, tokenizer, random_lens(model), max_tokens=16, top_k=2, lens_name="./lens")
    with running(app) as url:
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        idle = []
        for _ in range(140):  # more than limit_concurrency, each stuck in its headers
            s = socket.create_connection((host, int(port)))
            s.sendall(b"POST /api/trajectory HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            idle.append(s)
        time.sleep(2.5)
        status, _, body = call(url, "/api/trajectory", {"prompt": "The capital", "stat": "entropy"})
        assert status == 200, body
        huge = b'{"prompt": "x", "stat": ' + b"9" * 5000 + b"}"  # valid JSON that Python will not convert
        status, _, body = call(url, "/api/trajectory", huge, headers={"Content-Type": "application/json"})
        assert status == 400 and b"cannot be read" in body, body
        for s in idle:
            s.close()
