"""Small untrained GM-NN models shared by the GM-NN tests (torch, C++ and LAMMPS).

Tiny (3 radial functions, 4 Gaussians, narrow networks, 4.5 A cutoff) but complete: non-trivial
biases, scales and shifts, and with ``write_gm_model`` sketched gradient features fitted on a few
quartz cells and calibration factors, saved as ``mlipbias train`` saves them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from model_fixtures import quartz

from mlipbias.descriptors.gaussian_moments import GaussianMoments
from mlipbias.models.gmnn import GMNN

METHODS = ("ensemble", "posterior", "distance")


def small_gm(cutoff=4.5, n_radial=3, n_basis=4, elements=("Si", "O")) -> GaussianMoments:
    return GaussianMoments(list(elements), cutoff, n_basis=n_basis, n_radial=n_radial)


def random_gmnn(descriptor, n_members=2, hidden=(10, 7), seed=0, head=None) -> GMNN:
    """An untrained GM-NN with non-trivial biases, scales and shifts."""
    net = GMNN(descriptor, hidden, n_members, head=head, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in net.weights.items():
            if name[0] == "b" or name in ("element_scale", "energy_shift", "head_b"):
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        net.energy_scale[:] = 0.2 + torch.rand(n_members, generator=gen, dtype=torch.float64)
    return net


def write_gm_model(path: Path, *, n_members: int = 3, methods=METHODS, seed: int = 0) -> Path:
    """An untrained GM-NN file with the requested uncertainty methods and calibration factors."""
    from mlipbias.models import AtomsData, MLIPModel, save_model
    from mlipbias.models.training import network_features
    from mlipbias.uq.gradient_features import GradientFeatures

    descriptor = small_gm()
    data = AtomsData([quartz(100 + k) for k in range(4)], descriptor, labels=False)
    net = random_gmnn(descriptor, n_members=n_members, seed=seed)
    model = MLIPModel(net)
    if "posterior" in methods or "distance" in methods:
        gradient = GradientFeatures.random(net, 4, seed=seed, lam=1e-2)
        net.scale_sketch(gradient)
        phi = network_features(net, data, sketch=gradient.sketch(net.energy_scale))
        structure = np.repeat(np.arange(len(data)), data.n_atoms)
        model.gradient = gradient.fit(phi, structure, data.n_atoms, 20)
    model.calibration = {"calibration/alpha": np.array([0.1])}
    for k, method in enumerate(methods):
        model.calibration[f"calibration/energy/{method}"] = np.array([1.3 + 0.2 * k])
        model.calibration[f"calibration/force/{method}"] = np.array([0.7 + 0.3 * k])
    model.methods = tuple(methods)
    return save_model(model, path)
