"""Causal basis extraction recovers a planted direction; subspace removal and in-model ablation do what they say."""

import math

import pytest
import torch
from helpers import random_lens
from tiny_models import tiny_model

from lens_hub import LogitLens
from lens_hub.analysis import causal
from lens_hub.analysis.causal import (
    ablate_subspace,
    derangement,
    extract_causal_bases,
    model_ablation_kl,
    remove_subspace,
    subspace_influence,
)
from lens_hub.errors import CausalBasisError

VOCAB = 96


def _planted(scale: float = 10.0, family: str = "llama", seed: int = 2):
    """A tiny model whose token embeddings vary strongly along the direction the unembedding is most sensitive to
    (the top right-singular vector of lm_head): the residual stream then carries it through every layer."""
    model = tiny_model(family)
    direction = torch.linalg.svd(model.get_output_embeddings().weight.detach(), full_matrices=False).Vh[0]
    emb = model.get_input_embeddings().weight
    z = torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        emb += scale * emb.std() * z[:, None] * direction
    return model, direction


def _ids(seed: int = 1, batch: int = 4, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _hidden(model, ids):
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states


def test_first_causal_basis_vector_recovers_a_planted_direction():
    model, direction = _planted()
    hs = _hidden(model, _ids())
    lens = LogitLens.from_model(model)
    bases = extract_causal_bases(lens, hs, 3, layers=[1, 2])
    assert list(bases) == [1, 2]
    for layer, basis in bases.items():
        assert basis.layer == layer and basis.k == 3 and basis.mode == "mean"
        assert abs(float(basis.vectors[:, 0] @ direction)) > 0.9
        torch.testing.assert_close(basis.vectors.T @ basis.vectors, torch.eye(3), atol=1e-5, rtol=0)
        assert basis.energies[0] > 5 * basis.energies[1:].max()  # the planted direction dominates
        torch.testing.assert_close(basis.mean, hs[layer].reshape(-1, 32).mean(0))
        for j in range(3):  # an energy is the lens-side influence of that vector alone
            alone = subspace_influence(lens, hs[layer], layer, basis.vectors[:, j], mean=basis.mean)
            assert float(basis.energies[j]) == pytest.approx(alone, rel=1e-4)
    assert all(p.grad is None for p in model.parameters())  # nothing of the model was touched


@pytest.mark.parametrize("mode", ["zero", "resample"])
def test_other_ablation_modes_find_the_planted_direction_through_a_tuned_lens(mode):
    model, direction = _planted()
    lens = random_lens(model, std=0.01)
    bases = extract_causal_bases(lens, _hidden(model, _ids()), 1, layers=[2], mode=mode)
    assert abs(float(bases[2].vectors[:, 0] @ direction)) > 0.9
    assert all(p.grad is None for p in lens.parameters())


@pytest.mark.parametrize(("family", "seed"), [("llama", 2), ("gpt2", 3)])
def test_energies_never_increase_along_the_basis(family, seed, monkeypatch):
    """A single climb from the best-looking start left the later vectors stronger than the earlier ones here (the
    energies rose by 14% for Llama, 64% for GPT-2): several climbs, and redoing a step that a later vector beats,
    keep the greedy order."""
    model, direction = _planted(family=family, seed=seed)
    lens = LogitLens.from_model(model)
    hs = _hidden(model, _ids())
    searches, greedy = [], causal._greedy

    def spy(search, k):
        searches.append(search)
        return greedy(search, k)

    monkeypatch.setattr(causal, "_greedy", spy)
    basis = extract_causal_bases(lens, hs, 4, layers=[1])[1]
    assert abs(float(basis.vectors[:, 0] @ direction)) > 0.9
    assert (basis.energies[1:] <= basis.energies[:-1]).all(), basis.energies  # holds by sorting alone
    # The same search with one climb per vector and no step redone: the full search finds stronger vectors (the
    # sort above cannot tell the two apart).
    (search,) = searches
    search.starts, found, energies = 1, [], []
    for _ in range(4):
        v, energy = search.step(found, [])
        found.append(v)
        energies.append(energy)
    single = torch.tensor(sorted(energies, reverse=True), dtype=torch.float64)
    assert (basis.energies > 1.02 * single).any(), (basis.energies, single)
    torch.testing.assert_close(basis.vectors.T @ basis.vectors, torch.eye(4), atol=1e-5, rtol=0)
    for j in range(4):  # still each vector's own influence, whatever order the search found them in
        alone = subspace_influence(lens, hs[1], 1, basis.vectors[:, j], mean=basis.mean)
        assert float(basis.energies[j]) == pytest.approx(alone, rel=1e-4)


def _superposed(angle: float = 70.0, n: int = 64):
    """A logit lens over synthetic states of two groups of tokens, each with its own feature: group A's varies
    along d1 and only A's vocabulary reads d1, group B's likewise along d2, with d1 and d2 ``angle`` degrees apart
    (not orthogonal: two features in superposition). A group marker (ga or gb) picks the group's vocabulary."""
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(32, 32, generator=g)).Q
    ga, gb, d1 = q[:, 0], q[:, 1], q[:, 2]
    d2 = math.cos(math.radians(angle)) * q[:, 2] + math.sin(math.radians(angle)) * q[:, 3]
    spread = torch.linspace(-3, 3, VOCAB // 2)[:, None]
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.cat([3 * ga + spread * d1, 3 * gb + spread * d2]))
    z = 3 * torch.randn(n, 1, generator=g)
    h = 0.1 * torch.randn(n, 32, generator=g)
    h[: n // 2] += 2 * ga + z[: n // 2] * d1
    h[n // 2 :] += 2 * gb + z[n // 2 :] * d2
    return model, LogitLens.from_model(model), h, d1, d2


def test_cross_entropy_objective_finds_what_the_labels_depend_on():
    _, lens, h, d1, d2 = _superposed()
    n = h.shape[0]
    labels = torch.full((n,), -100)  # only group A's positions are scored: position t against labels[t + 1]
    with torch.no_grad():
        labels[1 : n // 2 + 1] = lens(h[: n // 2], 1).argmax(-1)
    kl = extract_causal_bases(lens, [h, h], 1, layers=[1])[1]
    ce = extract_causal_bases(lens, [h, h], 2, layers=[1], labels=labels)[1]
    assert kl.objective == "kl" and ce.objective == "ce"
    assert abs(float(kl.vectors[:, 0] @ d2)) > 0.8  # the KL is moved most by group B's feature...
    assert abs(float(ce.vectors[:, 0] @ d1)) > 0.8  # ...the labels' cross-entropy by group A's
    raised = subspace_influence(lens, h, 1, ce.vectors[:, 0], labels=labels)
    assert float(ce.energies[0]) == pytest.approx(raised, rel=1e-4)  # an energy is a rise of cross-entropy
    assert (ce.energies[1:] <= ce.energies[:-1]).all()
    other = torch.randn(32, generator=torch.Generator().manual_seed(7))
    random_rise = subspace_influence(lens, h, 1, other / other.norm(), labels=labels)
    assert raised > 10 * max(random_rise, subspace_influence(lens, h, 1, kl.vectors[:, 0], labels=labels))
    with pytest.raises(CausalBasisError, match=r"leading shape \[64\]"):
        extract_causal_bases(lens, [h, h], 1, layers=[1], labels=labels[:-1])
    with pytest.raises(CausalBasisError, match="below the vocabulary size 96"):
        extract_causal_bases(lens, [h, h], 1, layers=[1], labels=torch.full((n,), VOCAB))


def test_unorthogonalised_bases_follow_features_in_superposition():
    model, lens, h, d1, d2 = _superposed()
    held = extract_causal_bases(lens, [h, h], 2, layers=[1])[1]
    free = extract_causal_bases(lens, [h, h], 2, layers=[1], orthonormal=False)[1]
    assert held.orthonormal and not free.orthonormal
    torch.testing.assert_close(free.vectors.norm(dim=0), torch.ones(2), atol=1e-5, rtol=0)
    assert abs(float(free.vectors[:, 0] @ held.vectors[:, 0])) > 0.999  # the first step is the same search
    assert abs(float(free.vectors[:, 0] @ free.vectors[:, 1])) > 0.1  # not orthogonal...
    assert free.energies[1] > 1.1 * held.energies[1]  # ...because orthogonality cost the second vector energy
    assert (free.energies[1:] <= free.energies[:-1]).all()
    alone = subspace_influence(lens, h, 1, free.vectors[:, 1], mean=free.mean)
    assert float(free.energies[1]) == pytest.approx(alone, rel=1e-4)
    # Such a basis stands for its span in every ablation function, with orthonormal=False.
    span = torch.linalg.qr(free.vectors).Q
    with pytest.raises(CausalBasisError, match="not orthonormal"):
        remove_subspace(h, free.vectors)
    torch.testing.assert_close(
        remove_subspace(h, free.vectors, "mean", orthonormal=False), remove_subspace(h, span, "mean"), atol=1e-5, rtol=0
    )
    assert subspace_influence(lens, h, 1, free.vectors, orthonormal=False) == pytest.approx(
        subspace_influence(lens, h, 1, span), rel=1e-5
    )
    ids = _ids(seed=8)
    mean = free.mean
    assert model_ablation_kl(model, ids, 1, free.vectors, mean=mean, orthonormal=False) == pytest.approx(
        model_ablation_kl(model, ids, 1, span, mean=mean), rel=1e-4
    )
    with pytest.raises(CausalBasisError, match="linearly dependent"):
        remove_subspace(h, torch.stack([d1, d1, d2], 1), orthonormal=False)


def test_remove_subspace_sets_the_projection_and_keeps_the_rest():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 7, 32, generator=g)
    basis = torch.linalg.qr(torch.randn(32, 3, generator=g)).Q
    mean = torch.randn(32, generator=g)
    rest = torch.eye(32) - basis @ basis.T

    def parts(x):
        return x @ basis, x @ rest

    for mode, new in (
        ("zero", torch.zeros(2, 7, 3)),
        ("mean", (mean @ basis).expand(2, 7, 3)),
    ):
        out = remove_subspace(h, basis, mode, mean=mean)
        assert out.shape == h.shape and out.dtype == h.dtype
        torch.testing.assert_close(parts(out)[0], new, atol=1e-5, rtol=0)
        torch.testing.assert_close(parts(out)[1], parts(h)[1], atol=1e-5, rtol=0)
    own = remove_subspace(h, basis, "mean")  # default mean: the tokens' own
    torch.testing.assert_close(own @ basis, (h.reshape(-1, 32).mean(0) @ basis).expand(2, 7, 3), atol=1e-5, rtol=0)
    shuffled = remove_subspace(h, basis, "resample", generator=torch.Generator().manual_seed(3))
    before, after = (h @ basis).reshape(14, 3), (shuffled @ basis).reshape(14, 3)
    match = (after[:, None] - before[None]).abs().amax(-1) < 1e-5  # [after row, before row]
    assert (match.sum(1) == 1).all() and not match.diagonal().any()  # every token took another token's coordinates
    torch.testing.assert_close(parts(shuffled)[1], parts(h)[1], atol=1e-5, rtol=0)
    one = remove_subspace(h, basis[:, 0], "zero")  # a single vector works as a 1-column basis
    torch.testing.assert_close(one @ basis[:, 0], torch.zeros(2, 7), atol=1e-5, rtol=0)
    with pytest.raises(CausalBasisError, match="not orthonormal"):
        remove_subspace(h, 2 * basis)
    with pytest.raises(CausalBasisError, match=r"\[32, k\] matrix"):
        remove_subspace(h, torch.eye(16)[:, :2])
    with pytest.raises(CausalBasisError, match="unknown ablation mode 'median'"):
        remove_subspace(h, basis, "median")
    with pytest.raises(CausalBasisError, match="at least two tokens"):
        remove_subspace(h[:1, :1], basis, "resample")
    perm = derangement(50, generator=torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(50)) and (perm != torch.arange(50)).all()


def _capture_layer_input(model, layer):
    """Record what ``layers[layer]`` receives: a pre-hook registered after ablate_subspace's sees its result."""
    seen = []
    handle = model.model.layers[layer].register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    return seen, handle


@pytest.mark.parametrize("mode", ["mean", "zero"])
def test_ablate_subspace_in_the_model_and_removes_its_hook(mode):
    model, direction = _planted()
    ids = _ids(seed=5)
    layer = model.model.layers[1]
    with torch.no_grad():
        before = model(ids).logits
        mean = torch.randn(32, generator=torch.Generator().manual_seed(4))
        with ablate_subspace(model, 1, direction, mode, mean=mean) as same:
            assert same is model
            seen, handle = _capture_layer_input(model, 1)
            inside = model(ids).logits
            handle.remove()
        after = model(ids).logits
    expected = float(mean @ direction) if mode == "mean" else 0.0
    torch.testing.assert_close(seen[0] @ direction, torch.full((4, 16), expected), atol=1e-4, rtol=0)
    assert (inside - before).abs().max() > 1e-2  # the model used that direction
    assert torch.equal(after, before)  # bit-identical once the context is closed
    assert len(layer._forward_pre_hooks) == 0

    hooks_inside = []

    def failing_body():
        with ablate_subspace(model, 1, direction, mode, mean=mean):
            hooks_inside.append(len(layer._forward_pre_hooks))
            raise RuntimeError("body failed")

    with pytest.raises(RuntimeError, match="body failed"):
        failing_body()
    assert hooks_inside == [1] and len(layer._forward_pre_hooks) == 0
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)


def test_model_ablation_kl_ranks_the_planted_direction_above_a_random_one():
    model, direction = _planted()
    ids = _ids(seed=6)
    other = torch.randn(32, generator=torch.Generator().manual_seed(7))
    other = other - (other @ direction) * direction
    other = other / other.norm()
    planted = model_ablation_kl(model, ids, 1, direction, "mean")
    control = model_ablation_kl(model, ids, 1, other, "mean")
    assert planted > 10 * control > 0
    mask = torch.ones_like(ids)
    mask[:, -4:] = 0
    assert model_ablation_kl(model, ids, 1, direction, "zero", attention_mask=mask) > 0


def test_ablation_and_extraction_refuse_clearly():
    model, direction = _planted()

    def run(layer, ids, mode="mean"):
        with torch.no_grad(), ablate_subspace(model, layer, direction, mode):
            model(ids)

    with pytest.raises(CausalBasisError, match=r"layer 3 is out of range: the model has layers 0..2"):
        run(3, _ids())
    with pytest.raises(CausalBasisError, match="single token.*pass mean="):
        run(0, _ids(batch=1, seq=1))
    assert len(model.model.layers[0]._forward_pre_hooks) == 0
    hs = _hidden(model, _ids(batch=1, seq=4))
    lens = LogitLens.from_model(model)
    with pytest.raises(CausalBasisError, match=r"layers \[3\] are out of range"):
        extract_causal_bases(lens, hs, 1, layers=[3])
    with pytest.raises(CausalBasisError, match="k must be between 1 and the hidden size 32"):
        extract_causal_bases(lens, hs, 33, layers=[1])
    with pytest.raises(CausalBasisError, match="starts and candidates must be at least 1"):
        extract_causal_bases(lens, hs, 1, layers=[1], starts=0)
