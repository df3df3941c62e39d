"""Prediction trajectories: statistics against direct computation, lens comparison, labels, and the three views."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import TOKENIZER, assert_png, headless_chromium, random_lens
from tiny_models import tiny_model
from transformers import AutoTokenizer

from lens_hub import LogitLens
from lens_hub.analysis.trajectory import PredictionTrajectory, js_divergence, token_label, tv_distance, visible
from lens_hub.errors import LensHubError, TrajectoryError
from lens_hub.serve.render import terminal_table, write_html, write_png

TEXT = "The capital of France is Paris.\nIt is <b>big</b>"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2", vocab_size=50257, n_embd=32, n_layer=3, initializer_range=0.2)


@pytest.fixture(scope="module")
def tuned(model):
    return random_lens(model)


def test_statistics_match_direct_computation(model, tokenizer, tuned):
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    traj = PredictionTrajectory.from_ids(tuned, model, ids, top_k=4, tokenizer=tokenizer, chunk_size=5)
    T = ids.shape[1]
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
        logps = [torch.log_softmax(tuned(hs[i], i).float(), -1)[0] for i in range(3)]
        logps.append(torch.log_softmax(tuned.unembed.head(hs[-1]).float(), -1)[0])
    final = logps[-1]
    assert traj.entropy.shape == (1, 4, T) and traj.top_ids.shape == (1, 4, T, 4)
    assert traj.row_labels == ["0", "1", "2", "output"]
    for r, logp in enumerate(logps):
        p = logp.exp()
        torch.testing.assert_close(traj.entropy[0, r], -(p * logp).sum(-1), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(traj.kl[0, r], (final.exp() * (final - logp)).sum(-1), rtol=1e-4, atol=1e-4)
        ce = -logp[torch.arange(T - 1), ids[0, 1:]]
        torch.testing.assert_close(traj.ce[0, r, :-1], ce, rtol=1e-4, atol=1e-4)
        assert math.isnan(traj.ce[0, r, -1])
        target_logp = logp[torch.arange(T - 1), ids[0, 1:]]
        rank = (logp[:-1] > target_logp[:, None]).sum(-1)
        assert torch.equal(traj.rank[0, r, :-1], rank) and traj.rank[0, r, -1] == -1
        torch.testing.assert_close(traj.prob[0, r, :-1], target_logp.exp(), rtol=1e-4, atol=1e-6)
        vals, idx = p.topk(4, -1)
        assert torch.equal(traj.top_ids[0, r], idx)
        torch.testing.assert_close(traj.top_probs[0, r], vals, rtol=1e-4, atol=1e-6)
    assert traj.kl[0, -1].abs().max() < 1e-5
    # an explicit target token: rank and probability of " Paris" everywhere
    paris = tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    fixed = PredictionTrajectory.from_text(tuned, model, tokenizer, TEXT, target=" Paris")
    torch.testing.assert_close(fixed.prob[0, 1], logps[1][:, paris].exp(), rtol=1e-4, atol=1e-6)
    assert torch.equal(fixed.rank[0, 1], (logps[1] > logps[1][:, paris : paris + 1]).sum(-1))


def test_logit_lens_output_row_is_the_models_distribution(model, tokenizer):
    traj = PredictionTrajectory.from_text(LogitLens.from_model(model), model, tokenizer, TEXT, top_k=3, layers=[1])
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits.float(), -1)[0]
    vals, idx = probs.topk(3, -1)
    assert traj.layers == [1] and traj.row_labels == ["1", "output"]
    assert torch.equal(traj.top_ids[0, -1], idx)
    torch.testing.assert_close(traj.top_probs[0, -1], vals, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("family", "extra"),
    [("gemma2", {}), ("opt", dict(word_embed_proj_dim=16, do_layer_norm_before=False)), ("llama", {})],
)
def test_output_row_is_the_models_distribution_and_its_logits_are_never_whole(family, extra):
    # Soft-capped logits (Gemma 2) and a projection after the last layer (OPT-350m): the output row, built from the
    # last hidden state chunk by chunk, is still the model's own distribution.
    model = tiny_model(family, **extra)
    ids = torch.randint(3, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    positions_seen = []
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _m, args: positions_seen.append(args[0].shape[1]))
    try:
        traj = PredictionTrajectory.from_ids(LogitLens.from_model(model), model, ids, top_k=3, chunk_size=4)
    finally:
        handle.remove()
    # The head only ever sees one chunk: no [batch, positions, vocab] logits of the whole input are computed.
    assert positions_seen and max(positions_seen) <= 4
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits.float(), -1)
    vals, idx = probs.topk(3, -1)
    assert torch.equal(traj.top_ids[:, -1], idx)
    torch.testing.assert_close(traj.top_probs[:, -1], vals, rtol=1e-5, atol=1e-6)


def test_js_and_tv_match_their_definitions(model, tokenizer, tuned):
    logit = LogitLens.from_model(model)
    traj = PredictionTrajectory.from_text(tuned, model, tokenizer, TEXT, compare_with=logit)
    rev = PredictionTrajectory.from_text(logit, model, tokenizer, TEXT, compare_with=tuned)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
    for i in range(3):
        p = torch.softmax(tuned(hs[i], i).double(), -1)[0]
        q = torch.softmax(logit(hs[i], i).double(), -1)[0]
        m = (p + q) / 2
        kl_pm = torch.where(p > 0, p * (p / m).log(), 0).sum(-1)
        kl_qm = torch.where(q > 0, q * (q / m).log(), 0).sum(-1)
        js = 0.5 * kl_pm + 0.5 * kl_qm
        tv = 0.5 * (p - q).abs().sum(-1)
        torch.testing.assert_close(traj.js[0, i].double(), js, rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(traj.tv[0, i].double(), tv, rtol=1e-3, atol=1e-5)
        assert js.min() > 1e-3  # the random translator really changes the distribution
    torch.testing.assert_close(traj.js, rev.js, rtol=1e-4, atol=1e-6)  # symmetric
    assert (traj.js <= math.log(2) + 1e-6).all() and (traj.js >= 0).all()
    assert (traj.tv >= 0).all() and (traj.tv <= 1).all()
    assert traj.js[0, -1].abs().max() < 1e-5  # both lenses share the output row
    assert len(traj.mean_by_row("js")) == 4
    # extremes of the definitions: disjoint distributions give ln 2 and 1; equal ones give 0
    a = torch.tensor([[0.0, -math.inf]])
    b = torch.tensor([[-math.inf, 0.0]])
    torch.testing.assert_close(js_divergence(a, b), torch.tensor([math.log(2)]))
    torch.testing.assert_close(tv_distance(a, b), torch.tensor([1.0]))
    assert js_divergence(a, a).item() == 0.0 and tv_distance(a, a).item() == 0.0


def test_log_prob_and_log_prob_diff_match_direct_computation(model, tokenizer, tuned):
    lens = tuned  # a random tuned lens: every row differs
    texts = ["The capital of France is Paris.", "Hello world"]
    traj = PredictionTrajectory.from_text(
        lens, model, tokenizer, texts, target=" Paris", anti_target=" London", layers=[0, 2]
    )
    paris, london = (tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" Paris", " London"))
    enc = tokenizer(texts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hs = model(enc, output_hidden_states=True).hidden_states
        logps = [torch.log_softmax(lens(hs[i], i).float(), -1)[0] for i in (0, 2)]
        logps.append(torch.log_softmax(lens.unembed.head(hs[-1]).float(), -1)[0])
    diff, change = traj.log_prob_diff(), traj.log_prob_diff(delta=True)
    assert diff.shape == change.shape == traj.entropy.shape == (2, 3, enc.shape[1])
    for r, logp in enumerate(logps):
        torch.testing.assert_close(traj.log_prob[0, r], logp[:, paris], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(traj.anti_log_prob[0, r], logp[:, london], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(diff[0, r], logp[:, paris] - logp[:, london], rtol=1e-5, atol=1e-5)
    # delta: row r minus row r - 1 (layer 2 minus layer 0, the output minus layer 2); the first row has none
    expected = (logps[2][:, paris] - logps[2][:, london]) - (logps[1][:, paris] - logps[1][:, london])
    torch.testing.assert_close(change[0, 2], expected, rtol=1e-4, atol=1e-5)
    assert torch.isnan(change[:, 0]).all()
    assert math.isnan(traj.mean_by_row("delta_log_prob_diff")[0])
    torch.testing.assert_close(traj.stat("log_prob_diff"), diff, equal_nan=True)
    torch.testing.assert_close(traj.prob, traj.log_prob.exp(), equal_nan=True)
    # padding positions of the shorter text have no target
    n = traj.lengths[1]
    assert torch.isnan(traj.log_prob[1, :, n:]).all() and torch.isnan(diff[1, :, n:]).all()
    assert torch.isfinite(diff[1, :, :n]).all()
    one = traj[1]
    assert one.anti_target_ids.shape == (1, n) and one.log_prob_diff().shape == (1, 3, n)


def test_targets_per_sequence_and_per_position(model, tokenizer):
    lens = LogitLens.from_model(model)
    ids = torch.randint(3, 1000, (2, 8), generator=torch.Generator().manual_seed(1))
    per_position = torch.full((2, 8), 11)
    per_position[0, 3] = -1  # no target here
    traj = PredictionTrajectory.from_ids(lens, model, ids, target=torch.tensor([5, 7]), anti_target=per_position)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
        logp = torch.log_softmax(lens(hs[1], 1).float(), -1)
    torch.testing.assert_close(traj.log_prob[:, 1], logp[torch.arange(2), :, torch.tensor([5, 7])])
    torch.testing.assert_close(traj.log_prob[1, 1], logp[1, :, 7])
    assert math.isnan(traj.anti_log_prob[0, 1, 3]) and math.isnan(traj.log_prob_diff()[0, 1, 3])
    torch.testing.assert_close(traj.anti_log_prob[0, 1, 4], logp[0, 4, 11])
    # the default target stays the next token, and it has no anti-target
    plain = PredictionTrajectory.from_ids(lens, model, ids)
    assert torch.equal(plain.target_ids[:, :-1], ids[:, 1:]) and plain.anti_log_prob is None
    with pytest.raises(TrajectoryError, match="anti_target="):
        plain.log_prob_diff()
    with pytest.raises(LensHubError, match="anti_target="):
        plain.stat("delta_log_prob_diff")
    with pytest.raises(TrajectoryError, match="outside the lens's vocabulary"):
        PredictionTrajectory.from_ids(lens, model, ids, anti_target=60_000)
    with pytest.raises(TrajectoryError, match=r"one per sequence \(\[2\]\)"):
        PredictionTrajectory.from_ids(lens, model, ids, target=torch.tensor([1, 2, 3]))
    with pytest.raises(TrajectoryError, match="anti_target ' Parisian' is 2 tokens"):
        PredictionTrajectory.from_text(lens, model, tokenizer, "Hi", anti_target=" Parisian")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(tokenizer, dtype):
    model = tiny_model("gpt2", vocab_size=50257, n_embd=32, n_layer=3, initializer_range=0.2, dtype=dtype)
    lens = random_lens(model).to(dtype)
    traj = PredictionTrajectory.from_text(lens, model, tokenizer, TEXT, compare_with=LogitLens.from_model(model))
    for t in (traj.entropy, traj.kl, traj.top_probs, traj.js, traj.tv):
        assert t.dtype == torch.float32
    assert torch.isfinite(traj.entropy).all() and torch.isfinite(traj.kl).all()
    assert torch.isfinite(traj.ce[..., :-1]).all()


def test_batch_of_two_texts(model, tokenizer, tuned):
    texts = ["Hello world, this is a longer sentence.", "Short one"]
    traj = PredictionTrajectory.from_text(tuned, model, tokenizer, texts)
    alone = PredictionTrajectory.from_text(tuned, model, tokenizer, texts[1])
    n = alone.input_ids.shape[1]
    assert len(traj) == 2 and traj.lengths[1] == n
    second = traj[1]
    assert second.input_labels == alone.input_labels
    torch.testing.assert_close(second.entropy, alone.entropy, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(second.ce, alone.ce, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert torch.isnan(traj.entropy[1, :, n:]).all()


def test_negative_index_is_counted_from_the_end_and_out_of_range_is_refused(model, tokenizer, tuned):
    texts = ["Hello world, this is a longer sentence.", "Short one"]
    traj = PredictionTrajectory.from_text(tuned, model, tokenizer, texts, anti_target=" London")
    for negative, positive in ((-1, 1), (-2, 0)):
        got, want = traj[negative], traj[positive]
        n = traj.lengths[positive]
        assert got.lengths == [n] and got.input_ids.shape == (1, n) and got.entropy.shape == (1, traj.num_rows, n)
        assert torch.equal(got.input_ids, want.input_ids) and got.input_labels == want.input_labels
        assert torch.equal(got.top_ids, want.top_ids) and torch.equal(got.anti_target_ids, want.anti_target_ids)
        torch.testing.assert_close(got.entropy, want.entropy, equal_nan=True)
    assert traj[torch.tensor(1)].lengths == traj[-1].lengths  # any integer, as a list accepts
    for bad in (2, -3, 10):
        with pytest.raises(IndexError, match=r"index -2 \.\. 1"):
            traj[bad]
    with pytest.raises(TypeError, match="one sequence"):
        traj[0:1]


def test_padding_holds_no_prediction(model, tokenizer, tuned, tmp_path):
    # The shorter sequence's padding holds NaN probabilities and the id -1, as the class docstring says, in the
    # top-k as in every statistic; its valid positions and the longer sequence are real predictions.
    texts = ["Hello world, this is a longer sentence.", "Short one"]
    traj = PredictionTrajectory.from_text(
        tuned, model, tokenizer, texts, top_k=3, compare_with=LogitLens.from_model(model)
    )
    n, seq = traj.lengths[1], traj.input_ids.shape[1]
    assert n < seq
    assert torch.isnan(traj.top_probs[1, :, n:]).all() and (traj.top_ids[1, :, n:] == -1).all()
    for name in ("entropy", "kl", "ce", "prob", "log_prob", "js", "tv"):
        assert torch.isnan(getattr(traj, name)[1, :, n:]).all(), name
    assert (traj.rank[1, :, n:] == -1).all()
    assert torch.isfinite(traj.top_probs[1, :, :n]).all() and (traj.top_ids[1, :, :n] >= 0).all()
    assert torch.isfinite(traj.top_probs[0]).all() and (traj.top_ids[0] >= 0).all()
    alone = PredictionTrajectory.from_text(tuned, model, tokenizer, texts[1], top_k=3)
    assert torch.equal(traj[1].top_ids, alone.top_ids)
    # the labels and views read each sequence cut to its length: no padding cell, no label of the id -1 (without a
    # tokenizer a token is labelled by its id)
    from rich.console import Console

    by_id = PredictionTrajectory.from_ids(tuned, model, traj.input_ids, lengths=traj.lengths, top_k=3)
    assert torch.equal(by_id.top_ids, traj.top_ids) and [len(r) for r in by_id.top_labels[1]] == [n] * traj.num_rows
    assert "#-1" not in repr(by_id.top_labels)
    console = Console(width=400, record=True)
    console.print(terminal_table(by_id, "prob", batch=-1))
    page = write_html(by_id, tmp_path / "padded.html", "prob", batch=1).read_text()
    assert "#-1" not in console.export_text() and "#-1" not in page and page.count('class="cell"') == n * 4


def test_options_are_shared_and_checked(model, tokenizer, tuned):
    # from_ids, from_hidden_states and from_cache take the same keyword options; a text target works wherever there
    # is a tokenizer to turn it into its id, and a misspelt or misplaced option is named.
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    options = dict(top_k=3, layers=[2, 0], target=" Paris", anti_target=" London", tokenizer=tokenizer)
    tokens = dict(target=" Paris", anti_target=" London")
    by_text = PredictionTrajectory.from_text(tuned, model, tokenizer, TEXT, top_k=3, layers=[0, 2], **tokens)
    by_ids = PredictionTrajectory.from_ids(tuned, model, ids, **options)
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
    by_states = PredictionTrajectory.from_hidden_states(tuned, hidden, ids, **options)
    for traj in (by_ids, by_states):
        assert traj.layers == [0, 2] and traj.top_k == 3 and traj.input_labels == by_text.input_labels
        assert torch.equal(traj.target_ids, by_text.target_ids) and torch.equal(traj.top_ids, by_text.top_ids)
        torch.testing.assert_close(traj.log_prob_diff(), by_text.log_prob_diff(), equal_nan=True)
    with pytest.raises(TrajectoryError, match="tokenizer="):
        PredictionTrajectory.from_ids(tuned, model, ids, target=" Paris")
    with pytest.raises(TypeError, match=r"from_ids\(\) got an unexpected keyword argument 'topk'.*top_k"):
        PredictionTrajectory.from_ids(tuned, model, ids, topk=3)
    with pytest.raises(TypeError, match=r"from_text\(\) got an unexpected keyword argument 'lengths'"):
        PredictionTrajectory.from_text(tuned, model, tokenizer, TEXT, lengths=[3])


def test_long_input_is_chunked():
    model = tiny_model("llama", vocab_size=2000, max_position_embeddings=2048)
    ids = torch.randint(0, 2000, (1, 1500), generator=torch.Generator().manual_seed(0))
    traj = PredictionTrajectory.from_ids(LogitLens.from_model(model), model, ids, chunk_size=256)
    assert traj.entropy.shape == (1, 4, 1500)
    assert torch.isfinite(traj.ce[..., :-1]).all()


def test_labels_show_whitespace_and_escape_html(model, tokenizer, tmp_path):
    assert visible("a b\n\tc") == "a·b⏎→c"
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    assert token_label(tokenizer, newline) == "⏎"
    traj = PredictionTrajectory.from_text(LogitLens.from_model(model), model, tokenizer, TEXT)
    assert "·capital" in traj.input_labels[0] and "⏎" in traj.input_labels[0]
    page = write_html(traj, tmp_path / "t.html").read_text()
    assert "·&lt;" in page and "·<" not in page  # GPT-2 splits "<b>" into " <", "b", ">"
    traj.input_labels[0][0] = "<b>"
    traj.top_labels[0][0][0][0] = "<b>x</b>"
    page = write_html(traj, tmp_path / "t.html").read_text()
    assert "&lt;b&gt;" in page and "&lt;b&gt;x&lt;/b&gt;" in page and "<b>" not in page


def test_terminal_view(model, tokenizer):
    from rich.console import Console

    traj = PredictionTrajectory.from_text(LogitLens.from_model(model), model, tokenizer, TEXT)
    console = Console(width=400, record=True)
    for stat in ("entropy", "kl", "ce", "rank", "prob"):
        console.print(terminal_table(traj, stat))
    out = console.export_text()
    assert "output" in out and "legend" in out and "·capital" in out
    with pytest.raises(ValueError, match="unknown statistic"):
        traj.stat("bogus")


def test_png(model, tokenizer, tmp_path):
    traj = PredictionTrajectory.from_text(LogitLens.from_model(model), model, tokenizer, TEXT)
    path = write_png(traj, tmp_path / "t.png", "rank")
    assert_png(path.read_bytes())


def test_html_in_headless_chromium(model, tokenizer, tuned, tmp_path):
    traj = PredictionTrajectory.from_text(tuned, model, tokenizer, TEXT, top_k=3)
    path = write_html(traj, tmp_path / "t.html", "kl")
    driver = headless_chromium(tmp_path / "profile")
    try:
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By

        driver.get(path.as_uri())
        cells = driver.find_elements(By.CSS_SELECTOR, "td.cell")
        T = traj.input_ids.shape[1]
        assert len(cells) == (3 + 1) * T
        assert len(driver.find_elements(By.CSS_SELECTOR, "th.input")) == T
        cell = driver.find_element(By.CSS_SELECTOR, 'td.cell[data-row="3"][data-pos="2"]')
        title = cell.get_attribute("title")
        for label, prob in zip(traj.top_labels[0][3][2], traj.top_probs[0, 3, 2].tolist(), strict=True):
            assert f"{label}  {prob:.4f}" in title
        ActionChains(driver).move_to_element(cell).perform()
        tip = driver.find_element(By.ID, "tip")
        assert tip.is_displayed()
        assert traj.top_labels[0][3][2][0] in tip.text and "3. " in tip.text
        assert driver.find_elements(By.TAG_NAME, "b") == []  # the <b> in the text stayed text
    finally:
        driver.quit()


def test_cli_show_writes_html_and_png(tmp_path, model, tokenizer):
    model.save_pretrained(tmp_path / "model")
    for f in TOKENIZER.glob("*.json"):
        shutil.copy(f, tmp_path / "model" / f.name)
    random_lens(model).save(tmp_path / "lens")
    args = ["show", "model", "Hello world.\nBye", "--device", "cpu", "--stat", "kl", "--layers", "0,2"]
    args += ["--html", "t.html", "--png", "t.png", "--lens", "./lens", "--compare", "logit", "--top-k", "3"]
    done = subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "output" in done.stdout and "Jensen-Shannon" in done.stdout
    lines = done.stdout.splitlines()  # piped: 160 columns, headings on one line each
    assert max(map(len, lines)) <= 160
    assert "Mean Jensen-Shannon divergence per layer, tuned lens (./lens) vs logit lens" in lines
    assert any(line.startswith("tuned lens (./lens) on ") and line.endswith("coloured by KL(final || layer) (nats)")
               for line in lines)  # fmt: skip
    assert_png((tmp_path / "t.png").read_bytes())
    page = (tmp_path / "t.html").read_text()
    positions = len(tokenizer("Hello world.\nBye")["input_ids"])
    assert page.count('class="cell"') == 2 * 3 * positions  # both lenses: rows 0, 2 and output
    assert re.findall(r"<h2>(.*?)</h2>", page) == ["tuned lens (./lens)", "logit lens"]


# ------------------------------------------------------------------------------ analyses the original also offers


def direct_log_probs(lens, model, ids, exclude=None):
    """Every row's log-probabilities [rows, positions, vocab] of sequence ``ids`` ([1, T]), computed directly;
    ``exclude``: token ids given probability 0 in every row (mask_input)."""
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
        logits = [lens(hs[i], i).float()[0] for i in range(lens.num_layers)] + [lens.unembed.head(hs[-1]).float()[0]]
    if exclude is not None:
        logits = [x.index_fill(-1, exclude, float("-inf")) for x in logits]
    return torch.stack([torch.log_softmax(x, -1) for x in logits])


def kl(logp, logq):
    return torch.where(logp > -math.inf, logp.exp() * (logp - logq), 0).sum(-1)


def test_kl_between_trajectories_and_to_the_compared_lens(model, tokenizer, tuned):
    logit = LogitLens.from_model(model)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    p, q = direct_log_probs(tuned, model, ids), direct_log_probs(logit, model, ids)
    # compare_with: both directions, computed during construction
    compared = PredictionTrajectory.from_text(tuned, model, tokenizer, TEXT, compare_with=logit)
    torch.testing.assert_close(compared.kl_to_compared[0], kl(p, q), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compared.kl_from_compared[0], kl(q, p), rtol=1e-4, atol=1e-4)
    assert compared.kl_to_compared[0, :-1].min() > 1e-3 and compared.kl_to_compared[0, -1].abs().max() < 1e-5
    assert {"kl_to_compared", "kl_from_compared"} <= set(compared.statistics())
    torch.testing.assert_close(compared.stat("kl_from_compared"), compared.kl_from_compared)
    # keep_log_probs: the full distributions, and the KL between two separately built trajectories
    a = PredictionTrajectory.from_text(tuned, model, tokenizer, TEXT, keep_log_probs=True)
    b = PredictionTrajectory.from_text(logit, model, tokenizer, TEXT, keep_log_probs=True)
    assert a.log_probs.shape == (1, 4, ids.shape[1], 50257) and compared.log_probs is None
    torch.testing.assert_close(a.log_probs[0], p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.kl_divergence(b)[0], kl(p, q), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.kl_divergence(a), compared.kl_from_compared, rtol=1e-4, atol=1e-4)
    assert a.kl_divergence(a).abs().max() < 1e-6
    # two reads of other hidden states of the same input (here: the residual stream scaled, as an ablation might)
    with torch.no_grad():
        hs = list(model(ids, output_hidden_states=True).hidden_states)
    ablated = [h * 0.5 for h in hs[:-1]] + [hs[-1]]
    c = PredictionTrajectory.from_hidden_states(tuned, ablated, ids, keep_log_probs=True, tokenizer=tokenizer)
    with torch.no_grad():
        r = torch.log_softmax(tuned(ablated[1], 1).float()[0], -1)
    torch.testing.assert_close(a.kl_divergence(c)[0, 1], kl(p[1], r), rtol=1e-4, atol=1e-4)
    # padding and masked positions hold no prediction: no KL there
    texts = [TEXT, "Short one"]
    pa = PredictionTrajectory.from_text(tuned, model, tokenizer, texts, keep_log_probs=True, mask_positions=0)
    pb = PredictionTrajectory.from_text(logit, model, tokenizer, texts, keep_log_probs=True, mask_positions=0)
    got, n = pa.kl_divergence(pb), pa.lengths[1]
    assert torch.isnan(got[:, :, 0]).all() and torch.isnan(got[1, :, n:]).all()
    torch.testing.assert_close(got[0, :, 1:], kl(p, q)[:, 1:], rtol=1e-4, atol=1e-4)
    # mismatched trajectories are refused, with what to do
    with pytest.raises(TrajectoryError, match="no log_probs in other: build both trajectories with keep_log_probs"):
        a.kl_divergence(compared)
    with pytest.raises(TrajectoryError, match="different rows"):
        a.kl_divergence(PredictionTrajectory.from_text(logit, model, tokenizer, TEXT, keep_log_probs=True, layers=[0]))
    with pytest.raises(TrajectoryError, match="different inputs"):
        a.kl_divergence(PredictionTrajectory.from_text(logit, model, tokenizer, TEXT + " x", keep_log_probs=True))


def test_masked_positions_hold_no_prediction(model, tokenizer, tuned):
    texts = [TEXT, "Short one here"]
    plain = PredictionTrajectory.from_text(tuned, model, tokenizer, texts, compare_with=LogitLens.from_model(model))
    masked = PredictionTrajectory.from_text(
        tuned, model, tokenizer, texts, compare_with=LogitLens.from_model(model), mask_positions=[0, -1]
    )
    n = plain.lengths[1]
    hidden = torch.zeros_like(plain.input_ids, dtype=torch.bool)
    hidden[:, 0] = True
    hidden[0, plain.lengths[0] - 1] = hidden[1, n - 1] = True  # -1: each sequence's own last token
    shown = _valid(plain) & ~hidden
    for name in masked.statistics():
        value = masked.stat(name)
        assert torch.isnan(value[:, :, ~shown[0]][0]).all() and torch.isnan(value[1][:, ~shown[1]]).all(), name
        torch.testing.assert_close(value[:, :, shown[0]][0], plain.stat(name)[:, :, shown[0]][0], equal_nan=True)
    assert (masked.top_ids[hidden[:, None, :].expand_as(masked.rank)] == -1).all()
    assert (masked.rank.transpose(1, 2)[hidden] == -1).all() and (masked.target_ids[hidden] == -1).all()
    assert torch.equal(masked.top_ids[0, :, 1:-1], plain.top_ids[0, :, 1:-1])
    # a bool mask does the same; means leave the masked positions out
    as_bool = PredictionTrajectory.from_text(
        tuned, model, tokenizer, texts, compare_with=LogitLens.from_model(model), mask_positions=hidden
    )
    torch.testing.assert_close(as_bool.entropy, masked.entropy, equal_nan=True)
    want = [float(plain.entropy[:, r][shown].mean()) for r in range(plain.num_rows)]
    assert masked.mean_by_row("entropy") == pytest.approx(want, rel=1e-5)
    # the views show a masked cell without a prediction: an empty label, no colour
    from rich.console import Console

    assert masked.top_labels[1][0][0] == [""] * masked.top_k and masked.input_labels == plain.input_labels
    console = Console(width=400, record=True)
    console.print(terminal_table(masked, "kl", batch=1))
    out = console.export_text()
    assert "#-1" not in out and plain.top_labels[1][0][1][0] in out
    with pytest.raises(TrajectoryError, match="mask_positions 40 is outside"):
        PredictionTrajectory.from_text(tuned, model, tokenizer, texts, mask_positions=40)
    with pytest.raises(TrajectoryError, match=r"mask_positions has shape \(3,\)"):
        PredictionTrajectory.from_text(tuned, model, tokenizer, texts, mask_positions=torch.ones(3, dtype=torch.bool))


def _valid(traj):
    return torch.arange(traj.input_ids.shape[1])[None, :] < torch.tensor(traj.lengths)[:, None]


def test_mask_input_excludes_the_input_tokens_from_every_row(model, tokenizer, tuned):
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    traj = PredictionTrajectory.from_ids(tuned, model, ids, mask_input=True, top_k=5, tokenizer=tokenizer)
    logp = direct_log_probs(tuned, model, ids, exclude=ids[0].unique())
    for r in range(traj.num_rows):
        p = logp[r].exp()
        torch.testing.assert_close(traj.entropy[0, r], -(p * logp[r].clamp_min(-1e30)).sum(-1), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(traj.kl[0, r], kl(logp[-1], logp[r]), rtol=1e-4, atol=1e-4)
        assert torch.equal(traj.top_ids[0, r], logp[r].topk(5, -1).indices)
    assert not torch.isin(traj.top_ids, ids).any()  # no input token is predicted anywhere, the output row included
    assert torch.isfinite(traj.kl).all()
    # a next token that occurs in the input has probability 0
    repeated = [t for t in range(ids.shape[1] - 1) if ids[0, t + 1] in ids[0, : t + 1]]
    assert all(traj.prob[0, :, t].eq(0).all() for t in repeated)


def test_mean_over_the_batch_leaves_padding_out(model, tokenizer, tuned):
    texts = [TEXT, "Short one", "The capital of Spain"]
    traj = PredictionTrajectory.from_text(tuned, model, tokenizer, texts, anti_target=" London")
    for name in ("entropy", "rank", "ce", "log_prob_diff"):
        got, value = traj.mean(name), traj.stat(name)
        assert got.shape == (traj.num_rows, traj.input_ids.shape[1])
        for r in range(traj.num_rows):
            for t in range(traj.input_ids.shape[1]):
                present = [float(value[b, r, t]) for b in range(len(traj)) if not math.isnan(value[b, r, t])]
                if present:
                    assert float(got[r, t]) == pytest.approx(sum(present) / len(present), rel=1e-5), (name, r, t)
                else:
                    assert math.isnan(got[r, t])
    # past the shorter texts only the first one counts
    assert torch.equal(traj.mean("entropy")[:, traj.lengths[0] - 1], traj.entropy[0, :, traj.lengths[0] - 1])


def test_slicing_cuts_every_field_alike(model, tokenizer, tuned):
    texts = [TEXT, "A shorter one, six tokens", "Hi"]
    traj = PredictionTrajectory.from_text(
        tuned, model, tokenizer, texts, compare_with=LogitLens.from_model(model), anti_target=" London",
        keep_log_probs=True, top_k=3,
    )  # fmt: skip
    from dataclasses import fields

    from lens_hub.analysis.trajectory import _POSITION_IDS, _ROW_TENSORS

    tensors = {f.name for f in fields(traj) if isinstance(getattr(traj, f.name), torch.Tensor)}
    assert tensors == set(_ROW_TENSORS) | set(_POSITION_IDS)  # every tensor field is cut by _select
    cut = traj[0:2, 2:5]
    assert cut.lengths == [3, 3] and len(cut) == 2
    for name in tensors:
        whole, part = getattr(traj, name), getattr(cut, name)
        want = whole[:2, 2:5] if name in _POSITION_IDS else whole[:2, :, 2:5]
        assert torch.equal(part.nan_to_num(-7.0), want.nan_to_num(-7.0)), name
    assert cut.input_labels == [row[2:5] for row in traj.input_labels[:2]]
    assert cut.top_labels == [[row[2:5] for row in rows] for rows in traj.top_labels[:2]]
    assert cut.layers == traj.layers and cut.untrained_layers == traj.untrained_layers
    # the slice is ragged where a sequence ends inside it; positions past its end stay padding
    ragged = traj[:2, 1:]
    n0, n1 = traj.lengths[0] - 1, traj.lengths[1] - 1
    assert ragged.lengths == [n0, n1] and ragged.input_ids.shape == (2, n0)
    assert torch.isnan(ragged.entropy[1, :, n1:]).all() and ragged[1].input_labels == [traj.input_labels[1][1:]]
    assert torch.equal(traj[:2, :].slice_positions(2, 5).entropy, cut.entropy)
    # one sequence: positions count from its own end; an integer keeps one position
    last3 = traj[1, -3:]
    assert last3.lengths == [3] and last3.input_labels == [traj.input_labels[1][-3:]]
    torch.testing.assert_close(traj[2, 0].entropy, traj.entropy[2:3, :, 0:1])
    torch.testing.assert_close(traj[1, -1].kl, traj.kl[1:2, :, n1 : n1 + 1])
    assert traj[::2, :].lengths == [traj.lengths[0], traj.lengths[2]]
    torch.testing.assert_close(traj[::2, :].js[1, :, :1], traj[2].js[0], equal_nan=True)
    # statistics computed from the slice's own tensors agree
    torch.testing.assert_close(cut.log_prob_diff(), traj.log_prob_diff()[:2, :, 2:5], equal_nan=True)
    torch.testing.assert_close(cut.kl_divergence(cut), torch.zeros_like(cut.kl), atol=1e-6, rtol=0)
    # the views render a slice
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(terminal_table(cut, "entropy", batch=1))
    out = console.export_text()
    assert all(label in out for label in cut.input_labels[1])
    assert traj.input_labels[1][0] not in out.split("\n")[2]  # the header row shows the slice's tokens only
    with pytest.raises(TrajectoryError, match=r"leave sequence \[2\] \(lengths \[\d+\]\) with no position"):
        traj[:, 4:]
    with pytest.raises(TrajectoryError, match="no step"):
        traj[0, ::2]
    with pytest.raises(IndexError, match="position 99 is out of range"):
        traj[0, 99]
    with pytest.raises(TypeError, match="one sequence"):
        traj[0:1]


def test_docs_trajectory_analyses_example_runs(model, tokenizer, tuned):
    # The example of docs/analysis-statistics.md, run on the tiny model with the set-up's names.
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "analysis-statistics.md").read_text()
    code = re.search(r"<!-- docs-test: trajectory-analyses -->\n```python\n(.*?)```", page, flags=re.S).group(1)
    namespace = {"model": model, "tokenizer": tokenizer, "lens": tuned}
    exec(compile(code, "analysis-statistics.md", "exec"), namespace)
    traj, clean, kl = namespace["traj"], namespace["clean"], namespace["kl"]
    assert torch.isnan(namespace["tuned_vs_logit"][:, :, 0]).all()
    assert namespace["mean_entropy"].shape == (traj.num_rows, traj.input_ids.shape[1])
    assert namespace["middle"].lengths == [3, 3]
    torch.testing.assert_close(kl[:, :, 1:], traj.kl_to_compared[:, :, 1:], rtol=1e-4, atol=1e-4, equal_nan=True)
    assert clean.log_probs.shape[:3] == traj.entropy.shape


def test_small_divergences_keep_their_digits(model, tokenizer):
    # A lens a hair away from the logit lens: the divergences between the two are 1e-6 .. 1e-3 nats, where a
    # difference of two large sums (entropies of ~10 nats) would keep only rounding (~1e-5).
    near, logit = random_lens(model, std=1e-3), LogitLens.from_model(model)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    traj = PredictionTrajectory.from_ids(near, model, ids, compare_with=logit)
    with torch.no_grad():  # the reference in float64 from the same float32 logits
        hs = model(ids, output_hidden_states=True).hidden_states
        p, q = (
            torch.stack([torch.log_softmax(lens(hs[i], i)[0].double(), -1) for i in range(lens.num_layers)])
            for lens in (near, logit)
        )
    m = torch.logaddexp(p, q) - math.log(2)
    want = {
        "kl_to_compared": kl(p, q),
        "kl_from_compared": kl(q, p),
        "js": 0.5 * kl(p, m) + 0.5 * kl(q, m),
        "tv": 0.5 * (p.exp() - q.exp()).abs().sum(-1),
    }
    for name, rows in want.items():
        assert rows.min() > 1e-7 and rows.max() < 1e-2, name
        torch.testing.assert_close(getattr(traj, name)[0, :-1].double(), rows, rtol=1e-2, atol=1e-6)
        assert (getattr(traj, name)[0, -1] == 0).all(), name  # the output row, shared by both lenses


@pytest.mark.parametrize(
    "options",
    [{}, {"mask_input": True}, {"target": " Paris", "anti_target": " London"}, {"layers": [0, 2], "keep_log_probs": 1}],
    ids=["plain", "mask_input", "targets", "layers+log_probs"],
)
def test_read_compared_gives_the_compared_lens_trajectory_in_the_same_pass(model, tokenizer, tuned, options):
    logit, texts = LogitLens.from_model(model), ["The capital of France is Paris.", "Hi there"]
    both = PredictionTrajectory.from_text(
        tuned, model, tokenizer, texts, **options, compare_with=logit, read_compared=True
    )
    alone = PredictionTrajectory.from_text(logit, model, tokenizer, texts, **options, compare_with=tuned)
    got = both.compared
    own = ("top_ids", "top_probs", "entropy", "ce", "kl", "rank", "prob", "log_prob", "anti_log_prob", "js", "tv")
    for name in own:
        if getattr(alone, name) is None:
            assert getattr(got, name) is None, name
        else:
            torch.testing.assert_close(getattr(got, name), getattr(alone, name), equal_nan=True, rtol=1e-5, atol=1e-6)
    for name in ("kl_to_compared", "kl_from_compared", "log_probs"):
        if getattr(alone, name) is not None:
            torch.testing.assert_close(getattr(got, name), getattr(alone, name), equal_nan=True, rtol=1e-4, atol=1e-5)
    assert (got.lens_name, got.model_name, got.untrained_layers) == (alone.lens_name, alone.model_name, [])
    assert got.top_labels == alone.top_labels and got.js is not both.js  # its own tensors
    assert both[1, 1:3].compared.entropy.shape == both[1, 1:3].entropy.shape  # cut alike


def test_read_compared_needs_a_compared_lens(model, tokenizer, tuned):
    with pytest.raises(TrajectoryError, match="compare_with"):
        PredictionTrajectory.from_text(tuned, model, tokenizer, TEXT, read_compared=True)
