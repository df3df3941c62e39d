"""Lenses on TransformerLens caches and nnsight traces, checked against the Hugging Face path; targets and
anti-targets; and the code of docs/analysis-activations.md, run for real on tiny models.

The TransformerLens bridge wraps a second copy of the Hugging Face model (same seed, same weights): booting a bridge
rewires the modules of the model it wraps, so the reference numbers come from a model no bridge touched. nnsight
runs in a subprocess, because importing it mounts a ``.save`` method on every Python object for the rest of the
process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TOKENIZER, random_lens
from tiny_models import tiny_model
from transformers import AutoTokenizer

from lens_hub import LogitLens
from lens_hub.analysis.interop import (
    RESIDUAL_COMPONENTS,
    check_saved_hidden_states,
    check_transformer_bridge,
    hidden_states_from_cache,
)
from lens_hub.analysis.trajectory import PredictionTrajectory
from lens_hub.errors import IncompatibleLensError, InteropError, ProcessedWeightsError, TrajectoryError

DOCS = Path(__file__).resolve().parent.parent / "docs" / "analysis-activations.md"
GPT2 = dict(vocab_size=50257, n_embd=32, n_layer=3, initializer_range=0.2)  # the real tokenizer's vocabulary
# The bridge tests use the 96-token tiny models (ids are labelled through the GPT-2 tokenizer all the same).
FAMILIES = {"gpt2": dict(initializer_range=0.2), "llama": {}}
STATS = ("entropy", "kl", "ce", "prob", "log_prob", "anti_log_prob", "js", "tv", "top_probs")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="module")
def bridge_class():
    return pytest.importorskip("transformer_lens.model_bridge", reason='pip install "lens-hub[transformer-lens]"')


def boot(bridge_class, family: str, tokenizer, **overrides):
    """A raw-weights TransformerBridge over a fresh tiny model of ``family`` (seed 0, like the reference)."""
    hf = tiny_model(family, **{**FAMILIES[family], **overrides})
    return bridge_class.TransformerBridge.boot_transformers(family, hf_model=hf, tokenizer=tokenizer)


def random_ids(vocab: int, batch: int = 2, seq: int = 8) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def gpt2():
    """The reference Hugging Face GPT-2 (never wrapped by a bridge), a random tuned lens and its logit lens."""
    hf = tiny_model("gpt2", **FAMILIES["gpt2"])
    return hf, random_lens(hf), LogitLens.from_model(hf)


@pytest.fixture(scope="module")
def raw_cache(bridge_class, tokenizer, gpt2):
    """A raw-weights bridge over a copy of the reference GPT-2, its ids ([2, 8]) and its activation cache."""
    bridge = boot(bridge_class, "gpt2", tokenizer)
    ids = random_ids(gpt2[0].config.vocab_size)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)
    return bridge, ids, cache


def assert_same_trajectory(traj: PredictionTrajectory, ref: PredictionTrajectory) -> None:
    """Statistics equal up to float rounding, ids and ranks exactly, on every sequence's valid positions."""
    assert traj.layers == ref.layers and traj.lengths == ref.lengths
    for b in range(len(ref)):
        got, want = traj[b], ref[b]
        for name in STATS:
            if getattr(want, name) is not None:
                torch.testing.assert_close(
                    getattr(got, name), getattr(want, name), rtol=1e-4, atol=1e-5, equal_nan=True
                )
        assert torch.equal(got.top_ids, want.top_ids) and torch.equal(got.rank, want.rank)
        assert got.input_labels == want.input_labels


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cache_trajectory_equals_the_hugging_face_one(bridge_class, tokenizer, family):
    hf = tiny_model(family, **FAMILIES[family])
    lens, logit = random_lens(hf), LogitLens.from_model(hf)
    ids = random_ids(hf.config.vocab_size)
    # a batch with right padding, a target per sequence and one anti-target, compared with the logit lens
    kwargs = dict(lengths=[8, 5], target=torch.tensor([5, 7]), anti_target=9, compare_with=logit, top_k=4)
    ref = PredictionTrajectory.from_ids(lens, hf, ids, tokenizer=tokenizer, **kwargs)
    bridge = boot(bridge_class, family, tokenizer)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)
    traj = PredictionTrajectory.from_cache(lens, cache, ids, **kwargs)  # labels from the bridge's tokenizer
    assert traj.entropy.shape == (2, 4, 8)
    assert_same_trajectory(traj, ref)
    assert ref.kl[:, :-1].nanmean() > 1e-3  # the rows really differ from the output, so equality means something
    # the states themselves: resid_pre is hidden_states[i], and the last one is the final-normed state
    with torch.no_grad():
        hs = hf(ids, output_hidden_states=True).hidden_states
    states = hidden_states_from_cache(cache, lens)
    assert len(states) == len(hs) == 4
    for got, want in zip(states, hs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(states[-1], cache["blocks.2.hook_resid_post"], atol=1e-3)  # the norm was applied


def test_compatibility_mode_without_processing_is_accepted(bridge_class, tokenizer, gpt2):
    hf, lens, _ = gpt2
    ids = random_ids(hf.config.vocab_size, batch=1)
    ref = PredictionTrajectory.from_ids(lens, hf, ids, top_k=3, tokenizer=tokenizer)
    bridge = boot(bridge_class, "gpt2", tokenizer)
    bridge.enable_compatibility_mode(no_processing=True)
    _, cache = bridge.run_with_cache(ids)
    assert_same_trajectory(PredictionTrajectory.from_cache(lens, cache, ids, top_k=3), ref)


@pytest.mark.parametrize(
    ("process", "moves_stream"),
    [
        pytest.param(lambda b: b.enable_compatibility_mode(), True, id="compatibility-mode-defaults"),
        pytest.param(
            lambda b: b.process_weights(fold_ln=True, center_writing_weights=False, center_unembed=False),
            False,
            id="fold-ln-only",
        ),
    ],
)
def test_processed_bridge_is_refused_naming_the_loading_options(bridge_class, tokenizer, gpt2, process, moves_stream):
    hf, lens, _ = gpt2
    ids = random_ids(hf.config.vocab_size, batch=1)
    bridge = boot(bridge_class, "gpt2", tokenizer)
    process(bridge)
    _, cache = bridge.run_with_cache(ids)
    with pytest.raises(ProcessedWeightsError) as caught:
        PredictionTrajectory.from_cache(lens, cache, ids)
    message = str(caught.value)
    for option in ("fold_ln", "center_writing_weights", "center_unembed", "boot_transformers", "no_processing=True"):
        assert option in message
    assert isinstance(caught.value, IncompatibleLensError)
    # Centring moves the stream away from the one the lens was trained on. Folding alone keeps it, but
    # TransformerLens records neither, so both are refused.
    with torch.no_grad():
        hs = hf(ids, output_hidden_states=True).hidden_states
    moved = (cache["blocks.1.hook_resid_pre"] - hs[1]).abs().max()
    assert moved > 1e-2 if moves_stream else moved < 1e-5


def test_wrong_bridge_cache_or_component_is_refused_with_the_fix(bridge_class, tokenizer, gpt2, raw_cache):
    hf, lens, _ = gpt2
    bridge, ids, _ = raw_cache
    # a bridge over another model: each mismatch named with both values
    other = boot(bridge_class, "gpt2", tokenizer, n_embd=64, n_layer=2)
    with pytest.raises(IncompatibleLensError) as caught:
        check_transformer_bridge(other, lens)
    assert "d_model 64" in str(caught.value) and "n_layers 2" in str(caught.value)
    assert not isinstance(caught.value, ProcessedWeightsError)
    # the Hugging Face model is not a bridge
    with pytest.raises(InteropError, match="boot_transformers"):
        check_transformer_bridge(hf, lens)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, names_filter=lambda name: "resid" in name)
    # a plain mapping does not say which model made it
    with pytest.raises(InteropError, match="model="):
        PredictionTrajectory.from_cache(lens, dict(cache.items()), ids)
    assert PredictionTrajectory.from_cache(lens, dict(cache.items()), ids, model=bridge).entropy.shape == (2, 4, 8)
    with pytest.raises(InteropError, match="'blocks.0.hook_mlp_out'.*names_filter"):
        PredictionTrajectory.from_cache(lens, cache, ids, residual_component="mlp_out")
    with pytest.raises(InteropError, match="resid_pre, resid_mid"):
        hidden_states_from_cache(cache, lens, component="hook_resid_pre")
    # a cache of a deeper model
    deeper = dict(cache.items()) | {"blocks.3.hook_resid_pre": cache["blocks.2.hook_resid_pre"]}
    with pytest.raises(InteropError, match="more blocks"):
        hidden_states_from_cache(deeper, lens)
    # input ids that are not the cached ones
    with pytest.raises(TrajectoryError, match="hidden_states\\[0\\] has shape"):
        PredictionTrajectory.from_cache(lens, cache, ids[:, :5])


def test_every_residual_component(gpt2, raw_cache):
    _, lens, logit = gpt2
    _, ids, cache = raw_cache
    trajs = {c: PredictionTrajectory.from_cache(logit, cache, ids, residual_component=c) for c in RESIDUAL_COMPONENTS}
    pre = trajs["resid_pre"]
    for component, traj in trajs.items():
        assert traj.entropy.shape == (2, 4, 8) and traj.top_ids.shape == (2, 4, 8, 5), component
        assert torch.isfinite(traj.entropy).all() and torch.isfinite(traj.kl).all(), component
        torch.testing.assert_close(traj.entropy[:, -1], pre.entropy[:, -1])  # the output row never changes
    # the stream after block i is the stream before block i + 1; after the last block it is the model's output
    post = trajs["resid_post"]
    torch.testing.assert_close(post.entropy[:, :2], pre.entropy[:, 1:3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(post.entropy[:, 2], pre.entropy[:, 3], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(trajs["attn_out"].entropy[:, :3], pre.entropy[:, :3], atol=1e-3)
    # a tuned lens reads another component with the same layer's translator
    mlp = PredictionTrajectory.from_cache(lens, cache, ids, residual_component="mlp_out", layers=[1])
    with torch.no_grad():
        logp = torch.log_softmax(lens(cache["blocks.1.hook_mlp_out"], 1).float(), -1)
    torch.testing.assert_close(mlp.entropy[:, 0], -(logp.exp() * logp).sum(-1), rtol=1e-4, atol=1e-4)


def test_from_hidden_states_and_saved_states_are_checked():
    model = tiny_model("llama")
    lens = LogitLens.from_model(model)
    ids = random_ids(model.config.vocab_size)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    traj = PredictionTrajectory.from_hidden_states(lens, hs, ids)
    ref = PredictionTrajectory.from_ids(lens, model, ids)
    assert_same_trajectory(traj, ref)
    with pytest.raises(TrajectoryError, match="expected 4 hidden states"):
        PredictionTrajectory.from_hidden_states(lens, hs[:-1], ids)
    assert check_saved_hidden_states(list(hs), lens) == tuple(hs)
    with pytest.raises(InteropError, match="output_hidden_states=True"):
        check_saved_hidden_states(None, lens)
    with pytest.raises(InteropError, match="not one layer's output"):
        check_saved_hidden_states(hs[0], lens)
    with pytest.raises(InteropError, match="3 hidden states were saved but the lens reads 4"):
        check_saved_hidden_states(hs[1:], lens)
    with pytest.raises(InteropError, match="width 16 but the lens expects hidden_size 32"):
        check_saved_hidden_states([h[..., :16] for h in hs], lens)


def test_optional_libraries_stay_out_of_the_package_import():
    code = (
        "import sys, lens_hub, lens_hub.analysis.trajectory, lens_hub.analysis.interop\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'transformer_lens', 'nnsight'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------- the documentation page


def doc_blocks() -> dict[str, str]:
    """The page's python blocks by their ``<!-- docs-test: NAME -->`` tag; every block must have one."""
    text = DOCS.read_text()
    tagged = dict(re.findall(r"<!-- docs-test: ([\w-]+) -->\n```python\n(.*?)```", text, flags=re.S))
    assert len(tagged) == text.count("```python"), "every python block of the page needs a docs-test tag"
    return tagged


@pytest.fixture(scope="module")
def doc_setup(tmp_path_factory, tokenizer):
    """The page's set-up block, run on a saved tiny GPT-2 (with the real GPT-2 tokenizer) and a saved random lens:
    only the two names it loads from are replaced."""
    root = tmp_path_factory.mktemp("docs")
    model = tiny_model("gpt2", **GPT2)
    model.save_pretrained(root / "model")
    for f in TOKENIZER.glob("*.json"):
        shutil.copy(f, root / "model" / f.name)
    random_lens(model).save(root / "lens")
    code = doc_blocks()["setup"]
    for var, path in (("name", root / "model"), ("lens_dir", root / "lens")):
        code, count = re.subn(rf"^{var} = .*$", f"{var} = {str(path)!r}", code, flags=re.M)
        assert count == 1, f"the set-up block no longer assigns {var}"
    return code


def test_docs_transformer_lens_and_target_examples_run(bridge_class, doc_setup, capsys):
    blocks = doc_blocks()
    namespace: dict = {}
    exec(compile(doc_setup, "setup", "exec"), namespace)
    exec(compile(blocks["transformer-lens"], "transformer-lens", "exec"), namespace)
    ref = PredictionTrajectory.from_ids(
        namespace["lens"], namespace["model"], namespace["ids"], tokenizer=namespace["tokenizer"]
    )
    assert_same_trajectory(namespace["traj"], ref)
    assert namespace["after_attention"].entropy.shape == ref.entropy.shape
    exec(compile(blocks["transformer-lens-refused"], "transformer-lens-refused", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "weights were processed" in printed and "no_processing=True" in printed
    exec(compile(blocks["targets"], "targets", "exec"), namespace)
    traj = namespace["traj"]
    assert traj.anti_log_prob is not None and torch.isnan(namespace["change"][:, 0]).all()
    torch.testing.assert_close(namespace["diff"], traj.log_prob - traj.anti_log_prob, equal_nan=True)
    assert namespace["table"] is not None


def test_docs_nnsight_example_matches_a_plain_forward_pass(doc_setup, tmp_path):
    pytest.importorskip("nnsight", reason='pip install "lens-hub[nnsight]"')
    checks = """
with torch.no_grad():
    plain = model(ids, output_hidden_states=True).hidden_states
    for i in range(lens.num_layers):
        torch.testing.assert_close(lens(check_saved_hidden_states(saved, lens)[i], i), lens(plain[i], i))
    torch.testing.assert_close(layer_2, lens(plain[2], 2))
    for got, want in zip(hidden, plain, strict=True):  # the one-call helper's states
        torch.testing.assert_close(got, want)
ref = PredictionTrajectory.from_ids(lens, model, ids)
torch.testing.assert_close(traj.kl, ref.kl)
assert torch.equal(traj.top_ids, ref.top_ids)
assert any(p.abs().sum() > 0 for p in lens.parameters())  # a trained-like lens, not the identity
from lens_hub.analysis.interop import InteropError
with traced.trace(ids):  # forgetting output_hidden_states=True saves nothing
    forgot = traced.output.hidden_states.save()
try:
    check_saved_hidden_states(forgot, lens)
except InteropError as err:
    assert "output_hidden_states=True" in str(err)
else:
    raise AssertionError("no error without output_hidden_states")
print("nnsight example OK")
"""
    # nnsight reads the source of every with-block it traces, so the example runs from a file.
    script = tmp_path / "nnsight_example.py"
    script.write_text(doc_setup + "\n" + doc_blocks()["nnsight"] + "\n" + checks)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nnsight example OK" in done.stdout
