"""Small structures, labelled data and untrained models shared by the BP-NN and uncertainty tests.

Everything is tiny (9-atom quartz cells, narrow networks) so that finite differences and training
runs take seconds on a busy 2-core machine.
"""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms

from mlipbias.descriptors import SymmetryFunctions
from mlipbias.models import AtomsData, MLIPModel
from mlipbias.models.network import BPNN
from mlipbias.models.training import network_features
from mlipbias.potentials.bks import BKS
from mlipbias.structures import alpha_quartz
from mlipbias.uq.gmm import GMMUncertainty
from mlipbias.uq.gradient_features import GradientFeatures


def small_descriptor(elements=("Si", "O")) -> SymmetryFunctions:
    """12 symmetry functions (radial and angular) with a 4.5 A cutoff: cheap but complete."""
    return SymmetryFunctions.build(
        list(elements),
        g2=[(0.5, 1.6, 4.5), (0.5, 2.6, 4.5), (0.5, 3.6, 4.5)],
        g4=[(0.05, 1.0, 1.0, 4.5)],
        g5=[(0.05, 2.0, -1.0, 4.5)],
    )


def quartz(seed: int, rattle: float = 0.08, strain: float = 0.02) -> Atoms:
    """alpha-quartz with rattled positions and a random small cell strain (seeded)."""
    rng = np.random.default_rng(seed)
    atoms = alpha_quartz()
    eps = np.eye(3) + strain * rng.uniform(-1, 1, (3, 3))
    atoms.set_cell(atoms.cell.array @ (0.5 * (eps + eps.T)), scale_atoms=True)
    atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
    return atoms


def labelled_quartz(n: int, seed: int = 0, rattle: float = 0.08) -> list[Atoms]:
    """n quartz cells labelled with BKS (energy, forces, stress), as a dataset row would be."""
    from ase.calculators.singlepoint import SinglePointCalculator

    calc = BKS()
    out = []
    for k in range(n):
        atoms = quartz(seed * 1000 + k, rattle)
        atoms.calc = calc
        results = {
            "energy": atoms.get_potential_energy(),
            "forces": atoms.get_forces(),
            "stress": atoms.get_stress(),
        }
        atoms.calc = SinglePointCalculator(atoms, **results)
        out.append(atoms)
    return out


def random_network(
    descriptor, data: AtomsData, *, n_members=3, activation="silu", head=None, seed=0, hidden=(8, 6)
) -> BPNN:
    """An untrained network with scaling from ``data`` and distinct, non-trivial scales and shifts."""
    net = BPNN(descriptor, hidden, activation, n_members, head=head, seed=seed)
    net.fit_scaling(data.G, data.species)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.energy_scale[:] = 0.2 + torch.rand(n_members, generator=gen, dtype=torch.float64)
        net.energy_shift[:] = torch.randn(n_members, 2, generator=gen, dtype=torch.float64)
        if head is not None:
            net.head_scale[:] = 0.05 + torch.rand(net.head_scale.shape, generator=gen, dtype=torch.float64)
            for el in net.elements:
                net.weights[f"{el}_head_W"].normal_(0.0, 0.5, generator=gen)
                net.weights[f"{el}_head_b"].normal_(0.0, 0.5, generator=gen)
    return net


def model_with_all_methods(seed: int = 0) -> tuple[MLIPModel, AtomsData]:
    """An untrained 3-member model with gmm, posterior and distance fitted on 6 quartz cells,
    arbitrary calibration records, and the data it was fitted on."""
    descriptor = small_descriptor()
    data = AtomsData([quartz(100 + k) for k in range(6)], descriptor, labels=False)
    net = random_network(descriptor, data, seed=seed)
    model = MLIPModel(net)
    gradient = GradientFeatures.random(net, 4, seed=seed, lam=1e-3)
    phi = network_features(net, data, sketch=gradient.sketch(net.energy_scale))
    model.gradient = gradient.fit(phi, np.repeat(np.arange(len(data)), data.n_atoms), data.n_atoms, 20)
    hidden = network_features(net, data, hidden=True)
    model.gmm = GMMUncertainty.fit(net.elements, hidden, data.species, max_components=2, seed=seed)
    model.calibration = {
        "calibration/nll/energy/gmm": np.array([0.3, 2.0, 0.1]),
        "calibration/nll/force/gmm": np.array([0.1, 1.0, 0.1]),
        "calibration/energy/ensemble": np.array([2.0]),
        "calibration/force/ensemble": np.array([1.5]),
        "calibration/energy/posterior": np.array([0.7]),
        "calibration/alpha": np.array([0.1]),
    }
    model.methods = ("ensemble", "gmm", "posterior", "distance")
    return model, data


def numpy_network(records, G, species):
    """docs/model_file.md "Network" written from the records with numpy, independent of the torch code.

    Returns the atomic energies (M, n_atoms) and the last hidden layer h_(L-1) (M, n_atoms, H).
    """
    elements = records["elements"].split()
    n_layers = int(records["model/n_layers"][0])
    act = np.tanh if records["model/activation"] == "tanh" else (lambda z: z / (1 + np.exp(-z)))
    n_members = int(records["model/n_members"][0])
    energies, hidden = np.zeros((n_members, len(G))), []
    for m in range(n_members):
        rows = []
        for i, (g, e) in enumerate(zip(G, species, strict=True)):
            el = elements[e]
            h = (g - records[f"scaling/{el}/mean"]) / records[f"scaling/{el}/std"]
            for layer in range(1, n_layers):
                h = act(records[f"member/{m}/{el}/W{layer}"] @ h + records[f"member/{m}/{el}/b{layer}"])
            rows.append(h)
            z = records[f"member/{m}/{el}/W{n_layers}"] @ h + records[f"member/{m}/{el}/b{n_layers}"]
            energies[m, i] = (
                records[f"member/{m}/energy_scale"][0] * z[0] + records[f"member/{m}/energy_shift"][e]
            )
        hidden.append(rows)
    return energies, np.array(hidden)


def evaluate_atoms(model: MLIPModel, atoms: Atoms, method=None, **options):
    """model.evaluate on one structure."""
    data = AtomsData([atoms], model.descriptor, labels=False)
    return model.evaluate(data.batch([0]), method, **options)


def strained(atoms: Atoms, eps: np.ndarray) -> Atoms:
    """Cell and positions under the homogeneous deformation x -> (I + eps) x."""
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ (np.eye(3) + eps).T, scale_atoms=True)
    return out


def write_overflowing_model(path):
    """A model every reader accepts (all numbers finite and within 1e12) whose energy overflows:
    26 silu layers of width 1, each multiplying by 1e12 (1e12^26 > 1.8e308). Evaluating it gives
    inf energies and NaN forces for any structure; nothing may integrate them."""
    from mlipbias.models import save_model

    descriptor = small_descriptor()
    data = AtomsData([quartz(100)], descriptor, labels=False)
    net = BPNN(descriptor, (1,) * 26, "silu", 1)
    net.fit_scaling(data.G, data.species)
    with torch.no_grad():
        for name, w in net.weights.items():
            w.fill_(0.0 if name.endswith("_W1") else 1e12 if "_W" in name else 0.0)
            if name.endswith("_b1"):
                w.fill_(1e12)
    return save_model(MLIPModel(net), path)
