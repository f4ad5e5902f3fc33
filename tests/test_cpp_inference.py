"""C++ model inference (cpp/model.hpp via mlipbias.inference) against an independent torch
implementation of docs/model_file.md, finite differences, a two-rank split, and every
schema error of the model loader."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mlipbias import _core
from mlipbias.descriptors import SymmetryFunctions
from mlipbias.descriptors.torch_reference import symmetry_functions as torch_symmetry_functions
from mlipbias.inference import CppModel, virial_to_stress
from mlipbias.modelfile import validate_model_records, write_model_file
from mlipbias.structures import alpha_quartz

TOL = 1e-10  # C++ against the torch reference, relative to the scale of each quantity
ELEMENTS = ("Si", "O")
METHODS = ("ensemble", "posterior", "distance")
C_E = {"ensemble": 1.3, "posterior": 0.8, "distance": 1.7}
C_F = {"ensemble": 0.9, "posterior": 1.2, "distance": 0.6}


# ------------------------------------------------------------------------------ model files


def descriptor() -> SymmetryFunctions:
    """A small SiO2 set with every kind (G2, G4, G5) and two cutoffs."""
    return SymmetryFunctions.build(
        ELEMENTS,
        g2=[(4.0, 1.6, 4.0), (1.0, 2.6, 4.0), (0.5, 3.2, 3.5)],
        g4=[(0.05, 1.0, 1.0, 4.0), (0.1, 2.0, -1.0, 3.5)],
        g5=[(0.08, 4.0, 1.0, 4.0), (0.02, 1.0, -1.0, 3.5)],
    )


def structure(seed: int = 0, repeat=(1, 1, 2)) -> Atoms:
    """Rattled alpha-quartz (18 atoms): the cell is smaller than the cutoff, so images count."""
    atoms = alpha_quartz(repeat)
    atoms.rattle(0.08, seed=seed)
    return atoms


def model_records(
    seed: int = 0,
    n_members: int = 3,
    hidden=(7, 5),
    activation: str = "tanh",
    k: int = 4,
    methods=METHODS,
    calibrated: bool = True,
) -> dict:
    """Random but valid records of a model with every C++ uncertainty method.

    The per-element input scaling comes from the descriptors of a few structures so that the
    network inputs are O(1); the training features of the distance method and the precision
    matrices of the posterior are random (symmetric positive definite) and of realistic size.
    """
    rng = np.random.default_rng(seed)
    sf = descriptor()
    G = sf.compute_batch([structure(s) for s in range(3)]).G
    species = np.tile(sf.species(structure()), 3)
    records = {
        "meta/format": "mlipbias-model",
        "meta/mlipbias_version": "test",
        "meta/units": "eV Angstrom",
        "meta/description": "random weights for tests/test_cpp_inference.py",
        **sf.to_records(),
        "model/activation": activation,
        "model/n_members": np.array([n_members]),
        "model/n_layers": np.array([len(hidden) + 1]),
    }
    for e, el in enumerate(ELEMENTS):
        records[f"scaling/{el}/mean"] = G[species == e].mean(0) + 0.1 * rng.normal(size=sf.n_sf)
        records[f"scaling/{el}/std"] = G[species == e].std(0) + 0.2
    widths = [sf.n_sf, *hidden, 1]
    for m in range(n_members):
        records[f"member/{m}/energy_scale"] = np.array([0.5 + rng.random()])
        records[f"member/{m}/energy_shift"] = rng.normal(size=len(ELEMENTS))
        for el in ELEMENTS:
            for layer in range(1, len(widths)):
                n_in, n_out = widths[layer - 1], widths[layer]
                records[f"member/{m}/{el}/W{layer}"] = rng.normal(size=(n_out, n_in)) * 1.5 / np.sqrt(n_in)
                records[f"member/{m}/{el}/b{layer}"] = 0.3 * rng.normal(size=n_out)
    records["uq/methods"] = " ".join(methods)
    n_layers = len(widths) - 1
    K = len(ELEMENTS) * n_layers * k
    records["uq/gradient/k"] = np.array([k])
    for el in ELEMENTS:
        for layer in range(1, len(widths)):
            records[f"uq/gradient/{el}/R1_{layer}"] = rng.normal(size=(k, widths[layer]))
            records[f"uq/gradient/{el}/R2_{layer}"] = rng.normal(size=(k, widths[layer - 1] + 1))
    records["uq/gradient/lambda"] = np.array([0.1])
    for name, n in (("precision_energy", 3 * K), ("precision_atom", 5 * K)):
        X = rng.normal(size=(n, K))
        records[f"uq/gradient/{name}"] = np.linalg.inv(X.T @ X / n + 0.1 * np.eye(K))
    records["uq/gradient/train_energy"] = rng.normal(size=(6, K))
    records["uq/gradient/train_atom"] = rng.normal(size=(40, K))
    if calibrated:
        records["calibration/alpha"] = np.array([0.1])
        for method in methods:
            records[f"calibration/energy/{method}"] = np.array([C_E[method]])
            records[f"calibration/force/{method}"] = np.array([C_F[method]])
    return records


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    records = model_records()
    validate_model_records(records)
    return write_model_file(tmp_path_factory.mktemp("model") / "sio2.mlip", records)


@pytest.fixture(scope="module")
def model(model_path):
    return CppModel(model_path)


# ------------------------------------------------------------------------------ torch reference


def reference(records: dict, atoms: Atoms, method: str) -> dict:
    """docs/model_file.md in torch, differentiated by autograd through the torch symmetry functions.

    Neighbours come from ASE, forces and virial from derivatives with respect to positions and
    a homogeneous strain, so nothing of the C++ path (vjp, scatter, the tangent pass) is reused.
    """
    dt = torch.float64
    elements = records["elements"].split()
    table = records["descriptor/functions"]
    cutoff = float(records["descriptor/cutoff"][0])
    n_members = int(records["model/n_members"][0])
    n_layers = int(records["model/n_layers"][0])
    act = torch.tanh if records["model/activation"] == "tanh" else torch.nn.functional.silu
    t = {k: torch.tensor(np.asarray(v), dtype=dt) for k, v in records.items() if not isinstance(v, str)}

    n = len(atoms)
    species = torch.tensor([elements.index(s) for s in atoms.get_chemical_symbols()])
    i, j, S = ase_neighbor_list("ijS", atoms, cutoff)
    i, j = torch.tensor(i), torch.tensor(j)
    pos = torch.tensor(atoms.positions, dtype=dt, requires_grad=True)
    strain = torch.zeros(3, 3, dtype=dt, requires_grad=True)
    cell = torch.tensor(np.asarray(atoms.cell), dtype=dt)
    D = (pos[j] - pos[i] + torch.tensor(S, dtype=dt) @ cell) @ (torch.eye(3, dtype=dt) + strain)
    G = torch_symmetry_functions(table, species, i, j, D, n)

    member_atom_energies = []
    phi = torch.zeros(n, 0, dtype=dt)
    k = int(records["uq/gradient/k"][0]) if "uq/gradient/k" in records else 0
    for m in range(n_members):
        E_atoms = torch.zeros(n, dtype=dt)
        blocks = []
        for e, el in enumerate(elements):
            rows = torch.nonzero(species == e).flatten()
            h = (G[rows] - t[f"scaling/{el}/mean"]) / t[f"scaling/{el}/std"]
            inputs, zs = [], []
            for layer in range(1, n_layers + 1):
                inputs.append(h)
                z = h @ t[f"member/{m}/{el}/W{layer}"].T + t[f"member/{m}/{el}/b{layer}"]
                zs.append(z)
                h = act(z) if layer < n_layers else z
            E_el = t[f"member/{m}/energy_scale"][0] * h[:, 0] + t[f"member/{m}/energy_shift"][e]
            E_atoms = E_atoms.index_put((rows,), E_el)
            if m == 0 and k:
                # delta_l = dE_i/dz_l, row by row (E_i depends on its own row only)
                deltas = torch.autograd.grad(E_el.sum(), zs, create_graph=True)
                block = torch.zeros(n, len(elements) * n_layers * k, dtype=dt)
                for layer, (delta, a) in enumerate(zip(deltas, inputs, strict=True), start=1):
                    a1 = torch.cat([a, torch.ones(len(a), 1, dtype=dt)], 1)
                    R1, R2 = t[f"uq/gradient/{el}/R1_{layer}"], t[f"uq/gradient/{el}/R2_{layer}"]
                    sketch = (delta @ R1.T) * (a1 @ R2.T) / k**0.5
                    columns = torch.arange(k) + (e * n_layers + layer - 1) * k
                    block = block.index_put((rows[:, None], columns[None, :]), sketch)
                blocks.append(block)
        member_atom_energies.append(E_atoms)
        if blocks:
            phi = sum(blocks)
    member_atom_energies = torch.stack(member_atom_energies)  # (M, n)
    member_energies = member_atom_energies.sum(1)
    atom_energies = member_atom_energies.mean(0)
    energy = atom_energies.sum()

    c_E = float(records.get(f"calibration/energy/{method}", [1.0])[0])
    c_F = float(records.get(f"calibration/force/{method}", [1.0])[0])
    U = atom_U = None
    member_forces = None
    if method == "ensemble":
        U = c_E * torch.sqrt(((member_energies - member_energies.mean()) ** 2).sum() / (n_members - 1))
        member_forces = torch.stack(
            [-torch.autograd.grad(member_energies[m], pos, retain_graph=True)[0] for m in range(n_members)]
        )
        spread = ((member_forces - member_forces.mean(0)) ** 2).sum((0, 2))
        atom_U = c_F * torch.sqrt(spread / (3 * (n_members - 1)))
    elif method == "posterior":
        Phi = phi.sum(0)
        U = c_E * torch.sqrt(Phi @ t["uq/gradient/precision_energy"] @ Phi)
        atom_U = c_F * torch.sqrt(torch.einsum("ia,ab,ib->i", phi, t["uq/gradient/precision_atom"], phi))
    elif method == "distance":
        Phi = phi.sum(0)
        U = c_E * n * torch.linalg.vector_norm(Phi / n - t["uq/gradient/train_energy"], dim=1).min()
        atom_U = c_F * torch.cdist(phi, t["uq/gradient/train_atom"]).min(1).values

    dE_dpos, dE_dstrain = torch.autograd.grad(energy, (pos, strain), retain_graph=U is not None)
    out = {
        "energy": energy.item(),
        "atom_energies": atom_energies.detach().numpy(),
        "forces": -dE_dpos.numpy(),
        "virial": -dE_dstrain.numpy(),
        "member_energies": member_energies.detach().numpy(),
    }
    if U is not None:
        dU_dpos, dU_dstrain = torch.autograd.grad(U, (pos, strain))
        out |= {
            "uncertainty": U.item(),
            "uncertainty_gradient": dU_dpos.numpy(),
            "uncertainty_virial": dU_dstrain.numpy(),
            "atom_uncertainty": atom_U.detach().numpy(),
        }
    if member_forces is not None:
        out["member_forces"] = member_forces.detach().numpy()
    return out


def assert_close(got, want, name, tol=TOL):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    scale = max(np.abs(want).max(initial=0.0), 1e-3)
    err = np.abs(got - want).max(initial=0.0)
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol:g} x {scale:.3g}"


# ------------------------------------------------------------------------------ against torch


@pytest.mark.parametrize(
    ("method", "activation"),
    [
        ("none", "tanh"),
        ("ensemble", "tanh"),
        ("posterior", "tanh"),
        ("distance", "silu"),
        ("posterior", "silu"),
    ],
)
def test_matches_torch_reference(tmp_path, method, activation):
    records = model_records(seed=1, activation=activation)
    model = CppModel(write_model_file(tmp_path / "m.mlip", records))
    atoms = structure(seed=2)
    want = reference(records, atoms, method)
    gradient = method != "none"
    got = model.evaluate(atoms, uncertainty=method, gradient=gradient, atom_uncertainty=gradient)
    for name, value in want.items():
        assert_close(getattr(got, name), value, f"{method}/{activation}: {name}")
    if method == "none":
        assert got.uncertainty is None and got.uncertainty_gradient is None and got.atom_uncertainty is None
    assert got.energy == pytest.approx(got.atom_energies.sum(), rel=1e-14)
    # Rotational invariance makes the virial symmetric; the C++ reports its symmetric part.
    assert_close(want["virial"], want["virial"].T, "torch virial symmetry", tol=1e-12)


@pytest.mark.parametrize("method", ["none", "posterior", "ensemble"])
def test_wide_layers_match_torch_reference(tmp_path, method):
    """Layers wide enough for the packed strips of the batched products (8 doubles), with edge columns
    (37 = 4 x 8 + 5, 19 = 2 x 8 + 3) and k = 11 sketch directions; 36 atoms, so blocks hold several
    atoms of each element (the 4-row kernel and its remainder rows)."""
    records = model_records(seed=3, hidden=(37, 19), k=11)
    model = CppModel(write_model_file(tmp_path / "m.mlip", records))
    atoms = structure(seed=4, repeat=(1, 2, 2))
    want = reference(records, atoms, method)
    gradient = method != "none"
    got = model.evaluate(atoms, uncertainty=method, gradient=gradient, atom_uncertainty=gradient)
    for name, value in want.items():
        assert_close(getattr(got, name), value, f"{method}: {name}")


def test_single_precision_networks_are_close_to_double(tmp_path):
    """float32 networks: close to float64 (relative force error ~1e-6 here), yet really float32."""
    records = model_records(seed=3, hidden=(37, 19), k=11)
    model = CppModel(write_model_file(tmp_path / "m.mlip", records))
    atoms = structure(seed=4, repeat=(1, 2, 2))
    options = {"uncertainty": "posterior", "gradient": True, "atom_uncertainty": True}
    double = model.evaluate(atoms, **options)
    single = model.evaluate(atoms, single_precision=True, **options)
    for name in ("forces", "virial", "uncertainty_gradient", "atom_uncertainty", "atom_energies"):
        assert_close(getattr(single, name), getattr(double, name), f"float32 {name}", tol=1e-4)
    assert np.abs(single.forces - double.forces).max() > 0  # the float path ran
    assert model.evaluator(single_precision=True).options["single_precision"]


def test_uncertainty_calibration_factors_scale_linearly(tmp_path):
    """The same model without calibration records gives U / c_E and U_i / c_F."""
    calibrated = CppModel(write_model_file(tmp_path / "c.mlip", model_records(seed=3)))
    plain = CppModel(write_model_file(tmp_path / "p.mlip", model_records(seed=3, calibrated=False)))
    atoms = structure(seed=4)
    for method in METHODS:
        a = calibrated.evaluate(atoms, method, gradient=True, atom_uncertainty=True)
        b = plain.evaluate(atoms, method, gradient=True, atom_uncertainty=True)
        assert a.uncertainty == pytest.approx(C_E[method] * b.uncertainty, rel=1e-13)
        assert_close(a.uncertainty_gradient, C_E[method] * b.uncertainty_gradient, "dU/dx", tol=1e-13)
        assert_close(a.atom_uncertainty, C_F[method] * b.atom_uncertainty, "U_i", tol=1e-13)
        assert_close(a.forces, b.forces, "forces", tol=0)


# ------------------------------------------------------------------------------ finite differences


def strained(atoms: Atoms, eps: np.ndarray) -> Atoms:
    out = atoms.copy()
    deformation = np.eye(3) + eps
    out.set_cell(np.asarray(atoms.cell) @ deformation, scale_atoms=False)
    out.positions = atoms.positions @ deformation
    return out


@pytest.mark.parametrize("method", METHODS)
def test_forces_virial_and_uncertainty_gradients_match_finite_differences(model, method):
    atoms = structure(seed=5)
    result = model.evaluate(atoms, method, gradient=True)
    h = 1e-6  # steep random networks: 1e-5 leaves a truncation error of 1e-7 relative

    def values(a):
        r = model.evaluate(a, method)
        return np.array([r.energy, r.uncertainty])

    rng = np.random.default_rng(6)
    for _ in range(3):  # random directions in 3N space
        d = rng.normal(size=atoms.positions.shape)
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions += h * d
        minus.positions -= h * d
        dE, dU = (values(plus) - values(minus)) / (2 * h)
        assert dE == pytest.approx(-(result.forces * d).sum(), rel=1e-6, abs=1e-7)
        assert dU == pytest.approx((result.uncertainty_gradient * d).sum(), rel=1e-6, abs=1e-7)
    for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)]:
        eps = np.zeros((3, 3))
        eps[a, b] = h
        dE, dU = (values(strained(atoms, eps)) - values(strained(atoms, -eps))) / (2 * h)
        # W = -dE/dstrain; the bias-virial convention is W_U = +dU/dstrain
        assert dE == pytest.approx(-result.virial[a, b], rel=1e-6, abs=1e-7)
        assert dU == pytest.approx(result.uncertainty_virial[a, b], rel=1e-6, abs=1e-7)
    stress = virial_to_stress(result.virial, atoms.get_volume())
    assert stress[5] == pytest.approx(-result.virial[0, 1] / atoms.get_volume())


def test_posterior_gradient_equals_a_force_derivative_in_parameter_space(tmp_path):
    """The identity of docs/model_file.md: grad U = (c_E^2 / U) grad (v . Phi) with v = A_E Phi
    held fixed, and grad (v . Phi) = -(d/ds) F_0(theta + s B) with B_l = R1_l^T diag(v_l) R2_l /
    sqrt(k) the weight-shaped direction of v. The right side is a two-sided difference of the
    plain forces of two moved model files, so it shares nothing with the C++ tangent pass."""
    records = model_records(seed=7)
    model = CppModel(write_model_file(tmp_path / "m.mlip", records))
    atoms = structure(seed=8)
    result = model.evaluate(atoms, "posterior", gradient=True)
    M = model.n_members
    n_layers = int(records["model/n_layers"][0])
    k = int(records["uq/gradient/k"][0])
    sums = _core.ModelEvaluator(model.core, "posterior").forward(*model.neighbours(atoms))
    A = records["uq/gradient/precision_energy"]
    Phi = sums[M : M + A.shape[0]]  # local sums: [E_m] [Phi] [n_centres]
    assert sums[-1] == len(atoms)
    assert result.uncertainty == pytest.approx(C_E["posterior"] * np.sqrt(Phi @ A @ Phi), rel=1e-12)
    v = A @ Phi
    s = 1e-5
    forces = []
    for sign in (1, -1):
        moved = dict(records)
        for e, el in enumerate(ELEMENTS):
            for layer in range(1, n_layers + 1):
                start = (e * n_layers + layer - 1) * k
                R1, R2 = records[f"uq/gradient/{el}/R1_{layer}"], records[f"uq/gradient/{el}/R2_{layer}"]
                B = R1.T @ np.diag(v[start : start + k]) @ R2 / np.sqrt(k)
                moved[f"member/0/{el}/W{layer}"] = records[f"member/0/{el}/W{layer}"] + sign * s * B[:, :-1]
                moved[f"member/0/{el}/b{layer}"] = records[f"member/0/{el}/b{layer}"] + sign * s * B[:, -1]
        path = write_model_file(tmp_path / f"moved{sign}.mlip", moved)
        forces.append(CppModel(path).evaluate(atoms).forces)
    # The reported forces are the mean over members: only member 0 moved.
    grad_v_phi = -M * (forces[0] - forces[1]) / (2 * s)
    expected = C_E["posterior"] ** 2 / result.uncertainty * grad_v_phi
    assert_close(result.uncertainty_gradient, expected, "identity", tol=1e-6)


# ------------------------------------------------------------------------------ two ranks


def rank_neighbours(model: CppModel, atoms: Atoms, centres: np.ndarray):
    """The neighbour data one MPI rank would see: its centres first, every other atom after them
    (as ghosts), pairs of its centres only. Returns (species, offsets, j, D, order) with order[new] = old."""
    species, offsets, j, D = model.neighbours(atoms)
    n = len(atoms)
    order = np.concatenate([centres, np.setdiff1d(np.arange(n), centres)])
    new_index = np.empty(n, dtype=np.int64)
    new_index[order] = np.arange(n)
    pairs = np.concatenate([np.arange(offsets[c], offsets[c + 1]) for c in centres])
    counts = np.array([offsets[c + 1] - offsets[c] for c in centres])
    new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return species[order], new_offsets, new_index[j[pairs]], D[pairs], order


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_with_summed_local_sums_equal_one_evaluation(model, method):
    """forward on each rank, local sums added by hand (MPI_Allreduce), backward on each rank,
    ghost contributions folded back to their owners (LAMMPS reverse communication)."""
    atoms = structure(seed=9, repeat=(1, 1, 3))
    n = len(atoms)
    full = model.evaluate(atoms, method, gradient=True, atom_uncertainty=True)
    rng = np.random.default_rng(10)
    mine = np.sort(rng.choice(n, size=n // 3, replace=False))  # uneven, interleaved domains
    ranks = [mine, np.setdiff1d(np.arange(n), mine)]
    evaluators = [_core.ModelEvaluator(model.core, method, True, True) for _ in ranks]
    data = [rank_neighbours(model, atoms, centres) for centres in ranks]
    local = [ev.forward(*d[:4]) for ev, d in zip(evaluators, data, strict=True)]
    global_sums = local[0] + local[1]
    assert global_sums[-1] == n
    parts = [ev.backward(global_sums) for ev in evaluators]

    energy = sum(p["energy"] for p in parts)
    forces, gradient = np.zeros((n, 3)), np.zeros((n, 3))
    member_forces = np.zeros((model.n_members, n, 3))
    atom_uncertainty, atom_energies = np.zeros(n), np.zeros(n)
    for p, d, centres in zip(parts, data, ranks, strict=True):
        order = d[4]
        np.add.at(forces, order, p["forces"])
        np.add.at(gradient, order, p["uncertainty_gradient"])
        atom_energies[centres] = p["atom_energies"]
        if method == "ensemble":
            np.add.at(member_forces, (slice(None), order), p["member_forces"])
        else:
            atom_uncertainty[centres] = p["atom_uncertainty"]
        assert p["uncertainty"] == pytest.approx(full.uncertainty, rel=1e-13)
        assert_close(p["member_energies"], full.member_energies, "member energies", tol=1e-13)
    if method == "ensemble":
        atom_uncertainty = _core.ensemble_atom_uncertainty(member_forces, C_F["ensemble"])
    assert energy == pytest.approx(full.energy, rel=1e-13)
    assert_close(atom_energies, full.atom_energies, "atom energies", tol=1e-13)
    assert_close(forces, full.forces, "forces", tol=1e-12)
    assert_close(sum(p["virial"] for p in parts), full.virial, "virial", tol=1e-12)
    assert_close(gradient, full.uncertainty_gradient, "dU/dx", tol=1e-12)
    assert_close(sum(p["uncertainty_virial"] for p in parts), full.uncertainty_virial, "U virial", tol=1e-12)
    assert_close(atom_uncertainty, full.atom_uncertainty, "U_i", tol=1e-12)


def test_results_do_not_depend_on_the_thread_count(tmp_path, model_path):
    """Per-atom rows and serial sums: OpenMP threads change nothing, bit for bit."""
    atoms = structure(seed=14, repeat=(2, 1, 2))
    np.savez(tmp_path / "atoms.npz", numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell[:])
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from ase import Atoms\n"
        "from mlipbias.inference import CppModel\n"
        "a = np.load(sys.argv[2])\n"
        "atoms = Atoms(a['numbers'], positions=a['positions'], cell=a['cell'], pbc=True)\n"
        "model = CppModel(sys.argv[1])\n"
        "out = []\n"
        "for method in ('ensemble', 'posterior', 'distance'):\n"
        "    r = model.evaluate(atoms, method, gradient=True, atom_uncertainty=True)\n"
        "    out += [r.forces.ravel(), r.virial.ravel(), [r.energy, r.uncertainty],\n"
        "            r.uncertainty_gradient.ravel(), r.uncertainty_virial.ravel(), r.atom_uncertainty]\n"
        "r = model.evaluate(atoms, 'none')\n"  # the members' mean as one row of the fused pass
        "out += [r.forces.ravel(), r.virial.ravel(), [r.energy]]\n"
        "r = model.evaluate(atoms, 'ensemble', gradient=True)\n"  # every member's row, no member forces
        "out += [r.forces.ravel(), r.uncertainty_gradient.ravel(), r.uncertainty_virial.ravel()]\n"
        "np.save(sys.argv[3], np.concatenate(out))\n"
    )
    out = []
    for threads in ("1", "3"):
        # passive waiting: spinning OpenMP threads crawl on a busy machine with fewer cores
        env = dict(os.environ, OMP_NUM_THREADS=threads, OMP_WAIT_POLICY="passive")
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        target = tmp_path / f"t{threads}.npy"
        command = [sys.executable, str(script), str(model_path), str(tmp_path / "atoms.npz"), str(target)]
        subprocess.run(command, env=env, check=True)
        out.append(np.load(target))
    np.testing.assert_array_equal(out[0], out[1])


# ------------------------------------------------------------------------------ species -1, min_distance


@pytest.mark.parametrize("method", ["ensemble", "posterior", "distance"])
def test_atoms_of_species_minus_one_are_left_out(model, method):
    """Atoms of a type the model does not handle (pair_coeff NULL) have no energy, no force
    and are nobody's neighbour: the result equals that of the structure without them."""
    atoms = structure(seed=11)
    extra = Atoms(
        "H3", positions=atoms.positions[[2, 5, 9]] + [[0.4, 0.3, 0.0], [0.0, 0.5, 0.2], [0.3, 0.0, 0.6]]
    )
    mixed = atoms + extra
    mixed = mixed[np.r_[0:6, 18, 6:12, 19, 12:18, 20]]  # unhandled atoms among the centres
    handled = np.array([s != "H" for s in mixed.get_chemical_symbols()])
    index = {el: k for k, el in enumerate(ELEMENTS)}
    species = np.array([index.get(s, -1) for s in mixed.get_chemical_symbols()], dtype=np.int64)
    i, j, D = ase_neighbor_list("ijD", mixed, model.cutoff)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(i, minlength=len(mixed)))])
    ev = _core.ModelEvaluator(model.core, method, gradient=True, atom_uncertainty=True, min_distance=0.8)
    got = ev.evaluate(species, offsets, j, D)
    want = model.evaluate(mixed[handled], method, gradient=True, atom_uncertainty=True)
    assert got["energy"] == pytest.approx(want.energy, rel=1e-13)
    assert got["uncertainty"] == pytest.approx(want.uncertainty, rel=1e-12)
    for name in ("atom_energies", "atom_uncertainty"):
        assert_close(got[name][handled], getattr(want, name), name, tol=1e-12)
        assert np.all(got[name][~handled] == 0), name
    for name in ("forces", "uncertainty_gradient"):
        assert_close(got[name][handled], getattr(want, name), name, tol=1e-12)
        assert np.all(got[name][~handled] == 0), name
    for name in ("virial", "uncertainty_virial"):
        assert_close(got[name], getattr(want, name), name, tol=1e-12)


def test_min_distance_names_the_atoms(model):
    atoms = structure(seed=12)
    atoms.positions[7] = atoms.positions[3] + [0.3, 0.0, 0.0]
    with pytest.raises(
        ValueError, match=r"atoms with indices 3 and 7 are 0\.3 A apart, closer than min_distance = 0\.5 A"
    ):
        model.evaluate(atoms, min_distance=0.5)
    assert np.isfinite(model.evaluate(atoms, min_distance=0.2).energy)  # allowed below the threshold
    atoms.positions[7] = atoms.positions[3]
    with pytest.raises(ValueError, match="zero length"):
        model.evaluate(atoms)
    with pytest.raises(ValueError, match="min_distance must be a finite number >= 0"):
        model.evaluate(atoms, min_distance=-1.0)


def test_empty_and_isolated_inputs(model):
    ev = _core.ModelEvaluator(model.core, "posterior", gradient=True, atom_uncertainty=True)
    empty = ev.evaluate(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)))
    assert empty["energy"] == 0 and empty["uncertainty"] == 0 and empty["forces"].shape == (0, 3)
    # An isolated atom has G = 0 and the energy of its network at the input -mean/std.
    one = model.evaluate(Atoms("Si", positions=[[0, 0, 0]]), "ensemble", gradient=True)
    assert np.all(one.forces == 0) and np.all(one.uncertainty_gradient == 0)
    assert one.energy == pytest.approx(one.member_energies.mean(), rel=1e-14)


def test_bad_neighbour_data_is_a_clear_error(model):
    species, offsets, j, D = model.neighbours(structure())
    ev = _core.ModelEvaluator(model.core)
    bad = species.copy()
    bad[4] = 2
    with pytest.raises(ValueError, match=r"atom 4 has element index 2, expected -1 .* or 0\.\.1"):
        ev.evaluate(bad, offsets, j, D)
    bad = j.copy()
    bad[5] = 99
    with pytest.raises(ValueError, match="pair 5 has neighbour index 99 outside 0..17"):
        ev.evaluate(species, offsets, bad, D)
    with pytest.raises(ValueError, match=r"offsets\[-1\] = .* must equal the number of pairs"):
        ev.evaluate(species, offsets, j[:-1], D[:-1])
    with pytest.raises(ValueError, match=r"D must have shape \(n_pairs, 3\)"):
        ev.evaluate(species, offsets, j, D[:, :2])
    with pytest.raises(ValueError, match="backward\\(\\) needs a forward\\(\\) first"):
        _core.ModelEvaluator(model.core).backward(np.zeros(5))
    with pytest.raises(ValueError, match="global_sums must have shape"):
        ev.forward(species, offsets, j, D)
        ev.backward(np.zeros(2))
    with pytest.raises(ValueError, match="contains element\\(s\\) H, which model .* does not handle"):
        model.evaluate(Atoms("SiH", positions=[[0, 0, 0], [1.5, 0, 0]]))


# ------------------------------------------------------------------------------ options and BiasState


def test_evaluator_options_are_checked(tmp_path, model):
    plain = CppModel(write_model_file(tmp_path / "plain.mlip", model_records(n_members=1, methods=())))
    assert plain.methods() == ["none"]
    assert model.methods() == ["none", "ensemble", "posterior", "distance"]
    with pytest.raises(
        ValueError, match=r"no data for uncertainty 'posterior' \(uq/methods lists: nothing\)"
    ):
        plain.evaluate(structure(), "posterior")
    with pytest.raises(ValueError, match="uncertainty 'ensemble' needs at least 2 members, the model has 1"):
        plain.evaluate(structure(), "ensemble")
    with pytest.raises(ValueError, match="need an uncertainty method"):
        model.evaluate(structure(), "none", gradient=True)
    with pytest.raises(ValueError, match="evaluated in Python only"):
        model.evaluate(structure(), "gmm")
    with pytest.raises(ValueError, match="unknown uncertainty method 'bayes' \\(choose none, ensemble"):
        model.evaluate(structure(), "bayes")
    assert model.core.energy_calibration("posterior") == C_E["posterior"]
    assert plain.core.force_calibration("distance") == 1.0


def test_bias_state_follows_seed_002_eq_8_cumulative():
    settings = dict(tau=0.5, tau_stress=0.2, rescale=True, species_tau=[0.5, 0.1], rescale_form="cumulative")
    bias = _core.BiasState(**settings)
    steps = [(4.0, 1.0, 9.0, 0.25), (1.0, 4.0, 0.0, 1.0), (16.0, 0.0, 4.0, 0.0)]
    sums = np.zeros(4)
    for step in steps:
        bias.update(*step)
        sums += np.sqrt(step)
        ratio, ratio_stress = sums[0] / sums[1], sums[2] / sums[3]
        assert bias.tau_effective() == pytest.approx(0.5 * ratio, rel=1e-15)
        assert bias.tau_effective(0) == pytest.approx(0.5 * ratio, rel=1e-15)
        assert bias.tau_effective(1) == pytest.approx(0.1 * ratio, rel=1e-15)
        assert bias.tau_stress_effective() == pytest.approx(0.2 * ratio_stress, rel=1e-15)
    assert bias.steps == 3
    assert bias.state == pytest.approx([*sums, 3])
    copy = pickle.loads(pickle.dumps(bias))
    assert copy.state == bias.state and copy.settings == bias.settings
    restarted = _core.BiasState(**settings)
    restarted.state = bias.state
    assert restarted.tau_effective(1) == bias.tau_effective(1)

    fixed = _core.BiasState(tau=0.3)
    assert fixed.settings["tau_stress"] == 0.3  # defaults to tau, as in pair_style mlip/bias
    fixed.update(1.0, 4.0, 1.0, 1.0)
    assert fixed.tau_effective() == fixed.tau_effective(5) == 0.3  # no rescaling, no per-element strengths
    assert (
        _core.BiasState(tau=1.0, rescale=True, rescale_form="cumulative").tau_effective() == 0.0
    )  # nothing yet

    with pytest.raises(ValueError, match="tau must be a finite number >= 0, got -1"):
        _core.BiasState(tau=-1.0)
    with pytest.raises(ValueError, match="element index 2 outside 0..1"):
        bias.tau_effective(2)
    with pytest.raises(ValueError, match="a state has 5 entries"):
        bias.state = [1.0, 2.0]
    with pytest.raises(ValueError, match="squared norms must be finite and >= 0"):
        bias.update(-1.0, 0.0, 0.0, 0.0)


def test_bias_state_window_form_is_the_default_and_follows_a_hand_computation():
    """Window W: no bias while <= W steps are recorded, then tau sqrt(sum |F|^2 / sum |dU/dx|^2)
    over the last W."""
    settings = dict(tau=0.5, tau_stress=0.2, rescale=True, species_tau=[0.5, 0.1], window=3)
    bias = _core.BiasState(**settings)
    assert bias.settings["rescale_form"] == "window" and _core.BiasState().settings["window"] == 100
    rng = np.random.default_rng(8)
    steps = rng.uniform(0.1, 4.0, (8, 4))  # squared norms |F|^2, |dU/dx|^2, |W|^2, |W_U|^2
    for t, step in enumerate(steps, 1):
        bias.update(*step)
        if t <= 3:
            expected, expected_stress = 0.0, 0.0  # burn-in
        else:
            last = steps[t - 3 : t]
            expected = np.sqrt(last[:, 0].sum() / last[:, 1].sum())
            expected_stress = np.sqrt(last[:, 2].sum() / last[:, 3].sum())
        assert bias.tau_effective() == pytest.approx(0.5 * expected, rel=1e-14, abs=0)
        assert bias.tau_effective(1) == pytest.approx(0.1 * expected, rel=1e-14, abs=0)
        assert bias.tau_stress_effective() == pytest.approx(0.2 * expected_stress, rel=1e-14, abs=0)
        # the state carries the window: a restart continues exactly (after a wrap of the ring too)
        restarted = _core.BiasState(**settings)
        restarted.state = bias.state
        assert restarted.tau_effective() == bias.tau_effective()
        assert len(bias.state) == 5 + 4 * min(t, 3)
    np.testing.assert_allclose(bias.state[5:], steps[-3:].ravel())
    copy = pickle.loads(pickle.dumps(bias))
    assert copy.state == bias.state and copy.settings == bias.settings
    copy.update(*steps[0])
    bias.update(*steps[0])
    assert copy.tau_stress_effective() == bias.tau_stress_effective()
    with pytest.raises(ValueError, match="a state of 9 steps has 17 entries for this rescaling form, got 5"):
        bias.state = bias.state[:5]
    with pytest.raises(ValueError, match="rescaling window must be >= 1 step, got 0"):
        _core.BiasState(tau=1.0, window=0)
    with pytest.raises(ValueError, match="rescale_form must be 'window' or 'cumulative', got 'adagrad'"):
        _core.BiasState(tau=1.0, rescale_form="adagrad")


# ------------------------------------------------------------------------------ model file errors


def _drop(name):
    return lambda r: r.pop(name)


def _set(name, value):
    return lambda r: r.__setitem__(name, value)


def _scale(name, factor):
    return lambda r: r.__setitem__(name, r[name] * factor)


def _asymmetric(r):
    A = r["uq/gradient/precision_atom"].copy()
    A[0, 1] += 1.0
    r["uq/gradient/precision_atom"] = A


def _nan_weight(r):
    W = r["member/1/O/W2"].copy()
    W[2, 3] = np.nan
    r["member/1/O/W2"] = W


SCHEMA_ERRORS = [
    (_set("meta/format", "something-else"), r"not an mlipbias model: record meta/format is 'something-else'"),
    (_set("meta/units", "kcal/mol"), r"record meta/units is 'kcal/mol', expected 'eV Angstrom'"),
    (_drop("meta/mlipbias_version"), r"missing record meta/mlipbias_version"),
    (_set("elements", "Si  O"), r"record elements 'Si  O' must be symbols separated by single spaces"),
    (_set("elements", "Si Si"), r"record elements 'Si Si' lists an element twice"),
    (_set("descriptor/cutoff", np.array([5.0])), r"record descriptor/cutoff is 5, expected the largest rc"),
    (
        _scale("descriptor/functions", np.array([1, 1, 1, 1, 1, 1, 1, -1.0])),
        r"descriptor/functions is invalid: .*rc",
    ),
    (_set("descriptor/functions", np.zeros((0, 8))), r"record descriptor/functions has no rows"),
    (
        _set("descriptor/functions", np.zeros((4, 7))),
        r"record descriptor/functions has shape \[4, 7\], expected \[\*, 8\]",
    ),
    (_drop("scaling/O/std"), r"missing record scaling/O/std"),
    (_scale("scaling/Si/std", -1.0), r"record scaling/Si/std has entry 0 = .* below 1e-12"),
    (
        _scale("member/0/energy_scale", 1e307),
        r"record member/0/energy_scale has entry 0 = \S+e\+30\d, beyond the limit of 1e12",
    ),
    (_set("scaling/Si/mean", np.zeros(3)), r"record scaling/Si/mean has shape \[3\], expected \[18\]"),
    (_set("model/activation", "relu"), r"record model/activation is 'relu', expected 'tanh' or 'silu'"),
    (_set("model/n_members", np.array([4])), r"missing record member/3/energy_scale"),
    (_set("model/n_members", np.array([2])), r"record member/2/.* is present but model/n_members is 2"),
    (_set("model/n_members", np.array([1.5])), r"record model/n_members has dtype float64, expected int64"),
    (_set("model/n_layers", np.array([2])), r"record member/0/Si/W2 has shape \[5, 7\], expected \[1, 7\]"),
    (_set("model/n_layers", np.array([0])), r"record model/n_layers is 0, expected >= 1"),
    (_drop("member/1/O/W2"), r"missing record member/1/O/W2"),
    (_drop("member/2/Si/b3"), r"missing record member/2/Si/b3"),
    (_set("member/0/O/W2", np.zeros((5, 6))), r"record member/0/O/W2 has shape \[5, 6\], expected \[\*, 7\]"),
    (_set("member/0/Si/W4", np.zeros((1, 1))), r"record member/0/Si/W4 is present but model/n_layers is 3"),
    (
        _set("member/0/C/W1", np.zeros((1, 1))),
        r"record member/0/C/W1 is for element 'C', which is not in elements",
    ),
    (_nan_weight, r"record member/1/O/W2 contains NaN or infinite values"),
    (_set("member/0/energy_scale", np.array([0.0])), r"record member/0/energy_scale is 0"),
    (
        _set("member/0/energy_shift", np.zeros(3)),
        r"record member/0/energy_shift has shape \[3\], expected \[2\]",
    ),
    (_set("uq/methods", "ensemble magic"), r"record uq/methods names an unknown uncertainty method 'magic'"),
    (_set("uq/methods", "posterior posterior"), r"record uq/methods lists 'posterior' twice"),
    (_drop("uq/gradient/precision_energy"), r"missing record uq/gradient/precision_energy"),
    (_drop("uq/gradient/train_atom"), r"missing record uq/gradient/train_atom"),
    (_drop("uq/gradient/k"), r"missing record uq/gradient/k"),
    (
        _set("uq/gradient/k", np.array([3])),
        r"record uq/gradient/Si/R1_1 has shape \[4, 7\], expected \[3, 7\]",
    ),
    (
        _set("uq/gradient/O/R2_2", np.zeros((4, 7))),
        r"record uq/gradient/O/R2_2 has shape \[4, 7\], expected \[4, 8\]",
    ),
    (_set("uq/gradient/lambda", np.array([0.0])), r"record uq/gradient/lambda is 0, expected > 0"),
    (_asymmetric, r"record uq/gradient/precision_atom is not symmetric"),
    (_set("uq/gradient/train_energy", np.zeros((0, 24))), r"record uq/gradient/train_energy has no rows"),
    (
        _set("uq/gradient/train_atom", np.zeros((5, 23))),
        r"train_atom has shape \[5, 23\], expected \[\*, 24\]",
    ),
    (
        _set("calibration/energy/gmm", np.array([1.0])),
        r"calibration/energy/gmm calibrates method 'gmm', which is not",
    ),
    (
        _set("calibration/force/posterior", np.array([0.0])),
        r"record calibration/force/posterior is 0, expected a posit",
    ),
    (_set("calibration/alpha", np.array([1.5])), r"record calibration/alpha is 1.5, expected 0 < alpha < 1"),
    (_drop("calibration/alpha"), r"missing record calibration/alpha"),
]


@pytest.mark.parametrize(("mutate", "message"), SCHEMA_ERRORS, ids=[m for _, m in SCHEMA_ERRORS])
def test_schema_errors_name_the_file_and_the_record(tmp_path, mutate, message):
    records = model_records()
    mutate(records)
    path = write_model_file(tmp_path / "bad.mlip", records)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'bad.mlip'}: .*{message}"):
        _core.Model(str(path))


def test_ensemble_needs_two_members(tmp_path):
    records = model_records(n_members=1, methods=("ensemble",), calibrated=False)
    path = write_model_file(tmp_path / "one.mlip", records)
    with pytest.raises(ValueError, match="uq/methods lists 'ensemble' but model/n_members is 1"):
        CppModel(path)


def test_python_only_records_are_ignored(tmp_path):
    records = model_records(methods=("ensemble", "gmm", "posterior"), calibrated=False)
    records["uq/gmm/means"] = np.zeros((3, 5))
    records["member/0/Si/head_mve_W1"] = np.zeros((2, 2))
    records["calibration/nll/energy/gmm"] = np.array([1.0, 0.0, 1e-6])
    validate_model_records(records)
    model = CppModel(write_model_file(tmp_path / "extra.mlip", records))
    assert model.methods() == ["none", "ensemble", "posterior"]


def _rehashed(body: bytes) -> bytes:
    """A container with a valid checksum over ``body``."""
    return body + _core.fnv1a64(body).to_bytes(8, "little")


def test_corrupt_files_are_clear_errors(tmp_path, model_path):
    data = model_path.read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "truncated"),
        "flipped": (data[:200] + bytes([data[200] ^ 1]) + data[201:], "checksum mismatch"),
        "newer": (_rehashed(data[:8] + (7).to_bytes(4, "little") + data[12:-8]), "format version 7 is newer"),
        "newer_damaged": (data[:8] + (7).to_bytes(4, "little") + data[12:], "corrupt file: checksum"),
        "text": (b"Si O\n1.0 2.0\n", "not an mlipbias model file"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.mlip"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"^{path}: .*{message}"):
            CppModel(path)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        CppModel(tmp_path / "absent.mlip")


# ------------------------------------------------------------------------------ LAMMPS smoke check


def test_lammps_plugin_run_0_matches_python(tmp_path, model_path, model):
    """plugin load + pair_style mlip/bias + run 0 gives the biased energy, forces and pressure
    of the same C++ core seen from Python (rotation-invariant quantities: LAMMPS rotates the
    cell into its lower-triangular frame)."""
    from ase.io import write

    from mlipbias.lammps import import_lammps, load_plugin

    atoms = structure(seed=13, repeat=(1, 2, 2))
    tau, tau_stress = 0.3, 0.2
    write(tmp_path / "data", atoms, format="lammps-data", specorder=list(ELEMENTS), masses=True)
    lmp = import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        load_plugin(lmp)
        lmp.commands_string(
            f"""
            units metal
            atom_style atomic
            boundary p p p
            read_data {tmp_path / "data"}
            pair_style mlip/bias {model_path} uncertainty ensemble tau {tau} tau_stress {tau_stress}
            pair_coeff * * Si O
            compute unc all pair mlip/bias
            variable U equal c_unc[1]
            thermo_style custom step pe press v_U
            run 0
            """
        )
        pe, press = lmp.get_thermo("pe"), lmp.get_thermo("press")
        U = lmp.extract_variable("U")
        forces = np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3)).reshape(-1, 3)  # ordered by atom id
    finally:
        lmp.close()
    want = model.evaluate(atoms, "ensemble", gradient=True)
    assert U == pytest.approx(want.uncertainty, rel=1e-12)
    assert pe == pytest.approx(want.energy - tau * want.uncertainty, rel=1e-12)
    biased = want.forces + tau * want.uncertainty_gradient
    np.testing.assert_allclose(np.linalg.norm(forces, axis=1), np.linalg.norm(biased, axis=1), rtol=1e-9)
    virial = want.virial + tau_stress * want.uncertainty_virial
    bar_per_eV_A3 = 1.6021765e6  # LAMMPS metal units: nktv2p
    assert press == pytest.approx(np.trace(virial) / (3 * atoms.get_volume()) * bar_per_eV_A3, rel=1e-9)
