"""Study 3 of Tan et al. (2023), scaled to a shared 2-core machine: PaiNN with four uncertainty methods on
MD17-like data (GFN2-xTB MD of ethanol and malonaldehyde), per molecule, method and split.

Run from anywhere (paths are relative to this folder):

    PYTHONPATH=python python examples/seed003_md17like/run_study.py          # every step, resumable
    python examples/seed003_md17like/run_study.py --only table                 # one step

Steps: ``data`` (``mlipbias data generate`` of each molecule's configuration with ``--n-samples``),
``splits`` (``make_splits.py`` with the scaled sizes), ``train`` (one ``mlipbias train`` per molecule,
split and method; the run folder's ``test_metrics.json`` holds the test table), ``table`` (means over the
splits: ``results.md``, the README's table between its markers, ``fig_heatmaps.png``). Every step is
skipped when its output exists, and ``data generate`` and ``train --resume`` resume inside a step, so an
interrupted study continues where it stopped. Each training runs in its own process; its wall time, CPU
time and peak resident memory (``os.wait4``) go to ``usage.json`` in its run folder (``work/usage_*.json``
for the other steps), so one process per molecule (``--molecule``) can run at once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
KCAL = 23.060548  # kcal/mol per eV (the paper's units)

# The scaling of the study (README, "Scaling"): every number here and why it differs from Tan et al. (2023).
MOLECULES = ("ethanol", "malonaldehyde")  # of rMD17's ten; the two cheapest of our three
N_SNAPSHOTS = 700  # per molecule (rMD17: 100,000; ours was built for 2000)
N_SPLITS = 2  # Tan et al. (2023): 5
N_TRAIN, N_VALIDATION, N_TEST = 150, 50, 400  # Tan et al. (2023): 800, 200, 1000
PAINN = {"cutoff": 5.0, "features": 32, "layers": 2, "radial_basis": 20, "readout": [64, 64]}  # 128, 3
TRAINING = {
    "epochs": 20,  # Tan et al. (2023): 500
    "batch_size": 16,  # 64
    "learning_rate": 3.0e-3,  # 1e-4
    "schedule": "plateau",
    "decay_factor": 0.5,
    "decay_patience": 5,  # 30
    "min_learning_rate": 1.0e-5,
    "early_stopping_patience": 1000,  # none in Tan et al. (2023)
    "loss": "mae",
    # Tan et al. (2023) SI Eq. 1: w_E = 0.1 on the total energy; ours is per atom, so 0.1 x 9 atoms
    # (ethanol and malonaldehyde) keeps their balance (0.1 per atom let the energy drift: see README).
    "energy_weight": 0.9,
    "force_weight": 1.0,
    "nll_weight": 1.0,
    "stress_weight": 0.0,
}
#: MVE and evidential: the ensemble's 3e-3 (Tan et al.: 1e-4 for all). Before the fix of issue 13 (energy
#: outputs on a detached layer) the joint NLL training diverged at 3e-3 and 1e-3; this study then used 1e-4.
HEAD_LEARNING_RATE = 3.0e-3
#: method -> its uncertainty section; MVE and evidential as published (force NLL through the mean
#: network, no force MAE term: Tan et al. (2023) SI Eqs. 2-9), the GMM on a network of its own (MAE loss).
METHODS = {
    "ensemble": {"methods": ["ensemble"], "n_members": 3},  # Tan et al. (2023): 5 for rMD17
    # beta-NLL (beta 0.5, mlipbias's default; Tan et al.: the plain NLL, beta 0): learns in 20 epochs (README)
    "mve": {"methods": ["mve"], "head_training": "joint", "nll_beta": 0.5},
    "evidential": {"methods": ["evidential"], "head_training": "joint", "evidential_regularization": 0.2},
    "gmm": {"methods": ["gmm"], "gmm_max_components": 8},
}
LABELS = {"ensemble": "ensemble (M = 3)", "mve": "MVE", "evidential": "evidential", "gmm": "GMM"}
#: Tan et al. (2023) Table S2: ROC-AUC at the 20th error percentile (the only per-molecule numbers of Fig. 2
#: and S2 in the text; the heatmaps themselves are figures).
PAPER_ROC_AUC = {
    "ethanol": {"ensemble": 0.745, "mve": 0.765, "evidential": 0.780, "gmm": 0.693},
    "malonaldehyde": {"ensemble": 0.763, "mve": 0.866, "evidential": 0.849, "gmm": 0.745},
    "mean of the ten": {"ensemble": 0.801, "mve": 0.819, "evidential": 0.854, "gmm": 0.766},
}
#: heatmap panels (Tan et al. (2023) Fig. S2 a-f): key, title, value from a test table, lower is better
PANELS = (
    ("energy_mae", "(a) energy MAE (kcal/mol/atom)", lambda t: KCAL * t["energy"]["mae"], True),
    ("force_mae", "(b) force MAE (kcal/mol/A)", lambda t: KCAL * t["forces"]["mae"], True),
    ("spearman", "(c) Spearman", lambda t: t["forces"]["spearman"], False),
    ("roc_auc", "(d) ROC-AUC", lambda t: t["forces"]["roc_auc"], False),
    (
        "miscalibration",
        "(e) miscalibration area",
        lambda t: t["forces"]["miscalibration_area_recalibrated"],
        True,
    ),
    # cNLL per force component in kcal/mol/A: the eV/A value + log(KCAL) (a change of unit of a density)
    ("cnll", "(f) cNLL (kcal/mol/A)", lambda t: t["forces"]["cnll"] + math.log(KCAL), True),
)
TABLE_BEGIN, TABLE_END = "<!-- table: begin (written by run_study.py) -->", "<!-- table: end -->"


def environment() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # The subprocesses run in this folder: keep a relative PYTHONPATH (e.g. the source tree) valid.
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep)
        )
    return env


def run(args: list[str], log: Path) -> dict:
    """Run ``args`` in this folder, output appended to ``log``; returns wall s, CPU s and peak RSS (MiB)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        process = subprocess.Popen(args, cwd=HERE, stdout=out, stderr=subprocess.STDOUT, env=environment())
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit {process.returncode}); see {log}")
    return {
        "wall_s": time.perf_counter() - started,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "max_rss_mib": usage.ru_maxrss / 1024,  # kB on Linux
    }


def record(path: Path, values: dict) -> None:
    """Write a step's usage to ``path``; a resumed step adds the time of its earlier parts."""
    previous = json.loads(path.read_text()) if path.exists() else None
    if previous and values.get("resumed"):
        values = {
            **values,
            "wall_s": values["wall_s"] + previous.get("wall_s", 0.0),
            "cpu_s": values["cpu_s"] + previous.get("cpu_s", 0.0),
            "max_rss_mib": max(values["max_rss_mib"], previous.get("max_rss_mib", 0.0)),
        }
    path.write_text(json.dumps(values, indent=1) + "\n")


def usages() -> dict:
    """Every recorded usage: {"data MOLECULE" | "baseline" | "train MOLECULE K METHOD": usage}."""
    found = {p.stem.replace("usage_", "").replace("_", " "): p for p in WORK.glob("usage_*.json")}
    for path in WORK.glob("runs/*/split_*/*/usage.json"):
        method, split, molecule = path.parent.name, path.parent.parent.name, path.parent.parent.parent.name
        found[f"train {molecule} {int(split[6:])} {method}"] = path
    return {key: json.loads(path.read_text()) for key, path in found.items()}


def mlipbias_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlipbias", *args]


def step_data(molecules=MOLECULES) -> None:
    for molecule in molecules:
        db = WORK / f"{molecule}.db"
        if db.exists() and _rows(db) >= N_SNAPSHOTS:
            continue
        print(f"data: {molecule}, {N_SNAPSHOTS} snapshots", flush=True)
        args = [
            "data",
            "generate",
            "-c",
            f"{molecule}.yaml",
            "--n-samples",
            str(N_SNAPSHOTS),
            "--no-progress",
        ]
        resumed = db.exists()  # before the run, which creates the file
        usage = run(mlipbias_command(*args), WORK / "logs" / f"data_{molecule}.log")
        record(WORK / f"usage_data_{molecule}.json", {**usage, "resumed": resumed})


def _rows(db: Path) -> int:
    import ase.db

    return ase.db.connect(db).count()


def split_folder(molecule: str, k: int) -> Path:
    return WORK / "splits" / molecule / f"split_{k:02d}"


def step_splits() -> None:
    for molecule in MOLECULES:
        if all((split_folder(molecule, k) / "test.extxyz").exists() for k in range(1, N_SPLITS + 1)):
            continue
        sizes = [
            "--n-splits",
            N_SPLITS,
            "--n-train",
            N_TRAIN,
            "--n-validation",
            N_VALIDATION,
            "--n-test",
            N_TEST,
        ]
        args = [sys.executable, "make_splits.py", f"work/{molecule}.db", "--out", f"work/splits/{molecule}"]
        run(args + [str(s) for s in sizes], WORK / "logs" / f"splits_{molecule}.log")


def run_folder(molecule: str, k: int, method: str) -> Path:
    return WORK / "runs" / molecule / f"split_{k:02d}" / method


def config(molecule: str, k: int, method: str) -> dict:
    folder = run_folder(molecule, k, method)
    split = split_folder(molecule, k)
    training = dict(TRAINING, seed=k)
    if method in ("mve", "evidential"):
        training["force_weight"] = 0.0  # the force term is the NLL (Tan et al. (2023) SI Eqs. 4, 9)
        training["learning_rate"] = HEAD_LEARNING_RATE
    return {
        "data": {
            "path": str(split / "train.extxyz"),
            "validation_path": str(split / "validation.extxyz"),
            "test_path": str(split / "test.extxyz"),
        },
        "model": {"kind": "painn", "painn": PAINN},
        "uncertainty": METHODS[method],
        "training": training,
        "output": {"directory": str(folder), "model": "model.pt"},
    }


def step_train(molecules=MOLECULES, only_method: str | None = None, splits=None) -> None:
    for k in splits or range(1, N_SPLITS + 1):  # whole splits first: an interrupted study has whole splits
        for molecule in molecules:
            for method in METHODS:
                if only_method and method != only_method:
                    continue
                folder = run_folder(molecule, k, method)
                if (folder / "test_metrics.json").exists():
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / "train.yaml"
                path.write_text(yaml.safe_dump(config(molecule, k, method), sort_keys=False))
                resumed = (folder / "checkpoint.pt").exists()
                print(f"train: {molecule} split {k} {method}{' (resuming)' if resumed else ''}", flush=True)
                args = mlipbias_command("train", str(path), "--threads", "1", "--no-progress")
                if resumed:
                    args.append("--resume")
                else:
                    args.append("--overwrite")
                usage = run(args, WORK / "logs" / f"train_{molecule}_{k:02d}_{method}.log")
                record(folder / "usage.json", {**usage, "resumed": resumed})


def step_baseline() -> None:
    """Peak RSS of a process that imports torch and mlipbias and reads a split (every training's floor)."""
    if (WORK / "usage_baseline.json").exists():
        return
    split = split_folder(MOLECULES[0], 1)
    code = (
        "import torch, mlipbias.models.painn_training; from mlipbias.datasets import read_labelled; "
        f"[read_labelled({str(split)!r} + '/' + n + '.extxyz') for n in ('train', 'validation', 'test')]"
    )
    record(WORK / "usage_baseline.json", run([sys.executable, "-c", code], WORK / "logs" / "baseline.log"))


# ------------------------------------------------------------------------------------------ table


def collect() -> dict:
    """{molecule: {method: {panel: [value per split]}}} from the runs' test_metrics.json."""
    values: dict = {}
    for molecule in MOLECULES:
        for method in METHODS:
            cell = {key: [] for key, *_ in PANELS}
            for k in range(1, N_SPLITS + 1):
                path = run_folder(molecule, k, method) / "test_metrics.json"
                if not path.exists():
                    continue
                table = json.loads(path.read_text())["metrics"][method]
                for key, _, value, _ in PANELS:
                    cell[key].append(value(table))
            values.setdefault(molecule, {})[method] = cell
    return values


def cost_rows(timings: dict) -> list[tuple]:
    rows = []
    for method in METHODS:
        entries, per_epoch, wall = [], [], []
        for molecule in MOLECULES:
            for k in range(1, N_SPLITS + 1):
                entry = timings.get(f"train {molecule} {k} {method}")
                metrics = run_folder(molecule, k, method) / "metrics.jsonl"
                finished = (run_folder(molecule, k, method) / "test_metrics.json").exists()
                if entry is None or not metrics.exists() or not finished:
                    continue
                entries.append(entry)
                epochs = metrics.read_text().splitlines()
                per_epoch.append(entry["cpu_s"] / len(epochs))
                wall.append(entry["wall_s"] / entry["cpu_s"])
        if entries:
            rows.append(
                (
                    method,
                    len(entries),
                    float(np.mean([e["cpu_s"] for e in entries])),
                    float(np.mean(per_epoch)),
                    float(np.max([e["max_rss_mib"] for e in entries])),
                    float(np.mean(wall)),
                )
            )
    return rows


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{np.mean(values):.3g} ± {np.std(values, ddof=1):.2g}"


def step_table() -> None:
    values = collect()
    timings = usages()
    lines = [
        f"Means ± standard deviations over the splits ({splits_done(values)} of {N_SPLITS} done,"
        f" {N_TEST} test structures each;"
        " force metrics over every atom of the test set: U_i against the norm of the atom's force error).",
        "",
    ]
    for key, title, _, lower in PANELS:
        lines += [
            f"**{title[4:]}** ({'lower' if lower else 'higher'} is better)",
            "",
            "| molecule | " + " | ".join(LABELS[m] for m in METHODS) + " |",
            "|---|" + "---:|" * len(METHODS),
        ]
        for molecule in MOLECULES:
            cells = [mean_std(values[molecule][m][key]) for m in METHODS]
            lines.append(f"| {molecule} | " + " | ".join(cells) + " |")
        if key == "roc_auc":
            for molecule, paper in PAPER_ROC_AUC.items():
                cells = [f"{paper[m]:.3f}" for m in METHODS]
                lines.append(
                    f"| Tan et al. (2023) Table S2, {molecule} (rMD17) | " + " | ".join(cells) + " |"
                )
        lines.append("")
    rows = cost_rows(timings)
    if rows:
        baseline = timings.get("baseline", {}).get("max_rss_mib")
        lines += [
            "**Training cost per method** (one `mlipbias train` process each, one thread: CPU time of the"
            " whole run, start, training and the evaluation of the test split, in total and divided by the"
            " epochs; peak resident memory"
            + (
                f", of which {baseline:.0f} MiB is the floor of a process importing torch and reading a split"
                if baseline
                else ""
            )
            + ")",
            "",
            "| method | runs | CPU time per run (s) | CPU time per epoch (s) | peak RSS (MiB) | wall / CPU |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for method, n, cpu, epoch, rss, ratio in rows:
            lines.append(f"| {LABELS[method]} | {n} | {cpu:.0f} | {epoch:.2f} | {rss:.0f} | {ratio:.1f} |")
        lines.append("")
    total = sum(v.get("cpu_s", 0.0) for v in timings.values())
    lines.append(f"CPU time of every recorded step together: {total / 60:.1f} min (`work/**/usage*.json`).")
    text = "\n".join(lines) + "\n"
    (HERE / "results.md").write_text("# Results (written by run_study.py)\n\n" + text)
    readme = HERE / "README.md"
    content = readme.read_text()
    if TABLE_BEGIN in content and TABLE_END in content:
        head, rest = content.split(TABLE_BEGIN, 1)
        _, tail = rest.split(TABLE_END, 1)
        readme.write_text(head + TABLE_BEGIN + "\n\n" + text + "\n" + TABLE_END + tail)
    heatmaps(values)
    print(text)


def splits_done(values: dict) -> int:
    return max(
        (len(cell[key]) for row in values.values() for cell in row.values() for key in cell), default=0
    )


def heatmaps(values: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(METHODS)
    fig, axes = plt.subplots(2, 3, figsize=(13, 4.8), constrained_layout=True)
    for ax, (key, title, _, lower) in zip(axes.ravel(), PANELS, strict=True):
        grid = np.array(
            [
                [np.mean(values[m][x][key]) if values[m][x][key] else np.nan for x in methods]
                for m in MOLECULES
            ]
        )
        image = ax.imshow(grid, cmap="viridis_r" if lower else "viridis", aspect="auto")
        for (r, c), v in np.ndenumerate(grid):
            if np.isfinite(v):
                box = {"facecolor": "w", "alpha": 0.7, "linewidth": 0}
                ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=9, bbox=box)
        ax.set_xticks(range(len(methods)), [LABELS[m].split(" (")[0] for m in methods])
        ax.set_yticks(range(len(MOLECULES)), MOLECULES)
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(
        f"PaiNN on MD17-like GFN2-xTB data: test metrics, mean over {splits_done(values)} split(s)"
        " (as Tan et al. Fig. S2)"
    )
    fig.savefig(HERE / "fig_heatmaps.png", dpi=110)
    plt.close(fig)


STEPS = {
    "data": step_data,
    "splits": step_splits,
    "baseline": step_baseline,
    "train": step_train,
    "table": step_table,
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=list(STEPS), help="run one step")
    parser.add_argument("--method", choices=list(METHODS), help="train: only this method")
    parser.add_argument("--molecule", choices=MOLECULES, help="data, train: only this molecule")
    parser.add_argument(
        "--split", type=int, choices=range(1, N_SPLITS + 1), help="train: only this split (one process each)"
    )
    args = parser.parse_args(argv)
    WORK.mkdir(exist_ok=True)
    molecules = [args.molecule] if args.molecule else list(MOLECULES)
    for name, step in STEPS.items():
        if args.only and name != args.only:
            continue
        if name == "train":
            step(molecules, args.method, [args.split] if args.split else None)
        elif name == "data":
            step(molecules)
        else:
            step()


if __name__ == "__main__":
    main()
