"""Neighbor lists against ASE, vesin and matscipy on randomized cells, and CUDA against C++.

Pairs are compared as sets of (i, j, S) with d and D matched pair by pair; every case is
drawn from a seeded generator so failures reproduce.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mlipbias import _core, gpu
from mlipbias.neighbors import neighbor_list, neighbor_list_cuda

PBC_CHOICES = [
    (True, True, True),
    (False, False, False),
    (True, True, False),
    (True, False, True),
    (False, True, True),
    (True, False, False),
    (False, True, False),
    (False, False, True),
]


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def random_cell(rng, lengths, tilt):
    """Lattice vectors as rows: `lengths` on the diagonal, off-diagonal up to `tilt` x length,
    in a random orientation (so no cell is in LAMMPS's upper-triangular form)."""
    cell = np.diag(lengths) + np.tril(rng.uniform(-tilt, tilt, (3, 3)), -1) * np.asarray(lengths)[None, :]
    return cell @ random_rotation(rng)


def by_pair(i, j, S, d, D):
    """{(i, j, S): (d, D)}; asserts there is no duplicate pair."""
    table = {
        (int(a), int(b), *map(int, s)): (dist, vec) for a, b, s, dist, vec in zip(i, j, S, d, D, strict=True)
    }
    assert len(table) == len(i), "duplicate pairs"
    return table


def assert_same_pairs(ours, reference):
    a, b = by_pair(*ours), by_pair(*reference)
    missing, extra = set(b) - set(a), set(a) - set(b)
    assert not missing and not extra, (
        f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(extra)} extra"
    )
    keys = sorted(a)
    np.testing.assert_allclose([a[k][0] for k in keys], [b[k][0] for k in keys], rtol=0, atol=1e-10)
    np.testing.assert_allclose([a[k][1] for k in keys], [b[k][1] for k in keys], rtol=0, atol=1e-10)


def ours(atoms, cutoff, **kwargs):
    return neighbor_list("ijSdD", atoms, cutoff, **kwargs)


def ase_reference(atoms, cutoff, self_interaction=False):
    return ase_neighbor_list("ijSdD", atoms, cutoff, self_interaction=self_interaction)


def vesin_reference(atoms, cutoff):
    vesin = pytest.importorskip("vesin")
    nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
    i, j, S, d, D = nl.compute(
        points=atoms.positions, box=atoms.cell[:], periodic=atoms.pbc, quantities="ijSdD"
    )
    return i.astype(np.int64), j.astype(np.int64), S, d, D


def matscipy_reference(atoms, cutoff):
    matscipy_neighbours = pytest.importorskip("matscipy.neighbours")
    return matscipy_neighbours.neighbour_list("ijSdD", atoms, cutoff)


def random_case(rng, kind):
    """(atoms, cutoff) of one kind of randomized system."""
    cutoff = rng.uniform(2.5, 6.0)
    if kind == "orthorhombic":
        cell = np.diag(rng.uniform(0.7, 4.0, 3) * cutoff)
        pbc = (True, True, True)
    elif kind == "triclinic":
        cell = random_cell(rng, rng.uniform(1.0, 4.0, 3) * cutoff, tilt=0.9)
        pbc = (True, True, True)
    elif kind == "mixed_pbc":
        cell = random_cell(rng, rng.uniform(1.0, 3.0, 3) * cutoff, tilt=0.6)
        pbc = PBC_CHOICES[rng.integers(2, len(PBC_CHOICES))]
    elif kind == "small_cell":
        cell = random_cell(rng, rng.uniform(0.25, 0.9, 3) * cutoff, tilt=0.5)
        pbc = (True, True, True)
    else:
        raise ValueError(kind)
    volume = abs(np.linalg.det(cell))
    n_atoms = int(np.clip(rng.poisson(0.05 * volume), rng.integers(1, 5), 150))
    fractional = rng.uniform(0, 1, (n_atoms, 3))
    # Some atoms outside the cell along periodic directions (unwrapped positions).
    fractional += rng.integers(-2, 3, (n_atoms, 3)) * (rng.uniform(size=(n_atoms, 1)) < 0.3) * np.asarray(pbc)
    return Atoms("X" * n_atoms, positions=fractional @ cell, cell=cell, pbc=pbc), cutoff


@pytest.mark.parametrize("kind", ["orthorhombic", "triclinic", "mixed_pbc", "small_cell"])
def test_same_pairs_as_ase_vesin_matscipy(kind):
    rng = np.random.default_rng(["orthorhombic", "triclinic", "mixed_pbc", "small_cell"].index(kind))
    for _ in range(8):
        atoms, cutoff = random_case(rng, kind)
        result = ours(atoms, cutoff)
        assert result[0].dtype == np.int64 and result[1].dtype == np.int64 and result[2].dtype == np.int64
        assert np.all(np.diff(result[0]) >= 0), "not sorted by i"
        assert_same_pairs(result, ase_reference(atoms, cutoff))
        assert_same_pairs(result, vesin_reference(atoms, cutoff))
        assert_same_pairs(result, matscipy_reference(atoms, cutoff))
        # D is the pair vector of the positions as given.
        i, j, S, _, D = result
        np.testing.assert_allclose(D, atoms.positions[j] - atoms.positions[i] + S @ atoms.cell[:], atol=1e-10)


def test_many_bins_and_dense_crystal():
    """Grids of several bins per direction (2 bins: the +-1 neighbours are the same bin)."""
    rng = np.random.default_rng(7)
    for lengths in ([12.5, 19.0, 31.0], [18.0, 18.0, 18.0]):
        cell = random_cell(rng, lengths, tilt=0.3)
        atoms = Atoms("X" * 400, scaled_positions=rng.uniform(0, 1, (400, 3)), cell=cell, pbc=True)
        assert_same_pairs(ours(atoms, 6.0), ase_reference(atoms, 6.0))
    si = bulk("Si", "diamond", a=5.43, cubic=True).repeat(3)
    result = ours(si, 2.5)
    assert np.all(np.bincount(result[0]) == 4), "diamond has 4 nearest neighbours at 2.35 A"
    assert_same_pairs(result, ase_reference(si, 2.5))


def test_isolated_molecule_and_zero_cell_vectors():
    rng = np.random.default_rng(11)
    positions = rng.normal(scale=3.0, size=(40, 3)) + 100.0
    molecule = Atoms("X40", positions=positions)  # no cell, no pbc
    result = ours(molecule, 3.5)
    assert_same_pairs(result, ase_reference(molecule, 3.5))
    assert_same_pairs(result, vesin_reference(molecule, 3.5))
    assert np.all(result[2] == 0)
    # Same through the (positions, cell, pbc) triple, with cell None and pbc False.
    i, j = neighbor_list("ij", (positions, None, False), 3.5)
    np.testing.assert_array_equal(i, result[0])
    np.testing.assert_array_equal(j, result[1])
    # A slab: periodic in a and b, zero c vector, atoms spread along z.
    slab = Atoms(
        "X60",
        positions=rng.uniform([0, 0, -10], [9, 8, 10], (60, 3)),
        cell=[[9, 0, 0], [2, 8, 0], [0, 0, 0]],
        pbc=(True, True, False),
    )
    assert_same_pairs(ours(slab, 4.0), ase_reference(slab, 4.0))
    assert_same_pairs(ours(slab, 4.0), vesin_reference(slab, 4.0))
    # A flat sheet (all atoms at z = 0, so no extent along the open direction) and a
    # straight chain of atoms without any cell.
    sheet = Atoms(
        "X50", positions=np.c_[rng.uniform(0, 10, (50, 2)), np.zeros(50)], cell=[10, 10, 0], pbc=(1, 1, 0)
    )
    assert_same_pairs(ours(sheet, 3.0), ase_reference(sheet, 3.0))
    chain = Atoms("X20", positions=np.c_[np.arange(20) * 1.1, np.zeros((20, 2))])
    assert_same_pairs(ours(chain, 2.5), ase_reference(chain, 2.5))
    # A wire: periodic along a only.
    wire = Atoms(
        "X30",
        positions=rng.uniform([0, -4, -4], [7, 4, 4], (30, 3)),
        cell=[7, 0, 0],
        pbc=(True, False, False),
    )
    assert_same_pairs(ours(wire, 5.0), ase_reference(wire, 5.0))


def test_edge_cases_empty_one_atom_and_no_atoms():
    far_apart = Atoms("X2", positions=[[0, 0, 0], [10, 0, 0]])
    for result in (ours(far_apart, 1.0), ase_reference(far_apart, 1.0)):
        assert len(result[0]) == 0
    empty = ours(far_apart, 1.0)
    assert [a.shape for a in empty] == [(0,), (0,), (0, 3), (0,), (0, 3)]
    assert [a.dtype for a in empty] == [np.int64, np.int64, np.int64, np.float64, np.float64]

    # One atom in a cell smaller than the cutoff: its own images, S != 0, in +-pairs.
    one = Atoms(
        "X", positions=[[0.3, 0.2, 0.1]], cell=[[2.0, 0, 0], [0.7, 2.2, 0], [0.3, 0.4, 2.5]], pbc=True
    )
    result = ours(one, 4.0)
    assert len(result[0]) > 20 and np.all(result[0] == 0) and np.all(result[1] == 0)
    assert not np.any(np.all(result[2] == 0, axis=1))
    assert_same_pairs(result, ase_reference(one, 4.0))
    assert_same_pairs(result, vesin_reference(one, 4.0))
    assert len(ours(Atoms("X", positions=[[1, 2, 3]]), 5.0)[0]) == 0

    nothing = neighbor_list("ijdDS", (np.zeros((0, 3)), np.eye(3) * 5, True), 3.0)
    assert [a.shape for a in nothing] == [(0,), (0,), (0,), (0, 3), (0, 3)]


def test_self_interaction_matches_ase():
    rng = np.random.default_rng(3)
    for kind in ("triclinic", "small_cell", "mixed_pbc"):
        atoms, cutoff = random_case(rng, kind)
        assert_same_pairs(ours(atoms, cutoff, self_interaction=True), ase_reference(atoms, cutoff, True))


def test_half_list_is_full_list_with_each_pair_once():
    rng = np.random.default_rng(5)
    for kind in ("orthorhombic", "triclinic", "mixed_pbc", "small_cell", "small_cell"):
        atoms, cutoff = random_case(rng, kind)
        for self_interaction in (False, True):
            full = by_pair(*ours(atoms, cutoff, self_interaction=self_interaction))
            i, j, S, d, D = ours(atoms, cutoff, self_interaction=self_interaction, half=True)
            assert np.all(np.diff(i) >= 0)
            half = by_pair(i, j, S, d, D)
            # Each full-list pair is in the half list exactly once, as itself or reversed.
            reversed_half = {
                (b, a, -s0, -s1, -s2): (dist, -vec) for (a, b, s0, s1, s2), (dist, vec) in half.items()
            }
            both = set(half) | set(reversed_half)
            assert both == set(full)
            assert len(half) == (len(full) + len(set(half) & set(reversed_half))) // 2
            assert np.all(i <= j)
            for key, (_, vec) in half.items():
                np.testing.assert_allclose(vec, full[key][1], atol=1e-12)
        # And vesin's half list holds the same unordered pairs.
        vesin = pytest.importorskip("vesin")
        nl = vesin.NeighborList(cutoff=cutoff, full_list=False)
        vi, vj, vS = nl.compute(
            points=atoms.positions, box=atoms.cell[:], periodic=atoms.pbc, quantities="ijS"
        )
        i, j, S = neighbor_list("ijS", atoms, cutoff, half=True)

        def unordered(a, b, s):
            return {
                min((x, y, *t), (y, x, *(-np.asarray(t))))
                for x, y, t in zip(a.tolist(), b.tolist(), s.tolist(), strict=True)
            }

        assert unordered(i, j, S) == unordered(vi, vj, vS)


def test_quantities_order_and_single_letter():
    atoms, cutoff = random_case(np.random.default_rng(9), "triclinic")
    i, j, d, D, S = neighbor_list("ijdDS", atoms, cutoff)
    d2, i2 = neighbor_list("di", atoms, cutoff)
    np.testing.assert_array_equal(i2, i)
    np.testing.assert_array_equal(d2, d)
    only_j = neighbor_list("j", atoms, cutoff)
    assert isinstance(only_j, np.ndarray)
    np.testing.assert_array_equal(only_j, j)
    np.testing.assert_allclose(d, np.linalg.norm(D, axis=1), rtol=1e-14)


def test_deterministic_order_and_offsets_independent_of_threads():
    rng = np.random.default_rng(13)
    atoms = Atoms(
        "X" * 500,
        scaled_positions=rng.uniform(0, 1, (500, 3)),
        cell=random_cell(rng, [14, 15, 16], 0.4),
        pbc=True,
    )
    args = (atoms.positions, atoms.cell[:], atoms.pbc, 5.0)
    runs = [_core.neighbor_list(*args, n_threads=n) for n in (1, 2, 3, 7)]
    for run in runs[1:]:
        for key in ("i", "j", "S", "d", "D", "offsets"):
            np.testing.assert_array_equal(run[key], runs[0][key])
    i, offsets = runs[0]["i"], runs[0]["offsets"]
    np.testing.assert_array_equal(offsets, np.searchsorted(i, np.arange(len(atoms) + 1)))
    half = [_core.neighbor_list(*args, half=True, n_threads=n) for n in (1, 3)]
    np.testing.assert_array_equal(half[0]["j"], half[1]["j"])


def test_reused_search_matches_one_off_calls():
    """The C++ MD-loop form (buffers kept between calls) gives the one-off results, also
    when the system grows, shrinks and changes cell between calls."""
    rng = np.random.default_rng(19)
    search = _core.ReusedNeighborSearch()
    for kind in ("orthorhombic", "small_cell", "triclinic", "mixed_pbc", "orthorhombic"):
        atoms, cutoff = random_case(rng, kind)
        args = (atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
        for half in (False, True):
            reused, fresh = search.compute(*args, half=half), _core.neighbor_list(*args, half=half)
            for key in ("i", "j", "S", "d", "D", "offsets"):
                np.testing.assert_array_equal(reused[key], fresh[key])


@pytest.mark.parametrize(
    ("system", "cutoff", "message"),
    [
        ((np.array([[0, 0, 0], [np.nan, 1, 1]]), np.eye(3) * 5, True), 2.0, "atom 1 is not finite"),
        ((np.array([[0, 0, np.inf]]), None, False), 2.0, "atom 0 is not finite"),
        ((np.zeros((2, 3)), np.eye(3) * 5, True), 0.0, "cutoff must be a positive"),
        ((np.zeros((2, 3)), np.eye(3) * 5, True), -1.0, "cutoff must be a positive"),
        ((np.zeros((2, 3)), np.eye(3) * 5, True), float("nan"), "cutoff must be a positive"),
        ((np.zeros((2, 3)), np.eye(3) * 5, True), {("Si", "Si"): 2.0}, "cutoff must be one number"),
        ((np.zeros((2, 3)), np.diag([5.0, 5.0, 0.0]), True), 2.0, "cell vector c has zero length"),
        ((np.zeros((2, 3)), [[1, 0, 0], [2, 0, 0], [0, 0, 1]], (True, True, False)), 2.0, "are parallel"),
        ((np.zeros((2, 3)), [[1, 0, 0], [0, 1, 0], [1, 1, 0]], True), 2.0, "singular"),
        ((np.zeros((2, 3)), np.eye(3) * 0.05, True), 10.0, "too large for this cell"),
        ((np.zeros((2, 2)), np.eye(3), True), 2.0, r"positions must have shape \(n_atoms, 3\), got \(2, 2\)"),
        ((np.zeros((2, 3)), np.eye(2), True), 2.0, r"cell must have shape \(3, 3\)"),
        ((np.zeros((2, 3)), np.eye(3), (True, False)), 2.0, r"pbc must have shape \(3,\)"),
        ((np.array([[0, 0, 0], [3e9, 0, 0]]), np.eye(3) * 5, True), 2.0, "cell lengths away"),
    ],
)
def test_bad_input_is_a_clear_error(system, cutoff, message):
    with pytest.raises(ValueError, match=message):
        neighbor_list("ij", system, cutoff)


def test_bad_quantities_and_structure():
    with pytest.raises(ValueError, match="unknown quantities 'x'"):
        neighbor_list("ijx", Atoms("X"), 1.0)
    with pytest.raises(ValueError, match="expected an ase.Atoms"):
        neighbor_list("ij", np.zeros((3, 3)), 1.0)


def test_cuda_without_device_is_a_clear_error():
    if gpu.unavailable_reason() is None:
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        neighbor_list_cuda(np.zeros((2, 3)), np.eye(3) * 5, True, 2.0)
    search = _core.CudaNeighborSearch()
    with pytest.raises(ValueError, match="no CUDA device"):
        search.count(0, 0, np.eye(3), np.ones(3, bool), 2.0, False, False, 0, 0)


@pytest.mark.gpu
@pytest.mark.skipif(gpu.unavailable_reason() is not None, reason=str(gpu.unavailable_reason()))
@pytest.mark.parametrize(("half", "self_interaction"), [(False, False), (True, False), (False, True)])
def test_cuda_equals_cpp(half, self_interaction):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(17)
    cases = [random_case(rng, kind) for kind in ("orthorhombic", "triclinic", "mixed_pbc", "small_cell") * 3]
    big = Atoms(
        "X" * 3000,
        scaled_positions=rng.uniform(0, 1, (3000, 3)),
        cell=random_cell(rng, [35, 36, 37], 0.3),
        pbc=(True, False, True),
    )
    molecule = Atoms("X40", positions=rng.normal(scale=3, size=(40, 3)))
    cases += [(big, 6.0), (molecule, 3.0), (Atoms("X"), 2.0), (Atoms(), 2.0)]
    for atoms, cutoff in cases:
        i, j, S, D = neighbor_list("ijSD", atoms, cutoff, half=half, self_interaction=self_interaction)
        positions = torch.tensor(atoms.positions, device="cuda")
        ci, cj, cS, cD = neighbor_list_cuda(
            positions,
            torch.tensor(atoms.cell[:]),
            atoms.pbc,
            cutoff,
            half=half,
            self_interaction=self_interaction,
        )
        assert ci.is_cuda and ci.dtype == torch.int64 and cS.dtype == torch.int64
        assert cD.dtype == torch.float64 and cD.shape == (len(i), 3)
        # Same pairs in the same order; D to rounding (the GPU may fuse multiply-adds).
        np.testing.assert_array_equal(ci.cpu().numpy(), i)
        np.testing.assert_array_equal(cj.cpu().numpy(), j)
        np.testing.assert_array_equal(cS.cpu().numpy(), S)
        np.testing.assert_allclose(cD.cpu().numpy(), D, rtol=0, atol=1e-12)
    # float32 positions are accepted (computed in float64), errors are the C++ ones.
    atoms, cutoff = cases[1]
    ci, *_ = neighbor_list_cuda(
        torch.tensor(atoms.positions, dtype=torch.float32, device="cuda"), atoms.cell[:], True, cutoff
    )
    assert abs(len(ci) - len(neighbor_list("i", atoms, cutoff))) <= 0.01 * len(ci)
    bad = torch.tensor([[0.0, 0, 0], [np.nan, 0, 0]], device="cuda")
    with pytest.raises(ValueError, match="atom 1 is not finite"):
        neighbor_list_cuda(bad, np.eye(3) * 5, True, 2.0)
    with pytest.raises(ValueError, match="cutoff must be a positive"):
        neighbor_list_cuda(bad[:1], np.eye(3) * 5, True, -1.0)


@pytest.mark.gpu
@pytest.mark.skipif(gpu.unavailable_reason() is not None, reason=str(gpu.unavailable_reason()))
def test_cuda_honours_max_neighbors_as_the_cpp_search():
    """The CUDA search raises the C++ search's error, word for word (the same atom: the first in bin
    order, as a serial CPU search finds it); at the largest count and with 0 it lists every pair."""
    torch = pytest.importorskip("torch")
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    atoms.rattle(0.1, seed=4)  # counts differ from atom to atom, so the atom named matters
    counts = np.bincount(ase_neighbor_list("i", atoms, 6.0), minlength=len(atoms))
    assert counts.min() < counts.max()
    positions = torch.tensor(atoms.positions, device="cuda")
    for half, limit in ((False, int(np.median(counts))), (True, int(np.median(counts)) // 2)):
        with pytest.raises(ValueError, match="more than max_neighbors") as cpu:
            neighbor_list("i", atoms, 6.0, half=half, max_neighbors=limit)
        with pytest.raises(ValueError, match="more than max_neighbors") as cuda:
            neighbor_list_cuda(positions, atoms.cell[:], True, 6.0, half=half, max_neighbors=limit)
        assert str(cuda.value) == str(cpu.value)
    for limit in (int(counts.max()), 0):
        ci, *_ = neighbor_list_cuda(positions, atoms.cell[:], True, 6.0, max_neighbors=limit)
        assert len(ci) == counts.sum()
    with pytest.raises(ValueError, match="max_neighbors must be >= 0"):
        neighbor_list_cuda(positions, atoms.cell[:], True, 6.0, max_neighbors=-1)


def test_a_structure_far_denser_than_matter_fails_at_once_with_the_numbers():
    """100,000 atoms in a 5 A cube would be ~4e10 pairs (an hour of counting); the search stops
    at the first atom over max_neighbors and says how many it has."""
    positions = np.random.default_rng(3).uniform(0.0, 5.0, (100_000, 3))
    message = r"atom \d+ has \d{5,} neighbours within the cutoff of 5 A \(100000 atoms\), more than max_"
    with pytest.raises(ValueError, match=message):
        neighbor_list("ijD", (positions, 5.0 * np.eye(3), True), 5.0)
    with pytest.raises(ValueError, match=message):
        neighbor_list("ij", Atoms("Si100000", positions=positions, cell=5.0 * np.eye(3), pbc=True), 5.0)


def test_max_neighbors_is_settable_per_call_and_globally(monkeypatch):
    """The limit counts the listed pairs of one atom; 0 lifts it; the module default applies to
    every caller (descriptors, calculators) and can be changed there."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    n = np.bincount(ase_neighbor_list("i", atoms, 6.0), minlength=len(atoms))
    assert n.min() == n.max() == 78  # 12 + 6 + 24 + 12 + 24 fcc neighbours within 6 A
    i = neighbor_list("i", atoms, 6.0, max_neighbors=78)
    assert len(i) == n.sum()
    with pytest.raises(ValueError, match=r"has 78 neighbours .* more than max_neighbors = 77"):
        neighbor_list("i", atoms, 6.0, max_neighbors=77)
    with pytest.raises(ValueError, match=r"has \d+ half-list neighbours .* more than max_neighbors = 38"):
        neighbor_list("i", atoms, 6.0, half=True, max_neighbors=38)
    assert len(neighbor_list("i", atoms, 6.0, max_neighbors=0)) == n.sum()
    import mlipbias.neighbors

    monkeypatch.setattr(mlipbias.neighbors, "MAX_NEIGHBORS", 50)
    with pytest.raises(ValueError, match="more than max_neighbors = 50"):
        neighbor_list("i", atoms, 6.0)
    with pytest.raises(ValueError, match="max_neighbors must be >= 0"):
        neighbor_list("i", atoms, 6.0, max_neighbors=-1)


def test_the_cpp_core_includes_no_cuda_header():
    """cpp/ is the framework-free core: cuda/ builds on it, never the reverse (device dispatch
    lives in cuda/ and the bindings)."""
    from pathlib import Path

    core = Path(__file__).resolve().parents[1] / "cpp"
    offending = [
        f"{path.name}: {line.strip()}"
        for path in sorted(core.glob("*.[ch]pp"))
        for line in path.read_text().splitlines()
        if line.startswith("#include") and ("cuda" in line or "device.hpp" in line)
    ]
    assert offending == []
