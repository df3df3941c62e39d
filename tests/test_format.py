"""The lens directory format: exact round trips, no pickle, clear errors on malformed directories."""

import json
import struct

import pytest
import torch
from helpers import run_hidden

from lens_hub import LensConfig, LensFormatError, TunedLens


def _trained(model, seed=0, **kwargs):
    lens = TunedLens.from_model(model, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return lens


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_save_load_round_trip_is_exact(tmp_path, gpt2_model, dtype, bias):
    lens = _trained(gpt2_model, bias=bias, dtype=dtype)
    lens.save(tmp_path / "lens")
    loaded = TunedLens.load(tmp_path / "lens", gpt2_model)
    assert loaded.config == lens.config
    for (k, a), (k2, b) in zip(lens.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2
        assert a.dtype == b.dtype == dtype
        assert torch.equal(a, b)
    out = run_hidden(gpt2_model)
    with torch.no_grad():
        for i in range(lens.num_layers):
            assert torch.equal(lens(out.hidden_states[i], i), loaded(out.hidden_states[i], i))


def test_saved_lens_holds_no_pickle(tmp_path, llama_model):
    lens = _trained(llama_model)
    lens.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "lens.safetensors"]
    # config.json is plain JSON holding exactly the config's fields, which validate back to the same config.
    written = json.loads((tmp_path / "config.json").read_text())
    assert written == lens.config.model_dump(mode="json")
    assert LensConfig.model_validate(written) == lens.config
    raw = (tmp_path / "lens.safetensors").read_bytes()
    # safetensors = u64 header length + JSON header + raw tensor bytes, nothing else.
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert len(tensors) == 2 * 3
    assert max(v["data_offsets"][1] for v in tensors.values()) == len(raw) - 8 - n
    assert header["__metadata__"]["lens_hub_schema"] == "1"
    assert b"\x80\x04" not in raw[: 8 + n] and not raw.startswith(b"PK")  # no pickle protocol marker, no zip


def test_config_records_model_facts(gpt2_model):
    cfg = TunedLens.from_model(gpt2_model, base_model="openai-community/gpt2").config
    assert (cfg.model_type, cfg.hidden_size, cfg.num_layers, cfg.vocab_size) == ("gpt2", 32, 3, 96)
    assert cfg.base_model == "openai-community/gpt2"
    assert cfg.fingerprint.startswith("lhfp1;")
    assert cfg.schema_version == 1 and cfg.dtype == "float32" and cfg.bias


def test_base_model_from_a_local_path_is_not_recorded(tmp_path, gpt2_model):
    gpt2_model.save_pretrained(tmp_path / "m")
    from transformers import AutoModelForCausalLM

    local = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert TunedLens.from_model(local).config.base_model is None
    with pytest.raises(ValueError, match="never a local path"):
        TunedLens.from_model(local, base_model=str(tmp_path / "m"))


def _write_config(directory, **changes):
    data = json.loads((directory / "config.json").read_text())
    data.update(changes)
    (directory / "config.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_sise": 3}, r"hidden_sise: Extra inputs are not permitted"),
        ({"num_layers": "three"}, r"num_layers: Input should be a valid integer"),
        ({"base_model": "/home/me/models/gpt2"}, r"base_model: .*never a local path"),
        ({"schema_version": 7}, r"uses lens schema 7; upgrade lens-hub"),
        ({"dtype": "int8"}, r"dtype: Input should be"),
        ({"fingerprint": "md5:abc"}, r"unknown fingerprint version"),
    ],
)
def test_invalid_config_is_located(tmp_path, gpt2_model, changes, message):
    TunedLens.from_model(gpt2_model).save(tmp_path)
    _write_config(tmp_path, **changes)
    with pytest.raises(LensFormatError, match=message) as info:
        TunedLens.load(tmp_path, gpt2_model)
    assert str(tmp_path / "config.json") in str(info.value)


def test_missing_and_foreign_files(tmp_path, gpt2_model):
    with pytest.raises(LensFormatError, match="config.json does not exist"):
        TunedLens.load(tmp_path, gpt2_model)
    (tmp_path / "params.pt").write_bytes(b"")
    with pytest.raises(LensFormatError, match="lens-hub convert"):
        TunedLens.load(tmp_path, gpt2_model)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LensFormatError, match="not valid JSON"):
        TunedLens.load(tmp_path, gpt2_model)


def test_tensors_must_match_config(tmp_path, gpt2_model):
    lens = TunedLens.from_model(gpt2_model)
    lens.save(tmp_path)
    _write_config(tmp_path, bias=False)  # file still holds biases
    with pytest.raises(LensFormatError, match=r"unexpected \['translators.0.bias'"):
        TunedLens.load(tmp_path, gpt2_model)
    _write_config(tmp_path, bias=True, dtype="float16")
    with pytest.raises(LensFormatError, match="is torch.float32, config says float16"):
        TunedLens.load(tmp_path, gpt2_model)
    _write_config(tmp_path, dtype="float32")
    (tmp_path / "lens.safetensors").write_bytes(b"garbage")
    with pytest.raises(LensFormatError, match="not a readable safetensors file"):
        TunedLens.load(tmp_path, gpt2_model)


def test_save_leaves_no_temporary_files_and_overwrites_in_place(tmp_path, gpt2_model):
    _trained(gpt2_model, seed=1).save(tmp_path)
    second = _trained(gpt2_model, seed=2)
    second.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "lens.safetensors"]
    loaded = TunedLens.load(tmp_path, gpt2_model)
    assert torch.equal(loaded.translators[0].weight, second.translators[0].weight)


def test_config_json_schema_round_trip(gpt2_model):
    cfg = TunedLens.from_model(gpt2_model).config
    assert LensConfig.model_validate_json(cfg.model_dump_json()) == cfg
