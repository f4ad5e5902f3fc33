"""Backbone dihedral angles, the collective variables of alanine dipeptide (seed 002, Fig. 3)."""

from __future__ import annotations

import numpy as np

#: Atom indices (0-based) of phi = C(ACE)-N-CA-C and psi = N-CA-C-N(NME) in the shipped
#: alanine dipeptide (:func:`mlipbias.potentials.openmm_ff.alanine_dipeptide`, PDB order).
ALANINE_DIPEPTIDE_PHI = (4, 6, 8, 10)
ALANINE_DIPEPTIDE_PSI = (6, 8, 10, 16)


def dihedral(positions, indices) -> np.ndarray:
    """Dihedral angle i-j-k-l in radians, in [-pi, pi], for positions (N, 3) or frames (T, N, 3).

    IUPAC sign convention (clockwise looking along j -> k is positive), the convention of ASE's
    ``Atoms.get_dihedral`` modulo 2 pi. Positions are taken as given (unwrap periodic images first).
    """
    x = np.asarray(positions, dtype=float)
    single = x.ndim == 2
    if single:
        x = x[None]
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"positions must be (N, 3) or (T, N, 3), got {np.shape(positions)}")
    i, j, k, l = (int(a) for a in indices)
    if max(i, j, k, l) >= x.shape[1] or min(i, j, k, l) < 0:
        raise ValueError(f"dihedral indices {tuple(indices)} out of range for {x.shape[1]} atoms")
    b0 = x[:, i] - x[:, j]
    b1 = x[:, k] - x[:, j]
    b2 = x[:, l] - x[:, k]
    b1 = b1 / np.linalg.norm(b1, axis=1, keepdims=True)
    v = b0 - np.sum(b0 * b1, axis=1, keepdims=True) * b1
    w = b2 - np.sum(b2 * b1, axis=1, keepdims=True) * b1
    angle = np.arctan2(np.sum(np.cross(b1, v) * w, axis=1), np.sum(v * w, axis=1))
    return angle[0] if single else angle


def alanine_dipeptide_dihedrals(
    positions, phi=ALANINE_DIPEPTIDE_PHI, psi=ALANINE_DIPEPTIDE_PSI
) -> np.ndarray:
    """(phi, psi) in radians: shape (2,) for one structure (N, 3), (T, 2) for frames (T, N, 3).

    ``positions`` may also be an ase.Atoms or a list of them. The default indices are those of
    the shipped PDB; give ``phi``/``psi`` (four indices each) for another atom order.
    """
    if hasattr(positions, "get_positions"):
        positions = positions.get_positions()
    elif isinstance(positions, (list, tuple)) and positions and hasattr(positions[0], "get_positions"):
        positions = np.stack([a.get_positions() for a in positions])
    angles = np.stack([dihedral(positions, phi), dihedral(positions, psi)], axis=-1)
    return angles
