"""Import of lenses in the old tuned-lens format: exact outputs, and nothing but tensors is ever unpickled."""

import json
import logging
import os
import pickle
import subprocess
import sys

import pytest
import torch
from helpers import run_hidden
from tiny_models import LAYERS, tiny_model
from torch.nn.functional import linear

from lens_hub import (
    IncompatibleLensError,
    LegacyFormatError,
    LogitLens,
    TunedLens,
    convert_legacy,
    load_legacy_lens,
)
from lens_hub.core.legacy import export_legacy

D = 32


def _old_params(dtype=torch.float16, bias=True, seed=0, prefix=""):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(LAYERS):
        state[f"{prefix}{i}.weight"] = (torch.randn(D, D, generator=g) * 0.05).to(dtype)
        if bias:
            state[f"{prefix}{i}.bias"] = (torch.randn(D, generator=g) * 0.05).to(dtype)
    return state


def _write_old(directory, params, **config):
    """An old-format lens exactly as tuned-lens 0.2.0 wrote it (torch.save of a dict + config.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {
        "base_model_name_or_path": "gpt2",
        "d_model": D,
        "num_hidden_layers": LAYERS,
        "bias": True,
        "base_model_revision": None,
        "unemebd_hash": "c9ae8dca2ab5a9a4e6d6f0f3d8a2",  # sic, as old files have it
        "lens_type": "linear_tuned_lens",
        "some_future_key": {"nested": 1},
    }
    cfg.update(config)
    torch.save(params, directory / "params.pt")
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


def _old_formula(model, params, h, i):
    """What the old package computes: h + translator_i(h) in fp32, then the model's unembedding."""
    w = params[f"{i}.weight"].float()
    b = params[f"{i}.bias"].float() if f"{i}.bias" in params else None
    return LogitLens.from_model(model)(h + linear(h, w, b), i)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_converted_lens_gives_the_original_outputs(tmp_path, gpt2_model, dtype, bias):
    params = _old_params(dtype, bias)
    _write_old(tmp_path / "old", params, bias=bias)
    config = convert_legacy(tmp_path / "old", tmp_path / "new", model=gpt2_model)
    assert (config.base_model, config.hidden_size, config.num_layers, config.bias) == ("gpt2", D, LAYERS, bias)
    assert config.dtype == "float32"  # upcast: lossless, and the old package computed in fp32
    assert config.fingerprint and config.vocab_size == 96 and config.model_type == "gpt2"
    lens = TunedLens.load(tmp_path / "new", gpt2_model)
    out = run_hidden(gpt2_model)
    with torch.no_grad():
        for i in range(LAYERS):
            h = out.hidden_states[i]
            assert torch.equal(lens(h, i), _old_formula(gpt2_model, params, h, i))


def test_load_legacy_lens_in_memory_and_prefixed_keys(tmp_path, gpt2_model):
    params = _old_params(torch.float32, prefix="layer_translators.")
    _write_old(tmp_path, params)
    lens = load_legacy_lens(tmp_path, gpt2_model)
    plain = {k.removeprefix("layer_translators."): v for k, v in params.items()}
    h = run_hidden(gpt2_model).hidden_states[2]
    with torch.no_grad():
        assert torch.equal(lens(h, 2), _old_formula(gpt2_model, plain, h, 2))
    assert not (tmp_path / "lens.safetensors").exists()


def test_convert_without_model_records_unknown_facts(tmp_path, gpt2_model):
    _write_old(tmp_path / "old", _old_params())
    config = convert_legacy(tmp_path / "old", tmp_path / "new")
    assert config.model_type is None and config.vocab_size is None and config.fingerprint is None
    # Width and depth are still checked at load time.
    TunedLens.load(tmp_path / "new", gpt2_model)
    with pytest.raises(IncompatibleLensError, match="num_layers 3 but the model has 2"):
        TunedLens.load(tmp_path / "new", tiny_model("gpt2", n_layer=2))


def test_local_path_base_model_is_dropped_or_overridden(tmp_path, caplog):
    _write_old(tmp_path / "old", _old_params(), base_model_name_or_path="/home/someone/models/gpt2")
    with caplog.at_level(logging.WARNING, logger="lens_hub.core.legacy"):
        assert convert_legacy(tmp_path / "old", tmp_path / "a").base_model is None
    assert "local path" in caplog.text
    assert convert_legacy(tmp_path / "old", tmp_path / "b", base_model="openai-community/gpt2").base_model == (
        "openai-community/gpt2"
    )


def test_model_that_does_not_fit_is_refused(tmp_path):
    _write_old(tmp_path / "old", _old_params())
    with pytest.raises(IncompatibleLensError, match="hidden_size 32 but the model has 64"):
        convert_legacy(tmp_path / "old", tmp_path / "new", model=tiny_model("gpt2", n_embd=64))
    assert not (tmp_path / "new").exists()


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    sentinel = tmp_path / "pwned"
    _write_old(tmp_path / "old", {})
    (tmp_path / "old" / "params.pt").write_bytes(pickle.dumps({"0.weight": _Exploit(sentinel)}))
    with pytest.raises(LegacyFormatError, match=r"weights_only=True.*never unpickles"):
        convert_legacy(tmp_path / "old", tmp_path / "new")
    assert not sentinel.exists()
    assert not (tmp_path / "new").exists()


class _Opaque:
    pass


@pytest.mark.parametrize(
    ("params", "config", "message"),
    [
        (lambda: {"0.weight": _Opaque()}, {}, "weights_only=True"),
        (lambda: [torch.zeros(1)], {}, "must hold a dict of tensors, got list"),
        (lambda: {k: v for k, v in _old_params().items() if k != "2.bias"}, {}, r"missing \['2.bias'\]"),
        (lambda: {**_old_params(), "0.weight": torch.zeros(D, D + 1)}, {}, r"0.weight has shape \[32, 33\]"),
        (lambda: {**_old_params(), "9.weight": torch.zeros(D, D)}, {}, r"unexpected \['9.weight'\]"),
        (lambda: {**_old_params(), "0.bias": torch.zeros(D, dtype=torch.int64)}, {}, "unsupported dtype"),
        (_old_params, {"lens_type": "nonlinear"}, "lens_type 'nonlinear' is not supported"),
        (_old_params, {"d_model": None}, "d_model must be a positive integer"),
    ],
    ids=["object", "not-a-dict", "missing-key", "bad-shape", "extra-layer", "int-dtype", "lens-type", "no-d_model"],
)
def test_malformed_old_lenses_are_refused_with_the_reason(tmp_path, params, config, message):
    _write_old(tmp_path / "old", params(), **config)
    with pytest.raises(LegacyFormatError, match=message):
        convert_legacy(tmp_path / "old", tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_missing_files_and_already_converted(tmp_path, gpt2_model):
    with pytest.raises(LegacyFormatError, match="config.json does not exist"):
        convert_legacy(tmp_path, tmp_path / "new")
    TunedLens.from_model(gpt2_model).save(tmp_path / "ours")
    with pytest.raises(LegacyFormatError, match="already a lens-hub lens"):
        convert_legacy(tmp_path / "ours", tmp_path / "new")


def test_export_then_convert_round_trips(tmp_path, gpt2_model):
    lens = TunedLens.from_model(gpt2_model, base_model="openai-community/gpt2")
    with torch.no_grad():
        for p in lens.parameters():
            p.normal_(std=0.05)
    export_legacy(lens, tmp_path / "old")
    assert torch.load(tmp_path / "old" / "params.pt", weights_only=True).keys() == {
        k.removeprefix("translators.") for k in lens.state_dict()
    }
    convert_legacy(tmp_path / "old", tmp_path / "new", model=gpt2_model)
    back = TunedLens.load(tmp_path / "new", gpt2_model)
    assert back.config == lens.config
    for a, b in zip(lens.state_dict().values(), back.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_cli_convert_with_a_local_model_and_info(tmp_path, gpt2_model):
    gpt2_model.save_pretrained(tmp_path / "model")
    _write_old(tmp_path / "old", _old_params())
    done = _cli("convert", "old", "new", "--model", "model", "--base-model", "openai-community/gpt2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Converted" in done.stdout
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert config["base_model"] == "openai-community/gpt2"
    assert config["fingerprint"] == TunedLens.from_model(gpt2_model).config.fingerprint
    shown = _cli("info", "new", cwd=tmp_path)
    assert shown.returncode == 0 and "openai-community/gpt2" in shown.stdout


def test_cli_reports_refusals_in_one_line(tmp_path):
    _write_old(tmp_path / "old", [torch.zeros(1)])
    done = _cli("convert", "old", "new", cwd=tmp_path)
    assert done.returncode == 1
    assert "error: LegacyFormatError" in done.stderr and "Traceback" not in done.stderr
