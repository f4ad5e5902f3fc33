"""How well the MD-17-like snapshots sample 500 K, and how correlated consecutive snapshots are.

For each ase.db given: the number of snapshots, the mean kinetic temperature (equipartition with
3N degrees of freedom, as ASE's ``get_temperature``), the spread of the potential energy and of the
force components, and the autocorrelation of the potential energy and of one force component series
(all atoms, all components, averaged) at a lag of 1, 5, 10 and 25 snapshots. A lag-1 value near 0 means
consecutive snapshots are as good as independent draws.

    python check_sampling.py work/ethanol.db work/malonaldehyde.db
"""

from __future__ import annotations

import sys

import numpy as np

from mlipbias.datasets import KCAL_PER_MOL, load_dataset

LAGS = (1, 5, 10, 25)  # snapshots


def autocorrelation(series: np.ndarray, lag: int) -> float:
    """Mean over columns of the lag-``lag`` autocorrelation of each column of ``series`` (T, ...)."""
    x = series.reshape(len(series), -1)
    x = x - x.mean(axis=0)
    numerator = (x[:-lag] * x[lag:]).mean(axis=0)
    return float(np.mean(numerator / x.var(axis=0)))


def main(paths: list[str]) -> None:
    print(
        "| data | snapshots | mean kinetic T (K) | std E (kcal/mol) | std F (kcal/mol/A) "
        "| E autocorr. lag 1, 5, 10, 25 | F autocorr. lag 1, 5, 10, 25 |"
    )
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        frames = sorted(load_dataset(path), key=lambda a: a.info["index"])
        energies = np.array([a.get_potential_energy() for a in frames]) / KCAL_PER_MOL
        forces = np.array([a.get_forces() for a in frames]) / KCAL_PER_MOL
        temperature = np.mean([a.info["kinetic_temperature"] for a in frames])
        e_corr = ", ".join(f"{autocorrelation(energies, lag):.2f}" for lag in LAGS)
        f_corr = ", ".join(f"{autocorrelation(forces, lag):.2f}" for lag in LAGS)
        print(
            f"| {path} | {len(frames)} | {temperature:.0f} | {energies.std():.2f} | {forces.std():.1f} "
            f"| {e_corr} | {f_corr} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
