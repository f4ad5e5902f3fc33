"""Neighbor lists: every pair of atoms closer than a cutoff, periodic images included.

:func:`neighbor_list` has the call shape of ``ase.neighborlist.neighbor_list`` and
``matscipy.neighbours.neighbour_list``, and returns the same pairs with the same
conventions and dtypes as ASE; it runs the C++ cell list of ``cpp/neighbors.cpp`` (O(N),
OpenMP threads for large systems, ``OMP_NUM_THREADS`` sets how many).
:func:`neighbor_list_cuda` is the CUDA version for torch tensors on a GPU.

Conventions (units: Angstrom):

* a pair is ``(i, j, S)``: centre ``i``, neighbour ``j``, integer periodic shift ``S``;
  ``D = positions[j] - positions[i] + S @ cell`` points from ``i`` to the image of ``j``,
  and ``d = |D| < cutoff`` (strict);
* the full list has ``(i, j, S)`` and ``(j, i, -S)``; ``half=True`` keeps each pair once
  (``i < j``, or for an atom and its own image the ``S`` whose first non-zero component is
  positive);
* ``(i, i, 0)`` appears only with ``self_interaction=True``; an atom's own periodic images
  ``(i, i, S != 0)`` are ordinary pairs when the cell is smaller than the cutoff;
* pairs are sorted by ``i``; the order of the neighbours of one ``i`` is deterministic
  (independent of the number of threads) but not sorted by ``j``;
* along a non-periodic direction the cell vector is ignored (it may be zero) and ``S`` is
  0; positions need not lie inside the cell.
"""

from __future__ import annotations

import numbers
import threading
from typing import Any

import numpy as np

from mlipbias import _core

QUANTITIES = "ijdDS"
# Default of ``max_neighbors``: the most neighbours one atom may have (``_core`` default,
# cpp/neighbors.hpp). Dense matter at cutoffs of 10-15 A has a few hundred; more means atoms
# on top of each other or positions not in Angstrom, and a search that would run for hours.
# Set it here to change it for every caller (the calculators, descriptors, BKS).
MAX_NEIGHBORS: int = _core.default_max_neighbors


def _system(a: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, cell, pbc) from an ase.Atoms or a (positions, cell, pbc) triple."""
    if hasattr(a, "get_positions") and hasattr(a, "get_pbc") and hasattr(a, "cell"):
        return a.get_positions(), np.asarray(a.cell[:], dtype=np.float64), np.asarray(a.get_pbc(), dtype=bool)
    if isinstance(a, (tuple, list)) and len(a) == 3:
        positions, cell, pbc = a
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim == 1 and positions.size == 0:
            positions = positions.reshape(0, 3)
        cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
        pbc_array = np.asarray(pbc, dtype=bool)
        if pbc_array.ndim == 0:
            pbc_array = np.repeat(pbc_array, 3)
        return positions, cell, pbc_array
    raise ValueError(f"expected an ase.Atoms or a (positions, cell, pbc) triple, got {type(a).__name__}")


def _check_quantities(quantities: str) -> None:
    if not isinstance(quantities, str) or not quantities:
        raise ValueError(f"quantities must be a non-empty string of letters from {QUANTITIES!r}")
    unknown = sorted(set(quantities) - set(QUANTITIES))
    if unknown:
        raise ValueError(
            f"unknown quantities {''.join(unknown)!r} in {quantities!r}: use letters from {QUANTITIES!r} "
            "(i, j: atom indices, d: distance, D: distance vector, S: shift)"
        )


def _check_cutoff(cutoff: Any) -> float:
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real):
        raise ValueError(
            f"cutoff must be one number in Angstrom, got {type(cutoff).__name__}; "
            "per-element or per-atom cutoffs are not supported: use the largest and filter by d"
        )
    return float(cutoff)


def neighbor_list(
    quantities: str,
    a: Any,
    cutoff: float,
    self_interaction: bool = False,
    half: bool = False,
    max_neighbors: int | None = None,
):
    """Neighbor list of an atomic structure, as ``ase.neighborlist.neighbor_list``.

    Args:
        quantities: letters choosing what to return, in that order: ``i`` centre atom
            (int64), ``j`` neighbour atom (int64), ``d`` distance (float64, A), ``D``
            distance vector ``positions[j] - positions[i] + S @ cell`` (float64, (n, 3), A),
            ``S`` periodic shift (int64, (n, 3)).
        a: an ``ase.Atoms``, or a triple ``(positions, cell, pbc)``: positions (n_atoms, 3)
            in A, cell (3, 3) with the lattice vectors as rows (``None`` for no cell), pbc a
            bool or three bools.
        cutoff: one spherical cutoff in A; pairs with ``d < cutoff``.
        self_interaction: also return each atom as its own neighbour (``S = 0``, ``d = 0``).
        half: return each pair once instead of in both directions.
        max_neighbors: the most neighbours one atom may have (None: :data:`MAX_NEIGHBORS`,
            5000; 0: no limit). The search stops at the first atom over it, so a structure far
            denser than matter fails at once instead of counting ~N^2 pairs.

    Returns:
        One array for a one-letter ``quantities``, otherwise a tuple in the order asked.

    Raises:
        ValueError: unknown quantities; positions that are NaN or infinite or of the wrong
            shape; a cutoff that is not a positive finite number; a singular cell along
            periodic directions; a cutoff so large against the cell that the search would
            exceed ``kMaxNeighborSearchBins`` (10^6) bins or images (build a supercell); an
            atom with more than ``max_neighbors`` neighbours (the message gives the numbers).
    """
    _check_quantities(quantities)
    cutoff = _check_cutoff(cutoff)
    positions, cell, pbc = _system(a)
    result = _core.neighbor_list(
        positions,
        cell,
        pbc,
        cutoff,
        self_interaction=bool(self_interaction),
        half=bool(half),
        distances="d" in quantities,
        vectors="D" in quantities,
        shifts="S" in quantities,
        max_neighbors=MAX_NEIGHBORS if max_neighbors is None else int(max_neighbors),
    )
    values = tuple(result[q] for q in quantities)
    return values[0] if len(values) == 1 else values


# One reusable CUDA search (device scratch memory) per device.
_cuda_searches: dict[int, Any] = {}
_cuda_lock = threading.Lock()


def neighbor_list_cuda(
    positions,
    cell,
    pbc,
    cutoff: float,
    half: bool = False,
    self_interaction: bool = False,
    max_neighbors: int | None = None,
):
    """Neighbor list on a CUDA device: torch tensors in, torch tensors out.

    The same pairs, in the same order, as :func:`neighbor_list` (D equal to rounding).

    Args:
        positions: torch CUDA tensor (n_atoms, 3), A; float32 input is converted to float64.
        cell: (3, 3) lattice vectors as rows (a tensor on any device, or array-like), A.
        pbc: a bool or three bools (or a tensor of them).
        cutoff: spherical cutoff in A; pairs with ``d < cutoff``.
        half: each pair once instead of in both directions.
        self_interaction: also list each atom as its own neighbour with ``S = 0``.
        max_neighbors: as for :func:`neighbor_list` (None: :data:`MAX_NEIGHBORS`; 0: no limit); an
            atom over it is the same error, naming the same atom as the CPU search on one thread.

    Returns:
        ``(i, j, S, D)`` on the device of ``positions``: i, j int64 (n_pairs,), S int64
        (n_pairs, 3), D float64 (n_pairs, 3); ``d = D.norm(dim=1)``.

    Raises:
        RuntimeError: no usable CUDA device ("no CUDA device: ...").
        ValueError: positions not a CUDA tensor of shape (n, 3), and the errors of
            :func:`neighbor_list`.
    """
    from mlipbias import gpu

    gpu.require()
    import torch

    if not isinstance(positions, torch.Tensor) or not positions.is_cuda:
        raise ValueError(f"positions must be a torch CUDA tensor, got {type(positions).__name__}")
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {tuple(positions.shape)}")
    cutoff = _check_cutoff(cutoff)
    device = positions.device
    positions = positions.detach().to(torch.float64).contiguous()
    if isinstance(cell, torch.Tensor):
        cell = cell.detach().cpu().numpy()
    if isinstance(pbc, torch.Tensor):
        pbc = pbc.detach().cpu().numpy()
    _, cell_array, pbc_array = _system((np.zeros((0, 3)), cell, pbc))
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(device).cuda_stream
    with _cuda_lock:
        search = _cuda_searches.get(index)
        if search is None:
            search = _cuda_searches[index] = _core.CudaNeighborSearch()
        n_pairs = search.count(
            positions.data_ptr(),
            positions.shape[0],
            cell_array,
            pbc_array,
            cutoff,
            bool(half),
            bool(self_interaction),
            index,
            stream,
            MAX_NEIGHBORS if max_neighbors is None else int(max_neighbors),
        )
        i = torch.empty(n_pairs, dtype=torch.int64, device=device)
        j = torch.empty(n_pairs, dtype=torch.int64, device=device)
        S = torch.empty((n_pairs, 3), dtype=torch.int64, device=device)
        D = torch.empty((n_pairs, 3), dtype=torch.float64, device=device)
        search.fill(i.data_ptr(), j.data_ptr(), S.data_ptr(), D.data_ptr(), 0, 0)
    return i, j, S, D
