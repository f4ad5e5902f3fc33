"""Symmetry functions: mlipbias C++ against its torch reference and dscribe's ACSF.

Cases: rattled alpha-quartz SiO2 supercells from about 100 to about 10,000 atoms, with the
default SiO2 set (52 functions, rc = 6 A). Codes (one adapter each, below):

- mlipbias C++: values; values + vjp with one and two right-hand sides (energy + forces,
  plus an uncertainty gradient); values + explicit derivatives (n_pairs x n_sf x 3).
  Pairs come from the neighbour list timed on its own row ("neighbour list": mlipbias.neighbors,
  the C++ search behind SymmetryFunctions.neighbours; ASE's in runs before it replaced it).
- torch reference: values and values + backward on the CPU; on CUDA when a device is usable.
- dscribe ACSF with the same functions (plus its G1 per species), which builds its own
  neighbour list. Its ACSF derivatives are numerical only (dscribe 2.1: 6 N descriptor
  evaluations, minutes at 108 atoms), so they are left out.

Each entry is the best of ``--repeats`` rounds in which the codes take turns (one round from
5000 atoms on). Writes benchmarks/results/descriptors.json after every size and prints a table
with ratios against dscribe's values in the same run. dscribe runs serially, so compare at
one thread:

    OMP_NUM_THREADS=1 PYTHONPATH=python .venv/bin/python benchmarks/descriptors.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase.spacegroup import crystal
from dscribe.descriptors import ACSF
from machine_info import machine

from mlipbias.descriptors import SymmetryFunctions
from mlipbias.descriptors.torch_reference import symmetry_functions as reference

SF = SymmetryFunctions.defaults("SiO2")
SUPERCELLS = [(2, 2, 3), (4, 4, 4), (6, 6, 6), (8, 8, 8), (11, 11, 9)]  # 108 .. 9801 atoms


def quartz(repeat):
    atoms = crystal(
        ["Si", "O"],
        basis=[(0.4697, 0.0, 1 / 6), (0.4135, 0.2669, 0.1191 + 1 / 6)],
        spacegroup=154,
        cellpar=[4.916, 4.916, 5.405, 90, 90, 120],
    ).repeat(repeat)
    atoms.rattle(0.1, seed=0)
    return atoms


def dscribe_acsf(sf: SymmetryFunctions) -> ACSF:
    """dscribe's ACSF with the parameters of a table whose functions share one cutoff."""
    table = sf.table
    g2 = sorted({(r[3], r[4]) for r in table if r[0] == 2})
    g4 = sorted({(r[3], r[5], r[6]) for r in table if r[0] == 4})
    g5 = sorted({(r[3], r[5], r[6]) for r in table if r[0] == 5})
    species = list(sf.elements)
    return ACSF(r_cut=sf.cutoff, g2_params=g2, g4_params=g4, g5_params=g5, species=species, periodic=True)


# ------------------------------------------------------------------ adapters: name -> (max atoms, setup)
# setup(atoms, neighbours) returns the callable that is timed.


def cpp_values(atoms, nb):
    return lambda: SF.compute_neighbours(nb)


def cpp_vjp(n_rhs):
    def setup(atoms, nb):
        w = np.random.default_rng(0).normal(size=(n_rhs, nb.n_atoms, SF.n_sf))

        def run():
            SF.compute_neighbours(nb)
            SF.vjp(nb, w)

        return run

    return setup


def cpp_derivatives(atoms, nb):
    return lambda: SF.compute_neighbours(nb, derivatives=True)


def neighbour_list(atoms, nb):
    return lambda: SF.neighbours(atoms)


def torch_reference(device, backward):
    def setup(atoms, nb):
        tensors = [torch.tensor(x, device=device) for x in (nb.species, nb.i, nb.j)]

        def run():
            D = torch.tensor(nb.D, device=device, requires_grad=backward)
            G = reference(SF.table, *tensors, D, nb.n_atoms)
            if backward:
                G.sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()

        return run

    return setup


def dscribe_values(atoms, nb):
    acsf = dscribe_acsf(SF)
    return lambda: acsf.create(atoms)


CODES = {
    "neighbour list": (20000, neighbour_list),
    "mlipbias C++ G": (20000, cpp_values),
    "mlipbias C++ G + vjp": (20000, cpp_vjp(1)),
    "mlipbias C++ G + vjp (2 rhs)": (20000, cpp_vjp(2)),
    "mlipbias C++ G + dG": (2000, cpp_derivatives),  # dG holds n_pairs x n_sf x 3 doubles
    "torch reference CPU G": (600, torch_reference("cpu", backward=False)),
    "torch reference CPU G + backward": (600, torch_reference("cpu", backward=True)),
    "dscribe ACSF G": (20000, dscribe_values),
}


def best_times(runs: dict, rounds: int) -> dict:
    """Best time of each callable over `rounds` rounds that take turns, after one warm-up
    round, so a burst of load from other users of the machine hits all codes alike."""
    for run in runs.values():
        run()  # warm-up: allocations, lazy initialisation
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-atoms", type=int, default=12000, help="skip larger cases")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "descriptors.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    codes = dict(CODES)
    cuda_reason = None if torch.cuda.is_available() else "torch sees no CUDA device"
    if cuda_reason is None:
        codes["torch reference CUDA G"] = (5000, torch_reference("cuda", backward=False))
        codes["torch reference CUDA G + backward"] = (5000, torch_reference("cuda", backward=True))

    report = {
        "benchmark": "descriptors",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "descriptor": repr(SF),
        "results": [],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for repeat in SUPERCELLS:
        atoms = quartz(repeat)
        if len(atoms) > args.max_atoms:
            continue
        nb = SF.neighbours(atoms)
        runs = {name: setup(atoms, nb) for name, (limit, setup) in codes.items() if len(atoms) <= limit}
        best = best_times(runs, args.repeats if len(atoms) < 5000 else 1)
        for name, seconds in best.items():
            entry = {"atoms": len(atoms), "pairs": nb.n_pairs, "code": name, "seconds": seconds}
            report["results"].append(entry)
            print(f"{len(atoms):6d} atoms  {name:40s} {seconds:10.4f} s", file=sys.stderr, flush=True)
        args.output.write_text(json.dumps(report, indent=1) + "\n")  # after every case: nothing is lost
    print(table(report))


def table(report) -> str:
    """Markdown table: seconds, and the ratio to dscribe's values at the same size."""
    sizes = sorted({r["atoms"] for r in report["results"]})
    names = list(dict.fromkeys(r["code"] for r in report["results"]))
    cell = {(r["atoms"], r["code"]): r["seconds"] for r in report["results"]}
    lines = ["| code | " + " | ".join(f"{n} atoms" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for name in names:
        entries = []
        for n in sizes:
            seconds, peer = cell.get((n, name)), cell.get((n, "dscribe ACSF G"))
            if seconds is None:
                entries.append("-")
            else:
                ratio = f" ({seconds / peer:.2f}x)" if peer else ""
                entries.append(f"{seconds * 1e3:.1f} ms{ratio}")
        lines.append(f"| {name} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
