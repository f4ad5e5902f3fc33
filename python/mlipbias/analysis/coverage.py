"""Coverage of a bounded collective-variable (CV) space by weighted recursive partitioning.

Seed 002 (Methods, "Coverage of collective variable space") scores how well a method explores
a bounded d-dimensional CV space with a complete tree: the root is the whole box; every node
splits each of its d sides into ``num_splits`` equal parts, so it has num_splits^d children
(a quadtree for num_splits = 2, d = 2); the tree has ``depth`` levels below the root. A node at
level l (1..depth) weighs 1 / num_splits^(d l), so every level weighs 1 in total; a point adds
the weight of every node on its root-to-leaf path that no earlier point visited, and revisits
add nothing. Coverage is the collected weight divided by its maximum, ``depth``: it is in
[0, 1], rewards reaching large unexplored regions first and penalises staying in one region.

Seed 002 applies it to the dihedrals (phi, psi) of alanine dipeptide on [-pi, pi]^2. The text of
the paper available here lost the numeric values of its hyper-parameters; our defaults,
``num_splits=2`` and ``depth=6`` (4,096 leaves of 0.098 x 0.098 rad^2), are our choice, not
the paper's. Cells are half-open [lo, hi) except the last, which includes the upper bound.
"""

from __future__ import annotations

import numpy as np

DEFAULT_NUM_SPLITS = 2
DEFAULT_DEPTH = 6
DIHEDRAL_BOUNDS = ((-np.pi, np.pi), (-np.pi, np.pi))


def _check(points, bounds, num_splits, depth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.asarray(points, dtype=float)
    if p.ndim == 1:
        p = p[:, None]
    b = np.asarray(bounds, dtype=float)
    if b.ndim != 2 or b.shape[1] != 2 or np.any(b[:, 1] <= b[:, 0]):
        raise ValueError(
            f"bounds must be a list of (low, high) with high > low per dimension, got {bounds!r}"
        )
    if p.ndim != 2 or p.shape[1] != len(b):
        raise ValueError(f"points {p.shape} must be (n, {len(b)}) for {len(b)}-dimensional bounds")
    if int(num_splits) != num_splits or num_splits < 2:
        raise ValueError(f"num_splits must be an integer >= 2, got {num_splits}")
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth}")
    if not np.all(np.isfinite(p)):
        raise ValueError("points contain NaN or infinite values")
    outside = np.flatnonzero(np.any((p < b[:, 0]) | (p > b[:, 1]), axis=1))
    if outside.size:
        raise ValueError(
            f"{outside.size} point(s) lie outside the bounds; the first: point {outside[0]} = {p[outside[0]]}"
        )
    return p, b[:, 0], b[:, 1]


def coverage_curve(
    points, bounds=DIHEDRAL_BOUNDS, num_splits: int = DEFAULT_NUM_SPLITS, depth: int = DEFAULT_DEPTH
) -> np.ndarray:
    """Coverage after each of the points, in their order (n,): non-decreasing, in [0, 1].

    ``points`` (n, d) in CV units, ``bounds`` one (low, high) per dimension. The last value is
    :func:`coverage` of all points; plotted against MD time or dataset size it is seed 002's
    Figs. 3a and 4a.
    """
    p, low, high = _check(points, bounds, num_splits, depth)
    n, d = p.shape
    gained = np.zeros(n)
    unit = (p - low) / (high - low)  # in [0, 1]
    for level in range(1, depth + 1):
        cells_per_side = num_splits**level
        index = np.minimum(np.floor(unit * cells_per_side).astype(np.int64), cells_per_side - 1)
        flat = np.ravel_multi_index(index.T, (cells_per_side,) * d) if n else np.zeros(0, np.int64)
        _, first = np.unique(flat, return_index=True)
        gained[first] += 1.0 / float(cells_per_side) ** d
    return np.cumsum(gained) / depth


def coverage(
    points, bounds=DIHEDRAL_BOUNDS, num_splits: int = DEFAULT_NUM_SPLITS, depth: int = DEFAULT_DEPTH
) -> float:
    """Coverage in [0, 1] of the CV space by a set of points (see the module docstring)."""
    curve = coverage_curve(points, bounds, num_splits, depth)
    return float(curve[-1]) if curve.size else 0.0
