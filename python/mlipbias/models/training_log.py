"""What a training run reports while it runs: ``metrics.jsonl``, ``metrics.csv``, ``learning_curve.png``,
the per-epoch line and, when asked for and installed, TensorBoard.

Every epoch gives one record (see :func:`mlipbias.models.training.train`): validation RMSEs per member
in eV/atom (energy), eV/A (force components) and eV/A^3 (stress components). ``metrics.jsonl`` keeps
the records as they are; ``metrics.csv`` has one row per epoch with the member means, for a
spreadsheet or ``pandas.read_csv``; the PNG shows the training loss and the validation RMSEs against
the epoch and is redrawn at most every :data:`PLOT_INTERVAL` seconds and at the end.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

PLOT_INTERVAL = 10.0  # s of wall time between redraws of learning_curve.png

# CSV column, record key, factor from the record's unit to the column's unit.
CSV_COLUMNS = (
    ("epoch", "epoch", 1.0),
    ("learning_rate", "learning_rate", 1.0),
    ("train_loss", "train_loss", 1.0),
    ("validation_loss", "validation_loss", 1.0),
    ("validation_energy_rmse_meV_per_atom", "validation_energy_rmse", 1000.0),
    ("validation_force_rmse_meV_per_A", "validation_force_rmse", 1000.0),
    ("validation_stress_rmse_meV_per_A3", "validation_stress_rmse", 1000.0),
    ("seconds", "seconds", 1.0),
)

# Shown in the per-epoch line and the progress bar: record key, label, unit (values in meV).
RMSE_LABELS = (
    ("validation_energy_rmse", "E", "meV/atom"),
    ("validation_force_rmse", "F", "meV/A"),
    ("validation_stress_rmse", "S", "meV/A^3"),
)


def member_mean(value) -> float | None:
    """A record entry as one number: the mean over ensemble members."""
    if value is None:
        return None
    return float(np.mean(value))


def rmse_text(record: dict, short: bool = False) -> str:
    """``E 3.1 meV/atom, F 85.2 meV/A, S 1.2 meV/A^3`` (validation RMSEs, member means)."""
    parts = []
    for key, label, unit in RMSE_LABELS:
        if key in record:
            value = 1000 * member_mean(record[key])
            parts.append(f"{label} {value:.3g}" + ("" if short else f" {unit}"))
    return ", ".join(parts)


class TrainingLog:
    """The files of a run's history in ``out`` (nothing is written when ``out`` is None)."""

    def __init__(self, out: Path | None, tensorboard: bool = False, log=print):
        self.out = out
        self._last_plot = 0.0
        self._writer = None
        if out is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:  # tensorboard is optional, not a dependency
                log(f"TensorBoard logging is off: {error} (pip install tensorboard to have it)")
            else:
                self._writer = SummaryWriter(str(out / "tensorboard"))

    def start(self, history: list[dict]) -> None:
        """The log files hold exactly the epochs of ``history`` (those of a resumed checkpoint)."""
        if self.out is None:
            return
        with open(self.out / "metrics.jsonl", "w") as f:
            for record in history:
                f.write(json.dumps(record) + "\n")
        with open(self.out / "metrics.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([name for name, _, _ in CSV_COLUMNS])
            for record in history:
                writer.writerow(self._csv_row(record))

    def add(self, record: dict, history: list[dict]) -> None:
        """Append an epoch's record to every log."""
        if self.out is None:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        with open(self.out / "metrics.csv", "a", newline="") as f:
            csv.writer(f).writerow(self._csv_row(record))
        if self._writer is not None:
            for _, key, factor in CSV_COLUMNS[1:-1]:
                if key in record:
                    self._writer.add_scalar(key, factor * member_mean(record[key]), record["epoch"])
            self._writer.flush()
        if time.monotonic() - self._last_plot >= PLOT_INTERVAL:
            self.plot(history)

    def close(self, history: list[dict]) -> None:
        if self.out is None:
            return
        if history:
            self.plot(history)
        if self._writer is not None:
            self._writer.close()

    @staticmethod
    def _csv_row(record: dict) -> list:
        row = []
        for _, key, factor in CSV_COLUMNS:
            value = member_mean(record.get(key))
            row.append("" if value is None else repr(value * factor))
        return row

    def plot(self, history: list[dict]) -> None:
        """learning_curve.png: training loss and validation RMSEs (member means) against the epoch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self._last_plot = time.monotonic()
        panels = [("train_loss", "training loss", None)] + [
            (key, f"validation {label} RMSE ({unit})", unit) for key, label, unit in RMSE_LABELS
        ]
        panels = [p for p in panels if any(p[0] in r for r in history)]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
        for ax, (key, title, unit) in zip(axes[0], panels, strict=True):
            epochs = [r["epoch"] for r in history if key in r]
            values = [(1 if unit is None else 1000) * member_mean(r[key]) for r in history if key in r]
            ax.plot(epochs, values, lw=1.2)
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        tmp = self.out / "learning_curve.tmp.png"
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        tmp.replace(self.out / "learning_curve.png")
