"""Marginal prediction statistics: LogitStats against plain computations, the Dirichlet fit against known
Dirichlets, and `evaluate(..., logit_stats=True)` / `lens-hub eval --logit-stats` end to end."""

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import SAMPLE, TOKENIZER, assert_png, random_lens
from tiny_models import tiny_model

from lens_hub.analysis import stats
from lens_hub.analysis.evaluate import evaluate, logit_stats_table
from lens_hub.analysis.stats import LogitStats, dirichlet_log_likelihood, fit_dirichlet, inverse_digamma
from lens_hub.errors import DirichletFitError, StatsError
from lens_hub.training.data import TokenData


def _hidden(model, seed=0, batch=3, seq=10):
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states


def test_marginal_is_the_plain_mean_of_softmax_and_the_final_row_has_zero_kl(monkeypatch):
    monkeypatch.setattr(stats, "CHUNK_ELEMENTS", 96 * 7)  # several chunks per update, and a ragged last one
    model = tiny_model("llama")
    lens = random_lens(model, std=0.3)
    batches = [_hidden(model, seed) for seed in (0, 1)]
    acc = LogitStats(lens.num_layers + 1, model.config.vocab_size)
    every: list[list[torch.Tensor]] = [[] for _ in range(acc.num_rows)]
    with torch.no_grad():
        for hs in batches:
            for i in range(lens.num_layers):
                logits = lens(hs[i], i)
                acc.update(i, logits)
                every[i].append(logits.reshape(-1, 96).double())
            final = lens.unembed.head(hs[-1])
            acc.update(lens.num_layers, final)
            every[-1].append(final.reshape(-1, 96).double())
    plain = torch.stack([torch.cat(rows).softmax(-1).mean(0) for rows in every])
    plain_log = torch.stack([torch.cat(rows).log_softmax(-1).mean(0) for rows in every])
    assert acc.counts == [60] * acc.num_rows
    torch.testing.assert_close(acc.marginal(), plain, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(acc.mean_log_probs(), plain_log, rtol=1e-6, atol=1e-9)
    kl = acc.marginal_kl()
    assert kl[-1] == 0
    expected = (plain[-1] * (plain[-1].log() - plain.log())).sum(-1)
    torch.testing.assert_close(kl, expected, rtol=1e-6, atol=1e-12)
    assert (kl[:-1] > 1e-4).all()  # the random translators bias every layer
    torch.testing.assert_close(acc.marginal_kl(plain[0]), (plain[0] * (plain[0] / plain).log()).sum(-1))


def test_dirichlet_fit_recovers_the_concentration_of_dirichlet_samples():
    g = torch.Generator().manual_seed(0)
    alpha = 0.4 + 3 * torch.rand(12, generator=g, dtype=torch.float64)
    torch.manual_seed(1)  # torch.distributions draws from the global generator
    samples = torch.distributions.Dirichlet(alpha).sample((40_000,))
    acc = LogitStats(1, 12)
    acc.update(0, samples.log(), log_probs=True)
    fit = acc.dirichlet(0)
    torch.testing.assert_close(fit.concentration, alpha, rtol=0.04, atol=0)
    assert fit.precision == pytest.approx(float(alpha.sum()), rel=0.03)
    torch.testing.assert_close(fit.mean, alpha / alpha.sum(), rtol=0.02, atol=0)
    abar = samples.log().mean(0)
    # It is the maximum: the true parameters, and nearby ones, explain these samples less well.
    assert fit.log_likelihood >= dirichlet_log_likelihood(alpha, abar)
    assert fit.log_likelihood > dirichlet_log_likelihood(fit.concentration * 1.05, abar)
    assert fit.log_likelihood == pytest.approx(
        float(torch.distributions.Dirichlet(fit.concentration).log_prob(samples).mean()), rel=1e-9, abs=1e-9
    )
    # The default starting point (no marginal) reaches the same maximum.
    torch.testing.assert_close(fit_dirichlet(abar).concentration, fit.concentration, rtol=1e-5, atol=0)


def test_inverse_digamma_inverts_digamma_over_a_wide_range():
    x = torch.logspace(-4, 4, 200, dtype=torch.float64)
    torch.testing.assert_close(inverse_digamma(torch.digamma(x)), x, rtol=1e-10, atol=0)


def test_dirichlet_fit_and_logit_stats_refuse_clearly():
    same = torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64).log().expand(50, 3)
    acc = LogitStats(2, 3)
    acc.update(0, same, log_probs=True)
    with pytest.raises(DirichletFitError, match="all the same distribution"):
        acc.dirichlet(0)
    varied = torch.distributions.Dirichlet(torch.tensor([0.5, 1.0, 2.0])).sample((500,)).log()
    with pytest.raises(DirichletFitError, match=r"did not converge in 2 fixed-point iterations.*larger max_iter"):
        fit_dirichlet(varied.mean(0), max_iter=2)
    with pytest.raises(DirichletFitError, match="not mean log-probabilities"):
        fit_dirichlet(torch.tensor([0.0, -0.1, -0.2]))
    with pytest.raises(StatsError, match=r"rows \[1\] have no data yet"):
        acc.dirichlet(1)
    with pytest.raises(StatsError, match=r"row 2 is out of range"):
        acc.update(2, same)
    with pytest.raises(StatsError, match="expected distributions over 3 tokens"):
        acc.update(0, torch.zeros(4, 5))


def _tokens(seed=0, n=6, seq=12, vocab=96) -> TokenData:
    ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))
    return TokenData(ids, num_bytes=4 * ids.numel(), num_tokens_read=ids.numel(), source="random")


def test_evaluate_logit_stats_match_an_independent_computation():
    model = tiny_model("llama")
    lens = random_lens(model, std=0.3)
    data = _tokens()
    result = evaluate(model, data, lens, batch_size=4, layers=[0, 2], logit_stats=True)
    assert evaluate(model, data, lens, layers=[0]).logit_stats is None  # off by default
    with torch.no_grad():
        hs = model(data.sequences, output_hidden_states=True).hidden_states
        final = lens.unembed.head(hs[-1]).reshape(-1, 96).double()
    model_marginal = final.softmax(-1).mean(0)
    section = result.logit_stats
    assert section["unit"] == "bits"
    for name in ("logit", "tuned"):
        for k, i in enumerate([0, 2]):
            with torch.no_grad():
                logits = (lens(hs[i], i) if name == "tuned" else lens.unembed(hs[i])).reshape(-1, 96).double()
            marginal = logits.softmax(-1).mean(0)
            kl_bits = float((model_marginal * (model_marginal / marginal).log()).sum()) / math.log(2)
            # evaluate's log-softmax runs in float32, this one in float64
            assert section["marginal_kl"][name][k] == pytest.approx(kl_bits, rel=1e-3)
            alpha_0 = fit_dirichlet(logits.log_softmax(-1).mean(0)).precision
            assert section["dirichlet_precision"][name][k] == pytest.approx(alpha_0, rel=2e-3)
    model_alpha = fit_dirichlet(final.log_softmax(-1).mean(0)).precision
    assert section["dirichlet_precision"]["model"] == pytest.approx(model_alpha, rel=2e-3)
    assert result.to_json()["logit_stats"] == section
    assert logit_stats_table(result).row_count == 2


def test_cli_eval_writes_logit_stats_and_the_transfer_heatmap(tmp_path):
    # A GPT-2 with the real vocabulary, so the shipped GPT-2 tokenizer fits it.
    model = tiny_model("gpt2", vocab_size=50257, n_embd=32, n_layer=3, initializer_range=0.2)
    model.save_pretrained(tmp_path / "model")
    for f in TOKENIZER.glob("*.json"):
        shutil.copy(f, tmp_path / "model" / f.name)
    random_lens(model, std=0.02).save(tmp_path / "lens")
    args = ["--model", "model", "--data", str(SAMPLE), "--seq-len", "32", "--max-sequences", "4", "--device", "cpu"]
    out = ["--json", "eval.json", "--png", "plots/eval.png", "--transfer", "--logit-stats"]
    done = subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", "eval", "./lens", *args, *out],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Marginal prediction bias" in done.stdout
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["schema"] == "lens-hub-eval/1"
    section = report["logit_stats"]
    assert set(section) == {"unit", "marginal_kl", "dirichlet_precision"}
    for name in ("logit", "tuned"):
        assert len(section["marginal_kl"][name]) == len(section["dirichlet_precision"][name]) == 3
        assert all(kl > 0 for kl in section["marginal_kl"][name])
        assert all(a > 0 for a in section["dirichlet_precision"][name])
    assert section["dirichlet_precision"]["model"] > 0
    for name in ("eval.png", "eval-transfer.png", "eval-logit-stats.png"):
        assert_png((tmp_path / "plots" / name).read_bytes())
