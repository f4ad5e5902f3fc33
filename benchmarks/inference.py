"""C++ model inference speed: plain model vs uncertainty and bias gradient, against torch, one core.

Cases: the amorphous SiO2 cell shipped with mlipbias (96 atoms, 2.2 g/cm^3) repeated up to ~12,000
atoms; a BP-NN of realistic size (the default SiO2 symmetry functions, 52 per atom, 6 A cutoff;
two hidden layers of 64, tanh) with random weights: a single model with sketched gradient features
(k = 16, K = 96, 2,000 training atoms and 500 training structures for the distance method) and an
ensemble of 4. Neighbour lists are built once per size and not timed (their cost is in
benchmarks/neighbors.py).

Codes, each the best of repeated calls:

* ``cpp``: ``_core.ModelEvaluator.evaluate`` (what the LAMMPS plugin runs): plain, U only, U and
  dU/dx (the bias) for ensemble, posterior and distance;
* ``torch``: the same model in torch with the C++ descriptors and their C++ vjp
  (``mlipbias.descriptors``), the network and all derivatives by autograd: the torch path of
  training and of a torch calculator;
* ``torch-ref``: everything in torch, descriptors included (``descriptors.torch_reference``),
  up to ``--ref-max`` atoms (it stores every triplet).

Where the C++ time goes is measured, not estimated: the descriptor values and the descriptor vjp
are timed alone with the same C++ calls the evaluator makes, and forward()/backward() separately.

    OMP_NUM_THREADS=1 PYTHONPATH=python .venv/bin/python benchmarks/inference.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before the C++ core (OpenMP) is loaded

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine_info import machine
from tqdm import tqdm

from mlipbias import _core
from mlipbias.descriptors import SymmetryFunctions, pair_gradients
from mlipbias.descriptors.torch_reference import symmetry_functions as torch_symmetry_functions
from mlipbias.inference import CppModel
from mlipbias.modelfile import validate_model_records, write_model_file
from mlipbias.structures import default_structure

RESULTS = Path(__file__).resolve().parent / "results" / "inference.json"
HIDDEN = (64, 64)
K_SKETCH = 16


# ------------------------------------------------------------------------------ the model


def model_records(
    sf: SymmetryFunctions, G: np.ndarray, species: np.ndarray, n_members: int, seed: int
) -> dict:
    """Random weights of realistic size; input scaling from the descriptors of the cell."""
    rng = np.random.default_rng(seed)
    records = {
        "meta/format": "mlipbias-model",
        "meta/mlipbias_version": "benchmark",
        "meta/units": "eV Angstrom",
        **sf.to_records(),
        "model/activation": "tanh",
        "model/n_members": np.array([n_members]),
        "model/n_layers": np.array([len(HIDDEN) + 1]),
    }
    for e, el in enumerate(sf.elements):
        records[f"scaling/{el}/mean"] = G[species == e].mean(0)
        records[f"scaling/{el}/std"] = G[species == e].std(0) + 1e-3
    widths = [sf.n_sf, *HIDDEN, 1]
    for m in range(n_members):
        records[f"member/{m}/energy_scale"] = np.array([1.0])
        records[f"member/{m}/energy_shift"] = rng.normal(size=sf.n_elements)
        for el in sf.elements:
            for layer in range(1, len(widths)):
                n_in, n_out = widths[layer - 1], widths[layer]
                records[f"member/{m}/{el}/W{layer}"] = rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)
                records[f"member/{m}/{el}/b{layer}"] = 0.1 * rng.normal(size=n_out)
    if n_members > 1:
        records["uq/methods"] = "ensemble"
        return records
    K = sf.n_elements * (len(widths) - 1) * K_SKETCH
    records["uq/methods"] = "posterior distance"
    records["uq/gradient/k"] = np.array([K_SKETCH])
    for el in sf.elements:
        for layer in range(1, len(widths)):
            records[f"uq/gradient/{el}/R1_{layer}"] = rng.normal(size=(K_SKETCH, widths[layer]))
            records[f"uq/gradient/{el}/R2_{layer}"] = rng.normal(size=(K_SKETCH, widths[layer - 1] + 1))
    records["uq/gradient/lambda"] = np.array([0.1])
    for name, n in (("precision_energy", 500), ("precision_atom", 2000)):
        X = rng.normal(size=(n, K))
        records[f"uq/gradient/{name}"] = np.linalg.inv(X.T @ X / n + 0.1 * np.eye(K))
    records["uq/gradient/train_energy"] = rng.normal(size=(500, K))
    records["uq/gradient/train_atom"] = rng.normal(size=(2000, K))
    return records


class TorchModel:
    """The same network in torch: member energies per atom and member 0's sketched features."""

    def __init__(self, records: dict):
        self.elements = records["elements"].split()
        self.n_members = int(records["model/n_members"][0])
        self.n_layers = int(records["model/n_layers"][0])
        self.r = {k: torch.tensor(np.asarray(v)) for k, v in records.items() if not isinstance(v, str)}
        self.k = int(records["uq/gradient/k"][0]) if "uq/gradient/k" in records else 0

    def __call__(self, G: torch.Tensor, species: torch.Tensor, features: bool):
        r, L, k = self.r, self.n_layers, self.k
        n = len(G)
        E = G.new_zeros(self.n_members, n)
        phi = G.new_zeros(n, len(self.elements) * L * k) if features else None
        for e, el in enumerate(self.elements):
            rows = torch.nonzero(species == e).flatten()
            x = (G[rows] - r[f"scaling/{el}/mean"]) / r[f"scaling/{el}/std"]
            for m in range(self.n_members):
                h, inputs, zs = x, [], []
                for layer in range(1, L + 1):
                    inputs.append(h)
                    z = torch.addmm(r[f"member/{m}/{el}/b{layer}"], h, r[f"member/{m}/{el}/W{layer}"].T)
                    zs.append(z)
                    h = torch.tanh(z) if layer < L else z
                E_el = r[f"member/{m}/energy_scale"][0] * h[:, 0] + r[f"member/{m}/energy_shift"][e]
                E = E.index_put((torch.tensor(m), rows), E_el)
                if m == 0 and features:
                    deltas = torch.autograd.grad(E_el.sum(), zs, create_graph=True)
                    for layer, (delta, a) in enumerate(zip(deltas, inputs, strict=True), start=1):
                        a1 = torch.cat([a, a.new_ones(len(a), 1)], 1)
                        R1, R2 = r[f"uq/gradient/{el}/R1_{layer}"], r[f"uq/gradient/{el}/R2_{layer}"]
                        start = (e * L + layer - 1) * k
                        cols = torch.arange(start, start + k)
                        phi = phi.index_put(
                            (rows[:, None], cols[None, :]), (delta @ R1.T) * (a1 @ R2.T) / k**0.5
                        )
        return E, phi

    def uncertainty(self, E: torch.Tensor, phi: torch.Tensor | None, method: str) -> torch.Tensor:
        r = self.r
        if method == "ensemble":
            Em = E.sum(1)
            return torch.sqrt(((Em - Em.mean()) ** 2).sum() / (len(Em) - 1))
        Phi = phi.sum(0)
        if method == "posterior":
            return torch.sqrt(Phi @ r["uq/gradient/precision_energy"] @ Phi)
        n = len(phi)
        return n * torch.linalg.vector_norm(Phi / n - r["uq/gradient/train_energy"], dim=1).min()


def scatter(pair_grads: np.ndarray, i: np.ndarray, j: np.ndarray, D: np.ndarray, n: int):
    """Forces (or dU/dx with the other sign) and virial from pair gradients, as the C++ does."""
    F = np.zeros((n, 3))
    np.add.at(F, i, pair_grads)
    np.add.at(F, j, -pair_grads)
    return F, -D.T @ pair_grads


def torch_bridge(tm: TorchModel, sf: SymmetryFunctions, nd, method: str, gradient: bool):
    """C++ descriptors and vjp, torch network and autograd."""
    G = torch.tensor(sf.compute_neighbours(nd).G, requires_grad=True)
    species = torch.from_numpy(nd.species)
    features = method in ("posterior", "distance")
    E, phi = tm(G, species, features)
    energy = E.mean(0).sum()
    outputs = [energy]
    if method != "none":
        outputs.append(tm.uncertainty(E, phi, method))
    if gradient:
        dLdG = torch.stack([torch.autograd.grad(o, G, retain_graph=True)[0] for o in outputs])
    else:
        dLdG = torch.autograd.grad(energy, G)[0][None]
    pair = pair_gradients(dLdG, sf, nd).numpy()
    return [scatter(p, nd.i, nd.j, nd.D, nd.n_atoms) for p in pair]


def torch_reference(tm: TorchModel, sf: SymmetryFunctions, nd, method: str, gradient: bool):
    """Everything in torch, descriptors included; derivatives with respect to the pair vectors."""
    D = torch.tensor(nd.D, requires_grad=True)
    species = torch.from_numpy(nd.species)
    G = torch_symmetry_functions(
        sf.table, species, torch.from_numpy(nd.i), torch.from_numpy(nd.j), D, nd.n_atoms
    )
    E, phi = tm(G, species, method in ("posterior", "distance"))
    outputs = [E.mean(0).sum()]
    if gradient:
        outputs.append(tm.uncertainty(E, phi, method))
    grads = [torch.autograd.grad(o, D, retain_graph=True)[0].numpy() for o in outputs]
    return [scatter(g, nd.i, nd.j, nd.D, nd.n_atoms) for g in grads]


# ------------------------------------------------------------------------------ timing


class InstructionCounter:
    """User-space instructions retired by this thread (Linux perf_event_open), which other load on the
    machine does not change; None where the kernel does not allow it."""

    def __init__(self):
        self.fd = None
        if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
            return
        import ctypes
        import struct

        attr = bytearray(128)  # struct perf_event_attr
        struct.pack_into("IIQ", attr, 0, 0, 128, 1)  # PERF_TYPE_HARDWARE, size, PERF_COUNT_HW_INSTRUCTIONS
        struct.pack_into("Q", attr, 40, (1 << 5) | (1 << 6))  # exclude_kernel, exclude_hv
        syscall = ctypes.CDLL(None, use_errno=True).syscall
        fd = syscall(298, (ctypes.c_char * 128).from_buffer(attr), 0, -1, -1, 0)  # this thread, any CPU
        self.fd = fd if fd >= 0 else None

    def read(self) -> int:
        return int.from_bytes(os.read(self.fd, 8), "little") if self.fd is not None else 0


COUNTER = InstructionCounter()


def interleaved_times(timers: dict, budget: float, min_rounds: int = 2, max_rounds: int = 10) -> dict:
    """(least CPU seconds, least instruction count) of every thunk over rounds that call each thunk once
    in turn.

    CPU time of this process, not wall time: on a shared machine other processes take turns on
    the cores, which inflates wall times at random but not the CPU time of one thread's work
    (OMP_NUM_THREADS=1 and one torch thread make the two equal on an idle machine). Interleaving
    the cases spreads slow periods of the machine over all of them, so ratios stay fair. The
    instruction count does not depend on the load at all (0 where perf events are not allowed).
    """
    best = {key: (np.inf, np.inf) for key in timers}
    spent = 0.0
    for round_ in range(max_rounds):
        if round_ >= min_rounds and spent > budget:
            break
        for key, fn in timers.items():
            i0, t0 = COUNTER.read(), time.process_time()
            fn()
            elapsed, instructions = time.process_time() - t0, COUNTER.read() - i0
            best[key] = (min(best[key][0], elapsed), min(best[key][1], instructions))
            spent += elapsed
    return best


def check_torch_paths(files, torch_models, sf, atoms) -> None:
    """The peers compute the same numbers as the C++ (else the timings would compare different work)."""
    nd = sf.neighbours(atoms)
    for file, method in (("single", "posterior"), ("ensemble", "ensemble")):
        want = files[file].evaluate(atoms, method, gradient=True)
        for peer in (torch_bridge, torch_reference):
            (forces, virial), (minus_gradient, u_virial) = peer(torch_models[file], sf, nd, method, True)
            scale = np.abs(want.forces).max()
            assert np.abs(forces - want.forces).max() < 1e-9 * scale, (peer.__name__, method, "forces")
            assert np.abs(virial - want.virial).max() < 1e-9 * np.abs(want.virial).max(), (
                peer.__name__,
                "virial",
            )
            err = np.abs(minus_gradient + want.uncertainty_gradient).max()
            assert err < 1e-9 * np.abs(want.uncertainty_gradient).max(), (peer.__name__, method, "dU/dx")


# (label, model file, method, gradient, atom_uncertainty)
CPP_CASES = [
    ("plain", "single", "none", False, False),
    ("posterior U", "single", "posterior", False, False),
    ("posterior bias", "single", "posterior", True, False),
    ("distance bias", "single", "distance", True, False),
    ("plain M=4", "ensemble", "none", False, False),
    ("ensemble U", "ensemble", "ensemble", False, False),
    ("ensemble bias", "ensemble", "ensemble", True, False),
    ("ensemble bias + U_i", "ensemble", "ensemble", True, True),
]
TORCH_CASES = [
    ("plain", "single", "none", False),
    ("posterior bias", "single", "posterior", True),
    ("ensemble bias", "ensemble", "ensemble", True),
]


def time_size(atoms, files: dict, torch_models: dict, sf: SymmetryFunctions, args) -> dict:
    """CPU seconds of every case on one structure."""
    n = len(atoms)
    nd = sf.neighbours(atoms)
    neighbours = files["single"].neighbours(atoms)
    timers = {}
    for label, file, method, gradient, atom_u in CPP_CASES:
        ev = _core.ModelEvaluator(files[file].core, method, gradient, atom_u)
        timers["cpp", label] = lambda ev=ev: ev.evaluate(*neighbours)
        if label in ("plain", "posterior bias", "ensemble bias"):
            sums = ev.forward(*neighbours)
            timers["split", f"{label}: forward"] = lambda ev=ev: ev.forward(*neighbours)
            timers["split", f"{label}: backward"] = lambda ev=ev, sums=sums: ev.backward(sums)
    weights = np.random.default_rng(0).normal(size=(2, n, sf.n_sf))
    timers["split", "descriptors"] = lambda: sf.compute_neighbours(nd)
    timers["split", "vjp 1 rhs"] = lambda: sf.vjp(nd, weights[0])
    timers["split", "vjp 2 rhs"] = lambda: sf.vjp(nd, weights)
    for label, file, method, gradient in TORCH_CASES:
        tm = torch_models[file]
        if n <= args.torch_max:
            timers["torch", label] = lambda tm=tm, m=method, g=gradient: torch_bridge(tm, sf, nd, m, g)
        if n <= args.ref_max:
            timers["torch-ref", label] = lambda tm=tm, m=method, g=gradient: torch_reference(tm, sf, nd, m, g)
    times = interleaved_times(timers, budget=args.budget)
    case = {"n_atoms": n, "n_pairs": int(nd.n_pairs), "cpp": {}, "split": {}, "torch": {}, "torch-ref": {}}
    case["instructions"] = {}
    for (group, label), (t, instructions) in times.items():
        case[group][label] = t
        if group in ("cpp", "split"):
            case["instructions"][label] = instructions
    return case


def time_networks(files: dict, n: int = 3000) -> dict:
    """Per-atom CPU time of the networks alone: isolated atoms (7 A apart, beyond the cutoff) have no
    neighbours, so forward() is the network passes and backward() the uncertainty part (tangent pass)."""
    from ase import Atoms

    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * 7.0
    atoms = Atoms(["Si", "O"] * (n // 2), positions=grid, cell=[side * 7.0] * 3, pbc=True)
    neighbours = files["single"].neighbours(atoms)
    assert len(neighbours[2]) == 0
    timers = {}
    for label, file, method, gradient in (
        ("members=1", "single", "none", False),
        ("members=4", "ensemble", "none", False),
        ("members=1 posterior bias", "single", "posterior", True),
        ("members=4 ensemble bias", "ensemble", "ensemble", True),
    ):
        ev = _core.ModelEvaluator(files[file].core, method, gradient)
        sums = ev.forward(*neighbours)
        timers[f"{label}: forward"] = lambda ev=ev: ev.forward(*neighbours)
        timers[f"{label}: backward"] = lambda ev=ev, sums=sums: ev.backward(sums)
    times = interleaved_times(timers, budget=10.0, min_rounds=5)
    return {key: {"us": t / n * 1e6, "instructions": i / n} for key, (t, i) in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--repeats", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="cell repeats per axis"
    )
    parser.add_argument("--ref-max", type=int, default=768, help="largest N for the all-torch reference")
    parser.add_argument("--torch-max", type=int, default=20000, help="largest N for the torch network")
    parser.add_argument("--budget", type=float, default=30.0, help="CPU seconds of timing per size")
    parser.add_argument("--out", "--output", dest="out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.set_default_dtype(torch.float64)

    cell = default_structure("sio2-amorphous-96")
    sf = SymmetryFunctions.defaults("SiO2")
    G0 = sf.compute(cell).G
    species0 = sf.species(cell)
    report = {
        "benchmark": "inference",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "model": {
            "n_sf": sf.n_sf,
            "cutoff": sf.cutoff,
            "hidden": HIDDEN,
            "k": K_SKETCH,
            "activation": "tanh",
        },
        "cases": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        files, torch_models = {}, {}
        for name, members in (("single", 1), ("ensemble", 4)):
            records = model_records(sf, G0, species0, members, seed=members)
            validate_model_records(records)
            files[name] = CppModel(write_model_file(Path(tmp) / f"{name}.mlip", records))
            torch_models[name] = TorchModel(records)
        check_torch_paths(files, torch_models, sf, cell)
        report["networks_per_atom"] = time_networks(files)
        for rep in tqdm(args.repeats, desc="sizes", file=sys.stderr):
            case = time_size(cell.repeat(rep), files, torch_models, sf, args)
            report["cases"].append(case)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # keep every finished size
    print_table(report)
    return 0


def print_table(report: dict) -> None:
    rows = report["cases"]
    print("\nC++ per atom (us) and ratios to the plain model of the same file")
    labels = [c[0] for c in CPP_CASES]
    print("| N | " + " | ".join(labels) + " |")
    print("|---:|" + "---:|" * len(labels))
    for c in rows:
        n = c["n_atoms"]
        cells = [f"{c['cpp'][lab] / n * 1e6:.0f}" for lab in labels]
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    ratio_labels = ["posterior U", "posterior bias", "distance bias", "ensemble U", "ensemble bias", "+ U_i"]
    print("\n| N | " + " | ".join(ratio_labels) + " |")
    print("|---:|" + "---:|" * len(ratio_labels))
    for c in rows:
        p, e = c["cpp"]["plain"], c["cpp"]["plain M=4"]
        ratios = [c["cpp"][lab] / p for lab in ("posterior U", "posterior bias", "distance bias")]
        ratios += [c["cpp"][lab] / e for lab in ("ensemble U", "ensemble bias", "ensemble bias + U_i")]
        print(f"| {c['n_atoms']:,} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    if rows and rows[0]["instructions"].get("plain"):
        print("\nthe same ratios in instructions retired (independent of the load)")
        print("| N | " + " | ".join(ratio_labels) + " |")
        print("|---:|" + "---:|" * len(ratio_labels))
        for c in rows:
            ins = c["instructions"]
            p, e = ins["plain"], ins["plain M=4"]
            ratios = [ins[lab] / p for lab in ("posterior U", "posterior bias", "distance bias")]
            ratios += [ins[lab] / e for lab in ("ensemble U", "ensemble bias", "ensemble bias + U_i")]
            print(f"| {c['n_atoms']:,} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    print("\nnetworks alone, per atom (us, isolated atoms):")
    for key, v in report["networks_per_atom"].items():
        print(f"  {key}: {v['us']:.1f} us, {v['instructions']:.0f} instructions")
    print("\nwhere the C++ time goes, per atom (us): forward, backward, and timed alone: descriptors, vjp")
    print("| N | case | total | forward | backward | descriptors | vjp |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for c in rows:
        n, s = c["n_atoms"], c["split"]
        for label, rhs in (("plain", 1), ("posterior bias", 2), ("ensemble bias", 2)):
            f, b = s[f"{label}: forward"], s[f"{label}: backward"]
            parts = [f + b, f, b, s["descriptors"], s[f"vjp {rhs} rhs"]]
            print(f"| {n:,} | {label} | " + " | ".join(f"{x / n * 1e6:.0f}" for x in parts) + " |")
    if rows and rows[0]["instructions"].get("plain"):
        print("\nthe same in thousands of instructions per atom")
        for c in rows:
            n, ins = c["n_atoms"], c["instructions"]
            for label, rhs in (("plain", 1), ("posterior bias", 2), ("ensemble bias", 2)):
                f, b = ins[f"{label}: forward"], ins[f"{label}: backward"]
                parts = [f + b, f, b, ins["descriptors"], ins[f"vjp {rhs} rhs"]]
                print(f"| {n:,} | {label} | " + " | ".join(f"{x / n / 1e3:.0f}" for x in parts) + " |")
    print("\ntorch / C++ (same case)")
    peers = ["plain: torch", "posterior bias: torch", "ensemble bias: torch", "plain: ref", "posterior: ref"]
    print("| N | " + " | ".join(peers) + " |")
    print("|---:|" + "---:|" * len(peers))
    for c in rows:
        cells = []
        for key, label in (
            ("torch", "plain"),
            ("torch", "posterior bias"),
            ("torch", "ensemble bias"),
            ("torch-ref", "plain"),
            ("torch-ref", "posterior bias"),
        ):
            t = c[key].get(label)
            cells.append(f"{t / c['cpp'][label]:.1f}" if t else "")
        print(f"| {c['n_atoms']:,} | " + " | ".join(cells) + " |")
    large = [c for c in rows if c["n_atoms"] >= 768]
    if len(large) >= 2:
        n = np.array([c["n_atoms"] for c in large])
        for label in ("plain", "posterior bias", "ensemble bias"):
            slope = np.polyfit(np.log(n), np.log([c["cpp"][label] for c in large]), 1)[0]
            print(f"C++ {label}: time ~ N^{slope:.2f} for N >= 768")


if __name__ == "__main__":
    raise SystemExit(main())
