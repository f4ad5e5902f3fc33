"""Deep-ensemble uncertainty (Tan et al. 2023, Eq. 4-5; docs/model_file.md "Uncertainties").

For M members with total energies E_m and forces F_im:

    U   = sqrt( sum_m (E_m - Ebar)^2 / (M - 1) )                 (eV, of the total energy)
    U_i = sqrt( sum_m |F_im - Fbar_i|^2 / (3 (M - 1)) )          (eV/A, per force component)

Both are uncalibrated here; the model multiplies them by its conformal factors c_E, c_F. The
energy uncertainty is differentiable (torch), so ``grad_R U`` follows by autograd through the
networks and the descriptor vector-Jacobian product.
"""

from __future__ import annotations

import torch


def _check_members(n_members: int) -> None:
    if n_members < 2:
        raise ValueError(f"the ensemble uncertainty needs at least 2 members, the model has {n_members}")


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not NaN) gradient where x is 0, e.g. for identical members."""
    return torch.sqrt(torch.clamp(x, min=1e-300))


def energy_uncertainty(member_energies: torch.Tensor) -> torch.Tensor:
    """(M, n_structures) member energies -> (n_structures,) standard deviation U (eV)."""
    _check_members(member_energies.shape[0])
    deviation = member_energies - member_energies.mean(dim=0)
    return safe_sqrt((deviation**2).sum(dim=0) / (member_energies.shape[0] - 1))


def atom_uncertainty(member_forces: torch.Tensor) -> torch.Tensor:
    """(M, n_atoms, 3) member forces -> (n_atoms,) per-component standard deviation U_i (eV/A)."""
    _check_members(member_forces.shape[0])
    deviation = member_forces - member_forces.mean(dim=0)
    return safe_sqrt((deviation**2).sum(dim=(0, 2)) / (3 * (member_forces.shape[0] - 1)))
