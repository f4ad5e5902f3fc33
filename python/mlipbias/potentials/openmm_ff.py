"""A classical force field through OpenMM as an ASE calculator, and the alanine dipeptide it labels.

Seed 002 (Results, "Performance of bias-forces-driven active learning") labels alanine dipeptide
in vacuum with AMBER ff19SB. :class:`OpenMMForceField` evaluates ff19SB (OpenMM's
``amber19-all.xml``) with no cutoff on OpenMM's Reference platform (double precision: its forces
agree with finite differences, the CPU platform's mixed precision is off by ~3e-3 eV/A), ~1 ms per
call. The topology comes from a PDB file; :func:`alanine_dipeptide_pdb` is the ACE-ALA-NME file
shipped with mlipbias, built by :func:`build_alanine_dipeptide` (regenerate it with
``python -m mlipbias.potentials.openmm_ff --write-pdb``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes

DATA_DIR = Path(__file__).resolve().parent.parent / "data_files"
ALANINE_DIPEPTIDE_PDB = DATA_DIR / "alanine-dipeptide.pdb"

#: kJ/mol in eV (ASE's constants, so that results convert back exactly with ``ase.units``).
KJ_PER_MOL = units.kJ / units.mol
#: OpenMM lengths are nm.
NM = 10.0


def alanine_dipeptide_pdb() -> Path:
    """The shipped ACE-ALA-NME PDB (22 atoms, C7eq conformer, ff19SB minimum)."""
    if not ALANINE_DIPEPTIDE_PDB.is_file():
        raise FileNotFoundError(
            f"{ALANINE_DIPEPTIDE_PDB} is missing; create it with "
            "`python -m mlipbias.potentials.openmm_ff --write-pdb`"
        )
    return ALANINE_DIPEPTIDE_PDB


def alanine_dipeptide() -> Atoms:
    """Alanine dipeptide (ACE-ALA-NME) in vacuum as ASE atoms, in the order of the shipped PDB."""
    from openmm import unit
    from openmm.app import PDBFile

    pdb = PDBFile(str(alanine_dipeptide_pdb()))
    symbols = [atom.element.symbol for atom in pdb.topology.atoms()]
    positions = np.array(pdb.getPositions(asNumpy=True).value_in_unit(unit.angstrom))
    return Atoms(symbols, positions=positions)


class OpenMMForceField(Calculator):
    """Energy (eV) and forces (eV/A) of an OpenMM force field for the topology of a PDB file.

    Parameters (all keywords):

    * ``pdb`` - path of the PDB file that gives the topology (residues, atom names, bonds); the
      atoms handed to the calculator must have its atoms in its order (checked by element).
      Default: the shipped alanine dipeptide (:func:`alanine_dipeptide_pdb`).
    * ``forcefield`` - OpenMM force field XML files (default ``["amber19-all.xml"]``, ff19SB).
    * ``platform`` - OpenMM platform name (default ``"Reference"``, double precision).

    Nonbonded interactions have no cutoff (``NoCutoff``; molecules in vacuum) and no bond is
    constrained, so every degree of freedom has the force field's forces. Periodic cells are
    rejected.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    default_parameters = {"pdb": None, "forcefield": ("amber19-all.xml",), "platform": "Reference"}

    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(self.default_parameters))
        if unknown:
            raise ValueError(
                f"OpenMMForceField: unknown parameter(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(self.default_parameters))}"
            )
        super().__init__(**kwargs)
        self._context, self._numbers = self._build()

    def _build(self):
        import openmm
        from openmm import app

        p = self.parameters
        path = Path(p["pdb"]) if p["pdb"] is not None else alanine_dipeptide_pdb()
        if not path.is_file():
            raise FileNotFoundError(f"OpenMMForceField: PDB file {path} does not exist")
        files = [p["forcefield"]] if isinstance(p["forcefield"], str) else list(p["forcefield"])
        try:
            pdb = app.PDBFile(str(path))
            forcefield = app.ForceField(*files)
            system = forcefield.createSystem(
                pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False
            )
        except ValueError as exc:  # e.g. "No template found for residue ..."
            raise ValueError(f"OpenMMForceField: {path} with {', '.join(files)}: {exc}") from exc
        for atom in pdb.topology.atoms():
            if atom.element is None:
                raise ValueError(f"OpenMMForceField: atom {atom.name} of {path} has no element")
        numbers = np.array([atom.element.atomic_number for atom in pdb.topology.atoms()])
        try:
            platform = openmm.Platform.getPlatformByName(p["platform"])
        except Exception as exc:
            raise ValueError(f"OpenMMForceField: OpenMM has no platform {p['platform']!r}") from exc
        integrator = openmm.VerletIntegrator(0.001)  # never stepped; a Context needs one
        context = openmm.Context(system, integrator, platform)
        return context, numbers

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise ValueError("OpenMMForceField computes molecules in vacuum; the structure is periodic")
        numbers = self.atoms.numbers
        if len(numbers) != len(self._numbers) or np.any(numbers != self._numbers):
            raise ValueError(
                f"OpenMMForceField: the atoms ({self.atoms.get_chemical_formula()}, {len(numbers)}) do not "
                f"match the PDB topology ({len(self._numbers)} atoms) element by element"
            )
        self._context.setPositions(self.atoms.positions / NM)
        state = self._context.getState(getEnergy=True, getForces=True)
        energy = state.getPotentialEnergy()._value * KJ_PER_MOL  # kJ/mol
        forces = np.asarray(state.getForces(asNumpy=True)._value) * KJ_PER_MOL / NM  # kJ/mol/nm
        self.results["energy"] = float(energy)
        self.results["free_energy"] = float(energy)
        self.results["forces"] = forces


# --------------------------------------------------------------------------------------------
# the shipped alanine dipeptide


def _place(a, b, c, bond: float, angle: float, torsion: float) -> np.ndarray:
    """Position of d with |cd| = bond, angle bcd and dihedral abcd in degrees (NeRF)."""
    angle, torsion = np.radians(angle), np.radians(torsion)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d = np.array(
        [
            -bond * np.cos(angle),
            bond * np.sin(angle) * np.cos(torsion),
            bond * np.sin(angle) * np.sin(torsion),
        ]
    )
    return c + d[0] * bc + d[1] * m + d[2] * n


def build_alanine_dipeptide(path: Path | str = ALANINE_DIPEPTIDE_PDB, phi: float = -80.0, psi: float = 75.0):
    """Write ACE-ALA-NME (L-alanine) to ``path`` as a PDB file; returns the path.

    Heavy atoms are placed from standard peptide internal coordinates (trans peptide bonds,
    backbone dihedrals ``phi``, ``psi`` in degrees, the C7eq basin by default), hydrogens by
    OpenMM's ``Modeller.addHydrogens`` with ff19SB, and the whole molecule is then relaxed to the
    nearest ff19SB minimum (OpenMM's L-BFGS, tolerance 0.01 kJ/mol/nm).
    """
    import openmm
    from openmm import app, unit

    x = {}
    x["ACE", "CH3"] = np.zeros(3)
    x["ACE", "C"] = np.array([1.52, 0.0, 0.0])
    x["ALA", "N"] = x["ACE", "C"] + 1.335 * np.array(
        [-np.cos(np.radians(116.2)), np.sin(np.radians(116.2)), 0]
    )
    x["ALA", "CA"] = _place(x["ACE", "CH3"], x["ACE", "C"], x["ALA", "N"], 1.458, 121.7, 180.0)
    x["ALA", "C"] = _place(x["ACE", "C"], x["ALA", "N"], x["ALA", "CA"], 1.525, 111.2, phi)
    x["NME", "N"] = _place(x["ALA", "N"], x["ALA", "CA"], x["ALA", "C"], 1.335, 116.2, psi)
    x["NME", "C"] = _place(x["ALA", "CA"], x["ALA", "C"], x["NME", "N"], 1.449, 121.9, 180.0)
    # Carbonyl O cis to the next C-alpha (trans peptide); C-beta gives L-alanine.
    x["ACE", "O"] = _place(x["ALA", "CA"], x["ALA", "N"], x["ACE", "C"], 1.229, 122.7, 0.0)
    x["ALA", "O"] = _place(x["NME", "C"], x["NME", "N"], x["ALA", "C"], 1.229, 122.7, 0.0)
    x["ALA", "CB"] = _place(x["ALA", "C"], x["ALA", "N"], x["ALA", "CA"], 1.53, 110.5, -122.5)

    topology = app.Topology()
    chain = topology.addChain("A")
    atoms, positions = {}, []
    for residue_name, names in (
        ("ACE", ("CH3", "C", "O")),
        ("ALA", ("N", "CA", "C", "O", "CB")),
        ("NME", ("N", "C")),
    ):
        residue = topology.addResidue(residue_name, chain)
        for name in names:
            atoms[residue_name, name] = topology.addAtom(name, app.Element.getBySymbol(name[0]), residue)
            positions.append(x[residue_name, name])
    for a, b in (
        (("ACE", "CH3"), ("ACE", "C")), (("ACE", "C"), ("ACE", "O")), (("ACE", "C"), ("ALA", "N")),
        (("ALA", "N"), ("ALA", "CA")), (("ALA", "CA"), ("ALA", "C")), (("ALA", "C"), ("ALA", "O")),
        (("ALA", "CA"), ("ALA", "CB")), (("ALA", "C"), ("NME", "N")), (("NME", "N"), ("NME", "C")),
    ):  # fmt: skip
        topology.addBond(atoms[a], atoms[b])
    forcefield = app.ForceField("amber19-all.xml")
    modeller = app.Modeller(topology, np.array(positions) / NM * unit.nanometer)
    modeller.addHydrogens(forcefield)
    system = forcefield.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    context = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    context.setPositions(modeller.positions)
    openmm.LocalEnergyMinimizer.minimize(context, 0.01)
    state = context.getState(getPositions=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        app.PDBFile.writeFile(modeller.topology, state.getPositions(), handle, keepIds=True)
    return path


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mlipbias.potentials.openmm_ff", description="The shipped alanine dipeptide."
    )
    parser.add_argument(
        "--write-pdb",
        action="store_true",
        help=f"rebuild {ALANINE_DIPEPTIDE_PDB} (ACE-ALA-NME, ff19SB minimum)",
    )
    args = parser.parse_args(argv)
    if args.write_pdb:
        print(f"wrote {build_alanine_dipeptide()}")
    else:
        parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
