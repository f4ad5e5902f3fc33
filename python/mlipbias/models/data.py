"""Structures prepared for a model: descriptors computed once, labels as arrays, batches as tensors.

:class:`AtomsData` computes the symmetry functions of every structure once (C++ core). Force and
stress training also keeps the neighbour pairs (``i, j, D`` per pair, about 40 bytes per pair); the
descriptor derivatives are never stored, because the model's forces go through the C++
vector-Jacobian product (:mod:`mlipbias.descriptors.autograd`). For 2000 SiO2 cells of 96 atoms with
a 6 A cutoff that is ~80 MB of descriptors and ~0.5 GB of pairs, where stored derivatives would
need ~14 GB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

from mlipbias.descriptors import NeighbourData, SymmetryFunctions

# ASE's Voigt order for stresses: xx yy zz yz xz xy.
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@dataclass
class Batch:
    """Tensors of a group of structures (atoms concatenated in structure order).

    Labels are None when the data has none; ``stress_mask`` (n_structures,) marks structures with a
    stress label (periodic in all three directions).
    """

    G: torch.Tensor  # (n_atoms, n_sf)
    species: torch.Tensor  # (n_atoms,) long
    structure: torch.Tensor  # (n_atoms,) long, structure index of every atom
    n_atoms: torch.Tensor  # (n_structures,) float
    volume: torch.Tensor  # (n_structures,), 0 for non-periodic structures
    neighbours: NeighbourData | None = None
    energy: torch.Tensor | None = None  # (n_structures,) eV
    forces: torch.Tensor | None = None  # (n_atoms, 3) eV/A
    stress: torch.Tensor | None = None  # (n_structures, 6) eV/A^3, ASE Voigt order
    stress_mask: torch.Tensor | None = None  # (n_structures,) bool

    @property
    def n_structures(self) -> int:
        return int(self.n_atoms.shape[0])


class AtomsData:
    """Descriptors and labels of many structures, ready to be batched.

    Args:
        structures: ASE Atoms; labels are read from their calculators (``energy``, ``forces``,
            ``stress``) when ``labels`` is True.
        descriptor: the model's symmetry functions.
        keep_neighbours: keep the neighbour pairs (needed for forces, stress and uncertainty
            gradients); without them only energies can be computed.
        labels: read reference energies (required), forces and stresses (used when every
            structure has them).
        progress: show a progress bar while the neighbour lists are built.
    """

    def __init__(
        self,
        structures: Sequence[Atoms],
        descriptor: SymmetryFunctions,
        *,
        keep_neighbours: bool = True,
        labels: bool = True,
        progress: bool | None = None,
    ):
        if len(structures) == 0:
            raise ValueError("no structures given")
        self.descriptor = descriptor
        descriptors = descriptor.compute_batch(structures, progress=progress)
        nb = descriptors.neighbours
        self.G = descriptors.G
        self.species = nb.species
        self.atom_offsets = nb.atom_offsets
        self.n_atoms = np.diff(self.atom_offsets)
        # GM-NN computes its (trainable) descriptors from the pairs: it always keeps them.
        self.neighbours = nb if keep_neighbours or getattr(descriptor, "needs_neighbours", False) else None
        self.pair_offsets = nb.offsets[self.atom_offsets]
        self.volume = np.array([a.get_volume() if a.pbc.all() else 0.0 for a in structures])
        self.counts = np.zeros((len(structures), descriptor.n_elements))
        np.add.at(self.counts, (nb.structure, self.species), 1.0)
        self.energy = self.forces = self.stress = None
        self.stress_mask = np.zeros(len(structures), dtype=bool)
        if labels:
            self._read_labels(structures)

    def _read_labels(self, structures: Sequence[Atoms]) -> None:
        energy, forces, stress = [], [], []
        for k, atoms in enumerate(structures):
            results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
            if "energy" not in results:
                raise ValueError(f"structure {k} ({atoms.get_chemical_formula()}) has no reference energy")
            energy.append(float(results["energy"]))
            forces.append(results.get("forces"))
            stress.append(results.get("stress") if atoms.pbc.all() else None)
        self.energy = np.array(energy)
        if all(f is not None for f in forces):
            self.forces = np.concatenate([np.asarray(f, dtype=float).reshape(-1, 3) for f in forces])
        self.stress_mask = np.array([s is not None for s in stress])
        if self.stress_mask.any():
            self.stress = np.zeros((len(structures), 6))
            for k, s in enumerate(stress):
                if s is not None:
                    s = np.asarray(s, dtype=float)
                    self.stress[k] = s if s.shape == (6,) else [s[a, b] for a, b in VOIGT]
        for name, value in (("energy", self.energy), ("forces", self.forces), ("stress", self.stress)):
            if value is not None and not np.isfinite(value).all():
                raise ValueError(f"the reference {name} contain NaN or infinite values")

    def __len__(self) -> int:
        return len(self.n_atoms)

    @property
    def has_forces(self) -> bool:
        return self.forces is not None

    @property
    def has_stress(self) -> bool:
        return bool(self.stress_mask.any())

    def atom_slice(self, s: int) -> slice:
        return slice(int(self.atom_offsets[s]), int(self.atom_offsets[s + 1]))

    def atom_indices(self, indices: Sequence[int]) -> np.ndarray:
        """Atom rows of the given structures, in order."""
        return np.concatenate([np.arange(self.atom_offsets[s], self.atom_offsets[s + 1]) for s in indices])

    def batch(
        self, indices: Sequence[int], device: torch.device | str = "cpu", neighbours: bool = True
    ) -> Batch:
        """The structures ``indices`` (in that order) as tensors on ``device``."""
        indices = np.asarray(indices, dtype=np.int64)
        atoms = self.atom_indices(indices)
        sizes = self.n_atoms[indices]
        to = lambda x, dtype=torch.float64: torch.as_tensor(x, dtype=dtype, device=device)  # noqa: E731
        batch = Batch(
            G=to(self.G[atoms]),
            species=to(self.species[atoms], torch.long),
            structure=to(np.repeat(np.arange(len(indices)), sizes), torch.long),
            n_atoms=to(sizes),
            volume=to(self.volume[indices]),
        )
        if neighbours or getattr(self.descriptor, "needs_neighbours", False):
            if self.neighbours is None:
                raise ValueError("this data was prepared without neighbour pairs (keep_neighbours=False)")
            batch.neighbours = self._batch_neighbours(indices)
        if self.energy is not None:
            batch.energy = to(self.energy[indices])
        if self.forces is not None:
            batch.forces = to(self.forces[atoms])
        if self.stress is not None:
            batch.stress = to(self.stress[indices])
            batch.stress_mask = to(self.stress_mask[indices], torch.bool)
        return batch

    def _batch_neighbours(self, indices: np.ndarray) -> NeighbourData:
        nb = self.neighbours
        pairs = np.concatenate([np.arange(self.pair_offsets[s], self.pair_offsets[s + 1]) for s in indices])
        # Atom indices of structure s move from atom_offsets[s] to its place in the batch.
        sizes = self.n_atoms[indices]
        new_start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        shift_per_structure = new_start - self.atom_offsets[indices]
        pair_counts = self.pair_offsets[indices + 1] - self.pair_offsets[indices]
        shift = np.repeat(shift_per_structure, pair_counts)
        return NeighbourData.from_pairs(
            self.species[self.atom_indices(indices)],
            nb.i[pairs] + shift,
            nb.j[pairs] + shift,
            nb.D[pairs],
            np.concatenate([[0], np.cumsum(sizes)]),
        )

    def batches(self, batch_size: int, order: Sequence[int] | None = None):
        """Lists of structure indices of at most ``batch_size``, in ``order`` (default: all, in order)."""
        order = np.arange(len(self)) if order is None else np.asarray(order)
        return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def structure_sum(values: torch.Tensor, structure: torch.Tensor, n_structures: int) -> torch.Tensor:
    """Sum of per-atom values (..., n_atoms) over the atoms of each structure: (..., n_structures)."""
    shape = (*values.shape[:-1], n_structures)
    return values.new_zeros(shape).index_add(-1, structure, values)


def voigt_stress(virials: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
    """ASE stresses (..., S, 6) = -sym(W) / V in Voigt order from virials (..., S, 3, 3), eV/A^3.

    Structures with volume 0 (not periodic) are divided by 1 instead; callers mask them.
    """
    safe = torch.where(volume > 0, volume, torch.ones_like(volume))
    columns = [-0.5 * (virials[..., a, b] + virials[..., b, a]) for a, b in VOIGT]
    return torch.stack(columns, dim=-1) / safe[:, None]
