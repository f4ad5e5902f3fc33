"""The per-generation summary of an active-learning run: table, CSV, JSON and plots.

Each generation appends one row to ``summary.jsonl`` when it ends (a resumed run skips rows it
has); ``summary.csv``, ``summary.json`` and ``al_summary.png`` (dataset size against generation,
test errors against dataset size, largest per-atom uncertainty reached by the walkers) are
rewritten from it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

COLUMNS = (
    ("generation", "gen", "{}"),
    ("dataset_size", "data", "{}"),
    ("test_energy_rmse", "E RMSE meV/at", "{:.3g}"),
    ("test_force_rmse", "F RMSE eV/A", "{:.4g}"),
    ("test_stress_rmse", "S RMSE meV/A3", "{:.3g}"),
    ("explore_candidates", "candidates", "{}"),
    ("explore_md_steps", "MD steps", "{}"),
    ("explore_max_atom_uncertainty", "max U_i", "{:.3g}"),
    ("labels_labelled", "labelled", "{}"),
    ("labels_rejected", "rejected", "{}"),
    ("seconds_train", "train s", "{:.0f}"),
    ("seconds_explore", "explore s", "{:.0f}"),
    ("seconds_select", "select s", "{:.1f}"),
    ("seconds_label", "label s", "{:.1f}"),
)


def read_summary(directory) -> list[dict]:
    path = Path(directory) / "summary.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_summary(directory, row: dict, log=print) -> None:
    """Append ``row`` (once per generation), rewrite the CSV, JSON and plots, print the table."""
    directory = Path(directory)
    rows = [r for r in read_summary(directory) if r["generation"] != row["generation"]]
    rows.append(row)
    rows.sort(key=lambda r: r["generation"])
    tmp = directory / "summary.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(directory / "summary.jsonl")
    (directory / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    keys = sorted({k for r in rows for k in r}, key=lambda k: ([c[0] for c in COLUMNS] + [k]).index(k))
    with open(directory / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()})
    log(format_table(rows))
    write_plots(rows, directory / "al_summary.png")


def format_table(rows: list[dict]) -> str:
    """The summary as an aligned text table (energy RMSE in meV/atom, stress RMSE in meV/A^3)."""
    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    table = [[title for _, title, _ in columns]]
    for r in rows:
        line = []
        for key, _, fmt in columns:
            value = r.get(key)
            if value is None:
                line.append("-")
            else:
                line.append(
                    fmt.format(1000 * value if key in ("test_energy_rmse", "test_stress_rmse") else value)
                )
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in table)


def write_plots(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    gens = [r["generation"] for r in rows]
    axes[0].plot(gens, [r["dataset_size"] for r in rows], "o-")
    axes[0].set(xlabel="generation", ylabel="dataset size (structures)")
    tested = [r for r in rows if "test_force_rmse" in r]
    if tested:
        axes[1].plot([r["dataset_size"] for r in tested], [r["test_force_rmse"] for r in tested], "o-")
        axes[1].set(xlabel="dataset size", ylabel="test force RMSE (eV/A)")
    else:
        axes[1].text(
            0.5, 0.5, "no test set (test.path)", ha="center", va="center", transform=axes[1].transAxes
        )
    explored = [r for r in rows if "explore_max_atom_uncertainty" in r]
    axes[2].plot(
        [r["generation"] for r in explored], [r["explore_max_atom_uncertainty"] for r in explored], "o-"
    )
    axes[2].set(xlabel="generation", ylabel="largest U_i explored (eV/A)")
    from matplotlib.ticker import MaxNLocator

    for ax in (axes[0], axes[2]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
