"""Gaussian mixture model on the last hidden layer (Tan et al. 2023, "GMM"; Eq. 10-11).

For each element a :class:`sklearn.mixture.GaussianMixture` with full covariances is fitted on the
last hidden layer ``h_(L-1)`` of member 0 over the training atoms of that element; the number of
components is the one of smallest BIC among 1..``max_components``. Its score is the negative
log-likelihood of an atom's features,

    s_i = -log sum_k pi_k N(h_i | mu_k, Sigma_k)       (per atom, dimensionless)
    s   = mean_i s_i                                   (per structure: the mean over its atoms)

evaluated in torch (differentiable, so bias forces work) from the fitted weights, means and
Cholesky factors of the precisions; it equals ``-GaussianMixture.score_samples``. A score has no
unit, so the model turns it into standard deviations with the variance recalibration of Tan et al. (2023)
Eq. 13 fitted on validation data (records ``calibration/nll/energy/gmm`` and
``calibration/nll/force/gmm``, ``[a, b, min_variance]``):

    U   = sqrt(max(a_E s + b_E, min_E))      (eV, total energy)
    U_i = sqrt(max(a_F s_i + b_F, min_F))    (eV/A, per force component)

Records (Python only): ``uq/gmm/El/weights`` [K], ``uq/gmm/El/means`` [K, H],
``uq/gmm/El/precisions_cholesky`` [K, H, H] (sklearn's ``precisions_cholesky_``: the precision is
``L L^T``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

DEFAULT_MAX_COMPONENTS = 8
DEFAULT_MAX_SAMPLES = 20000  # training atoms per element used for the fit


class GMMUncertainty:
    """Per-element Gaussian mixtures on last-hidden-layer features."""

    def __init__(self, elements: Sequence[str], weights, means, precisions_cholesky):
        self.elements = tuple(elements)
        self.weights = [np.asarray(w, dtype=float) for w in weights]
        self.means = [np.asarray(m, dtype=float) for m in means]
        self.precisions_cholesky = [np.asarray(p, dtype=float) for p in precisions_cholesky]
        self._tensors: dict = {}

    @property
    def n_components(self) -> dict[str, int]:
        return {el: len(w) for el, w in zip(self.elements, self.weights, strict=True)}

    @classmethod
    def fit(
        cls,
        elements: Sequence[str],
        hidden: np.ndarray,
        species: np.ndarray,
        *,
        max_components: int = DEFAULT_MAX_COMPONENTS,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        seed: int = 0,
    ) -> GMMUncertainty:
        """Fit one mixture per element on ``hidden`` (n_atoms, H), choosing the size by BIC.

        At most ``max_samples`` atoms per element (a random subset) enter the fit.
        """
        from sklearn.mixture import GaussianMixture

        if max_components < 1:
            raise ValueError(f"max_components must be >= 1, got {max_components}")
        rng = np.random.default_rng(seed)
        weights, means, chols = [], [], []
        for e, el in enumerate(elements):
            x = hidden[species == e]
            if len(x) < 2:
                raise ValueError(f"the GMM needs at least 2 training atoms of {el}, got {len(x)}")
            if len(x) > max_samples:
                x = x[rng.choice(len(x), max_samples, replace=False)]
            best, best_bic = None, np.inf
            for k in range(1, min(max_components, len(x)) + 1):
                gmm = GaussianMixture(k, covariance_type="full", random_state=seed, reg_covar=1e-6).fit(x)
                bic = gmm.bic(x)
                if bic < best_bic:
                    best, best_bic = gmm, bic
            weights.append(best.weights_)
            means.append(best.means_)
            chols.append(best.precisions_cholesky_)
        return cls(elements, weights, means, chols)

    def _element_tensors(self, e: int, like: torch.Tensor):
        key = (e, like.device)
        if key not in self._tensors:
            to = lambda a: torch.as_tensor(a, dtype=like.dtype, device=like.device)  # noqa: E731
            chol = to(self.precisions_cholesky[e])
            log_det = torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(dim=1)
            self._tensors[key] = (to(np.log(self.weights[e])), to(self.means[e]), chol, log_det)
        return self._tensors[key]

    def atom_scores(self, hidden: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """(n_atoms,) negative log-likelihood s_i of each atom's features (n_atoms, H)."""
        scores = hidden.new_zeros(hidden.shape[0])
        for e in range(len(self.elements)):
            rows = torch.nonzero(species == e).squeeze(1)
            if len(rows) == 0:
                continue
            log_w, mu, chol, log_det = self._element_tensors(e, hidden)
            x = hidden[rows]
            # y_k = (x - mu_k) L_k, as sklearn's _estimate_log_gaussian_prob does.
            y = torch.einsum("nd,kde->nke", x, chol) - torch.einsum("kd,kde->ke", mu, chol)
            dim = x.shape[1]
            log_prob = -0.5 * (dim * math.log(2 * math.pi) + (y**2).sum(dim=2)) + log_det
            scores = scores.index_copy(0, rows, -torch.logsumexp(log_prob + log_w, dim=1))
        return scores

    def to_records(self) -> dict[str, np.ndarray]:
        records = {}
        for el, w, m, p in zip(
            self.elements, self.weights, self.means, self.precisions_cholesky, strict=True
        ):
            records[f"uq/gmm/{el}/weights"] = w
            records[f"uq/gmm/{el}/means"] = m
            records[f"uq/gmm/{el}/precisions_cholesky"] = p
        return records

    @classmethod
    def from_records(cls, records: Mapping, elements: Sequence[str]) -> GMMUncertainty:
        parts = {"weights": [], "means": [], "precisions_cholesky": []}
        for el in elements:
            for name, values in parts.items():
                record = f"uq/gmm/{el}/{name}"
                if record not in records:
                    raise ValueError(f"missing record {record}")
                values.append(np.asarray(records[record], dtype=float))
            k = len(parts["weights"][-1])
            h = parts["means"][-1].shape[-1]
            if parts["means"][-1].shape != (k, h) or parts["precisions_cholesky"][-1].shape != (k, h, h):
                raise ValueError(f"records uq/gmm/{el}/* have inconsistent shapes")
        return cls(elements, **parts)
