"""``mlipbias train --resume`` after the process was killed mid-epoch: the result of an uninterrupted run.

Real subprocesses: one run goes through; a second is killed (SIGKILL) while it trains an epoch and is
resumed with ``--resume``. The plateau schedule decays the learning rate during the run and the model
has an ensemble and a GMM, so the optimizer, the scheduler, the best weights of every member and the
post-hoc fit all have to come back from the checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.db import connect
from model_fixtures import labelled_quartz
from subprocess_env import mlipbias_env

EPOCHS = 12


def config(folder: Path, directory: str) -> Path:
    values = {
        "data": {"path": "q.db", "validation_fraction": 0.25, "test_fraction": 0.2, "seed": 2},
        "descriptor": {
            "preset": None,
            "elements": ["Si", "O"],
            "g2": [[0.5, 1.6, 4.5], [0.5, 2.6, 4.5], [0.5, 3.6, 4.5]],
            "g5": [[0.05, 2.0, -1.0, 4.5]],
        },
        "model": {"hidden": [6]},
        "uncertainty": {
            "methods": ["ensemble", "gmm"],
            "n_members": 2,
            "gmm_max_components": 2,
        },
        "training": {
            "epochs": EPOCHS,
            "batch_size": 4,
            "learning_rate": 0.2,
            "schedule": "plateau",
            "decay_patience": 1,
            "decay_factor": 0.5,
            "early_stopping_patience": 50,
            "device": "cpu",
        },
        "output": {"directory": directory},
    }
    path = folder / f"{directory}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def train(path: Path, *extra: str, wait: bool = True):
    env = mlipbias_env()
    command = [
        sys.executable,
        "-m",
        "mlipbias",
        "train",
        str(path),
        "--no-progress",
        "--threads",
        "1",
        *extra,
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if wait:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        return out
    return proc


def epochs_done(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def test_resume_after_a_kill_mid_epoch_gives_the_uninterrupted_result(tmp_path):
    with connect(tmp_path / "q.db") as db:
        for atoms in labelled_quartz(12, seed=11):
            db.write(atoms)
    train(config(tmp_path, "straight"))

    proc = train(config(tmp_path, "killed"), wait=False)
    run = tmp_path / "killed"
    deadline = time.monotonic() + 240
    while epochs_done(run) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    time.sleep(0.02)  # into the next epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_at = epochs_done(run)
    assert 5 <= interrupted_at < EPOCHS and not (run / "model.mlip").exists()

    out = train(config(tmp_path, "killed"), "--resume")
    assert "resuming from" in out

    straight = [
        json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in resumed] == list(range(1, EPOCHS + 1))
    # The plateau schedule really decayed the learning rate, and the resumed run followed it.
    assert straight[-1]["learning_rate"] < straight[0]["learning_rate"]
    for a, b in zip(straight, resumed, strict=True):
        assert b["learning_rate"] == a["learning_rate"]
        np.testing.assert_allclose(b["validation_loss"], a["validation_loss"], rtol=1e-9)
        np.testing.assert_allclose(b["validation_force_rmse"], a["validation_force_rmse"], rtol=1e-9)

    from mlipbias.datasets import load_dataset
    from mlipbias.models import load_model

    data_atoms = load_dataset(tmp_path / "q.db")
    models = [load_model(tmp_path / name / "model.mlip") for name in ("straight", "killed")]
    data = models[0].prepare(data_atoms)
    for method in ("ensemble", "gmm"):
        a, b = (m.predict(data, method, forces=True) for m in models)
        np.testing.assert_allclose(b.energy, a.energy, rtol=1e-9)
        np.testing.assert_allclose(b.forces, a.forces, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(b.uncertainty, a.uncertainty, rtol=1e-7)
    tables = [
        json.loads((tmp_path / name / "test_metrics.json").read_text())["metrics"]
        for name in ("straight", "killed")
    ]
    assert tables[1]["energy ensemble"]["rmse"] == pytest.approx(
        tables[0]["energy ensemble"]["rmse"], rel=1e-9
    )
