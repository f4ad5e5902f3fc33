"""Autocorrelation function, effective sample size and autocorrelation time of a trajectory.

Seed 002 (Methods, "Auto-correlation analysis", Eqs. 29-31) measures how fast an MD run explores
a space by the autocorrelation function (ACF) of an observable A (positions, atom-based
uncertainties) and its autocorrelation time (ACT); it computes the effective sample size (ESS)
"as implemented in TensorFlow" (TensorFlow Probability's ``tfp.mcmc.effective_sample_size``) and
the ACT from it as ACT = N / ESS. This module follows that implementation with its defaults
(one chain, ``filter_threshold=0``, no lag cap, no positive-pair filter):

    ESS = N / (-1 + 2 sum_{k=0}^{M} (N - k)/N R[k])

where R[k] is the ACF estimated with 1/(N - k) at lag k (``tfp.stats.auto_correlation``), so
that (N - k)/N R[k] is the standard 1/N ("biased") estimate :func:`autocorrelation` returns
(the one of arviz and emcee), and M is the last lag before R first drops below the threshold.

A vector observable (positions of all atoms, shape (T, N_atoms, 3)) is treated as one
observable with the dot product of Eq. 29: its ACF is sum_c acov_c(k) / sum_c acov_c(0) over
the components c. Seed 002's text does not say how it reduces the per-component ESS that
TensorFlow returns for a vector; ``per_component=True`` gives those values instead.
Lags and ACTs are in frames: multiply by the time between frames for a time.
"""

from __future__ import annotations

import numpy as np


def _frames(x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim == 0 or a.shape[0] < 2:
        raise ValueError(f"a trajectory needs at least 2 frames along axis 0, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("the trajectory contains NaN or infinite values")
    return a.reshape(a.shape[0], -1)


def _autocovariance(a: np.ndarray) -> np.ndarray:
    """(T, C) -> (T, C) autocovariance per component with 1/T at every lag (FFT, zero-padded)."""
    n = a.shape[0]
    centred = a - a.mean(axis=0)
    size = 1 << (2 * n - 1).bit_length()  # no circular wrap-around
    spectrum = np.fft.rfft(centred, n=size, axis=0)
    return np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=0)[:n] / n


def autocorrelation(x, per_component: bool = False) -> np.ndarray:
    """ACF at lags 0..T-1 (frames) of a trajectory ``x`` of shape (T,) or (T, ...).

    The 1/T estimate (lag 0 is 1). A vector observable gives one ACF, sum_c acov_c / sum_c var_c
    (seed 002 Eq. 29 with the dot product), or with ``per_component`` one column per component
    (shape (T, C)). A constant trajectory has no defined ACF and is an error.
    """
    acov = _autocovariance(_frames(x))
    if not per_component:
        acov = acov.sum(axis=1, keepdims=True)
    if np.any(acov[0] <= 0):
        raise ValueError("the trajectory (or one of its components) is constant: its ACF is undefined")
    rho = acov / acov[0]
    return rho[:, 0] if not per_component else rho


def effective_sample_size(x, filter_threshold: float = 0.0, per_component: bool = False):
    """ESS of a trajectory as TensorFlow Probability's ``effective_sample_size`` computes it.

    ``filter_threshold``: the sum stops before the first lag whose ACF (the 1/(N - k) estimate,
    as in TFP) is below it. (Without a cut the 1/N ACF of any series sums to exactly 1/2 and
    the ESS is infinite, so a cut is required.) Returns a float, or an array (C,) with
    ``per_component``.
    """
    rho = autocorrelation(x, per_component=True) if per_component else autocorrelation(x)[:, None]
    n = rho.shape[0]
    if not np.isfinite(filter_threshold):
        raise ValueError(f"filter_threshold must be a finite number, got {filter_threshold}")
    lag = np.arange(n, dtype=float)
    unbiased = rho * (n / (n - lag))[:, None]  # TFP's per-lag estimate
    below = np.cumsum(unbiased < filter_threshold, axis=0) > 0
    rho = np.where(below, 0.0, rho)
    ess = n / (-1.0 + 2.0 * rho.sum(axis=0))
    return ess if per_component else float(ess[0])


def integrated_autocorrelation_time(x, filter_threshold: float = 0.0, per_component: bool = False):
    """ACT in frames, N / ESS (seed 002 Eq. 31), for a trajectory of shape (T,) or (T, ...).

    For i.i.d. frames it is ~1; for an AR(1) series with coefficient a it tends to (1 + a)/(1 - a).
    """
    n = np.asarray(x).shape[0]
    return n / effective_sample_size(x, filter_threshold=filter_threshold, per_component=per_component)
