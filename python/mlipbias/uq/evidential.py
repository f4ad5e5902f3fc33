"""Deep evidential regression (Tan et al. 2023; Amini et al., NeurIPS 2020).

The head of each element has six outputs per atom (``model/head = "evidential"``), three for the
energy and three for the forces, turned into Normal-Inverse-Gamma parameters with the member's units
``c = member/0/head_scale`` (c_2 = s^2 in eV^2 and c_5 = mean square training force component in
(eV/A)^2; the others are 1):

    forces (per atom i):  nu_i = softplus(raw_i3),  alpha_i = 1 + softplus(raw_i4),
                          beta_i = c_5 softplus(raw_i5)
    energy (per structure, from its atoms):
                          nu_E = mean_i softplus(raw_i0),  alpha_E = 1 + mean_i softplus(raw_i1),
                          beta_E = c_2 sum_i softplus(raw_i2)    (beta is extensive, like a variance)

The uncertainty is the epistemic standard deviation, ``sqrt(Var[mu]) = sqrt(beta / (nu (alpha - 1)))``
(Tan et al. 2023, Eq. 9): U for the total energy (eV), U_i per force component (eV/A). The aleatoric part
``E[sigma^2] = beta / (alpha - 1)`` (Eq. 8) is :func:`aleatoric_variance`.

Training adds the NIG negative log-likelihood with the evidence regulariser (Tan et al. 2023, SI Eq. 6-8,
lambda = 0.2 by default) of the residuals, for the energy per structure and for each force
component; as for :mod:`mlipbias.uq.mve`, ``head_training`` decides whether the force residuals keep
their graph (``joint``, Tan et al. 2023) or are detached (``detached``, ``post_hoc``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

N_OUTPUTS = 6
ENERGY_OUTPUTS = 3  # nu_E, alpha_E, beta_E; then the forces' three
DEFAULT_REGULARIZATION = 0.2
_TINY = 1e-12


def parameters_force(raw, head_scale) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(nu, alpha, beta) of every atom's forces, each (n_atoms,)."""
    return (
        F.softplus(raw[..., 3]) + _TINY,
        1.0 + F.softplus(raw[..., 4]) + _TINY,
        head_scale[5] * F.softplus(raw[..., 5]) + _TINY,
    )


def parameters_energy(raw, head_scale, structure, n_structures):
    """(nu_E, alpha_E, beta_E) of every structure's total energy, each (n_structures,)."""
    zeros = raw.new_zeros(n_structures)
    counts = zeros.index_add(0, structure, torch.ones_like(raw[..., 0]))
    nu = zeros.index_add(0, structure, F.softplus(raw[..., 0])) / counts + _TINY
    alpha = 1.0 + zeros.index_add(0, structure, F.softplus(raw[..., 1])) / counts + _TINY
    beta = head_scale[2] * zeros.index_add(0, structure, F.softplus(raw[..., 2])) + _TINY
    return nu, alpha, beta


def epistemic_std(nu, alpha, beta) -> torch.Tensor:
    """sqrt(beta / (nu (alpha - 1)))."""
    return torch.sqrt(beta / (nu * (alpha - 1.0)))


def aleatoric_variance(alpha, beta) -> torch.Tensor:
    """E[sigma^2] = beta / (alpha - 1)."""
    return beta / (alpha - 1.0)


def energy_uncertainty(raw, head_scale, structure, n_structures) -> torch.Tensor:
    return epistemic_std(*parameters_energy(raw, head_scale, structure, n_structures))


def atom_uncertainty(raw, head_scale) -> torch.Tensor:
    return epistemic_std(*parameters_force(raw, head_scale))


def nig_nll(residual, nu, alpha, beta, regularization: float = DEFAULT_REGULARIZATION) -> torch.Tensor:
    """Elementwise NIG negative log-likelihood plus ``regularization |r| (2 nu + alpha)``."""
    omega = 2.0 * beta * (1.0 + nu)
    nll = (
        0.5 * torch.log(math.pi / nu)
        - alpha * torch.log(omega)
        + (alpha + 0.5) * torch.log(nu * residual**2 + omega)
        + torch.lgamma(alpha)
        - torch.lgamma(alpha + 0.5)
    )
    return nll + regularization * residual.abs() * (2.0 * nu + alpha)


def loss(
    raw,
    head_scale,
    structure,
    n_structures,
    energy_residual,
    force_residual=None,
    regularization: float = DEFAULT_REGULARIZATION,
) -> torch.Tensor:
    """Mean NIG loss of the energy residuals per structure plus that per force component
    (``energy_residual`` None: the force term alone, Tan et al.'s SI Eq. 6-8)."""
    if energy_residual is None and force_residual is None:
        raise ValueError("the evidential loss needs energy or force residuals")
    value = 0.0
    if energy_residual is not None:
        nu, alpha, beta = parameters_energy(raw, head_scale, structure, n_structures)
        value = nig_nll(energy_residual, nu, alpha, beta, regularization).mean()
    if force_residual is not None:
        nu, alpha, beta = parameters_force(raw, head_scale)
        value = (
            value + nig_nll(force_residual, nu[:, None], alpha[:, None], beta[:, None], regularization).mean()
        )
    return value


def initial_scales(energy_scale: float, mean_square_force: float) -> list[float]:
    """Units of the six outputs: s^2 for beta_E, the mean square force component for beta_F."""
    return [1.0, 1.0, energy_scale**2, 1.0, 1.0, mean_square_force]
