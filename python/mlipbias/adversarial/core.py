"""The arithmetic of Cubuk & Schoenholz (2020, "Adversarial Forces of Physical Models") on plain arrays.

Nothing here calls a calculator: every function takes energies (eV), forces (eV/A, shape (N, 3)),
positions (A) and masses (amu) and returns numbers, so each can be checked by hand.
"""

from __future__ import annotations

import numpy as np
from ase import units

# Energies are reported in meV per atom in tables and figures.
MEV = 1000.0


def adversarial_direction(e_acc: float, e_app: float, f_acc: np.ndarray, f_app: np.ndarray) -> np.ndarray:
    """A(R) = grad_R (E_acc - E_app)^2 = 2 (E_acc - E_app) (F_app - F_acc)
    (Cubuk & Schoenholz 2020, Eq. 2-3).

    Energies in eV, forces in eV/A with shape (N, 3); returns an (N, 3) array in eV^2/A. Moving the atoms
    by +A (to first order) increases the squared energy error, -A decreases it.
    """
    f_acc = np.asarray(f_acc, dtype=float)
    f_app = np.asarray(f_app, dtype=float)
    if f_acc.shape != f_app.shape or f_acc.ndim != 2 or f_acc.shape[1] != 3:
        raise ValueError(
            f"forces must both have shape (N, 3); got F_acc {f_acc.shape} and F_app {f_app.shape}"
        )
    return 2.0 * (float(e_acc) - float(e_app)) * (f_app - f_acc)


def cos_theta(a: np.ndarray, b: np.ndarray) -> float:
    """cos(theta) = a.b / (|a| |b|) of two 3N-vectors (Cubuk & Schoenholz 2020, Eq. 5, a = A, b = F_app).

    Returns NaN when either vector is zero (the angle is undefined), never raises on that.
    """
    a = np.ravel(np.asarray(a, dtype=float))
    b = np.ravel(np.asarray(b, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"cos_theta needs vectors of one length; got {a.size} and {b.size} entries")
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    if norm == 0.0:
        return float("nan")
    return float(np.clip(np.dot(a, b) / norm, -1.0, 1.0))


def random_baseline(n_atoms: int) -> float:
    """1/sqrt(3N): the root-mean-square cos(theta) between two independent random 3N-vectors.

    Their mean |cos(theta)| is sqrt(2 / (pi 3N)) for large N (about 0.8 of this value).
    """
    if n_atoms < 1:
        raise ValueError(f"n_atoms must be at least 1, got {n_atoms}")
    return 1.0 / np.sqrt(3.0 * n_atoms)


def unit_vector(v: np.ndarray) -> np.ndarray:
    """v / |v| over all 3N components; a zero vector has no direction and raises ValueError."""
    v = np.asarray(v, dtype=float)
    norm = np.linalg.norm(v)
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError(f"cannot normalise a vector of norm {norm}")
    return v / norm


def random_direction(n_atoms: int, rng: np.random.Generator) -> np.ndarray:
    """A random unit (N, 3) direction: independent Gaussians per component, normalised over all 3N
    (the sampling of the appendix of Cubuk & Schoenholz 2020, uniform on the sphere)."""
    return unit_vector(rng.standard_normal((n_atoms, 3)))


def distort(positions: np.ndarray, direction: np.ndarray, eps: float) -> np.ndarray:
    """Positions moved by total L2 norm eps (A) along direction (normalised here over all 3N components)."""
    if eps < 0:
        raise ValueError(f"the distortion norm eps must be >= 0 A, got {eps}")
    return np.asarray(positions, dtype=float) + eps * unit_vector(direction)


def newton_step(
    positions: np.ndarray,
    forces: np.ndarray,
    masses: np.ndarray,
    dt_fs: float,
    velocities: np.ndarray | None = None,
) -> np.ndarray:
    """Positions after one time step dt under constant force F: x + v dt + F dt^2 / (2 m).

    positions in A, forces in eV/A, masses in amu, dt in fs, velocities in ASE units (A / ase time unit,
    as ``Atoms.get_velocities``); ``velocities=None`` starts from rest. This is exactly the position update
    of the first velocity-Verlet step.
    """
    dt = dt_fs * units.fs
    masses = np.asarray(masses, dtype=float)[:, None]
    step = 0.5 * np.asarray(forces, dtype=float) / masses * dt * dt
    if velocities is not None:
        step = step + np.asarray(velocities, dtype=float) * dt
    return np.asarray(positions, dtype=float) + step


def rmse(values: np.ndarray) -> float:
    """Root mean square of the finite entries (NaN when there are none)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.sqrt(np.mean(values**2))) if values.size else float("nan")


def fit_element_offsets(
    numbers_list: list[np.ndarray], e_acc: np.ndarray, e_app: np.ndarray
) -> dict[int, float]:
    """Per-element energies c_Z (eV/atom) minimising sum_j (E_acc_j - E_app_j - sum_i c_Z(i))^2.

    Two models with different energy zeros (an analytic force field and a quantum chemistry code) differ by
    such a composition-linear term, which carries no force but dominates E_acc - E_app, and so the sign and
    size of A. When every configuration has the same composition the split between elements is not
    determined; the minimum-norm least-squares solution is returned (the fitted energies are unique).
    """
    elements = sorted({int(z) for numbers in numbers_list for z in numbers})
    counts = np.array([[np.count_nonzero(numbers == z) for z in elements] for numbers in numbers_list], float)
    residual = np.asarray(e_acc, dtype=float) - np.asarray(e_app, dtype=float)
    solution, *_ = np.linalg.lstsq(counts, residual, rcond=None)
    return {z: float(c) for z, c in zip(elements, solution, strict=True)}


def bin_by_energy(delta_e: np.ndarray, values: np.ndarray, bin_size: int = 50) -> list[dict]:
    """Mean of values in consecutive groups of bin_size samples sorted by delta_e
    (Cubuk & Schoenholz 2020: 50 per bin).

    Samples whose delta_e or value is NaN are left out. The last incomplete group is merged into the one
    before, so every bin holds between bin_size and 2 bin_size - 1 samples (fewer only when there are fewer
    samples in all). Each bin reports n, the mean, min and max of delta_e, and the mean and standard error
    of values.
    """
    if bin_size < 1:
        raise ValueError(f"bin_size must be at least 1, got {bin_size}")
    delta_e = np.asarray(delta_e, dtype=float)
    values = np.asarray(values, dtype=float)
    if delta_e.shape != values.shape:
        raise ValueError(f"delta_e and values differ in length: {delta_e.size} vs {values.size}")
    keep = np.isfinite(delta_e) & np.isfinite(values)
    order = np.argsort(delta_e[keep], kind="stable")
    x, y = delta_e[keep][order], values[keep][order]
    n_bins = max(1, x.size // bin_size)
    bins = []
    for b in range(n_bins if x.size else 0):
        stop = x.size if b == n_bins - 1 else (b + 1) * bin_size
        xs, ys = x[b * bin_size : stop], y[b * bin_size : stop]
        sem = float(np.std(ys, ddof=1) / np.sqrt(ys.size)) if ys.size > 1 else float("nan")
        bins.append(
            {
                "n": int(xs.size),
                "delta_e_mean": float(xs.mean()),
                "delta_e_min": float(xs.min()),
                "delta_e_max": float(xs.max()),
                "mean": float(ys.mean()),
                "sem": sem,
            }
        )
    return bins
