"""Gaussian moments (GM-NN; Zaverkin & Kastner, JCTC 2020 and 2021; seed 002 Eqs. 11-13).

For a pair ``p = (i, j)`` with ``D_p = x_j - x_i``, ``r = |D_p|`` and ``u = D_p / r``:

    phi_k(r)  = (2 b / pi)^(1/4) exp(-b (r - mu_k)^2),    b = n_basis^2 / rc^2,
                mu_k = r_min + k (rc - r_min) / n_basis,   k = 0 .. n_basis-1
    fc(r)     = (cos(pi r / rc) + 1) / 2  for r < rc, else 0
    R_s(p)    = fc(r) / sqrt(n_basis) sum_k beta[Z_i, Z_j, s, k] phi_k(r),   s = 0 .. n_radial-1
    Psi^(L)_s = sum_j R_s(p) u^(x L)        L = 0 .. 3 (tensors of rank L, one per centre atom)

The Gaussians' width, normalisation and grid (from ``r_min`` = 0.5 A) are those of the authors' published
code (apax). ``beta`` are trainable per-species-pair coefficients (they belong to the network, one set per
ensemble member). The rotation invariants are full contractions of products of moments, the
eight generating graphs of the published GM-NN, with index sets reduced by each graph's symmetry
(Einstein sums over Cartesian indices a, b, c, d):

    0  Psi0_s                                       s                 n_radial
    1  Psi1_r,a Psi1_s,a                            r <= s            n_radial (n_radial+1)/2
    2  Psi2_r,ab Psi2_s,ab                          r <= s
    3  Psi3_r,abc Psi3_s,abc                        r <= s
    4  Psi2_r,ab Psi2_s,ac Psi2_t,bc                r <= s <= t       n_radial (n_radial+1)(n_radial+2)/6
    5  Psi1_r,a Psi1_s,b Psi2_t,ab                  r <= s, all t
    6  Psi3_r,abc Psi3_s,abd Psi2_t,cd              r <= s, all t
    7  Psi3_r,abc Psi2_s,ab Psi1_t,c                all r, s, t

Features are concatenated in this order (pairs and triples in lexicographic order); the first
``n_contractions`` groups are kept. With 5 radial functions and all 8 groups there are 360
features. The cost is linear in the number of neighbours: moments are sums over pairs, the
contractions act per atom. The same definitions are in ``docs/model_file.md`` ("Gaussian
moments") for the C++ inference.

Units: Angstrom for distances; the moments carry no unit.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from itertools import combinations_with_replacement

import numpy as np
from ase import Atoms

from mlipbias.descriptors.symmetry_functions import (
    Descriptors,
    NeighbourData,
    _check_elements,
    _neighbor_pairs,
)

KIND = "gaussian_moments"
MAX_CONTRACTIONS = 8


def contraction_sizes(n_radial: int) -> list[int]:
    """Number of features of each of the eight contraction groups."""
    pairs = n_radial * (n_radial + 1) // 2
    triples = n_radial * (n_radial + 1) * (n_radial + 2) // 6
    return [n_radial, pairs, pairs, pairs, triples, pairs * n_radial, pairs * n_radial, n_radial**3]


class GaussianMoments:
    """Gaussian-moment settings: elements, cutoff and sizes (the trainable ``beta`` live in the network).

    Args:
        elements: chemical symbols; the position of a symbol is the model's element index.
        cutoff: rc in A (published: 5 for molecules, 6 for materials).
        n_basis: Gaussians per pair (published 7); ``n_radial``: radial functions (published 5);
        r_min: centre of the first Gaussian in A (0.5); ``n_contractions``: groups kept, 1..8.
    """

    needs_neighbours = True  # the features depend on trainable coefficients: computed from pairs

    def __init__(
        self,
        elements: Sequence[str],
        cutoff: float = 6.0,
        n_basis: int = 7,
        n_radial: int = 5,
        r_min: float = 0.5,
        n_contractions: int = MAX_CONTRACTIONS,
    ):
        _check_elements(elements)
        self._elements = tuple(elements)
        self._index = {el: k for k, el in enumerate(self._elements)}
        for name, value in (("n_basis", n_basis), ("n_radial", n_radial), ("n_contractions", n_contractions)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"Gaussian moments: {name} must be a positive integer, got {value!r}")
        if n_contractions > MAX_CONTRACTIONS:
            raise ValueError(f"Gaussian moments: n_contractions must be 1..8, got {n_contractions}")
        if not (math.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f"Gaussian moments: cutoff must be a positive length in A, got {cutoff!r}")
        if not (math.isfinite(r_min) and 0 <= r_min < cutoff):
            raise ValueError(f"Gaussian moments: r_min must be in [0, cutoff = {cutoff}), got {r_min!r}")
        self.cutoff = float(cutoff)
        self.n_basis = int(n_basis)
        self.n_radial = int(n_radial)
        self.r_min = float(r_min)
        self.n_contractions = int(n_contractions)

    # ------------------------------------------------------------ settings

    @property
    def elements(self) -> tuple[str, ...]:
        return self._elements

    @property
    def n_elements(self) -> int:
        return len(self._elements)

    @property
    def n_features(self) -> int:
        return sum(contraction_sizes(self.n_radial)[: self.n_contractions])

    n_sf = n_features  # the name the network code uses for the descriptor width

    def _settings(self) -> tuple:
        return (self._elements, self.cutoff, self.n_basis, self.n_radial, self.r_min, self.n_contractions)

    def __reduce__(self):
        return (GaussianMoments, self._settings())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GaussianMoments):
            return NotImplemented
        return self._settings() == other._settings()

    def __repr__(self) -> str:
        return (
            f"GaussianMoments(elements={list(self.elements)}, n_features={self.n_features}, "
            f"n_basis={self.n_basis}, n_radial={self.n_radial}, n_contractions={self.n_contractions}, "
            f"cutoff={self.cutoff:g} A)"
        )

    # ------------------------------------------------------------ model file

    def to_records(self) -> dict[str, np.ndarray | str]:
        """The ``elements`` and ``descriptor/...`` records of the model file (``beta`` is per member)."""
        return {
            "elements": " ".join(self.elements),
            "descriptor/kind": KIND,
            "descriptor/cutoff": np.array([self.cutoff]),
            "descriptor/r_min": np.array([self.r_min]),
            "descriptor/n_basis": np.array([self.n_basis], dtype=np.int64),
            "descriptor/n_radial": np.array([self.n_radial], dtype=np.int64),
            "descriptor/n_contractions": np.array([self.n_contractions], dtype=np.int64),
        }

    @classmethod
    def from_records(cls, records: Mapping[str, np.ndarray | str]) -> GaussianMoments:
        names = ("elements", "descriptor/cutoff", "descriptor/r_min", "descriptor/n_basis")
        names += ("descriptor/n_radial", "descriptor/n_contractions")
        for name in names:
            if name not in records:
                raise ValueError(f"missing record {name}")

        def scalar(name):
            return np.ravel(records[name])[0].item()

        return cls(
            str(records["elements"]).split(),
            float(scalar("descriptor/cutoff")),
            int(scalar("descriptor/n_basis")),
            int(scalar("descriptor/n_radial")),
            float(scalar("descriptor/r_min")),
            int(scalar("descriptor/n_contractions")),
        )

    # ------------------------------------------------------------ neighbours

    def species(self, atoms: Atoms, name: str = "the structure") -> np.ndarray:
        symbols = atoms.get_chemical_symbols()
        unknown = sorted(set(symbols) - set(self._index))
        if unknown:
            raise ValueError(
                f"{name} contains element {unknown[0]}, which is not among this model's elements "
                f"{list(self.elements)}"
            )
        return np.array([self._index[s] for s in symbols], dtype=np.int64)

    def neighbours(self, atoms: Atoms, name: str = "the structure") -> NeighbourData:
        """Pairs of ``atoms`` within :attr:`cutoff` (periodic images included where pbc is set)."""
        species = self.species(atoms, name)
        i, j, D = _neighbor_pairs(atoms, self.cutoff)
        return NeighbourData.from_pairs(species, i, j, D)

    def compute_batch(
        self, structures: Sequence[Atoms], derivatives: bool = False, progress: bool | None = None
    ) -> Descriptors:
        """The neighbour pairs of many structures; ``G`` has no columns (the network computes the moments)."""
        if derivatives:
            raise ValueError("Gaussian moments are differentiated by autograd: no stored derivatives")
        if len(structures) == 0:
            raise ValueError("compute_batch needs at least one structure")
        from tqdm import tqdm

        show = len(structures) >= 200 if progress is None else progress
        bar = tqdm(structures, desc="neighbour lists", disable=not show, file=sys.stderr)
        parts = [self.neighbours(atoms, f"structure {k}") for k, atoms in enumerate(bar)]
        nb = NeighbourData.concatenate(parts)
        return Descriptors(np.zeros((nb.n_atoms, 0)), nb)

    # ------------------------------------------------------------ the math (torch)

    def basis(self):
        """(b, norm, centres mu_k) of the Gaussians."""
        b = self.n_basis**2 / self.cutoff**2
        norm = (2.0 * b / math.pi) ** 0.25
        mu = self.r_min + (self.cutoff - self.r_min) / self.n_basis * np.arange(self.n_basis)
        return b, norm, mu

    def radial(self, r, species_i, species_j, beta):
        """R_s of every pair (M, n_pairs, n_radial) from distances r (M, n_pairs), beta (M, E, E, R, K)."""
        import torch

        b, norm, mu = self.basis()
        mu = torch.as_tensor(mu, dtype=r.dtype, device=r.device)
        phi = norm * torch.exp(-b * (r[..., None] - mu) ** 2)  # (M, P, K)
        fc = torch.where(r < self.cutoff, 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0), 0.0 * r)
        coefficients = beta[:, species_i, species_j]  # (M, P, R, K)
        return torch.einsum("mprk,mpk->mpr", coefficients, phi) * (fc / math.sqrt(self.n_basis))[..., None]

    def values(self, D, i, species, j, beta, n_atoms: int):
        """Features (M, n_atoms, n_features) from pair vectors D (M, n_pairs, 3) and beta (M, E, E, R, K).

        Differentiable in D and beta (torch autograd); ``i``, ``j`` (n_pairs,) centre and neighbour
        indices, ``species`` (n_atoms,) element indices.
        """
        import torch

        r = torch.linalg.vector_norm(D, dim=-1)
        u = D / r[..., None]
        R = self.radial(r, species[i], species[j], beta)  # (M, P, n_radial)
        M, P = D.shape[0], D.shape[1]
        # Pairs laid out per centre, padded to the largest neighbour count (pairs are sorted by
        # centre): each moment is then one batched product over the neighbours, and no
        # (pairs x radial x 27) intermediate is formed.
        counts = torch.bincount(i, minlength=n_atoms)
        width = int(counts.max()) if P else 0
        slot = torch.arange(P, device=D.device) - (torch.cumsum(counts, 0) - counts)[i]
        where = i * width + slot

        def padded(x):  # (M, P, k) -> (M, n_atoms, width, k)
            out = x.new_zeros((M, n_atoms * width, x.shape[2])).index_copy(1, where, x)
            return out.view(M, n_atoms, width, x.shape[2])

        uu = (u[..., :, None] * u[..., None, :]).flatten(2)
        uuu = (uu[..., :, None] * u[..., None, :]).flatten(2)
        Rp = padded(R)
        P0 = Rp.sum(dim=2)
        P1 = torch.einsum("mxnr,mxna->mxra", Rp, padded(u))
        P2 = torch.einsum("mxnr,mxna->mxra", Rp, padded(uu)).unflatten(3, (3, 3))
        P3 = torch.einsum("mxnr,mxna->mxra", Rp, padded(uuu)).unflatten(3, (3, 3, 3))
        rr, ss = _pairs(self.n_radial)
        tr3 = _triples(self.n_radial)
        n = self.n_contractions
        groups = [P0]
        if n > 1:
            groups.append(torch.einsum("mxra,mxsa->mxrs", P1, P1)[:, :, rr, ss])
        if n > 2:
            groups.append(torch.einsum("mxrab,mxsab->mxrs", P2, P2)[:, :, rr, ss])
        if n > 3:
            groups.append(torch.einsum("mxrabc,mxsabc->mxrs", P3, P3)[:, :, rr, ss])
        if n > 4:
            c4 = torch.einsum("mxrab,mxsac,mxtbc->mxrst", P2, P2, P2)
            groups.append(c4[:, :, tr3[0], tr3[1], tr3[2]])
        if n > 5:
            c5 = torch.einsum("mxra,mxsb,mxtab->mxrst", P1, P1, P2)
            groups.append(c5[:, :, rr, ss].flatten(2))
        if n > 6:
            c6 = torch.einsum("mxrabc,mxsabd,mxtcd->mxrst", P3, P3, P2)
            groups.append(c6[:, :, rr, ss].flatten(2))
        if n > 7:
            groups.append(torch.einsum("mxrabc,mxsab,mxtc->mxrst", P3, P2, P1).flatten(2))
        return torch.cat(groups, dim=2)


def _pairs(n: int) -> tuple[list[int], list[int]]:
    """Index pairs r <= s in lexicographic order."""
    pairs = list(combinations_with_replacement(range(n), 2))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _triples(n: int) -> tuple[list[int], list[int], list[int]]:
    """Index triples r <= s <= t in lexicographic order."""
    triples = list(combinations_with_replacement(range(n), 3))
    return [t[0] for t in triples], [t[1] for t in triples], [t[2] for t in triples]
