"""Reference structures: composition, density, geometry against published values; validation.

References: Levien, Prewitt & Weidner (1980) for alpha-quartz (Si-O 1.605/1.614 A, Si-O-Si
143.7 deg, density 2.646 g/cm^3 from their cell), the silicon density 2.329 g/cm^3, ASE's
neighbour list for every distance, a fresh EMT calculator for relaxed forces.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.data import atomic_masses, atomic_numbers
from ase.io import write
from ase.neighborlist import neighbor_list

from mlipbias.structures import (
    alpha_quartz,
    amorphous_sio2,
    check_structure,
    default_structure,
    default_structure_names,
    diamond_si,
    load_structure,
    mass_density,
    melt_quench,
    min_distance_of,
    molecule,
    random_packing,
)

AMU_PER_A3_TO_G_PER_CM3 = 1e24 / units.mol


def coordination(atoms, centre, neighbour, cutoff):
    i, j = neighbor_list("ij", atoms, cutoff)
    symbols = np.array(atoms.get_chemical_symbols())
    counts = np.bincount(i[symbols[j] == neighbour], minlength=len(atoms))
    return counts[symbols == centre]


def test_alpha_quartz_matches_the_experimental_structure():
    quartz = alpha_quartz()
    assert quartz.get_chemical_formula() == "O6Si3" and quartz.pbc.all()
    np.testing.assert_allclose(quartz.cell.cellpar(), [4.916, 4.916, 5.4054, 90, 90, 120], atol=1e-10)
    volume = 4.916**2 * 5.4054 * np.sin(np.radians(120))
    mass = 3 * atomic_masses[atomic_numbers["Si"]] + 6 * atomic_masses[atomic_numbers["O"]]
    assert mass_density(quartz) == pytest.approx(mass / volume * AMU_PER_A3_TO_G_PER_CM3, rel=1e-12)
    assert mass_density(quartz) == pytest.approx(2.646, abs=1e-3)
    i, j, d, vectors = neighbor_list("ijdD", quartz, 1.8)
    assert np.allclose(np.sort(np.unique(d.round(3))), [1.605, 1.614], atol=1e-3)
    assert (coordination(quartz, "Si", "O", 1.8) == 4).all()
    assert (coordination(quartz, "O", "Si", 1.8) == 2).all()
    for o in np.flatnonzero(quartz.numbers == 8):
        a, b = vectors[i == o]
        angle = np.degrees(np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
        assert angle == pytest.approx(143.7, abs=0.1)
    big = alpha_quartz((2, 2, 1))
    assert len(big) == 36 and mass_density(big) == pytest.approx(mass_density(quartz), rel=1e-12)
    with pytest.raises(ValueError, match="three positive integers"):
        alpha_quartz((2, 0, 1))


def test_diamond_silicon_64_atoms():
    si = diamond_si()
    assert len(si) == 64 and set(si.get_chemical_symbols()) == {"Si"}
    assert mass_density(si) == pytest.approx(2.329, abs=1e-3)
    i, _, d = neighbor_list("ijd", si, 2.5)
    assert np.allclose(d, 5.431020511 * np.sqrt(3) / 4) and (np.bincount(i) == 4).all()
    assert len(diamond_si(3)) == 216


def test_molecules_from_ase():
    nh3 = molecule("NH3")
    assert nh3.get_chemical_formula() == "H3N" and not nh3.pbc.any()
    boxed = molecule("H2O", vacuum=5.0)
    assert not boxed.pbc.any() and boxed.cell.lengths().min() >= 10.0 - 1e-9
    with pytest.raises(ValueError, match="unknown molecule 'H2o'.*H2O"):
        molecule("H2o")


def test_random_packing_respects_the_minimum_distance():
    symbols = ["Si"] * 32 + ["O"] * 64
    packed = random_packing(symbols, np.eye(3) * 11.3, min_distance=1.7, seed=3)
    _, _, d = neighbor_list("ijd", packed, 1.7)
    assert d.size == 0 and min_distance_of(packed) >= 1.7
    assert (packed.get_scaled_positions() >= 0).all() and (packed.get_scaled_positions() < 1).all()
    skewed = random_packing("Cu8", [[4, 0, 0], [3.5, 4, 0], [0, 0, 4]], min_distance=1.5, seed=0)
    assert neighbor_list("d", skewed, 1.5).size == 0  # minimum image in a sheared cell
    with pytest.raises(ValueError, match="could not place atom"):
        random_packing("Cu40", np.eye(3) * 5.0, min_distance=2.5, max_attempts=200)


def test_melt_quench_is_deterministic_and_ends_relaxed():
    start = random_packing("Cu8", np.eye(3) * 4.6, min_distance=2.2, seed=1)
    options = dict(
        t_melt=2500.0, t_final=300.0, melt_steps=20, quench_steps=20, ramp_every=10, relax_fmax=0.02, seed=4
    )
    glass = melt_quench(start, EMT(), progress=False, **options)
    again = melt_quench(start, EMT(), progress=False, **options)
    assert np.array_equal(glass.positions, again.positions)
    np.testing.assert_allclose(glass.cell.array, start.cell.array)
    fresh = glass.copy()
    fresh.calc = EMT()
    assert np.linalg.norm(fresh.get_forces(), axis=1).max() <= 0.02
    assert glass.info["relaxed_fmax"] <= 0.02 and glass.info["t_melt"] == 2500.0
    assert not np.allclose(glass.positions, start.positions)


def test_amorphous_sio2_builder_composition_and_density():
    # Plumbing only (composition, cell, density): a Lennard-Jones stand-in for BKS and a very
    # short melt. The physics of the shipped cell is tested on the file itself.
    lj = LennardJones(sigma=2.0, epsilon=0.01, rc=4.0, smooth=True)
    glass = amorphous_sio2(
        n_formula_units=8,
        density=2.2,
        calculator=lj,
        melt_steps=10,
        quench_steps=10,
        relax_steps=5,
        progress=False,
    )
    assert glass.get_chemical_formula() == "O16Si8"
    assert mass_density(glass) == pytest.approx(2.2, rel=1e-12)
    assert np.allclose(glass.cell.angles(), 90) and np.ptp(glass.cell.lengths()) < 1e-12
    assert glass.info["density_g_cm3"] == 2.2
    with pytest.raises(ValueError, match="n_formula_units"):
        amorphous_sio2(n_formula_units=0)


def test_shipped_amorphous_sio2_is_a_tetrahedral_network():
    glass = default_structure("sio2-amorphous-96")
    assert glass.get_chemical_formula() == "O64Si32" and glass.pbc.all()
    assert mass_density(glass) == pytest.approx(2.2, rel=1e-3)
    check_structure(glass, min_distance=1.3)
    si_o = coordination(glass, "Si", "O", 2.0)
    o_si = coordination(glass, "O", "Si", 2.0)
    assert (si_o == 4).mean() >= 0.9 and (o_si == 2).mean() >= 0.9
    assert "generator" in glass.info and "calculator" in glass.info


def test_structure_specifications(tmp_path):
    assert {"sio2-amorphous-96", "alpha-quartz", "si-diamond-64"} <= set(default_structure_names())
    assert len(load_structure("si-diamond-64")) == 64
    assert len(load_structure("alpha-quartz", repeat=(2, 2, 2))) == 72
    assert load_structure("molecule:CH4").get_chemical_formula() == "CH4"
    path = tmp_path / "cell.extxyz"
    write(path, diamond_si(1))
    assert len(load_structure(str(path))) == 8
    with pytest.raises(ValueError, match="neither a file nor a known name"):
        load_structure("quartz")
    with pytest.raises(ValueError, match="unknown default structure"):
        default_structure("quartz")
    bad = tmp_path / "bad.xyz"
    bad.write_text("3\nnot xyz\nfoo\n")
    with pytest.raises(ValueError, match="cannot read structure file"):
        load_structure(str(bad))


def test_check_structure_names_the_problem():
    with pytest.raises(ValueError, match="has no atoms"):
        check_structure(Atoms())
    atoms = diamond_si(1)
    atoms.positions[5] = [np.inf, 0, 0]
    with pytest.raises(ValueError, match=r"snapshot 9: non-finite \(NaN or inf\) position of atom 5 \(Si\)"):
        check_structure(atoms, name="snapshot 9")
    cell = diamond_si(1)
    cell.cell[0, 0] = np.nan
    with pytest.raises(ValueError, match="cell has non-finite"):
        check_structure(cell)
    flat = Atoms("Si2", positions=[[0, 0, 0], [1.5, 0, 0]], cell=[3, 3, 0], pbc=True)
    with pytest.raises(ValueError, match="degenerate"):
        check_structure(flat)
    si = diamond_si(1)
    check_structure(si, min_distance=2.3)
    with pytest.raises(ValueError, match="are 2.3517 A apart, closer than min_distance = 2.4 A"):
        check_structure(si, min_distance=2.4)
