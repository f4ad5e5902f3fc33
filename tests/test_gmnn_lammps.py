"""pair_style mlip/bias with a GM-NN file: energies, forces, virial, U and the bias against the torch
model (MLIPCalculator, backend torch) to 1e-10, bias forces and bias stress against finite differences
of energies and uncertainties LAMMPS computes, and 1 vs 2 MPI ranks (newton on and off) equal."""

from __future__ import annotations

import numpy as np
import pytest
from gmnn_fixtures import METHODS, write_gm_model
from lammps_fixtures import atoms_of, gather, lammps, setup, structure, virial, write_data
from test_lammps_mpi import run_lammps
from test_lammps_plugin import MOVES, finite_differences, pair_lines, unc_vector

from mlipbias.calculators import MLIPCalculator

TOL = 1e-10


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_gm_model(tmp_path_factory.mktemp("gmnn_lammps") / "gm.mlip")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    """18 atoms of rattled quartz: its cell is smaller than the 4.5 A cutoff, so images count."""
    return write_data(tmp_path_factory.mktemp("gmnn_lammps_data") / "quartz.data", structure(seed=1))


@pytest.mark.parametrize("method", ("none", *METHODS))
def test_energy_forces_virial_and_bias_equal_the_torch_model(model_path, data_path, method):
    s = dict(tau=0.0) if method == "none" else dict(tau=0.3, tau_stress=0.2)
    options = f"uncertainty {method} " + " ".join(f"{k} {v}" for k, v in s.items())
    with lammps() as lmp:
        setup(lmp, data_path, pair_lines(model_path, options))
        lmp.command("run 0")
        atoms = atoms_of(lmp)
        pe, forces, unc, W = lmp.get_thermo("pe"), gather(lmp, "f"), unc_vector(lmp), virial(lmp)
    calc = MLIPCalculator(model_path, uncertainty=method, backend="torch", **s)
    atoms.calc = calc
    want_W = -atoms.get_stress(voigt=False) * atoms.get_volume()
    assert pe == pytest.approx(atoms.get_potential_energy(), rel=TOL, abs=TOL)
    np.testing.assert_allclose(forces, atoms.get_forces(), rtol=0, atol=TOL * np.abs(forces).max())
    np.testing.assert_allclose(W, want_W, rtol=0, atol=TOL * np.abs(W).max())
    if method != "none":
        assert unc[0] == pytest.approx(calc.results["uncertainty"], rel=TOL)
        assert np.abs(calc.results["bias_forces"]).max() > 1e-3 * np.abs(forces).max()


@pytest.mark.parametrize("method", METHODS)
def test_bias_forces_and_stress_are_derivatives_of_the_biased_energy(model_path, data_path, method):
    tau = {"ensemble": 0.5, "posterior": 0.05, "distance": 0.2}[method]
    with lammps() as lmp:
        setup(lmp, data_path, pair_lines(model_path, f"uncertainty {method} tau {tau}"))
        lmp.command("run 0")
        forces, W = gather(lmp, "f").copy(), virial(lmp)
        grads, strain = finite_differences(lmp, MOVES)
    scale_f, scale_w = np.abs(forces).max(), np.abs(W).max()
    for (i, a), (dE, dU) in grads.items():
        assert forces[i, a] == pytest.approx(-(dE - tau * dU), abs=2e-6 * scale_f)
    assert max(abs(tau * dU) for dE, dU in grads.values()) > 1e-3 * scale_f  # the bias matters
    for (a, b), (dE, dU) in strain.items():
        assert W[a, b] == pytest.approx(-(dE - tau * dU), abs=2e-6 * scale_w)


@pytest.mark.mpi
def test_one_and_two_ranks_newton_on_and_off_agree(tmp_path, model_path):
    data = write_data(tmp_path / "quartz.data", structure(3, (1, 2, 2)))
    options = "uncertainty posterior tau 0.01 tau_stress 0.02"
    runs = [(1, "on"), (2, "on"), (2, "off")]
    results = {
        key: run_lammps(tmp_path / f"np{key[0]}_{key[1]}", model_path, data, options, *key) for key in runs
    }
    reference = results[runs[0]]
    forces, atom_u = reference["start"][:, 1:4], reference["start"][:, 4]
    assert np.abs(forces).max() > 1e-3 and atom_u.min() > 0 and reference["thermo"][0, 9] > 0
    for key in runs[1:]:
        got = results[key]
        np.testing.assert_allclose(got["start"][:, 1:4], forces, rtol=0, atol=1e-10 * np.abs(forces).max())
        np.testing.assert_allclose(got["start"][:, 4], atom_u, rtol=1e-10)
        np.testing.assert_allclose(got["thermo"][0], reference["thermo"][0], rtol=1e-10)
        end, want = got["end"], reference["end"]
        for columns in (slice(1, 4), slice(4, 7), slice(7, 10)):
            scale = np.abs(want[:, columns]).max()
            np.testing.assert_allclose(end[:, columns], want[:, columns], rtol=0, atol=1e-8 * scale)
