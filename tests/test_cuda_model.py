"""GM-NN on CUDA (cuda/gmnn.cu) and its stages on the host (cpp/gmnn_stages.hpp).

The kernels run the stages of cpp/gmnn_stages.hpp; ``_core.gmnn_evaluate_staged_host`` runs the
same stages serially on the host. Here that host run is held to the C++ evaluator (itself held to
the torch model and to finite differences in test_gmnn_cpp.py) to 1e-10, on every machine, so the
math the GPU runs is checked without a GPU. The GPU tests compare the device with the C++ evaluator
and skip with ``mlipbias.gpu.unavailable_reason()`` where there is no device.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from gmnn_fixtures import write_gm_model
from model_fixtures import model_with_all_methods, quartz
from subprocess_env import mlipbias_env

from mlipbias import _core, gpu
from mlipbias.gpu import GMNNDevice
from mlipbias.inference import CppModel

TOL = 1e-10


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_gm_model(tmp_path_factory.mktemp("cuda_model") / "gm.mlip")


def assert_same(staged: dict, ref: dict, tau=None, species=None):
    """staged (a dict of the staged evaluation) equals ref (ModelEvaluator.evaluate) to TOL."""
    assert staged["energy"] == pytest.approx(ref["energy"], rel=TOL)
    np.testing.assert_allclose(staged["member_energies"], ref["member_energies"], rtol=TOL)
    np.testing.assert_allclose(staged["atom_energies"], ref["atom_energies"], rtol=TOL, atol=TOL)
    for key in ("forces", "virial", "uncertainty_gradient", "uncertainty_virial"):
        if key in ref:
            scale = np.abs(ref[key]).max()
            np.testing.assert_allclose(staged[key], ref[key], rtol=0, atol=TOL * scale, err_msg=key)
    if "uncertainty" in ref:
        assert staged["uncertainty"] == pytest.approx(ref["uncertainty"], rel=TOL)
    if tau is not None:
        expected = np.asarray(tau)[species][:, None] * ref["uncertainty_gradient"]
        np.testing.assert_allclose(staged["bias_forces"], expected, rtol=0, atol=TOL * np.abs(expected).max())


def evaluate_both(path, neighbours, uncertainty, gradient, tau):
    model = CppModel(path)
    ref = model.evaluator(uncertainty, gradient).evaluate(*neighbours)
    staged = _core.gmnn_evaluate_staged_host(model.core, *neighbours, uncertainty, gradient, tau)
    return staged, ref


@pytest.mark.parametrize("uncertainty", ["none", "posterior"])
def test_staged_host_equals_the_cpp_evaluator(model_path, uncertainty):
    atoms = quartz(11, rattle=0.1).repeat((1, 1, 2))
    neighbours = CppModel(model_path).neighbours(atoms)
    gradient = uncertainty == "posterior"
    tau = [0.3, 0.7]
    staged, ref = evaluate_both(model_path, neighbours, uncertainty, gradient, tau)
    assert ref.get("uncertainty", 1.0) > 0  # the gradient is not the trivial zero
    assert_same(staged, ref, tau if gradient else None, neighbours[0])


def test_staged_host_with_ghost_atoms_and_far_pairs(model_path):
    """Centres first, then atoms that are only neighbours (LAMMPS ghosts), pairs beyond the cutoff
    (they add nothing) and a centre without pairs; more than one chunk of the column sums (256)."""
    atoms = quartz(3, rattle=0.1).repeat((4, 4, 3))
    species, offsets, j, D = CppModel(model_path).neighbours(atoms)
    n_centers = 300
    assert len(atoms) > n_centers > 256
    keep = np.arange(offsets[n_centers])
    keep = keep[(keep < offsets[5]) | (keep >= offsets[6])]  # centre 5 loses its pairs
    counts = np.bincount(np.searchsorted(offsets, keep, side="right") - 1, minlength=n_centers)
    far_D = np.array([[0.0, 0.0, 4.6], [5.0, 1.0, 0.0]])  # beyond the 4.5 A cutoff
    j2 = np.concatenate([j[keep[: offsets[1]]], [7, 9], j[keep[offsets[1] :]]])
    D2 = np.concatenate([D[keep[: offsets[1]]], far_D, D[keep[offsets[1] :]]])
    counts[0] += 2
    offsets2 = np.concatenate([[0], np.cumsum(counts)])
    neighbours = (species, offsets2, j2, D2)
    staged, ref = evaluate_both(model_path, neighbours, "posterior", True, [0.2, 0.2])
    assert np.abs(ref["forces"][n_centers:]).max() > 0  # ghosts receive forces
    assert_same(staged, ref, [0.2, 0.2], species)


def test_device_wrapper_on_the_host(model_path):
    device = GMNNDevice(model_path)
    atoms = quartz(12, rattle=0.1)
    r = device.evaluate_host(atoms, "posterior", gradient=True, tau={"Si": 0.5})
    c = CppModel(model_path).evaluate(atoms, "posterior", gradient=True)
    is_si = np.array(atoms.get_chemical_symbols()) == "Si"
    np.testing.assert_allclose(
        r.bias_forces[is_si], 0.5 * c.uncertainty_gradient[is_si], rtol=TOL, atol=1e-14
    )
    assert np.all(r.bias_forces[~is_si] == 0)
    with pytest.raises(ValueError, match=r"tau names element\(s\) \['Ge'\]"):
        device.evaluate_host(atoms, tau={"Ge": 1.0})


def test_bad_input_is_a_clear_error(model_path, tmp_path):
    model = CppModel(model_path)
    atoms = quartz(12)
    species, offsets, j, D = model.neighbours(atoms)
    staged = _core.gmnn_evaluate_staged_host
    with pytest.raises(ValueError, match="computes uncertainty 'none' or 'posterior', got 'ensemble'"):
        staged(model.core, species, offsets, j, D, "ensemble")
    with pytest.raises(ValueError, match="need uncertainty 'posterior'"):
        staged(model.core, species, offsets, j, D, "none", True)
    with pytest.raises(ValueError, match="tau has 1 values, expected one per model element"):
        staged(model.core, species, offsets, j, D, "posterior", True, [0.1])
    bad = species.copy()
    bad[4] = -1
    with pytest.raises(ValueError, match="atom 4 has element index -1"):
        staged(model.core, bad, offsets, j, D)
    bad = j.copy()
    bad[3] = len(atoms)
    with pytest.raises(ValueError, match="pair 3 of atom 0 has neighbour index"):
        staged(model.core, species, offsets, bad, D)
    bad = D.copy()
    bad[2] = 0.0
    with pytest.raises(ValueError, match=r"at the same position \(pair 2\)"):
        staged(model.core, species, offsets, j, bad)
    from mlipbias.models import save_model

    bpnn, _ = model_with_all_methods()
    bpnn_path = save_model(bpnn, tmp_path / "bp.mlip")
    with pytest.raises(ValueError, match="runs GM-NN files only"):
        staged(CppModel(bpnn_path).core, species, offsets, j, D)


@pytest.mark.skipif(
    gpu.unavailable_reason() is None, reason="a CUDA device is present; the no-device path is moot"
)
def test_device_without_a_device_is_a_clear_error(model_path):
    with pytest.raises(ValueError, match="no CUDA device"):
        _core.GMNNDeviceEvaluator(CppModel(model_path).core)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        GMNNDevice(model_path).evaluate(quartz(1))


@pytest.mark.skipif(
    gpu.unavailable_reason() is None, reason="a CUDA device is present; the no-device path is moot"
)
def test_benchmark_without_a_gpu_says_so_and_exits_0():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_model.py"
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=mlipbias_env())
    assert run.returncode == 0, run.stderr
    assert "needs a CUDA GPU; nothing measured (no CUDA device:" in run.stdout


# ---------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(gpu.unavailable_reason() is not None, reason=str(gpu.unavailable_reason()))
@pytest.mark.parametrize("uncertainty", ["none", "posterior"])
def test_cuda_equals_the_cpp_evaluator(model_path, uncertainty):
    """Small and large, with the automatic number of threads and with fewer threads than centres
    (each thread then takes several in turn)."""
    gradient = uncertainty == "posterior"
    tau = [0.3, 0.7]
    for max_threads in (0, 1000):
        device = _core.GMNNDeviceEvaluator(CppModel(model_path).core, 0, max_threads)
        for atoms in (quartz(11, rattle=0.1), quartz(5, rattle=0.1).repeat((6, 6, 6))):
            neighbours = CppModel(model_path).neighbours(atoms)
            ref = CppModel(model_path).evaluator(uncertainty, gradient).evaluate(*neighbours)
            out = device.evaluate(*neighbours, uncertainty, gradient, tau)
            assert_same(out, ref, tau if gradient else None, neighbours[0])
            again = device.evaluate(*neighbours, uncertainty, gradient, tau)  # buffers reused
            assert_same(again, ref, tau if gradient else None, neighbours[0])


@pytest.mark.gpu
@pytest.mark.skipif(gpu.unavailable_reason() is not None, reason=str(gpu.unavailable_reason()))
def test_cuda_molecule_without_cell(model_path):
    atoms = Atoms("SiO2Si", positions=[[0, 0, 0], [1.6, 0, 0], [-0.4, 1.55, 0.1], [3.0, 0.9, 0.4]])
    r = GMNNDevice(model_path).evaluate(atoms, "posterior", gradient=True, tau=0.4)
    c = CppModel(model_path).evaluate(atoms, "posterior", gradient=True)
    assert r.energy == pytest.approx(c.energy, rel=TOL)
    np.testing.assert_allclose(r.forces, c.forces, rtol=0, atol=TOL * np.abs(c.forces).max())
    np.testing.assert_allclose(
        r.bias_forces, 0.4 * c.uncertainty_gradient, rtol=0, atol=TOL * np.abs(c.uncertainty_gradient).max()
    )
