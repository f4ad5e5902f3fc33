"""PaiNN (model.kind painn) with the uncertainty methods of seed 003.

References: central finite differences of the (biased) energy for forces, stress, bias forces and
the gradients of U; exact invariances (rotation, translation, periodic images); a direct numpy
evaluation of the ensemble spread (seed 003 Eq. 5); the mlipbias train CLI end to end and its resume.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.db import connect
from ase.stress import full_3x3_to_voigt_6_stress
from model_fixtures import labelled_quartz, quartz

from mlipbias.cli import main
from mlipbias.datasets import load_dataset
from mlipbias.models.gnn import random_orthogonal
from mlipbias.models.painn import PaiNNCalculator, PaiNNModel, PaiNNSettings, load_painn, save_painn
from mlipbias.models.painn_training import calibrate_painn, evaluate_painn, fit_gmm
from mlipbias.uq.calibration import VarianceRecalibration

SMALL = PaiNNSettings(cutoff=3.5, features=8, layers=2, radial_basis=6, readout=(8, 8))
CASES = [("ensemble", None, 3), ("mve", "mve", 1), ("evidential", "evidential", 1), ("gmm", None, 1)]


def random_model(method: str, head: str | None, members: int, elements=("H", "N", "O", "Si")) -> PaiNNModel:
    torch.manual_seed(3)
    model = PaiNNModel(list(elements), SMALL, n_members=members, head=head, methods=(method,))
    with torch.no_grad():  # away from the initialisation, so that every term matters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.energy_scale.fill_(0.7)
    if method == "gmm":
        fit_gmm(
            model,
            [model.graph(quartz(k)) for k in range(4)] + [model.graph(ammonia(s)) for s in (3, 4, 5)],
            2,
            0,
            "cpu",
        )
    return model


def ammonia(seed: int = 2) -> Atoms:
    atoms = molecule("NH3")
    atoms.rattle(0.05, seed=seed)
    return atoms


def biased_energy(model, atoms, method, tau):
    atoms = atoms.copy()
    atoms.calc = PaiNNCalculator(model, uncertainty=method, tau=tau)
    return atoms.get_potential_energy()


@pytest.mark.parametrize(("method", "head", "members"), CASES)
def test_forces_stress_and_bias_equal_finite_differences(method, head, members):
    """Biased forces F + tau dU/dx and stress (model + bias) are derivatives of E - tau U; the bias forces
    alone are tau times the finite-difference gradient of U."""
    model = random_model(method, head, members)
    tau, h = 0.3, 1e-5
    for atoms in (quartz(5), ammonia()):
        calc = PaiNNCalculator(model, uncertainty=method, tau=tau)
        atoms.calc = calc
        forces = atoms.get_forces()
        bias_forces, U = calc.results["bias_forces"], calc.results["uncertainty"]
        fd, fd_u = np.zeros_like(forces), np.zeros_like(forces)
        for i in range(len(atoms)):
            for k in range(3):
                values = []
                for sign in (1, -1):
                    moved = atoms.copy()
                    moved.positions[i, k] += sign * h
                    moved.calc = PaiNNCalculator(model, uncertainty=method)
                    values.append((moved.get_potential_energy(), moved.calc.results["uncertainty"]))
                (ep, up), (em, um) = values
                fd_u[i, k] = (up - um) / (2 * h)
                fd[i, k] = -((ep - tau * up) - (em - tau * um)) / (2 * h)
        scale = np.abs(forces).max()
        assert U > 0 or method == "gmm"
        np.testing.assert_allclose(forces, fd, atol=1e-7 * scale)
        np.testing.assert_allclose(bias_forces, tau * fd_u, atol=1e-7 * max(np.abs(bias_forces).max(), 1e-3))
        assert np.abs(bias_forces).max() > 1e-4  # the bias is not trivially zero
        if not atoms.pbc.all():
            assert "stress" not in calc.results
            continue
        stress, volume = atoms.get_stress(), atoms.get_volume()
        dE = np.zeros((3, 3))
        for a in range(3):
            for b in range(3):
                values = []
                for sign in (1, -1):
                    eps = np.eye(3)
                    eps[a, b] += sign * h
                    strained = atoms.copy()
                    strained.set_cell(atoms.cell.array @ eps, scale_atoms=True)
                    values.append(biased_energy(model, strained, method, tau))
                dE[a, b] = (values[0] - values[1]) / (2 * h)
        expected = full_3x3_to_voigt_6_stress(0.5 * (dE + dE.T) / volume)
        np.testing.assert_allclose(stress, expected, atol=1e-7 * np.abs(stress).max())


@pytest.mark.parametrize(("method", "head", "members"), CASES)
def test_energy_and_uncertainty_are_invariant_and_forces_equivariant(method, head, members):
    """Rotations (and reflections), translations and the choice of periodic image leave E, U and U_i
    unchanged and rotate the forces; a doubled cell has twice the energy and the same U."""
    model = random_model(method, head, members)
    rng = np.random.default_rng(4)
    for atoms in (quartz(6), ammonia()):
        atoms.calc = PaiNNCalculator(model, uncertainty=method)
        e, f, u = atoms.get_potential_energy(), atoms.get_forces(), atoms.calc.results["uncertainty"]
        u_i = atoms.calc.results["atom_uncertainty"]
        q = random_orthogonal(rng)
        moved = atoms.copy()
        moved.positions = moved.positions @ q.T + rng.normal(size=3)
        if moved.pbc.all():
            moved.set_cell(atoms.cell.array @ q.T)
            moved.positions[0] += moved.cell.array[1]  # another periodic image of atom 0
        moved.calc = PaiNNCalculator(model, uncertainty=method)
        assert moved.get_potential_energy() == pytest.approx(e, rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(moved.get_forces(), f @ q.T, atol=1e-9 * np.abs(f).max())
        assert moved.calc.results["uncertainty"] == pytest.approx(u, rel=1e-8, abs=1e-12)
        np.testing.assert_allclose(moved.calc.results["atom_uncertainty"], u_i, rtol=1e-8, atol=1e-12)
    atoms = quartz(6)
    double = atoms.repeat((2, 1, 1))
    atoms.calc, double.calc = (PaiNNCalculator(model, uncertainty=method) for _ in range(2))
    assert double.get_potential_energy() == pytest.approx(2 * atoms.get_potential_energy(), rel=1e-10)
    assert double.calc.results["uncertainty"] == pytest.approx(atoms.calc.results["uncertainty"], rel=1e-8)


def test_ensemble_uncertainty_is_seed_003_eq_5():
    """U = 1/(M-1) sum_m mean over the 3n components of (F_m - mean_m F)^2, from the members' own forces."""
    model = random_model("ensemble", None, 3)
    atoms = quartz(2)
    out = model.evaluate(model.graph(atoms), "ensemble")
    members = []
    for member in range(3):
        single = PaiNNModel(model.elements, SMALL)
        state = {k.replace(f"members.{member}.", "members.0."): v for k, v in model.state_dict().items()}
        single.load_state_dict({k: v for k, v in state.items() if k in single.state_dict()})
        members.append(single.evaluate(single.graph(atoms)).forces.numpy())
    members = np.array(members)
    spread = ((members - members.mean(axis=0)) ** 2).mean(axis=(1, 2)).sum() / 2
    assert float(out.uncertainty[0]) == pytest.approx(spread, rel=1e-12)
    np.testing.assert_allclose(out.forces.numpy(), members.mean(axis=0), rtol=1e-12)


def test_model_files_round_trip_and_bad_files_are_clear_errors(tmp_path):
    model = random_model("gmm", None, 1)
    path = save_painn(model, tmp_path / "model.pt", description="test")
    loaded = load_painn(path)
    atoms = quartz(1)
    a, b = (m.evaluate(m.graph(atoms), "gmm") for m in (model, loaded))
    assert float(a.energy[0]) == float(b.energy[0]) and float(a.uncertainty[0]) == float(b.uncertainty[0])
    # Readable like any file the user writes (as .mlip files), not private like a temporary file.
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    payload = torch.load(path, weights_only=True)
    payload["calibration"] = {"energy/gmm": torch.ones(1)}
    torch.save(payload, tmp_path / "bad_calibration.pt")
    with pytest.raises(ValueError, match="calibration entry must map calibration/... names"):
        load_painn(tmp_path / "bad_calibration.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_painn(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable PaiNN model file"):
        load_painn(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="not in this PaiNN model's methods"):
        PaiNNCalculator(model, uncertainty="ensemble")
    with pytest.raises(ValueError, match="model.painn.features"):
        PaiNNSettings(features=0)


@pytest.mark.parametrize(("method", "head", "members"), [("ensemble", None, 3), ("gmm", None, 1)])
def test_painn_conformal_calibration_covers_held_out_data(method, head, members, tmp_path):
    """PaiNN gets the BP-NN's conformal calibration (seed 002 "Methods"): c_E and c_F are the
    ceil((n + 1)(1 - alpha))-th smallest ratio of error to sqrt(U) (the GMM's score first recalibrated,
    seed 003 Eq. 13, as scipy's NLL fit gives it); the calibrated variance c^2 U bounds the errors of
    held-out structures with probability 1 - alpha; the file, the calculator and evaluate_painn carry it."""
    model = random_model(method, head, members)
    rows = labelled_quartz(100, seed=21)
    calibration, held_out = rows[:50], rows[50:]
    alpha = 0.2
    messages = []
    coverage = calibrate_painn(model, calibration, alpha, log=messages.append)
    assert set(coverage) == {f"energy/{method}", f"force/{method}"}
    assert any("conformal factor c_F" in m for m in messages)

    def raw(structures):
        out = model.evaluate(model.graphs(structures), method, forces=True, calibrated=False)
        e_err = np.abs(out.energy.numpy() - [a.get_potential_energy() for a in structures])
        f_ref = np.concatenate([a.get_forces() for a in structures])
        f_err = np.sqrt(np.mean((out.forces.numpy() - f_ref) ** 2, axis=1))
        return e_err, out.uncertainty.numpy(), f_err, out.atom_uncertainty.numpy(), out

    e_err, U, f_err, U_i, out = raw(calibration)
    variances = {"energy": U, "force": U_i}
    if method == "gmm":
        f_ref = np.concatenate([a.get_forces() for a in calibration])
        residuals = {"energy": out.energy.numpy() - [a.get_potential_energy() for a in calibration]}
        residuals["force"] = out.forces.numpy() - f_ref
        for quantity in ("energy", "force"):
            fit = VarianceRecalibration("positive_variance").fit(residuals[quantity], variances[quantity])
            stored = model.calibration[f"calibration/nll/{quantity}/gmm"]
            np.testing.assert_allclose(stored, [fit.a, fit.b, fit.min_variance], rtol=1e-10)
            variances[quantity] = fit.variance(variances[quantity])
    for quantity, errors in (("energy", e_err), ("force", f_err)):
        ratios = np.sort(errors / np.sqrt(variances[quantity]))
        k = int(np.ceil((len(errors) + 1) * (1 - alpha)))
        c = float(model.calibration[f"calibration/{quantity}/{method}"][0])
        assert c == pytest.approx(ratios[k - 1], rel=1e-12)
        assert coverage[f"{quantity}/{method}"] >= 1 - alpha
    c_E = float(model.calibration[f"calibration/energy/{method}"][0])
    c_F = float(model.calibration[f"calibration/force/{method}"][0])
    calibrated = model.evaluate(model.graphs(calibration), method, forces=True)
    np.testing.assert_allclose(calibrated.uncertainty.numpy(), c_E**2 * variances["energy"], rtol=1e-10)
    np.testing.assert_allclose(calibrated.atom_uncertainty.numpy(), c_F**2 * variances["force"], rtol=1e-10)

    # Held out: the fraction of errors within sqrt(c^2 U) is 1 - alpha up to the binomial spread
    # (450 atoms; 50 energies, so a looser bound).
    loaded = load_painn(save_painn(model, tmp_path / "model.pt"))
    e_err, _, f_err, _, _ = raw(held_out)
    again = loaded.evaluate(loaded.graphs(held_out), method, forces=True)
    f_covered = float(np.mean(f_err <= np.sqrt(again.atom_uncertainty.numpy())))
    e_covered = float(np.mean(e_err <= np.sqrt(again.uncertainty.numpy())))
    assert abs(f_covered - (1 - alpha)) < 4 * np.sqrt(alpha * (1 - alpha) / len(f_err))
    assert abs(e_covered - (1 - alpha)) < 4 * np.sqrt(alpha * (1 - alpha) / len(e_err))
    table = evaluate_painn(loaded, held_out, methods=[method])[method]
    assert table["forces"]["coverage"] == pytest.approx(f_covered)
    assert table["energy"]["coverage"] == pytest.approx(e_covered)
    # The calculator reports and biases with the calibrated U.
    atoms = held_out[0].copy()
    atoms.calc = PaiNNCalculator(loaded, uncertainty=method, tau=0.1)
    atoms.get_potential_energy()
    assert atoms.calc.results["uncertainty"] == pytest.approx(float(again.uncertainty[0]), rel=1e-10)
    assert atoms.calc.results["bias_energy"] == pytest.approx(-0.1 * float(again.uncertainty[0]), rel=1e-10)
    # Adversarial sampling keeps seed 003's raw U (its Eq. 15).
    from mlipbias.sampling.adversaries import PaiNNAdversary

    raw_U = float(loaded.evaluate(loaded.graph(held_out[0]), method, calibrated=False).uncertainty[0])
    assert PaiNNAdversary(loaded, method)(held_out[0]).uncertainty == pytest.approx(raw_U, rel=1e-12)


def _train_config(tmp_path, methods, epochs, extra_uq=None, directory="run"):
    config = {
        "data": {"path": "quartz.db", "validation_fraction": 0.25, "test_fraction": 0.25, "seed": 1},
        "model": {"kind": "painn", "painn": {**SMALL.to_dict(), "layers": 1}},
        "uncertainty": {"methods": methods, "n_members": 2, "gmm_max_components": 2, **(extra_uq or {})},
        "training": {
            "epochs": epochs,
            "batch_size": 4,
            "learning_rate": 0.01,
            "loss": "mae",
            "energy_weight": 0.1,
            "force_weight": 1.0,
            "stress_weight": 0.0,
            "device": "cpu",
        },
        "output": {"directory": directory, "model": "model.pt"},
    }
    path = tmp_path / f"{directory}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def quartz_db(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("painn")
    with connect(tmp_path / "quartz.db") as db:
        for atoms in labelled_quartz(12, seed=7):
            db.write(atoms)
    return tmp_path


def test_mlipbias_train_painn_end_to_end_and_resume(quartz_db, capsys):
    """`mlipbias train` with model.kind painn trains an ensemble (with GMM), lowers the validation loss,
    writes the model and the test table; resuming from epoch 3 to 6 gives the run of 6 epochs."""
    tmp_path = quartz_db
    config = _train_config(tmp_path, ["ensemble", "gmm"], 6)
    assert main(["train", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "spearman" in out and "ensemble" in out and "gmm" in out
    run = tmp_path / "run"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 6
    assert min(np.mean(h["validation_loss"]) for h in history) < np.mean(history[0]["validation_loss"])
    metrics = json.loads((run / "test_metrics.json").read_text())["metrics"]
    assert set(metrics) == {"ensemble", "gmm"} and metrics["ensemble"]["forces"]["rmse"] > 0
    model = load_painn(run / "model.pt")
    assert model.n_members == 2 and model.methods == ("ensemble", "gmm") and model.gmm is not None
    # mlipbias evaluate reads PaiNN files and gives the table of evaluate_painn.
    evaluation = tmp_path / "evaluation"
    args = ["evaluate", "--model", str(run / "model.pt"), "--data", str(tmp_path / "quartz.db"), "--out"]
    assert main([*args, str(evaluation), "--uncertainty", "ensemble", "--no-progress"]) == 0
    assert "PaiNN" in capsys.readouterr().out
    evaluated = json.loads((evaluation / "metrics.json").read_text())["metrics"]
    assert set(evaluated) == {"ensemble"}
    rows = load_dataset(tmp_path / "quartz.db")
    single = evaluate_painn(model, rows, methods=["ensemble"])["ensemble"]["forces"]["rmse"]
    assert evaluated["ensemble"]["forces"]["rmse"] == pytest.approx(single, rel=1e-12)

    short = _train_config(tmp_path, ["ensemble", "gmm"], 3, directory="resumed")
    assert main(["train", str(short), "--no-progress"]) == 0
    longer = yaml.safe_load(short.read_text())
    longer["training"]["epochs"] = 6
    short.write_text(yaml.safe_dump(longer))
    assert main(["train", str(short), "--no-progress", "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    resumed = load_painn(tmp_path / "resumed" / "model.pt")
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(resumed.state_dict()[key].numpy(), value.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("method", "head", "members"), [("mve", "mve", 1), ("gmm", None, 1)])
def test_mlipbias_evaluate_painn_writes_predictions_and_plots(quartz_db, method, head, members, tmp_path):
    """`mlipbias evaluate` on a PaiNN file writes the predictions (equal to the model's own evaluation,
    structure by structure) and the parity, U-vs-error and calibration plots; without calibration data
    the GMM score has no sigma, so only the parity plot is drawn."""
    model = random_model(method, head, members)
    save_painn(model, tmp_path / "model.pt")
    rows = load_dataset(quartz_db / "quartz.db")
    calibration = ["--calibration-data", str(quartz_db / "quartz.db")] if method == "mve" else []
    args = ["evaluate", "--model", str(tmp_path / "model.pt"), "--data", str(quartz_db / "quartz.db")]
    assert main([*args, "--out", str(tmp_path / "eval"), *calibration, "--no-progress"]) == 0
    saved = np.load(tmp_path / "eval" / "predictions.npz")
    for k in (0, 5):
        out = model.evaluate(model.graph(rows[k]), method, forces=True)
        first = int(saved["n_atoms"][:k].sum())
        n = len(rows[k])
        assert saved[f"{method}_energy"][k] == pytest.approx(float(out.energy[0]), rel=1e-12)
        np.testing.assert_allclose(
            saved[f"{method}_forces"][first : first + n], out.forces.numpy(), rtol=1e-10
        )
        np.testing.assert_allclose(
            saved[f"{method}_atom_uncertainty"][first : first + n], out.atom_uncertainty.numpy(), rtol=1e-10
        )
        np.testing.assert_allclose(saved["forces_ref"][first : first + n], rows[k].get_forces())
    written = sorted(p.name for p in (tmp_path / "eval").glob("*.png"))
    expected = (
        ["calibration.png", "parity.png", "uncertainty_vs_error.png"] if calibration else ["parity.png"]
    )
    assert written == expected


@pytest.mark.parametrize("head", ["mve", "evidential", None])
def test_painn_heads_train_jointly(quartz_db, head):
    """Joint heads (seed 003): the force NLL trains the network; the trained model has positive U.
    Without a head and with force weight 0 the network trains on energies alone."""
    from mlipbias.models.painn_training import train_painn
    from mlipbias.models.training import TrainingSettings, UncertaintySettings

    rows = load_dataset(quartz_db / "quartz.db")
    settings = PaiNNSettings(**{**SMALL.to_dict(), "layers": 1})
    t = TrainingSettings(
        stress_weight=0.0,
        force_weight=0.0,
        epochs=4,
        batch_size=4,
        learning_rate=0.01,
        loss="mae",
        energy_weight=0.1,
        device="cpu",
    )
    uq = UncertaintySettings(methods=(head,) if head else (), head_training="joint")
    result = train_painn(
        rows[:8], rows[8:], settings=settings, uncertainty=uq, training=t, progress=False, log=lambda _: None
    )
    losses = [h["train_loss"] for h in result.history]
    assert min(losses) < losses[0]
    if head is None:
        assert "validation_force_rmse" not in result.history[0]  # no force pass at all
        return
    out = result.model.evaluate(result.model.graph(rows[9]), head)
    assert float(out.uncertainty[0]) > 0 and np.isfinite(out.atom_uncertainty.numpy()).all()


@pytest.mark.parametrize(("head", "force_weight"), [(None, 1.0), ("mve", 0.0), (None, 0.0)])
def test_output_scale_is_the_rms_force_when_training_on_forces(head, force_weight):
    """Trained on forces, the output scale is the RMS training force component (unit-sized network
    gradients); on energies alone, the RMSE per atom of the composition fit. The MVE energy variance
    keeps the energy RMSE as its unit. Checked against numpy on molecules of one composition, where the
    fit is the mean energy."""
    from mlipbias.models.painn_training import train_painn
    from mlipbias.models.training import TrainingSettings, UncertaintySettings

    rng = np.random.default_rng(0)
    rows = []
    for k in range(6):
        atoms = ammonia(seed=k)
        forces = rng.normal(scale=0.8, size=(4, 3))
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 + 0.3 * rng.normal(), forces=forces)
        rows.append(atoms)
    t = TrainingSettings(
        stress_weight=0.0, force_weight=force_weight, epochs=1, loss="mae", energy_weight=0.1, device="cpu"
    )
    uq = UncertaintySettings(methods=(head,) if head else (), head_training="joint")
    model = train_painn(
        rows[:4], rows[4:], settings=SMALL, uncertainty=uq, training=t, progress=False, log=lambda _: None
    ).model
    energies = np.array([a.get_potential_energy() for a in rows[:4]])
    energy_rmse = np.std(energies) / 4  # per atom: NH3 has 4
    force_rms = np.sqrt(np.mean(np.concatenate([a.get_forces().ravel() for a in rows[:4]]) ** 2))
    on_forces = force_weight > 0 or head is not None
    assert float(model.energy_scale) == pytest.approx(force_rms if on_forces else energy_rmse, rel=1e-12)
    assert model.energy_shift.numpy() @ [3, 1] == pytest.approx(energies.mean(), rel=1e-12)  # H3N
    if head == "mve":
        assert model.head_scale.numpy() == pytest.approx([energy_rmse**2, force_rms**2], rel=1e-12)


def test_painn_configuration_errors_name_the_key(tmp_path):
    from mlipbias.models.config import config_from_dict

    base = {"data": {"path": "x.db"}, "model": {"kind": "painn"}, "output": {"model": "model.pt"}}
    for values, message in (
        ({"output": {"model": "model.mlip"}}, r"output.model = 'model.mlip': a PaiNN model is a torch file"),
        ({"model": {"kind": "painn", "painn": {"featurs": 8}}}, r"model.painn: unknown key\(s\) featurs"),
        ({"model": {"kind": "schnet"}}, r"model.kind = 'schnet'"),
        ({"uncertainty": {"methods": ["posterior"]}}, r"model.kind painn supports"),
        ({"uncertainty": {"methods": ["mve"], "head_training": "post_hoc"}}, r"post_hoc"),
        ({"model": {"painn": {"cutoff": 4.0}}}, r"model.painn .* need model.kind: painn"),
    ):
        with pytest.raises(ValueError, match=message):
            config_from_dict({**base, **values})


def test_the_seed_003_configuration_of_the_docs_loads():
    """docs/painn.md's configuration is valid and says what seed 003's SI section I says."""
    from pathlib import Path

    from mlipbias.models.config import config_from_dict

    text = (Path(__file__).parents[1] / "docs" / "painn.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = config_from_dict(yaml.safe_load(block))
    assert config.model.kind == "painn" and PaiNNSettings.from_dict(config.model.painn) == PaiNNSettings()
    t = config.training
    assert (t.learning_rate, t.decay_factor, t.decay_patience) == (1e-4, 0.5, 30)
    assert (t.loss, t.energy_weight, t.force_weight) == ("mae", 0.1, 1.0)
    assert config.uncertainty.n_members == 5


def test_a_fixed_energy_scale_replaces_the_fitted_one_and_survives_the_file(tmp_path):
    counts = np.array([[1.0, 3.0], [2.0, 6.0], [1.0, 3.0]])
    energies = np.array([-10.0, -20.1, -10.2])
    fitted = PaiNNModel(["N", "H"], SMALL).fit_energy_shift(counts, energies)
    residual = energies - counts @ np.linalg.lstsq(counts, energies, rcond=None)[0]
    assert fitted == pytest.approx(np.sqrt(np.mean((residual / counts.sum(axis=1)) ** 2)))
    model = PaiNNModel(["N", "H"], PaiNNSettings(**{**SMALL.to_dict(), "energy_scale": 0.5}))
    assert model.fit_energy_shift(counts, energies) == pytest.approx(fitted)  # the fit's RMSE, reported
    assert float(model.energy_scale) == 0.5
    model.fit_energy_shift(counts, energies, force_rms=2.0)  # the fixed scale wins over the force RMS too
    assert float(model.energy_scale) == 0.5
    path = save_painn(model, tmp_path / "scaled.pt")
    loaded = load_painn(path)
    assert loaded.settings.energy_scale == 0.5 and float(loaded.energy_scale) == 0.5
    for bad in (0.0, -1.0, float("inf"), True, "1"):
        with pytest.raises(ValueError, match="energy_scale"):
            PaiNNSettings(energy_scale=bad)


@pytest.mark.parametrize("head", ["mve", "evidential"])
def test_painn_force_only_nll_is_tan_et_al_and_leaves_the_energy_head_untrained(quartz_db, head):
    """head_energy_nll false (Tan et al. SI Eq. 3-4, 6-9): the NLL is scipy's mean log-density of the force
    components alone, and the energy head's outputs get no gradient; true adds the energy head's term."""
    import scipy.stats

    from mlipbias.models.painn_training import _labelled, painn_batch_loss
    from mlipbias.models.training import TrainingSettings, UncertaintySettings
    from mlipbias.uq import evidential, mve

    rows = load_dataset(quartz_db / "quartz.db")[:3]
    model = random_model(head, head, 1, elements=("O", "Si"))
    items = _labelled(rows, model.elements, SMALL.cutoff, True, "test")
    t = TrainingSettings(loss="mae", energy_weight=0.0, force_weight=0.0, stress_weight=0.0, nll_weight=1.0)
    out = model.evaluate(model.graphs(rows), None, forces=True)
    r = (out.forces - torch.cat([it.forces for it in items])).numpy()
    raw, units = out.head.detach(), model.head_scale.detach()
    if head == "mve":
        v = mve.variances(raw, units)[1].numpy()[:, None]
        expected = -scipy.stats.norm.logpdf(r, scale=np.sqrt(v)).mean()
    else:
        nu, alpha, beta = (x.numpy()[:, None] for x in evidential.parameters_force(raw, units))
        scale = np.sqrt(beta * (1 + nu) / (nu * alpha))
        nll = -scipy.stats.t.logpdf(r, 2 * alpha, 0.0, scale) + 0.2 * np.abs(r) * (2 * nu + alpha)
        expected = nll.mean()
    values = {}
    for energy_nll in (False, True):
        uq = UncertaintySettings(
            methods=(head,), head_training="joint", head_energy_nll=energy_nll, nll_beta=0.0
        )
        model.zero_grad()
        loss, _, parts = painn_batch_loss(model, items, t, uq, "cpu", train=True)
        loss.backward()
        values[energy_nll] = float(parts["nll"])
        energy_rows = model.members[0].head.weight.grad[: model.members[0].head.weight.shape[0] // 2]
        if not energy_nll:
            assert float(energy_rows.abs().max()) == 0.0
        else:
            assert float(energy_rows.abs().max()) > 0.0
    assert values[False] == pytest.approx(expected, rel=1e-10)


def test_painn_training_warm_starts_from_init_model(quartz_db):
    """init_model (active learning): training starts from its weights and energy shift, so a step of a
    vanishing learning rate returns them; another architecture is an error naming init_model."""
    from mlipbias.models.painn_training import train_painn
    from mlipbias.models.training import TrainingSettings, UncertaintySettings

    rows = load_dataset(quartz_db / "quartz.db")
    settings = PaiNNSettings(**{**SMALL.to_dict(), "layers": 1})
    uq = UncertaintySettings(methods=())
    t = TrainingSettings(stress_weight=0.0, epochs=2, batch_size=4, learning_rate=0.01, device="cpu", seed=1)
    common = {"uncertainty": uq, "progress": False, "log": lambda _: None}
    first = train_painn(rows[:8], rows[8:], settings=settings, training=t, **common).model
    tiny = TrainingSettings(
        stress_weight=0.0, epochs=1, batch_size=4, learning_rate=1e-12, device="cpu", seed=2
    )
    warm = train_painn(rows[:6], rows[6:], settings=settings, training=tiny, init_model=first, **common).model
    cold = train_painn(rows[:6], rows[6:], settings=settings, training=tiny, **common).model
    for key, value in first.state_dict().items():
        np.testing.assert_allclose(warm.state_dict()[key].numpy(), value.numpy(), rtol=0, atol=1e-9)
    assert any(
        not np.allclose(cold.state_dict()[k].numpy(), v.numpy()) for k, v in first.state_dict().items()
    )
    other = PaiNNSettings(**{**SMALL.to_dict(), "layers": 2})
    with pytest.raises(ValueError, match="init_model"):
        train_painn(rows[:6], rows[6:], settings=other, training=tiny, init_model=first, **common)


def _morse_methanol(n: int, seed: int = 0) -> list[Atoms]:
    """Methanol displaced by 0.03 A (RMS force ~1.3 eV/A, like MD17's) around the minimum of a Morse
    potential: a smooth, cheap oracle."""
    from ase.calculators.morse import MorsePotential
    from ase.optimize import BFGS

    base = molecule("CH3OH")
    base.calc = MorsePotential(epsilon=1.0, r0=1.2, rho0=4.0)
    BFGS(base, logfile=None).run(fmax=1e-4)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        atoms.calc = MorsePotential(epsilon=1.0, r0=1.2, rho0=4.0)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        rows.append(atoms)
    return rows


def test_joint_mve_and_evidential_learn_the_forces_like_the_mae_model():
    """Regression (issue 13): seed 003's joint loss (energy MAE, force NLL, force_weight 0) learns the
    forces about as well as the MAE-trained network in the same epochs. Before the energy-variance
    outputs saw detached features, the energy NLL steered the shared layers: on this set the MVE
    force error rose to 1e4-1e20 eV/A and the evidential one stayed at its start (1.2 eV/A)."""
    from mlipbias.models.painn_training import train_painn
    from mlipbias.models.training import TrainingSettings, UncertaintySettings

    rows = _morse_methanol(24)
    settings = PaiNNSettings(cutoff=3.5, features=8, layers=1, radial_basis=6, readout=(8, 8))
    best = {}
    for head in (None, "mve", "evidential"):
        t = TrainingSettings(
            stress_weight=0.0,
            force_weight=0.0 if head else 1.0,
            epochs=80,
            batch_size=4,
            learning_rate=1e-2,
            loss="mae",
            energy_weight=0.9,
            device="cpu",
        )
        uq = UncertaintySettings(methods=(head,) if head else (), head_training="joint")
        history = train_painn(
            rows[:16],
            rows[16:],
            settings=settings,
            uncertainty=uq,
            training=t,
            progress=False,
            log=lambda _: None,
        ).history
        force = np.array([h["validation_force_rmse"][0] for h in history])
        assert np.isfinite(force).all() and force.max() < 1.5 * force[0], head
        best[head] = force.min() / force[0]
    assert best[None] < 0.6
    for head in ("mve", "evidential"):
        assert best[head] < 0.6 and best[head] < 1.5 * best[None], (head, best)


def test_warmup_epochs_train_the_mean_as_the_mae_network_then_switch_to_joint():
    """uncertainty.warmup_epochs: during the warm-up the mean network follows the accuracy loss exactly
    (the same forces as a network without a head, same seed), the heads learn on detached inputs; after
    it the joint NLL takes over and the best epoch is chosen among the joint epochs only."""
    from mlipbias.models.painn_training import train_painn
    from mlipbias.models.training import TrainingSettings, UncertaintySettings

    rows = _morse_methanol(12)
    settings = PaiNNSettings(cutoff=3.5, features=8, layers=1, radial_basis=6, readout=(8, 8))

    def run(head, force_weight, epochs, warmup=0):
        t = TrainingSettings(
            stress_weight=0.0,
            force_weight=force_weight,
            epochs=epochs,
            batch_size=4,
            learning_rate=1e-2,
            loss="mae",
            energy_weight=0.9,
            device="cpu",
        )
        uq = UncertaintySettings(methods=(head,) if head else (), head_training="joint", warmup_epochs=warmup)
        return train_painn(
            rows[:8],
            rows[8:],
            settings=settings,
            uncertainty=uq,
            training=t,
            progress=False,
            log=lambda _: None,
        )

    plain = run(None, 1.0, 4)
    for head in ("mve", "evidential"):
        warm = run(head, 0.0, 4, warmup=4)
        for a, b in zip(warm.history, plain.history, strict=True):
            assert a["validation_force_rmse"] == pytest.approx(b["validation_force_rmse"], rel=1e-10)
            assert a["validation_energy_rmse"] == pytest.approx(b["validation_energy_rmse"], rel=1e-10)
        switched = run(head, 0.0, 4, warmup=2)
        force = [h["validation_force_rmse"][0] for h in switched.history]
        assert force[:2] == pytest.approx(
            [h["validation_force_rmse"][0] for h in plain.history[:2]], rel=1e-10
        )
        assert force[2] != pytest.approx(plain.history[2]["validation_force_rmse"][0], rel=1e-6)
        assert switched.best_epoch[0] > 2
    with pytest.raises(ValueError, match="warmup_epochs"):
        run("mve", 0.0, 1, warmup=-1)
