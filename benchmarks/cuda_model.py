"""GM-NN with the bias on a CUDA device: atom-steps per second and the CUDA-vs-C++ agreement.

Needs a GPU: without one it prints why and exits with status 0 (nothing to measure). With
``--host-check`` it runs the same stages on the host instead (no GPU, no timing): the agreement of
the math the kernels run with the C++ evaluator at the published size.

One run, random weights of the published sizes (as benchmarks/gmnn_inference.py): GM-NN at seed
002's size (7 Gaussians, 5 radial functions, 8 contraction groups = 360 features, two hidden
layers of 512, SiLU, 6 A cutoff) and a small one (64-64), with sketched gradient features
(k = 16) and the posterior uncertainty. Structures: the shipped 96-atom amorphous SiO2 cell
repeated up to 393,216 atoms; neighbour lists built once on the host (not timed).

Every step computes energies, forces, virial, U, dU/dx, its virial and the bias forces
(``mlipbias.gpu.GMNNDevice``, the stages of cpp/gmnn_stages.hpp). Columns:

* CUDA atom-steps/s: ``time_runs`` (the device only: no neighbour list, no copies), best of 3;
* CUDA with copies: one ``evaluate`` (neighbours to the device, results back), best of 3;
* C++ atom-steps/s: ``CppModel.evaluate_neighbours`` on all CPU cores (OpenMP), the peer of the
  same run (up to 49,152 atoms, where it still takes seconds);
* agreement: max |CUDA - C++| / max |C++| of forces and bias forces, relative difference of E and U;
* network FLOP per atom-step (2 per multiply-add of the dense layers: forward and backward of every
  member, and for the bias member 0's forward again, its tangent forward and the two products of
  the tangent backward; the descriptor and the sketches add a few per cent).

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
    from mlipbias.models import AtomsData, save_model
    from mlipbias.models.gmnn import GMNN

    torch.set_num_threads(1)
    name = "cuda_model_host_check.json" if args.host_check else "cuda_model.json"
    results = Path(__file__).resolve().parent / "results" / name
    data_file = Path(__file__).resolve().parents[1] / "python/mlipbias/data_files/sio2-amorphous-96.extxyz"
    cell = read(data_file)
    cases = {"GM-NN 360 x 512 x 512": (512, 512), "GM-NN 360 x 64 x 64": (64, 64)}
    cpp_limit = 50_000
    tau = 0.2
    rows = []
    info = machine()
    info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    command = "PYTHONPATH=python:tests python benchmarks/cuda_model.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as folder:
        for case, hidden in cases.items():
            net = GMNN(GaussianMoments(["O", "Si"], 6.0), hidden)
            model = with_gradient_features(net, AtomsData([cell], net.descriptor, labels=False))
            path = save_model(model, Path(folder) / "gm.mlip")
            cpp = CppModel(path)
            device = gpu.GMNNDevice(path)
            flop = network_flop(net.sizes, net.n_members)
            taus = [tau] * len(cpp.elements)
            for k in repeats:
                atoms = cell.repeat((k, k, k))
                n = len(atoms)
                neighbours = cpp.neighbours(atoms)
                row = {"case": case, "atoms": n, "pairs": int(len(neighbours[2])), "network_flop": flop}
                if args.host_check:
                    out = _core_host(cpp, neighbours, taus)
                else:
                    ev = device._device()
                    out = ev.evaluate(*neighbours, "posterior", True, taus)
                    copies = min(_timed(ev.evaluate, *neighbours, "posterior", True, taus) for _ in range(3))
                    steps = max(3, int(2e6 // n))
                    device_s = min(ev.time_runs(steps) / steps for _ in range(3))
                    row["cuda_atom_steps_per_s"] = n / device_s
                    row["cuda_with_copies_atom_steps_per_s"] = n / copies
                    row["cuda_network_tflop_per_s"] = flop * n / device_s / 1e12
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
    header = ["case", "atoms", "network MFLOP/atom-step", "CUDA atom-steps/s", "with copies"]
    header += ["C++ atom-steps/s", "CUDA / C++", "max rel. diff (E, F, F_bias, U)"]
    print("| " + " | ".join(header) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        agree = "-"
        if "forces_rel" in r:
            agree = ", ".join(
                f"{r[k]:.1e}" for k in ("energy_rel", "forces_rel", "bias_forces_rel", "uncertainty_rel")
            )
        cells = [r["case"], str(r["atoms"]), f"{r['network_flop'] / 1e6:.2f}"]
        cells += [_col(r, k) for k in ("cuda_atom_steps_per_s", "cuda_with_copies_atom_steps_per_s")]
        cells += [_col(r, "cpp_atom_steps_per_s"), _col(r, "cuda_over_cpp"), agree]
        print("| " + " | ".join(cells) + " |")
    print(f"wrote {results}")
    return 0


def _core_host(cpp, neighbours, taus) -> dict:
    from mlipbias import _core

    return _core.gmnn_evaluate_staged_host(cpp.core, *neighbours, "posterior", True, taus)


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
