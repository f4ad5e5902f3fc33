"""Learning and exploration curves as PNG files (seed 002, Figs. 3 and 4a).

Every function takes plain arrays and writes one PNG. A curve is a mapping label -> values of
shape (n_points,) for one run or (n_repeats, n_points) for repeats, drawn as the mean with a
band of one standard deviation across repeats (the paper's error bars). NaN values (a repeat
that has not reached that size) are left out of the mean.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def _mean_std(values, n_points: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=float)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] != n_points:
        raise ValueError(
            f"curve {label!r} has shape {np.shape(values)}; expected ({n_points},) or (repeats, {n_points})"
        )
    with warnings.catch_warnings():  # an all-NaN column (no repeat reached it) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(v, axis=0)
        std = np.nanstd(v, axis=0) if v.shape[0] > 1 else np.zeros(n_points)
    return mean, std


def _draw(ax, x, curves: Mapping, log_x: bool, log_y: bool) -> None:
    x = np.asarray(x, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"x must be a non-empty 1-d array, got shape {x.shape}")
    if not curves:
        raise ValueError("no curves to plot")
    for label, values in curves.items():
        mean, std = _mean_std(values, x.size, label)
        (line,) = ax.plot(x, mean, marker="o", markersize=3, label=str(label))
        if np.any(std > 0):
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def plot_curves(
    x, curves: Mapping, path, xlabel: str, ylabel: str, log_x: bool = False, log_y: bool = False, title=None
) -> Path:
    """One panel: every curve against x; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    _draw(ax, x, curves, log_x, log_y)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_learning_curves(
    dataset_size, coverage: Mapping, energy_rmse: Mapping, force_rmse: Mapping, path
) -> Path:
    """Seed 002 Fig. 3 (a)-(c): CV-space coverage, energy RMSE (meV/atom) and force RMSE (eV/A)
    against the number of acquired configurations, one curve per experiment (same labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (
        (coverage, "CV space coverage", False),
        (energy_rmse, "energy RMSE (meV/atom)", True),
        (force_rmse, "force RMSE (eV/A)", True),
    )
    for ax, (curves, ylabel, log_y) in zip(axes, panels, strict=True):
        _draw(ax, dataset_size, curves, log_x=False, log_y=log_y)
        ax.set_xlabel("acquired configurations")
        ax.set_ylabel(ylabel)
    axes[0].legend(fontsize="small")
    return _save(fig, path)


def plot_exploration(md_time, coverage: Mapping, path, time_unit: str = "ps") -> Path:
    """Seed 002 Fig. 4 (a): CV-space coverage against the accumulated MD time of all walkers."""
    return plot_curves(md_time, coverage, path, xlabel=f"MD time ({time_unit})", ylabel="CV space coverage")


def plot_autocorrelation(
    lag_time, acf: Mapping, path, observable: str = "positions", time_unit: str = "ps"
) -> Path:
    """Seed 002 Fig. 4 (b)-(c): ACF of an observable against the lag time."""
    return plot_curves(lag_time, acf, path, xlabel=f"lag time ({time_unit})", ylabel=f"ACF ({observable})")


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
