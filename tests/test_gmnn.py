"""GM-NN (models/gmnn.py, descriptors/gaussian_moments.py): descriptor, derivatives, file, training, UQ."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from gmnn_fixtures import random_gmnn, small_gm
from model_fixtures import evaluate_atoms, labelled_quartz, numpy_network, quartz, strained

from mlipbias.descriptors.gaussian_moments import GaussianMoments, contraction_sizes
from mlipbias.models import AtomsData, MLIPModel, load_model, save_model, train
from mlipbias.models.config import config_from_dict, make_descriptor
from mlipbias.models.gmnn import GMNN
from mlipbias.models.training import ModelSettings, TrainingSettings, UncertaintySettings
from mlipbias.uq.gradient_features import GradientFeatures


def cluster(seed=0) -> Atoms:
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0, 3.2, (6, 3))
    return Atoms("Si2O4", positions=positions)


# ------------------------------------------------------------------ descriptor


def numpy_moments(atoms: Atoms, d: GaussianMoments, beta: np.ndarray) -> np.ndarray:
    """The features of the module docstring, written with explicit loops (non-periodic atoms)."""
    species = d.species(atoms)
    b = d.n_basis**2 / d.cutoff**2
    mu = [d.r_min + k * (d.cutoff - d.r_min) / d.n_basis for k in range(d.n_basis)]
    R_ = d.n_radial
    rows = []
    for i in range(len(atoms)):
        P = [np.zeros((R_,) + (3,) * L) for L in range(4)]
        for j in range(len(atoms)):
            D = atoms.positions[j] - atoms.positions[i]
            r = np.linalg.norm(D)
            if j == i or r >= d.cutoff:
                continue
            u = D / r
            fc = 0.5 * (math.cos(math.pi * r / d.cutoff) + 1)
            for s in range(R_):
                radial = sum(
                    beta[species[i], species[j], s, k]
                    * (2 * b / math.pi) ** 0.25
                    * math.exp(-b * (r - mu[k]) ** 2)
                    for k in range(d.n_basis)
                )
                radial *= fc / math.sqrt(d.n_basis)
                P[0][s] += radial
                P[1][s] += radial * u
                P[2][s] += radial * np.multiply.outer(u, u)
                P[3][s] += radial * np.multiply.outer(np.multiply.outer(u, u), u)
        P0, P1, P2, P3 = P
        f = list(P0)
        pairs = list(itertools.combinations_with_replacement(range(R_), 2))
        f += [P1[r] @ P1[s] for r, s in pairs]
        f += [np.sum(P2[r] * P2[s]) for r, s in pairs]
        f += [np.sum(P3[r] * P3[s]) for r, s in pairs]
        f += [
            np.trace(P2[r] @ P2[s] @ P2[t])
            for r, s, t in itertools.combinations_with_replacement(range(R_), 3)
        ]
        f += [P1[r] @ P2[t] @ P1[s] for r, s in pairs for t in range(R_)]
        f += [np.einsum("abc,abd,cd", P3[r], P3[s], P2[t]) for r, s in pairs for t in range(R_)]
        f += [
            np.einsum("abc,ab,c", P3[r], P2[s], P1[t])
            for r in range(R_)
            for s in range(R_)
            for t in range(R_)
        ]
        rows.append(f)
    return np.array(rows)


def test_gaussian_moments_match_a_direct_evaluation_of_the_definitions():
    d = small_gm()
    net = random_gmnn(d)
    atoms = cluster()
    data = AtomsData([atoms], d, labels=False)
    batch = data.batch([0])
    G = net.descriptors(net.pair_vectors(batch, False), batch).detach().numpy()
    assert G.shape == (2, len(atoms), sum(contraction_sizes(3))) == (2, 6, 3 + 6 * 3 + 10 + 18 * 2 + 27)
    for m in range(2):
        expected = numpy_moments(atoms, d, net.weights["beta"][m].detach().numpy())
        np.testing.assert_allclose(G[m], expected, rtol=1e-11, atol=1e-13)
    assert GaussianMoments(["Si"], 5.0).n_features == 360  # the published size (5 radial, 8 groups)
    assert GaussianMoments(["Si"], 5.0, n_contractions=3).n_features == 5 + 15 + 15


def test_settings_are_checked():
    with pytest.raises(ValueError, match="n_contractions must be 1..8"):
        GaussianMoments(["Si"], 5.0, n_contractions=9)
    with pytest.raises(ValueError, match="r_min must be in"):
        GaussianMoments(["Si"], 5.0, r_min=5.0)
    with pytest.raises(ValueError, match="element C, which is not among"):
        AtomsData([Atoms("C", positions=[[0, 0, 0]])], small_gm(), labels=False)


# ------------------------------------------------------------------ invariances and derivatives


def test_energy_is_invariant_and_forces_are_covariant():
    d = small_gm()
    model = MLIPModel(random_gmnn(d))
    atoms = quartz(3)
    p = evaluate_atoms(model, atoms)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ q.T)
    rotated.positions = atoms.positions @ q.T + np.array([0.3, -1.1, 2.0])
    pr = evaluate_atoms(model, rotated)
    np.testing.assert_allclose(pr.energy, p.energy, rtol=1e-12)
    np.testing.assert_allclose(pr.forces, p.forces @ q.T, atol=1e-11)
    order = np.random.default_rng(2).permutation(len(atoms))
    pp = evaluate_atoms(model, atoms[order])
    np.testing.assert_allclose(pp.energy, p.energy, rtol=1e-12)
    np.testing.assert_allclose(pp.atom_energies, p.atom_energies[order], rtol=1e-12)
    np.testing.assert_allclose(pp.forces, p.forces[order], atol=1e-11)


@pytest.mark.parametrize("periodic", [True, False])
def test_forces_and_stress_are_derivatives_of_the_energy(periodic):
    model = MLIPModel(random_gmnn(small_gm()))
    atoms = quartz(7)
    if not periodic:
        atoms.pbc = False
    p = evaluate_atoms(model, atoms)
    rng = np.random.default_rng(3)
    h = 1e-5

    def energies(a):
        return evaluate_atoms(model, a, forces=False).member_energies[:, 0]

    for _ in range(2):
        v = rng.normal(size=atoms.positions.shape)
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions += h * v
        minus.positions -= h * v
        slopes = (energies(plus) - energies(minus)) / (2 * h)
        np.testing.assert_allclose(-np.sum(p.member_forces * v, axis=(1, 2)), slopes, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(p.forces.sum(axis=0), 0.0, atol=1e-10)
    if not periodic:
        assert np.isnan(p.stress).all()
        return
    eps = rng.normal(size=(3, 3)) * 0.5
    slope = (energies(strained(atoms, h * eps)).mean() - energies(strained(atoms, -h * eps)).mean()) / (2 * h)
    assert -np.sum(p.virial[0].T * eps) == pytest.approx(slope, rel=1e-6, abs=1e-9)


def test_sketched_features_are_the_gradients_of_the_trained_parameters():
    """Phi, block e = tensor sketch of d(sum of E_i over atoms of element e)/d[W_l b_l] (member 0)."""
    d = small_gm()
    net = random_gmnn(d)
    data = AtomsData([quartz(4)], d, labels=False)
    batch = data.batch([0])
    gradient = GradientFeatures.random(net, 5, seed=2)
    R1 = {k: v.copy() for k, v in gradient.R1.items()}
    R2 = {k: v.copy() for k, v in gradient.R2.items()}
    net.scale_sketch(gradient)
    D = net.pair_vectors(batch, False)
    Phi = net(D, batch, sketch=gradient.sketch(net.energy_scale)).features.detach().numpy().sum(axis=0)
    out = net(D, batch)
    expected = []
    for e in range(2):
        target = out.energy[0][batch.species == e].sum()
        params = [net.weights[f"{k}{layer}"] for layer in range(1, net.n_layers + 1) for k in "Wb"]
        grads = torch.autograd.grad(target, params, retain_graph=True)
        for layer in range(1, net.n_layers + 1):
            gW, gb = grads[2 * layer - 2][0], grads[2 * layer - 1][0]
            g = torch.cat([gW, gb[:, None]], dim=1).numpy()
            expected.append(np.diag(R1[(e, layer)] @ g @ R2[(e, layer)].T) / np.sqrt(gradient.k))
    np.testing.assert_allclose(Phi, np.concatenate(expected), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ model file


@pytest.mark.parametrize("head", [None, "mve"])
def test_model_file_round_trip_and_the_bpnn_form_of_its_network(tmp_path, head):
    d = small_gm()
    net = random_gmnn(d, head=head)
    model = MLIPModel(net)
    data = AtomsData([quartz(5), quartz(6)], d, labels=False)
    path = save_model(model, tmp_path / "gm.mlip")
    loaded = load_model(path)
    assert isinstance(loaded.network, GMNN) and loaded.descriptor == d
    a, b = model.evaluate(data.batch([0, 1])), loaded.evaluate(data.batch([0, 1]))
    np.testing.assert_allclose(b.member_energies, a.member_energies, rtol=1e-13)
    np.testing.assert_allclose(b.forces, a.forces, rtol=1e-11, atol=1e-13)
    # The file's network records, read as a BP-NN on these features, give the same atomic energies.
    from mlipbias.modelfile import read_model_file

    records = read_model_file(path)
    batch = data.batch([0, 1])
    G = net.descriptors(net.pair_vectors(batch, False), batch).detach().numpy()
    out = net(net.pair_vectors(batch, False), batch)
    for m in range(2):
        energies, _ = numpy_network(records, G[m], data.species)
        np.testing.assert_allclose(energies[m], out.energy[m].detach().numpy(), rtol=1e-12, atol=1e-12)


def test_a_file_whose_elements_do_not_share_the_network_is_rejected(tmp_path):
    from mlipbias.modelfile import read_model_file, write_model_file

    path = save_model(MLIPModel(random_gmnn(small_gm())), tmp_path / "gm.mlip")
    records = read_model_file(path)
    records["member/0/O/W1"] = records["member/0/O/W1"] * 1.01
    write_model_file(tmp_path / "bad.mlip", records)
    with pytest.raises(ValueError, match="member/0/O/W1 differs from member/0/Si/W1"):
        load_model(tmp_path / "bad.mlip")
    del records["member/1/descriptor/beta"]
    write_model_file(tmp_path / "bad.mlip", records)
    with pytest.raises(ValueError, match="missing record member/1/descriptor/beta"):
        load_model(tmp_path / "bad.mlip")


# ------------------------------------------------------------------ configuration, training, uncertainties


def test_config_selects_gmnn_with_its_defaults():
    config = config_from_dict({"data": {"path": "x.db"}, "model": {"kind": "gmnn"}})
    assert config.model.layer_widths == (512, 512) and config.model.activation_name == "silu"
    d = make_descriptor(config.descriptor, {"O", "H"}, model=config.model)
    assert isinstance(d, GaussianMoments) and d.cutoff == 5.0 and d.elements == ("H", "O")
    periodic = [Atoms("O", cell=[5.0, 5.0, 5.0], pbc=True)]
    assert make_descriptor(config.descriptor, {"O"}, periodic, model=config.model).cutoff == 6.0
    with pytest.raises(ValueError, match="setting model.activation = 'tanh': GM-NN uses silu"):
        config_from_dict({"data": {"path": "x.db"}, "model": {"kind": "gmnn", "activation": "tanh"}})
    with pytest.raises(ValueError, match="descriptor.angular_cutoff applies to symmetry functions"):
        config_from_dict(
            {"data": {"path": "x.db"}, "model": {"kind": "gmnn"}, "descriptor": {"angular_cutoff": 3.5}}
        )
    with pytest.raises(ValueError, match="setting model.kind = 'mace'.*bpnn, gmnn, painn"):
        config_from_dict({"data": {"path": "x.db"}, "model": {"kind": "mace"}})


@pytest.fixture(scope="module")
def labelled():
    d = small_gm(n_radial=3, n_basis=5)
    structures = labelled_quartz(10, seed=4, rattle=0.1)
    return d, AtomsData(structures[:7], d), AtomsData(structures[7:], d)


def _train(labelled, methods, **uq):
    d, train_data, val_data = labelled
    return train(
        train_data,
        val_data,
        model=ModelSettings(kind="gmnn", hidden=(16, 16)),
        uncertainty=UncertaintySettings(
            methods=methods, sketch_size=4, atom_subset=20, gmm_max_components=2, **uq
        ),
        training=TrainingSettings(
            epochs=20, batch_size=4, learning_rate=0.03, force_weight=4.0, schedule="none", seed=1
        ),
        progress=False,
        log=lambda message: None,
    )


def test_training_reduces_the_loss_and_every_post_hoc_method_runs(labelled, tmp_path):
    _, _, val_data = labelled
    result = _train(labelled, ("ensemble", "gmm", "posterior", "distance"), n_members=2)
    losses = np.array([r["validation_loss"] for r in result.history])
    assert (losses.min(axis=0) < 0.5 * losses[0]).all()
    model = load_model(save_model(result.model, tmp_path / "gm.mlip"))
    assert model.methods == ("ensemble", "gmm", "posterior", "distance")
    atoms = quartz(9, rattle=0.1)
    h = 1e-5
    v = np.random.default_rng(0).normal(size=atoms.positions.shape)
    for method in model.methods:
        p = model.predict(val_data, method, atom_uncertainty=True)
        assert np.isfinite(p.uncertainty).all() and (p.uncertainty > 0).all()
        assert np.isfinite(p.atom_uncertainty).all()
        g = evaluate_atoms(model, atoms, method, forces=False, gradient=True)
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions += h * v
        minus.positions -= h * v
        slope = (
            evaluate_atoms(model, plus, method, forces=False).uncertainty[0]
            - evaluate_atoms(model, minus, method, forces=False).uncertainty[0]
        ) / (2 * h)
        assert np.sum(g.uncertainty_gradient * v) == pytest.approx(slope, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("head", ["mve", "evidential"])
def test_heads_train_and_give_uncertainties(labelled, head):
    _, _, val_data = labelled
    result = _train(labelled, (head,))
    p = result.model.predict(val_data, head, atom_uncertainty=True)
    assert np.isfinite(p.uncertainty).all() and (p.uncertainty > 0).all()
    assert np.isfinite(p.atom_uncertainty).all() and (p.atom_uncertainty > 0).all()


def test_a_resumed_run_continues_exactly(labelled, tmp_path):
    """The checkpoint holds the four Adam parameter groups: 3 + 3 epochs equal 6 uninterrupted."""
    _, train_data, val_data = labelled
    quiet = {
        "progress": False,
        "log": lambda _: None,
        "uncertainty": UncertaintySettings(methods=()),
        "model": ModelSettings(kind="gmnn", hidden=(8, 8)),
    }
    settings = TrainingSettings(epochs=6, batch_size=4, learning_rate=0.03, force_weight=4.0, schedule="none")
    full = train(train_data, val_data, training=settings, output_dir=tmp_path / "full", **quiet)
    short = TrainingSettings(**{**settings.__dict__, "epochs": 3})
    train(train_data, val_data, training=short, output_dir=tmp_path / "split", **quiet)
    resumed = train(
        train_data, val_data, training=settings, output_dir=tmp_path / "split", resume=True, **quiet
    )
    assert [h["validation_loss"] for h in resumed.history] == [h["validation_loss"] for h in full.history]
    assert load_model(tmp_path / "split" / "best.mlip").network.kind == "gmnn"


def test_warm_start_from_a_gmnn_file_and_not_from_a_bpnn(labelled, tmp_path):
    """train --init-model with a GM-NN: the saved model's parameters come back exactly; a BP-NN
    file is refused naming the mismatch."""
    from model_fixtures import model_with_all_methods

    from mlipbias.models.training import build_network, warm_start

    _, train_data, _ = labelled
    settings = ModelSettings(kind="gmnn", hidden=(8, 8))
    source = build_network(train_data, settings, UncertaintySettings(methods=()), seed=1)
    path = save_model(MLIPModel(source), tmp_path / "source.mlip")
    target = build_network(train_data, settings, UncertaintySettings(methods=()), seed=2)
    warm_start(target, path)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=1e-14)
    bpnn, _ = model_with_all_methods()
    with pytest.raises(ValueError, match="does not match the configured architecture"):
        warm_start(target, bpnn)


def test_cli_trains_a_gmnn_warm_starts_it_and_inspects_it(tmp_path, capsys):
    """mlipbias train with model.kind gmnn (periodic data, model.cutoff given), again with
    --init-model from that file, and mlipbias inspect on the result."""
    import json

    import yaml
    from ase.db import connect

    from mlipbias.cli import main

    with connect(tmp_path / "quartz.db") as db:
        for atoms in labelled_quartz(8, seed=7):
            db.write(atoms)
    config = {
        "data": {"path": "quartz.db", "validation_fraction": 0.25, "seed": 1},
        "model": {"kind": "gmnn", "hidden": [6], "cutoff": 4.5, "n_basis": 3, "n_radial": 2},
        "uncertainty": {"methods": ["ensemble"], "n_members": 2},
        "training": {"epochs": 2, "batch_size": 4, "learning_rate": 0.01},
        "output": {"directory": "run"},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "train.yaml"), "--no-progress", "--threads", "1"]) == 0
    first = load_model(tmp_path / "run" / "model.mlip")
    assert first.network.kind == "gmnn" and first.descriptor.cutoff == 4.5
    config["output"]["directory"] = "warm"
    (tmp_path / "warm.yaml").write_text(yaml.safe_dump(config))
    init = str(tmp_path / "run" / "model.mlip")
    assert main(["train", str(tmp_path / "warm.yaml"), "--no-progress", "--init-model", init]) == 0
    assert "warm start from" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "warm" / "model.mlip"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "gmnn" and info["descriptor"]["radial_functions"] == 2
    assert info["training"]["settings"]["model.kind"] == "gmnn"
