"""Symmetry functions in plain torch: the reference for the C++ core, and higher derivatives.

The same functions as :mod:`mlipbias.descriptors.symmetry_functions` (the table of
``docs/model_file.md``), written directly on pair vectors with torch operations, so autograd
gives derivatives of any order with respect to ``D`` on CPU or GPU. It builds every triplet
explicitly and is meant for tests, small structures and second derivatives, not for speed.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def cosine_cutoff(r: torch.Tensor, rc: torch.Tensor) -> torch.Tensor:
    """``0.5 (cos(pi r / rc) + 1)`` for ``r < rc``, else 0."""
    return torch.where(r < rc, 0.5 * (torch.cos(math.pi * r / rc) + 1.0), torch.zeros_like(r))


def triplets(i: torch.Tensor, n_centers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All unordered pairs {p, q} of pair indices with the same centre, as two index tensors.

    ``i`` is the centre of every pair (any order). Each unordered pair of neighbour entries
    appears once, with p before q in the order of a stable sort by centre.
    """
    order = torch.argsort(i, stable=True)
    centre = i[order]
    counts = torch.bincount(centre, minlength=n_centers)
    ends = torch.cumsum(counts, 0)[centre]  # one past the last pair of this pair's centre
    position = torch.arange(len(order), device=i.device)
    n_after = ends - 1 - position
    first = torch.repeat_interleave(position, n_after)
    start = torch.repeat_interleave(torch.cumsum(n_after, 0) - n_after, n_after)
    second = first + 1 + (torch.arange(len(first), device=i.device) - start)
    return order[first], order[second]


def symmetry_functions(
    table: np.ndarray | torch.Tensor,
    species: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    D: torch.Tensor,
    n_centers: int,
) -> torch.Tensor:
    """G (n_centers, n_sf) from pair vectors, differentiable to any order in ``D``.

    Args:
        table: (n_sf, 8) rows ``kind, a, b, eta, rs, zeta, lambda, rc`` (docs/model_file.md).
        species: (n_atoms,) model element index of every atom.
        i, j: (n_pairs,) centre and neighbour of every pair; pairs beyond the cutoffs are ignored.
        D: (n_pairs, 3) pair vectors ``x_j - x_i`` in Angstrom; its dtype and device are used.
        n_centers: number of centres (atoms 0 .. n_centers-1).
    """
    if isinstance(table, np.ndarray):
        table = np.array(table)  # a writable copy: torch warns on read-only arrays
    table = torch.as_tensor(table, dtype=D.dtype, device=D.device)
    species, i, j = (torch.as_tensor(x, dtype=torch.long, device=D.device) for x in (species, i, j))
    kind, a, b = table[:, 0].long(), table[:, 1].long(), table[:, 2].long()
    eta, rs, zeta, lam, rc = table[:, 3], table[:, 4], table[:, 5], table[:, 6], table[:, 7]
    r = torch.linalg.vector_norm(D, dim=1)
    z = species[j]
    columns, blocks = [], []

    radial = kind == 2
    for element in torch.unique(a[radial]).tolist():
        rows = torch.nonzero(radial & (a == element)).flatten()
        sel = torch.nonzero((z == element) & (r < rc[rows].max())).flatten()
        x = r[sel, None]
        terms = torch.exp(-eta[rows] * (x - rs[rows]) ** 2) * cosine_cutoff(x, rc[rows])
        blocks.append(D.new_zeros(n_centers, len(rows)).index_add(0, i[sel], terms))
        columns.append(rows)

    angular = kind != 2
    if angular.any():
        inside = torch.nonzero(r < rc[angular].max()).flatten()
        p, q = triplets(i[inside], n_centers)
        p, q = inside[p], inside[q]
        pair_types = torch.stack([torch.minimum(a, b), torch.maximum(a, b)], 1)
        for ea, eb in torch.unique(pair_types[angular], dim=0).tolist():
            rows = torch.nonzero(angular & (pair_types[:, 0] == ea) & (pair_types[:, 1] == eb)).flatten()
            zp, zq = z[p], z[q]
            sel = torch.nonzero(((zp == ea) & (zq == eb)) | ((zp == eb) & (zq == ea))).flatten()
            ps, qs = p[sel], q[sel]
            d_ij, d_ik = D[ps], D[qs]
            r_ij, r_ik = r[ps, None], r[qs, None]
            r_jk = torch.linalg.vector_norm(d_ik - d_ij, dim=1)[:, None]
            cos = (d_ij * d_ik).sum(1)[:, None] / (r_ij * r_ik)
            g4 = kind[rows] == 4
            cut = rc[rows]
            shape = 2.0 ** (1.0 - zeta[rows]) * (1.0 + lam[rows] * cos).clamp_min(0.0) ** zeta[rows]
            r2 = r_ij**2 + r_ik**2 + torch.where(g4, r_jk**2, torch.zeros_like(r_jk))
            fc = cosine_cutoff(r_ij, cut) * cosine_cutoff(r_ik, cut)
            fc = fc * torch.where(g4, cosine_cutoff(r_jk, cut), torch.ones_like(r_jk))
            terms = shape * torch.exp(-eta[rows] * r2) * fc
            blocks.append(D.new_zeros(n_centers, len(rows)).index_add(0, i[ps], terms))
            columns.append(rows)

    order = torch.cat(columns)
    G = torch.cat(blocks, dim=1)
    return G[:, torch.argsort(order)]
