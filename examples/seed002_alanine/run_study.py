"""Zaverkin et al. (2024), study 1: active learning of alanine dipeptide in vacuum, biased vs unbiased MD.

    nice -n 10 python examples/seed002_alanine/run_study.py            # everything; resumable
    python examples/seed002_alanine/run_study.py --only report         # tables and figures from work/

Steps (each skipped when its output exists; an interrupted `mlipbias al` run resumes where it stopped):

1. ``work/test_300K.db``: 2000 snapshots drawn at random from a 300 K Langevin run of ff19SB alanine
   dipeptide (OpenMM's own integrator, Reference platform), labelled with the ``openmm`` oracle.
2. ``mlipbias al EXPERIMENT.yaml`` for the five experiments of the paper's Table 1 (``work/EXPERIMENT/``).
3. The report: ``results.md`` (Table 1 and the headline number next to the paper's, wall time per
   generation) and ``fig3_learning_curves.png``, ``fig4a_coverage_md_time.png``, ``fig4bc_acf.png``,
   ``fig_phi_psi.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
TEST_SET = WORK / "test_300K.db"

# Table 1's rows, in the paper's order: (config name, the paper's label).
EXPERIMENTS = (
    ("unbiased_300K", "unbiased MD (300 K)"),
    ("unbiased_600K", "unbiased MD (600 K)"),
    ("unbiased_1200K", "unbiased MD (1200 K)"),
    ("biased_300K_all", "biased MD (300 K, w. H)"),
    ("biased_300K_noH", "biased MD (300 K, w/o. H)"),
)
# The order the runs are done in: the headline comparison first, should time run out.
RUN_ORDER = ("unbiased_300K", "biased_300K_noH", "unbiased_1200K", "unbiased_600K", "biased_300K_all")
BIASED = ("biased_300K_all", "biased_300K_noH")

# Zaverkin et al. (2024) Table 1 (posterior uncertainty, 512 configurations, mean and spread over five
# repeats, as printed in the text; units lost in the text: E-RMSE meV/atom by the text's "1.97 meV/atom",
# F-RMSE eV/A by "0.071 eV/A", the ACT units are not given). The bias strength of the biased rows is lost.
PAPER_TABLE1 = {
    "unbiased_300K": ((0.58, 0.03), (30.29, 5.47), (0.149, 0.019), (2.07, 0.11), (327.11, 8.69)),
    "unbiased_600K": ((0.89, 0.00), (26.03, 2.23), (0.116, 0.012), (1.23, 0.02), (257.88, 22.01)),
    "unbiased_1200K": ((0.97, 0.01), (1.47, 0.09), (0.055, 0.002), (0.74, 0.02), (21.41, 4.91)),
    "biased_300K_all": ((0.87, 0.02), (5.09, 5.40), (0.082, 0.016), (2.08, 0.13), (19.38, 7.42)),
    "biased_300K_noH": ((0.94, 0.01), (1.97, 0.88), (0.071, 0.003), (0.69, 0.04), (52.79, 19.40)),
}

TIMESTEP_FS = 0.5  # explore.timestep of every configuration


def bias_burn_in(name: str) -> int | None:
    """Steps a walker of experiment NAME runs unbiased: None for unbiased MD, else the window form's
    burn-in ``explore.rescale_window`` (the authors' 100; the biased configs here use 1, README.md)."""
    import yaml

    explore = yaml.safe_load((HERE / f"{name}.yaml").read_text())["explore"]
    if not explore.get("tau", 0.25):
        return None
    return int(explore.get("rescale_window", 100)) if explore.get("rescale", True) else 0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------ 1. test set


def make_test_set(
    path: Path, temperature: float, picoseconds: float, n_snapshots: int, seed: int = 0
) -> dict:
    """Langevin MD of ff19SB alanine dipeptide with OpenMM's integrator (0.5 fs, friction 2/ps,
    the explorers' 0.002 1/fs), 10 ps of equilibration from the minimum, then a frame every 10 steps;
    ``n_snapshots`` of them drawn at random and labelled with the ``openmm`` oracle (Reference
    platform, double precision) into an ase.db, written under a temporary name and renamed."""
    import ase.db
    import openmm
    from ase import Atoms
    from openmm import app, unit

    from mlipbias.oracles import attach_results, label, make_oracle
    from mlipbias.potentials.openmm_ff import alanine_dipeptide, alanine_dipeptide_pdb

    start = alanine_dipeptide()
    pdb = app.PDBFile(str(alanine_dipeptide_pdb()))
    system = app.ForceField("amber19-all.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False
    )
    integrator = openmm.LangevinMiddleIntegrator(
        temperature * unit.kelvin, 2.0 / unit.picosecond, TIMESTEP_FS * 1e-3 * unit.picoseconds
    )
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(pdb.positions)
    context.setVelocitiesToTemperature(temperature * unit.kelvin, seed + 1)
    started = time.process_time()
    integrator.step(int(round(10_000 / TIMESTEP_FS)))  # 10 ps
    interval = 10
    n_frames = int(round(picoseconds * 1000 / TIMESTEP_FS / interval))
    frames = np.empty((n_frames, len(start), 3))
    for i in range(n_frames):
        integrator.step(interval)
        frames[i] = (
            context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        )
    md_seconds = time.process_time() - started
    chosen = np.sort(np.random.default_rng(seed).choice(n_frames, size=n_snapshots, replace=False))
    oracle = make_oracle("openmm")
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with ase.db.connect(str(tmp), type="db", append=False) as db:
        for i in chosen:
            atoms = Atoms(start.get_chemical_symbols(), positions=frames[i])
            results = label(atoms, oracle, name=f"test frame {i}")
            time_ps = float((i + 1) * interval * TIMESTEP_FS / 1000)
            db.write(attach_results(atoms, results, "openmm"), frame=int(i), time_ps=time_ps)
    os.replace(tmp, path)
    info = {
        "temperature_K": temperature,
        "picoseconds": picoseconds,
        "equilibration_ps": 10.0,
        "frames": n_frames,
        "snapshots": n_snapshots,
        "friction_per_ps": 2.0,
        "md_cpu_seconds": round(md_seconds, 1),
    }
    (path.with_suffix(".json")).write_text(json.dumps(info, indent=1) + "\n")
    return info


# ------------------------------------------------------------------------------------ 2. AL runs


def config_path(name: str) -> Path:
    """NAME.yaml, or for a repeat ``NAME_seedS`` (S >= 1) a copy of NAME.yaml with ``seed: S`` and its
    own output directory, written to ``work/repeats/`` (absolute paths: it lives outside this folder)."""
    base, _, seed = name.rpartition("_seed")
    if not base:
        return HERE / f"{name}.yaml"
    import yaml

    if base not in dict(EXPERIMENTS) or not seed.isdigit() or int(seed) < 1:
        raise SystemExit(
            f"unknown experiment {name!r}: expected one of {dict(EXPERIMENTS)} or NAME_seedS, S >= 1"
        )
    config = yaml.safe_load((HERE / f"{base}.yaml").read_text())
    config["start"]["structures"] = str(HERE / config["start"]["structures"])
    config["test"]["path"] = str(TEST_SET)
    config["output"]["directory"] = str(WORK / name)
    config["seed"] = int(seed)
    path = WORK / "repeats" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_experiment(name: str) -> dict:
    """``mlipbias al NAME.yaml`` in a child process (resumes a killed run); CPU and wall seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mlipbias", "al", str(config_path(name)), "--no-progress"]
    with open(WORK / f"{name}.log", "a") as handle:
        subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_seconds": round(cpu, 1), "wall_seconds": round(time.perf_counter() - started, 1)}


def run_all(names) -> None:
    for name in names:
        cost_path = WORK / f"{name}.cost.json"  # one file per run: runs may go in parallel processes
        cost = json.loads(cost_path.read_text()) if cost_path.exists() else {}
        done = (WORK / name / "state.json").exists() and json.loads(
            (WORK / name / "state.json").read_text()
        ).get("phase") == "finished"
        if done:
            log(f"{name}: finished")
            continue
        log(f"{name}: mlipbias al {name}.yaml (log in work/{name}.log)")
        spent = run_experiment(name)
        previous = cost.get(name, {"cpu_seconds": 0.0, "wall_seconds": 0.0})
        cost[name] = {k: round(previous[k] + spent[k], 1) for k in spent}  # resumed runs add up
        cost_path.write_text(json.dumps(cost, indent=1) + "\n")
        log(f"{name}: {cost[name]}")


# ------------------------------------------------------------------------------------ 3. report


def load_experiment(name: str) -> dict | None:
    """Summary rows, the concatenated walker trajectories of all generations (dihedrals, positions,
    U_i, MD time) and the dataset's dihedrals with their generation; None before the first summary."""
    from mlipbias.al.loop import read_trajectories
    from mlipbias.al.report import read_summary
    from mlipbias.analysis import alanine_dipeptide_dihedrals
    from mlipbias.datasets import load_dataset

    directory = WORK / name
    rows = read_summary(directory)
    if not rows:
        return None
    positions, uncertainty, md_time, generation, walker_steps, reasons = [], [], [], [], [], {}
    offset = 0.0  # ps of MD run by all walkers before this one ("effective number of MD steps")
    for g in range(1, max(r["generation"] for r in rows) + 1):
        for t in read_trajectories(directory, g):
            positions.append(t["positions"].astype(float))
            uncertainty.append(t["atom_uncertainty"].astype(float))
            md_time.append(offset + t["step"] * TIMESTEP_FS / 1000)
            generation.append(np.full(len(t["step"]), g))
            offset += t["steps"] * TIMESTEP_FS / 1000
            walker_steps.append(t["steps"])
        for path in sorted((directory / f"gen_{g:03d}" / "walkers").glob("walker_*.json")):
            reason = json.loads(path.read_text())["stop_reason"]
            reasons[reason] = reasons.get(reason, 0) + 1
    data = load_dataset(directory / "dataset.db")
    rejects = (
        load_dataset(directory / "rejects.db", require_labels=False)
        if (directory / "rejects.db").exists()
        else []
    )
    out = {
        "rows": rows,
        "data_dihedrals": alanine_dipeptide_dihedrals(data),
        "data_positions": np.array([a.positions for a in data]),
        "data_generation": np.array([int(a.info.get("al_generation", 0)) for a in data]),
        "reject_generation": np.array([int(a.info.get("al_generation", 0)) for a in rejects]),
        "md_ps": offset,
        "walker_steps": walker_steps,
        "stop_reasons": reasons,
    }
    if positions:
        out["positions"] = np.concatenate(positions)
        out["uncertainty"] = np.concatenate(uncertainty)
        out["md_time"] = np.concatenate(md_time)
        out["generation"] = np.concatenate(generation)
        out["dihedrals"] = alanine_dipeptide_dihedrals(out["positions"])
    return out


def metrics(e: dict, name: str) -> dict:
    """Table 1's columns for one experiment (coverage of the MD frames and of the dataset, errors of
    the last model, ACTs of the concatenated trajectories in ps and in frames of 5 fs)."""
    from mlipbias.analysis import coverage, integrated_autocorrelation_time

    last = e["rows"][-1]
    m = {
        "dataset_size": last["dataset_size"],
        "generations": last["generation"],
        "md_ps": e["md_ps"],
        "coverage_md": coverage(e["dihedrals"]) if "dihedrals" in e else np.nan,
        "coverage_data": coverage(e["data_dihedrals"]),
        "energy_rmse": 1000 * last.get("test_energy_rmse", np.nan),
        "force_rmse": last.get("test_force_rmse", np.nan),
        "final": bool(last.get("final")),
    }
    frame_ps = 10 * TIMESTEP_FS / 1000  # explore.trajectory_interval: 10 steps
    for key, observable in (("positions", "positions"), ("uncertainty", "uncertainty")):
        try:
            act = integrated_autocorrelation_time(e[observable]) if observable in e else np.nan
        except ValueError:  # fewer than 2 frames, or every frame the same: no ACF
            act = np.nan
        m[f"act_{key}_frames"], m[f"act_{key}_ps"] = act, act * frame_ps
    steps = np.array(e["walker_steps"]) if e["walker_steps"] else np.zeros(1)
    m["walkers"] = len(e["walker_steps"])
    m["walker_steps_median"] = float(np.median(steps))
    m["walker_steps_max"] = int(steps.max())
    m["burn_in"] = bias_burn_in(name)
    m["walkers_past_burn_in"] = None if m["burn_in"] is None else int(np.sum(steps > m["burn_in"]))
    m["stop_reasons"] = e["stop_reasons"]
    return m


def oracle_calls(e: dict) -> list[tuple[int, float]]:
    """(oracle calls before generation g's training, its test force RMSE) per generation: labelled
    and rejected structures of earlier generations (a rejected one cost an oracle call too)."""
    out = []
    for r in e["rows"]:
        g = r["generation"]
        calls = int(np.sum(e["data_generation"] < g) + np.sum(e["reject_generation"] < g))
        out.append((calls, r.get("test_force_rmse", np.nan)))
    return out


def repeats_section(experiments: dict, target: float) -> list[str]:
    """Finished runs of each experiment by seed (0: NAME.yaml; S >= 1: ``--experiments NAME_seedS``):
    final test errors and oracle calls to reach ``target``, with mean and standard deviation."""
    lines = []
    for name, label in EXPERIMENTS:
        runs = {0: experiments.get(name)}
        for path in sorted(p for p in WORK.glob(f"{name}_seed*") if p.is_dir()):
            runs[int(path.name.rpartition("_seed")[2])] = load_experiment(path.name)
        runs = {s: e for s, e in runs.items() if e is not None and e["rows"][-1].get("final")}
        if len(runs) < 2:
            continue
        if not lines:
            lines += [
                "",
                f"Repeats (seeds; the same target, {target:.4g} eV/A):",
                "",
                "| experiment | seed | data | F-RMSE (eV/A) | E-RMSE (meV/atom) "
                "| oracle calls to reach the target |",
                "|---|---|---|---|---|---|",
            ]
        forces, energies = [], []
        for seed, e in sorted(runs.items()):
            last = e["rows"][-1]
            forces.append(last.get("test_force_rmse", np.nan))
            energies.append(1000 * last.get("test_energy_rmse", np.nan))
            reached = [c for c, f in oracle_calls(e) if np.isfinite(f) and f <= target]
            lines.append(
                f"| {label} | {seed} | {last['dataset_size']} | {_fmt(forces[-1])} | {_fmt(energies[-1])} | "
                f"{reached[0] if reached else 'not reached'} |"
            )
        lines.append(
            f"| {label} | mean +- std ({len(runs)}) | | {np.mean(forces):.3g} +- "
            f"{np.std(forces, ddof=1):.2g} | {np.mean(energies):.3g} +- {np.std(energies, ddof=1):.2g} | |"
        )
    return lines


def _fmt(value, digits=3) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}g}"


def write_report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlipbias.analysis import alanine_dipeptide_dihedrals, autocorrelation, coverage_curve
    from mlipbias.analysis.plots import plot_autocorrelation, plot_exploration, plot_learning_curves
    from mlipbias.datasets import load_dataset

    experiments = {name: load_experiment(name) for name, _ in EXPERIMENTS}
    experiments = {k: v for k, v in experiments.items() if v is not None}
    labels = dict(EXPERIMENTS)
    if not experiments:
        raise SystemExit("no experiment has a summary yet: run the study first")
    table = {name: metrics(e, name) for name, e in experiments.items()}
    paths = {n: WORK / f"{n}.cost.json" for n, _ in EXPERIMENTS}
    cost = {n: json.loads(path.read_text())[n] for n, path in paths.items() if path.exists()}
    test_info = json.loads(TEST_SET.with_suffix(".json").read_text()) if TEST_SET.exists() else {}
    lines = ["# Study 1 results (generated by run_study.py --only report)", ""]
    lines += [
        f"Test set: {test_info.get('snapshots', '?')} snapshots of a {test_info.get('picoseconds', '?')} ps "
        f"Langevin run at {test_info.get('temperature_K', '?')} K (ff19SB, OpenMM). Ours: `ours`, seed 0 "
        "of each experiment (further seeds under 'Repeats'); the paper's Table 1: `paper` (512 "
        "configurations, mean and spread of five repeats).",
        "",
        "| experiment | | data | CV cov. (MD) | CV cov. (data) | E-RMSE (meV/atom) | F-RMSE (eV/A) "
        "| Pos. ACT | Unc. ACT | MD time (ps) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label in EXPERIMENTS:
        paper = PAPER_TABLE1[name]
        lines.append(
            f"| {label} | paper | 512 | {paper[0][0]} +- {paper[0][1]} | | {paper[1][0]} +- {paper[1][1]} | "
            f"{paper[2][0]} +- {paper[2][1]} | {paper[3][0]} +- {paper[3][1]} (unit lost) | "
            f"{paper[4][0]} +- {paper[4][1]} (unit lost) | |"
        )
        if name in table:
            m = table[name]
            state = "" if m["final"] else " (unfinished)"
            acts = [
                f"{_fmt(m.get(f'act_{k}_ps', np.nan))} ps ({_fmt(m.get(f'act_{k}_frames', np.nan))} fr.)"
                for k in ("positions", "uncertainty")
            ]
            lines.append(
                f"| | ours{state} | {m['dataset_size']} | {_fmt(m['coverage_md'])} | "
                f"{_fmt(m['coverage_data'])} | {_fmt(m['energy_rmse'])} | {_fmt(m['force_rmse'])} | "
                f"{acts[0]} | {acts[1]} | {_fmt(m['md_ps'])} |"
            )
    lines += ["", "Ratios the paper's text states, and ours (seed 0):", ""]
    lines += ["| ratio | paper | ours |", "|---|---|---|"]

    def ratio(a, b, key):
        if a not in table or b not in table:
            return "-"
        return _fmt(table[a].get(key, np.nan) / table[b].get(key, np.nan))

    for what, paper, a, b, key in (
        ("coverage, biased w/o H / biased w. H", "1.08", "biased_300K_noH", "biased_300K_all", "coverage_md"),
        ("F-RMSE, biased w. H / biased w/o H", "1.15", "biased_300K_all", "biased_300K_noH", "force_rmse"),
        ("F-RMSE, unbiased 300 K / biased w/o H", "2.1", "unbiased_300K", "biased_300K_noH", "force_rmse"),
        ("F-RMSE, unbiased 600 K / biased w/o H", "1.6", "unbiased_600K", "biased_300K_noH", "force_rmse"),
        ("E-RMSE, unbiased 300 K / biased w/o H", "> 13", "unbiased_300K", "biased_300K_noH", "energy_rmse"),
        ("Pos. ACT, unbiased 300 K / biased w/o H", "3.0 (Table 1)", "unbiased_300K", "biased_300K_noH",
         "act_positions_ps"),
        ("Unc. ACT, unbiased 300 K / biased w/o H", "6.2 (Table 1)", "unbiased_300K", "biased_300K_noH",
         "act_uncertainty_ps"),
    ):  # fmt: skip
        lines.append(f"| {what} | {paper} | {ratio(a, b, key)} |")

    lines += [
        "",
        "## Exploration",
        "",
        "Walker lengths in MD steps (0.5 fs). A biased walker is only biased after the burn-in of the Eq. 8 "
        "window form (`explore.rescale_window` steps; the authors' 100, ours 1: README.md).",
        "",
        "| experiment | walkers | steps, median | steps, max | bias burn-in (steps) | walkers past it "
        "| stop reasons |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in EXPERIMENTS:
        if name in table:
            m = table[name]
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(m["stop_reasons"].items()))
            lines.append(
                f"| {label} | {m['walkers']} | {m['walker_steps_median']:g} | {m['walker_steps_max']} | "
                f"{'-' if m['burn_in'] is None else m['burn_in']} | "
                f"{'-' if m['walkers_past_burn_in'] is None else m['walkers_past_burn_in']} | {reasons} |"
            )
    if "unbiased_300K" in experiments:
        lines += [
            "",
            "How far each dataset is from the unbiased 300 K one: structures found in it (RMSD < 1e-6 A, "
            "no alignment: every run starts from the same structure) and the RMSD of the others to their "
            "nearest structure in it.",
            "",
            "| experiment | structures | shared with unbiased 300 K | RMSD of the others (A), median / max |",
            "|---|---|---|---|",
        ]
        reference = experiments["unbiased_300K"]["data_positions"]
        for name, label in EXPERIMENTS:
            if name == "unbiased_300K" or name not in experiments:
                continue
            positions = experiments[name]["data_positions"]
            nearest = np.sqrt(((positions[:, None] - reference[None]) ** 2).sum(-1).mean(-1)).min(1)
            shared = nearest < 1e-6
            spread = f"{np.median(nearest[~shared]):.3f} / {nearest.max():.3f}" if (~shared).any() else "-"
            lines.append(f"| {label} | {len(positions)} | {int(shared.sum())} | {spread} |")

    # Item 10: oracle calls to reach a target force error.
    calls = {name: oracle_calls(e) for name, e in experiments.items()}
    lines += ["", "## Oracle calls to reach a target force RMSE on the test set", ""]
    if "unbiased_300K" in calls:
        target = min(f for _, f in calls["unbiased_300K"] if np.isfinite(f))
        lines += [
            f"Target: the best test force RMSE the unbiased 300 K run reached, {target:.4g} eV/A. Oracle "
            "calls: labelled plus rejected structures of the generations before that model (the initial 8 "
            "included).",
            "",
            "| experiment | oracle calls to reach the target | force RMSE (eV/A) by oracle calls |",
            "|---|---|---|",
        ]
        for name, label in EXPERIMENTS:
            if name not in calls:
                continue
            reached = [c for c, f in calls[name] if np.isfinite(f) and f <= target]
            curve = ", ".join(f"{c}: {f:.3g}" for c, f in calls[name] if np.isfinite(f))
            lines.append(f"| {label} | {reached[0] if reached else 'not reached'} | {curve} |")
        lines += repeats_section(experiments, target)

    # Item 10: wall time per generation.
    lines += [
        "",
        "## Wall time per generation (s): train / explore / select / label",
        "",
        "Wall seconds of the `mlipbias al` process (Dask: one thread worker), on a machine whose 2 cores "
        "were shared with other jobs; `train` includes the test-set evaluation.",
        "",
        "| experiment | per generation: train / explore / select / label | total | CPU s (whole run) |",
        "|---|---|---|---|",
    ]
    for name, label in EXPERIMENTS:
        if name not in experiments:
            continue
        parts, total = [], 0.0
        for r in experiments[name]["rows"]:
            secs = [r[f"seconds_{k}"] for k in ("train", "explore", "select", "label") if f"seconds_{k}" in r]
            total += sum(secs)
            final = " (final training)" if len(secs) == 1 else ""
            text = " / ".join(f"{x:.0f}" if x >= 1 else f"{x:.1f}" for x in secs)
            parts.append(f"g{r['generation']}: {text}{final}")
        c = cost.get(name, {})
        lines.append(f"| {label} | {'; '.join(parts)} | {total:.0f} | {c.get('cpu_seconds', '-')} |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    log(f"wrote {HERE / 'results.md'}")

    # Fig. 3 (a)-(c): coverage of the dataset and errors against its size.
    sizes = sorted({r["dataset_size"] for e in experiments.values() for r in e["rows"]})
    cov, energy, force = {}, {}, {}
    for name, e in experiments.items():
        by_size = {r["dataset_size"]: r for r in e["rows"]}
        label = labels[name]
        cov[label] = [
            coverage_curve(e["data_dihedrals"][e["data_generation"] < by_size[n]["generation"]])[-1]
            if n in by_size
            else np.nan
            for n in sizes
        ]
        energy[label] = [
            1000 * by_size[n].get("test_energy_rmse", np.nan) if n in by_size else np.nan for n in sizes
        ]
        force[label] = [by_size[n].get("test_force_rmse", np.nan) if n in by_size else np.nan for n in sizes]
    plot_learning_curves(sizes, cov, energy, force, HERE / "fig3_learning_curves.png")

    # Fig. 4 (a): coverage of the MD frames against the accumulated MD time of all walkers.
    with_md = {n: e for n, e in experiments.items() if "dihedrals" in e}
    with_acf = {n: e for n, e in with_md.items() if np.isfinite(table[n]["act_positions_frames"])}
    if with_md:
        grid = np.linspace(0, max(e["md_ps"] for e in with_md.values()), 200)
        curves = {}
        for name, e in with_md.items():
            curve = coverage_curve(e["dihedrals"])
            index = np.searchsorted(e["md_time"], grid, side="right") - 1
            values = np.where(index >= 0, curve[np.maximum(index, 0)], 0.0)
            curves[labels[name]] = np.where(grid <= e["md_ps"], values, np.nan)
        plot_exploration(grid, curves, HERE / "fig4a_coverage_md_time.png")
    if with_acf:  # Fig. 4 (b)-(c): ACFs of positions and U_i of the concatenated trajectories.
        n_lags = min(400, *(len(e["positions"]) for e in with_acf.values()))
        lag_ps = np.arange(n_lags) * 10 * TIMESTEP_FS / 1000
        for observable, key in (("positions", "positions"), ("atom uncertainties", "uncertainty")):
            plot_autocorrelation(
                lag_ps,
                {labels[n]: autocorrelation(e[key])[:n_lags] for n, e in with_acf.items()},
                HERE / f"fig4{'b' if key == 'positions' else 'c'}_acf_{key}.png",
                observable=observable,
            )

    # phi-psi: test set, MD frames and acquired configurations of each experiment.
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), sharex=True, sharey=True)
    test = alanine_dipeptide_dihedrals(load_dataset(TEST_SET)) if TEST_SET.exists() else np.zeros((0, 2))
    panels = [("test set", None)] + [(labels[n], experiments.get(n)) for n, _ in EXPERIMENTS]
    for ax, (title, e) in zip(axes.flat, panels, strict=True):
        ax.scatter(test[:, 0], test[:, 1], s=2, color="0.75", label="test set")
        if e is not None and "dihedrals" in e:
            ax.scatter(
                e["dihedrals"][:, 0],
                e["dihedrals"][:, 1],
                s=4,
                c=e["generation"],
                cmap="viridis",
                label="MD frames",
            )
        if e is not None:
            ax.scatter(
                e["data_dihedrals"][:, 0],
                e["data_dihedrals"][:, 1],
                s=12,
                marker="x",
                color="red",
                label="dataset",
            )
        ax.set_title(title, fontsize="medium")
        ax.set_xlim(-np.pi, np.pi)
        ax.set_ylim(-np.pi, np.pi)
    for ax in axes[1]:
        ax.set_xlabel("phi (rad)")
    for ax in axes[:, 0]:
        ax.set_ylabel("psi (rad)")
    axes.flat[1].legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(HERE / "fig_phi_psi.png", dpi=120)
    plt.close(fig)
    log("wrote the figures")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=("data", "runs", "report"), help="one step only")
    parser.add_argument("--experiments", nargs="+", default=list(RUN_ORDER))
    parser.add_argument("--test-temperature", type=float, default=300.0)
    parser.add_argument("--test-picoseconds", type=float, default=25.0)
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    if args.only in (None, "data") and not TEST_SET.exists():
        log(f"test set: {args.test_picoseconds:g} ps at {args.test_temperature:g} K (OpenMM Langevin)")
        log(f"test set: {make_test_set(TEST_SET, args.test_temperature, args.test_picoseconds, 2000)}")
    if args.only in (None, "runs"):
        run_all(args.experiments)
    if args.only in (None, "report"):
        write_report()


if __name__ == "__main__":
    main()
