"""Marginal prediction statistics of a lens over a dataset (the original tuned-lens's ``LogitStats``).

A lens can be *biased*: averaged over a whole dataset, the distribution it predicts at a layer may put more mass
on some tokens than the model's own output does, whatever the context. `LogitStats` measures this. Per row (a
layer, or the model's output) it keeps float64 running sums of the predicted distributions ``p`` and of ``log p``
over every token it is shown, which gives

- the **marginal** distribution of the row, ``mean_t p_t``, and its KL divergence from a reference marginal
  (`LogitStats.marginal_kl`; the model's own, i.e. the final layer's, in ``lens-hub eval --logit-stats``), and
- a **Dirichlet fit** of the per-token distributions (`LogitStats.dirichlet`): the maximum-likelihood
  ``Dir(alpha)`` with the row's predicted distributions as samples. Its precision ``alpha_0 = sum(alpha)`` says how
  much the distributions vary around their mean: large ``alpha_0``: every token gets nearly the same prediction;
  small: predictions are confident and differ from token to token.

The Dirichlet log-likelihood of ``n`` samples depends on them only through the mean log-probabilities
``abar_k = mean_t log p_tk`` (its sufficient statistics), so the fit needs no per-token data:
``log L / n = log Gamma(alpha_0) - sum_k log Gamma(alpha_k) + sum_k (alpha_k - 1) abar_k``.
`fit_dirichlet` maximises it with Minka's fixed-point iteration (T. Minka, "Estimating a Dirichlet distribution",
2000), ``psi(alpha_k) <- psi(alpha_0) + abar_k``, each step inverting the digamma function ``psi`` with Newton's
method as Minka's appendix describes. Every step increases the likelihood, and it converges to the unique maximum
whenever one exists, that is, whenever not all samples are equal (then the likelihood grows without bound as
``alpha_0 -> inf``); a fit that does not converge raises `DirichletFitError`.

No [tokens x vocab] tensor larger than one chunk (`CHUNK_ELEMENTS`, 32 MiB of float64) is created, so any number
of tokens can be accumulated in ``2 x rows x vocab`` float64 numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import DirichletFitError, StatsError

CHUNK_ELEMENTS = 1 << 22  # float64 elements per chunk of rows: 32 MiB
# log p below this (p under the smallest normal float64) is clamped, so an exact zero probability (-inf) keeps the
# sufficient statistics finite; it only moves the fitted concentration of that token to a negligible value.
LOG_FLOOR = math.log(torch.finfo(torch.float64).tiny)
_EULER_GAMMA = 0.5772156649015329


@dataclass(frozen=True)
class DirichletFit:
    """A fitted Dirichlet distribution.

    Attributes:
        concentration: The parameters ``alpha`` [vocab], float64, all positive.
        iterations: Fixed-point iterations taken.
        log_likelihood: Mean log-density of the samples under the fit, in nats (with respect to the Lebesgue
            measure on the simplex, so it can be positive).
    """

    concentration: torch.Tensor
    iterations: int
    log_likelihood: float

    @property
    def precision(self) -> float:
        """``alpha_0 = sum(alpha)``: how tightly the samples cluster around their mean."""
        return float(self.concentration.sum())

    @property
    def mean(self) -> torch.Tensor:
        """The mean of the fitted distribution, ``alpha / alpha_0`` [vocab]."""
        return self.concentration / self.concentration.sum()


def inverse_digamma(y: torch.Tensor, *, newton_steps: int = 5) -> torch.Tensor:
    """The inverse of the digamma function, elementwise: ``x > 0`` with ``digamma(x) = y``.

    Minka's method: start at ``exp(y) + 1/2`` (for ``y >= -2.22``) or ``-1 / (y + euler_gamma)`` (below, where
    ``digamma(x) ~ -1/x - euler_gamma``), then take Newton steps; five give about 14 correct digits in float64.

    Args:
        y: Any real values (float64 recommended).
        newton_steps: Newton steps after the initial guess.

    Returns:
        ``x`` of the same shape and dtype as ``y``.
    """
    x = torch.where(y >= -2.22, torch.exp(y) + 0.5, -1.0 / (y + _EULER_GAMMA))
    for _ in range(newton_steps):
        x = x - (torch.digamma(x) - y) / torch.polygamma(1, x)
    return x


def dirichlet_log_likelihood(concentration: torch.Tensor, mean_log_probs: torch.Tensor) -> float:
    """Mean log-density of samples with sufficient statistics ``mean_log_probs`` under ``Dir(concentration)``.

    Args:
        concentration: ``alpha`` [K], positive.
        mean_log_probs: ``abar_k = mean over samples of log p_k`` [K].

    Returns:
        ``log Gamma(alpha_0) - sum_k log Gamma(alpha_k) + sum_k (alpha_k - 1) abar_k``, in nats.
    """
    a = concentration.double()
    abar = mean_log_probs.double()
    return float(torch.lgamma(a.sum()) - torch.lgamma(a).sum() + ((a - 1) * abar).sum())


def fit_dirichlet(
    mean_log_probs: torch.Tensor,
    *,
    init: torch.Tensor | None = None,
    tol: float = 1e-7,
    max_iter: int = 20_000,
) -> DirichletFit:
    """Maximum-likelihood Dirichlet for samples whose mean log-probabilities are ``mean_log_probs``.

    Minka's fixed-point iteration ``alpha_k <- inverse_digamma(digamma(alpha_0) + abar_k)`` (see the module
    docstring), until no ``alpha_k`` changes by more than ``tol`` relative to itself.

    Args:
        mean_log_probs: Sufficient statistics ``abar`` [K], K >= 2: the mean over the samples of ``log p``.
        init: Starting ``alpha`` [K] (positive). Default: the mean ``exp(abar) / sum(exp(abar))`` scaled by the
            precision that maximises Stirling's approximation of the likelihood with that mean fixed,
            ``(K - 1) / (2 sum_k m_k (log m_k - abar_k))``.
        tol: Relative change of every ``alpha_k`` below which the iteration stops.
        max_iter: Iterations allowed.

    Returns:
        The `DirichletFit`.

    Raises:
        DirichletFitError: The statistics are not those of at least two different distributions (no maximum
            exists: the likelihood grows without bound), or the iteration did not converge in ``max_iter``
            steps; the message says which and what to change.
    """
    abar = mean_log_probs.detach().double().reshape(-1)
    if abar.numel() < 2 or not torch.isfinite(abar).all():
        raise DirichletFitError(
            f"fit_dirichlet needs finite mean log-probabilities over K >= 2 categories; got {abar.numel()} values"
            + ("" if torch.isfinite(abar).all() else " with inf or nan among them (clamp log p at LOG_FLOOR)")
        )
    # Jensen: sum_k exp(abar_k) = sum_k geomean(p_k) <= 1, with equality only when every sample is the same.
    gap = 1.0 - float(torch.exp(abar).sum())
    if gap < -1e-9:
        raise DirichletFitError(
            f"these are not mean log-probabilities of distributions: sum(exp(mean log p)) = {1 - gap:.6g} > 1; pass "
            "the mean of log_softmax outputs"
        )
    if gap <= 1e-12:
        raise DirichletFitError(
            "the samples are (numerically) all the same distribution, so the Dirichlet likelihood has no maximum "
            "(it grows without bound as the precision grows); fit on varied predictions, e.g. more than one token"
        )
    if init is None:
        log_m = abar - torch.logsumexp(abar, 0)
        init = log_m.exp() * ((abar.numel() - 1) / (2 * float((log_m.exp() * (log_m - abar)).sum())))
    alpha = init.detach().double().reshape(-1).clone()
    if alpha.shape != abar.shape or not (alpha > 0).all():
        raise DirichletFitError(f"init must hold {abar.numel()} positive values, like mean_log_probs")
    change = math.inf
    for step in range(1, max_iter + 1):
        new = inverse_digamma(torch.digamma(alpha.sum()) + abar)
        change = float(((new - alpha).abs() / alpha).max())
        alpha = new
        if not torch.isfinite(alpha).all():
            break
        if change < tol:
            return DirichletFit(alpha, step, dirichlet_log_likelihood(alpha, abar))
    raise DirichletFitError(
        f"the Dirichlet fit did not converge in {max_iter} fixed-point iterations (last relative change "
        f"{change:.3g}, precision {float(alpha.sum()):.4g}); pass a larger max_iter or tol, or fit on more varied "
        "samples (a precision that keeps growing means the samples barely differ)"
    )


class LogitStats:
    """Running marginal and Dirichlet statistics of predicted distributions, per row (e.g. one row per layer).

    Example::

        stats = LogitStats(num_rows=lens.num_layers + 1, vocab_size=vocab)
        for i in range(lens.num_layers):
            stats.update(i, lens(hidden[i], i))
        stats.update(lens.num_layers, lens.unembed.head(hidden[-1]))  # the model's output as the last row
        bias = stats.marginal_kl()  # KL(model's marginal || each row's marginal), nats; 0 for the last row
        alpha_0 = stats.dirichlet(5).precision

    Args:
        num_rows: Rows kept (each ``2 x vocab_size`` float64 numbers).
        vocab_size: Size of the distributions.
        device: Where the sums live (default: the CPU); updates are moved there.
    """

    def __init__(self, num_rows: int, vocab_size: int, *, device: torch.device | str | None = None) -> None:
        if num_rows < 1 or vocab_size < 2:
            raise StatsError(f"LogitStats needs num_rows >= 1 and vocab_size >= 2, got {num_rows} and {vocab_size}")
        self.sum_probs = torch.zeros(num_rows, vocab_size, dtype=torch.float64, device=device)
        self.sum_log_probs = torch.zeros_like(self.sum_probs)
        self.counts = [0] * num_rows

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        return self.sum_probs.shape[0]

    @property
    def vocab_size(self) -> int:
        """Size of the distributions."""
        return self.sum_probs.shape[1]

    @torch.no_grad()
    def update(self, row: int, logits: torch.Tensor, *, log_probs: bool = False) -> None:
        """Add the distributions ``softmax(logits)`` of every position to ``row``.

        Args:
            row: Row index, ``0 .. num_rows - 1``.
            logits: [..., vocab] logits of any float dtype; every leading position counts as one sample.
            log_probs: ``logits`` are already normalised log-probabilities (skips the log-softmax).

        Raises:
            StatsError: ``row`` is out of range or the last dimension is not ``vocab_size``.
        """
        if not 0 <= row < self.num_rows:
            raise StatsError(f"row {row} is out of range: this LogitStats has rows 0..{self.num_rows - 1}")
        if logits.shape[-1] != self.vocab_size:
            raise StatsError(
                f"expected distributions over {self.vocab_size} tokens, got last dimension {logits.shape[-1]}; "
                "pass [..., vocab] logits of the model this LogitStats was made for"
            )
        flat = logits.detach().reshape(-1, self.vocab_size)
        step = max(1, CHUNK_ELEMENTS // self.vocab_size)
        for start in range(0, flat.shape[0], step):
            chunk = flat[start : start + step].to(self.sum_probs.device, torch.float64)
            log_p = chunk if log_probs else chunk.log_softmax(-1)
            self.sum_probs[row] += log_p.exp().sum(0)
            self.sum_log_probs[row] += log_p.clamp_min(LOG_FLOOR).sum(0)
        self.counts[row] += flat.shape[0]

    def _check_filled(self, rows: list[int]) -> None:
        empty = [r for r in rows if self.counts[r] == 0]
        if empty:
            raise StatsError(f"rows {empty} have no data yet; call update(row, logits) for them first")

    def marginal(self) -> torch.Tensor:
        """The mean predicted distribution of every row, [num_rows, vocab] float64.

        Raises:
            StatsError: A row has no data.
        """
        self._check_filled(list(range(self.num_rows)))
        return self.sum_probs / torch.tensor(self.counts, dtype=torch.float64, device=self.sum_probs.device)[:, None]

    def mean_log_probs(self) -> torch.Tensor:
        """The Dirichlet sufficient statistics of every row, ``mean_t log p_t`` [num_rows, vocab] float64.

        Raises:
            StatsError: A row has no data.
        """
        self._check_filled(list(range(self.num_rows)))
        counts = torch.tensor(self.counts, dtype=torch.float64, device=self.sum_probs.device)
        return self.sum_log_probs / counts[:, None]

    def marginal_kl(self, reference: int | torch.Tensor = -1) -> torch.Tensor:
        """KL(reference marginal || each row's marginal), in nats: the marginal prediction bias of each row.

        Args:
            reference: A row of this accumulator (default: the last, where the model's output goes), or a
                distribution [vocab] (e.g. another accumulator's marginal).

        Returns:
            [num_rows] float64 (0 for the reference row itself).
        """
        marginals = self.marginal()
        ref = marginals[reference] if isinstance(reference, int) else reference.to(marginals)
        if ref.shape != (self.vocab_size,):
            raise StatsError(f"reference must be a row index or a [{self.vocab_size}] distribution")
        return (torch.xlogy(ref, ref) - torch.xlogy(ref, marginals)).sum(-1)

    def dirichlet(self, row: int, *, tol: float = 1e-7, max_iter: int = 20_000) -> DirichletFit:
        """Maximum-likelihood Dirichlet of ``row``'s per-token distributions (`fit_dirichlet`).

        Starts from the row's marginal (the moment estimate of the Dirichlet mean) scaled by the precision that
        maximises Stirling's approximation of the likelihood (see `fit_dirichlet`).

        Args:
            row: Row index.
            tol: Relative change of every concentration below which the iteration stops.
            max_iter: Fixed-point iterations allowed.

        Raises:
            StatsError: ``row`` is out of range or has no data.
            DirichletFitError: The fit has no maximum (fewer than two distinct distributions) or did not converge.
        """
        if not -self.num_rows <= row < self.num_rows:
            raise StatsError(f"row {row} is out of range: this LogitStats has rows 0..{self.num_rows - 1}")
        row %= self.num_rows
        self._check_filled([row])
        abar = self.sum_log_probs[row] / self.counts[row]
        mean = (self.sum_probs[row] / self.counts[row]).clamp_min(torch.finfo(torch.float64).tiny)
        mean = mean / mean.sum()
        stirling = float((mean * (mean.log() - abar)).sum())  # >= 0 by Jensen; 0 when every sample is equal
        init = mean * ((self.vocab_size - 1) / (2 * stirling)) if stirling > 0 else None
        return fit_dirichlet(abar, init=init, tol=tol, max_iter=max_iter)
