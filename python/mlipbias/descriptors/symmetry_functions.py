"""Atom-centred symmetry functions (Behler 2011): settings, defaults, and the C++ core.

:class:`SymmetryFunctions` holds the element list and the symmetry-function table of the model
file (``docs/model_file.md``, ``descriptor/functions``), computes descriptors ``G`` of one or many
structures with the C++ core (OpenMP over atoms), and exposes the two contractions a model
needs: :meth:`SymmetryFunctions.vjp` (``dE/dG`` -> ``dE/dD_ij``, for forces and the virial)
and :meth:`SymmetryFunctions.jvp` (pair tangents -> ``dG``, for the double backward of force
training). Definitions, defaults and the mapping to dscribe's ACSF: ``docs/descriptors.md``.

Units: Angstrom for distances and cutoffs, 1/Angstrom^2 for eta.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from mlipbias import _core

COLUMNS = ("kind", "a", "b", "eta", "rs", "zeta", "lambda", "rc")
# A: the angular cutoff of the "SiO2-fast" set (the first Si-O, O-O and Si-Si shells of silica)
FAST_ANGULAR_CUTOFF = 3.5


def _neighbor_pairs(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, D) within ``cutoff``: the one place that builds neighbour lists here."""
    from mlipbias.neighbors import neighbor_list

    return neighbor_list("ijD", atoms, cutoff)


@dataclass(frozen=True)
class NeighbourData:
    """Pairs of one structure or of a batch, sorted by centre (CSR), as the C++ core takes them.

    Atoms of a batch are numbered consecutively across structures; every atom is a centre.
    ``D[p] = x_j - x_i + S . cell`` (Angstrom) points from centre ``i[p]`` to neighbour ``j[p]``.
    """

    species: np.ndarray  # (n_atoms,) int64, model element index of every atom
    i: np.ndarray  # (n_pairs,) int64, non-decreasing
    j: np.ndarray  # (n_pairs,) int64
    D: np.ndarray  # (n_pairs, 3) float64
    offsets: np.ndarray  # (n_atoms + 1,) pairs of atom a are offsets[a] .. offsets[a+1]-1
    atom_offsets: np.ndarray  # (n_structures + 1,) atoms of structure s are atom_offsets[s] .. [s+1]-1

    @classmethod
    def from_pairs(
        cls,
        species: np.ndarray,
        i: np.ndarray,
        j: np.ndarray,
        D: np.ndarray,
        atom_offsets: np.ndarray | None = None,
    ) -> NeighbourData:
        """Sorts pairs by centre and builds the offsets; checks lengths and index ranges."""
        species = np.ascontiguousarray(species, dtype=np.int64)
        i = np.asarray(i, dtype=np.int64)
        j = np.asarray(j, dtype=np.int64)
        D = np.asarray(D, dtype=np.float64)
        if species.ndim != 1:
            raise ValueError(f"species must have shape (n_atoms,), got {species.shape}")
        n_atoms = len(species)
        if i.ndim != 1 or j.shape != i.shape or D.shape != (len(i), 3):
            raise ValueError(
                f"pairs need i, j of shape (n_pairs,) and D of shape (n_pairs, 3); got {i.shape}, {j.shape}, "
                f"{D.shape}"
            )
        if len(i) and (i.min() < 0 or i.max() >= n_atoms or j.min() < 0 or j.max() >= n_atoms):
            raise ValueError(f"pair indices must be in 0..{n_atoms - 1} (the number of atoms is {n_atoms})")
        if len(i) > 1 and np.any(np.diff(i) < 0):
            order = np.argsort(i, kind="stable")
            i, j, D = i[order], j[order], D[order]
        offsets = np.zeros(n_atoms + 1, dtype=np.int64)
        np.cumsum(np.bincount(i, minlength=n_atoms), out=offsets[1:])
        if atom_offsets is None:
            atom_offsets = np.array([0, n_atoms], dtype=np.int64)
        atom_offsets = np.asarray(atom_offsets, dtype=np.int64)
        if atom_offsets[0] != 0 or atom_offsets[-1] != n_atoms or np.any(np.diff(atom_offsets) < 0):
            raise ValueError(f"atom_offsets must rise from 0 to n_atoms = {n_atoms}, got {atom_offsets}")
        return cls(
            species,
            np.ascontiguousarray(i),
            np.ascontiguousarray(j),
            np.ascontiguousarray(D),
            offsets,
            atom_offsets,
        )

    @classmethod
    def concatenate(cls, parts: Sequence[NeighbourData]) -> NeighbourData:
        """One batch from several: atom indices of later parts are shifted past earlier ones."""
        if not parts:
            raise ValueError("cannot concatenate an empty list of neighbour data")
        shifts = np.cumsum([0] + [p.n_atoms for p in parts])
        atom_offsets = [np.zeros(1, dtype=np.int64)]
        for shift, p in zip(shifts[:-1], parts, strict=True):
            atom_offsets.append(p.atom_offsets[1:] + shift)
        return cls.from_pairs(
            np.concatenate([p.species for p in parts]),
            np.concatenate([p.i + s for p, s in zip(parts, shifts[:-1], strict=True)]),
            np.concatenate([p.j + s for p, s in zip(parts, shifts[:-1], strict=True)]),
            np.concatenate([p.D for p in parts]),
            np.concatenate(atom_offsets),
        )

    @property
    def n_atoms(self) -> int:
        return len(self.species)

    @property
    def n_pairs(self) -> int:
        return len(self.i)

    @property
    def n_structures(self) -> int:
        return len(self.atom_offsets) - 1

    @property
    def structure(self) -> np.ndarray:
        """(n_atoms,) structure index of every atom."""
        return np.repeat(np.arange(self.n_structures), np.diff(self.atom_offsets))

    @property
    def pair_structure(self) -> np.ndarray:
        """(n_pairs,) structure index of every pair."""
        return self.structure[self.i]


@dataclass(frozen=True)
class Descriptors:
    """Descriptors of one structure or a batch.

    ``G[a]`` are the features of atom ``a``; ``dG[p]`` (only when derivatives were requested)
    is ``dG_i/dD_ij`` for pair ``p = (i, j)``, shape (n_pairs, n_sf, 3): the derivative with
    respect to the position of neighbour ``j``; centre ``i`` gets minus the sum over its pairs.
    """

    G: np.ndarray  # (n_atoms, n_sf)
    neighbours: NeighbourData
    dG: np.ndarray | None = None  # (n_pairs, n_sf, 3)


class SymmetryFunctions:
    """Symmetry-function settings: element list and table, with the C++ implementation.

    Args:
        elements: chemical symbols; the position of a symbol is the model's element index.
        table: (n_sf, 8) rows ``kind, a, b, eta, rs, zeta, lambda, rc`` (see ``COLUMNS``):
            kind 2, 4 or 5; a, b element indices of the neighbours (b = -1 for G2); eta in
            1/A^2; rs and rc in A; unused columns 0. The same list applies to every centre.
    """

    def __init__(self, elements: Sequence[str], table: np.ndarray | Sequence[Sequence[float]]):
        _check_elements(elements)
        table = np.array(table, dtype=np.float64)
        if table.ndim != 2 or table.shape[1] != len(COLUMNS):
            columns = ", ".join(COLUMNS)
            raise ValueError(f"the table must have shape (n_sf, 8) with columns {columns}; got {table.shape}")
        self._elements = tuple(elements)
        self._index = {e: k for k, e in enumerate(elements)}
        self._core = _core.SymmetryFunctions(table, len(elements))  # validates every row
        table.setflags(write=False)
        self._table = table

    # ------------------------------------------------------------ settings

    @property
    def elements(self) -> tuple[str, ...]:
        return self._elements

    @property
    def table(self) -> np.ndarray:
        """(n_sf, 8) read-only table."""
        return self._table

    @property
    def n_sf(self) -> int:
        return len(self._table)

    @property
    def n_elements(self) -> int:
        return len(self._elements)

    @property
    def cutoff(self) -> float:
        """Largest cutoff of all functions (A): the neighbour-list radius."""
        return float(self._table[:, 7].max())

    def __reduce__(self):
        # Pickle (worker processes, deepcopy) as settings; the C++ object is rebuilt.
        return (SymmetryFunctions, (list(self.elements), np.array(self.table)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SymmetryFunctions):
            return NotImplemented
        return self.elements == other.elements and np.array_equal(self.table, other.table)

    def __repr__(self) -> str:
        counts = {k: int(np.sum(self._table[:, 0] == k)) for k in (2, 4, 5)}
        return (
            f"SymmetryFunctions(elements={list(self.elements)}, n_sf={self.n_sf} "
            f"(G2 {counts[2]}, G4 {counts[4]}, G5 {counts[5]}), cutoff={self.cutoff:g} A)"
        )

    def labels(self) -> list[str]:
        """A readable name of every function, e.g. ``G2[O] eta=1.21 rs=2.29 rc=6``."""
        out = []
        for kind, a, b, eta, rs, zeta, lam, rc in self._table:
            if kind == 2:
                out.append(f"G2[{self.elements[int(a)]}] eta={eta:.4g} rs={rs:.4g} rc={rc:g}")
            else:
                pair = f"{self.elements[int(a)]},{self.elements[int(b)]}"
                out.append(f"G{int(kind)}[{pair}] eta={eta:.4g} zeta={zeta:g} lambda={lam:+g} rc={rc:g}")
        return out

    def with_angular_cutoff(self, rc: float) -> SymmetryFunctions:
        """The same functions with every G4 and G5 at cutoff ``rc`` (A), the G2 unchanged.

        The triplet work grows about as rc^6 (pairs of neighbours inside rc), so a shorter angular
        cutoff is the largest single saving (ANI uses 3.5 A, aenet 3.2 A for water). The cutoff is
        the ``rc`` column of each function, so the model file and every evaluator honour it.
        """
        if not (np.isfinite(rc) and rc > 0):
            raise ValueError(f"angular cutoff must be a positive number of A, got {rc!r}")
        table = np.array(self._table)
        table[table[:, 0] != 2, 7] = rc
        return SymmetryFunctions(self.elements, table)

    @classmethod
    def build(
        cls,
        elements: Sequence[str],
        g2: Iterable[Sequence[float]] = (),
        g4: Iterable[Sequence[float]] = (),
        g5: Iterable[Sequence[float]] = (),
    ) -> SymmetryFunctions:
        """The table of the given parameters on every element (pair) channel.

        ``g2`` holds ``(eta, rs, rc)`` triples, ``g4`` and ``g5`` ``(eta, zeta, lambda, rc)``.
        Order: every G2 for element 0, then element 1, ...; then for every unordered element
        pair (a <= b, in the order of ``elements``) its G4 and then its G5 functions.
        """
        rows = []
        n = len(elements)
        for a in range(n):
            rows += [(2, a, -1, eta, rs, 0.0, 0.0, rc) for eta, rs, rc in g2]
        for a, b in itertools.combinations_with_replacement(range(n), 2):
            rows += [(4, a, b, eta, 0.0, zeta, lam, rc) for eta, zeta, lam, rc in g4]
            rows += [(5, a, b, eta, 0.0, zeta, lam, rc) for eta, zeta, lam, rc in g5]
        return cls(elements, np.array(rows, dtype=np.float64).reshape(-1, len(COLUMNS)))

    @classmethod
    def defaults(cls, system: str | Sequence[str]) -> SymmetryFunctions:
        """A published-style set for ``"SiO2"``, ``"SiO2-fast"``, ``"Si"``, ``"molecules"`` or elements.

        Radial G2 shells follow the "shifted" rule of Gastegger et al., J. Chem. Phys. 148,
        241709 (2018) (rs on an even grid, eta = 1/(2 dr^2)); angular widths its "centred" rule
        eta = 1/(2 r^2); zeta in 1, 2, 4, 16 and lambda = +-1 as in Behler, J. Chem. Phys. 134,
        074106 (2011). Sizes (n_sf): SiO2 52, Si 42, molecules (H, C, N, O) 64. ``"SiO2-fast"`` is
        the SiO2 set with every G4/G5 at 3.5 A (:meth:`with_angular_cutoff`; ~10x cheaper per atom-step,
        ``examples/sio2_fast``). A list with the
        elements {Si, O} or {Si} gets those sets in the given order; any other list gets the
        molecular recipe, with fewer angular functions per element pair as pairs multiply.
        Details and the reasoning: ``docs/descriptors.md``.
        """
        if isinstance(system, str):
            names = {"SiO2": ["Si", "O"], "Si": ["Si"], "molecules": ["H", "C", "N", "O"]}
            if system == "SiO2-fast":
                return cls.defaults("SiO2").with_angular_cutoff(FAST_ANGULAR_CUTOFF)
            if system not in names:
                raise ValueError(
                    f"unknown default set {system!r}: use one of {sorted([*names, 'SiO2-fast'])} "
                    "or a list of elements"
                )
            elements = names[system]
        else:
            elements = list(system)
            _check_elements(elements)
        wide, narrow = _centred_eta(6.0), _centred_eta(3.0)
        if set(elements) == {"Si", "O"}:
            g2 = _shifted_shells(1.0, 5.5, 8, 6.0)
            g4 = [(narrow, zeta, lam, 6.0) for zeta in (1, 4) for lam in (-1, 1)]
            g5 = [(wide, zeta, lam, 6.0) for zeta in (1, 2, 4, 16) for lam in (-1, 1)]
        elif set(elements) == {"Si"}:
            g2 = _shifted_shells(1.5, 5.5, 10, 6.0)
            angular = [
                (eta, zeta, lam, 6.0) for eta in (narrow, wide) for zeta in (1, 2, 4, 16) for lam in (-1, 1)
            ]
            g4, g5 = angular, angular
        else:
            n_pairs = len(elements) * (len(elements) + 1) // 2
            zetas = (1, 2, 4, 16) if n_pairs <= 3 else (1, 4) if n_pairs <= 10 else (1,)
            g2 = _shifted_shells(0.8, 4.5, 6, 5.0)
            g4 = [(_centred_eta(2.0), zeta, lam, 4.0) for zeta in zetas for lam in (-1, 1)]
            g5 = []
        return cls.build(elements, g2=g2, g4=g4, g5=g5)

    @classmethod
    def from_dscribe(
        cls,
        elements: Sequence[str],
        r_cut: float,
        g2_params: Sequence[Sequence[float]] | None = None,
        g4_params: Sequence[Sequence[float]] | None = None,
        g5_params: Sequence[Sequence[float]] | None = None,
    ) -> SymmetryFunctions:
        """The functions of ``dscribe.descriptors.ACSF`` with these parameters, in dscribe's order.

        ``G`` then equals dscribe's ``ACSF(r_cut, g2_params, g4_params=..., g5_params=...,
        species=elements).create(atoms)`` column for column. dscribe orders species by atomic
        number; for each species it writes G1 (= G2 with eta = 0, rs = 0) and its G2; then for
        each species pair (Z_j >= Z_k, in that order) its G4 and G5. dscribe's g4/g5 rows are
        (eta, zeta, lambda) with the same 2^(1-zeta) normalisation. G3 has no counterpart here.
        """
        g2_params = [] if g2_params is None else [tuple(p) for p in g2_params]
        g4_params = [] if g4_params is None else [tuple(p) for p in g4_params]
        g5_params = [] if g5_params is None else [tuple(p) for p in g5_params]
        index = {e: k for k, e in enumerate(elements)}
        by_z = sorted(elements, key=lambda e: atomic_numbers[e])
        rows = []
        for e in by_z:
            a = index[e]
            rows += [(2, a, -1, eta, rs, 0.0, 0.0, r_cut) for eta, rs in [(0.0, 0.0), *g2_params]]
        for hi in range(len(by_z)):
            for lo in range(hi + 1):
                a, b = index[by_z[hi]], index[by_z[lo]]
                rows += [(4, a, b, eta, 0.0, zeta, lam, r_cut) for eta, zeta, lam in g4_params]
                rows += [(5, a, b, eta, 0.0, zeta, lam, r_cut) for eta, zeta, lam in g5_params]
        return cls(elements, np.array(rows, dtype=np.float64))

    # ------------------------------------------------------------ model file

    def to_records(self) -> dict[str, np.ndarray | str]:
        """The ``elements`` and ``descriptor/...`` records of the model file."""
        return {
            "elements": " ".join(self.elements),
            "descriptor/cutoff": np.array([self.cutoff]),
            "descriptor/functions": np.array(self.table),
        }

    @classmethod
    def from_records(cls, records: Mapping[str, np.ndarray | str]) -> SymmetryFunctions:
        """Inverse of :meth:`to_records`; checks that ``descriptor/cutoff`` matches the table."""
        for name in ("elements", "descriptor/cutoff", "descriptor/functions"):
            if name not in records:
                raise ValueError(f"missing record {name}")
        sf = cls(str(records["elements"]).split(), records["descriptor/functions"])
        cutoff = np.asarray(records["descriptor/cutoff"], dtype=np.float64).reshape(-1)
        if cutoff.shape != (1,) or cutoff[0] != sf.cutoff:
            raise ValueError(
                f"record descriptor/cutoff = {cutoff} does not match the largest rc of the table, {sf.cutoff}"
            )
        return sf

    # ------------------------------------------------------------ neighbours and descriptors

    def species(self, atoms: Atoms, name: str = "the structure") -> np.ndarray:
        """(n_atoms,) model element index of every atom; unknown elements are an error."""
        symbols = atoms.get_chemical_symbols()
        try:
            return np.fromiter((self._index[s] for s in symbols), dtype=np.int64, count=len(symbols))
        except KeyError as error:
            raise ValueError(
                f"{name} contains element {error.args[0]}, which is not among this descriptor's elements "
                f"{list(self.elements)}"
            ) from None

    def neighbours(self, atoms: Atoms, name: str = "the structure") -> NeighbourData:
        """Pairs of ``atoms`` within :attr:`cutoff` (periodic images included where pbc is set)."""
        species = self.species(atoms, name)
        i, j, D = _neighbor_pairs(atoms, self.cutoff)
        return NeighbourData.from_pairs(species, i, j, D)

    def compute(self, atoms: Atoms, derivatives: bool = False) -> Descriptors:
        """Descriptors of one structure; with ``derivatives``, also dG_i/dD_ij of every pair."""
        return self.compute_neighbours(self.neighbours(atoms), derivatives)

    def compute_batch(
        self, structures: Sequence[Atoms], derivatives: bool = False, progress: bool | None = None
    ) -> Descriptors:
        """Descriptors of many structures as one batch (atoms concatenated in order).

        ``descriptors.neighbours.atom_offsets`` says which atoms belong to which structure.
        ``derivatives`` stores n_pairs x n_sf x 3 doubles (tens of KB per atom): for training
        on forces use :func:`mlipbias.descriptors.pair_gradients` instead.
        ``progress`` shows a bar on stderr while the neighbour lists are built (default: for
        200 structures or more).
        """
        if len(structures) == 0:
            raise ValueError("compute_batch needs at least one structure")
        from tqdm import tqdm

        show = len(structures) >= 200 if progress is None else progress
        bar = tqdm(structures, desc="neighbour lists", disable=None if show else True, file=sys.stderr)
        parts = [self.neighbours(atoms, f"structure {k}") for k, atoms in enumerate(bar)]
        return self.compute_neighbours(NeighbourData.concatenate(parts), derivatives)

    def compute_neighbours(self, neighbours: NeighbourData, derivatives: bool = False) -> Descriptors:
        """Descriptors of prepared neighbour data."""
        n = neighbours
        if derivatives:
            G, dG = self._core.compute_with_derivatives(n.species, n.offsets, n.j, n.D)
            return Descriptors(G, n, dG)
        return Descriptors(self._core.compute(n.species, n.offsets, n.j, n.D), n)

    def vjp(self, neighbours: NeighbourData, dLdG: np.ndarray) -> np.ndarray:
        """dL/dD_ij (n_pairs, 3) from dL/dG (n_atoms, n_sf), without storing dG.

        With several right-hand sides, dLdG (n_rhs, n_atoms, n_sf) gives (n_rhs, n_pairs, 3).
        """
        n = neighbours
        return self._core.vjp(n.species, n.offsets, n.j, n.D, dLdG)

    def jvp(self, neighbours: NeighbourData, t: np.ndarray) -> np.ndarray:
        """dG (n_atoms, n_sf) = sum_j dG_i/dD_ij . t_ij from pair tangents t (n_pairs, 3).

        With several right-hand sides, t (n_rhs, n_pairs, 3) gives (n_rhs, n_atoms, n_sf).
        """
        n = neighbours
        return self._core.jvp(n.species, n.offsets, n.j, n.D, t)


def _check_elements(elements: Sequence[str]) -> None:
    if isinstance(elements, str) or len(elements) == 0 or not all(isinstance(e, str) for e in elements):
        raise ValueError(f"elements must be a non-empty list of chemical symbols, got {elements!r}")
    unknown = [e for e in elements if e not in atomic_numbers or e == "X"]
    if unknown:
        raise ValueError(f"unknown chemical symbol(s) {unknown} in elements {list(elements)}")
    if len(set(elements)) != len(elements):
        raise ValueError(f"elements must not repeat, got {list(elements)}")


def _shifted_shells(r_lower: float, r_upper: float, n: int, rc: float) -> list[tuple[float, float, float]]:
    """Gastegger et al. (2018) "shifted" radial grid: (eta, rs, rc) with eta = 1/(2 dr^2)."""
    rs = np.linspace(r_lower, r_upper, n)
    eta = 1.0 / (2.0 * (rs[1] - rs[0]) ** 2)
    return [(float(eta), float(r), rc) for r in rs]


def _centred_eta(r: float) -> float:
    """Gastegger et al. (2018) "centred" width for a length r: eta = 1/(2 r^2)."""
    return 1.0 / (2.0 * r * r)
