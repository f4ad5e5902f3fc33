"""pair_style mlip/bias under MPI domain decomposition: the wheel's ``lmp`` under ``mpirun -np 1``
and ``-np 2``, with ``newton on`` and ``off``, gives the same energies, forces, pressure, global and
per-atom uncertainties (to 1e-10) and the same 200-step NVE trajectory (to 1e-8)."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from lammps_fixtures import structure, write_data, write_model

from mlipbias.lammps import environment, lmp_executable, mpirun_executable

pytestmark = pytest.mark.mpi

# posterior and distance share the reduction of the sketched features: one of them is enough here
OPTIONS = {
    "ensemble": "uncertainty ensemble tau 0.3 rescale yes",
    "posterior": "uncertainty posterior tau 0.01 tau_stress 0.02",
}
RUNS = [(1, "on"), (2, "on"), (1, "off"), (2, "off")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The model and 36 atoms of quartz: with 2 ranks each owns half and sees the rest as ghosts."""
    folder = tmp_path_factory.mktemp("lammps_mpi")
    return write_model(folder / "sio2.mlip"), write_data(folder / "quartz.data", structure(3, (1, 2, 2)))


def run_lammps(folder, model, data, options: str, ranks: int, newton: str) -> dict:
    """Forces, per-atom U and thermo at step 0, then 200 NVE steps; every number with 17 digits."""
    folder.mkdir()
    (folder / "in.lmp").write_text(
        f"""
        units metal
        atom_style atomic
        newton {newton}
        read_data {data}
        pair_style mlip/bias {model} {options}
        pair_coeff * * Si O
        compute unc all pair mlip/bias
        fix peratom all pair 200 mlip/bias uncertainty 1
        thermo_style custom step pe press pxx pyy pzz pxy pxz pyz c_unc[1] c_unc[2] c_unc[3] c_unc[5]
        thermo_modify format float %.17g
        thermo 200
        run 0
        write_dump all custom start.dump id fx fy fz f_peratom modify sort id format float %.17g
        velocity all create 300 4 loop geom
        timestep 0.00025
        fix nve all nve
        run 200
        write_dump all custom end.dump id x y z vx vy vz fx fy fz modify sort id format float %.17g
        """
    )
    command = [mpirun_executable(), "-np", str(ranks), lmp_executable(), "-in", "in.lmp", "-nocite"]
    out = subprocess.run(command, cwd=folder, env=environment(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    grid = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", out.stdout)
    assert np.prod([int(n) for n in grid.groups()]) == ranks
    lines = out.stdout.splitlines()
    headers = [k for k, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"]]
    # the row of run 0, then the last row of run 200
    thermo = np.array([[float(v) for v in lines[k].split()] for k in (headers[0] + 1, headers[1] + 2)])
    return {
        "thermo": thermo,  # steps 0 and 200
        "start": np.loadtxt(folder / "start.dump", skiprows=9),
        "end": np.loadtxt(folder / "end.dump", skiprows=9),
    }


@pytest.mark.parametrize("method", list(OPTIONS))
def test_one_and_two_ranks_newton_on_and_off_agree(tmp_path, files, method):
    model, data = files
    results = {
        (n, newton): run_lammps(tmp_path / f"np{n}_{newton}", model, data, OPTIONS[method], n, newton)
        for n, newton in RUNS
    }
    reference = results[RUNS[0]]
    forces = reference["start"][:, 1:4]
    atom_u = reference["start"][:, 4]
    assert np.abs(forces).max() > 0.1 and atom_u.min() > 0 and reference["thermo"][0, 9] > 0
    for key in RUNS[1:]:
        got = results[key]
        np.testing.assert_allclose(got["start"][:, 1:4], forces, rtol=0, atol=1e-10 * np.abs(forces).max())
        np.testing.assert_allclose(got["start"][:, 4], atom_u, rtol=1e-10)
        # step 0: pe, pressure tensor, U, bias energy, tau_eff, max U_i
        np.testing.assert_allclose(got["thermo"][0], reference["thermo"][0], rtol=1e-10)
        # after 200 steps of NVE: positions, velocities, forces (and thermo, rescaled tau)
        end, want = got["end"], reference["end"]
        for columns in (slice(1, 4), slice(4, 7), slice(7, 10)):
            scale = np.abs(want[:, columns]).max()
            np.testing.assert_allclose(end[:, columns], want[:, columns], rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(got["thermo"][1], reference["thermo"][1], rtol=1e-8)


def test_too_close_atoms_on_the_second_rank_stop_both_naming_their_ids(tmp_path, files):
    """The pair sits in the upper half of the cell, owned by rank 1, whose local indices start at 0
    again: the error names the atom IDs, the step and the rank, and every rank stops together (error->all
    with rank 1's message, printed and logged by rank 0; error->one's MPI_Abort lost it now and then)."""
    model, _ = files
    atoms = structure(3, (1, 2, 2))
    top = int(np.argmax(atoms.positions[:, 2]))
    other = int(np.argsort(np.linalg.norm(atoms.positions - atoms.positions[top], axis=1))[1])
    atoms.positions[other] = atoms.positions[top] + [0.2, 0.0, 0.0]
    data = write_data(tmp_path / "close.data", atoms)
    (tmp_path / "in.lmp").write_text(
        f"units metal\natom_style atomic\nread_data {data}\npair_style mlip/bias {model}\n"
        "pair_coeff * * Si O\nreset_timestep 7\nrun 0\n"
    )
    command = [
        mpirun_executable(),
        "-np",
        "2",
        lmp_executable(),
        "-in",
        "in.lmp",
        "-nocite",
        "-log",
        "log.lammps",
    ]
    out = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=99)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    ids = sorted((top + 1, other + 1))
    pattern = rf"step 7: atoms with IDs ({ids[0]} and {ids[1]}|{ids[1]} and {ids[0]}) are 0\.2 A apart"
    assert re.search(pattern, text), text
    assert "ERROR: pair_style mlip/bias (MPI rank 1): step 7:" in text, text
    assert re.search(pattern, (tmp_path / "log.lammps").read_text()), "the error is not in log.lammps"
