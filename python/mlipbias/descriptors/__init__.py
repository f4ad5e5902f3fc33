"""Descriptors: atom-centred symmetry functions (C++ core, torch reference, torch bridge).

``SymmetryFunctions``, ``NeighbourData`` and ``Descriptors`` need only numpy; the torch
helpers (``pair_gradients``, ``descriptor_tangents``, ``atom_forces``, ``virial``) import torch
when first used. See ``docs/descriptors.md``.
"""

from __future__ import annotations

from mlipbias.descriptors.from_data import DataDescriptorChoice, symmetry_functions_from_data
from mlipbias.descriptors.symmetry_functions import (
    COLUMNS,
    Descriptors,
    NeighbourData,
    SymmetryFunctions,
)

_TORCH_HELPERS = ("pair_gradients", "descriptor_tangents", "atom_forces", "virial")

__all__ = [
    "COLUMNS",
    "DataDescriptorChoice",
    "Descriptors",
    "NeighbourData",
    "SymmetryFunctions",
    "symmetry_functions_from_data",
    *_TORCH_HELPERS,
]


def __getattr__(name: str):
    if name in _TORCH_HELPERS:
        from mlipbias.descriptors import autograd

        return getattr(autograd, name)
    raise AttributeError(f"module 'mlipbias.descriptors' has no attribute {name!r}")
