"""Random perturbations of positions and cell as a non-MD explorer (seed 002 Eqs. 32-34).

Each sample shifts every position component by an independent uniform number in
``[-a, a]`` (Eq. 32, ``a = position_amplitude``, A) and, for periodic cells, deforms the cell by
``I + eps`` with components of ``eps`` uniform in ``[-s, s]`` (Eq. 33, ``s = strain_amplitude``),
scaling the shifted positions with it (Eq. 34). Seed 002 starts its active learning from such
structures around the initial configuration.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from mlipbias.dynamics.explorer import STOP_DONE, Exploration, ExplorerSettings, candidate, rng_for


def perturbed(
    start: Atoms, position_amplitude: float, strain_amplitude: float, rng: np.random.Generator
) -> Atoms:
    """One perturbed copy of ``start`` (Eqs. 32-34); the cell only changes when periodic."""
    atoms = Atoms(start.get_chemical_symbols(), positions=start.positions, cell=start.cell, pbc=start.pbc)
    atoms.positions = atoms.positions + rng.uniform(-position_amplitude, position_amplitude, (len(atoms), 3))
    if atoms.pbc.any() and strain_amplitude > 0:
        deformation = np.eye(3) + rng.uniform(-strain_amplitude, strain_amplitude, (3, 3))
        # Rows are lattice vectors: cell' = cell (I + eps), positions' = positions (I + eps).
        atoms.set_cell(atoms.cell.array @ deformation, scale_atoms=True)
    return atoms


def explore_perturbations(
    model_path: str, start: Atoms, settings: ExplorerSettings, seed: int
) -> Exploration:
    """``n_samples`` perturbed copies of ``start``, each with the model's U and U_i."""
    from mlipbias.calculators import MLIPCalculator

    s = settings
    rng = rng_for(seed)
    calc = MLIPCalculator(model_path, uncertainty=s.uncertainty, atom_uncertainty=True)
    if calc.uncertainty is None:
        raise ValueError(f"{model_path}: the model has no uncertainty method to rank the samples by")
    candidates = []
    for index in range(s.n_samples):
        atoms = perturbed(start, s.position_amplitude, s.strain_amplitude, rng)
        calc.calculate(atoms, ["energy", "forces"])
        U, U_i = calc.results["uncertainty"], calc.results["atom_uncertainty"]
        candidates.append(candidate(atoms, U, U_i, index))
    peak = max(float(np.max(c.arrays["atom_uncertainty"])) for c in candidates)
    return Exploration(candidates, STOP_DONE, 0, f"{s.n_samples} perturbed structures", peak)
