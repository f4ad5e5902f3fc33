"""The PySCF DFT and OpenMM force-field oracles against their libraries and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import molecule

from mlipbias.oracles import OracleError, label, make_oracle

pyscf = pytest.importorskip("pyscf")
openmm = pytest.importorskip("openmm")


def _central_difference(atoms, calc, index, component, h):
    work = atoms.copy()
    work.calc = calc
    work.positions[index, component] += h
    plus = work.get_potential_energy()
    work.positions[index, component] -= 2 * h
    minus = work.get_potential_energy()
    return -(plus - minus) / (2 * h)


@pytest.fixture(scope="module")
def water():
    atoms = molecule("H2O")
    atoms.rattle(0.05, seed=1)
    return atoms


def test_pyscf_matches_pyscf_called_directly_with_d3bj(water):
    from pyscf import dft, gto

    calc = make_oracle("pyscf")  # BP86-D3(BJ)/def2-SVP
    result = label(water, calc)
    mol = gto.M(
        atom=[(s, tuple(x)) for s, x in zip(water.get_chemical_symbols(), water.positions, strict=True)],
        unit="Angstrom",
        basis="def2-svp",
        verbose=0,
    )
    mf = dft.RKS(mol)
    mf.xc = "bp86"
    mf.disp = "d3bj"
    mf.conv_tol = 1e-10
    energy = mf.kernel()
    gradient = mf.nuc_grad_method().kernel()
    dispersion = float(mf.scf_summary["dispersion"])
    assert dispersion < -1e-5  # D3(BJ) is in the reference ...
    assert result["energy"] == pytest.approx(energy * units.Hartree, abs=1e-6)  # ... and in ours
    np.testing.assert_allclose(result["forces"], -gradient * units.Hartree / units.Bohr, atol=1e-5)
    no_dispersion = make_oracle("pyscf", dispersion=None)
    e_plain = label(water, no_dispersion)["energy"]
    assert e_plain - result["energy"] == pytest.approx(-dispersion * units.Hartree, abs=1e-5)


def test_pyscf_forces_match_finite_differences_and_reused_density_changes_nothing(water):
    calc = make_oracle("pyscf")
    forces = label(water, calc)["forces"]
    for index, component in ((0, 2), (1, 0)):
        numeric = _central_difference(water, calc, index, component, 1e-3)
        # PySCF's analytic gradient leaves out the grid response (~3e-4 eV/A at grid level 3).
        assert forces[index, component] == pytest.approx(numeric, abs=1e-3)
    # The calculator has just run a displaced geometry: its density is the start of the next SCF.
    again = label(water, calc)
    fresh = label(water, make_oracle("pyscf"))
    assert again["energy"] == pytest.approx(fresh["energy"], abs=1e-6)
    np.testing.assert_allclose(again["forces"], fresh["forces"], atol=1e-5)


def test_pyscf_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown parameter.*functional"):
        make_oracle("pyscf", functional="pbe")
    with pytest.raises(ValueError, match="dispersion 'd5'"):
        make_oracle("pyscf", dispersion="d5")
    atoms = molecule("H2O")
    with pytest.raises(OracleError, match="spin"):  # 10 electrons cannot have one unpaired
        label(atoms, make_oracle("pyscf", spin=1))
    atoms.pbc = True
    atoms.cell = [8, 8, 8]
    with pytest.raises(OracleError, match="periodic"):
        label(atoms, make_oracle("pyscf"))


def test_openmm_ff19sb_matches_openmm_state_in_ev_and_angstrom():
    from openmm import Context, Platform, VerletIntegrator, app, unit

    from mlipbias.potentials.openmm_ff import alanine_dipeptide, alanine_dipeptide_pdb
    from mlipbias.structures import default_structure

    atoms = default_structure("alanine-dipeptide")
    assert atoms.get_chemical_formula() == alanine_dipeptide().get_chemical_formula() == "C6H12N2O2"
    atoms.rattle(0.05, seed=3)
    result = label(atoms, make_oracle("openmm"))

    pdb = app.PDBFile(str(alanine_dipeptide_pdb()))
    system = app.ForceField("amber19-all.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None
    )
    context = Context(system, VerletIntegrator(0.001), Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions * unit.angstrom)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * units.kJ / units.mol
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom)
    assert result["energy"] == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(result["forces"], forces * units.kJ / units.mol, rtol=1e-10, atol=1e-12)


def test_openmm_forces_match_finite_differences_on_every_component():
    from mlipbias.structures import default_structure

    atoms = default_structure("alanine-dipeptide")
    atoms.rattle(0.05, seed=4)
    calc = make_oracle("openmm")
    forces = label(atoms, calc)["forces"]
    numeric = np.array(
        [[_central_difference(atoms, calc, i, k, 1e-4) for k in range(3)] for i in range(len(atoms))]
    )
    np.testing.assert_allclose(forces, numeric, atol=2e-5)
    assert np.abs(forces).max() > 0.5  # a rattled molecule has real forces to compare


def test_shipped_alanine_dipeptide_is_l_alanine_in_c7eq():
    from mlipbias.structures import default_structure

    atoms = default_structure("alanine-dipeptide")
    names = ["CH3", "H1", "H2", "H3", "C", "O", "N", "H", "CA", "HA", "C", "O", "CB"]
    assert atoms.get_chemical_symbols()[:13] == [n[0] for n in names]
    phi = atoms.get_dihedral(4, 6, 8, 10)  # C(ACE) N CA C
    psi = atoms.get_dihedral(6, 8, 10, 16)  # N CA C N(NME)
    assert (phi - 360 if phi > 180 else phi) == pytest.approx(-84, abs=10)
    assert psi == pytest.approx(70, abs=10)
    n, ca, c, cb = atoms.positions[[6, 8, 10, 12]]
    assert np.dot(np.cross(n - ca, c - ca), cb - ca) > 0  # L, as in OpenMM's test.pdb ALA
    forces = label(atoms, make_oracle("openmm"))["forces"]
    assert np.abs(forces).max() < 0.1  # a minimum up to the PDB's 1e-3 A rounding


def test_openmm_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown parameter.*cutoff"):
        make_oracle("openmm", cutoff=9.0)
    with pytest.raises(FileNotFoundError, match="missing.pdb"):
        make_oracle("openmm", pdb=tmp_path / "missing.pdb")
    with pytest.raises(OracleError, match="do not match the PDB topology"):
        label(molecule("H2O"), make_oracle("openmm"))
    pdb = tmp_path / "unknown.pdb"
    pdb.write_text("ATOM      1  XX  UNK A   1       0.000   0.000   0.000  1.00  0.00           C\nEND\n")
    with pytest.raises(ValueError, match="unknown.pdb.*amber19-all.xml"):
        make_oracle("openmm", pdb=pdb)
