"""GM-NN and BP-NN with the bias on a CUDA device: atom-steps per second and the CUDA-vs-C++ agreement.

Needs a GPU: without one it prints why and exits with status 0 (nothing to measure). With
``--host-check`` it runs the same stages on the host instead (no GPU, no timing): the agreement of
the math the kernels run with the C++ evaluator at the published size.

One run, random weights of the published sizes (as benchmarks/gmnn_inference.py): GM-NN at seed
002's size (7 Gaussians, 5 radial functions, 8 contraction groups = 360 features, two hidden
layers of 512, SiLU, 6 A cutoff) and a small one (64-64), with sketched gradient features
(k = 16) and the posterior uncertainty; the shipped SiO2 BP-NN (examples/lammps/sio2_gradient.mlip:
16 G2, 12 G4 and 24 G5 at 6 A, 52-30-30-1 tanh, one member, k = 32) as shipped and with its G4/G5 at
a 3.5 A angular cutoff (``SymmetryFunctions.with_angular_cutoff``; same weights, a different model,
timed for the cost of the triplets). Structures: the shipped 96-atom amorphous SiO2 cell repeated up
to 393,216 atoms; neighbour lists built once on the host (not timed).

Every step computes energies, forces, virial, U, dU/dx, its virial and the bias forces
(``mlipbias.gpu.ModelDevice``: the stages of cpp/gmnn_stages.hpp or cpp/bpnn_stages.hpp). Columns:

* CUDA atom-steps/s: ``time_runs`` (the device only: no neighbour list, no copies), best of 3;
* CUDA with copies: one ``evaluate`` (neighbours to the device, results back), best of 3;
* C++ atom-steps/s: ``CppModel.evaluate_neighbours`` on all CPU cores (OpenMP), the peer of the
  same run (up to 49,152 atoms, where it still takes seconds);
* agreement: max |CUDA - C++| / max |C++| of forces and bias forces, relative difference of E and U;
* network FLOP per atom-step (2 per multiply-add of the dense layers: forward and backward of every
  member, and for the bias member 0's forward again, its tangent forward and the two products of
  the tangent backward; for GM-NN the descriptor and the sketches add a few per cent);
* BP-NN descriptor FLOP per atom-step, an estimate from the neighbour list (``bpnn_descriptor_flop``:
  the stages' triplet loops, counted per term, with exp, cos and sin at 20 FLOP each): it dominates
  the BP-NN cost and bounds its speed.

    PYTHONPATH=python:tests python benchmarks/cuda_model.py     # writes benchmarks/results/cuda_model.json
    PYTHONPATH=python:tests python benchmarks/cuda_model.py --host-check   # any machine

Target of issue 12 on an H100: >= 10^7 atom-steps/s with the bias on.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))  # the C++ peer on all cores


def network_flop(sizes: list[int], n_members: int) -> int:
    """FLOP of the dense layers per atom-step with the bias (see the docstring)."""
    products = [a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    total = sum(products)
    return 2 * (2 * n_members * total + total + (total - products[0]) + 2 * total)


def bpnn_descriptor_flop(table: np.ndarray, neighbours, n_elements: int) -> float:
    """Estimated FLOP per atom-step of the BP-NN stages' symmetry functions with the bias: the values
    once and the reverse pass twice (energy row, then dU/dG), as cpp/symmetry_functions_math.hpp
    runs them (every angular function per triplet, exponentials again for each new (eta, rc) in a
    row of functions, cutoff functions for each new rc). Weights: exp, cos, sin 20; sqrt, division
    4; +, * 1."""
    species, offsets, j, D = neighbours
    r = np.linalg.norm(D, axis=1)
    kinds, rc = table[:, 0], table[:, 7]
    angular_rc = rc[kinds != 2].max() if (kinds != 2).any() else 0.0
    g2 = np.array([np.sum((kinds == 2) & (table[:, 1] == e)) for e in range(n_elements)])
    # per (a, b) element pair: functions, runs of one (eta, rc) and of one rc in table order
    funcs, runs, cut_runs = (np.zeros((n_elements, n_elements)) for _ in range(3))
    for a in range(n_elements):
        for b in range(n_elements):
            rows = table[
                (kinds != 2)
                & (((table[:, 1] == a) & (table[:, 2] == b)) | ((table[:, 1] == b) & (table[:, 2] == a)))
            ]
            funcs[a, b] = len(rows)
            runs[a, b] = sum(
                1 for k in range(len(rows)) if k == 0 or tuple(rows[k, [3, 7]]) != tuple(rows[k - 1, [3, 7]])
            )
            cut_runs[a, b] = sum(1 for k in range(len(rows)) if k == 0 or rows[k, 7] != rows[k - 1, 7])
    n_centers = len(offsets) - 1
    centre = np.repeat(np.arange(n_centers), np.diff(offsets))
    z = species[j]
    inside = r < rc.max()
    n_g2 = g2[z[inside]].sum()
    total = 73 * n_g2 + 2 * (75 * n_g2 + 6 * inside.sum())  # radial: values, reverse twice
    update = 3 * (20 + 4) + 12  # exponentials and derivatives at r_ij, r_ik, r_jk per new (eta, rc)
    cutoff = 3 * (20 + 20 + 6)  # cutoff functions and derivatives at r_ij, r_ik, r_jk per new rc
    counts = np.zeros((n_centers, n_elements))
    near = r < angular_rc
    np.add.at(counts, (centre[near], z[near]), 1.0)
    for a in range(n_elements):
        for b in range(a, n_elements):  # unordered pairs of entries {j, k} with elements {a, b}
            t = (counts[:, a] * (counts[:, a] - 1) / 2 if a == b else counts[:, a] * counts[:, b]).sum()
            f, u = funcs[a, b], runs[a, b] * update + cut_runs[a, b] * cutoff
            if f == 0:
                continue
            total += t * (20 + u + f * 15)  # values
            total += 2 * t * (20 + 33 + u + f * 25)  # reverse pass, twice
    return total / max(n_centers, 1)


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--repeats", type=int, nargs="+", default=None, help="repeats k of the 96-atom cell (k^3 copies)"
    )
    parser.add_argument(
        "--host-check", action="store_true", help="the stages on the host: agreement only (no GPU, no timing)"
    )
    args = parser.parse_args()
    from mlipbias import gpu

    reason = gpu.unavailable_reason()
    if reason is not None and not args.host_check:
        print(f"benchmarks/cuda_model.py needs a CUDA GPU; nothing measured ({reason}).")
        return 0
    repeats = args.repeats or ([1] if args.host_check else [2, 4, 8, 16])

    import torch
    from ase.io import read
    from gmnn_inference import with_gradient_features
    from machine_info import machine

    from mlipbias.descriptors.gaussian_moments import GaussianMoments
    from mlipbias.inference import CppModel
    from mlipbias.modelfile import read_model_file, write_model_file
    from mlipbias.models import AtomsData, save_model
    from mlipbias.models.gmnn import GMNN

    torch.set_num_threads(1)
    name = "cuda_model_host_check.json" if args.host_check else "cuda_model.json"
    results = Path(__file__).resolve().parent / "results" / name
    data_file = Path(__file__).resolve().parents[1] / "python/mlipbias/data_files/sio2-amorphous-96.extxyz"
    cell = read(data_file)
    shipped = Path(__file__).resolve().parents[1] / "examples" / "lammps" / "sio2_gradient.mlip"
    cases = {
        "GM-NN 360 x 512 x 512": (512, 512),
        "GM-NN 360 x 64 x 64": (64, 64),
        "BP-NN SiO2 52 x 30 x 30 (G4/G5 6 A)": None,
        "BP-NN SiO2 52 x 30 x 30 (G4/G5 3.5 A)": 3.5,
    }
    cpp_limit = 50_000
    tau = 0.2
    rows = []
    info = machine()
    info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    command = "PYTHONPATH=python:tests python benchmarks/cuda_model.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as folder:
        for case, setting in cases.items():
            table = None
            if case.startswith("GM-NN"):
                net = GMNN(GaussianMoments(["O", "Si"], 6.0), setting)
                model = with_gradient_features(net, AtomsData([cell], net.descriptor, labels=False))
                path = save_model(model, Path(folder) / "gm.mlip")
                flop = network_flop(net.sizes, net.n_members)
            else:
                records = read_model_file(shipped)
                table = np.array(records["descriptor/functions"], dtype=float)
                if setting is not None:
                    table[table[:, 0] != 2, 7] = setting
                records["descriptor/functions"] = table
                path = write_model_file(Path(folder) / "bp.mlip", records)
                flop = network_flop([52, 30, 30, 1], 1)
            cpp = CppModel(path)
            device = gpu.ModelDevice(path)
            taus = [tau] * len(cpp.elements)
            for k in repeats:
                atoms = cell.repeat((k, k, k))
                n = len(atoms)
                neighbours = cpp.neighbours(atoms)
                row = {"case": case, "atoms": n, "pairs": int(len(neighbours[2])), "network_flop": flop}
                if table is not None:
                    row["descriptor_flop"] = bpnn_descriptor_flop(table, neighbours, len(cpp.elements))
                if args.host_check:
                    out = _core_host(device, neighbours, taus)
                else:
                    ev = device._device()
                    out = ev.evaluate(*neighbours, "posterior", True, taus)
                    copies = min(_timed(ev.evaluate, *neighbours, "posterior", True, taus) for _ in range(3))
                    steps = max(3, int(2e6 // n))
                    device_s = min(ev.time_runs(steps) / steps for _ in range(3))
                    row["cuda_atom_steps_per_s"] = n / device_s
                    row["cuda_with_copies_atom_steps_per_s"] = n / copies
                    row["cuda_tflop_per_s"] = (flop + row.get("descriptor_flop", 0.0)) * n / device_s / 1e12
                if n <= cpp_limit:
                    evaluator = cpp.evaluator("posterior", True)
                    ref = evaluator.evaluate(*neighbours)
                    if not args.host_check:
                        cpp_s = min(_timed(evaluator.evaluate, *neighbours) for _ in range(2))
                        row["cpp_atom_steps_per_s"] = n / cpp_s
                        row["cuda_over_cpp"] = cpp_s / device_s
                    row["energy_rel"] = abs(out["energy"] - ref["energy"]) / abs(ref["energy"])
                    row["forces_rel"] = _rel(out["forces"], ref["forces"])
                    row["uncertainty_rel"] = abs(out["uncertainty"] - ref["uncertainty"]) / ref["uncertainty"]
                    row["bias_forces_rel"] = _rel(out["bias_forces"], tau * ref["uncertainty_gradient"])
                    row["virial_rel"] = _rel(out["virial"], ref["virial"])
                rows.append(row)
                print(json.dumps(row), flush=True)
                results.parent.mkdir(exist_ok=True)
                record = {"date": datetime.date.today().isoformat(), "machine": info, "command": command}
                results.write_text(json.dumps({**record, "rows": rows}, indent=1))
    print(f"\nGPU: {info['gpu']}; C++ peer: {os.environ['OMP_NUM_THREADS']} OpenMP threads; tau = {tau}")
    header = [
        "case",
        "atoms",
        "pairs/atom",
        "MFLOP/atom-step (net + descr.)",
        "CUDA atom-steps/s",
        "with copies",
    ]
    header += ["C++ atom-steps/s", "CUDA / C++", "max rel. diff (E, F, F_bias, U)"]
    print("| " + " | ".join(header) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        agree = "-"
        if "forces_rel" in r:
            agree = ", ".join(
                f"{r[k]:.1e}" for k in ("energy_rel", "forces_rel", "bias_forces_rel", "uncertainty_rel")
            )
        flop = f"{r['network_flop'] / 1e6:.2f}"
        if "descriptor_flop" in r:
            flop += f" + {r['descriptor_flop'] / 1e6:.2f}"
        cells = [r["case"], str(r["atoms"]), f"{r['pairs'] / r['atoms']:.0f}", flop]
        cells += [_col(r, k) for k in ("cuda_atom_steps_per_s", "cuda_with_copies_atom_steps_per_s")]
        cells += [_col(r, "cpp_atom_steps_per_s"), _col(r, "cuda_over_cpp"), agree]
        print("| " + " | ".join(cells) + " |")
    print(f"wrote {results}")
    return 0


def _core_host(device, neighbours, taus) -> dict:
    from mlipbias import _core

    host = (
        _core.gmnn_evaluate_staged_host
        if device.kind == "gaussian_moments"
        else _core.bpnn_evaluate_staged_host
    )
    return host(device.model.core, *neighbours, "posterior", True, taus)


def _col(row: dict, key: str) -> str:
    return f"{row[key]:.3g}" if key in row else "-"


def _timed(f, *args) -> float:
    start = time.perf_counter()
    f(*args)
    return time.perf_counter() - start


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


if __name__ == "__main__":
    sys.exit(main())
