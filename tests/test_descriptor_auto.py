"""The ``auto`` symmetry functions: shells and cutoffs from the data's neighbour distances.

Distances are checked with ASE's own neighbour list, independent of ``mlipbias.neighbors``.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mlipbias.descriptors import SymmetryFunctions, symmetry_functions_from_data
from mlipbias.models.config import DescriptorSettings, make_descriptor
from mlipbias.structures import default_structure


def rattled(atoms: Atoms, n: int, sigma: float, seed: int = 0, calc=None) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = atoms.copy()
        a.positions += rng.normal(0.0, sigma, a.positions.shape)
        if calc is not None:
            a.calc = calc
            a.calc = SinglePointCalculator(a, energy=a.get_potential_energy(), forces=a.get_forces())
        out.append(a)
    return out


def observed(structures, radius):
    """(element pair -> distances) and the mean number of neighbours within ``radius``, by ASE."""
    pairs, n_pairs, n_atoms = {}, 0, 0
    for atoms in structures:
        i, j, d = ase_neighbor_list("ijd", atoms, radius)
        symbols = np.array(atoms.get_chemical_symbols())
        a, b = symbols[i], symbols[j]
        first, second = np.where(a <= b, a, b), np.where(a <= b, b, a)
        for key in set(zip(first, second, strict=True)):
            pairs.setdefault(key, []).append(d[(first == key[0]) & (second == key[1])])
        n_pairs += len(d)
        n_atoms += len(atoms)
    return {k: np.concatenate(v) for k, v in pairs.items()}, n_pairs / n_atoms


def assert_shells_span_the_distances(sf: SymmetryFunctions, structures):
    """Every observed distance below the cutoff lies within one spacing of a shell of its
    neighbour element, and the first shell lies below the shortest distance."""
    table = sf.table
    for b, el in enumerate(sf.elements):
        rows = table[(table[:, 0] == 2) & (table[:, 1] == b)]
        rs, rc = np.sort(rows[:, 4]), rows[0, 7]
        spacing = 1.0 / np.sqrt(2.0 * rows[0, 3])  # eta = 1 / (2 dr^2)
        np.testing.assert_allclose(np.diff(rs), spacing, rtol=1e-9)
        assert rc - rs[-1] == pytest.approx(spacing)
        distances = np.concatenate([d for pair, d in observed(structures, rc)[0].items() if el in pair])
        assert rs[0] <= distances.min() <= rs[0] + spacing
        gaps = np.abs(distances[:, None] - rs[None, :]).min(axis=1)
        assert gaps.max() <= spacing + 1e-12


def test_bulk_copper_gets_a_bulk_cutoff_and_shells_from_its_distances():
    data = rattled(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3), 4, 0.08, calc=EMT())
    sf, choice = symmetry_functions_from_data(data)
    assert sf.elements == ("Cu",)
    # Not the molecular 5 / 4 A: the radius of 60 neighbours at the density of fcc Cu (~5.5 A).
    ideal = (60 / (4 / 3 * np.pi * 4 / 3.61**3)) ** (1 / 3)
    assert ideal == pytest.approx(5.53, abs=0.01)
    assert choice.radial_cutoff == pytest.approx(ideal, abs=0.2)
    assert observed(data, choice.radial_cutoff)[1] >= 60
    assert observed(data, choice.angular_cutoff)[1] >= 30
    assert 3.61 < choice.angular_cutoff < choice.radial_cutoff  # first and second shells at least
    assert sf.cutoff == choice.radial_cutoff
    # The first shell starts below the shortest Cu-Cu distance, not at 0.8 A.
    shortest = observed(data, 3.0)[0][("Cu", "Cu")].min()
    assert choice.shortest["Cu-Cu"] == pytest.approx(shortest, abs=1e-9)
    assert 0.8 * shortest < sf.table[0, 4] <= shortest
    assert_shells_span_the_distances(sf, data)
    assert f"radial {choice.radial_cutoff:g} A, angular {choice.angular_cutoff:g} A" in choice.summary()


def test_a_molecule_keeps_the_molecular_cutoffs_with_shells_from_its_bonds():
    data = rattled(molecule("CH3CH2OH"), 8, 0.03)
    sf, choice = symmetry_functions_from_data(data)
    assert sf.elements == ("H", "C", "O")
    assert (choice.radial_cutoff, choice.angular_cutoff) == (5.0, 4.0)
    assert choice.density is None and "molecular" in choice.reason
    pairs, _ = observed(data, 5.0)
    assert choice.shortest["H-C"] == pytest.approx(pairs[("C", "H")].min())
    assert_shells_span_the_distances(sf, data)
    # Six element pairs: G4 with zeta 1, 4 and lambda +-1 on each, no G5.
    assert np.sum(sf.table[:, 0] == 4) == 6 * 4 and np.sum(sf.table[:, 0] == 5) == 0


def test_amorphous_silica_gets_about_the_cutoff_of_the_sio2_preset():
    data = rattled(default_structure("sio2-amorphous-96"), 2, 0.03)
    sf, choice = symmetry_functions_from_data(data)
    assert sf.elements == ("O", "Si")
    assert 5.7 <= choice.radial_cutoff <= 6.4
    assert observed(data, choice.radial_cutoff)[1] >= 60
    assert choice.shortest["O-Si"] < 1.7 < choice.shortest["O-O"] < choice.shortest["Si-Si"]
    assert_shells_span_the_distances(sf, data)
    # Every function of an element pair present: G2 per element, G4 and G5 per unordered pair.
    assert len(sf.table) == 2 * 10 + 3 * 16 and len(sf.labels()) == sf.n_sf


def test_make_descriptor_logs_the_auto_choice_and_keeps_the_explicit_presets():
    data = rattled(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2), 3, 0.05)
    messages = []
    sf = make_descriptor(DescriptorSettings(), {"Cu"}, data, messages.append)
    assert len(messages) == 1 and "auto symmetry functions from 3 structures" in messages[0]
    assert "G2 shells on Cu neighbours" in messages[0] and sf.cutoff > 5.0
    for preset in ("SiO2", "Si", "molecules"):
        assert make_descriptor(DescriptorSettings(preset=preset), {"Cu"}, data) == SymmetryFunctions.defaults(
            preset
        )
    assert make_descriptor(DescriptorSettings(), {"Si", "O"}) == SymmetryFunctions.defaults(["O", "Si"])


def test_an_element_without_neighbours_is_a_clear_error():
    data = rattled(bulk("Cu", "fcc", a=3.61, cubic=True), 2, 0.05)
    data.append(Atoms("Au", positions=[[0, 0, 0]]))
    with pytest.raises(ValueError, match="element Au has no neighbour within 8 A"):
        symmetry_functions_from_data(data)
    with pytest.raises(ValueError, match="at least one structure"):
        symmetry_functions_from_data([])


def test_the_statistics_sample_is_bounded(monkeypatch):
    from mlipbias.descriptors import from_data

    monkeypatch.setattr(from_data, "MAX_ATOMS", 250)
    data = rattled(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3), 10, 0.05)  # 108 atoms each
    _, choice = symmetry_functions_from_data(data)
    assert (choice.n_structures, choice.n_atoms) == (3, 324)
