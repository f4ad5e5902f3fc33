"""Seed 001's graph network: forces and stress against finite differences, the invariances it has
(translations, permutations, periodic images, supercells, a continuous cutoff), batching, files,
the ASE calculator, and a small fit to Stillinger-Weber silicon (LAMMPS)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from mlipbias.models.gnn import (
    GNN,
    GNNCalculator,
    GNNSettings,
    GNNTrainingSettings,
    batch_graphs,
    evaluate,
    load_gnn,
    random_orthogonal,
    save_gnn,
    train_gnn,
)


def model(activation="relu", elements=("Si",), seed=0, cutoff=3.0):
    torch.manual_seed(seed)
    net = GNN(list(elements), GNNSettings(cutoff=cutoff, hidden=(16, 16), edge_features=8, node_features=8,
                                          activation=activation))  # fmt: skip
    # Non-trivial output scale and shift, as after fit_energy_shift.
    net.energy_shift.fill_(-3.0)
    net.energy_scale.fill_(0.7)
    return net


def silicon(seed=1, rattle=0.15, repeat=(1, 1, 1)):
    atoms = bulk("Si", "diamond", a=5.431, cubic=True).repeat(repeat)
    atoms.rattle(rattle, seed=seed)
    return atoms


def predict(net, atoms, stress=False):
    calc = GNNCalculator(net)
    atoms = atoms.copy()
    atoms.calc = calc
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if stress:
        out["stress"] = atoms.get_stress(voigt=False)
    return out


@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_forces_and_stress_match_finite_differences(activation):
    net = model(activation)
    atoms = silicon()
    out = predict(net, atoms, stress=True)
    h = 1e-6
    for i, k in [(0, 0), (2, 1), (5, 2), (7, 0)]:
        energies = []
        for sign in (1, -1):
            probe = atoms.copy()
            probe.positions[i, k] += sign * h
            energies.append(predict(net, probe)["energy"])
        assert out["forces"][i, k] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=1e-6)
    for a, b in [(0, 0), (1, 1), (0, 2), (1, 2)]:
        energies = []
        for sign in (1, -1):
            # A symmetric strain: the model is not rotation invariant, so a rotation would
            # change its energy too.
            strain = np.eye(3)
            strain[a, b] += sign * h / 2
            strain[b, a] += sign * h / 2
            probe = atoms.copy()
            probe.set_cell(atoms.cell.array @ strain, scale_atoms=False)
            probe.positions = atoms.positions @ strain
            energies.append(predict(net, probe)["energy"])
        derivative = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
        assert out["stress"][a, b] == pytest.approx(derivative, abs=1e-7)
    assert np.abs(out["forces"].sum(axis=0)).max() < 1e-10  # Newton's third law


def test_invariant_to_translation_permutation_images_and_extensive():
    net = model()
    atoms = silicon()
    ref = predict(net, atoms)

    moved = atoms.copy()
    moved.positions += [0.37, -1.2, 2.9]
    wrapped = atoms.copy()
    wrapped.positions[[1, 4]] += atoms.cell[0] - 2 * atoms.cell[2]  # other periodic images
    for other in (moved, wrapped):
        out = predict(net, other)
        assert out["energy"] == pytest.approx(ref["energy"], abs=1e-10)
        np.testing.assert_allclose(out["forces"], ref["forces"], atol=1e-10)

    order = np.random.default_rng(0).permutation(len(atoms))
    out = predict(net, atoms[order])
    assert out["energy"] == pytest.approx(ref["energy"], abs=1e-10)
    np.testing.assert_allclose(out["forces"], ref["forces"][order], atol=1e-10)

    doubled = predict(net, atoms.repeat((2, 1, 1)))
    assert doubled["energy"] == pytest.approx(2 * ref["energy"], abs=1e-9)
    np.testing.assert_allclose(doubled["forces"], np.tile(ref["forces"], (2, 1)), atol=1e-10)


def test_energy_is_continuous_where_an_edge_crosses_the_cutoff():
    net = model("silu", cutoff=3.0)
    from ase import Atoms

    def dimer(r):
        return Atoms("Si2", positions=[[0, 0, 0], [r, 0, 0]], cell=[20, 20, 20], pbc=False)

    inside, outside = predict(net, dimer(3.0 - 1e-7)), predict(net, dimer(3.0 + 1e-7))
    assert inside["energy"] == pytest.approx(outside["energy"], abs=1e-9)
    assert np.abs(inside["forces"]).max() < 1e-8 and np.abs(outside["forces"]).max() == 0
    # Inside the cutoff the pair interacts.
    assert abs(predict(net, dimer(2.4))["energy"] - outside["energy"]) > 1e-4


def test_batch_equals_single_structures_and_elements_are_checked():
    net = model(elements=("O", "Si"))
    structures = [silicon(seed=s) for s in range(3)]
    structures[1].symbols[[0, 3]] = "O"
    graph = batch_graphs([net.graph(a) for a in structures])
    with torch.enable_grad():
        out = net(graph, forces=True)
    start = 0
    for k, atoms in enumerate(structures):
        single = predict(net, atoms)
        assert out["energy"][k].item() == pytest.approx(single["energy"], abs=1e-10)
        np.testing.assert_allclose(
            out["forces"][start : start + len(atoms)].detach(), single["forces"], atol=1e-10
        )
        start += len(atoms)
    with pytest.raises(ValueError, match="knows the elements O Si, but the structure .* has Ge"):
        net.graph(bulk("Ge", "diamond", a=5.6))
    with pytest.raises(ValueError, match="activation: must be one of"):
        GNNSettings(activation="gelu")
    with pytest.raises(ValueError, match="unknown key.*hiden"):
        GNNSettings.from_dict({"hiden": [8]})
    with pytest.raises(ValueError, match="force_weight: must be finite and >= 0"):
        GNNTrainingSettings(force_weight=-1)


def test_files_round_trip_and_foreign_files_are_errors(tmp_path):
    net = model()
    path = save_gnn(net, tmp_path / "m.pt", "test model", {"note": 1})
    loaded = load_gnn(path)
    atoms = silicon()
    a, b = predict(net, atoms, stress=True), predict(loaded, atoms, stress=True)
    assert a["energy"] == b["energy"]
    np.testing.assert_array_equal(a["forces"], b["forces"])
    assert loaded.description == "test model" and loaded.extra == {"note": 1}
    assert GNNCalculator(str(path)).model.elements == ["Si"]
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable GNN model file"):
        load_gnn(tmp_path / "bad.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an mlipbias-gnn model file"):
        load_gnn(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_gnn(tmp_path / "missing.pt")


def test_random_orthogonal_is_orthogonal_with_both_determinants():
    rng = np.random.default_rng(0)
    matrices = [random_orthogonal(rng) for _ in range(200)]
    for q in matrices:
        np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-12)
    dets = np.array([np.linalg.det(q) for q in matrices])
    assert set(np.round(dets).astype(int)) == {-1, 1}


def test_small_fit_to_stillinger_weber_silicon(tmp_path):
    from mlipbias.oracles import make_oracle

    sw = make_oracle("lammps", pair_style="sw", pair_coeff="* * Si.sw Si", elements=["Si"])
    structures = []
    for seed in range(32):
        atoms = silicon(seed=seed, rattle=0.05 + 0.003 * (seed * 7 % 32))
        atoms.calc = sw
        labelled = atoms.copy()
        labelled.calc = SinglePointCalculator(labelled, energy=atoms.get_potential_energy(),
                                              forces=atoms.get_forces())  # fmt: skip
        structures.append(labelled)
    train, valid = structures[:24], structures[24:]
    training = GNNTrainingSettings(epochs=30, batch_size=6, learning_rate=5e-3, force_weight=0.1, seed=0)
    settings = GNNSettings(hidden=(16, 16), edge_features=8, node_features=8, activation="silu")
    net, history = train_gnn(train, valid, settings=settings, training=training, out=tmp_path / "fit.pt",
                             progress=False)  # fmt: skip
    assert len(history) == 30 and min(h["valid_loss"] for h in history) < history[0]["valid_loss"] / 3
    metrics = evaluate(net, valid)
    per_atom = np.array([a.get_potential_energy() / len(a) for a in valid])
    forces = np.concatenate([a.get_forces() for a in valid])
    # Better than the best constants: the mean energy per atom and zero forces.
    assert metrics["energy_rmse"] < 0.7 * per_atom.std()
    assert metrics["force_rmse"] < 0.5 * np.sqrt((forces**2).mean())
    assert load_gnn(tmp_path / "fit.pt").extra["valid"]["energy_rmse"] == pytest.approx(
        metrics["energy_rmse"]
    )
