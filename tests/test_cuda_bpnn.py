"""BP-NN on CUDA (cuda/bpnn.cu) and its stages on the host (cpp/bpnn_stages.hpp).

``_core.bpnn_evaluate_staged_host`` runs the kernels' stages (symmetry functions of
cpp/symmetry_functions_math.hpp, the networks and posterior of cpp/network_math.hpp) serially on the
host. Here that run is held to the C++ evaluator (``_core.ModelEvaluator``, itself held to torch and
to finite differences in test_cpp_inference.py) to 1e-10 on the shipped SiO2 BP-NN, also with a
shorter, per-function angular cutoff and with ghost atoms. The GPU tests skip without a device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_fixtures import model_with_all_methods, quartz
from test_cuda_model import assert_same

from mlipbias import _core, gpu
from mlipbias.gpu import GMNNDevice, ModelDevice
from mlipbias.inference import CppModel
from mlipbias.modelfile import read_model_file, write_model_file

SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "lammps" / "sio2_gradient.mlip"


@pytest.fixture(scope="module")
def angular_path(tmp_path_factory):
    """The shipped model with its G4 at rc 3.5 A and its G5 at 4 A (G2 stay at 6 A): angular
    neighbours are a subset, and functions of one triplet have different cutoffs."""
    records = read_model_file(SHIPPED)
    table = np.array(records["descriptor/functions"])
    table[table[:, 0] == 4, 7] = 3.5
    table[table[:, 0] == 5, 7] = 4.0
    records["descriptor/functions"] = table
    return write_model_file(tmp_path_factory.mktemp("cuda_bpnn") / "angular.mlip", records)


def evaluate_both(path, neighbours, uncertainty, gradient, tau):
    model = CppModel(path)
    ref = model.evaluator(uncertainty, gradient).evaluate(*neighbours)
    staged = _core.bpnn_evaluate_staged_host(model.core, *neighbours, uncertainty, gradient, tau)
    return staged, ref


@pytest.mark.parametrize("which", ["shipped", "angular"])
@pytest.mark.parametrize("uncertainty", ["none", "posterior"])
def test_staged_host_equals_the_cpp_evaluator(angular_path, which, uncertainty):
    path = SHIPPED if which == "shipped" else angular_path
    atoms = quartz(11, rattle=0.1).repeat((1, 1, 2))
    neighbours = CppModel(path).neighbours(atoms)
    gradient = uncertainty == "posterior"
    tau = [0.3, 0.7]
    staged, ref = evaluate_both(path, neighbours, uncertainty, gradient, tau)
    assert ref.get("uncertainty", 1.0) > 0  # the gradient is not the trivial zero
    assert_same(staged, ref, tau if gradient else None, neighbours[0])


def test_staged_host_with_an_ensemble(tmp_path):
    """Three members (the mean energy row over members), SiLU, G2 with rs > 0, G4 and G5 at 4.5 A."""
    from mlipbias.models import save_model

    model, _ = model_with_all_methods()
    path = save_model(model, tmp_path / "bp3.mlip")
    assert CppModel(path).n_members == 3
    atoms = quartz(7, rattle=0.1).repeat((1, 2, 1))
    neighbours = CppModel(path).neighbours(atoms)
    for uncertainty in ("none", "posterior"):
        gradient = uncertainty == "posterior"
        staged, ref = evaluate_both(path, neighbours, uncertainty, gradient, [0.4, 0.1])
        assert_same(staged, ref, [0.4, 0.1] if gradient else None, neighbours[0])


def test_the_angular_cutoff_changes_the_model(angular_path):
    """The angular-cutoff file is a different model (so the test above checks the cutoff)."""
    atoms = quartz(11, rattle=0.1)
    a = CppModel(SHIPPED).evaluate(atoms)
    b = CppModel(angular_path).evaluate(atoms)
    assert abs(a.energy - b.energy) > 1e-3


def test_staged_host_with_ghost_atoms_and_far_pairs(angular_path):
    """Centres first, then atoms that are only neighbours (LAMMPS ghosts), pairs beyond the cutoff
    (they add nothing) and a centre without pairs."""
    atoms = quartz(3, rattle=0.1).repeat((2, 2, 2))
    for path in (SHIPPED, angular_path):
        species, offsets, j, D = CppModel(path).neighbours(atoms)
        n_centers = 40
        keep = np.arange(offsets[n_centers])
        keep = keep[(keep < offsets[5]) | (keep >= offsets[6])]  # centre 5 loses its pairs
        counts = np.bincount(np.searchsorted(offsets, keep, side="right") - 1, minlength=n_centers)
        far_D = np.array([[0.0, 0.0, 6.1], [6.0, 1.0, 0.0]])  # beyond the 6 A cutoff
        j2 = np.concatenate([j[keep[: offsets[1]]], [7, 9], j[keep[offsets[1] :]]])
        D2 = np.concatenate([D[keep[: offsets[1]]], far_D, D[keep[offsets[1] :]]])
        counts[0] += 2
        offsets2 = np.concatenate([[0], np.cumsum(counts)])
        neighbours = (species, offsets2, j2, D2)
        staged, ref = evaluate_both(path, neighbours, "posterior", True, [0.2, 0.2])
        assert np.abs(ref["forces"][n_centers:]).max() > 0  # ghosts receive forces
        assert_same(staged, ref, [0.2, 0.2], species)


def test_model_device_on_the_host_dispatches_on_the_kind():
    device = ModelDevice(SHIPPED)
    assert device.kind == "symmetry_functions"
    atoms = quartz(12, rattle=0.1)
    r = device.evaluate_host(atoms, "posterior", gradient=True, tau={"O": 0.5})
    c = CppModel(SHIPPED).evaluate(atoms, "posterior", gradient=True)
    assert r.energy == pytest.approx(c.energy, rel=1e-10)
    is_o = np.array(atoms.get_chemical_symbols()) == "O"
    np.testing.assert_allclose(
        r.bias_forces[is_o], 0.5 * c.uncertainty_gradient[is_o], rtol=1e-10, atol=1e-14
    )
    assert np.all(r.bias_forces[~is_o] == 0)
    with pytest.raises(
        ValueError, match="is a symmetry_functions model; GMNNDevice evaluates gaussian_moments"
    ):
        GMNNDevice(SHIPPED)


def test_bad_input_is_a_clear_error():
    model = CppModel(SHIPPED)
    atoms = quartz(12)
    species, offsets, j, D = model.neighbours(atoms)
    staged = _core.bpnn_evaluate_staged_host
    with pytest.raises(ValueError, match="computes uncertainty 'none' or 'posterior', got 'distance'"):
        staged(model.core, species, offsets, j, D, "distance")
    with pytest.raises(ValueError, match="tau has 3 values, expected one per model element"):
        staged(model.core, species, offsets, j, D, "posterior", True, [0.1, 0.1, 0.1])
    bad = species.copy()
    bad[4] = 2
    with pytest.raises(ValueError, match="atom 4 has element index 2"):
        staged(model.core, bad, offsets, j, D)
    with pytest.raises(ValueError, match="runs GM-NN files only"):
        _core.gmnn_evaluate_staged_host(model.core, species, offsets, j, D)


def test_a_gmnn_file_is_refused_by_the_bpnn_stages(tmp_path):
    from gmnn_fixtures import write_gm_model

    gm = CppModel(write_gm_model(tmp_path / "gm.mlip"))
    species, offsets, j, D = gm.neighbours(quartz(1))
    with pytest.raises(ValueError, match="runs symmetry-function files; this file is a GM-NN"):
        _core.bpnn_evaluate_staged_host(gm.core, species, offsets, j, D)


@pytest.mark.skipif(
    gpu.unavailable_reason() is None, reason="a CUDA device is present; the no-device path is moot"
)
def test_device_without_a_device_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA device"):
        _core.BPNNDeviceEvaluator(CppModel(SHIPPED).core)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        ModelDevice(SHIPPED).evaluate(quartz(1))


# ---------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(gpu.unavailable_reason() is not None, reason=str(gpu.unavailable_reason()))
@pytest.mark.parametrize("uncertainty", ["none", "posterior"])
def test_cuda_equals_the_cpp_evaluator(angular_path, uncertainty):
    """Small and large, both files, with the automatic number of threads and with fewer threads
    than centres (each thread then takes several in turn)."""
    gradient = uncertainty == "posterior"
    tau = [0.3, 0.7]
    for path in (SHIPPED, angular_path):
        for max_threads in (0, 1000):
            device = _core.BPNNDeviceEvaluator(CppModel(path).core, 0, max_threads)
            for atoms in (quartz(11, rattle=0.1), quartz(5, rattle=0.1).repeat((4, 4, 4))):
                neighbours = CppModel(path).neighbours(atoms)
                ref = CppModel(path).evaluator(uncertainty, gradient).evaluate(*neighbours)
                out = device.evaluate(*neighbours, uncertainty, gradient, tau)
                assert_same(out, ref, tau if gradient else None, neighbours[0])
                again = device.evaluate(*neighbours, uncertainty, gradient, tau)  # buffers reused
                assert_same(again, ref, tau if gradient else None, neighbours[0])
