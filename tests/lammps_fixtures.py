"""Model files, structures and LAMMPS helpers shared by the pair_style mlip/bias tests.

The models are untrained (random weights, tiny networks) but complete: three ensemble members,
sketched gradient features fitted on a few quartz cells (posterior and distance) and conformal
calibration factors, saved with :func:`mlipbias.models.save_model` exactly as ``mlipbias train``
saves them. Structures are small rattled quartz cells so that every LAMMPS run takes milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write
from model_fixtures import quartz, random_network, small_descriptor

from mlipbias.lammps import import_lammps, load_plugin

ELEMENTS = ("Si", "O")
MASSES = {"Si": 28.0855, "O": 15.999}
METHODS = ("ensemble", "posterior", "distance")
NKTV2P = 1.6021765e6  # LAMMPS metal units: bar per eV/A^3
THERMO = "step pe ke etotal econserve press pxx pyy pzz pxy pxz pyz vol c_unc[1] c_unc[2] c_unc[3] c_unc[4]"


def write_model(path: Path, *, n_members: int = 3, methods=METHODS, seed: int = 0, elements=ELEMENTS) -> Path:
    """An untrained model file with the requested uncertainty methods and calibration factors."""
    from mlipbias.models import AtomsData, MLIPModel, save_model
    from mlipbias.models.training import network_features
    from mlipbias.uq.gradient_features import GradientFeatures

    descriptor = small_descriptor(elements)
    data = AtomsData([quartz(100 + k) for k in range(4)], descriptor, labels=False)
    net = random_network(descriptor, data, n_members=n_members, seed=seed)
    model = MLIPModel(net)
    if "posterior" in methods or "distance" in methods:
        gradient = GradientFeatures.random(net, 4, seed=seed, lam=1e-2)
        phi = network_features(net, data, sketch=gradient.sketch(net.energy_scale))
        structure = np.repeat(np.arange(len(data)), data.n_atoms)
        model.gradient = gradient.fit(phi, structure, data.n_atoms, 20)
    model.calibration = {"calibration/alpha": np.array([0.1])}
    for k, method in enumerate(methods):
        model.calibration[f"calibration/energy/{method}"] = np.array([1.3 + 0.2 * k])
        model.calibration[f"calibration/force/{method}"] = np.array([0.7 + 0.3 * k])
    model.methods = tuple(methods)
    return save_model(model, path)


def structure(seed: int = 0, repeat=(1, 1, 2)) -> Atoms:
    """Rattled, slightly strained alpha-quartz (9 atoms per cell)."""
    return quartz(seed).repeat(repeat)


def write_data(path: Path, atoms: Atoms, charges: bool = False) -> Path:
    """A LAMMPS data file with types 1 = Si, 2 = O (and charges 2.4 / -1.2 when asked)."""
    atoms = atoms.copy()
    if charges:
        atoms.set_initial_charges([2.4 if s == "Si" else -1.2 for s in atoms.get_chemical_symbols()])
    write(
        path,
        atoms,
        format="lammps-data",
        specorder=list(ELEMENTS),
        masses=True,
        atom_style="charge" if charges else "atomic",
    )
    return path


@contextlib.contextmanager
def lammps():
    """A LAMMPS instance of the Python module with the plugin loaded, closed afterwards."""
    lmp = import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        load_plugin(lmp)
        yield lmp
    finally:
        lmp.close()


def setup(lmp, data: Path, pair: str, *, charges: bool = False, extra: str = "", unc: bool = True) -> None:
    """Read ``data``, define the pair style and, with ``unc``, `compute unc all pair mlip/bias`;
    thermo output with every digit."""
    thermo = THERMO if unc else THERMO.split(" c_unc")[0]
    lmp.commands_string(
        f"""
        units metal
        atom_style {"charge" if charges else "atomic"}
        atom_modify map array
        boundary p p p
        box tilt large
        read_data {data}
        {pair}
        {"compute unc all pair mlip/bias" if unc else ""}
        thermo_style custom {thermo}
        thermo_modify format float %.17g
        {extra}
        """
    )


def gather(lmp, name: str, ncol: int = 3, integer: bool = False) -> np.ndarray:
    """A per-atom array ordered by atom id."""
    values = lmp.gather_atoms(name, 0 if integer else 1, ncol)
    out = np.ctypeslib.as_array(values)
    return out.reshape(-1, ncol) if ncol > 1 else out.copy()


def cell(lmp) -> np.ndarray:
    """LAMMPS' box as lattice vectors in rows (lower triangular)."""
    lo, hi, xy, yz, xz, _, _ = lmp.extract_box()
    return np.array([[hi[0] - lo[0], 0, 0], [xy, hi[1] - lo[1], 0], [xz, yz, hi[2] - lo[2]]])


def atoms_of(lmp) -> Atoms:
    """The configuration LAMMPS holds (its frame, ordered by atom id) as ase.Atoms."""
    types = gather(lmp, "type", 1, integer=True)
    symbols = [ELEMENTS[t - 1] for t in types]
    return Atoms(symbols, positions=gather(lmp, "x"), cell=cell(lmp), pbc=True)


def virial(lmp) -> np.ndarray:
    """The virial W (eV, 3x3) from the pressure tensor of a run with zero velocities."""
    p = [lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")]
    xx, yy, zz, xy, xz, yz = np.array(p) * abs(np.linalg.det(cell(lmp))) / NKTV2P
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def set_configuration(lmp, positions: np.ndarray, lattice: np.ndarray) -> None:
    """Move every atom and the box (lower-triangular ``lattice``), for finite differences."""
    lo, _, _, _, _, _, _ = lmp.extract_box()
    hi = [lo[a] + lattice[a, a] for a in range(3)]
    bounds = " ".join(f"{d} final {float(lo[a])!r} {float(hi[a])!r}" for a, d in enumerate("xyz"))
    xy, xz, yz = (float(lattice[a, b]) for a, b in ((1, 0), (2, 0), (2, 1)))
    tilts = f"xy final {xy!r} xz final {xz!r} yz final {yz!r}"
    lmp.command(f"change_box all {bounds} {tilts} units box")
    n = len(positions)
    x = (n * 3 * ctypes.c_double)(*np.ascontiguousarray(positions).ravel())
    lmp.scatter_atoms("x", 1, 3, x)
