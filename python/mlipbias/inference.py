"""C++ inference of a ``.mlip`` model: energy, forces, virial, uncertainty and its gradient.

The same code as the LAMMPS plugin (``cpp/model.hpp``), called from Python on ``ase.Atoms``.
It needs no torch. Definitions and sign conventions: ``docs/model_file.md``.

    model = CppModel("sio2.mlip")
    result = model.evaluate(atoms, uncertainty="posterior", gradient=True)
    result.energy, result.forces, result.uncertainty, result.uncertainty_gradient
    stress = virial_to_stress(result.virial, atoms.get_volume())   # ASE Voigt order, eV/A^3

Units: eV, Angstrom. Uncertainties are standard deviations: ``U`` of the total energy in eV,
per-atom ``U_i`` in eV/A, both multiplied by the calibration factors stored in the file.
Bias (Zaverkin et al. 2024): ``E_biased = E - tau U``, bias forces ``+tau dU/dx``, bias virial
``tau_stress * uncertainty_virial``; :class:`BiasState` holds the strengths and the
rescaling of Zaverkin et al. (2024) Eq. 8, shared with ``pair_style mlip/bias``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mlipbias import _core

METHODS = ("none", "ensemble", "posterior", "distance")

BiasState = _core.BiasState
ensemble_atom_uncertainty = _core.ensemble_atom_uncertainty


@dataclass
class Evaluation:
    """What one evaluation returns; fields not requested are None.

    Attributes:
        energy: total energy (eV), the ensemble mean.
        atom_energies: (n_atoms,) atomic energies (eV).
        forces: (n_atoms, 3) ``-dE/dx`` (eV/A).
        virial: (3, 3) ``W = -sum_ij r_ij (x) dE/dr_ij`` (eV); stress ``= -W / V``.
        member_energies: (n_members,) energy of every ensemble member (eV).
        uncertainty: ``U`` (eV), calibrated.
        uncertainty_gradient: (n_atoms, 3) ``dU/dx`` (eV/A); the bias force is ``tau`` times it.
        uncertainty_virial: (3, 3) ``+sum_ij r_ij (x) dU/dr_ij`` (eV), the virial of ``-U``.
        atom_uncertainty: (n_atoms,) ``U_i`` (eV/A), calibrated.
        member_forces: (n_members, n_atoms, 3), with the ensemble and ``atom_uncertainty``.
    """

    energy: float
    atom_energies: np.ndarray
    forces: np.ndarray
    virial: np.ndarray
    member_energies: np.ndarray
    uncertainty: float | None = None
    uncertainty_gradient: np.ndarray | None = None
    uncertainty_virial: np.ndarray | None = None
    atom_uncertainty: np.ndarray | None = None
    member_forces: np.ndarray | None = None


def virial_to_stress(virial: np.ndarray, volume: float) -> np.ndarray:
    """ASE stress ``-W / V`` in Voigt order (xx, yy, zz, yz, xz, xy), eV/A^3."""
    if not volume > 0:
        raise ValueError(f"the stress needs a cell with a positive volume, got {volume} A^3")
    s = -np.asarray(virial, dtype=np.float64) / volume
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


class CppModel:
    """A ``.mlip`` model evaluated by the C++ core.

    Args:
        path: the model file; a corrupt, unknown-version or inconsistent file is a ValueError
            naming the file and the record.
    """

    def __init__(self, path: str | os.PathLike):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such model file")
        self._model = _core.Model(str(path))
        self._evaluators: dict[tuple, _core.ModelEvaluator] = {}

    @property
    def path(self) -> str:
        return self._model.path

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(self._model.elements)

    @property
    def cutoff(self) -> float:
        """Largest descriptor cutoff (A)."""
        return self._model.cutoff

    @property
    def n_members(self) -> int:
        return self._model.n_members

    @property
    def core(self) -> _core.Model:
        """The ``mlipbias._core.Model`` (for ``_core.ModelEvaluator`` with custom neighbour data)."""
        return self._model

    def supports(self, uncertainty: str) -> bool:
        """Whether the file holds the data of this method (one of :data:`METHODS`)."""
        return self._model.supports(uncertainty)

    def methods(self) -> list[str]:
        """The uncertainty methods C++ can evaluate with this file ("none" first)."""
        return [m for m in METHODS if self._model.supports(m)]

    def __repr__(self) -> str:
        return f"CppModel({self.path!r}, elements={list(self.elements)}, n_members={self.n_members})"

    def species(self, atoms) -> np.ndarray:
        """(n_atoms,) model element index of every atom; unknown elements are a ValueError."""
        index = {el: k for k, el in enumerate(self.elements)}
        symbols = atoms.get_chemical_symbols()
        unknown = sorted(set(symbols) - set(index))
        if unknown:
            raise ValueError(
                f"the structure contains element(s) {', '.join(unknown)}, which model {self.path} does not "
                f"handle (its elements: {' '.join(self.elements)})"
            )
        return np.fromiter((index[s] for s in symbols), dtype=np.int64, count=len(symbols))

    def neighbours(self, atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(species, offsets, j, D) of ``atoms``: the CSR pairs within the cutoff, every atom a centre."""
        from mlipbias.neighbors import neighbor_list

        species = self.species(atoms)
        i, j, D = neighbor_list("ijD", atoms, self.cutoff)  # sorted by i
        offsets = np.zeros(len(atoms) + 1, dtype=np.int64)
        np.cumsum(np.bincount(i, minlength=len(atoms)), out=offsets[1:])
        return species, offsets, j, D

    def evaluator(
        self,
        uncertainty: str = "none",
        gradient: bool = False,
        atom_uncertainty: bool = False,
        min_distance: float = 0.0,
        single_precision: bool = False,
    ) -> _core.ModelEvaluator:
        """The cached ``_core.ModelEvaluator`` for these options (its buffers persist across calls)."""
        key = (
            uncertainty,
            bool(gradient),
            bool(atom_uncertainty),
            float(min_distance),
            bool(single_precision),
        )
        ev = self._evaluators.get(key)
        if ev is None:
            ev = _core.ModelEvaluator(self._model, *key)
            self._evaluators[key] = ev
        return ev

    def evaluate(
        self,
        atoms,
        uncertainty: str = "none",
        gradient: bool = False,
        atom_uncertainty: bool = False,
        min_distance: float = 0.0,
        single_precision: bool = False,
    ) -> Evaluation:
        """Evaluate one structure.

        Args:
            atoms: an ``ase.Atoms`` whose elements are all in the model.
            uncertainty: "none", "ensemble", "posterior" or "distance"; the file must hold its data.
            gradient: also compute ``dU/dx`` and the uncertainty virial (for bias forces and stress).
            atom_uncertainty: also compute the per-atom ``U_i``.
            min_distance: raise ValueError naming the atom indices when two are closer than this (A).
            single_precision: run the networks in float32 (descriptors and sums stay float64); the
                force error against float64 is in benchmarks/RESULTS.md ("Batched networks").

        Raises:
            ValueError: also when an output (energy, force, uncertainty, gradient, virial) is NaN or
                infinite, naming the quantity and the atom index; an atom with more neighbours than
                ``mlipbias.neighbors.MAX_NEIGHBORS``.
        """
        return self.evaluate_neighbours(
            *self.neighbours(atoms),
            uncertainty=uncertainty,
            gradient=gradient,
            atom_uncertainty=atom_uncertainty,
            min_distance=min_distance,
            single_precision=single_precision,
        )

    def evaluate_neighbours(
        self,
        species: np.ndarray,
        offsets: np.ndarray,
        j: np.ndarray,
        D: np.ndarray,
        uncertainty: str = "none",
        gradient: bool = False,
        atom_uncertainty: bool = False,
        min_distance: float = 0.0,
        single_precision: bool = False,
    ) -> Evaluation:
        """Evaluate prepared neighbour data (see :meth:`neighbours`; species -1 = atom not handled)."""
        ev = self.evaluator(uncertainty, gradient, atom_uncertainty, min_distance, single_precision)
        return Evaluation(**ev.evaluate(species, offsets, j, D))
