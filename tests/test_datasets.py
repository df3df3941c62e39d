"""Hub datasets as training and evaluation text: streamed by the real `datasets` library from the loopback Hub."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import SAMPLE, TOKENIZER
from transformers import AutoTokenizer

from lens_hub.errors import DataError
from lens_hub.testing import hub_environment
from lens_hub.training.data import HubDataset, iter_documents, load_token_data, tokenize

REPO = "austen/persuasion"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="module")
def paragraphs():
    return [p.strip() for p in SAMPLE.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 200]


def jsonl(records):
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def parquet(records):
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(list(records)), buf)
    return buf.getvalue()


def test_a_hub_dataset_streams_the_same_tokens_as_the_local_file_pinned_to_a_commit(
    loopback_hub, tokenizer, paragraphs
):
    first = loopback_hub.commit_files(
        REPO, {"data/train.jsonl": jsonl({"text": p} for p in paragraphs)}, repo_type="dataset"
    )
    data = load_token_data(REPO, tokenizer, seq_len=64)
    local = tokenize(paragraphs, tokenizer, seq_len=64)
    assert torch.equal(data.sequences, local.sequences)
    assert data.num_bytes == local.num_bytes > 0
    assert data.source == f"{REPO}@{first} (train)"

    # A later commit on main changes what "main" reads, but not a run pinned to the first commit.
    loopback_hub.commit_files(REPO, {"data/train.jsonl": jsonl([{"text": "Changed. " * 100}])}, repo_type="dataset")
    assert next(iter_documents(REPO)).startswith("Changed.")
    pinned = load_token_data(REPO, tokenizer, seq_len=64, revision=first)
    assert torch.equal(pinned.sequences, local.sequences)


def test_streaming_reads_only_the_shards_the_run_needs(loopback_hub, tokenizer, paragraphs):
    shards = {f"data/train-{i:05d}-of-00003.parquet": parquet({"text": p} for p in paragraphs) for i in range(3)}
    loopback_hub.commit_files(REPO, shards, repo_type="dataset")
    loopback_hub.clear_log()
    data = load_token_data(REPO, tokenizer, seq_len=32, max_sequences=10)
    assert data.sequences.shape == (10, 32)
    read = {r.path.rsplit("/", 1)[-1] for r in loopback_hub.requests if r.method == "GET" and "/resolve/" in r.path}
    assert "train-00000-of-00003.parquet" in read
    assert not read & {"train-00001-of-00003.parquet", "train-00002-of-00003.parquet"}


def test_configs_splits_and_columns(loopback_hub, tokenizer, paragraphs):
    card = (
        "---\nconfigs:\n"
        "- config_name: early\n  data_files:\n  - {split: train, path: early/*.jsonl}\n"
        "- config_name: late\n  data_files:\n  - {split: train, path: late/*.jsonl}\n"
        "  - {split: validation, path: late-val/*.jsonl}\n---\n# Persuasion\n"
    )
    half = len(paragraphs) // 2
    loopback_hub.commit_files(
        REPO,
        {
            "README.md": card.encode(),
            "early/a.jsonl": jsonl({"body": p} for p in paragraphs[:half]),
            "late/a.jsonl": jsonl({"body": p} for p in paragraphs[half:]),
            "late-val/a.jsonl": jsonl([{"body": paragraphs[0]}]),
        },
        repo_type="dataset",
    )
    assert list(iter_documents(f"{REPO}:late", text_column="body")) == paragraphs[half:]
    assert list(iter_documents(f"{REPO}:late", text_column="body", split="validation")) == paragraphs[:1]
    with pytest.raises(DataError, match=r"'de' not found\. Available: \['early', 'late'\].*--data NAME:CONFIG"):
        list(iter_documents(f"{REPO}:de", text_column="body"))
    with pytest.raises(DataError, match=r"Config name is missing.*\['early', 'late'\]"):
        list(iter_documents(REPO, text_column="body"))
    with pytest.raises(DataError, match=r"Bad split: test\. Available splits: \['train'\].*--split"):
        list(iter_documents(f"{REPO}:early", text_column="body", split="test"))
    with pytest.raises(DataError, match=r"record 0: no column 'text' .*\(columns: body\); pass --text-column NAME"):
        list(iter_documents(f"{REPO}:early"))


def test_missing_datasets_revisions_and_offline_mode_are_clear_errors(loopback_hub, tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"dataset austen/nothing@main: the repository does not exist"):
        HubDataset.resolve("austen/nothing")
    loopback_hub.commit_files(REPO, {"a.jsonl": jsonl([{"text": "x"}])}, repo_type="dataset")
    with pytest.raises(DataError, match=r"@v9: the pinned revision does not exist"):
        HubDataset.resolve(REPO, "v9")
    with pytest.raises(DataError, match=r"does not exist"):
        list(iter_documents(tmp_path / "missing.jsonl"))  # a path-like name is never taken for a dataset
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)\. Pass a local"):
        HubDataset.resolve(REPO)


def test_cli_trains_on_a_hub_dataset_reading_only_what_it_needs(loopback_hub, tmp_path, paragraphs):
    from helpers import save_model

    save_model(tmp_path)
    commit = loopback_hub.commit_files(
        REPO, {"data/train.jsonl": jsonl({"text": p} for p in paragraphs * 4)}, repo_type="dataset"
    )
    args = ["--steps", "3", "--tokens-per-step", "64", "--seq-len", "32", "--batch-size", "2", "--device", "cpu"]
    done = subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", "train", "model", "--data", REPO, "--out", "lens", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env=os.environ,  # the loopback Hub's HF_ENDPOINT and token
    )
    assert done.returncode == 0, done.stderr
    # 3 steps x 2 sequences: the stream is cut there, though it holds far more.
    assert f"6 sequences of 32 tokens from {REPO}@{commit} (train)" in " ".join(done.stdout.split())
    training = json.loads((tmp_path / "lens" / "config.json").read_text())["training"]
    assert training["dataset"] == f"{REPO}@{commit} (train)"
    assert training["num_tokens"] == 3 * 64


def test_hub_environment_repoints_an_already_imported_datasets(tmp_path, loopback_hub):
    import datasets.config

    assert loopback_hub.endpoint == datasets.config.HF_ENDPOINT
    assert Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(tmp_path)
    with hub_environment(loopback_hub, tmp_path / "other"):
        assert Path(datasets.config.HF_DATASETS_CACHE) == tmp_path / "other" / "datasets"
    assert Path(datasets.config.HF_DATASETS_CACHE).is_relative_to(tmp_path / "hf_home")
