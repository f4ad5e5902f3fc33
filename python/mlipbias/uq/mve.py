"""Mean-variance estimation (Tan et al. 2023, "MVE"): a softplus variance head trained by Gaussian NLL.

The network of each element has a head with two outputs per atom, ``raw = W_head h_(L-1) + b_head``
(records ``member/0/El/head_W`` [2, H], ``head_b`` [2], ``model/head = "mve"``), and the member has
two variance units ``c = member/0/head_scale`` (set at training to s^2, the squared output scale in
eV^2, and to the mean square training force component in (eV/A)^2):

    v_i^E = c_0 softplus(raw_i0)      atomic contribution to the energy variance (eV^2)
    v_i^F = c_1 softplus(raw_i1)      variance of each force component of atom i ((eV/A)^2)

    U   = sqrt( sum_i v_i^E )         energy standard deviation (eV; atomic variances add up)
    U_i = sqrt( v_i^F )               force standard deviation per component (eV/A)

Training adds the Gaussian negative log-likelihood of the residuals to the usual loss:
``NLL_E = 1/2 [log(2 pi U^2) + (E - E_ref)^2 / U^2]`` per structure and ``NLL_F`` per force
component. What the NLL trains is the caller's choice (``uncertainty.head_training``): with
``joint`` (Tan et al. 2023, SI Eq. 3-4; Nix & Weigend 1994) the force residuals keep their graph, so the
force NLL trains the mean network as well as the heads; with ``detached`` and ``post_hoc`` the
residuals and the heads' input are detached and the NLL trains the heads only. :func:`loss` uses
the residuals as given.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mlipbias.uq import evidential

N_OUTPUTS = 2
ENERGY_OUTPUTS = 1  # the first output is the energy variance's, the rest the forces'
MIN_VARIANCE = 1e-12  # floor of every variance, (eV or eV/A)^2


def head_outputs(apply, h: torch.Tensor, detach, head: str) -> torch.Tensor:
    """Raw head outputs ``apply(h)`` with ``detach`` False (every output trains the network below),
    True (none does) or ``"energy"``: the energy outputs (the first ``ENERGY_OUTPUTS`` of the
    ``head`` module) see a detached ``h``, so only the force NLL reaches the mean network.

    ``"energy"`` is the ``joint`` training: seed 003's published loss has no energy NLL (SI Eqs. 2-9:
    MAE on energies, NLL on forces); the energy-variance output, which mlipbias adds for U, would
    otherwise steer the shared features with gradients ~ r^2/v^2 that grow as the energy drifts
    (measured: the joint training diverged in 2-4 epochs, docs/models.md)."""
    if detach is True:
        return apply(h.detach())
    raw = apply(h)
    if detach is False:
        return raw
    if detach != "energy":
        raise ValueError(f"detach_head must be True, False or 'energy', got {detach!r}")
    k = ENERGY_OUTPUTS if head == "mve" else evidential.ENERGY_OUTPUTS
    return torch.cat([apply(h.detach())[..., :k], raw[..., k:]], dim=-1)


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y (y > 0)."""
    return y + math.log(-math.expm1(-y))


def variances(raw: torch.Tensor, head_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-atom energy and force variances from raw head outputs (n_atoms, 2) and the units (2,)."""
    return (
        head_scale[0] * F.softplus(raw[..., 0]) + MIN_VARIANCE,
        head_scale[1] * F.softplus(raw[..., 1]) + MIN_VARIANCE,
    )


def energy_variance(raw, head_scale, structure, n_structures) -> torch.Tensor:
    """(n_structures,) total-energy variance ``sum_i v_i^E`` (eV^2)."""
    v_energy, _ = variances(raw, head_scale)
    return v_energy.new_zeros(n_structures).index_add(0, structure, v_energy)


def energy_uncertainty(raw, head_scale, structure, n_structures) -> torch.Tensor:
    """(n_structures,) U = sqrt(sum_i v_i^E) (eV)."""
    return torch.sqrt(energy_variance(raw, head_scale, structure, n_structures))


def atom_uncertainty(raw, head_scale) -> torch.Tensor:
    """(n_atoms,) U_i = sqrt(v_i^F) (eV/A)."""
    return torch.sqrt(variances(raw, head_scale)[1])


def gaussian_nll(residual: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """Elementwise ``1/2 [log(2 pi v) + r^2 / v]``."""
    return 0.5 * (torch.log(2 * math.pi * variance) + residual**2 / variance)


def loss(
    raw, head_scale, structure, n_structures, energy_residual, force_residual=None, beta: float = 0.0
) -> torch.Tensor:
    """Mean NLL of the total-energy residuals per structure plus the mean NLL per force component
    (``energy_residual`` None: the force term alone, Tan et al.'s SI Eq. 3).

    ``beta > 0`` weights each force component's NLL by ``stop_gradient(v / c_1)^beta``, Seitzer et
    al.'s beta-NLL (ICLR 2022) in the force variance's unit ``c_1`` (weight 1 at the initial
    variance): the NLL's gradient on the mean, ``r / v``, becomes ``~ r / v^(1 - beta)``, so residuals
    the variance has absorbed keep training the mean (beta = 1: the MSE's gradient). beta = 0 is
    the Gaussian NLL itself (Nix & Weigend 1994; Tan et al. 2023, SI Eq. 3)."""
    if energy_residual is None and force_residual is None:
        raise ValueError("the MVE loss needs energy or force residuals")
    value = 0.0
    if energy_residual is not None:
        variance = energy_variance(raw, head_scale, structure, n_structures)
        value = gaussian_nll(energy_residual, variance).mean()
    if force_residual is not None:
        v_force = variances(raw, head_scale)[1][:, None]
        nll = gaussian_nll(force_residual, v_force)
        if beta:
            nll = nll * (v_force.detach() / head_scale[1].detach()) ** beta
        value = value + nll.mean()
    return value


def initial_scales(energy_scale: float, mean_square_force: float) -> list[float]:
    """Variance units: s^2 for the energy, the mean square force component for the forces."""
    return [energy_scale**2, mean_square_force]
