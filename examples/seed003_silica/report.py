"""Tables (results.md) and figures of the silica study from the files run_study.py wrote in work/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ase import units

KCAL = units.kcal / units.mol
METHODS = ("ensemble", "mve", "evidential", "gmm")
LABELS = {"ensemble": "ensemble (3)", "mve": "MVE", "evidential": "evidential", "gmm": "GMM"}
GENERATIONS = (1, 2, 3)


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def _energies_per_atom(path: Path) -> np.ndarray:
    import ase.db

    if not path.exists():
        return np.zeros(0)
    with ase.db.connect(path) as db:
        return np.array([row.energy / row.natoms for row in db.select()])


def _max_forces(path: Path) -> np.ndarray:
    import ase.db

    if not path.exists():
        return np.zeros(0)
    with ase.db.connect(path) as db:
        return np.array([np.linalg.norm(row.forces, axis=1).max() for row in db.select()])


def write_report(work: Path, here: Path, scale: dict, table_s1: list) -> None:
    lines = ["# Silica study (Tan et al. 2023, study 2), scaled: results", ""]
    lines += [
        "Written by `run_study.py` (`--only report`). Units: energies per atom above the lowest training",
        "energy per atom (kcal/mol/atom, as Tan et al.'s cutoffs), forces eV/A, MD time fs.",
        "",
    ]

    # Data
    import ase.db

    counts = {}
    with ase.db.connect(work / "initial.db") as db:
        for row in db.select():
            counts[row.condition] = counts.get(row.condition, 0) + 1
    lines += [
        "## Initial data (Tan et al.'s Table S1, scaled)",
        "",
        "| condition | T (K) | strain rate x, y (Tan et al., 1e-4/ps) | frames, Tan et al. | frames, here |",
        "|---|---|---|---|---|",
    ]
    for name, kind, t, rx, ry, n_paper, _ in table_s1:
        rates = "-" if kind != "deform" else f"{rx:g}, {ry:g}"
        temp = "2300 -> 300" if kind == "cool" else f"{t}"
        lines.append(f"| {name} | {temp} | {rates} | {n_paper} | {counts.get(name, 0)} |")
    lines.append(f"| total | | | 1590 | {sum(counts.values())} |")
    split = _load(work / "split.json")
    lines += [
        "",
        f"Split 80/20: {len(split['training'])} training, {len(split['validation'])} validation "
        "(Tan et al.: 1272 / 318).",
        "",
    ]

    e_train = _energies_per_atom(work / "initial.db")
    e_min = e_train.min()
    test_idx = _load(work / "test.json")["indices"]
    e_test = _energies_per_atom(work / "test_candidates.db")[test_idx]
    f_test = _max_forces(work / "test_candidates.db")[test_idx]
    to_kcal = 1.0 / KCAL
    lines += [
        "## Test set (adversarial samples of a trial model)",
        "",
        f"{len(test_idx)} structures, energies {to_kcal * (e_test.min() - e_min):.2f} to "
        f"{to_kcal * (e_test.max() - e_min):.2f} kcal/mol/atom above the training minimum, largest atomic "
        f"force {f_test.min():.1f} to {f_test.max():.1f} eV/A (Tan et al.: 402 structures, 0 to 43 "
        f"kcal/mol/atom). Training set: 0 to {to_kcal * (e_train.max() - e_min):.2f} kcal/mol/atom, largest "
        f"force up to {_max_forces(work / 'initial.db').max():.1f} eV/A.",
        "",
    ]

    # Generation-1 metrics on the test set (Fig. 4b)
    lines += [
        "## Generation 1 on the test set (Tan et al. Fig. 4b)",
        "",
        "Per-atom force errors ranked by U_i; cNLL with a, b fitted on the validation set.",
        "",
        "| method | energy MAE (meV/atom) | force MAE (eV/A) | Spearman | ROC-AUC | miscal. area | cNLL |",
        "|---|---|---|---|---|---|---|",
    ]
    evaluations = {
        (g, m): _load(work / f"gen{g}" / m / "evaluation.json") for g in GENERATIONS for m in METHODS
    }
    for m in METHODS:
        ev = evaluations[(1, m)]
        if ev is None:
            continue
        e, f = ev["tables"]["test"]["energy"], ev["tables"]["test"]["forces"]
        lines.append(
            f"| {LABELS[m]} | {1000 * e['mae']:.1f} | {f['mae']:.3f} | {_fmt(f['spearman'], 2)} | "
            f"{_fmt(f['roc_auc'], 2)} | {_fmt(f['miscalibration_area'], 2)} | {_fmt(f['cnll'], 3)} |"
        )
    lines += [
        "",
        "The same metrics on the training set and on each method's own adversarial samples "
        "(Tan et al. Fig. S16):",
        "",
        "| method | set | Spearman | ROC-AUC |",
        "|---|---|---|---|",
    ]
    from mlipbias.uq.metrics import roc_auc, spearman

    for m in METHODS:
        ev = evaluations[(1, m)]
        if ev is None:
            continue
        for name, points in (
            ("training", ev["points"]["training"]),
            ("own adversarial", ev["own_adversarial_points"]),
        ):
            if not points:
                continue
            err, u = np.sqrt(points["sq_err"]), np.array(points["U_i"])
            lines.append(f"| {LABELS[m]} | {name} | {spearman(err, u):.2f} | {roc_auc(err, u, 20.0):.2f} |")

    # MAE per generation (Fig. 4d, S14)
    lines += [
        "",
        "## Errors per generation (Tan et al. Fig. 4d and S14)",
        "",
        "| method | set | "
        + " | ".join(f"gen {g} E (meV/atom) | gen {g} F (eV/A)" for g in GENERATIONS)
        + " |",
        "|---|---|" + "---|---|" * len(GENERATIONS),
    ]
    for m in METHODS:
        for name in ("test", "training", "validation"):
            cells = []
            for g in GENERATIONS:
                ev = evaluations[(g, m)]
                if ev is None:
                    cells += ["-", "-"]
                    continue
                t = ev["tables"][name]
                cells += [f"{1000 * t['energy']['mae']:.1f}", f"{t['forces']['mae']:.3f}"]
            lines.append(f"| {LABELS[m]} | {name} | " + " | ".join(cells) + " |")

    # MD stability (Fig. 4c)
    lines += [
        "",
        f"## Stable MD at {scale['stab_temperature']:.0f} K (Tan et al. Fig. 4c)",
        "",
        f"{scale['stab_trajectories']} trajectories of at most {scale['stab_steps']} steps of "
        f"{scale['stab_timestep_fs']} fs ({scale['stab_steps'] * scale['stab_timestep_fs']:.0f} fs) per "
        "model; "
        "mean stable time (fs) and, in brackets, each trajectory's end.",
        "",
        "| method | " + " | ".join(f"gen {g}" for g in GENERATIONS) + " |",
        "|---|" + "---|" * len(GENERATIONS),
    ]
    md = {(g, m): _load(work / f"gen{g}" / m / "md.json") for g in GENERATIONS for m in METHODS}
    for m in METHODS:
        cells = []
        for g in GENERATIONS:
            runs = md[(g, m)]
            if runs is None:
                cells.append("-")
                continue
            each = ", ".join(f"{r['fs']:.0f}" + ("" if r["reason"] == "stable" else "*") for r in runs)
            cells.append(f"{np.mean([r['fs'] for r in runs]):.0f} ({each})")
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    lines += ["", "`*`: the trajectory failed (reason in work/genG/METHOD/md.json).", ""]

    # Adversarial samples (Fig. 4a)
    lines += [
        "## Adversarial samples (Tan et al. Fig. 4a)",
        "",
        f"{scale['adv_samples']} per method and generation, {scale['adv_iterations']} Adam iterations, "
        f"learning rate {scale['adv_learning_rate']:g} A, kT 0.7 kcal/mol/atom, cutoff on the predicted "
        "energy "
        "7.2 (for generation 2) and 14.3 (generation 3) kcal/mol/atom above the training minimum "
        "(Tan et al.: "
        "5000 and 10000 kcal/mol for 699 atoms). BKS energies (kcal/mol/atom above the training minimum) and "
        "largest atomic force (eV/A): median [min, max].",
        "",
        "| method | samples for | n | rejected starts | energy | largest force |",
        "|---|---|---|---|---|---|",
    ]
    for g in (1, 2):
        for m in METHODS:
            path = work / f"gen{g}" / m / "adversarial.db"
            e = (_energies_per_atom(path) - e_min) * to_kcal
            f = _max_forces(path)
            log = work / f"gen{g}" / m / "adversarial.jsonl"
            rejected = 0
            if log.exists():
                rejected = sum(len(json.loads(x)["rejected"]) for x in log.read_text().splitlines())
            if len(e) == 0:
                lines.append(f"| {LABELS[m]} | gen {g + 1} | 0 | {rejected} | - | - |")
                continue
            lines.append(
                f"| {LABELS[m]} | gen {g + 1} | {len(e)} | {rejected} | {np.median(e):.2f} "
                f"[{e.min():.2f}, {e.max():.2f}] | {np.median(f):.1f} [{f.min():.1f}, {f.max():.1f}] |"
            )

    # Cost and time
    cost = _load(work / "cost.json") or {}
    timings = {}
    if (work / "timings.jsonl").exists():
        for line in (work / "timings.jsonl").read_text().splitlines():
            entry = json.loads(line)  # a step run again (resumed, repeated) adds its time
            total = timings.setdefault(entry["step"], {"wall_s": 0.0, "cpu_s": 0.0})
            total["wall_s"] += entry["wall_s"]
            total["cpu_s"] += entry["cpu_s"]
    cpu = sum(v["cpu_s"] for v in timings.values())
    wall = sum(v["wall_s"] for v in timings.values())
    lines += [
        "",
        "## Cost",
        "",
        "CPU seconds of one training step on one structure (forces by the double backward, Adam), float64, "
        "one thread:",
        "",
        "| architecture | 96 atoms | 768 atoms |",
        "|---|---|---|",
    ]
    for arch, label in (
        ("paper", "Tan et al. (128 features, 3 layers)"),
        ("study", f"here ({scale['painn']['features']} features, {scale['painn']['layers']} layers)"),
    ):
        lines.append(f"| {label} | {_fmt(cost.get(f'{arch}/96'))} | {_fmt(cost.get(f'{arch}/768'))} |")
    if "paper_protocol_core_days" in cost:
        lines += [
            "",
            f"Tan et al.'s protocol (1272 training cells of 699 atoms, 1000 epochs, 3 members) would take "
            f"about {cost['paper_protocol_core_days']:.0f} core-days of training steps per generation and "
            "method here.",
        ]
    lines += [
        "",
        f"Steps of the study: {cpu:.0f} s CPU, {wall:.0f} s wall summed over the steps (work/timings.jsonl; "
        "two processes ran the methods side by side, so the elapsed time is shorter).",
        "",
        "| step | wall (s) | CPU (s) |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v['wall_s']:.0f} | {v['cpu_s']:.0f} |" for k, v in timings.items()]
    lines.append("")
    (here / "results.md").write_text("\n".join(lines) + "\n")
    _figures(work, here, evaluations, md, e_min)


def _figures(work: Path, here: Path, evaluations: dict, md: dict, e_min: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Uncertainty vs squared force error, generation 1 (Fig. 4b and S16).
    fig, axes = plt.subplots(3, 4, figsize=(13, 9), squeeze=False)
    for col, m in enumerate(METHODS):
        ev = evaluations[(1, m)]
        for row, (name, points) in enumerate(
            (
                ("training", ev and ev["points"]["training"]),
                ("own adversarial", ev and ev["own_adversarial_points"]),
                ("test", ev and ev["points"]["test"]),
            )
        ):
            ax = axes[row][col]
            if points:
                err, u = np.array(points["sq_err"]), np.array(points["U_i"])
                x = u if m == "gmm" else np.log10(np.maximum(u, 1e-12))
                ax.hexbin(
                    x, np.log10(np.maximum(err, 1e-12)), gridsize=30, bins="log", mincnt=1, cmap="viridis"
                )
            ax.set_title(f"{LABELS[m]}: {name}", fontsize=9)
            ax.set_xlabel("GMM NLL" if m == "gmm" else "log10 U_i ((eV/A)^2)", fontsize=8)
            ax.set_ylabel("log10 |dF_i|^2/3 ((eV/A)^2)", fontsize=8)
    fig.tight_layout()
    fig.savefig(here / "fig_uncertainty_vs_error.png", dpi=110)
    plt.close(fig)

    # Generations: test MAE, MD stability, adversarial energies (Fig. 4a, c, d).
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for k, m in enumerate(METHODS):
        gens = [g for g in GENERATIONS if evaluations[(g, m)]]
        emae = [1000 * evaluations[(g, m)]["tables"]["test"]["energy"]["mae"] for g in gens]
        fmae = [evaluations[(g, m)]["tables"]["test"]["forces"]["mae"] for g in gens]
        axes[0].plot(gens, emae, "o-", label=LABELS[m])
        axes[1].plot(gens, fmae, "o-", label=LABELS[m])
        mg = [g for g in GENERATIONS if md[(g, m)]]
        # Offsets keep methods with equal times (e.g. all at the 150 fs limit) visible.
        mx = [g + 0.05 * (k - 1.5) for g in mg]
        axes[2].plot(mx, [np.mean([r["fs"] for r in md[(g, m)]]) for g in mg], "o-", label=LABELS[m])
        for g in (1, 2):
            e = (_energies_per_atom(work / f"gen{g}" / m / "adversarial.db") - e_min) / KCAL
            axes[3].scatter(
                np.full(len(e), g + 1 + 0.12 * (k - 1.5)),
                e,
                s=14,
                label=LABELS[m] if g == 1 else None,
                color=f"C{k}",
            )
    e_train = (_energies_per_atom(work / "initial.db") - e_min) / KCAL
    axes[3].scatter(np.full(len(e_train), 1.0), e_train, s=8, color="gray", label="initial data")
    for ax, title in zip(
        axes,
        (
            "test energy MAE (meV/atom)",
            "test force MAE (eV/A)",
            "mean stable MD time (fs)",
            "BKS energy (kcal/mol/atom above min)",
        ),
        strict=True,
    ):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("generation")
        ax.set_xticks(GENERATIONS)
    axes[0].legend(fontsize=7)
    axes[3].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(here / "fig_generations.png", dpi=110)
    plt.close(fig)
