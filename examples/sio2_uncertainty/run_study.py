"""Six uncertainty methods on BKS SiO2, in and out of domain: data, training, evaluation, table, figures.

Run from anywhere (paths are relative to this folder):

    PYTHONPATH=python python examples/sio2_uncertainty/run_study.py            # all steps
    python examples/sio2_uncertainty/run_study.py --only table                   # one step

Every step calls the ``mlipbias`` command line (``data generate``, ``train``, ``evaluate``) in a
subprocess, logs to ``work/logs/STEP.log``, and is skipped when its output exists, so an interrupted
study resumes where it stopped (``data generate`` and ``train --resume`` also resume inside a step).
The wall time of every step goes to ``work/timings.json``. The last step reads the ``metrics.json``
files of ``mlipbias evaluate`` and writes ``results.md`` (the table, also put into README.md between
its markers) and the figures ``fig_ranking.png`` and ``fig_hexbin.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
CONFIGS = HERE / "configs"

#: Trained models, in the order they are trained: config name -> the methods it evaluates.
MODELS = {
    "single": ["gmm", "posterior", "distance"],
    "ensemble": ["ensemble"],
    "mve": ["mve"],
    "evidential": ["evidential"],
}
METHOD_ORDER = ["ensemble", "mve", "evidential", "gmm", "posterior", "distance"]
METHOD_LABELS = {
    "ensemble": "ensemble (M = 4)",
    "mve": "MVE",
    "evidential": "evidential",
    "gmm": "GMM",
    "posterior": "GF posterior",
    "distance": "GF distance",
}
#: Evaluation sets: name -> (database, description for the table).
TEST_SETS = {
    "in_domain": ("test.db", "in-domain test (norm U[0, 1] A)"),
    "ood_displacements": ("ood_displacements.db", "OOD displacements (norm in [1, 2] A)"),
    "ood_md": ("ood_md_3000K.db", "OOD BKS MD at 3000 K"),
}
SPLIT_SEED = 0
TABLE_BEGIN, TABLE_END = "<!-- table: begin (written by run_study.py) -->", "<!-- table: end -->"
#: The heads comparison (README, "Post-hoc and published heads"): config -> (method, how the head trains).
#: All four train on the same first N_HEADS_TRAIN / N_HEADS_VALIDATION rows of train.db / validation.db.
HEADS = {
    "heads_mve_post_hoc": ("mve", "post hoc (mean by SI Eq. 1)"),
    "heads_mve_joint": ("mve", "joint, published (SI Eqs. 2-4)"),
    "heads_evidential_post_hoc": ("evidential", "post hoc (mean by SI Eq. 1)"),
    "heads_evidential_joint": ("evidential", "joint, published (SI Eqs. 5-9)"),
}
N_HEADS_TRAIN, N_HEADS_VALIDATION = 32, 16
HEADS_BEGIN, HEADS_END = "<!-- heads table: begin (written by run_study.py) -->", "<!-- heads table: end -->"


def mlipbias(*args: str, log: Path) -> None:
    """Run ``python -m mlipbias ARGS`` with its output appended to ``log``; fail loudly."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    # The subprocess runs in this folder: keep a relative PYTHONPATH (e.g. the source tree) valid.
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p
        )
    command = [sys.executable, "-m", "mlipbias", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(command)}\n")
        f.flush()
        status = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=HERE, env=env).returncode
    if status != 0:
        raise SystemExit(f"step failed ({' '.join(args[:2])}); see {log}")


def timed(name: str, function, *args) -> None:
    """Run one step and record its wall time (seconds) in work/timings.json."""
    path = WORK / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    started = time.perf_counter()
    function(*args)
    timings[name] = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(timings, indent=1) + "\n")
    print(f"[{time.strftime('%H:%M:%S')}] {name} done in {timings[name]:.0f} s", flush=True)


def copy_rows(source: Path, target: Path, keep) -> int:
    """Copy the rows of ``source`` for which ``keep(row)`` holds, with their labels and key-value pairs."""
    import ase.db

    tmp = target.with_suffix(".tmp.db")
    tmp.unlink(missing_ok=True)
    n = 0
    with ase.db.connect(source) as src, ase.db.connect(tmp) as dst:
        dst.metadata = src.metadata
        for index, row in enumerate(src.select(sort="id")):
            if keep(index, row):
                dst.write(row.toatoms(), key_value_pairs=row.key_value_pairs)
                n += 1
    tmp.replace(target)
    return n


# ------------------------------------------------------------------------------------------ steps


def step_data() -> None:
    for name in ("in_domain", "ood_displacements", "ood_md"):
        mlipbias(
            "data",
            "generate",
            "-c",
            str(CONFIGS / f"data_{name}.yaml"),
            "--no-progress",
            log=WORK / "logs" / f"data_{name}.log",
        )


def step_split() -> None:
    """80/10/10 split of the in-domain data; OOD displacements keep the norms in [1, 2] A."""
    import ase.db

    from mlipbias.datasets import split_dataset

    n = ase.db.connect(WORK / "in_domain.db").count()
    parts = split_dataset(n, (0.8, 0.1, 0.1), seed=SPLIT_SEED)
    for name, part in zip(("train", "validation", "test"), parts, strict=True):
        chosen = set(part.tolist())
        written = copy_rows(
            WORK / "in_domain.db", WORK / f"{name}.db", lambda i, row, chosen=chosen: i in chosen
        )
        print(f"  {name}.db: {written} structures")
    written = copy_rows(
        WORK / "ood_displacements_all.db", WORK / "ood_displacements.db", lambda i, row: row.norm >= 1.0
    )
    print(f"  ood_displacements.db: {written} structures with norm >= 1 A")


def step_split_heads() -> None:
    """The heads comparison's data: the first rows of train.db and validation.db (a random subset: the
    split is a random permutation)."""
    for name, n in (("train", N_HEADS_TRAIN), ("validation", N_HEADS_VALIDATION)):
        written = copy_rows(WORK / f"{name}.db", WORK / f"{name}_heads.db", lambda i, row, n=n: i < n)
        print(f"  {name}_heads.db: {written} structures")


def step_train(name: str) -> None:
    mlipbias(
        "train",
        str(CONFIGS / f"train_{name}.yaml"),
        "--resume",
        "--no-progress",
        log=WORK / "logs" / f"train_{name}.log",
    )


def step_evaluate(name: str, test_set: str) -> None:
    database = TEST_SETS[test_set][0]
    mlipbias(
        "evaluate",
        "--model", str(WORK / name / "model.mlip"),
        "--data", str(WORK / database),
        "--calibration-data", str(WORK / "validation.db"),
        "--out", str(WORK / "eval" / name / test_set),
        "--no-progress",
        log=WORK / "logs" / f"evaluate_{name}_{test_set}.log",
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ table


def load_metrics() -> dict:
    """metrics[test_set][method] = {"energy": {...}, "forces": {...}, "coverage": {...}}."""
    metrics: dict = {}
    for name, methods in MODELS.items():
        for test_set in TEST_SETS:
            path = WORK / "eval" / name / test_set / "metrics.json"
            payload = json.loads(path.read_text())
            for method in methods:
                metrics.setdefault(test_set, {})[method] = {
                    "energy": payload["metrics"][f"energy {method}"],
                    "forces": payload["metrics"].get(f"forces {method}"),
                    "coverage": {q: payload["coverage"].get(f"{q} {method}") for q in ("energy", "forces")},
                    "n_structures": payload["n_structures"],
                }
    return metrics


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def results_markdown(metrics: dict) -> str:
    header = (
        "| method | E RMSE (meV/atom) | F RMSE (eV/A) | Spearman E | ROC-AUC E | miscal. area E | cNLL E "
        "| Spearman F | ROC-AUC F | miscal. area F | cNLL F | inside U (E / F) |"
    )
    rule = "|---|" + "---:|" * 11
    blocks = []
    for test_set, (_, title) in TEST_SETS.items():
        n = next(iter(metrics[test_set].values()))["n_structures"]
        lines = [f"**{title}**, {n} structures", "", header, rule]
        for method in METHOD_ORDER:
            m = metrics[test_set][method]
            e, f, c = m["energy"], m["forces"] or {}, m["coverage"]
            lines.append(
                "| "
                + " | ".join(
                    [
                        METHOD_LABELS[method],
                        _cell(1000 * e["rmse"], ".2f"),
                        _cell(f.get("rmse"), ".3f"),
                        _cell(e.get("spearman"), ".2f"),
                        _cell(e.get("roc_auc"), ".2f"),
                        _cell(e.get("miscalibration_area_recalibrated"), ".2f"),
                        _cell(e.get("cnll"), ".2f"),
                        _cell(f.get("spearman"), ".2f"),
                        _cell(f.get("roc_auc"), ".2f"),
                        _cell(f.get("miscalibration_area_recalibrated"), ".2f"),
                        _cell(f.get("cnll"), ".2f"),
                        f"{_cell(c['energy'], '.2f')} / {_cell(c['forces'], '.2f')}",
                    ]
                )
                + " |"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def energy_predictions(method: str, test_set: str):
    """(|E - E_ref|, calibrated U) per structure of one method on one test set, from predictions.npz."""
    import numpy as np

    model = next(name for name, methods in MODELS.items() if method in methods)
    p = np.load(WORK / "eval" / model / test_set / "predictions.npz")
    return np.abs(p[f"{method}_energy"] - p["energy_ref"]), p[f"{method}_uncertainty"]


def pooled_markdown() -> str:
    """Energy ranking over the three sets pooled, and how far U and the error grow out of domain."""
    import numpy as np

    from mlipbias.uq.metrics import roc_auc, spearman

    lines = [
        "| method | Spearman E (pooled) | ROC-AUC E (pooled) "
        "| U: OOD displ. / in-domain | U: OOD MD / in-domain |",
        "|---|---:|---:|---:|---:|",
    ]
    for method in METHOD_ORDER:
        parts = {test_set: energy_predictions(method, test_set) for test_set in TEST_SETS}
        error = np.concatenate([e for e, _ in parts.values()])
        u = np.concatenate([u for _, u in parts.values()])
        median = {k: (np.median(e), np.median(v)) for k, (e, v) in parts.items()}
        ratio = [median[k][1] / median["in_domain"][1] for k in ("ood_displacements", "ood_md")]
        lines.append(
            f"| {METHOD_LABELS[method]} | {spearman(error, u):.2f} | {roc_auc(error, u):.2f} "
            f"| {ratio[0]:.1f} | {ratio[1]:.1f} |"
        )
    growth = [median[k][0] / median["in_domain"][0] for k in ("ood_displacements", "ood_md")]
    label = f"for comparison: median error ratio ({METHOD_LABELS[method]})"
    lines.append(f"| {label} | | | {growth[0]:.0f} | {growth[1]:.0f} |")
    return "\n".join(lines) + "\n"


def figures(metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sets = list(TEST_SETS)
    colors = ["tab:blue", "tab:orange", "tab:red"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex=True)
    x = np.arange(len(METHOD_ORDER))
    width = 0.8 / len(sets)
    for col, quantity in enumerate(("energy", "forces")):
        for row, (key, label) in enumerate(
            (("spearman", "Spearman rho(U, |error|)"), ("roc_auc", "ROC-AUC"))
        ):
            ax = axes[row, col]
            for k, test_set in enumerate(sets):
                values = []
                for method in METHOD_ORDER:
                    table = metrics[test_set][method][quantity] or {}
                    value = table.get(key)
                    values.append(np.nan if value is None else value)
                ax.bar(x + (k - 1) * width, values, width, color=colors[k], label=TEST_SETS[test_set][1])
            ax.axhline(0.5 if key == "roc_auc" else 0.0, color="k", lw=0.8)
            ax.set_ylabel(label)
            ax.set_title(f"{quantity} uncertainty")
            ax.set_xticks(x, [METHOD_LABELS[m] for m in METHOD_ORDER], rotation=25, ha="right")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(HERE / "fig_ranking.png", dpi=90)
    plt.close(fig)

    # Energy U vs |error| for every method, in-domain test and OOD points together.
    fig, axes = plt.subplots(2, 3, figsize=(12, 7))
    for ax, method in zip(axes.ravel(), METHOD_ORDER, strict=True):
        for k, test_set in enumerate(sets):
            error, u = energy_predictions(method, test_set)
            ax.scatter(
                u,
                error,
                s=5,
                alpha=0.5,
                color=colors[k],
                label=TEST_SETS[test_set][1],
            )
        ax.set(
            xscale="log",
            yscale="log",
            title=METHOD_LABELS[method],
            xlabel="calibrated U (eV)",
            ylabel="|E error| (eV)",
        )
        lo, hi = min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(HERE / "fig_energy_u_vs_error.png", dpi=80)
    plt.close(fig)


def timings_markdown() -> str:
    """The wall time of every step (work/timings.json) as a markdown table."""
    path = WORK / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    lines = ["| step | wall time |", "|---|---:|"]
    lines += [f"| {name} | {seconds / 60:.1f} min |" for name, seconds in timings.items()]
    lines.append(f"| total | {sum(timings.values()) / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def step_table() -> None:
    metrics = load_metrics()
    table = (
        results_markdown(metrics)
        + "\n**All three sets pooled** (energy U against |E - E_ref|, 453 structures; "
        "ratios of median U):\n\n"
        + pooled_markdown()
        + "\nWall time of each step (`work/timings.json`):\n\n"
        + timings_markdown()
    )
    (HERE / "results.md").write_text("# Results (written by run_study.py)\n\n" + table)
    (WORK / "metrics_all.json").write_text(json.dumps(metrics, indent=1) + "\n")
    readme = HERE / "README.md"
    if readme.exists():
        text = readme.read_text()
        if TABLE_BEGIN in text and TABLE_END in text:
            head, rest = text.split(TABLE_BEGIN, 1)
            _, tail = rest.split(TABLE_END, 1)
            readme.write_text(head + TABLE_BEGIN + "\n\n" + table + "\n" + TABLE_END + tail)
    figures(metrics)
    print(table)


def heads_markdown() -> str:
    """The heads comparison: one row per (method, training mode), one block per test set."""
    header = (
        "| method | head training | E RMSE (meV/atom) | F RMSE (eV/A) | Spearman E | ROC-AUC E | cNLL E "
        "| Spearman F | ROC-AUC F | miscal. area F | cNLL F | inside U (E / F) |"
    )
    blocks = []
    for test_set, (_, title) in TEST_SETS.items():
        lines = None
        for name, (method, mode) in HEADS.items():
            path = WORK / "eval" / name / test_set / "metrics.json"
            if not path.exists():
                continue
            payload = json.loads(path.read_text())
            if lines is None:
                lines = [
                    f"**{title}**, {payload['n_structures']} structures",
                    "",
                    header,
                    "|---|---|" + "---:|" * 10,
                ]
            e = payload["metrics"][f"energy {method}"]
            f = payload["metrics"].get(f"forces {method}") or {}
            c = {q: payload["coverage"].get(f"{q} {method}") for q in ("energy", "forces")}
            cells = [
                METHOD_LABELS[method],
                mode,
                _cell(1000 * e["rmse"], ".2f"),
                _cell(f.get("rmse"), ".3f"),
                _cell(e.get("spearman"), ".2f"),
                _cell(e.get("roc_auc"), ".2f"),
                _cell(e.get("cnll"), ".2f"),
                _cell(f.get("spearman"), ".2f"),
                _cell(f.get("roc_auc"), ".2f"),
                _cell(f.get("miscalibration_area_recalibrated"), ".2f"),
                _cell(f.get("cnll"), ".2f"),
                f"{_cell(c['energy'], '.2f')} / {_cell(c['forces'], '.2f')}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        if lines:
            blocks.append("\n".join(lines))
    path = WORK / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    steps = {
        k: v for k, v in timings.items() if k.startswith(("train heads", "evaluate heads", "split heads"))
    }
    cost = ["| step | wall time |", "|---|---:|"] + [f"| {k} | {v / 60:.1f} min |" for k, v in steps.items()]
    cost.append(f"| total | {sum(steps.values()) / 60:.1f} min |")
    return (
        "\n\n".join(blocks) + "\n\nWall time of each step (`work/timings.json`):\n\n" + "\n".join(cost) + "\n"
    )


def step_heads_table() -> None:
    table = heads_markdown()
    (HERE / "results_heads.md").write_text(
        "# Post-hoc and published heads (written by run_study.py)\n\n" + table
    )
    readme = HERE / "README.md"
    text = readme.read_text()
    if HEADS_BEGIN in text and HEADS_END in text:
        head, rest = text.split(HEADS_BEGIN, 1)
        _, tail = rest.split(HEADS_END, 1)
        readme.write_text(head + HEADS_BEGIN + "\n\n" + table + "\n" + HEADS_END + tail)
    print(table)


# ------------------------------------------------------------------------------------------ driver


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        choices=["data", "split", "train", "evaluate", "table", "heads"],
        help="run one step (and nothing else); heads: the heads comparison (data and split if missing)",
    )
    parser.add_argument(
        "--model", action="append", choices=list(MODELS), help="train/evaluate only this model (repeatable)"
    )
    args = parser.parse_args(argv)
    models = args.model or list(MODELS)
    WORK.mkdir(exist_ok=True)

    def want(step: str) -> bool:
        return args.only in (None, step)

    if want("data") and not (WORK / "ood_md_3000K.done").exists():
        timed("data", step_data)
        (WORK / "ood_md_3000K.done").touch()
    if want("split") and not (WORK / "ood_displacements.db").exists():
        timed("split", step_split)
    for name in models:
        if want("train") and not (WORK / name / "model.mlip").exists():
            timed(f"train {name}", step_train, name)
    for name in models:
        for test_set in TEST_SETS:
            if want("evaluate") and not (WORK / "eval" / name / test_set / "metrics.json").exists():
                timed(f"evaluate {name} {test_set}", step_evaluate, name, test_set)
    if want("table") and models == list(MODELS):
        step_table()
    if args.only in (None, "heads") and not args.model:
        if not (WORK / "ood_md_3000K.done").exists():
            timed("data", step_data)
            (WORK / "ood_md_3000K.done").touch()
        if not (WORK / "ood_displacements.db").exists():
            timed("split", step_split)
        if not (WORK / "validation_heads.db").exists():
            timed("split heads", step_split_heads)
        for name in HEADS:  # each model evaluated before the next trains: results arrive as they go
            if not (WORK / name / "model.mlip").exists():
                timed(f"train {name.replace('_', ' ', 1)}", step_train, name)
            for test_set in TEST_SETS:
                if not (WORK / "eval" / name / test_set / "metrics.json").exists():
                    timed(f"evaluate {name.replace('_', ' ', 1)} {test_set}", step_evaluate, name, test_set)
        step_heads_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
