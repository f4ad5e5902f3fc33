"""Training throughput (structures/s) of the BP-NN on BKS SiO2 96-atom cells, against a pure-torch peer.

Cases x codes, in one process:

- cases: ``energies`` (loss on energies only, as seed 001) with 1 and 3 ensemble members, and
  ``forces`` (energies + forces, 1 member);
- codes: ``mlipbias`` (descriptors computed once by the C++ core; force training through the C++
  vector-Jacobian / Jacobian-vector products, :mod:`mlipbias.descriptors.autograd`) and
  ``torch-reference`` (the same network, with the descriptors recomputed from the pair vectors in
  every step by :mod:`mlipbias.descriptors.torch_reference` and differentiated by torch autograd,
  as a pure-torch BP-NN without a C++ core would do).

A step is forward, loss, backward and an Adam update on one mini-batch; throughput is structures per
second after one warm-up step, from the best wall time of ``--repeats`` and from the mean CPU time
(steadier on a shared machine). The one-off cost of the C++ descriptors per structure is reported
too. Writes ``benchmarks/results/training.json``.

    OMP_NUM_THREADS=1 PYTHONPATH=python .venv/bin/python benchmarks/training.py --data sio2.db
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine_info import machine

from mlipbias.datasets import generate, load_dataset
from mlipbias.descriptors import SymmetryFunctions, atom_forces
from mlipbias.descriptors.torch_reference import symmetry_functions as reference_descriptors
from mlipbias.models import AtomsData, ModelSettings, TrainingSettings, UncertaintySettings
from mlipbias.models.data import structure_sum
from mlipbias.models.training import batch_loss, build_network

RESULTS = Path(__file__).parent / "results" / "training.json"


def dataset(path: Path, n: int) -> list:
    # Made when missing, extended (generate resumes) when an earlier, smaller run made it.
    if not path.exists() or len(load_dataset(path, f"id<={n}")) < n:
        from mlipbias.structures import default_structure

        generate(
            path,
            default_structure("sio2-amorphous-96"),
            "bks",
            n_samples=n,
            seed=0,
            max_norm=1.0,
            structure_name="sio2-amorphous-96",
            progress=True,
        )
    structures = load_dataset(path, f"id<={n}")
    if len(structures) < n:
        raise ValueError(f"{path} has {len(structures)} structures, the benchmark needs {n}")
    return structures[:n]


def time_steps(step, batches, repeats: int) -> tuple[float, float]:
    """(best wall seconds, mean CPU seconds) per step over the batches, after one warm-up step.

    CPU time is steadier than wall time on a shared machine; both are reported.
    """
    step(batches[0])
    best, cpu = np.inf, []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            step(batch)
        best = min(best, (time.perf_counter() - start) / len(batches))
        cpu.append((time.process_time() - start_cpu) / len(batches))
    return best, float(np.mean(cpu))


def mlipbias_step(net, data, settings, uq):
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    neighbours = settings.force_weight > 0

    def step(indices):
        batch = data.batch(indices, neighbours=neighbours)
        optimizer.zero_grad(set_to_none=True)
        loss, _, _ = batch_loss(net, batch, settings, uq, create_graph=True)
        loss.backward()
        optimizer.step()

    return step


def reference_step(net, data, structures, sf, settings):
    """Descriptors from positions by the torch reference in every step; forces by double backward."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    table = torch.as_tensor(np.array(sf.table))
    nbs = [sf.neighbours(a) for a in structures]

    def step(indices):
        optimizer.zero_grad(set_to_none=True)
        batch = data.batch(indices, neighbours=False)
        parts = [nbs[k] for k in indices]
        from mlipbias.descriptors import NeighbourData

        nb = NeighbourData.concatenate(parts)
        D = torch.as_tensor(nb.D).requires_grad_(settings.force_weight > 0)
        G = reference_descriptors(table, nb.species, nb.i, nb.j, D, nb.n_atoms)
        out = net(G, batch.species)
        energies = structure_sum(out.energy, batch.structure, batch.n_structures)
        loss = (((energies - batch.energy) / batch.n_atoms) ** 2).mean()
        if settings.force_weight > 0:
            (dE_dD,) = torch.autograd.grad(energies.sum(), D, create_graph=True)
            forces = atom_forces(dE_dD, nb.i, nb.j, nb.n_atoms)
            loss = loss + settings.force_weight * ((forces - batch.forces) ** 2).mean()
        loss.backward()
        optimizer.step()

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        default=str(Path(tempfile.gettempdir()) / "mlipbias-benchmarks" / "sio2-96.db"),
        help="BKS SiO2 96-atom dataset, made if missing (default: in the temporary folder)",
    )
    parser.add_argument("--n-structures", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="structures per step (energies)")
    parser.add_argument("--force-batch-size", type=int, default=2, help="structures per step (forces)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps of mlipbias per repeat")
    parser.add_argument("--reference-steps", type=int, default=2, help="timed steps of the torch reference")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    path = Path(args.data)
    path.parent.mkdir(parents=True, exist_ok=True)
    structures = dataset(path, args.n_structures)
    sf = SymmetryFunctions.defaults("SiO2")
    start = time.perf_counter()
    data = AtomsData(structures, sf, progress=False)
    descriptor_seconds = (time.perf_counter() - start) / len(structures)
    print(f"C++ descriptors and pairs: {1000 * descriptor_seconds:.1f} ms per structure (once)")
    rows = []
    cases = [
        ("energies", 1, 0.0, args.batch_size),
        ("energies", 3, 0.0, args.batch_size),
        ("forces", 1, 1.0, args.force_batch_size),
    ]
    n = len(structures)
    for case, members, force_weight, batch_size in cases:
        settings = TrainingSettings(force_weight=force_weight, device="cpu")
        uq = UncertaintySettings(methods=("ensemble",) if members > 1 else (), n_members=max(members, 2))
        result = {"case": case, "members": members, "batch_size": batch_size}
        for code, steps in (("mlipbias", args.steps), ("torch-reference", args.reference_steps)):
            batches = [[(k * batch_size + b) % n for b in range(batch_size)] for k in range(steps)]
            net = build_network(data, ModelSettings(), uq, seed=0)
            if code == "mlipbias":
                step = mlipbias_step(net, data, settings, uq)
            else:
                step = reference_step(net, data, structures, sf, settings)
            wall, cpu = time_steps(step, batches, args.repeats)
            result[code] = batch_size / wall
            result[f"{code}_cpu"] = batch_size / cpu
        result["ratio"] = result["mlipbias"] / result["torch-reference"]
        result["ratio_cpu"] = result["mlipbias_cpu"] / result["torch-reference_cpu"]
        rows.append(result)
        print(
            f"{case:9s} M={members}  mlipbias {result['mlipbias']:8.1f} structures/s "
            f"(CPU time: {result['mlipbias_cpu']:8.1f})   torch-reference {result['torch-reference']:8.2f} "
            f"(CPU time: {result['torch-reference_cpu']:6.2f})   ratio {result['ratio']:.0f} "
            f"(CPU time: {result['ratio_cpu']:.0f})"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "training throughput, BKS SiO2 96-atom cells, 2 x 30 tanh, 52 default SiO2 functions",
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "descriptor_ms_per_structure": 1000 * descriptor_seconds,
        "rows": rows,
    }
    args.output.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
