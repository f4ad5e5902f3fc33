"""One small interface for adversarial sampling: energy, uncertainty and their derivatives.

An *adversary* is a callable ``adversary(atoms) -> EnergyUncertainty``. :func:`as_adversary` builds
one from a PaiNN model (:class:`mlipbias.models.painn.PaiNNModel`, seed 003's uncertainties), a
BP-NN (:class:`mlipbias.models.MLIPModel`, any method with a gradient) or a list of seed-001 GNNs
(:class:`mlipbias.models.gnn.GNN`, seed 003's ensemble force variance, Eq. 5). Anything else that
returns :class:`EnergyUncertainty` works too.

Strain derivatives are taken for the deformation ``x -> x (1 + eta)``, ``cell -> cell (1 + eta)``
(positions and cell vectors as rows) at eta = 0: ``dE/deta = V stress`` (ASE's sign).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms


@dataclass
class EnergyUncertainty:
    """Energy E (eV) and uncertainty U of one structure with their gradients: ``energy_gradient``
    dE/dx (n, 3) eV/A, ``uncertainty_gradient`` dU/dx (n, 3), and (periodic cells) ``energy_strain``
    dE/deta (3, 3) eV and ``uncertainty_strain`` dU/deta (3, 3)."""

    energy: float
    uncertainty: float
    energy_gradient: np.ndarray
    uncertainty_gradient: np.ndarray
    energy_strain: np.ndarray | None = None
    uncertainty_strain: np.ndarray | None = None


Adversary = Callable[[Atoms], EnergyUncertainty]


class PaiNNAdversary:
    """Seed 003's uncertainty of a PaiNN model: ensemble sigma_F^2, MVE sigma_F^2, evidential Var[mu_F]
    or the GMM NLL, each the mean over atoms (:mod:`mlipbias.models.painn`), uncalibrated as seed 003's
    Eq. 15 uses it (a GMM's calibrated variance would be flat, with no gradient, near the training data)."""

    def __init__(self, model, method: str | None = None):
        self.model = model.eval()
        self.method = method or model.default_method
        if self.method is None:
            raise ValueError("adversarial sampling needs an uncertainty method; this PaiNN model has none")
        model.check_method(self.method)

    def __call__(self, atoms: Atoms) -> EnergyUncertainty:
        graph = self.model.graph(atoms)
        out = self.model.evaluate(graph, self.method, forces=True, gradient=True, calibrated=False)
        return EnergyUncertainty(
            energy=float(out.energy[0]),
            uncertainty=float(out.uncertainty[0]),
            energy_gradient=-out.forces.cpu().numpy(),
            uncertainty_gradient=out.uncertainty_gradient.cpu().numpy(),
            energy_strain=out.energy_strain[0].cpu().numpy(),
            uncertainty_strain=out.uncertainty_strain[0].cpu().numpy(),
        )


class MLIPAdversary:
    """A BP-NN's uncertainty U (eV, the standard deviation of the total energy, ``docs/models.md``) of
    any method with a gradient."""

    def __init__(self, model, method: str | None = None):
        self.model = model
        self.method = method or model.default_method
        if self.method is None:
            raise ValueError("adversarial sampling needs an uncertainty method; this model has none")
        if self.method not in model.methods:
            raise ValueError(
                f"uncertainty {self.method!r} is not in this model's methods {list(model.methods)}"
            )

    def __call__(self, atoms: Atoms) -> EnergyUncertainty:
        data = self.model.prepare([atoms], labels=False, progress=False)
        p = self.model.evaluate(data.batch([0], self.model.device), self.method, forces=True, gradient=True)
        return EnergyUncertainty(
            energy=float(p.energy[0]),
            uncertainty=float(p.uncertainty[0]),
            energy_gradient=-p.forces,
            uncertainty_gradient=p.uncertainty_gradient,
            # W = -sum r (x) dE/dr, so dE/deta = -W; the uncertainty virial is +sum r (x) dU/dr.
            energy_strain=-p.virial[0],
            uncertainty_strain=p.uncertainty_virial[0],
        )


class GNNEnsembleAdversary:
    """Seed 003's ensemble uncertainty (Eq. 5) of seed-001 GNNs: U = 1/(M-1) sum_m mean over the 3n
    components of (F_m - mean F)^2 in (eV/A)^2; the energy is the members' mean."""

    def __init__(self, members: Sequence):
        self.members = list(members)
        if len(self.members) < 2:
            raise ValueError(f"a GNN ensemble needs at least 2 members, got {len(self.members)}")
        if len({tuple(m.elements) for m in self.members}) != 1:
            raise ValueError("the GNN ensemble's members must know the same elements")

    def __call__(self, atoms: Atoms) -> EnergyUncertainty:
        import torch

        first = self.members[0]
        graph = first.graph(atoms)
        with torch.enable_grad():
            # One leaf for all members: the edge vectors r_ij (as the GNN computes its forces).
            vectors = first.edge_vectors(graph, graph.positions).detach().requires_grad_(True)
            energies, forces = [], []
            for member in self.members:
                energy = member.atomic_energies(graph, vectors).sum()
                (g,) = torch.autograd.grad(energy, vectors, create_graph=True)
                energies.append(energy)
                forces.append(_atom_gradient(graph, g, len(atoms)).neg())
            forces = torch.stack(forces)
            energy = torch.stack(energies).mean()
            U = ((forces - forces.mean(dim=0)) ** 2).mean(dim=(1, 2)).sum() / (len(self.members) - 1)
            g_e = torch.autograd.grad(energy, vectors, retain_graph=True)[0]
            g_u = torch.autograd.grad(U, vectors)[0]
        return EnergyUncertainty(
            energy=float(energy.detach()),
            uncertainty=float(U.detach()),
            energy_gradient=_atom_gradient(graph, g_e, len(atoms)).detach().numpy(),
            uncertainty_gradient=_atom_gradient(graph, g_u, len(atoms)).detach().numpy(),
            energy_strain=(vectors.T @ g_e).detach().numpy(),
            uncertainty_strain=(vectors.T @ g_u).detach().numpy(),
        )


def _atom_gradient(graph, g, n_atoms: int):
    """d(.)/dx from d(.)/dr_ij with r_ij = x_j - x_i (edge i -> j)."""
    import torch

    zeros = torch.zeros((n_atoms, 3), dtype=g.dtype, device=g.device)
    return zeros.index_add(0, graph.receivers, g).index_add(0, graph.senders, -g)


def as_adversary(model, method: str | None = None) -> Adversary:
    """An adversary for a PaiNN model, an MLIPModel, a list of GNNs (or a model file path of the first
    two), or ``model`` itself when it is already a callable adversary."""
    from pathlib import Path

    from mlipbias.models import MLIPModel
    from mlipbias.models.gnn import GNN
    from mlipbias.models.painn import PaiNNModel

    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.suffix == ".mlip":
            from mlipbias.models import load_model

            model = load_model(path)
        else:
            from mlipbias.models.painn import load_painn

            model = load_painn(path)
    if isinstance(model, PaiNNModel):
        return PaiNNAdversary(model, method)
    if isinstance(model, MLIPModel):
        return MLIPAdversary(model, method)
    if isinstance(model, (list, tuple)) and model and all(isinstance(m, GNN) for m in model):
        if method not in (None, "ensemble"):
            raise ValueError(f"a GNN ensemble has the ensemble uncertainty only, not {method!r}")
        return GNNEnsembleAdversary(model)
    if callable(model) and not isinstance(model, type):
        return model
    raise ValueError(
        f"cannot sample adversarially with {type(model).__name__}: give a PaiNN model, an MLIPModel, "
        "a list of GNNs, a model file or a callable returning EnergyUncertainty"
    )
