"""Neighbor-list speed: mlipbias (C++) against vesin, matscipy and ASE; with --cuda, the
CUDA search against the C++ one on a GPU.

Cases x codes: every code computes the same full list with i, j, S, D and d for the same
structure. Calls of the codes alternate within each case (round-robin), so load from
other processes hits all codes alike; the reported time is the best of the repeats.

    python benchmarks/neighbors.py                  # CPU, 100 to 100,000 atoms, 1 thread
    python benchmarks/neighbors.py --threads 2      # OpenMP / vesin threads
    python benchmarks/neighbors.py --cuda           # CUDA vs C++, 1,000 to 10^6 atoms

Systems (numpy only, so --cuda runs where ASE is not installed):
  sio2: amorphous-like SiO2 at 2.2 g/cm^3 (uniform random positions, 0.0662 atoms/A^3),
        cutoff 6 A, cubic periodic cell;
  si:   Si diamond (a = 5.43 A) supercells, rattled by 0.05 A (about 300 K), cutoff 5 A.

Writes benchmarks/results/neighbors.json (neighbors_cuda.json with --cuda) after every
case, and prints the table with the ratio to vesin (CPU) or to the C++ search (--cuda) and
the slope of log(time) against log(N), which is 1 for a cost linear in N.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
from machine_info import machine

SIO2_ATOMS_PER_A3 = 2.2 / 60.0843 * 0.602214076 * 3  # g/cm^3 -> SiO2 units/A^3 -> atoms/A^3


def sio2(n_atoms: int, seed: int = 0):
    length = (n_atoms / SIO2_ATOMS_PER_A3) ** (1 / 3)
    rng = np.random.default_rng(seed)
    return rng.uniform(0, length, (n_atoms, 3)), np.eye(3) * length, np.ones(3, bool)


def si_diamond(repeat: int, seed: int = 0):
    a = 5.43
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    basis = np.concatenate([fcc, fcc + 0.25]) * a
    grid = np.stack(np.meshgrid(*[np.arange(repeat)] * 3, indexing="ij"), -1).reshape(-1, 1, 3) * a
    positions = (grid + basis[None]).reshape(-1, 3)
    positions += np.random.default_rng(seed).normal(scale=0.05, size=positions.shape)
    return positions, np.eye(3) * a * repeat, np.ones(3, bool)


# (system name, cutoff in A, builder, sizes): sizes are atom counts (sio2) or repeats (si).
CPU_CASES = [
    ("sio2", 6.0, sio2, [100, 300, 1000, 3000, 10000, 30000, 100000]),
    ("si", 5.0, si_diamond, [2, 3, 5, 7, 11, 15, 23]),  # 64 to 97,336 atoms
]
CUDA_CASES = [
    ("sio2", 6.0, sio2, [1000, 10000, 100000, 300000, 1000000]),
    ("si", 5.0, si_diamond, [5, 11, 23, 34, 50]),  # 1,000 to 1,000,000 atoms
]


# ---------------------------------------------------------------- adapters: one per code
# Each takes (positions, cell, pbc, cutoff, threads) and returns a function that computes
# the full list (i, j, S, D, d) and returns the number of pairs.


def mlipbias_cpp(positions, cell, pbc, cutoff, threads):
    from mlipbias.neighbors import neighbor_list

    def run():
        return len(neighbor_list("ijSDd", (positions, cell, pbc), cutoff)[0])

    return run


def vesin_cpu(positions, cell, pbc, cutoff, threads):
    import vesin

    nl = vesin.NeighborList(cutoff=cutoff, full_list=True, n_threads=threads)

    def run():
        return len(nl.compute(points=positions, box=cell, periodic=pbc, quantities="ijSDd")[0])

    return run


def matscipy_cpu(positions, cell, pbc, cutoff, threads):
    from matscipy.neighbours import neighbour_list

    def run():
        return len(neighbour_list("ijSDd", positions=positions, cell=cell, pbc=pbc, cutoff=cutoff)[0])

    return run


def ase_cpu(positions, cell, pbc, cutoff, threads):
    from ase.neighborlist import primitive_neighbor_list

    def run():
        return len(primitive_neighbor_list("ijSDd", pbc, cell, positions, cutoff)[0])

    return run


def mlipbias_cuda(positions, cell, pbc, cutoff, threads):
    import torch

    from mlipbias.neighbors import neighbor_list_cuda

    x = torch.tensor(positions, device="cuda")

    def run():
        i, _, _, D = neighbor_list_cuda(x, cell, pbc, cutoff)
        D.norm(dim=1)  # d, as the CPU codes return it
        torch.cuda.synchronize()
        return len(i)

    return run


CPU_CODES = {"mlipbias": mlipbias_cpp, "vesin": vesin_cpu, "matscipy": matscipy_cpu, "ase": ase_cpu}
CUDA_CODES = {"mlipbias": mlipbias_cpp, "mlipbias-cuda": mlipbias_cuda}


# ---------------------------------------------------------------- runner


def versions(codes) -> dict:
    found = {}
    for module in ("mlipbias", "vesin", "matscipy", "ase", "numpy", "torch"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            continue
    return found


def user_time() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def time_case(runners: dict, min_seconds: float, max_repeats: int):
    """Round-robin timing of every runner. Returns, per code, the wall seconds of each call
    and the mean user-CPU seconds per call, and the pair counts.

    User CPU time leaves out the time other processes hold the core and the kernel's time
    (page faults on fresh output arrays, which varies with memory pressure from other
    processes), so it is the steadier measure of the code itself on a shared machine. The
    kernel accounts it in ticks, hence a mean over the calls (for one thread; with several
    it adds up the threads)."""
    times = {name: [] for name in runners}
    user = dict.fromkeys(runners, 0.0)
    pairs = {}
    for name, run in runners.items():  # warm-up (imports, first allocations)
        pairs[name] = run()

    # Each code repeats until it has 3 calls and has run for min_seconds (or max_repeats),
    # so fast codes get many repeats while a slow one does not hold the others back.
    def active(name):
        n = len(times[name])
        return n < 3 or (n < max_repeats and sum(times[name]) < min_seconds)

    while any(active(name) for name in runners):
        for name, run in runners.items():
            if not active(name):
                continue
            t0, u0 = time.perf_counter(), user_time()
            run()
            times[name].append(time.perf_counter() - t0)
            user[name] += user_time() - u0
    return times, {name: user[name] / len(times[name]) for name in runners}, pairs


def slope(rows, code, system, key="best_s") -> float | None:
    """d log(time) / d log(N) over N >= 1000: 1 for a cost linear in N."""
    points = [(r["n_atoms"], r[key][code]) for r in rows if r["system"] == system and code in r[key]]
    points = [(n, t) for n, t in points if n >= 1000]
    if len(points) < 2:
        return None
    n, t = np.log(np.array(points)).T
    return float(np.polyfit(n, t, 1)[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help="CUDA vs C++ on a GPU, up to 10^6 atoms")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads (default: 1, all cores with --cuda)"
    )
    parser.add_argument("--codes", nargs="*", help="subset of the codes to run")
    parser.add_argument("--max-atoms", type=int, default=None, help="skip larger systems")
    parser.add_argument(
        "--slow-limit", type=float, default=10.0, help="stop a code after a call slower than this (s)"
    )
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time per code and case, at least")
    parser.add_argument("--max-repeats", type=int, default=30)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    threads = args.threads or (os.cpu_count() if args.cuda else 1)
    # OpenMP reads this when the runtime starts, i.e. before mlipbias._core is imported.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if args.cuda:
        from mlipbias import gpu

        if gpu.unavailable_reason() is not None:
            print(f"--cuda needs a GPU: {gpu.unavailable_reason()}", file=sys.stderr)
            return 1
    codes = CUDA_CODES if args.cuda else CPU_CODES
    if args.codes:
        codes = {name: codes[name] for name in args.codes}
    reference = "mlipbias" if args.cuda else "vesin"
    cases = CUDA_CASES if args.cuda else CPU_CASES
    output = args.output or Path(__file__).parent / "results" / (
        "neighbors_cuda.json" if args.cuda else "neighbors.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)

    report = {
        "benchmark": "neighbor lists, full list with i, j, S, D, d",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "threads": threads,
        "machine": machine(),
        "versions": versions(codes),
        "timing": "round-robin repeats, s per call: wall (best_s, median_s), mean user CPU (mean_user_s)",
        "rows": [],
    }
    header = f"{'system':6} {'atoms':>9} {'pairs':>11}  " + "  ".join(f"{name:>13}" for name in codes)
    print(header + f"   (seconds per call; x = ratio to {reference})", flush=True)
    for system, cutoff, build, sizes in cases:
        too_slow = set()  # codes that already took longer than --slow-limit on this system
        for size in sizes:
            positions, cell, pbc = build(size)
            n_atoms = len(positions)
            if args.max_atoms and n_atoms > args.max_atoms:
                continue
            runners = {
                name: make(positions, cell, pbc, cutoff, threads)
                for name, make in codes.items()
                if name not in too_slow
            }
            times, user_s, pairs = time_case(runners, args.min_seconds, args.max_repeats)
            if len(set(pairs.values())) != 1:
                raise RuntimeError(f"codes disagree on the number of pairs for {system} {n_atoms}: {pairs}")
            best = {name: min(t) for name, t in times.items()}
            row = {
                "system": system,
                "n_atoms": n_atoms,
                "cutoff": cutoff,
                "n_pairs": next(iter(pairs.values())),
                "best_s": best,
                "median_s": {name: float(np.median(t)) for name, t in times.items()},
                "mean_user_s": user_s,
                "repeats": {name: len(t) for name, t in times.items()},
            }
            if reference in best:
                row["ratio_to_" + reference] = {name: t / best[reference] for name, t in best.items()}
                if user_s[reference] > 0:
                    row["user_ratio_to_" + reference] = {
                        name: t / user_s[reference] for name, t in user_s.items()
                    }
            report["rows"].append(row)
            output.write_text(json.dumps(report, indent=1))
            cells = []
            for name in codes:
                if name in best:
                    ratio = f" {best[name] / best[reference]:4.2f}x" if reference in best else ""
                    cells.append(f"{best[name]:8.2e}{ratio}")
                else:
                    cells.append(f"{'-':>13}")
            print(
                f"{system:6} {n_atoms:9d} {row['n_pairs']:11d}  " + "  ".join(f"{c:>13}" for c in cells),
                flush=True,
            )
            too_slow |= {name for name, t in best.items() if t > args.slow_limit}

    report["slopes"] = {
        system: {name: slope(report["rows"], name, system) for name in codes} for system, *_ in cases
    }
    report["slopes_user_time"] = {
        system: {name: slope(report["rows"], name, system, "mean_user_s") for name in codes}
        for system, *_ in cases
    }
    report["user_time_per_atom_us"] = [
        {
            "system": r["system"],
            "n_atoms": r["n_atoms"],
            **{k: 1e6 * v / r["n_atoms"] for k, v in r["best_s"].items()},
        }
        for r in report["rows"]
    ]
    output.write_text(json.dumps(report, indent=1))
    for title, key in (("wall", "slopes"), ("user CPU", "slopes_user_time")):
        print(f"\nslope of log({title} time) vs log(N), N >= 1000 (1 = linear):")
        for system, by_code in report[key].items():
            print(
                f"  {system:6} "
                + "  ".join(f"{name} {s:.2f}" for name, s in by_code.items() if s is not None)
            )
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
