"""BP-NN models: the documented network math, forces and stress, the model file, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_fixtures import (
    evaluate_atoms,
    labelled_quartz,
    model_with_all_methods,
    numpy_network,
    quartz,
    random_network,
    small_descriptor,
    strained,
)

from mlipbias.models import (
    AtomsData,
    MLIPModel,
    ModelSettings,
    TrainingSettings,
    UncertaintySettings,
    load_model,
    save_model,
    train,
)
from mlipbias.models.network import BPNN
from mlipbias.models.training import batch_loss
from mlipbias.uq.calibration import CalibrationWarning


@pytest.fixture(scope="module")
def labelled():
    return labelled_quartz(14)


# ------------------------------------------------------------------ the network follows docs/model_file.md


@pytest.mark.parametrize("activation", ["tanh", "silu"])
def test_atomic_energies_follow_the_documented_formula(activation):
    sf = small_descriptor()
    data = AtomsData([quartz(1), quartz(2)], sf, labels=False)
    net = random_network(sf, data, activation=activation, hidden=(5, 4, 3))
    out = net(torch.as_tensor(data.G), torch.as_tensor(data.species))
    expected, _ = numpy_network(net.to_records(), data.G, data.species)
    np.testing.assert_allclose(out.energy.detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_scaling_and_energy_shift_from_training_data():
    sf = small_descriptor()
    # Two compositions, so the per-element shift is determined: quartz and quartz with one O removed.
    structures = [quartz(k) for k in range(4)]
    for atoms in structures[2:]:
        del atoms[-1]
    data = AtomsData(structures, sf, labels=False)
    net = BPNN(sf, (4,))
    net.fit_scaling(data.G, data.species)
    for e in range(2):
        rows = data.G[data.species == e]
        np.testing.assert_allclose(net.scaling_mean[e].numpy(), rows.mean(axis=0))
        std = rows.std(axis=0)
        np.testing.assert_allclose(net.scaling_std[e].numpy(), np.where(std > 0, std, 1.0))
    energies = np.array([-10.0, -11.0, -4.0, -4.5])
    shift, scale = net.fit_energy_shift(energies, data.counts)
    reference = np.linalg.lstsq(data.counts, energies, rcond=None)[0]
    np.testing.assert_allclose(shift, reference)
    residual = (energies - data.counts @ reference) / data.counts.sum(axis=1)
    assert scale == pytest.approx(np.sqrt(np.mean(residual**2)))


def test_descriptor_shape_and_unknown_elements_are_clear_errors():
    sf = small_descriptor()
    data = AtomsData([quartz(1)], sf, labels=False)
    net = random_network(sf, data, n_members=2)
    with pytest.raises(ValueError, match=r"descriptors must have shape \(n_atoms, 12\) .* got \(9, 7\)"):
        net(torch.zeros(9, 7, dtype=torch.float64), torch.zeros(9, dtype=torch.long))
    atoms = quartz(1)
    atoms[0].symbol = "Al"
    with pytest.raises(ValueError, match="element Al, which is not among"):
        AtomsData([atoms], sf, labels=False)
    with pytest.raises(ValueError, match="activation must be one of tanh, silu"):
        BPNN(sf, activation="relu")


# ------------------------------------------------------------------ forces and stress


@pytest.mark.parametrize("periodic", [True, False])
def test_forces_and_stress_are_derivatives_of_the_energy(periodic):
    """Central differences of the ensemble-mean energy along random directions and strains."""
    model, _ = model_with_all_methods()
    atoms = quartz(7)
    if not periodic:
        atoms.pbc = False
    p = evaluate_atoms(model, atoms)
    rng = np.random.default_rng(3)
    h = 1e-5
    for _ in range(3):
        v = rng.normal(size=atoms.positions.shape)
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions += h * v
        minus.positions -= h * v
        slope = (
            evaluate_atoms(model, plus, forces=False).energy[0]
            - evaluate_atoms(model, minus, forces=False).energy[0]
        ) / (2 * h)
        assert -np.sum(p.forces * v) == pytest.approx(slope, rel=1e-6, abs=1e-8)
    # The member forces are those of each member's energy.
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[4, 1] += h
    minus.positions[4, 1] -= h
    slopes = (
        evaluate_atoms(model, plus, forces=False).member_energies
        - evaluate_atoms(model, minus, forces=False).member_energies
    ) / (2 * h)
    np.testing.assert_allclose(-p.member_forces[:, 4, 1], slopes[:, 0], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(p.forces.sum(axis=0), 0.0, atol=1e-10)  # translation invariance
    if not periodic:
        assert np.isnan(p.stress).all()
        return
    for _ in range(2):
        eps = rng.normal(size=(3, 3)) * 0.5
        e_plus = evaluate_atoms(model, strained(atoms, h * eps), forces=False).energy[0]
        e_minus = evaluate_atoms(model, strained(atoms, -h * eps), forces=False).energy[0]
        # virial W = -dE/d(strain); ASE stress = (1/V) dE/d(strain) (symmetric part).
        slope = (e_plus - e_minus) / (2 * h)
        assert -np.sum(p.virial[0].T * eps) == pytest.approx(slope, rel=1e-6, abs=1e-8)
    stress_matrix = np.zeros((3, 3))
    for c, (a, b) in enumerate([(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]):
        stress_matrix[a, b] = stress_matrix[b, a] = p.stress[0, c]
    np.testing.assert_allclose(stress_matrix, -p.virial[0] / atoms.get_volume(), atol=1e-12)


# ------------------------------------------------------------------ model file


def test_model_file_round_trip_gives_identical_predictions(tmp_path):
    model, data = model_with_all_methods()
    model.description = "round trip"
    path = save_model(model, tmp_path / "model.mlip")
    loaded = load_model(path)
    assert loaded.methods == model.methods and loaded.description == "round trip"
    batch = data.batch(range(len(data)))
    for method in (None, *model.methods):
        a = model.evaluate(batch, method, atom_uncertainty=method is not None, gradient=method is not None)
        b = loaded.evaluate(batch, method, atom_uncertainty=method is not None, gradient=method is not None)
        for name in (
            "energy",
            "member_energies",
            "forces",
            "virial",
            "uncertainty",
            "atom_uncertainty",
            "uncertainty_gradient",
            "uncertainty_virial",
        ):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None), name
            if x is not None:
                np.testing.assert_array_equal(x, y, err_msg=f"{method}: {name}")


@pytest.mark.parametrize("head", ["mve", "evidential"])
def test_model_file_round_trip_with_heads(tmp_path, head):
    sf = small_descriptor()
    data = AtomsData([quartz(1), quartz(2)], sf, labels=False)
    model = MLIPModel(random_network(sf, data, n_members=1, head=head), methods=(head,))
    loaded = load_model(save_model(model, tmp_path / "m.mlip"))
    batch = data.batch([0, 1])
    a = model.evaluate(batch, head, atom_uncertainty=True)
    b = loaded.evaluate(batch, head, atom_uncertainty=True)
    np.testing.assert_array_equal(a.uncertainty, b.uncertainty)
    np.testing.assert_array_equal(a.atom_uncertainty, b.atom_uncertainty)


def test_load_model_errors_name_the_file_and_the_problem(tmp_path):
    model, _ = model_with_all_methods()
    records = model.to_records()
    del records["uq/gmm/O/means"]
    from mlipbias.modelfile import write_model_file

    write_model_file(tmp_path / "bad.mlip", records)
    with pytest.raises(ValueError, match=r"bad\.mlip: missing record uq/gmm/O/means"):
        load_model(tmp_path / "bad.mlip")
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_model(tmp_path / "missing.mlip")


# ------------------------------------------------------------------ training


def _loss(net, data, settings):
    batch = data.batch(range(len(data)))
    with torch.enable_grad():
        _, per_member, _ = batch_loss(net, batch, settings, UncertaintySettings(), create_graph=False)
    return per_member.detach().numpy()


def test_training_reduces_the_loss_and_restores_the_best_epoch(labelled, tmp_path):
    sf = small_descriptor()
    train_data = AtomsData(labelled[:10], sf)
    val_data = AtomsData(labelled[10:], sf)
    settings = TrainingSettings(
        epochs=12,
        batch_size=4,
        learning_rate=0.02,
        force_weight=0.1,
        stress_weight=1.0,
        early_stopping_patience=100,
        device="cpu",
    )
    uq = UncertaintySettings(methods=("ensemble",), n_members=2)
    with pytest.warns(CalibrationWarning, match="largest"):
        result = train(
            train_data,
            val_data,
            model=ModelSettings((6,)),
            uncertainty=uq,
            training=settings,
            output_dir=tmp_path,
            progress=False,
            log=lambda _: None,
        )
    history = result.history
    assert len(history) == 12
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    losses = np.array([h["validation_loss"] for h in history])  # (epochs, members)
    assert (losses[-1] < 0.6 * losses[0]).all()
    # Every member came back with the weights of its best validation epoch.
    np.testing.assert_allclose(
        _loss(result.model.network, val_data, settings), losses.min(axis=0), rtol=1e-10
    )
    assert result.best_epoch == [int(k) + 1 for k in losses.argmin(axis=0)]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 13))
    assert (tmp_path / "best.mlip").exists() and (tmp_path / "checkpoint.pt").exists()
    # The ensemble is calibrated on the validation data: 36 atoms suffice for alpha = 0.05; 4 energies do
    # not, so the energy factor is the largest error/U ratio, with the CalibrationWarning caught above.
    assert set(result.model.methods) == {"ensemble"}
    assert "calibration/force/ensemble" in result.model.calibration
    assert result.model.calibration["calibration/energy/ensemble"] > 0


def test_early_stopping_and_resume_reproduce_an_uninterrupted_run(labelled, tmp_path):
    sf = small_descriptor()
    train_data = AtomsData(labelled[:4], sf, keep_neighbours=False)
    val_data = AtomsData(labelled[10:], sf, keep_neighbours=False)
    uq = UncertaintySettings(methods=())
    quiet = {"progress": False, "log": lambda _: None, "uncertainty": uq, "model": ModelSettings((6,))}
    # A large learning rate on 4 structures overfits quickly: early stopping ends the run.
    settings = TrainingSettings(
        epochs=300,
        batch_size=2,
        learning_rate=0.05,
        early_stopping_patience=10,
        schedule="none",
        force_weight=0.0,
        stress_weight=0.0,
        device="cpu",
    )
    full = train(train_data, val_data, training=settings, output_dir=tmp_path / "full", **quiet)
    assert full.epochs_run < 300
    assert full.epochs_run - full.best_epoch[0] == 10
    # Stop after 5 epochs, then resume with more epochs: the run continues exactly as the full one.
    short = TrainingSettings(**{**settings.__dict__, "epochs": 5})
    train(train_data, val_data, training=short, output_dir=tmp_path / "split", **quiet)
    other = TrainingSettings(**{**settings.__dict__, "learning_rate": 0.01})
    with pytest.raises(ValueError, match="other settings"):
        train(train_data, val_data, training=other, output_dir=tmp_path / "split", resume=True, **quiet)
    resumed = train(
        train_data, val_data, training=settings, output_dir=tmp_path / "split", resume=True, **quiet
    )
    assert resumed.epochs_run == full.epochs_run
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["validation_loss"] == b["validation_loss"]
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == full.epochs_run
    # Resuming a run that stopped early trains no further.
    again = train(train_data, val_data, training=settings, output_dir=tmp_path / "full", resume=True, **quiet)
    assert again.epochs_run == full.epochs_run and again.best_epoch == full.best_epoch


def test_training_checks_settings_and_data(labelled):
    sf = small_descriptor()
    data = AtomsData(labelled[:3], sf, keep_neighbours=False)
    with pytest.raises(ValueError, match=r"setting training.loss = 'huber': expected one of mse, mae"):
        train(data, data, training=TrainingSettings(loss="huber"), progress=False)
    with pytest.raises(ValueError, match="exclude each other"):
        train(data, data, uncertainty=UncertaintySettings(methods=("ensemble", "mve")), progress=False)
    with pytest.raises(ValueError, match="prepared without neighbour pairs"):
        train(data, data, training=TrainingSettings(force_weight=1.0), progress=False)


@pytest.mark.gpu
def test_training_and_predictions_on_the_gpu_match_the_cpu(labelled):
    from mlipbias import gpu

    reason = gpu.unavailable_reason() or (None if torch.cuda.is_available() else "torch sees no CUDA device")
    if reason:
        pytest.skip(reason)
    sf = small_descriptor()
    train_data, val_data = AtomsData(labelled[:8], sf), AtomsData(labelled[8:], sf)
    results = {}
    for device in ("cpu", "cuda"):
        settings = TrainingSettings(epochs=3, batch_size=4, force_weight=0.1, device=device)
        results[device] = train(
            train_data,
            val_data,
            model=ModelSettings((6,)),
            training=settings,
            uncertainty=UncertaintySettings(methods=("ensemble", "posterior"), n_members=2),
            progress=False,
            log=lambda _: None,
        )
    for a, b in zip(results["cpu"].history, results["cuda"].history, strict=True):
        np.testing.assert_allclose(a["validation_loss"], b["validation_loss"], rtol=1e-8)
    cpu, cuda = results["cpu"].model, results["cuda"].model
    assert cuda.device.type == "cuda"
    p_cpu = cpu.predict(val_data, "posterior", atom_uncertainty=True, gradient=True)
    p_cuda = cuda.predict(val_data, "posterior", atom_uncertainty=True, gradient=True)
    for name in ("energy", "forces", "uncertainty", "atom_uncertainty", "uncertainty_gradient"):
        np.testing.assert_allclose(getattr(p_cuda, name), getattr(p_cpu, name), rtol=1e-7, atol=1e-9)
