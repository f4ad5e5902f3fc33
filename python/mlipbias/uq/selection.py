"""Batch selection from a pool of candidates (Zaverkin et al. 2024, Methods "Batch selection methods").

All three pick a whole batch at once and return pool indices in the order of selection:

- :func:`select_max_unc` (Eq. 24): the ``batch_size`` largest uncertainties.
- :func:`select_max_det` (Eq. 25-26): greedily the candidate that maximises the determinant
  of the posterior covariance ``k(x, x') = phi(x)^T A phi(x')`` between the selected
  structures, which is the candidate of largest posterior variance after conditioning on
  those already selected. ``A`` is the matrix of the posterior uncertainty
  ``U^2 = phi^T A phi``, ``(Phi^T Phi + lambda I)^-1`` over the training features
  (``uq/gradient/precision_energy`` in the model file).
- :func:`select_max_dist` (Eq. 27): greedily the candidate farthest (Euclidean distance of
  features) from every selected and training point; also picks a representative subset of
  training atomic features for the distance uncertainty.

Costs are O(pool x batch x K) time for K features and O(pool + batch x K) memory beyond the
inputs (plus O(K^2) for max-det), so pools of millions of atoms fit.
"""

from __future__ import annotations

import numpy as np

METHODS = ("max_unc", "max_det", "max_dist")
# Largest temporary array (elements) the selections allocate, 64 MB of float64.
_BLOCK_ELEMENTS = 1 << 23


def _check_batch(batch_size: int, n_pool: int) -> int:
    if int(batch_size) != batch_size or not 1 <= batch_size <= n_pool:
        raise ValueError(f"batch_size must be an integer in 1..{n_pool} (the pool size), got {batch_size}")
    return int(batch_size)


def _features(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (n, K) array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return a


def select_max_unc(uncertainty, batch_size: int) -> np.ndarray:
    """Indices of the ``batch_size`` largest uncertainties, largest first (ties: lower index first)."""
    u = np.asarray(uncertainty, dtype=float)
    if u.ndim != 1 or u.size == 0:
        raise ValueError(f"uncertainty must be a non-empty 1-d array, got shape {u.shape}")
    if np.any(np.isnan(u)):
        raise ValueError("uncertainty contains NaN")
    batch_size = _check_batch(batch_size, u.size)
    return np.argsort(-u, kind="stable")[:batch_size]


def select_max_det(features, precision, batch_size: int, *, noise: float = 0.0) -> np.ndarray:
    """Greedy maximisation of ``det(K_SS + noise I)`` with ``K = Phi A Phi^T`` (Eq. 25-26).

    ``features``: (n_pool, K) feature vectors phi; ``precision``: (K, K) symmetric positive
    semi-definite A. Each step adds the candidate with the largest posterior variance given
    the batch so far, which multiplies the determinant by ``variance + noise``; the
    covariance is then updated by a rank-one downdate, ``A <- A - A phi phi^T A / (phi^T A phi
    + noise)``, applied to the pool through the stored vectors ``A phi`` of the batch.
    With ``noise = 0`` a batch larger than the rank of the pool's features is an error.
    """
    x = _features("features", features)
    a = np.asarray(precision, dtype=float)
    n, k = x.shape
    if a.shape != (k, k):
        raise ValueError(f"precision has shape {a.shape}, expected ({k}, {k}) for {k} features")
    # Inverses of ill-conditioned matrices are symmetric only to ~eps * condition number.
    if np.abs(a - a.T).max() > 1e-4 * np.abs(a).max():
        raise ValueError("precision must be symmetric")
    a = 0.5 * (a + a.T)
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    batch_size = _check_batch(batch_size, n)

    variance = np.empty(n)  # phi^T A phi, in blocks of pool rows to bound the temporary
    rows = max(1, _BLOCK_ELEMENTS // k)
    for start in range(0, n, rows):
        block = x[start : start + rows]
        variance[start : start + rows] = np.einsum("ij,ij->i", block @ a, block)
    if np.any(variance < -1e-10 * max(variance.max(), 0.0)):
        raise ValueError("precision is not positive semi-definite: some phi^T A phi are negative")
    scale = max(variance.max(), 0.0)
    selected = np.empty(batch_size, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    downdates = np.empty((batch_size, k))  # A_j phi_j of each selected point
    denominators = np.empty(batch_size)
    for step in range(batch_size):
        i = int(np.argmax(np.where(taken, -np.inf, variance)))
        gain = variance[i] + noise
        if not gain > 1e-12 * scale:
            raise ValueError(
                f"max-det: after {step} selections no candidate has posterior variance left "
                "(the pool's features span too few directions); pass noise > 0 or a smaller batch"
            )
        selected[step], taken[i] = i, True
        # A_step phi_i, with A_step = A - sum_j u_j u_j^T / d_j over the batch so far.
        u = a @ x[i] - downdates[:step].T @ ((downdates[:step] @ x[i]) / denominators[:step])
        downdates[step], denominators[step] = u, gain
        variance -= (x @ u) ** 2 / gain
        np.maximum(variance, 0.0, out=variance)
    return selected


def select_max_dist(features, batch_size: int, *, train_features=None) -> np.ndarray:
    """Greedy farthest-point selection (Eq. 27).

    Each step adds the candidate whose smallest Euclidean distance to the training features
    and to the batch so far is largest. Without training features the first pick is the
    candidate of largest norm (the farthest from a model that has seen nothing).
    """
    x = _features("features", features)
    n, k = x.shape
    batch_size = _check_batch(batch_size, n)
    sq_norm = np.einsum("ij,ij->i", x, x)
    nearest = np.full(n, np.inf)  # squared distance to the nearest training or selected point
    if train_features is not None:
        t = _features("train_features", train_features)
        if t.shape[1] != k:
            raise ValueError(f"train_features have {t.shape[1]} features, the pool has {k}")
        rows = max(1, _BLOCK_ELEMENTS // n)  # training rows compared with the pool at once
        for start in range(0, t.shape[0], rows):
            block = t[start : start + rows]
            d2 = sq_norm[:, None] + np.einsum("ij,ij->i", block, block)[None, :] - 2.0 * (x @ block.T)
            np.minimum(nearest, d2.min(axis=1), out=nearest)
    selected = np.empty(batch_size, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    for step in range(batch_size):
        score = sq_norm if step == 0 and train_features is None else nearest
        i = int(np.argmax(np.where(taken, -np.inf, score)))
        selected[step], taken[i] = i, True
        np.minimum(nearest, sq_norm + sq_norm[i] - 2.0 * (x @ x[i]), out=nearest)
    return selected


def select_batch(
    method: str,
    batch_size: int,
    *,
    uncertainty=None,
    features=None,
    precision=None,
    train_features=None,
    noise: float = 0.0,
) -> np.ndarray:
    """Dispatch by name: ``"max_unc"`` (needs uncertainty), ``"max_det"`` (features,
    precision) or ``"max_dist"`` (features, optional train_features)."""
    needs = {"max_unc": ("uncertainty",), "max_det": ("features", "precision"), "max_dist": ("features",)}
    if method not in needs:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    given = {"uncertainty": uncertainty, "features": features, "precision": precision}
    missing = [name for name in needs[method] if given[name] is None]
    if missing:
        raise ValueError(f"selection method {method} needs {', '.join(missing)}")
    if method == "max_unc":
        return select_max_unc(uncertainty, batch_size)
    if method == "max_det":
        return select_max_det(features, precision, batch_size, noise=noise)
    return select_max_dist(features, batch_size, train_features=train_features)
