"""The ``auto`` symmetry-function set: shells and cutoffs derived from the training data.

The parameter rules are those of the fixed presets (``SymmetryFunctions.defaults``) and of n2p2's
``symfunc_paramgen`` (Gastegger et al., J. Chem. Phys. 148, 241709 (2018)): radial G2 shells on an
even grid with ``eta = 1/(2 dr^2)`` ("shifted"), angular widths ``eta = 1/(2 r^2)`` ("centred"),
``zeta`` in 1, 2, 4, 16 and ``lambda = +-1`` (Behler, J. Chem. Phys. 134, 074106 (2011)). n2p2
leaves the grid's ends and the cutoff to the user; here they come from the neighbour distances of
the data, per element pair:

* cutoff: the radius within which an atom has on average ``TARGET_NEIGHBOURS`` (60) neighbours at
  the data's density, rounded up to 0.1 A (6.1 A for amorphous silica at 2.2 g/cm^3, near the 6 A
  of the ``SiO2`` preset; 5.6 A for fcc Cu); the angular functions use the radius of half as many
  (the first two or three shells, and a quarter of the triplets). Data too sparse to reach the
  count (molecules and clusters in vacuum) get the molecular cutoffs, 5 A radial and 4 A angular;
* radial shells of neighbour element ``b``: from 0.9 times the shortest distance observed between
  any atom and an atom of ``b`` (biased and adversarial sampling go a little closer than the data)
  to the cutoff less one spacing, about 0.5 A apart (6 to 12 shells);
* angular sets as the presets: G4 with the width of half the angular cutoff on every element pair,
  G5 with the width of the whole angular cutoff for up to three element pairs, fewer ``zeta``
  values as the pairs multiply.

Functions are expanded per neighbour element (G2) and per unordered neighbour element pair (G4,
G5), and the same list applies to every centre element (``docs/descriptors.md``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

TARGET_NEIGHBOURS = 60  # mean neighbours within the cutoff (the SiO2 preset has ~60 at 6 A)
PROBE_RADIUS = 8.0  # A, the largest cutoff this chooses
MIN_CUTOFF = 4.0  # A
MOLECULAR_CUTOFFS = (5.0, 4.0)  # radial, angular (A), as the molecules preset
MAX_STRUCTURES = 200  # structures sampled for the statistics (evenly spaced) ...
MAX_ATOMS = 20000  # ... until they hold this many atoms (an 8 A list of 20,000 atoms is ~4e6 pairs)
SHELL_SPACING = 0.5  # A, target distance between radial shells


@dataclass
class DataDescriptorChoice:
    """What :func:`symmetry_functions_from_data` measured and chose (distances in A)."""

    elements: list[str]
    n_structures: int
    n_atoms: int
    shortest: dict[str, float]  # per element pair "A-B": shortest distance
    nearest: dict[str, float]  # per pair: median over centres A (and B) of the distance to the nearest B (A)
    density: float | None  # mean neighbours per A^3 around an atom, when the count was reached
    radial_cutoff: float
    angular_cutoff: float
    shells: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # b: (first rs, last rs, n)
    reason: str = ""

    def summary(self) -> str:
        lines = [
            f"auto symmetry functions from {self.n_structures} structures ({self.n_atoms} atoms): "
            f"{self.reason}",
            f"  cutoffs: radial {self.radial_cutoff:g} A, angular {self.angular_cutoff:g} A",
        ]
        for pair, r in self.shortest.items():
            lines.append(
                f"  {pair}: shortest {r:.3f} A, nearest neighbour (median) {self.nearest[pair]:.3f} A"
            )
        for el, (lo, hi, n) in self.shells.items():
            lines.append(f"  G2 shells on {el} neighbours: {n} from {lo:.3f} to {hi:.3f} A")
        return "\n".join(lines)


def neighbour_statistics(structures: Sequence[Atoms], elements: Sequence[str], radius: float = PROBE_RADIUS):
    """Per element pair the shortest distance and the nearest-neighbour distances of every centre,
    and the sorted distances of all pairs within ``radius`` with the number of centres."""
    from mlipbias.neighbors import neighbor_list

    index = {el: k for k, el in enumerate(elements)}
    n = len(elements)
    nearest: dict[tuple[int, int], list[np.ndarray]] = {}
    distances, n_atoms = [], 0
    for atoms in structures:
        species = np.array([index[s] for s in atoms.get_chemical_symbols()])
        i, j, d = neighbor_list("ijd", atoms, radius)
        n_atoms += len(atoms)
        distances.append(d)
        for b in range(n):
            mask = species[j] == b
            if not mask.any():
                continue
            # Distance from every centre to its nearest neighbour of element b.
            best = np.full(len(atoms), np.inf)
            np.minimum.at(best, i[mask], d[mask])
            for a in range(n):
                values = best[(species == a) & np.isfinite(best)]
                if len(values):
                    nearest.setdefault((a, b), []).append(values)
    all_distances = np.sort(np.concatenate(distances)) if distances else np.zeros(0)
    per_pair = {}
    for a, b in itertools.combinations_with_replacement(range(n), 2):
        values = nearest.get((a, b), []) + nearest.get((b, a), []) if a != b else nearest.get((a, b), [])
        if values:
            values = np.concatenate(values)
            per_pair[(a, b)] = (float(values.min()), float(np.median(values)))
    return per_pair, all_distances, n_atoms


def symmetry_functions_from_data(structures: Sequence[Atoms], elements: Sequence[str] | None = None):
    """The ``auto`` symmetry functions of ``structures``: (SymmetryFunctions, DataDescriptorChoice).

    ``elements`` (default: those of the data, by atomic number) is the model's element order.
    Raises ValueError for no structures, or when an element never has a neighbour within 8 A.
    """
    from mlipbias.descriptors.symmetry_functions import SymmetryFunctions, _centred_eta

    if len(structures) == 0:
        raise ValueError("the auto symmetry functions need at least one structure")
    present = {s for atoms in structures for s in atoms.get_chemical_symbols()}
    if elements is None:
        elements = sorted(present, key=lambda e: atomic_numbers[e])
    elements = list(elements)
    step = max(1, math.ceil(len(structures) / MAX_STRUCTURES))
    sample, n_sampled = [], 0
    for atoms in list(structures)[::step]:
        if n_sampled >= MAX_ATOMS:
            break
        sample.append(atoms)
        n_sampled += len(atoms)
    per_pair, distances, n_atoms = neighbour_statistics(sample, elements)
    name = {(a, b): f"{elements[a]}-{elements[b]}" for a, b in per_pair}

    # Cutoffs: the radius holding TARGET_NEIGHBOURS (half as many for the angular functions).
    def radius_for(count: int) -> float | None:
        k = count * n_atoms
        return float(distances[k - 1]) if len(distances) >= k else None

    radial, angular = radius_for(TARGET_NEIGHBOURS), radius_for(TARGET_NEIGHBOURS // 2)
    density = None
    if radial is None or angular is None:
        radial_cutoff, angular_cutoff = MOLECULAR_CUTOFFS
        reason = (
            f"fewer than {TARGET_NEIGHBOURS} neighbours per atom within {PROBE_RADIUS:g} A "
            "(molecules or clusters): the molecular cutoffs"
        )
    else:
        radial_cutoff = min(max(_round_up(radial), MIN_CUTOFF), PROBE_RADIUS)
        angular_cutoff = min(max(_round_up(angular), MIN_CUTOFF), radial_cutoff)
        density = TARGET_NEIGHBOURS / (4.0 / 3.0 * math.pi * radial**3)
        reason = (
            f"{TARGET_NEIGHBOURS} neighbours per atom within {radial:.2f} A "
            f"(density {density:.4f} atoms/A^3), {TARGET_NEIGHBOURS // 2} within {angular:.2f} A"
        )

    # Radial shells per neighbour element b, from just below the shortest distance to any b.
    g2, shells = [], {}
    for b, el in enumerate(elements):
        seen = [r for (p, q), (r, _) in per_pair.items() if b in (p, q)]
        if not seen:
            raise ValueError(
                f"element {el} has no neighbour within {PROBE_RADIUS:g} A in any sampled structure: "
                "the auto symmetry functions cannot place its shells (give descriptor.g2 explicitly)"
            )
        r_lower = math.floor(0.9 * min(seen) / 0.05) * 0.05
        n_shells = int(min(max(round((radial_cutoff - r_lower) / SHELL_SPACING), 6), 12))
        dr = (radial_cutoff - r_lower) / n_shells  # the last shell one spacing inside the cutoff
        eta = 1.0 / (2.0 * dr * dr)
        rs = r_lower + dr * np.arange(n_shells)
        g2 += [(2, b, -1, eta, float(r), 0.0, 0.0, radial_cutoff) for r in rs]
        shells[el] = (round(float(rs[0]), 4), round(float(rs[-1]), 4), n_shells)

    n_pairs = len(elements) * (len(elements) + 1) // 2
    zetas = (1, 2, 4, 16) if n_pairs <= 3 else (1, 4) if n_pairs <= 10 else (1,)
    narrow, wide = _centred_eta(angular_cutoff / 2), _centred_eta(angular_cutoff)
    angular_rows = []
    for a, b in itertools.combinations_with_replacement(range(len(elements)), 2):
        angular_rows += [(4, a, b, narrow, 0.0, z, lam, angular_cutoff) for z in zetas for lam in (-1, 1)]
        if n_pairs <= 3:
            angular_rows += [(5, a, b, wide, 0.0, z, lam, angular_cutoff) for z in zetas for lam in (-1, 1)]
    sf = SymmetryFunctions(elements, np.array(g2 + angular_rows, dtype=np.float64))
    choice = DataDescriptorChoice(
        elements=elements,
        n_structures=len(sample),
        n_atoms=n_atoms,
        shortest={name[p]: r for p, (r, _) in per_pair.items()},
        nearest={name[p]: m for p, (_, m) in per_pair.items()},
        density=density,
        radial_cutoff=radial_cutoff,
        angular_cutoff=angular_cutoff,
        shells=shells,
        reason=reason,
    )
    return sf, choice


def _round_up(r: float, step: float = 0.1) -> float:
    return round(math.ceil(r / step - 1e-9) * step, 10)
