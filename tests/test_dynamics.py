"""Explorers (mlipbias.dynamics): MD walkers in ASE and LAMMPS with one stop rule, perturbations.

Each walker's recorded U and U_i are checked against an independent evaluation of the candidate
with MLIPCalculator (for LAMMPS: the plugin against the Python calculator, which also checks the
frame and the atom order), and the stop rule against the recorded values.
"""

import numpy as np
import pytest
from lammps_fixtures import structure, write_model

from mlipbias.calculators import MLIPCalculator
from mlipbias.dynamics import EXPLORERS, ExplorerSettings, TrainingData, check_options, get_explorer
from mlipbias.dynamics.explorer import STOP_DONE, STOP_MAX_STEPS, STOP_THRESHOLD
from mlipbias.dynamics.perturb import perturbed


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(write_model(tmp_path_factory.mktemp("dyn") / "model.mlip"))


def _reference(model_path, atoms):
    calc = MLIPCalculator(model_path, uncertainty="posterior", backend="torch")
    calc.calculate(atoms.copy(), ["energy", "forces"])
    return calc.results["uncertainty"], calc.results["atom_uncertainty"]


@pytest.mark.parametrize("engine", ["ase", "lammps"])
@pytest.mark.parametrize("ensemble", ["nvt", "npt"])
def test_walker_records_the_model_uncertainty_until_the_step_limit(model_path, engine, ensemble):
    settings = ExplorerSettings(
        engine=engine,
        ensemble=ensemble,
        uncertainty="posterior",
        threshold=1e6,
        max_steps=30,
        record_interval=10,
        tau=0.5,
        temperature=500.0,
        barostat_time=50.0,
        thermostat_time=20.0,
    )
    start = structure(1)
    result = get_explorer("md")(model_path, start, settings, seed=4)
    assert result.stop_reason == STOP_MAX_STEPS and result.steps == 30
    assert [c.info["step"] for c in result.candidates] == [10, 20, 30]
    for c in result.candidates:
        U, U_i = _reference(model_path, c)
        assert c.info["uncertainty"] == pytest.approx(U, rel=1e-6)
        np.testing.assert_allclose(c.arrays["atom_uncertainty"], U_i, rtol=1e-6, atol=1e-9)
    moved = np.abs(result.candidates[-1].positions - result.candidates[0].positions).max()
    assert moved > 1e-3
    volumes = [c.get_volume() for c in result.candidates]
    if ensemble == "npt":
        assert np.ptp(volumes) > 1e-6 * volumes[0]
    else:
        np.testing.assert_allclose(volumes, start.get_volume(), rtol=1e-9)


@pytest.mark.parametrize("engine", ["ase", "lammps"])
def test_walker_stops_at_the_first_step_over_the_threshold(model_path, engine):
    # Threshold a little above the start's largest U_i: the biased walker crosses it within a few steps.
    start = structure(2)
    _, U_i = _reference(model_path, start)
    threshold = 1.2 * float(U_i.max())
    settings = ExplorerSettings(
        engine=engine,
        uncertainty="posterior",
        threshold=threshold,
        max_steps=2000,
        record_interval=1,
        tau=1.0,
        temperature=800.0,
    )
    result = get_explorer("md")(model_path, start, settings, seed=1)
    assert result.stop_reason == STOP_THRESHOLD
    peaks = [c.arrays["atom_uncertainty"].max() for c in result.candidates]
    assert peaks[-1] >= threshold and all(p < threshold for p in peaks[:-1])
    assert result.candidates[-1].info["step"] == result.steps
    assert result.max_atom_uncertainty == pytest.approx(peaks[-1])


def test_perturbations_follow_eqs_32_to_34():
    start = structure(0)
    rng = np.random.default_rng(0)
    a, s = 0.07, 0.04
    for _ in range(5):
        atoms = perturbed(start, a, s, rng)
        deformation = np.linalg.solve(start.cell.array, atoms.cell.array)  # cell' = cell (I + eps)
        eps = deformation - np.eye(3)
        assert np.abs(eps).max() <= s and np.abs(eps).max() > 0.1 * s
        shifts = np.linalg.solve(deformation.T, atoms.positions.T).T - start.positions  # Eq. 34 undone
        assert np.abs(shifts).max() <= a + 1e-12 and np.abs(shifts).max() > 0.5 * a
    molecule = start.copy()
    molecule.pbc = False
    moved = perturbed(molecule, a, s, rng)
    np.testing.assert_array_equal(moved.cell.array, molecule.cell.array)  # no cell strain without periodicity


def test_perturbation_explorer_ranks_its_samples(model_path):
    settings = ExplorerSettings(uncertainty="posterior", n_samples=4, position_amplitude=0.1)
    result = EXPLORERS["perturb"](model_path, structure(0), settings, seed=3)
    again = EXPLORERS["perturb"](model_path, structure(0), settings, seed=3)
    assert result.stop_reason == STOP_DONE and len(result.candidates) == 4
    for c, d in zip(result.candidates, again.candidates, strict=True):
        np.testing.assert_array_equal(c.positions, d.positions)  # a pure function of the seed
        U, _ = _reference(model_path, c)
        assert c.info["uncertainty"] == pytest.approx(U, rel=1e-6)


def test_ase_walker_keeps_its_trajectory_every_interval(model_path):
    settings = ExplorerSettings(
        uncertainty="posterior",
        threshold=1e6,
        max_steps=30,
        record_interval=10,
        trajectory_interval=5,
        tau=0.5,
        temperature=500.0,
    )
    result = get_explorer("md")(model_path, structure(1), settings, seed=4)
    trajectory = result.trajectory
    assert trajectory["step"].tolist() == [0, 5, 10, 15, 20, 25, 30]
    assert trajectory["positions"].shape == (7, len(structure(1)), 3)
    np.testing.assert_allclose(trajectory["positions"][0], structure(1).positions, atol=1e-5)
    # The kept frames are the walker's own: the candidates at steps 10, 20, 30 are among them.
    for c, row in zip(result.candidates, (2, 4, 6), strict=True):
        np.testing.assert_allclose(trajectory["positions"][row], c.positions, atol=1e-4)
        np.testing.assert_allclose(
            trajectory["atom_uncertainty"][row], c.arrays["atom_uncertainty"], rtol=1e-5, atol=1e-7
        )
    assert (
        get_explorer("md")(model_path, structure(1), ExplorerSettings(max_steps=2), seed=4).trajectory is None
    )


def test_settings_errors_name_the_key():
    with pytest.raises(ValueError, match="explore.ensemble"):
        ExplorerSettings(ensemble="nve").check()
    with pytest.raises(ValueError, match="explore.threshold"):
        ExplorerSettings(threshold=0.0).check()
    with pytest.raises(ValueError, match="explore.trajectory_interval"):
        ExplorerSettings(engine="lammps", trajectory_interval=10).check()
    with pytest.raises(ValueError, match="unknown explorer 'metadynamics'"):
        get_explorer("metadynamics")


def test_lammps_walker_refuses_a_molecule(model_path):
    molecule = structure(0)
    molecule.pbc = False
    with pytest.raises(ValueError, match="periodic"):
        get_explorer("md")(model_path, molecule, ExplorerSettings(engine="lammps"), seed=0)


def test_lammps_npt_with_full_cell_fluctuations_runs_on_an_orthogonal_box(model_path):
    # `fix npt ... tri` needs a triclinic box: the walker writes one even for a cubic cell.
    from ase import Atoms

    grid = np.array([[i, j, k] for i in range(3) for j in range(3) for k in range(3)], float) * 2.0 + 0.3
    cubic = Atoms(["Si"] * 9 + ["O"] * 18, positions=grid, cell=[6, 6, 6], pbc=True)
    settings = ExplorerSettings(
        engine="lammps",
        ensemble="npt",
        uncertainty="posterior",
        threshold=1e6,
        max_steps=10,
        record_interval=5,
    )
    result = get_explorer("md")(model_path, cubic, settings, seed=0)
    assert result.stop_reason == STOP_MAX_STEPS and len(result.candidates) == 2


@pytest.fixture(scope="module")
def training_data(tmp_path_factory):
    """Three BKS-labelled rows of generations 0, 1 and 2."""
    from mlipbias.datasets import append_labelled

    path = tmp_path_factory.mktemp("adv") / "dataset.db"
    for k in range(3):
        append_labelled(path, structure(10 + k), "bks", al_generation=k)
    return str(path)


def test_adversarial_explorer_returns_the_models_uncertainty_of_finite_samples(model_path, training_data):
    from mlipbias.datasets import load_dataset
    from mlipbias.sampling import AdversarialSamplingSettings, adversarial_samples
    from mlipbias.sampling.adversarial import log_partition

    options = {"n_samples": 3, "iterations": 8, "learning_rate": 0.01, "energy_cutoff": None}
    settings = ExplorerSettings(uncertainty="posterior", options=options)
    training = TrainingData(training_data, "al_generation<2")
    start = structure(0)
    result = EXPLORERS["adversarial"](model_path, start, settings, 7, training)
    again = EXPLORERS["adversarial"](model_path, start, settings, 7, training)
    assert result.stop_reason == STOP_DONE and len(result.candidates) == 3
    assert result.max_atom_uncertainty == max(c.arrays["atom_uncertainty"].max() for c in result.candidates)
    # The samples are those of the sampler run from the walker's start against generations 0 and 1.
    reference = load_dataset(training_data, "al_generation<2")
    assert len(reference) == 2
    direct = adversarial_samples(
        model_path,
        reference,
        starts=[start],
        method="posterior",
        settings=AdversarialSamplingSettings(**options, seed=7),
        progress=False,
    )
    for c, d, sample in zip(result.candidates, again.candidates, direct.samples, strict=True):
        np.testing.assert_array_equal(c.positions, d.positions)  # a pure function of the seed
        np.testing.assert_allclose(c.positions, sample.atoms.positions, rtol=0, atol=1e-12)
        assert np.isfinite(c.positions).all() and np.abs(c.positions - start.positions).max() > 1e-3
        U, U_i = _reference(model_path, c)
        assert np.isfinite(U) and c.info["uncertainty"] == pytest.approx(U, rel=1e-6)
        np.testing.assert_allclose(c.arrays["atom_uncertainty"], U_i, rtol=1e-6, atol=1e-9)
    # The reference is Eq. 16's denominator: with all three rows the objective scales by Z_2 / Z_3.
    everything = load_dataset(training_data)
    other = adversarial_samples(
        model_path,
        everything,
        starts=[start],
        method="posterior",
        settings=AdversarialSamplingSettings(**options, seed=7),
        progress=False,
    )

    def log_z(rows):
        energies = [a.get_potential_energy() for a in rows]
        return log_partition(np.array(energies), np.array([len(a) for a in rows]), direct.settings.kT)

    ratio = other.samples[0].objective / direct.samples[0].objective
    assert ratio == pytest.approx(np.exp(log_z(reference) - log_z(everything)), rel=1e-9)
    assert abs(ratio - 1) > 1e-3
    # reference: initial sums Eq. 16 over generation 0 only, as Tan et al.'s "initial training data".
    initial = ExplorerSettings(uncertainty="posterior", options={**options, "reference": "initial"})
    first = EXPLORERS["adversarial"](model_path, start, initial, 7, training)
    np.testing.assert_allclose(first.candidates[0].positions, result.candidates[0].positions, atol=1e-12)
    generation_0 = [a for a in reference if a.info["al_generation"] == 0]
    assert len(generation_0) == 1
    direct_0 = adversarial_samples(
        model_path,
        generation_0,
        starts=[start],
        method="posterior",
        settings=AdversarialSamplingSettings(**options, seed=7),
        progress=False,
    )
    assert direct_0.samples[0].objective / direct.samples[0].objective == pytest.approx(
        np.exp(log_z(reference) - log_z(generation_0)), rel=1e-9
    )


def test_adversarial_explorer_reports_rejected_samples_and_needs_the_training_data(model_path, training_data):
    # An untrained model predicts energies far above BKS's: Tan et al.'s 100 kcal/mol cutoff rejects all.
    settings = ExplorerSettings(uncertainty="posterior", options={"n_samples": 1, "iterations": 2})
    result = EXPLORERS["adversarial"](model_path, structure(0), settings, 1, TrainingData(training_data))
    assert result.stop_reason == STOP_DONE and result.candidates == []
    assert "0 adversarial samples of 5 attempts" in result.detail and "over the cutoff" in result.detail
    with pytest.raises(ValueError, match="needs the training structures"):
        EXPLORERS["adversarial"](model_path, structure(0), settings, 1)
    with pytest.raises(ValueError, match="no labelled structure matches"):
        EXPLORERS["adversarial"](
            model_path, structure(0), settings, 1, TrainingData(training_data, "al_generation<0")
        )


@pytest.mark.parametrize(
    ("explorer", "options", "message"),
    [
        ("adversarial", {"initial_displacement": None}, r"explore\.options\.initial_displacement = null"),
        (
            "adversarial",
            {"iteration": 80},
            r"explore\.options\.iteration: not a setting .* known: reference, iterations",
        ),
        (
            "adversarial",
            {"learning_rate": "1e-4"},
            r"explore\.options\.learning_rate = '1e-4': expected a number",
        ),
        ("adversarial", {"kT": -1.0}, r"explore\.options\.kT = -1.0: expected a finite number > 0"),
        ("adversarial", {"n_samples": 0}, r"explore\.options\.n_samples = 0"),
        ("adversarial", {"strain": 1}, r"explore\.options\.strain = 1: expected true or false"),
        ("adversarial", {"n_samples": 4, "max_attempts": 2}, r"explore\.options\.max_attempts = 2"),
        ("md", {"iterations": 80}, r"explore\.options\.iterations: explorer md takes no options"),
    ],
)
def test_explorer_options_errors_name_the_key(explorer, options, message):
    with pytest.raises(ValueError, match=message):
        check_options(explorer, options)
    check_options(
        "adversarial",
        {"n_samples": 2, "kT": 0.05, "strain": True, "energy_cutoff": None, "reference": "initial"},
    )


def test_adversarial_explorer_takes_a_painn_file(tmp_path, training_data):
    import torch

    from mlipbias.models.painn import PaiNNCalculator, PaiNNModel, PaiNNSettings, save_painn

    torch.manual_seed(5)
    settings = PaiNNSettings(cutoff=3.5, features=8, layers=2, radial_basis=6, readout=(8, 8))
    model = PaiNNModel(["O", "Si"], settings, n_members=3, methods=("ensemble",))
    path = str(tmp_path / "painn.pt")
    save_painn(model, path)
    options = {"n_samples": 2, "iterations": 4, "learning_rate": 0.01, "energy_cutoff": None}
    explorer_settings = ExplorerSettings(uncertainty="ensemble", options=options)
    result = EXPLORERS["adversarial"](path, structure(0), explorer_settings, 2, TrainingData(training_data))
    assert len(result.candidates) == 2
    for c in result.candidates:
        calc = PaiNNCalculator(path, uncertainty="ensemble")
        calc.calculate(c.copy(), ["energy", "forces"])
        assert np.isfinite(c.info["uncertainty"])
        assert c.info["uncertainty"] == pytest.approx(calc.results["uncertainty"], rel=1e-6)
        np.testing.assert_allclose(c.arrays["atom_uncertainty"], calc.results["atom_uncertainty"], rtol=1e-6)


def test_adversarial_explorer_takes_a_gmnn_file(tmp_path, training_data):
    from gmnn_fixtures import write_gm_model

    path = str(write_gm_model(tmp_path / "gm.mlip"))
    options = {"n_samples": 2, "iterations": 4, "learning_rate": 0.01, "energy_cutoff": None}
    settings = ExplorerSettings(uncertainty="posterior", options=options)
    result = EXPLORERS["adversarial"](path, structure(0), settings, 3, TrainingData(training_data))
    assert len(result.candidates) == 2
    for c in result.candidates:
        assert np.abs(c.positions - structure(0).positions).max() > 1e-3
        U, U_i = _reference(path, c)
        assert np.isfinite(U) and c.info["uncertainty"] == pytest.approx(U, rel=1e-6)
        np.testing.assert_allclose(c.arrays["atom_uncertainty"], U_i, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("engine", ["ase", "lammps"])
def test_rescale_window_sets_the_unbiased_burn_in(model_path, engine):
    """Eq. 8 in the window form: no bias for the first ``rescale_window`` steps, so a biased walker
    follows the unbiased one (same seed) exactly until then and leaves it after."""

    def frames(tau, window):
        settings = ExplorerSettings(
            engine=engine,
            uncertainty="posterior",
            threshold=1e6,
            max_steps=30,
            record_interval=5,
            tau=tau,
            tau_stress=0.0,
            rescale=True,
            rescale_window=window,
            temperature=500.0,
        )
        result = get_explorer("md")(model_path, structure(1), settings, seed=3)
        return np.array([c.positions for c in result.candidates])

    plain = frames(0.0, 15)
    biased = frames(2.0, 15)
    np.testing.assert_allclose(biased[:3], plain[:3], atol=1e-9)  # steps 5, 10, 15
    assert np.abs(biased[-1] - plain[-1]).max() > 1e-6  # step 30
    np.testing.assert_allclose(frames(2.0, 100), plain, atol=1e-9)  # still in the default burn-in
