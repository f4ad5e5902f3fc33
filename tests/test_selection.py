"""Batch selection: greedy max-det and max-dist against brute force on small pools."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from mlipbias.uq.selection import select_batch, select_max_det, select_max_dist, select_max_unc


def posterior_matrix(rng, n_train: int, k: int, lam: float = 1e-2) -> np.ndarray:
    """A = (Phi^T Phi + lambda I)^-1 over random training features, as in the model file."""
    phi = rng.normal(size=(n_train, k))
    return np.linalg.inv(phi.T @ phi + lam * np.eye(k))


def brute_force_max_det(x, a, batch_size, noise=0.0):
    """Each step: the candidate whose addition gives the largest det(K_SS + noise I), by slogdet."""
    kernel = x @ a @ x.T
    selected: list[int] = []
    for _ in range(batch_size):
        best, best_logdet = None, -np.inf
        for i in range(len(x)):
            if i in selected:
                continue
            s = [*selected, i]
            sign, logdet = np.linalg.slogdet(kernel[np.ix_(s, s)] + noise * np.eye(len(s)))
            if sign > 0 and logdet > best_logdet:
                best, best_logdet = i, logdet
        selected.append(best)
    return np.array(selected)


def brute_force_max_dist(x, batch_size, train=None):
    """Each step: the candidate of largest minimum distance to training and selected points."""
    selected: list[int] = []
    for _ in range(batch_size):
        references = [x[selected]] if selected else []
        if train is not None:
            references.append(train)
        if references:
            score = cdist(x, np.vstack(references)).min(axis=1)
        else:
            score = np.linalg.norm(x, axis=1)
        score[selected] = -np.inf
        selected.append(int(np.argmax(score)))
    return np.array(selected)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_max_det_equals_brute_force(seed, noise):
    rng = np.random.default_rng(seed)
    k = 6
    a = posterior_matrix(rng, 15, k)
    pool = rng.normal(size=(25, k)) * rng.uniform(0.2, 2.0, (25, 1))
    greedy = select_max_det(pool, a, 6, noise=noise)
    np.testing.assert_array_equal(greedy, brute_force_max_det(pool, a, 6, noise))
    assert greedy[0] == np.argmax(np.einsum("ij,jk,ik->i", pool, a, pool))  # first: largest U^2


def test_max_det_with_an_ill_conditioned_posterior():
    """Fewer training structures than features and a tiny lambda: A = inv(...) is symmetric
    only to rounding (1e-6 relative here), which must not be mistaken for a wrong matrix."""
    rng = np.random.default_rng(6)
    a = posterior_matrix(rng, 10, 40, lam=1e-9)
    assert np.abs(a - a.T).max() > 1e-8 * np.abs(a).max()
    pool = rng.normal(size=(30, 40))
    np.testing.assert_array_equal(select_max_det(pool, a, 5), brute_force_max_det(pool, 0.5 * (a + a.T), 5))


def test_max_det_beyond_the_rank_of_the_features():
    rng = np.random.default_rng(9)
    basis = rng.normal(size=(3, 8))
    pool = rng.normal(size=(20, 3)) @ basis  # features span 3 of 8 directions
    a = posterior_matrix(rng, 30, 8)
    assert len(set(select_max_det(pool, a, 3))) == 3
    with pytest.raises(ValueError, match="after 3 selections no candidate has posterior variance left"):
        select_max_det(pool, a, 4)
    with_noise = select_max_det(pool, a, 6, noise=1e-3)
    np.testing.assert_array_equal(with_noise, brute_force_max_det(pool, a, 6, 1e-3))


def test_max_det_rejects_bad_precision():
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match=r"precision has shape \(3, 3\), expected \(4, 4\)"):
        select_max_det(pool, np.eye(3), 2)
    with pytest.raises(ValueError, match="precision must be symmetric"):
        select_max_det(pool, np.triu(np.ones((4, 4))), 2)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        select_max_det(pool, -np.eye(4), 2)
    with pytest.raises(ValueError, match=r"batch_size must be an integer in 1..10"):
        select_max_det(pool, np.eye(4), 11)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("with_train", [False, True])
def test_max_dist_equals_brute_force(seed, with_train):
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(40, 5))
    train = rng.normal(size=(12, 5)) if with_train else None
    greedy = select_max_dist(pool, 8, train_features=train)
    np.testing.assert_array_equal(greedy, brute_force_max_dist(pool, 8, train))


def test_max_dist_in_training_blocks(monkeypatch):
    """Training sets compared with the pool in several blocks give the same selection."""
    from mlipbias.uq import selection

    rng = np.random.default_rng(3)
    pool, train = rng.normal(size=(30, 4)), rng.normal(size=(50, 4))
    monkeypatch.setattr(selection, "_BLOCK_ELEMENTS", 30 * 7)  # 7 training rows per block
    np.testing.assert_array_equal(
        select_max_dist(pool, 10, train_features=train), brute_force_max_dist(pool, 10, train)
    )
    with pytest.raises(ValueError, match="train_features have 3 features, the pool has 4"):
        select_max_dist(pool, 2, train_features=train[:, :3])


def test_max_dist_subset_of_training_features_covers_clusters():
    """Picking 4 representatives of 4 tight clusters takes one from each."""
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(4, 6)) * 10
    features = np.repeat(centres, 25, axis=0) + rng.normal(size=(100, 6)) * 0.01
    chosen = select_max_dist(features, 4)
    assert sorted(chosen // 25) == [0, 1, 2, 3]


def test_max_unc_and_dispatch():
    u = np.array([0.3, 2.0, 0.1, 2.0, 1.5])
    np.testing.assert_array_equal(select_max_unc(u, 3), [1, 3, 4])  # ties: lower index first
    np.testing.assert_array_equal(select_batch("max_unc", 2, uncertainty=u), [1, 3])
    rng = np.random.default_rng(2)
    pool = rng.normal(size=(12, 3))
    np.testing.assert_array_equal(
        select_batch("max_det", 3, features=pool, precision=np.eye(3)), select_max_det(pool, np.eye(3), 3)
    )
    np.testing.assert_array_equal(select_batch("max_dist", 3, features=pool), select_max_dist(pool, 3))
    with pytest.raises(ValueError, match="unknown selection method 'max_var'"):
        select_batch("max_var", 2, uncertainty=u)
    with pytest.raises(ValueError, match="selection method max_det needs precision"):
        select_batch("max_det", 2, features=pool)
    with pytest.raises(ValueError, match="uncertainty contains NaN"):
        select_max_unc([1.0, np.nan], 1)
