"""Adversarial directions (seed 001): the math against finite differences and closed forms, the experiments
against ASE's own integrator and optimiser, resume after an interruption, and the command line end to end."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.calculators.morse import MorsePotential
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Icosahedron
from ase.md.verlet import VelocityVerlet

from mlipbias.adversarial import (
    AdversarialSettings,
    CalculationError,
    Evaluator,
    configuration_quantities,
    cos_theta,
    cos_vs_energy,
    distort,
    distortion_table,
    energy_above_minimum,
    evaluate_dataset,
    gradient_descent_rollout,
    markdown_report,
    newton_step,
    newton_step_experiment,
    random_baseline,
    run_diagnosis,
    write_report,
)
from mlipbias.cli import main
from mlipbias.cli.adversarial import _calculator_from_spec, parse_spec

# Cu parameters of the analytic stand-ins for an "approximate model" against EMT.
CU_LJ = {"sigma": 2.338, "epsilon": 0.409, "rc": 5.0, "smooth": True}
CU_MORSE = {"epsilon": 0.3429, "r0": 2.866, "rho0": 3.894, "rcut1": 4.5, "rcut2": 5.5}


class Harmonic(Calculator):
    """E = e0 + k/2 sum_i |r_i - c_i|^2, F = -k (r - c): a model whose every experiment has a closed form."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, k: float, center: np.ndarray, e0: float = 0.0):
        super().__init__()
        self.k, self.center, self.e0 = k, np.array(center, float), e0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions - self.center
        self.results = {"energy": self.e0 + 0.5 * self.k * np.sum(d * d), "forces": -self.k * d}


class Interrupted(KeyboardInterrupt):
    """Stands for Ctrl-C or a killed job in the middle of a calculator call."""


class Counting(Calculator):
    """Wraps a calculator: counts its evaluations, records the geometries, can fail at call fail_at."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, inner: Calculator, fail_at: int | None = None, shift: dict | None = None):
        super().__init__()
        self.inner, self.fail_at, self.shift = inner, fail_at, shift or {}
        self.calls, self.geometries = 0, []

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.calls == self.fail_at:
            raise Interrupted(f"interrupted at call {self.calls}")
        self.geometries.append(self.atoms.positions.copy())
        work = self.atoms.copy()
        work.calc = self.inner
        energy = work.get_potential_energy() + sum(
            self.shift.get(s, 0.0) for s in work.get_chemical_symbols()
        )
        self.results = {"energy": energy, "forces": work.get_forces()}


def rattled_cu(n: int, seed: int = 0, size=(2, 1, 1), max_norm: float = 0.6) -> list[Atoms]:
    """A periodic Cu cell displaced like seed 001's data: Gaussian directions, total norm uniform."""
    base = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(size)
    rng = np.random.default_rng(seed)
    configs = []
    for _ in range(n):
        atoms = base.copy()
        d = rng.standard_normal(atoms.positions.shape)
        atoms.positions += d * rng.uniform(0.05, max_norm) / np.linalg.norm(d)
        configs.append(atoms)
    return configs


def harmonic_pair(n_atoms: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n_atoms, 3)), rng.normal(size=(n_atoms, 3))
    return Harmonic(3.0, a, 0.0), Harmonic(2.0, b, 0.1), a, b


def points(n_configs: int, n_atoms: int, seed: int = 2) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    return [Atoms("H" * n_atoms, positions=rng.normal(size=(n_atoms, 3))) for _ in range(n_configs)]


# -- the math ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    ["cluster: EMT vs Morse", "periodic: EMT vs Lennard-Jones"],
)
def test_adversarial_direction_is_the_gradient_of_the_squared_error(case):
    if case.startswith("cluster"):
        atoms = Icosahedron("Cu", 2)
        atoms.rattle(0.05, seed=3)
        approx = MorsePotential(**CU_MORSE)
    else:
        atoms = rattled_cu(1, seed=4)[0]
        approx = LennardJones(**CU_LJ)
    accurate = EMT()

    def squared_error(positions):
        trial = atoms.copy()
        trial.positions = positions
        energies = []
        for calc in (accurate, approx):
            trial.calc = calc
            energies.append(trial.get_potential_energy())
        return (energies[0] - energies[1]) ** 2

    h = 1e-5
    fd = np.zeros_like(atoms.positions)
    for i in range(len(atoms)):
        for k in range(3):
            step = np.zeros_like(atoms.positions)
            step[i, k] = h
            fd[i, k] = (squared_error(atoms.positions + step) - squared_error(atoms.positions - step)) / (
                2 * h
            )
    a = configuration_quantities(Evaluator(approx, accurate), atoms)["a"]
    assert np.linalg.norm(a) > 1e-2
    np.testing.assert_allclose(a, fd, rtol=0, atol=1e-6 * np.abs(fd).max())


def test_cos_theta_of_aligned_antialigned_and_random_vectors():
    rng = np.random.default_rng(5)
    v = rng.normal(size=(20, 3))
    assert cos_theta(v, 3.0 * v) == pytest.approx(1.0, abs=1e-15)
    assert cos_theta(v, -0.5 * v) == pytest.approx(-1.0, abs=1e-15)
    assert np.isnan(cos_theta(v, np.zeros_like(v)))

    n_atoms = 100  # 3N = 300, like seed 001's 96-atom cells
    cos = np.array(
        [cos_theta(rng.normal(size=(n_atoms, 3)), rng.normal(size=(n_atoms, 3))) for _ in range(4000)]
    )
    # For random unit vectors in d dimensions: E[cos] = 0, E[cos^2] = 1/d, E|cos| -> sqrt(2 / (pi d)).
    assert abs(cos.mean()) < 4 * random_baseline(n_atoms) / np.sqrt(cos.size)
    assert np.sqrt(np.mean(cos**2)) == pytest.approx(random_baseline(n_atoms), rel=0.04)
    assert np.mean(np.abs(cos)) == pytest.approx(np.sqrt(2 / (np.pi * 3 * n_atoms)), rel=0.04)


def test_a_is_parallel_to_f_app_at_a_minimum_of_the_accurate_model():
    """Eq. 4: where F_acc = 0, A = 2 (E_acc - E_app) F_app, so cos(theta) = sign(E_acc - E_app)."""
    approx, _, a, _ = harmonic_pair(5)
    rng = np.random.default_rng(6)
    for e0 in (-0.5, 0.5):
        atoms = Atoms("H5", positions=rng.normal(size=(5, 3)))
        accurate = Harmonic(2.0, atoms.positions, e0)  # its minimum is this configuration
        q = configuration_quantities(Evaluator(approx, accurate), atoms)
        assert q["cos"] == pytest.approx(np.sign(e0 - q["e_app"]), abs=1e-14)


# -- the experiments -----------------------------------------------------------------------------------------


def test_distortions_have_norm_eps_and_move_along_plus_or_minus_a_or_at_random():
    configs = points(3, 6)
    eps = (0.0, 0.1, 0.3)
    for sign in (1, -1):
        inner_app, accurate, _, _ = harmonic_pair(6)
        approx = Counting(inner_app)
        ev = Evaluator(approx, accurate)
        table = distortion_table(ev, configs, eps, seed=7, direction_sign=sign, progress=False)
        assert approx.calls == len(configs) * (1 + 2 * 2)  # the eps = 0 rows reuse the base evaluation
        for atoms in configs:
            a = configuration_quantities(ev, atoms)["a"]
            moves = [g - atoms.positions for g in approx.geometries]
            moves = [d for d in moves if np.linalg.norm(d) < 1.0]  # this configuration's geometries
            norms = sorted(np.linalg.norm(d) for d in moves)
            np.testing.assert_allclose(norms, [0.0, 0.1, 0.1, 0.3, 0.3], atol=1e-12)
            cos = [cos_theta(d, a) for d in moves if np.linalg.norm(d) > 0]
            along = [c for c in cos if abs(c - sign) < 1e-12]
            random = [d for d in moves if np.linalg.norm(d) > 0 and abs(cos_theta(d, a) - sign) > 1e-12]
            assert len(along) == 2 and len(random) == 2
            assert cos_theta(random[0], random[1]) == pytest.approx(
                1.0, abs=1e-12
            )  # one direction per config
            assert abs(cos_theta(random[0], a)) < 0.9
        assert table["adversarial_rmse"][0] == table["random_rmse"][0]
        if sign == 1:  # the squared error grows along +A
            assert table["adversarial_rmse"][2] > table["adversarial_rmse"][1] > table["adversarial_rmse"][0]


def test_distort_keeps_the_requested_norm():
    rng = np.random.default_rng(8)
    x, d = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    for eps in (0.0, 0.1, 0.5):
        moved = distort(x, d, eps)
        assert np.linalg.norm(moved - x) == pytest.approx(eps, abs=1e-14)
    with pytest.raises(ValueError, match="norm"):
        distort(x, np.zeros_like(d), 0.1)


def cu_au_cell(seed: int) -> Atoms:
    atoms = rattled_cu(1, seed=seed, size=(1, 1, 2), max_norm=0.3)[0]
    atoms.symbols[[1, 4, 6]] = "Au"
    return atoms


@pytest.mark.parametrize("with_velocities", [False, True])
def test_newton_step_is_the_first_velocity_verlet_step(with_velocities):
    atoms = cu_au_cell(9)  # two masses, so the step is F dt^2 / (2 m) atom by atom
    if with_velocities:
        atoms.set_velocities(np.random.default_rng(10).normal(scale=0.01, size=(len(atoms), 3)))
    reference = atoms.copy()
    reference.calc = EMT()
    VelocityVerlet(reference, timestep=1.0 * units.fs).run(1)

    forces = atoms.copy()
    forces.calc = EMT()
    velocities = atoms.get_velocities() if with_velocities else None
    x1 = newton_step(atoms.positions, forces.get_forces(), atoms.get_masses(), 1.0, velocities)
    np.testing.assert_allclose(x1, reference.positions, rtol=0, atol=1e-13)

    # EMT is the approximate model here (its forces drive the step), Lennard-Jones the reference.
    accurate = LennardJones(**CU_LJ)
    result = newton_step_experiment(
        Evaluator(EMT(), accurate), [atoms], 1.0, "dataset" if with_velocities else "rest", progress=False
    )
    e_app = reference.get_potential_energy()
    reference.calc = accurate
    expected = (reference.get_potential_energy() - e_app) / len(atoms) * 1000
    assert result["error_after"][0] == pytest.approx(expected, rel=1e-12)
    before = result["error_before"][0]
    assert result["relative_change"][0] == pytest.approx(100 * (abs(expected) - abs(before)) / abs(before))


def test_newton_step_from_dataset_velocities_needs_them():
    approx, accurate, _, _ = harmonic_pair(4)
    with pytest.raises(ValueError, match="configuration 0 has no velocities"):
        newton_step_experiment(
            Evaluator(approx, accurate), points(1, 4), velocities="dataset", progress=False
        )


def test_gradient_descent_on_harmonic_models_follows_the_closed_form():
    n_atoms, gamma, n_steps = 4, 0.05, 12
    approx, accurate, a, b = harmonic_pair(n_atoms)
    configs = points(3, n_atoms)
    result = gradient_descent_rollout(Evaluator(approx, accurate), configs, n_steps, gamma, progress=False)
    for atoms, errors, e_app in zip(configs, result["errors"], result["e_app"], strict=True):
        k = np.arange(n_steps + 1)[:, None, None]
        x = a + (1 - gamma * approx.k) ** k * (
            atoms.positions - a
        )  # x_k - a shrinks by (1 - gamma k_a) a step
        exact_app = approx.e0 + 0.5 * approx.k * np.sum((x - a) ** 2, axis=(1, 2))
        exact_acc = accurate.e0 + 0.5 * accurate.k * np.sum((x - b) ** 2, axis=(1, 2))
        np.testing.assert_allclose(e_app, exact_app, rtol=1e-12)
        np.testing.assert_allclose(errors, (exact_acc - exact_app) / n_atoms * 1000, rtol=1e-10, atol=1e-10)
    per_step = np.array(result["errors"])
    np.testing.assert_allclose(result["rmse"], np.sqrt(np.mean(per_step**2, axis=0)), rtol=1e-14)
    assert result["n_e_app_increased"] == 0
    # gamma k_a > 2: gradient descent diverges, and the result says so.
    unstable = gradient_descent_rollout(Evaluator(approx, accurate), configs, 3, 1.0, progress=False)
    assert unstable["n_e_app_increased"] == len(configs)


def test_mean_abs_cos_in_bins_of_50_sorted_by_energy():
    rng = np.random.default_rng(11)
    delta_e, cos = rng.uniform(0, 100, 120), rng.uniform(-1, 1, 120)
    cos[3] = np.nan  # an undefined cos is left out
    bins = cos_vs_energy(cos, delta_e, bin_size=50)["bins"]
    keep = np.isfinite(cos)
    order = np.argsort(delta_e[keep])
    x, y = delta_e[keep][order], np.abs(cos[keep][order])
    assert [b["n"] for b in bins] == [50, 69]  # the incomplete last group joins the one before
    for b, sl in zip(bins, (slice(0, 50), slice(50, None)), strict=True):
        assert b["mean"] == pytest.approx(y[sl].mean())
        assert b["delta_e_mean"] == pytest.approx(x[sl].mean())
        assert (b["delta_e_min"], b["delta_e_max"]) == (x[sl].min(), x[sl].max())
        assert b["sem"] == pytest.approx(y[sl].std(ddof=1) / np.sqrt(y[sl].size))
    assert [b["n"] for b in cos_vs_energy(cos[:40], delta_e[:40])["bins"]] == [39]


def test_energy_above_minimum_from_key_relaxation_or_lowest():
    approx, _, _, _ = harmonic_pair(3)
    center = np.random.default_rng(12).normal(size=(3, 3))
    accurate = Harmonic(2.0, center, e0=-1.5)
    configs = []
    for i, atoms in enumerate(points(4, 3)):
        atoms.positions = center + 0.1 * (i + 1) * atoms.positions
        atoms.info.update(e_min=-1.5, minimum_id="well")
        configs.append(atoms)
    exact = np.array([0.5 * 2.0 * np.sum((atoms.positions - center) ** 2) for atoms in configs])

    ev = Evaluator(approx, accurate)
    by_key = energy_above_minimum(ev, configs, "auto", progress=False)
    assert by_key["reference"] == "key"
    np.testing.assert_allclose(by_key["delta_e"], exact, rtol=1e-12)
    np.testing.assert_allclose(by_key["delta_e_per_atom"], exact / 3 * 1000, rtol=1e-12)

    relaxed = energy_above_minimum(ev, configs, "relax", relax_fmax=1e-5, progress=False)
    np.testing.assert_allclose(relaxed["delta_e"], exact, atol=1e-9)
    assert ev.n_relaxations == 1  # one per value of minimum_id
    for atoms in configs:
        del atoms.info["minimum_id"], atoms.info["e_min"]
    auto = energy_above_minimum(ev, configs, "auto", relax_fmax=1e-5, progress=False)
    # One relaxation per configuration; the one from configuration 0 was done above and is reused.
    assert auto["reference"] == "relax" and ev.n_relaxations == len(configs)
    np.testing.assert_allclose(auto["delta_e"], exact, atol=1e-9)

    lowest = energy_above_minimum(ev, configs, "lowest", progress=False)
    np.testing.assert_allclose(lowest["delta_e"], exact - exact.min(), rtol=1e-12)
    with pytest.raises(ValueError, match="needs info key 'e_min'.*configuration 0"):
        energy_above_minimum(ev, configs, "key", progress=False)


def test_per_element_offset_aligns_models_with_different_energy_zeros():
    configs = []
    for n_au in range(5):
        atoms = rattled_cu(1, seed=n_au, size=(1, 1, 1), max_norm=0.2)[0]
        atoms.symbols[:n_au] = "Au"
        configs.append(atoms)
    shift = {"Cu": 0.3, "Au": -1.2}
    ev = Evaluator(Counting(EMT(), shift=shift), EMT())
    raw = evaluate_dataset(ev, configs, "none", progress=False)
    assert raw["summary"]["rmse"] > 100
    aligned = evaluate_dataset(ev, configs, "per-element", progress=False)
    assert aligned["energy_offset"]["per_element_ev"] == pytest.approx({"29": -0.3, "79": 1.2}, abs=1e-10)
    assert aligned["summary"]["rmse"] < 1e-9
    assert aligned["summary"]["n_undefined_cos"] == len(configs)  # A = 0: the models now agree exactly


# -- the evaluation cache, resume ----------------------------------------------------------------------------


def diagnosis_settings(**overrides) -> AdversarialSettings:
    base = {"eps": (0.0, 0.2), "gd_steps": 3, "bin_size": 2, "energy_reference": "key", "gd_configs": 3}
    base["energy_offset"] = "per-element"  # EMT and Lennard-Jones have different energy zeros
    return AdversarialSettings(**{**base, **overrides})


def dataset_with_minimum(n: int) -> list[Atoms]:
    configs = rattled_cu(n, seed=13)
    minimum = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    minimum.calc = EMT()
    for atoms in configs:
        atoms.info["e_min"] = minimum.get_potential_energy()
    return configs


def assert_same_results(a, b, path="results"):
    """Equal structure and numbers to 1e-12: ASE calculators rebuild neighbour lists depending on their
    history, which changes the order of summation and so the last bits of a recomputed energy."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_results(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_results(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12, nan_ok=True), path
    else:
        assert a == b, path


def test_an_interrupted_run_resumes_without_recomputing(tmp_path):
    configs = dataset_with_minimum(5)
    settings = diagnosis_settings()
    app, acc = Counting(LennardJones(**CU_LJ)), Counting(EMT())
    full = run_diagnosis(app, acc, configs, tmp_path / "full", settings, progress=False)

    fail_at = acc.calls // 2
    app1, acc1 = Counting(LennardJones(**CU_LJ)), Counting(EMT(), fail_at=fail_at)
    with pytest.raises(Interrupted):
        run_diagnosis(app1, acc1, configs, tmp_path / "resumed", settings, progress=False)
    app2, acc2 = Counting(LennardJones(**CU_LJ)), Counting(EMT())
    resumed = run_diagnosis(app2, acc2, configs, tmp_path / "resumed", settings, progress=False)

    # Everything computed before the interruption is reused; one call per model checks the cache is valid.
    assert app2.calls == app.calls - app1.calls + 1
    assert acc2.calls == acc.calls - (fail_at - 1) + 1
    del full["calls"], resumed["calls"]
    assert_same_results(resumed, full)
    on_disk = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert on_disk["complete"] and on_disk["calls"]["accurate"] == acc2.calls


def test_cache_survives_a_torn_last_line_is_locked_and_rejects_a_corrupt_one(tmp_path):
    approx, accurate, _, _ = harmonic_pair(3)
    cache = tmp_path / "evaluations.jsonl"
    configs = points(3, 3)
    with Evaluator(approx, accurate, cache) as ev:
        energies = [ev.energy("approx", atoms) for atoms in configs[:2]]
    with cache.open("a") as f:
        f.write('{"role": "approx", "key": "12')  # the process died while writing
    with Evaluator(approx, accurate, cache) as ev:
        assert [ev.energy("approx", atoms) for atoms in configs[:2]] == energies
        assert ev.n_calls["approx"] == 0
        ev.energy("approx", configs[2])
    assert len(cache.read_text().splitlines()) == 4  # header and three evaluations, all valid JSON
    assert all(json.loads(line) for line in cache.read_text().splitlines())

    with Evaluator(approx, accurate, cache), pytest.raises(ValueError, match="in use by another running"):
        Evaluator(approx, accurate, cache)

    lines = cache.read_text().splitlines()
    cache.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        Evaluator(approx, accurate, cache)


def test_cache_of_other_or_changed_models_is_refused(tmp_path):
    configs = points(2, 3)
    approx, accurate, a, _ = harmonic_pair(3)
    settings = diagnosis_settings(experiments=(), energy_reference="lowest")
    labels = {"approx": "harmonic", "accurate": "harmonic-ref"}
    run_diagnosis(approx, accurate, configs, tmp_path, settings, labels=labels, progress=False)
    with pytest.raises(ValueError, match="holds evaluations of other models"):
        run_diagnosis(approx, accurate, configs, tmp_path, settings, labels={**labels, "approx": "x"})
    with pytest.raises(ValueError, match="approx model .* changed"):
        run_diagnosis(Harmonic(2.5, a), accurate, configs, tmp_path, settings, labels=labels, progress=False)


def test_dataset_labels_replace_the_undistorted_reference_calls():
    configs = dataset_with_minimum(3)
    settings = diagnosis_settings(experiments=("energy",))
    direct = run_diagnosis(LennardJones(**CU_LJ), EMT(), configs, None, settings, progress=False)
    labelled = []
    for atoms in configs:
        atoms = atoms.copy()
        reference = atoms.copy()
        reference.calc = EMT()
        atoms.calc = SinglePointCalculator(
            atoms, energy=reference.get_potential_energy(), forces=reference.get_forces()
        )
        labelled.append(atoms)
    reused = run_diagnosis(
        LennardJones(**CU_LJ), None, labelled, None, settings, use_dataset_labels=True, progress=False
    )
    assert reused["calls"]["accurate"] == 0
    assert_same_results(reused["configs"], direct["configs"])
    labelled[0].calc.results["energy"] += 0.1
    with pytest.raises(ValueError, match="energy stored in the dataset .* were made with other settings"):
        run_diagnosis(LennardJones(**CU_LJ), EMT(), labelled, None, settings, use_dataset_labels=True)
    del labelled[1].calc.results["forces"]
    with pytest.raises(ValueError, match="configuration 1 has no stored energy and forces"):
        run_diagnosis(LennardJones(**CU_LJ), None, labelled, None, settings, use_dataset_labels=True)


def test_dataset_labels_of_an_extxyz_file_are_read_under_their_names(tmp_path):
    from ase.io import read, write

    from mlipbias.datasets import LabelKeys

    path = tmp_path / "ref.extxyz"
    write(path, dataset_with_minimum(3))
    frames = read(path, ":")  # the positions as the file stores them
    for atoms in frames:
        reference = atoms.copy()
        reference.calc = EMT()
        atoms.info["REF_energy"] = reference.get_potential_energy()
        atoms.arrays["REF_forces"] = reference.get_forces()
    write(path, frames)
    settings = diagnosis_settings(experiments=("energy",))
    plain = [read(path, i) for i in range(3)]
    for atoms in plain:
        atoms.calc = None
    direct = run_diagnosis(LennardJones(**CU_LJ), EMT(), plain, None, settings, progress=False)
    keys = LabelKeys(energy="REF_energy", forces="REF_forces")
    reused = run_diagnosis(
        LennardJones(**CU_LJ),
        None,
        path,
        None,
        settings,
        use_dataset_labels=True,
        label_keys=keys,
        progress=False,
    )
    assert reused["calls"]["accurate"] == 0
    # extxyz keeps 8 decimals of the force columns: the same numbers to ~1e-9.
    for key, value in direct["configs"].items():
        if isinstance(value, list) and value and isinstance(value[0], float):
            np.testing.assert_allclose(reused["configs"][key], value, rtol=1e-7, atol=1e-9, err_msg=key)
    with pytest.raises(ValueError, match="configuration 0 has no stored energy and forces"):
        run_diagnosis(
            LennardJones(**CU_LJ), None, path, None, settings, use_dataset_labels=True, progress=False
        )


def test_settings_name_the_bad_value():
    with pytest.raises(ValueError, match="gd_step_size = -1.0 is invalid"):
        AdversarialSettings(gd_step_size=-1.0)
    with pytest.raises(ValueError, match="experiments .* is invalid"):
        AdversarialSettings(experiments=("gd", "fig7"))
    with pytest.raises(ValueError, match="bin_size = 2.5 is invalid"):
        AdversarialSettings(bin_size=2.5)
    assert AdversarialSettings(eps=0.2).eps == (0.2,)


def test_non_finite_model_output_is_an_error():
    class Broken(Harmonic):
        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            self.results["energy"] = np.nan

    approx, _, a, _ = harmonic_pair(3)
    ev = Evaluator(approx, Broken(1.0, a))
    with pytest.raises(CalculationError, match="accurate model .* non-finite .* at configuration 4"):
        ev.energy("accurate", points(1, 3)[0], "configuration 4")


class FailsWhenMoved(Harmonic):
    """Fails, like an SCF that does not converge, at every geometry displaced from one configuration."""

    def __init__(self, k, center, near):
        super().__init__(k, center)
        self.near = near

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if 0 < np.linalg.norm(atoms.positions - self.near) < 1.0:
            raise RuntimeError("SCF did not converge")
        super().calculate(atoms, properties, system_changes)


def test_failed_evaluations_stop_the_run_or_are_skipped_and_listed():
    configs = points(3, 4)
    approx, _, _, b = harmonic_pair(4)
    accurate = FailsWhenMoved(2.0, b, near=configs[1].positions)
    settings = diagnosis_settings(energy_reference="lowest", energy_offset="none")
    with pytest.raises(CalculationError, match="accurate model .* failed at configuration 1 moved by 0.2 A"):
        run_diagnosis(approx, accurate, configs, None, settings, progress=False)
    results = run_diagnosis(approx, accurate, configs, None, settings, skip_failed=True, progress=False)
    assert [(f["stage"], f["index"]) for f in results["failures"]] == [
        ("distortion", 1),
        ("newton", 1),
        ("gd", 1),
    ]
    assert "SCF did not converge" in results["failures"][0]["error"]
    assert results["distortion"]["failed"] == [1] and results["distortion"]["excluded"] == []
    assert results["distortion"]["n_configs"] == 2
    assert "1 configurations left out: an evaluation failed" in markdown_report(results)
    assert results["newton"]["index"] == [0, 2] and results["gd"]["index"] == [0, 2]
    assert results["summary"]["n_configs"] == 3


def test_report_of_a_partial_run_marks_what_was_not_run(tmp_path):
    approx, accurate, _, _ = harmonic_pair(3)
    settings = diagnosis_settings(experiments=(), energy_offset="none")
    results = run_diagnosis(approx, accurate, points(4, 3), tmp_path, settings, progress=False)
    results["complete"] = False  # as if read back from an interrupted run
    paths = write_report(json.loads(json.dumps(results, default=float)), tmp_path)
    report = paths["markdown"].read_text()
    assert report.count("not run") == 4 and "partial results of an interrupted run" in report
    assert paths["figure1"].stat().st_size > 0 and paths["figure2"].stat().st_size > 0


# -- command line --------------------------------------------------------------------------------------------


def test_calculator_specs():
    assert parse_spec("lj(sigma=2.3, epsilon=0.1)") == ("lj", {"sigma": 2.3, "epsilon": 0.1})
    assert parse_spec(" emt ") == ("emt", {})
    lj = _calculator_from_spec("ase.calculators.lj:LennardJones(sigma=2.3, rc=4.0)")
    assert isinstance(lj, LennardJones) and lj.parameters.sigma == 2.3
    assert isinstance(_calculator_from_spec("emt"), EMT)
    with pytest.raises(ValueError, match="key=value"):
        parse_spec("lj(2.3)")
    with pytest.raises(ValueError, match="must be a literal"):
        parse_spec("lj(sigma=open('x'))")
    with pytest.raises(ValueError, match="cannot import 'Nope'"):
        _calculator_from_spec("ase.calculators.lj:Nope")
    with pytest.raises(ValueError, match="unknown calculator 'no-such-model'|no-such-model"):
        _calculator_from_spec("no-such-model")


def test_cli_end_to_end(tmp_path, capsys, monkeypatch):
    import ase.db

    db_path = tmp_path / "test.db"
    with ase.db.connect(db_path) as db:
        for atoms in dataset_with_minimum(6):
            db.write(atoms, e_min=atoms.info["e_min"], minimum_id="fcc")
    out = tmp_path / "adv"
    argv = [
        "adversarial",
        "--approx",
        "lj(sigma=2.338, epsilon=0.409, rc=5.0, smooth=True)",
        "--accurate",
        "emt",
        "--data",
        str(db_path),
        "--out",
        str(out),
        "--eps",
        "0",
        "0.2",
        "--gd-steps",
        "4",
        "--gd-configs",
        "3",
        "--bin-size",
        "3",
        "--energy-offset",
        "per-element",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "RMSE" in printed and "adversarial" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["dataset"]["path"] == str(db_path)
    assert results["energy_above_minimum"]["reference"] == "key"
    assert len(results["configs"]["cos_theta"]) == 6 and len(results["gd"]["rmse"]) == 5
    assert [b["n"] for b in results["cos_vs_energy"]["bins"]] == [3, 3]
    report = (out / "report.md").read_text()
    assert "Table 1" in report and "| Adversarial direction (+A) |" in report
    for name in ("fig1_alignment.png", "fig2_rollout.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["adversarial", "--approx", "nonsense", "--accurate", "emt", "--data", str(db_path), "--out",
                 str(tmp_path / "x"), "--no-progress"]) == 2  # fmt: skip
    assert "nonsense" in capsys.readouterr().err
    first = dataset_with_minimum(1)[0].positions
    failing = types.SimpleNamespace(calc=lambda: FailsWhenMoved(1.0, first, near=first))
    monkeypatch.setitem(sys.modules, "adv_test_models", failing)  # an importable module:attribute
    data = str(db_path)
    fail_args = ["adversarial", "--approx", "emt", "--accurate", "adv_test_models:calc", "--data", data,
                 "--out", str(tmp_path / "fails"), "--eps", "0", "0.2", "--no-progress"]  # fmt: skip
    assert main(fail_args) == 1
    message = capsys.readouterr().err
    assert "accurate model (adv_test_models:calc) failed at configuration 1: SCF did not converge" in message
    assert "rerun to resume, or add --skip-failed" in message
    missing = str(tmp_path / "missing.db")
    assert main(["adversarial", "--approx", "emt", "--accurate", "emt", "--data", missing, "--out",
                 str(tmp_path / "x")]) == 2  # fmt: skip
    assert "missing.db does not exist" in capsys.readouterr().err
