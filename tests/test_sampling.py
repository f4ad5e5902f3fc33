"""Adversarial sampling (seed 003 Eqs. 15-16): adversaries, the objective's gradient, the ascent.

References: central finite differences of E, U and p U (positions, displacement and strain), a
direct numpy evaluation of Eq. 16's denominator, and the extended XYZ file read back by ASE.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.io import read
from model_fixtures import model_with_all_methods, quartz

from mlipbias.models.gnn import GNN, GNNSettings
from mlipbias.models.painn import PaiNNModel, PaiNNSettings
from mlipbias.sampling import KCAL_PER_MOL, AdversarialSamplingSettings, adversarial_samples, as_adversary
from mlipbias.sampling.adversarial import deformed, log_partition, objective

SMALL = PaiNNSettings(cutoff=3.5, features=8, layers=2, radial_basis=6, readout=(8, 8))


def painn(method: str, head=None, members=1) -> PaiNNModel:
    torch.manual_seed(5)
    model = PaiNNModel(["O", "Si"], SMALL, n_members=members, head=head, methods=(method,))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.energy_scale.fill_(0.5)
    return model


def gnn_ensemble():
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(
            GNN(["O", "Si"], GNNSettings(cutoff=3.5, hidden=(8,), edge_features=8, node_features=8))
        )
    return members


@pytest.fixture(scope="module")
def bpnn():
    return model_with_all_methods()[0]


def adversaries(bpnn):
    return {
        "painn-ensemble": as_adversary(painn("ensemble", members=3)),
        "painn-evidential": as_adversary(painn("evidential", head="evidential")),
        "bpnn-ensemble": as_adversary(bpnn, "ensemble"),
        "bpnn-gmm": as_adversary(bpnn, "gmm"),
        "gnn-ensemble": as_adversary(gnn_ensemble()),
    }


KINDS = ["painn-ensemble", "painn-evidential", "bpnn-ensemble", "bpnn-gmm", "gnn-ensemble"]


@pytest.mark.parametrize("kind", KINDS)
def test_adversaries_give_the_derivatives_of_their_energy_and_uncertainty(bpnn, kind):
    """dE/dx, dU/dx, dE/deta and dU/deta of every model kind equal central finite differences."""
    adversary = adversaries(bpnn)[kind]
    atoms = quartz(3)
    value = adversary(atoms)
    h = 1e-5
    for i, k in [(0, 0), (4, 2), (7, 1)]:
        moved = [atoms.copy(), atoms.copy()]
        moved[0].positions[i, k] += h
        moved[1].positions[i, k] -= h
        (a, b) = (adversary(m) for m in moved)
        assert value.energy_gradient[i, k] == pytest.approx(
            (a.energy - b.energy) / (2 * h), rel=1e-6, abs=1e-8
        )
        du = (a.uncertainty - b.uncertainty) / (2 * h)
        assert value.uncertainty_gradient[i, k] == pytest.approx(du, rel=1e-5, abs=1e-9)
    h = 1e-6  # the GMM's U is strongly curved under strain
    for a_, b_ in [(0, 0), (0, 1), (2, 1)]:
        eta = np.zeros((3, 3))
        eta[a_, b_] = h
        plus, minus = deformed(atoms, 0 * atoms.positions, eta), deformed(atoms, 0 * atoms.positions, -eta)
        a, b = adversary(plus), adversary(minus)
        fd_e, fd_u = (a.energy - b.energy) / (2 * h), (a.uncertainty - b.uncertainty) / (2 * h)
        assert value.energy_strain[a_, b_] == pytest.approx(fd_e, rel=1e-5, abs=1e-8)
        assert value.uncertainty_strain[a_, b_] == pytest.approx(fd_u, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("kind", ["painn-ensemble", "bpnn-gmm"])
def test_objective_gradient_equals_finite_differences(bpnn, kind):
    """df/ddelta and df/dstrain of f = p U (Eq. 15-16) at a displaced, strained structure."""
    adversary = adversaries(bpnn)[kind]
    atoms0 = quartz(4)
    rng = np.random.default_rng(0)
    delta = 0.05 * rng.standard_normal((len(atoms0), 3))
    strain = 0.01 * rng.standard_normal((3, 3))
    strain = 0.5 * (strain + strain.T)
    kT = 0.7 * KCAL_PER_MOL
    e0 = adversary(atoms0).energy
    log_z = log_partition(np.array([e0, e0 + 0.3]), np.array([9, 9]), kT)
    f, g_delta, g_strain, _ = objective(adversary, atoms0, delta, strain, log_z, kT)
    assert f > 0 or kind == "bpnn-gmm"
    h = 1e-6
    for i, k in [(0, 0), (3, 1), (8, 2)]:
        values = []
        for sign in (1, -1):
            d = delta.copy()
            d[i, k] += sign * h
            values.append(objective(adversary, atoms0, d, strain, log_z, kT)[0])
        assert g_delta[i, k] == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-5, abs=1e-12 * abs(f))
    for a, b in [(0, 0), (1, 2)]:
        values = []
        for sign in (1, -1):
            e = strain.copy()
            e[a, b] += sign * h
            if a != b:
                e[b, a] += sign * h
            values.append(objective(adversary, atoms0, delta, e, log_z, kT)[0])
        fd = (values[0] - values[1]) / (2 * h)
        expected = g_strain[a, b] * (1 if a == b else 2)  # both entries of a symmetric shear moved
        assert expected == pytest.approx(fd, rel=1e-5, abs=1e-12 * abs(f))


def test_log_partition_is_eq_16s_denominator():
    energies, n = np.array([-10.0, -10.2, -9.5]), np.array([4, 4, 5])
    kT = 0.03
    assert math.exp(log_partition(energies, n, kT)) == pytest.approx(
        np.exp(-energies / n / kT).sum(), rel=1e-12
    )


@pytest.mark.parametrize("kind", ["painn-ensemble", "bpnn-ensemble", "gnn-ensemble"])
def test_ascent_raises_the_objective_and_writes_finite_samples(bpnn, kind, tmp_path):
    adversary = adversaries(bpnn)[kind]
    starts = [quartz(k) for k in range(3)]
    energies = [adversary(a).energy for a in starts]
    settings = AdversarialSamplingSettings(
        iterations=12, learning_rate=2e-3, n_samples=3, energy_cutoff=None, strain=True, seed=1
    )
    result = adversarial_samples(
        adversary,
        starts,
        settings=settings,
        train_energies=energies,
        output=tmp_path / "s.xyz",
        progress=False,
    )
    assert len(result.samples) == 3 and not result.rejected
    for sample in result.samples:
        assert sample.history[-1] > sample.history[0]
        assert np.isfinite(sample.atoms.positions).all() and np.isfinite(sample.atoms.cell.array).all()
        assert math.isfinite(sample.uncertainty) and math.isfinite(sample.energy)
        start = starts[sample.start]
        assert not np.allclose(sample.atoms.cell.array, start.cell.array)  # the strain moved too
        assert sample.objective == sample.history[-1]
    written = read(tmp_path / "s.xyz", index=":")
    assert len(written) == 3
    np.testing.assert_allclose(written[1].positions, result.samples[1].atoms.positions, atol=1e-6)
    assert written[2].info["adversarial_uncertainty"] == pytest.approx(result.samples[2].uncertainty)


def test_energy_cutoff_is_honoured(bpnn):
    adversary = adversaries(bpnn)["painn-ensemble"]
    starts = [quartz(k) for k in range(4)]
    energies = np.array([adversary(a).energy for a in starts])
    base = AdversarialSamplingSettings(iterations=5, learning_rate=1e-3, n_samples=2, max_attempts=4)
    minimum = np.min(energies / 9)
    excess = energies - 9 * minimum
    cutoff = float(np.median(excess[excess > 0]))
    settings = AdversarialSamplingSettings(**{**base.__dict__, "energy_cutoff": cutoff})
    result = adversarial_samples(
        adversary, starts, settings=settings, train_energies=energies, progress=False
    )
    assert result.samples, "some start is below the cutoff"
    for sample in result.samples:
        assert sample.energy - 9 * minimum <= cutoff
    for reason in result.rejected.values():
        assert "over the cutoff" in reason
    tiny = AdversarialSamplingSettings(**{**base.__dict__, "energy_cutoff": 1e-12})
    result = adversarial_samples(
        adversary, starts, settings=tiny, train_energies=energies - 10.0, progress=False
    )
    assert not result.samples and len(result.rejected) == 4


def test_settings_and_inputs_are_checked(bpnn):
    with pytest.raises(ValueError, match="iterations"):
        AdversarialSamplingSettings(iterations=0)
    with pytest.raises(ValueError, match="kT"):
        AdversarialSamplingSettings(kT=-1.0)
    with pytest.raises(ValueError, match="energy_cutoff"):
        AdversarialSamplingSettings(energy_cutoff=float("nan"))
    with pytest.raises(ValueError, match="not in this model's methods"):
        as_adversary(bpnn, "mve")
    with pytest.raises(ValueError, match="reference energies"):
        adversarial_samples(bpnn, [quartz(0)], method="ensemble", progress=False)
    settings = AdversarialSamplingSettings(strain=True, iterations=1, n_samples=1)
    with pytest.raises(ValueError, match="fully periodic"):
        atoms = quartz(0)
        atoms.pbc = False
        adversarial_samples(
            bpnn, [atoms], method="ensemble", settings=settings, train_energies=[0.0], progress=False
        )
    seed003 = AdversarialSamplingSettings()
    assert seed003.iterations == 80 and seed003.learning_rate == 5e-5 and seed003.n_samples == 20
    assert seed003.kT == pytest.approx(0.7 * 0.0433641, rel=1e-5)  # 0.7 kcal/mol/atom in eV
    assert seed003.energy_cutoff == pytest.approx(100 * 0.0433641, rel=1e-5)
