"""Differentiable bridge from the C++ symmetry functions to torch, for training on forces.

A BP-NN gives ``dE/dG`` by autograd; :func:`pair_gradients` turns it into ``dE/dD_ij`` with the
C++ vector-Jacobian product, and its backward is the C++ Jacobian-vector product. A force loss
therefore reaches the network weights through ``dE/dG`` (double backward of the network only)
and never needs second derivatives of the descriptors. The pair vectors are constants here:
for derivatives with respect to positions beyond forces, use
:mod:`mlipbias.descriptors.torch_reference`.

Pair gradients ``g_ij = dE/dD_ij`` (eV/A) with ``D_ij = x_j - x_i`` give
``F_i = sum_j g_ij - sum_k g_ki`` (:func:`atom_forces`) and the virial
``W = -sum_ij D_ij (x) g_ij`` (:func:`virial`, eV; stress = -W / V).
"""

from __future__ import annotations

import numpy as np
import torch

from mlipbias.descriptors.symmetry_functions import NeighbourData, SymmetryFunctions


def _to_numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu", torch.float64).numpy())


class _PairGradients(torch.autograd.Function):
    """dE/dG -> dE/dD (C++ vjp); backward: the C++ jvp."""

    @staticmethod
    def forward(ctx, dEdG, sf, neighbours):
        ctx.sf, ctx.neighbours = sf, neighbours
        return torch.from_numpy(sf.vjp(neighbours, _to_numpy(dEdG))).to(dEdG)

    @staticmethod
    def backward(ctx, grad):
        return _DescriptorTangents.apply(grad, ctx.sf, ctx.neighbours), None, None


class _DescriptorTangents(torch.autograd.Function):
    """Pair tangents t -> dG (C++ jvp); backward: the C++ vjp, so any order is differentiable."""

    @staticmethod
    def forward(ctx, t, sf, neighbours):
        ctx.sf, ctx.neighbours = sf, neighbours
        return torch.from_numpy(sf.jvp(neighbours, _to_numpy(t))).to(t)

    @staticmethod
    def backward(ctx, grad):
        return _PairGradients.apply(grad, ctx.sf, ctx.neighbours), None, None


def pair_gradients(dEdG: torch.Tensor, sf: SymmetryFunctions, neighbours: NeighbourData) -> torch.Tensor:
    """``dE/dD_ij`` (n_pairs, 3) from ``dE/dG`` (n_atoms, n_sf), differentiable in ``dEdG``.

    A leading axis of right-hand sides, (n_rhs, n_atoms, n_sf) -> (n_rhs, n_pairs, 3), shares
    one pass over the triplets (e.g. energy and uncertainty gradients). The C++ core runs on
    the CPU in float64; the result comes back with the dtype and device of ``dEdG``.
    """
    expected = (neighbours.n_atoms, sf.n_sf)
    if dEdG.dim() not in (2, 3) or tuple(dEdG.shape[-2:]) != expected:
        raise ValueError(
            f"dEdG must have shape (n_atoms, n_sf) = {expected} or (n_rhs, ...), got {tuple(dEdG.shape)}"
        )
    return _PairGradients.apply(dEdG, sf, neighbours)


def descriptor_tangents(t: torch.Tensor, sf: SymmetryFunctions, neighbours: NeighbourData) -> torch.Tensor:
    """``dG`` (n_atoms, n_sf) = sum_j dG_i/dD_ij . t_ij from pair tangents t (n_pairs, 3).

    The adjoint of :func:`pair_gradients` (a leading n_rhs axis is allowed), differentiable in ``t``.
    """
    expected = (neighbours.n_pairs, 3)
    if t.dim() not in (2, 3) or tuple(t.shape[-2:]) != expected:
        raise ValueError(f"t must have shape (n_pairs, 3) = {expected} or (n_rhs, ...), got {tuple(t.shape)}")
    return _DescriptorTangents.apply(t, sf, neighbours)


def atom_forces(pair_grads: torch.Tensor, i, j, n_atoms: int) -> torch.Tensor:
    """Forces ``-dE/dx`` (n_atoms, 3) from pair gradients ``dE/dD_ij`` (n_pairs, 3).

    Since ``D_ij = x_j - x_i``, pair p adds ``+g_p`` to the force on ``i`` and ``-g_p`` to the
    force on ``j``. Leading axes of ``pair_grads`` (right-hand sides) are kept.
    """
    i = torch.as_tensor(i, dtype=torch.long, device=pair_grads.device)
    j = torch.as_tensor(j, dtype=torch.long, device=pair_grads.device)
    shape = (*pair_grads.shape[:-2], n_atoms, 3)
    zeros = pair_grads.new_zeros(shape)
    return zeros.index_add(-2, i, pair_grads) - zeros.index_add(-2, j, pair_grads)


def virial(pair_grads: torch.Tensor, D, pair_structure=None, n_structures: int | None = None) -> torch.Tensor:
    """Virial ``W = -sum_p D_p (x) g_p`` (eV): (3, 3), or (n_structures, 3, 3) for a batch.

    ``W[a, b] = -sum_p D_p[a] g_p[b]``; the stress is ``-W / V`` (ASE's sign, eV/A^3). For a
    batch pass ``pair_structure`` (n_pairs,) (``NeighbourData.pair_structure``) and
    ``n_structures``. Leading axes of ``pair_grads`` are kept.
    """
    D = torch.as_tensor(D, dtype=pair_grads.dtype, device=pair_grads.device)
    terms = -D[:, :, None] * pair_grads[..., :, None, :]  # (..., n_pairs, 3, 3)
    if pair_structure is None:
        return terms.sum(-3)
    if n_structures is None:
        raise ValueError("virial: pass n_structures together with pair_structure")
    index = torch.as_tensor(pair_structure, dtype=torch.long, device=pair_grads.device)
    shape = (*pair_grads.shape[:-2], n_structures, 3, 3)
    return pair_grads.new_zeros(shape).index_add(-3, index, terms)
