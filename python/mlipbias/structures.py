"""Reference structures: crystals, an amorphous SiO2 cell, molecules, and their validation.

Builders return fresh :class:`ase.Atoms` (positions in Angstrom, cell rows are lattice
vectors). Cheap structures are built on demand; the amorphous SiO2 cell, which needs a
melt-quench MD, ships as a file under ``mlipbias/data_files`` and is read with
:func:`default_structure`. Regenerate the shipped files with::

    python -m mlipbias.structures --write-defaults

:func:`check_structure` is the one validation every structure passes before an oracle or a
model sees it: finite positions and cell, no atoms closer than a minimum distance.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms, units

DATA_DIR = Path(__file__).resolve().parent / "data_files"

# g/cm^3 per amu/A^3
_DENSITY_UNIT = 1.0e24 / units.mol


# --------------------------------------------------------------------------------------------
# validation


def check_structure(atoms: Atoms, min_distance: float = 0.5, name: str = "structure") -> None:
    """Raise ValueError, naming ``name`` and the atoms involved, if ``atoms`` is unusable.

    Checks: at least one atom; finite positions; a finite cell that is not degenerate along
    periodic directions; no two atoms (periodic images included) closer than ``min_distance``
    (Angstrom; 0 disables the distance check).
    """
    if len(atoms) == 0:
        raise ValueError(f"{name}: has no atoms")
    positions = atoms.positions
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        shown = ", ".join(f"{i} ({atoms[i].symbol})" for i in bad[:5])
        more = f" and {bad.size - 5} more" if bad.size > 5 else ""
        raise ValueError(f"{name}: non-finite (NaN or inf) position of atom {shown}{more}")
    cell = atoms.cell.array
    if not np.isfinite(cell).all():
        raise ValueError(f"{name}: the cell has non-finite (NaN or inf) entries")
    if atoms.pbc.any():
        if atoms.cell.rank < 3 and atoms.pbc.all():
            raise ValueError(f"{name}: periodic in 3 directions but the cell is degenerate: {cell.tolist()}")
        lengths = atoms.cell.lengths()
        if (lengths[atoms.pbc] <= 0).any():
            raise ValueError(f"{name}: periodic direction with a zero-length cell vector: {cell.tolist()}")
    if min_distance > 0 and len(atoms) > 0:
        pair = closest_pair(atoms, min_distance)
        if pair is not None:
            i, j, d = pair
            if i == j:
                where = f"atom {i} ({atoms[i].symbol}) is {d:.4f} A from its own periodic image"
            else:
                where = f"atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are {d:.4f} A apart"
            raise ValueError(f"{name}: {where}, closer than min_distance = {min_distance} A")


def closest_pair(atoms: Atoms, cutoff: float) -> tuple[int, int, float] | None:
    """The closest pair (i, j, distance in A) among pairs closer than ``cutoff``, or None."""
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijd", atoms, cutoff, self_interaction=False)
    if d.size == 0:
        return None
    k = int(np.argmin(d))
    return int(i[k]), int(j[k]), float(d[k])


def min_distance_of(atoms: Atoms, cutoff: float = 6.0) -> float:
    """Smallest interatomic distance (A, periodic images included); inf if none below ``cutoff``."""
    pair = closest_pair(atoms, cutoff)
    return np.inf if pair is None else pair[2]


def mass_density(atoms: Atoms) -> float:
    """Mass density in g/cm^3 of a periodic structure."""
    return float(atoms.get_masses().sum() / atoms.get_volume() * _DENSITY_UNIT)


def fingerprint(atoms: Atoms) -> str:
    """A short hash of numbers, positions, cell and pbc: equal only for identical structures."""
    h = hashlib.sha256()
    for array in (atoms.numbers.astype(np.int64), atoms.positions, atoms.cell.array, atoms.pbc):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# crystals and molecules

# alpha-quartz at ambient conditions: Levien, Prewitt & Weidner, Am. Mineral. 65, 920 (1980).
# Space group P3_221 (154); Si on 3a and O on 6c. The paper puts Si at (x, 0, 0); the
# International Tables setting ASE uses has 3a at (x, 0, 2/3), hence the shift of z by 2/3.
QUARTZ_A = 4.9160  # A
QUARTZ_C = 5.4054  # A
QUARTZ_SI = (0.4697, 0.0, 0.0)
QUARTZ_O = (0.4135, 0.2669, 0.1191)

# Silicon lattice constant at 22.5 C, CODATA 2018 (d220 = a / sqrt(8) = 192.0155716 pm).
SILICON_A = 5.431020511  # A


def alpha_quartz(supercell: Sequence[int] = (1, 1, 1)) -> Atoms:
    """alpha-quartz SiO2 (9 atoms per cell) at the experimental cell and positions.

    Levien, Prewitt & Weidner, Am. Mineral. 65, 920 (1980): a = 4.9160 A, c = 5.4054 A,
    Si (0.4697, 0, 0), O (0.4135, 0.2669, 0.1191), space group P3_221.
    This gives a density of 2.646 g/cm^3, Si-O bonds of 1.605 and 1.614 A and Si-O-Si angles of 143.7 deg.
    ``supercell`` repeats the hexagonal cell along a, b, c.
    """
    from ase.spacegroup import crystal

    shift = 2.0 / 3.0
    atoms = crystal(
        ["Si", "O"],
        basis=[
            (QUARTZ_SI[0], QUARTZ_SI[1], QUARTZ_SI[2] + shift),
            (QUARTZ_O[0], QUARTZ_O[1], QUARTZ_O[2] + shift),
        ],
        spacegroup=154,
        cellpar=[QUARTZ_A, QUARTZ_A, QUARTZ_C, 90, 90, 120],
        primitive_cell=True,
    )
    atoms.info.clear()
    return atoms.repeat(_repeat(supercell))


def diamond_si(size: int = 2) -> Atoms:
    """Diamond-cubic silicon, ``size`` x ``size`` x ``size`` conventional cells (8 atoms each).

    ``size=2`` gives the 64-atom cell of Cubuk & Schoenholz (2020).
    Lattice constant 5.431020511 A (CODATA 2018).
    """
    from ase.build import bulk

    if int(size) != size or size < 1:
        raise ValueError(f"diamond_si: size must be a positive integer, got {size!r}")
    return bulk("Si", "diamond", a=SILICON_A, cubic=True).repeat((int(size),) * 3)


def molecule(name: str, vacuum: float | None = None) -> Atoms:
    """A molecule from ASE's G2 collection (and ASE's extras), non-periodic.

    ``vacuum`` (A), when given, sets a box with that much empty space around the molecule
    (pbc stays False), which some oracles want.
    """
    from ase.build import molecule as ase_molecule
    from ase.collections import g2

    try:
        atoms = ase_molecule(name)
    except KeyError:
        known = list(g2.names) + ["Be2", "C7NH5", "BDA", "biphenyl", "C60"]
        close = difflib.get_close_matches(name, known, n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see ase.collections.g2.names"
        raise ValueError(f"unknown molecule {name!r}{hint}") from None
    if vacuum is not None:
        atoms.center(vacuum=vacuum)
    atoms.pbc = False
    return atoms


def _repeat(supercell: Sequence[int] | int) -> tuple[int, int, int]:
    reps = (supercell,) * 3 if np.isscalar(supercell) else tuple(supercell)
    if len(reps) != 3 or any(int(r) != r or r < 1 for r in reps):
        raise ValueError(f"supercell must be three positive integers, got {supercell!r}")
    return tuple(int(r) for r in reps)


# --------------------------------------------------------------------------------------------
# amorphous structures by melt-quench


def random_packing(
    symbols: str | Sequence[str],
    cell: np.ndarray | Sequence[float],
    min_distance: float,
    seed: int = 0,
    max_attempts: int = 10000,
) -> Atoms:
    """Atoms placed uniformly at random in a periodic cell, no pair closer than ``min_distance`` (A).

    Random sequential addition: each atom is tried at up to ``max_attempts`` random points.
    Raises ValueError when the cell is too dense for that distance.
    """
    atoms = Atoms(symbols, cell=cell, pbc=True)
    if atoms.cell.rank < 3:
        raise ValueError(f"random_packing: degenerate cell {atoms.cell.array.tolist()}")
    rng = np.random.default_rng(seed)
    inverse = np.linalg.inv(atoms.cell.array)
    placed = np.empty((0, 3))
    for k in range(len(atoms)):
        for _ in range(max_attempts):
            trial = rng.random(3) @ atoms.cell.array
            if (
                placed.size == 0
                or _min_image_distance(placed - trial, atoms.cell.array, inverse) >= min_distance
            ):
                placed = np.vstack([placed, trial])
                break
        else:
            raise ValueError(
                f"random_packing: could not place atom {k} of {len(atoms)} at least {min_distance} A from "
                f"the others after {max_attempts} tries; lower min_distance or the density"
            )
    atoms.positions = placed
    return atoms


def _min_image_distance(vectors: np.ndarray, cell: np.ndarray, inverse: np.ndarray) -> float:
    # Minimum image through rounding fractional coordinates, then a check of the 27 neighbouring
    # images, which is exact for any cell shape.
    frac = vectors @ inverse
    frac -= np.round(frac)
    shifts = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], float)
    images = (frac[:, None, :] + shifts[None, :, :]) @ cell
    return float(np.sqrt((images**2).sum(axis=-1).min()))


def melt_quench(
    atoms: Atoms,
    calculator,
    *,
    t_melt: float = 5000.0,
    t_final: float = 300.0,
    melt_steps: int = 10000,
    quench_steps: int = 20000,
    timestep: float = 1.0,
    friction: float = 0.01,
    ramp_every: int = 100,
    prerelax_steps: int = 200,
    relax_fmax: float = 0.01,
    relax_steps: int = 2000,
    min_distance: float = 0.5,
    seed: int = 0,
    progress: bool = True,
) -> Atoms:
    """Melt, quench and relax ``atoms`` at fixed cell with Langevin NVT MD and ``calculator``.

    First up to ``prerelax_steps`` FIRE steps (to max |F| < 1 eV/A) remove the overlaps of a
    random start, which would otherwise blow up the first MD steps. Then ``melt_steps`` steps at
    ``t_melt`` (K), a linear temperature ramp from ``t_melt`` to ``t_final`` over
    ``quench_steps`` steps (updated every ``ramp_every`` steps), and BFGS to ``relax_fmax``
    (eV/A) in at most ``relax_steps`` steps. ``timestep`` in fs, ``friction`` in 1/fs. Every
    ``ramp_every`` steps the structure is checked (finite, no pair closer than ``min_distance``
    A) so a collapsing potential stops with the step and the atoms named.

    Returns a new Atoms (no calculator) with the settings and the final maximum force recorded
    in ``info``. Deterministic for a given ``seed`` and a deterministic calculator.
    """
    from ase.md.langevin import Langevin
    from tqdm.auto import tqdm

    if melt_steps < 0 or quench_steps < 0 or ramp_every < 1:
        raise ValueError("melt_quench: melt_steps and quench_steps must be >= 0 and ramp_every >= 1")
    check_structure(atoms, min_distance, "melt_quench start")
    work = atoms.copy()
    if prerelax_steps > 0:
        relax(work, calculator, fmax=1.0, steps=prerelax_steps, optimizer="fire", progress=progress)
        check_structure(work, min_distance, "melt_quench after the pre-relaxation")
    work.calc = calculator
    rng = np.random.default_rng(seed)
    work.set_momenta(maxwell_boltzmann_momenta(work.get_masses(), t_melt, rng))
    dyn = Langevin(
        work, timestep * units.fs, temperature_K=t_melt, friction=friction / units.fs, fixcm=False, rng=rng
    )
    total = melt_steps + quench_steps
    done = 0
    with tqdm(total=total, desc="melt-quench MD", unit="step", disable=None if progress else True) as bar:
        while done < total:
            chunk = min(ramp_every, total - done)
            if done >= melt_steps:
                fraction = (done - melt_steps + chunk) / max(quench_steps, 1)
                dyn.set_temperature(temperature_K=t_melt + (t_final - t_melt) * min(fraction, 1.0))
            dyn.run(chunk)
            done += chunk
            bar.update(chunk)
            bar.set_postfix(T=f"{work.get_temperature():.0f} K")
            check_structure(work, min_distance, f"melt_quench after {done} MD steps")
    relaxed_fmax = relax(work, calculator, fmax=relax_fmax, steps=relax_steps, progress=progress)
    check_structure(work, min_distance, "melt_quench after relaxation")
    result = Atoms(work.numbers, positions=work.positions, cell=work.cell, pbc=work.pbc)
    result.info.update(
        generator="mlipbias.structures.melt_quench",
        t_melt=t_melt,
        t_final=t_final,
        melt_steps=melt_steps,
        quench_steps=quench_steps,
        timestep_fs=timestep,
        friction_per_fs=friction,
        seed=seed,
        relaxed_fmax=relaxed_fmax,
    )
    return result


def maxwell_boltzmann_momenta(masses: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Momenta (ASE units) drawn from the Maxwell-Boltzmann distribution at ``temperature`` K."""
    sigma = np.sqrt(np.asarray(masses) * units.kB * temperature)
    return rng.standard_normal((len(sigma), 3)) * sigma[:, None]


def relax(
    atoms: Atoms,
    calculator,
    fmax: float = 0.01,
    steps: int = 1000,
    optimizer: str = "bfgs",
    progress: bool = True,
) -> float:
    """Relax positions (fixed cell) in place with ``optimizer`` ("bfgs" or "fire", steps of at
    most 0.1 A) until max |F| < ``fmax`` (eV/A) or ``steps`` steps; returns the final max |F|."""
    from ase.optimize import BFGS, FIRE
    from tqdm.auto import tqdm

    if optimizer not in ("bfgs", "fire"):
        raise ValueError(f"relax: optimizer must be 'bfgs' or 'fire', got {optimizer!r}")
    atoms.calc = calculator
    method = BFGS if optimizer == "bfgs" else FIRE
    opt = method(atoms, logfile=None, maxstep=0.1)
    with tqdm(desc=f"relax ({optimizer})", unit="step", disable=None if progress else True) as bar:
        for _ in opt.irun(fmax=fmax, steps=steps):
            bar.update(1)
            bar.set_postfix(fmax=f"{np.linalg.norm(atoms.get_forces(), axis=1).max():.2e} eV/A")
    return float(np.linalg.norm(atoms.get_forces(), axis=1).max())


def amorphous_sio2(
    n_formula_units: int = 32,
    density: float = 2.2,
    seed: int = 0,
    calculator=None,
    packing_distance: float = 1.7,
    progress: bool = True,
    **melt_quench_options,
) -> Atoms:
    """Amorphous SiO2 (``n_formula_units`` Si and twice as many O) by melt-quench at fixed density.

    Random packing in a cubic cell at ``density`` (g/cm^3; 2.2 is vitreous silica) with no pair
    closer than ``packing_distance`` (A), then :func:`melt_quench` with ``calculator``
    (default ``mlipbias.potentials.BKS()``) and ``melt_quench_options``. The default 32 gives
    the 96-atom cell of Cubuk & Schoenholz (2020).
    """
    if int(n_formula_units) != n_formula_units or n_formula_units < 1:
        raise ValueError(
            f"amorphous_sio2: n_formula_units must be a positive integer, got {n_formula_units!r}"
        )
    if not density > 0:
        raise ValueError(f"amorphous_sio2: density must be positive (g/cm^3), got {density!r}")
    n = int(n_formula_units)
    symbols = ["Si"] * n + ["O"] * (2 * n)
    mass = Atoms(symbols).get_masses().sum()
    length = (mass * _DENSITY_UNIT / density) ** (1.0 / 3.0)
    start = random_packing(symbols, np.eye(3) * length, packing_distance, seed=seed)
    if calculator is None:
        from mlipbias.potentials import BKS

        calculator = BKS()
    result = melt_quench(start, calculator, seed=seed, progress=progress, **melt_quench_options)
    result.info.update(density_g_cm3=density, packing_distance=packing_distance)
    return result


# --------------------------------------------------------------------------------------------
# shipped defaults and structure specifications

# name -> file under data_files (made by write_defaults) or a builder.
_SHIPPED = {"sio2-amorphous-96": "sio2-amorphous-96.extxyz"}


def _alanine_dipeptide() -> Atoms:
    from mlipbias.potentials.openmm_ff import alanine_dipeptide

    return alanine_dipeptide()


_BUILT = {
    "alpha-quartz": alpha_quartz,
    "si-diamond-64": diamond_si,
    "alanine-dipeptide": _alanine_dipeptide,  # read from the shipped PDB (needs openmm)
}


def default_structure_names() -> list[str]:
    """Names accepted by :func:`default_structure`."""
    return sorted([*_SHIPPED, *_BUILT])


def default_structure(name: str) -> Atoms:
    """A named reference structure: ``sio2-amorphous-96`` (shipped file), ``alpha-quartz``, ``si-diamond-64``,
    ``alanine-dipeptide`` (ACE-ALA-NME, the shipped PDB of :mod:`mlipbias.potentials.openmm_ff`).

    The shipped file's ``info`` records how it was made (generator, calculator, settings).
    """
    if name in _BUILT:
        return _BUILT[name]()
    if name not in _SHIPPED:
        raise ValueError(f"unknown default structure {name!r}; known: {', '.join(default_structure_names())}")
    path = DATA_DIR / _SHIPPED[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped structure {path} is missing; create it with `python -m mlipbias.structures "
            "--write-defaults`"
        )
    from ase.io import read

    atoms = read(path, format="extxyz")
    atoms.calc = None
    return atoms


def load_structure(spec: str, repeat: Sequence[int] | None = None) -> Atoms:
    """A structure from a specification string, optionally repeated.

    ``spec`` is a file readable by ``ase.io.read`` (extxyz, cif, POSCAR, ...; its last frame),
    a default structure name (see :func:`default_structure_names`), or ``molecule:NAME``
    (ASE's G2 collection, e.g. ``molecule:NH3``).
    """
    if spec.startswith("molecule:"):
        atoms = molecule(spec.split(":", 1)[1])
    elif Path(spec).is_file():
        from ase.io import read

        try:
            atoms = read(spec, index=-1)
        except Exception as exc:  # ase raises many types for unreadable files
            raise ValueError(f"cannot read structure file {spec}: {exc}") from exc
        atoms.calc = None
    elif spec in _SHIPPED or spec in _BUILT:
        atoms = default_structure(spec)
    else:
        raise ValueError(
            f"structure {spec!r} is neither a file nor a known name; use a file path, molecule:NAME, or one "
            f"of: {', '.join(default_structure_names())}"
        )
    if repeat is not None:
        atoms = atoms.repeat(_repeat(repeat))
    return atoms


def write_defaults(calculator=None, directory: Path | str = DATA_DIR, progress: bool = True) -> list[Path]:
    """Regenerate the shipped structure files (the amorphous SiO2 cell by melt-quench MD).

    ``calculator`` defaults to ``mlipbias.potentials.BKS()``; its class is recorded in the file.
    """
    from ase.io import write

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if calculator is None:
        from mlipbias.potentials import BKS

        calculator = BKS()
    atoms = amorphous_sio2(calculator=calculator, progress=progress)
    atoms.info["calculator"] = f"{type(calculator).__module__}.{type(calculator).__qualname__}"
    path = directory / _SHIPPED["sio2-amorphous-96"]
    write(path, atoms, format="extxyz")
    return [path]


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mlipbias.structures", description="Reference structures of mlipbias."
    )
    parser.add_argument(
        "--write-defaults",
        action="store_true",
        help=f"regenerate the shipped structures in {DATA_DIR} (amorphous SiO2 by melt-quench with BKS)",
    )
    parser.add_argument("--list", action="store_true", help="list the default structure names")
    args = parser.parse_args(argv)
    if args.write_defaults:
        for path in write_defaults():
            print(f"wrote {path}")
    if args.list or not args.write_defaults:
        for name in default_structure_names():
            print(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
