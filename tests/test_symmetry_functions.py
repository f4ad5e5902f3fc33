"""Symmetry functions: C++ core against the torch reference, finite differences and dscribe."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.neighborlist import neighbor_list
from ase.spacegroup import crystal
from dscribe.descriptors import ACSF

from mlipbias import gpu
from mlipbias.descriptors import (
    NeighbourData,
    SymmetryFunctions,
    atom_forces,
    descriptor_tangents,
    pair_gradients,
    virial,
)
from mlipbias.descriptors.torch_reference import symmetry_functions as reference

TOL = 1e-10  # C++ against the torch reference, absolute


def quartz(repeat=(1, 1, 1), rattle=0.05, seed=0):
    """Alpha-quartz (P3_221, 9 atoms per cell), rattled; its cell is smaller than the cutoff."""
    atoms = crystal(
        ["Si", "O"],
        basis=[(0.4697, 0.0, 1 / 6), (0.4135, 0.2669, 0.1191 + 1 / 6)],
        spacegroup=154,
        cellpar=[4.916, 4.916, 5.405, 90, 90, 120],
    ).repeat(repeat)
    atoms.rattle(rattle, seed=seed)
    return atoms


def acetamide(seed=0):
    atoms = molecule("CH3CONH2")  # H, C, N, O
    atoms.rattle(0.05, seed=seed)
    return atoms


CASES = {
    "quartz": (quartz, "SiO2", None),
    "quartz-angular-3.5": (quartz, "SiO2", 3.5),  # G4/G5 inside a shorter cutoff than the G2
    "acetamide": (acetamide, "molecules", None),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    make, defaults, angular_cutoff = CASES[request.param]
    atoms = make()
    sf = SymmetryFunctions.defaults(defaults)
    if angular_cutoff is not None:
        sf = sf.with_angular_cutoff(angular_cutoff)
    return sf, atoms, sf.compute(atoms, derivatives=True)


def reference_G(sf, nb, D):
    return reference(sf.table, nb.species, nb.i, nb.j, D, nb.n_atoms)


def energy(sf, atoms, w):
    """A toy model E = sum_i w_i . G_i, the same weights for every structure."""
    return float(np.sum(w * sf.compute(atoms).G))


# ------------------------------------------------------------------ C++ against the torch reference


def test_values_and_derivatives_match_reference(case):
    sf, atoms, desc = case
    nb = desc.neighbours
    D = torch.tensor(nb.D, requires_grad=True)
    G = reference_G(sf, nb, D)
    np.testing.assert_allclose(desc.G, G.detach().numpy(), rtol=0, atol=TOL)
    assert np.abs(desc.G).max() > 1.0  # not a trivially zero comparison
    # A centre's functions depend on its own pairs only, so the gradient of a column sum
    # sum_a G_af with respect to D_p is dG_if/dD_p with i = i(p). One backward pass per
    # column: all columns of the molecule, one per (kind, element pair) channel of quartz.
    channels = np.unique(sf.table[:, :3], axis=0, return_index=True)[1]
    columns = np.arange(sf.n_sf) if not atoms.pbc.any() else np.sort(channels)
    J = torch.autograd.functional.jacobian(
        lambda d: reference_G(sf, nb, d)[:, columns].sum(0), D.detach(), vectorize=True
    )
    np.testing.assert_allclose(desc.dG[:, columns], J.numpy().transpose(1, 0, 2), rtol=0, atol=TOL)
    # values alone run the SIMD kernels, the derivatives the scalar traversal: equal to rounding
    np.testing.assert_allclose(sf.compute(atoms).G, desc.G, rtol=1e-12, atol=1e-14)


def test_vjp_and_jvp_match_reference_with_several_rhs(case):
    sf, _, desc = case
    nb = desc.neighbours
    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, nb.n_atoms, sf.n_sf))
    t = rng.normal(size=(3, nb.n_pairs, 3))
    D = torch.tensor(nb.D, requires_grad=True)
    G = reference_G(sf, nb, D)
    vjp = sf.vjp(nb, w)
    assert vjp.shape == (3, nb.n_pairs, 3)
    for r in range(3):
        (expected,) = torch.autograd.grad(G, D, torch.tensor(w[r]), retain_graph=True)
        np.testing.assert_allclose(vjp[r], expected.numpy(), rtol=0, atol=TOL)
        np.testing.assert_array_equal(sf.vjp(nb, w[r]), vjp[r])  # one rhs alone gives the same bits
    np.testing.assert_array_equal(sf.vjp(nb, w[:2])[1], vjp[1])  # the unrolled 2-rhs path
    w6 = rng.normal(size=(6, nb.n_atoms, sf.n_sf))  # rows in chunks of 4 and 2
    np.testing.assert_array_equal(sf.vjp(nb, w6)[5], sf.vjp(nb, w6[5]))
    np.testing.assert_array_equal(sf.vjp(nb, w6)[3], sf.vjp(nb, w6[:4])[3])
    jvp = sf.jvp(nb, t)
    assert jvp.shape == (3, nb.n_atoms, sf.n_sf)
    for r in range(3):
        tangent = torch.tensor(t[r])
        _, expected = torch.autograd.functional.jvp(lambda d: reference_G(sf, nb, d), D.detach(), tangent)
        np.testing.assert_allclose(jvp[r], expected.numpy(), rtol=0, atol=TOL)
    np.testing.assert_array_equal(sf.jvp(nb, t[:2])[1], jvp[1])  # the unrolled 2-rhs path
    np.testing.assert_array_equal(sf.jvp(nb, t[0]), jvp[0])
    # Both contract the explicit derivatives.
    np.testing.assert_allclose(vjp[0], np.einsum("pfx,pf->px", desc.dG, w[0][nb.i]), rtol=0, atol=TOL)
    dG_t = np.zeros((nb.n_atoms, sf.n_sf))
    np.add.at(dG_t, nb.i, np.einsum("pfx,px->pf", desc.dG, t[0]))
    np.testing.assert_allclose(jvp[0], dG_t, rtol=0, atol=TOL)


# ------------------------------------------------------------------ finite differences


def _odd_sio2_table():
    """The SiO2 set with a non-integer zeta (the std::pow lanes), a second angular cutoff and G2
    functions at a second cutoff (the radial runs read the cutoff function of each function)."""
    table = SymmetryFunctions.defaults("SiO2").table.copy()
    angular = np.flatnonzero(table[:, 0] > 2)
    table[angular[1], 5] = 1.5  # zeta
    table[angular[2::3], 7] = 4.5  # rc: G4 and G5 with their own cutoff functions at r_jk
    table[np.flatnonzero(table[:, 0] == 2)[1::3], 7] = 4.0  # G2 with their own cutoff
    return SymmetryFunctions(["O", "Si"], table)


@pytest.mark.parametrize("width", [2, 4, 8])
@pytest.mark.parametrize("which", ["sio2-default", "sio2-odd", "acetamide"])
def test_every_simd_width_matches_the_scalar_traversal(width, which):
    """Values, vjp and jvp of the triplet kernels at each vector width (capped by the CPU) against
    the scalar traversal's full derivatives, and the adjoint identity <vjp(w), t> = <w, jvp(t)>."""
    from mlipbias import _core
    from mlipbias.structures import default_structure

    if which == "acetamide":
        sf, atoms = SymmetryFunctions.defaults("molecules"), acetamide()
    else:
        sf = SymmetryFunctions.defaults("SiO2") if which == "sio2-default" else _odd_sio2_table()
        atoms = default_structure("sio2-amorphous-96")
    nb = sf.neighbours(atoms)
    full = sf.compute_neighbours(nb, derivatives=True)
    rng = np.random.default_rng(3)
    w = rng.normal(size=(5, nb.n_atoms, sf.n_sf))  # rows in chunks of 4 and 1
    t = rng.normal(size=(5, nb.n_pairs, 3))
    vjp_ref = np.einsum("pfx,rpf->rpx", full.dG, w[:, nb.i])
    jvp_ref = np.zeros((5, nb.n_atoms, sf.n_sf))
    for r in range(5):
        np.add.at(jvp_ref[r], nb.i, np.einsum("pfx,px->pf", full.dG, t[r]))
    best = _core.sf_simd_width(0)  # the CPU's widest kernels
    try:
        assert _core.sf_simd_width(width) == min(width, best) == _core.sf_simd_width()
        G, vjp, jvp = sf.compute_neighbours(nb).G, sf.vjp(nb, w), sf.jvp(nb, t)
    finally:
        _core.sf_simd_width(0)
    assert np.abs(full.G).max() > 1.0 and np.abs(vjp_ref).max() > 1.0 and np.abs(jvp_ref).max() > 1.0
    np.testing.assert_allclose(G, full.G, rtol=1e-12, atol=1e-12 * np.abs(full.G).max())
    np.testing.assert_allclose(vjp, vjp_ref, rtol=1e-12, atol=1e-12 * np.abs(vjp_ref).max())
    np.testing.assert_allclose(jvp, jvp_ref, rtol=1e-12, atol=1e-12 * np.abs(jvp_ref).max())
    for r in range(5):
        lhs, rhs = np.sum(vjp[r] * t[r]), np.sum(w[r] * jvp[r])
        assert abs(lhs - rhs) <= 1e-12 * np.sqrt(np.sum(vjp[r] ** 2) * np.sum(t[r] ** 2))


def test_simd_width_is_checked():
    from mlipbias import _core

    with pytest.raises(ValueError, match="SIMD width must be 0"):
        _core.sf_simd_width(3)


def test_forces_and_virial_match_finite_differences(case):
    sf, atoms, desc = case
    nb = desc.neighbours
    w = np.random.default_rng(2).normal(size=(nb.n_atoms, sf.n_sf))
    g = torch.tensor(sf.vjp(nb, w))
    forces = atom_forces(g, nb.i, nb.j, nb.n_atoms).numpy()
    h = 1e-5
    fd = np.zeros_like(forces)
    checked = [0, 1, 2, 4]  # every element of both structures; a few atoms keep the test fast
    for a in checked:
        for x in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, x] += h
            minus.positions[a, x] -= h
            fd[a, x] = -(energy(sf, plus, w) - energy(sf, minus, w)) / (2 * h)
    scale = np.abs(forces).max()
    assert scale > 0.1
    np.testing.assert_allclose(forces[checked], fd[checked], rtol=0, atol=1e-6 * scale)
    if not atoms.pbc.any():
        np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-10 * scale)
        return
    # W = -dE/d(strain) with positions and cell deformed as x (I + eps) (ASE's row vectors).
    W = virial(g, nb.D).numpy()
    fd_W = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            E = []
            for sign in (1, -1):
                strained = atoms.copy()
                eps = np.eye(3)
                eps[a, b] += sign * h
                strained.set_cell(atoms.cell[:] @ eps, scale_atoms=True)
                E.append(energy(sf, strained, w))
            fd_W[a, b] = -(E[0] - E[1]) / (2 * h)
    np.testing.assert_allclose(W, fd_W, rtol=0, atol=1e-6 * np.abs(W).max())


# ------------------------------------------------------------------ dscribe


DSCRIBE_G2 = [(0.5, 0.0), (1.2, 1.5), (0.8, 2.8), (2.0, 4.0)]
DSCRIBE_G4 = [(0.005, 1, 1), (0.005, 2, -1), (0.05, 4, 1), (0.02, 16, -1)]
DSCRIBE_G5 = [(0.01, 1, -1), (0.03, 2, 1), (0.002, 4, -1)]


@pytest.mark.parametrize(
    ("make", "elements", "r_cut"),
    [(quartz, ["Si", "O"], 5.5), (quartz, ["O", "Si"], 4.0), (acetamide, ["O", "H", "C", "N"], 4.5)],
)
def test_matches_dscribe_acsf(make, elements, r_cut):
    atoms = make()
    periodic = bool(atoms.pbc.any())
    acsf = ACSF(
        r_cut=r_cut,
        g2_params=DSCRIBE_G2,
        g4_params=DSCRIBE_G4,
        g5_params=DSCRIBE_G5,
        species=elements,
        periodic=periodic,
    )
    expected = acsf.create(atoms)
    sf = SymmetryFunctions.from_dscribe(elements, r_cut, DSCRIBE_G2, DSCRIBE_G4, DSCRIBE_G5)
    G = sf.compute(atoms).G
    assert G.shape == expected.shape
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(G, expected, rtol=1e-12, atol=1e-10)


# ------------------------------------------------------------------ invariances and neighbour input


def test_rotation_translation_and_permutation_invariance(case):
    sf, atoms, desc = case
    rotated = atoms.copy()
    rotated.rotate(37.0, (1.0, -2.0, 0.5), rotate_cell=True)
    rotated.translate((0.3, -1.7, 2.2))
    if rotated.pbc.any():
        rotated.wrap()
    np.testing.assert_allclose(sf.compute(rotated).G, desc.G, rtol=0, atol=1e-10)
    perm = np.random.default_rng(3).permutation(len(atoms))
    np.testing.assert_allclose(sf.compute(atoms[perm]).G, desc.G[perm], rtol=0, atol=1e-10)


def test_far_pairs_are_ignored_and_pair_order_is_free():
    sf = SymmetryFunctions.defaults("SiO2")
    atoms = quartz()
    G = sf.compute(atoms).G
    i, j, D = neighbor_list("ijD", atoms, sf.cutoff + 2.5)
    shuffled = np.random.default_rng(4).permutation(len(i))
    nb = NeighbourData.from_pairs(sf.species(atoms), i[shuffled], j[shuffled], D[shuffled])
    np.testing.assert_allclose(sf.compute_neighbours(nb).G, G, rtol=0, atol=1e-11)


def test_batch_equals_single_structures():
    sf = SymmetryFunctions.defaults("SiO2")
    structures = [quartz(seed=s) for s in range(3)]
    structures[1] = quartz((1, 1, 2), seed=1)
    batch = sf.compute_batch(structures)
    nb = batch.neighbours
    assert nb.n_structures == 3
    singles = [sf.compute(a) for a in structures]
    np.testing.assert_array_equal(batch.G, np.concatenate([d.G for d in singles]))
    w = np.random.default_rng(5).normal(size=batch.G.shape)
    g = torch.tensor(sf.vjp(nb, w))
    W = virial(g, nb.D, nb.pair_structure, nb.n_structures).numpy()
    for s, single in enumerate(singles):
        lo, hi = nb.atom_offsets[s], nb.atom_offsets[s + 1]
        g_s = torch.tensor(sf.vjp(single.neighbours, w[lo:hi]))
        np.testing.assert_allclose(W[s], virial(g_s, single.neighbours.D).numpy(), rtol=1e-12)


def test_results_do_not_depend_on_thread_count(tmp_path):
    atoms = quartz((2, 1, 1))
    np.savez(tmp_path / "atoms.npz", numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell[:])
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from ase import Atoms\n"
        "from mlipbias.descriptors import SymmetryFunctions\n"
        "a = np.load(sys.argv[1])\n"
        "atoms = Atoms(a['numbers'], positions=a['positions'], cell=a['cell'], pbc=True)\n"
        "sf = SymmetryFunctions.defaults('SiO2')\n"
        "d = sf.compute(atoms)\n"
        "w = np.random.default_rng(0).normal(size=(2, *d.G.shape))\n"
        "np.save(sys.argv[2], np.concatenate([d.G.ravel(), sf.vjp(d.neighbours, w).ravel()]))\n"
    )
    out = []
    for threads in ("1", "3"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, PYTHONPATH=os.pathsep.join(sys.path))
        target = tmp_path / f"t{threads}.npy"
        command = [sys.executable, str(script), str(tmp_path / "atoms.npz"), str(target)]
        subprocess.run(command, env=env, check=True)
        out.append(np.load(target))
    np.testing.assert_array_equal(out[0], out[1])


# ------------------------------------------------------------------ torch bridge


def test_bridge_gradcheck_and_training_gradient():
    sf = SymmetryFunctions.defaults(["H", "O"])
    atoms = molecule("H2O")
    atoms.rattle(0.05, seed=6)
    nb = sf.neighbours(atoms)
    rng = np.random.default_rng(7)
    dEdG = torch.tensor(rng.normal(size=(2, nb.n_atoms, sf.n_sf)), requires_grad=True)
    t = torch.tensor(rng.normal(size=(nb.n_pairs, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: pair_gradients(x, sf, nb), (dEdG,))
    assert torch.autograd.gradgradcheck(lambda x: pair_gradients(x, sf, nb), (dEdG,))
    assert torch.autograd.gradcheck(lambda x: descriptor_tangents(x, sf, nb), (t,))

    # A force loss through the bridge gives the same weight gradient as the torch reference
    # (which differentiates the descriptors twice).
    weight = torch.tensor(rng.normal(size=sf.n_sf), requires_grad=True)
    F_ref = torch.tensor(rng.normal(size=(nb.n_atoms, 3)))

    def force_loss(forces_of):
        D = torch.tensor(nb.D, requires_grad=True)
        G = reference_G(sf, nb, D).detach().requires_grad_(True)
        E = torch.tanh(G @ weight).sum()
        (dEdG,) = torch.autograd.grad(E, G, create_graph=True)
        forces = forces_of(dEdG, D)
        return ((forces - F_ref) ** 2).sum()

    def bridge(dEdG, D):
        return atom_forces(pair_gradients(dEdG, sf, nb), nb.i, nb.j, nb.n_atoms)

    def through_reference(dEdG, D):
        G = reference_G(sf, nb, D)
        (dEdD,) = torch.autograd.grad(G, D, dEdG, create_graph=True)
        return atom_forces(dEdD, nb.i, nb.j, nb.n_atoms)

    (grad_bridge,) = torch.autograd.grad(force_loss(bridge), weight)
    (grad_ref,) = torch.autograd.grad(force_loss(through_reference), weight)
    np.testing.assert_allclose(grad_bridge.numpy(), grad_ref.numpy(), rtol=1e-10, atol=1e-12)
    assert grad_ref.abs().max() > 1e-3


def test_force_training_contracts_all_members_in_one_call(monkeypatch, tmp_path):
    """Every ensemble member is a right-hand side of one vjp and one jvp per batch (one triplet
    traversal for all of them), in the forward pass and in the double backward of the force loss."""
    from model_fixtures import labelled_quartz, small_descriptor

    from mlipbias.models import AtomsData, TrainingSettings, UncertaintySettings, train
    from mlipbias.uq.calibration import CalibrationWarning

    shapes = {"vjp": [], "jvp": []}
    for name in shapes:
        original = getattr(SymmetryFunctions, name)

        def spy(self, neighbours, x, _name=name, _original=original):
            shapes[_name].append(x.shape)
            return _original(self, neighbours, x)

        monkeypatch.setattr(SymmetryFunctions, name, spy)
    sf = small_descriptor()
    data = AtomsData(labelled_quartz(6), sf)
    settings = TrainingSettings(epochs=1, batch_size=3, force_weight=1.0, stress_weight=0.0, device="cpu")
    with pytest.warns(CalibrationWarning):  # 6 structures are too few for the conformal factor
        train(
            data,
            data,
            uncertainty=UncertaintySettings(methods=("ensemble",), n_members=3),
            training=settings,
            output_dir=tmp_path,
            progress=False,
            log=lambda _: None,
        )
    assert len(shapes["jvp"]) == 2  # one per training batch
    assert all(len(s) == 3 and s[0] == 3 for s in shapes["jvp"] + shapes["vjp"]), shapes


def test_bridge_keeps_dtype_and_leading_axes():
    sf = SymmetryFunctions.defaults(["H", "O"])
    nb = sf.neighbours(molecule("H2O"))
    dEdG = torch.ones(nb.n_atoms, sf.n_sf, dtype=torch.float32)
    g = pair_gradients(dEdG, sf, nb)
    assert g.dtype == torch.float32 and g.shape == (nb.n_pairs, 3)
    g2 = pair_gradients(torch.ones(2, nb.n_atoms, sf.n_sf, dtype=torch.float64), sf, nb)
    forces = atom_forces(g2, nb.i, nb.j, nb.n_atoms)
    assert forces.shape == (2, nb.n_atoms, 3)
    np.testing.assert_allclose(forces[0].numpy(), atom_forces(g2[0], nb.i, nb.j, nb.n_atoms).numpy())
    assert virial(g2, nb.D).shape == (2, 3, 3)


# ------------------------------------------------------------------ settings, defaults, records


@pytest.mark.parametrize(
    ("system", "elements", "n_sf"),
    [("SiO2", ("Si", "O"), 52), ("Si", ("Si",), 42), ("molecules", ("H", "C", "N", "O"), 64)],
)
def test_defaults_and_records_round_trip(system, elements, n_sf):
    sf = SymmetryFunctions.defaults(system)
    assert sf.elements == elements and sf.n_sf == n_sf
    assert set(sf.table[:, 0]) == {2, 4, 5} or system == "molecules"
    assert set(sf.table[sf.table[:, 0] != 2, 6]) == {-1.0, 1.0}
    records = sf.to_records()
    assert records["descriptor/functions"].shape == (n_sf, 8)
    assert records["descriptor/cutoff"].tolist() == [sf.cutoff]
    assert SymmetryFunctions.from_records(records) == sf
    assert pickle.loads(pickle.dumps(sf)) == sf
    assert len(sf.labels()) == n_sf
    swapped = SymmetryFunctions.defaults(list(reversed(elements)))
    assert swapped.elements == tuple(reversed(elements)) and swapped.n_sf == n_sf


def test_angular_cutoff_setting():
    from mlipbias.models.config import DescriptorSettings, make_descriptor

    sf = make_descriptor(DescriptorSettings(preset="SiO2", angular_cutoff=3.5), ["Si", "O"])
    kinds, rc = sf.table[:, 0], sf.table[:, 7]
    assert set(rc[kinds == 2]) == {6.0} and set(rc[kinds != 2]) == {3.5} and sf.cutoff == 6.0
    full = SymmetryFunctions.defaults("SiO2")
    np.testing.assert_array_equal(sf.table[:, :7], full.table[:, :7])
    assert SymmetryFunctions.from_records(sf.to_records()) == sf  # the model file keeps it
    with pytest.raises(ValueError, match="angular cutoff must be a positive number"):
        full.with_angular_cutoff(0.0)


def test_fast_preset_is_the_sio2_set_at_a_short_angular_cutoff():
    from mlipbias.models.config import DescriptorSettings, config_from_dict, make_descriptor

    fast = SymmetryFunctions.defaults("SiO2-fast")
    assert fast == SymmetryFunctions.defaults("SiO2").with_angular_cutoff(3.5)
    assert make_descriptor(DescriptorSettings(preset="SiO2-fast"), ["Si", "O"]) == fast
    config = config_from_dict({"data": {"path": "x.db"}, "descriptor": {"preset": "SiO2-fast"}})
    assert config.descriptor.preset == "SiO2-fast"
    with pytest.raises(ValueError, match="SiO2-fast"):
        SymmetryFunctions.defaults("SiO2-slow")


def test_defaults_for_other_element_lists_stay_moderate():
    for elements in (["H", "N"], ["C", "H", "O"], ["H", "C", "N", "O", "S"]):
        sf = SymmetryFunctions.defaults(elements)
        assert sf.elements == tuple(elements) and 30 <= sf.n_sf <= 70


def row(**changes):
    values = dict(kind=4, a=0, b=1, eta=0.01, rs=0.0, zeta=2.0, lam=1.0, rc=5.0)
    values.update(changes)
    return [[values[k] for k in ("kind", "a", "b", "eta", "rs", "zeta", "lam", "rc")]]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (np.zeros((3, 7)), "shape \\(n_sf, 8\\)"),
        (np.zeros((0, 8)), "empty"),
        (row(kind=3), "kind must be 2, 4 or 5"),
        (row(rc=0.0), "cutoff rc must be > 0"),
        (row(rc=-1.0), "cutoff rc must be > 0"),
        (row(b=2), "element index b = 2"),
        (row(a=0.5), "element index a = 0.5"),
        (row(zeta=0.5), "zeta must be >= 1"),
        (row(lam=2.0), "lambda must be in"),
        (row(rs=1.0), "G4 and G5 have no rs"),
        (row(eta=-1.0), "eta must be >= 0"),
        (row(kind=2, b=0, zeta=0, lam=0), "G2 takes b = -1"),
        (row(kind=2, b=-1), "G2 has no zeta or lambda"),
        (row(eta=float("nan")), "not finite"),
    ],
)
def test_bad_tables_are_clear_errors(table, message):
    with pytest.raises(ValueError, match=message):
        SymmetryFunctions(["Si", "O"], table)


def test_bad_input_is_a_clear_error():
    sf = SymmetryFunctions.defaults("SiO2")
    with pytest.raises(ValueError, match="contains element H, which is not among this descriptor's elements"):
        sf.compute(molecule("H2O"))
    with pytest.raises(ValueError, match="structure 1 contains element H"):
        sf.compute_batch([quartz(), molecule("H2O")])
    with pytest.raises(ValueError, match="unknown chemical symbol"):
        SymmetryFunctions(["Si", "Xx"], sf.table)
    with pytest.raises(ValueError, match="must not repeat"):
        SymmetryFunctions(["Si", "Si"], sf.table)
    with pytest.raises(ValueError, match="unknown default set 'SiC'"):
        SymmetryFunctions.defaults("SiC")
    records = sf.to_records()
    with pytest.raises(ValueError, match="does not match the largest rc"):
        SymmetryFunctions.from_records({**records, "descriptor/cutoff": np.array([7.0])})
    with pytest.raises(ValueError, match="missing record descriptor/functions"):
        SymmetryFunctions.from_records({"elements": "Si O", "descriptor/cutoff": np.array([6.0])})

    nb = sf.neighbours(quartz())
    with pytest.raises(ValueError, match="dLdG must have shape \\(n_centers, n_sf\\)"):
        sf.vjp(nb, np.zeros((nb.n_atoms, sf.n_sf + 1)))
    with pytest.raises(ValueError, match="t must have shape \\(n_pairs, 3\\)"):
        sf.jvp(nb, np.zeros((nb.n_pairs, 2)))
    with pytest.raises(ValueError, match="dEdG must have shape"):
        pair_gradients(torch.zeros(nb.n_atoms + 1, sf.n_sf), sf, nb)
    core = sf._core
    with pytest.raises(ValueError, match="has zero length"):
        core.compute(nb.species, nb.offsets, nb.j, np.where(np.arange(nb.n_pairs)[:, None] == 5, 0.0, nb.D))
    with pytest.raises(ValueError, match="offsets\\[-1\\]"):
        core.compute(nb.species, nb.offsets[:-1], nb.j, nb.D)
    with pytest.raises(ValueError, match="neighbour index"):
        core.compute(nb.species, nb.offsets, nb.j + nb.n_atoms, nb.D)
    with pytest.raises(ValueError, match="element index 2"):
        core.compute(nb.species * 2, nb.offsets, nb.j, nb.D)
    with pytest.raises(ValueError, match="non-decreasing"):
        core.compute(nb.species, np.r_[0, nb.offsets[2:-1], nb.offsets[1], nb.n_pairs], nb.j, nb.D)
    with pytest.raises(ValueError, match="non-finite"):
        core.compute(nb.species, nb.offsets, nb.j, nb.D + np.inf)


# ------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.skipif(gpu.unavailable_reason() is not None, reason=str(gpu.unavailable_reason()))
def test_torch_reference_on_cuda():
    sf = SymmetryFunctions.defaults("SiO2")
    desc = sf.compute(quartz((2, 1, 1)), derivatives=True)
    nb = desc.neighbours
    w = torch.tensor(np.random.default_rng(8).normal(size=desc.G.shape), device="cuda")
    D = torch.tensor(nb.D, device="cuda", requires_grad=True)
    G = reference_G(sf, nb, D)
    (dEdD,) = torch.autograd.grad((G * w).sum(), D, create_graph=True)
    (second,) = torch.autograd.grad((dEdD**2).sum(), D)  # double backward on the device
    np.testing.assert_allclose(G.detach().cpu().numpy(), desc.G, rtol=0, atol=TOL)
    np.testing.assert_allclose(dEdD.detach().cpu().numpy(), sf.vjp(nb, w.cpu().numpy()), rtol=0, atol=TOL)
    D_cpu = torch.tensor(nb.D, requires_grad=True)
    (dEdD_cpu,) = torch.autograd.grad((reference_G(sf, nb, D_cpu) * w.cpu()).sum(), D_cpu, create_graph=True)
    (second_cpu,) = torch.autograd.grad((dEdD_cpu**2).sum(), D_cpu)
    np.testing.assert_allclose(second.cpu().numpy(), second_cpu.numpy(), rtol=1e-9, atol=1e-9)
