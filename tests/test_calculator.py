"""The ASE calculator: results of the model, conservative biased forces and stress, rescaling, MD."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.verlet import VelocityVerlet
from model_fixtures import evaluate_atoms, model_with_all_methods, quartz, strained, write_overflowing_model

from mlipbias.calculators import MLIPCalculator
from mlipbias.models import save_model

try:
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # ASE < 3.29
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    model, _ = model_with_all_methods()
    return save_model(model, tmp_path_factory.mktemp("calc") / "model.mlip")


def test_results_are_those_of_the_model(model_path):
    from mlipbias.models import load_model

    model = load_model(model_path)
    atoms = quartz(4)
    atoms.calc = MLIPCalculator(model_path, uncertainty="posterior")
    p = evaluate_atoms(model, atoms, "posterior", atom_uncertainty=True)
    assert atoms.get_potential_energy() == pytest.approx(p.energy[0], rel=1e-13)
    np.testing.assert_allclose(atoms.get_forces(), p.forces, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(atoms.get_stress(), p.stress[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), p.energy[0], rtol=1e-12)
    results = atoms.calc.results
    assert results["uncertainty"] == pytest.approx(p.uncertainty[0], rel=1e-13)
    np.testing.assert_allclose(results["atom_uncertainty"], p.atom_uncertainty, rtol=1e-12)
    assert results["bias_energy"] == 0.0 and "uncertainty_gradient" not in results
    assert atoms.calc.get_property("uncertainty", atoms) == results["uncertainty"]
    # The default method is the model's first; "none" switches uncertainties off.
    assert MLIPCalculator(model_path).uncertainty == "ensemble"
    plain = MLIPCalculator(model_path, uncertainty="none")
    atoms.calc = plain
    atoms.get_forces()
    assert "uncertainty" not in plain.results


@pytest.mark.parametrize("method", ["ensemble", "posterior", "gmm"])
def test_biased_forces_and_stress_are_derivatives_of_the_biased_energy(model_path, method):
    tau = 0.3
    calc = MLIPCalculator(model_path, uncertainty=method, tau=tau)
    atoms = quartz(5, rattle=0.1)

    def energy(a):
        a = a.copy()
        a.calc = calc
        return a.get_potential_energy()

    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    r = dict(calc.results)
    assert r["energy"] == pytest.approx(r["model_energy"] - tau * r["uncertainty"], rel=1e-13)
    np.testing.assert_allclose(r["bias_forces"], tau * r["uncertainty_gradient"], rtol=1e-13)
    assert np.abs(r["bias_forces"]).max() > 1e-3  # the bias is not trivially zero
    h, rng = 1e-5, np.random.default_rng(0)
    v = rng.normal(size=atoms.positions.shape)
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions += h * v
    minus.positions -= h * v
    assert -np.sum(forces * v) == pytest.approx((energy(plus) - energy(minus)) / (2 * h), rel=1e-6, abs=1e-8)
    eps = rng.normal(size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    slope = (energy(strained(atoms, h * eps)) - energy(strained(atoms, -h * eps))) / (2 * h)
    stress_matrix = np.array(
        [
            [stress[0], stress[5], stress[4]],
            [stress[5], stress[1], stress[3]],
            [stress[4], stress[3], stress[2]],
        ]
    )
    assert np.sum(stress_matrix * eps) * atoms.get_volume() == pytest.approx(slope, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("method", ["none", "ensemble", "posterior", "distance"])
def test_cpp_and_torch_backends_agree(model_path, method):
    """``auto`` runs the C++ inference of pair_style mlip/bias; it equals the torch model to 1e-10."""
    biased = method != "none"  # window form, biased from the second call on
    settings = dict(uncertainty=method, tau=0.3 if biased else 0.0, rescale=biased, rescale_window=1)
    cpp = MLIPCalculator(model_path, **settings)
    torch_calc = MLIPCalculator(model_path, backend="torch", **settings)
    assert cpp.backend == "cpp" and torch_calc.backend == "torch"
    for step in range(3):  # rescaling keeps running sums: the same on both backends
        atoms = quartz(30 + step, rattle=0.1)
        results = []
        for calc in (cpp, torch_calc):
            atoms.calc = calc
            atoms.get_forces()
            results.append(dict(calc.results))
        a, b = results
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_tau_species_and_tau_stress(model_path):
    atoms = quartz(6)
    base = MLIPCalculator(model_path, uncertainty="ensemble", tau=0.2, tau_stress=0.0)
    atoms.calc = base
    atoms.get_forces()
    r = dict(base.results)
    np.testing.assert_allclose(r["bias_stress"], 0.0)
    np.testing.assert_allclose(r["stress"], r["model_stress"])
    species = MLIPCalculator(model_path, uncertainty="ensemble", tau=0.2, tau_species={"O": 0.05})
    atoms.calc = species
    atoms.get_forces()
    s = species.results
    is_o = np.array(atoms.get_chemical_symbols()) == "O"
    np.testing.assert_allclose(s["bias_forces"][is_o], 0.05 * r["uncertainty_gradient"][is_o], rtol=1e-12)
    np.testing.assert_allclose(s["bias_forces"][~is_o], 0.2 * r["uncertainty_gradient"][~is_o], rtol=1e-12)
    assert s["bias_energy"] == pytest.approx(-0.2 * r["uncertainty"], rel=1e-12)
    # tau_stress defaults to tau: the bias stress is -(tau / V) dU/dstrain (central differences of
    # U under symmetric strains, Voigt order xx yy zz yz xz xy).
    free = MLIPCalculator(model_path, uncertainty="ensemble")
    h, volume = 1e-5, atoms.get_volume()
    expected = []
    for a, b in ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)):
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h if a == b else h / 2
        u = []
        for sign in (1, -1):
            deformed = strained(atoms, sign * eps)
            deformed.calc = free
            deformed.get_potential_energy()
            u.append(free.results["uncertainty"])
        expected.append(-0.2 / volume * (u[0] - u[1]) / (2 * h))
    bias_stress = s["bias_stress"]
    assert np.abs(bias_stress).max() > 1e-4 * np.abs(s["model_stress"]).max()
    np.testing.assert_allclose(bias_stress, expected, rtol=1e-5, atol=1e-7 * np.abs(expected).max())
    # species_tau, the old name, still works, with a DeprecationWarning naming the new one.
    with pytest.warns(DeprecationWarning, match="use tau_species"):
        old = MLIPCalculator(model_path, uncertainty="ensemble", tau=0.2, species_tau={"O": 0.05})
    atoms.calc = old
    np.testing.assert_array_equal(atoms.get_forces(), species.results["forces"])
    with pytest.raises(ValueError, match="give tau_species only"), pytest.warns(DeprecationWarning):
        MLIPCalculator(model_path, uncertainty="ensemble", tau_species={"O": 0.1}, species_tau={"O": 0.1})


@pytest.mark.parametrize("form", ["window", "cumulative"])
def test_rescaling_follows_eq_8_by_hand(model_path, form):
    """cumulative: tau sum |F| / sum |dU/dx| over all calls; window (W = 2): no bias for W calls, then
    tau sqrt(sum |F|^2 / sum |dU/dx|^2) over the last W calls. tau_stress likewise with virial norms."""
    tau, window = 0.5, 2
    calc = MLIPCalculator(model_path, uncertainty="distance", tau=tau, rescale=form, rescale_window=window)
    norms = []
    for k in range(5):
        atoms = quartz(20 + k, rattle=0.1)
        atoms.calc = calc
        atoms.get_forces()
        r = calc.results
        free = MLIPCalculator(model_path, uncertainty="distance")
        atoms.calc = free
        atoms.get_forces()
        virial_u = evaluate_atoms(
            free.model, atoms, "distance", forces=False, gradient=True
        ).uncertainty_virial[0]
        virial = evaluate_atoms(free.model, atoms).virial[0]
        norms.append(
            [np.linalg.norm(x) for x in (r["model_forces"], r["uncertainty_gradient"], virial, virial_u)]
        )
        n = np.array(norms)
        if form == "cumulative":
            ratio, ratio_stress = n[:, 0].sum() / n[:, 1].sum(), n[:, 2].sum() / n[:, 3].sum()
        elif k < window:
            ratio = ratio_stress = 0.0
        else:
            last = n[-window:] ** 2
            ratio = np.sqrt(last[:, 0].sum() / last[:, 1].sum())
            ratio_stress = np.sqrt(last[:, 2].sum() / last[:, 3].sum())
        assert r["tau_effective"] == pytest.approx(tau * ratio, rel=1e-12, abs=1e-300)
        assert r["tau_stress_effective"] == pytest.approx(tau * ratio_stress, rel=1e-12, abs=1e-300)
        np.testing.assert_allclose(
            r["bias_forces"], r["tau_effective"] * r["uncertainty_gradient"], rtol=1e-12
        )
        assert r["bias_energy"] == pytest.approx(-r["tau_effective"] * r["uncertainty"], abs=1e-300)
    assert r["tau_effective"] > 0
    with pytest.raises(ValueError, match="rescale must be False, True, 'window' or 'cumulative'"):
        MLIPCalculator(model_path, uncertainty="distance", tau=tau, rescale="adagrad")
    with pytest.raises(ValueError, match="rescale_window must be an integer >= 1, got 0"):
        MLIPCalculator(model_path, uncertainty="distance", tau=tau, rescale=True, rescale_window=0)


def test_biased_nve_conserves_the_biased_energy(model_path):
    atoms = quartz(8, rattle=0.02)
    atoms.calc = MLIPCalculator(model_path, uncertainty="posterior", tau=0.2, atom_uncertainty=False)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(1))
    totals, potentials, uncertainties = [], [], []

    def record():
        totals.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        potentials.append(atoms.get_potential_energy())
        uncertainties.append(atoms.calc.results["uncertainty"])

    dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    dyn.attach(record, interval=1)
    dyn.run(40)
    assert np.ptp(potentials) > 20 * np.ptp(totals)
    assert np.ptp(uncertainties) > 0


def test_npt_runs_with_the_bias_stress(model_path):
    from ase.md.nptberendsen import NPTBerendsen

    atoms = quartz(9, rattle=0.02)
    atoms.calc = MLIPCalculator(model_path, uncertainty="ensemble", tau=0.1, atom_uncertainty=False)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(2))
    volume = atoms.get_volume()
    dyn = NPTBerendsen(
        atoms,
        timestep=0.5 * units.fs,
        temperature_K=300,
        pressure_au=0.0,
        taut=50 * units.fs,
        taup=100 * units.fs,
        compressibility_au=1e-2 / units.GPa,
    )
    dyn.run(5)
    assert atoms.get_volume() != volume
    assert np.isfinite(atoms.calc.results["bias_stress"]).all()


def test_non_periodic_structures_have_no_stress(model_path):
    atoms = quartz(3)
    atoms.pbc = False
    atoms.calc = MLIPCalculator(model_path, tau=0.1)
    atoms.get_forces()
    assert "stress" not in atoms.calc.results
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_bad_arguments_are_clear_errors(model_path):
    with pytest.raises(ValueError, match="uncertainty 'mve' is not in this model; it has: ensemble, gmm"):
        MLIPCalculator(model_path, uncertainty="mve")
    with pytest.raises(ValueError, match="a bias .* needs an uncertainty method"):
        MLIPCalculator(model_path, uncertainty="none", tau=0.1)
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        MLIPCalculator(model_path, tau=-1.0)
    with pytest.raises(ValueError, match=r"tau_species names element\(s\) \['H'\]"):
        MLIPCalculator(model_path, tau_species={"H": 0.1})
    with pytest.raises(ValueError, match="backend must be one of auto, torch, cpp"):
        MLIPCalculator(model_path, backend="jax")
    with pytest.raises(
        ValueError, match=r"backend='cpp' is not available: the C\+\+ inference implements ensemble"
    ):
        MLIPCalculator(model_path, uncertainty="gmm", backend="cpp")
    with pytest.raises(ValueError, match="must be a .mlip path or an MLIPModel"):
        MLIPCalculator(42)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_non_finite_outputs_stop_the_dynamics_naming_the_call_and_the_atom(tmp_path, backend):
    """A model whose numbers are all in range but overflow in evaluation: the first call raises
    instead of handing inf/NaN to the integrator."""
    path = write_overflowing_model(tmp_path / "overflow.mlip")
    atoms = quartz(3)
    atoms.calc = MLIPCalculator(path, backend=backend, uncertainty="none")
    with pytest.raises(
        ValueError,
        match=r"MLIPCalculator call 1: the model gives a non-finite (atom energy|energies) on the atom "
        r"with index 0",
    ):
        atoms.get_forces()


def test_min_distance_default_and_option_match_pair_style_mlip_bias(model_path):
    """0.5 A by default, as pair_style mlip/bias; atoms are named by their indices; 0 turns it off."""
    atoms = quartz(5)
    atoms.positions[4] = atoms.positions[2] + [0.01, 0.0, 0.0]
    for backend in ("torch", "cpp"):
        calc = MLIPCalculator(model_path, backend=backend, uncertainty="ensemble")
        assert calc.min_distance == 0.5
        atoms.calc = calc
        with pytest.raises(
            ValueError,
            match=r"MLIPCalculator call 1: atoms with indices 2 and 4 are 0\.01 A apart, closer than "
            r"min_distance = 0\.5 A",
        ):
            atoms.get_potential_energy()
        atoms.calc = MLIPCalculator(model_path, backend=backend, uncertainty="ensemble", min_distance=0.0)
        assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(ValueError, match="min_distance must be a finite number >= 0"):
        MLIPCalculator(model_path, min_distance=-1.0)


def test_empty_atoms_are_a_clear_error(model_path):
    from ase import Atoms

    for backend in ("torch", "cpp"):
        atoms = Atoms(cell=np.eye(3) * 5.0, pbc=True)
        atoms.calc = MLIPCalculator(model_path, backend=backend, uncertainty="ensemble", tau=0.1)
        with pytest.raises(ValueError, match="MLIPCalculator call 1: the structure has no atoms"):
            atoms.get_potential_energy()


def test_a_structure_far_too_dense_fails_at_once(model_path):
    """100,000 atoms in a 5 A cube: the neighbour search refuses it (both backends) instead of
    counting ~7e10 pairs for an hour."""
    from ase import Atoms

    positions = np.random.default_rng(0).uniform(0.0, 5.0, (100_000, 3))
    for backend in ("torch", "cpp"):
        atoms = Atoms("Si100000", positions=positions, cell=5.0 * np.eye(3), pbc=True)
        atoms.calc = MLIPCalculator(model_path, backend=backend, uncertainty="none", min_distance=0.0)
        with pytest.raises(ValueError, match=r"neighbours within the cutoff .*than max_neighbors = 5000"):
            atoms.get_potential_energy()
