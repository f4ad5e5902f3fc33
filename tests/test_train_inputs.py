"""``mlipbias train`` and ``evaluate`` with a user's own files: a run is never overwritten, a checkpoint
never runs code, any ase.io file with its label names, clear messages, and feedback while training."""

from __future__ import annotations

import csv
import json
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.db import connect
from ase.io import write
from model_fixtures import labelled_quartz
from subprocess_env import mlipbias_env

from mlipbias import datasets
from mlipbias.cli import main
from mlipbias.datasets import open_dataset, read_labelled

DESCRIPTOR = {
    "preset": None,
    "elements": ["Si", "O"],
    "g2": [[0.5, 1.6, 4.5], [0.5, 2.6, 4.5], [0.5, 3.6, 4.5]],
    "g5": [[0.05, 2.0, -1.0, 4.5]],
}


def write_config(folder: Path, path: str, **sections) -> Path:
    config = {
        "data": {"path": path, "validation_fraction": 0.25, "test_fraction": 0.25, "seed": 1},
        "descriptor": DESCRIPTOR,
        "model": {"hidden": [6]},
        "uncertainty": {"methods": ["ensemble"], "n_members": 2},
        "training": {"epochs": 2, "batch_size": 4, "learning_rate": 0.01, "device": "cpu"},
        "output": {"directory": "run"},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def quartz_db(path: Path, n: int = 12, labels=("energy", "forces", "stress")) -> Path:
    from ase.calculators.singlepoint import SinglePointCalculator

    with connect(path) as db:
        for atoms in labelled_quartz(n, seed=3):
            results = {k: v for k, v in atoms.calc.results.items() if k in labels}
            atoms.calc = SinglePointCalculator(atoms, **results)
            db.write(atoms)
    return path


def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys):
    quartz_db(tmp_path / "q.db")
    config = write_config(tmp_path, "q.db")
    assert main(["train", str(config), "--no-progress"]) == 0
    model = tmp_path / "run" / "model.mlip"
    before = model.read_bytes()
    capsys.readouterr()
    assert main(["train", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds a training run (model.mlip, checkpoint.pt, best.mlip" in err
    assert "--resume" in err and "--overwrite" in err
    assert model.read_bytes() == before
    assert main(["train", str(config), "--resume", "--overwrite"]) == 2
    assert "give one" in capsys.readouterr().err
    assert main(["train", str(config), "--overwrite", "--no-progress"]) == 0
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


class _RunsCode:
    """Unpickling this calls Path.touch(marker): what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_checkpoint_is_refused_without_running_and_a_truncated_one_named(tmp_path, capsys):
    import torch

    quartz_db(tmp_path / "q.db")
    config = write_config(tmp_path, "q.db")
    assert main(["train", str(config), "--no-progress"]) == 0
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    good = checkpoint.read_bytes()
    # What mlipbias writes loads with weights_only=True (tensors and plain types only).
    assert torch.load(checkpoint, weights_only=True)["version"] == 1
    marker = tmp_path / "code_ran"
    torch.save({"version": 1, "state": _RunsCode(marker)}, checkpoint)
    pickle.loads(pickle.dumps(_RunsCode(tmp_path / "probe")))
    assert (tmp_path / "probe").exists()  # the payload is live: unpickling it runs the code
    capsys.readouterr()
    assert main(["train", str(config), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "refused to load" in err and "checkpoint.pt" in err
    # It names what it refused, and passes on none of torch's advice to load it with weights_only=False.
    assert "(getattr; not one mlipbias wrote" in err and "weights_only" not in err and "\x1b" not in err
    assert not marker.exists()
    checkpoint.write_bytes(good[: len(good) // 2])
    assert main(["train", str(config), "--resume", "--no-progress"]) == 2
    assert "not a readable checkpoint, the file is truncated or damaged" in capsys.readouterr().err


def test_messages_name_the_file_and_the_key(tmp_path, capsys, monkeypatch):
    quartz_db(tmp_path / "q.db")
    # A binary file given as the configuration.
    binary = tmp_path / "model.yaml"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    assert main(["train", str(binary), "--check"]) == 2
    assert f"{binary}: not a text (UTF-8) YAML file" in capsys.readouterr().err
    assert main(["data", "generate", "-c", str(binary)]) == 2
    assert f"config {binary} is not a text (UTF-8) YAML file" in capsys.readouterr().err
    # A negative seed fails --check, naming the key.
    config = write_config(tmp_path, "q.db", training={"seed": -1})
    assert main(["train", str(config), "--check"]) == 2
    assert "setting training.seed = -1: expected an integer >= 0" in capsys.readouterr().err
    # --check looks for the data files.
    config = write_config(tmp_path, "missing.db", data={"test_path": "q.db"})
    assert main(["train", str(config), "--check"]) == 2
    assert "config key data.path:" in capsys.readouterr().err
    config = write_config(tmp_path, "q.db", data={"validation_path": "nothere.extxyz"})
    assert main(["train", str(config), "--check"]) == 2
    assert "config key data.validation_path:" in capsys.readouterr().err
    # A database that another process holds locked is "locked", not "damaged".
    monkeypatch.setattr(datasets, "LOCK_TIMEOUT", 0.2)
    holder = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ValueError, match="is locked by another process .* the file is not damaged"):
            open_dataset(tmp_path / "q.db")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(open_dataset(tmp_path / "q.db")) == 12


def test_energy_only_data_train_with_force_weight_zero(tmp_path, capsys):
    quartz_db(tmp_path / "e.db", labels=("energy",))
    config = write_config(tmp_path, "e.db")
    assert main(["train", str(config), "--no-progress"]) == 2  # the default force weight needs forces
    err = capsys.readouterr().err
    assert "has no forces under the key 'forces'" in err and "data.forces_key" in err
    assert "energy-only data: training.force_weight: 0" in err  # the way out for a user without forces
    config = write_config(tmp_path, "e.db", training={"force_weight": 0.0, "stress_weight": 0.0})
    assert main(["train", str(config), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())["metrics"]
    assert "energy ensemble" in metrics and "forces ensemble" not in metrics


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("training", "force_weight", float("inf")),
        ("training", "learning_rate", float("inf")),
        ("training", "energy_weight", float("nan")),
        ("uncertainty", "posterior_lambda", float("inf")),
        ("model", "hidden", [float("inf")]),
    ],
)
def test_non_finite_settings_fail_the_check_naming_the_key(tmp_path, capsys, section, key, value):
    """An infinite loss weight or learning rate trained NaN in every epoch and saved the untrained model."""
    quartz_db(tmp_path / "q.db", n=4)
    config = write_config(tmp_path, "q.db", **{section: {key: value}})
    assert main(["train", str(config), "--check"]) == 2
    assert f"setting {section}.{key} = " in capsys.readouterr().err


def test_a_loss_that_turns_nan_stops_the_run_naming_the_epoch(tmp_path, capsys, monkeypatch):
    """A diverging training (here: the loss of epoch 2 made NaN) stops with an error instead of
    finishing with the untrained model; the checkpoint of epoch 1 is kept and no model is written."""
    import torch

    from mlipbias.models import training

    real_batch_loss = training.batch_loss
    steps = []

    def diverging(*args, **kwargs):
        loss, *rest = real_batch_loss(*args, **kwargs)
        if kwargs.get("create_graph"):  # a training step, not validation
            steps.append(1)
            if len(steps) > 2:  # 6 training structures in batches of 4: epoch 2 starts at step 3
                loss = loss * float("nan")
        return (loss, *rest)

    monkeypatch.setattr(training, "batch_loss", diverging)
    quartz_db(tmp_path / "q.db")
    config = write_config(tmp_path, "q.db", training={"epochs": 3})
    assert main(["train", str(config), "--no-progress"]) == 2
    assert "epoch 2: the training loss is nan: training.learning_rate (0.01)" in capsys.readouterr().err
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 1
    assert not (tmp_path / "run" / "model.mlip").exists()


def mace_style_frames(n: int):
    """Quartz cells labelled as MACE files are: REF_energy, REF_forces, REF_stress (3x3), no calculator."""
    frames = []
    for atoms in labelled_quartz(n, seed=5):
        results = atoms.calc.results
        copy = atoms.copy()
        copy.calc = None
        copy.info["REF_energy"] = results["energy"]
        copy.arrays["REF_forces"] = results["forces"]
        stress = results["stress"]
        copy.info["REF_stress"] = np.array(
            [
                [stress[0], stress[5], stress[4]],
                [stress[5], stress[1], stress[3]],
                [stress[4], stress[3], stress[2]],
            ]
        )
        copy.info["config_type"] = "quartz"
        frames.append(copy)
    return frames


def test_extxyz_with_label_keys_trains_and_evaluate_scores_the_test_split(tmp_path, capsys):
    frames = mace_style_frames(12)
    write(tmp_path / "mine.extxyz", frames)
    reference = labelled_quartz(12, seed=5)
    keys = {"energy_key": "REF_energy", "forces_key": "REF_forces", "stress_key": "REF_stress"}
    read = read_labelled(
        tmp_path / "mine.extxyz", keys=datasets.LabelKeys("REF_energy", "REF_forces", "REF_stress")
    )
    for atoms, ref in zip(read, reference, strict=True):
        assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-12)
        # extxyz keeps 8 decimals of the columns (forces) and full precision of the comment line.
        np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), rtol=0, atol=1e-8)
        np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), rtol=1e-12, atol=1e-15)
    config = write_config(tmp_path, "mine.extxyz", data=keys)
    assert main(["train", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    # The per-epoch line reports energy, force and stress RMSEs with units.
    assert "validation RMSE E " in out and " meV/atom, F " in out and " meV/A, S " in out and "meV/A^3" in out
    run = tmp_path / "run"
    split = json.loads((run / "split.json").read_text())
    assert split["ids"] == {
        "train": "0-based frames",
        "validation": "0-based frames",
        "test": "0-based frames",
    }
    assert sorted(split["train"] + split["validation"] + split["test"]) == list(range(12))
    test_metrics = json.loads((run / "test_metrics.json").read_text())["metrics"]
    assert set(test_metrics) == {"energy ensemble", "forces ensemble", "stress ensemble"}
    # The stress metrics against the model's stresses computed here.
    from mlipbias.models import load_model

    model = load_model(run / "model.mlip")
    test = [read[i] for i in split["test"]]
    p = model.predict(model.prepare(test), forces=True)
    stress_ref = np.array([a.get_stress() for a in test])
    assert test_metrics["stress ensemble"]["rmse"] == pytest.approx(
        np.sqrt(np.mean((p.stress - stress_ref) ** 2))
    )

    # evaluate given the run folder scores the held-out test split, calibrated on the validation split,
    # and reproduces the training's test table.
    assert main(["evaluate", "--model", str(run), "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"scoring the run's test split: 3 structures of {tmp_path / 'mine.extxyz'}" in printed
    assert "calibrated on the run's validation split" in printed
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]
    for column in ("energy ensemble", "forces ensemble", "stress ensemble"):
        for key, value in test_metrics[column].items():
            assert metrics[column][key] == pytest.approx(value, rel=1e-9, nan_ok=True), (column, key)
    assert main(["evaluate", "--model", str(run), "--split", "validation", "--out", str(tmp_path / "v")]) == 0
    assert "scoring the run's validation split: 3 structures" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(run / "model.mlip")]) == 2
    assert "give --data, or a training run's folder" in capsys.readouterr().err
    # --data whose labels have other names: the message names evaluate's option, not only the config key.
    data = str(tmp_path / "mine.extxyz")
    assert (
        main(["evaluate", "--model", str(run / "model.mlip"), "--data", data, "-o", str(tmp_path / "e")]) == 2
    )
    err = capsys.readouterr().err
    assert "no energy under the key 'energy' (it has: REF_energy" in err and "--energy-key" in err
    # Data with an element the model lacks: the file, the structure and the model are named.
    frames = mace_style_frames(2)
    frames[1].symbols[0] = "Cu"
    write(tmp_path / "cu.extxyz", frames)
    keys = ["--energy-key", "REF_energy", "--forces-key", "REF_forces", "--stress-key", "REF_stress"]
    data = str(tmp_path / "cu.extxyz")
    assert main(["evaluate", "--model", str(run / "model.mlip"), "--data", data, *keys, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        f"{data}: structure 1 (CuO6Si2) contains Cu, which model {run / 'model.mlip'} does not handle" in err
    )


def test_bad_frames_are_named(tmp_path):
    frames = mace_style_frames(3)
    frames[2].arrays["REF_forces"][4, 1] = np.nan
    write(tmp_path / "nan.extxyz", frames)
    keys = datasets.LabelKeys("REF_energy", "REF_forces", "REF_stress")
    with pytest.raises(ValueError, match=r"nan.extxyz: frame 2 \(O6Si3\): non-finite \(NaN or inf\) forces"):
        read_labelled(tmp_path / "nan.extxyz", keys=keys)
    with pytest.raises(
        ValueError, match=r"frame 0 \(O6Si3\) has no energy under the key 'energy' \(it has: "
    ):
        read_labelled(tmp_path / "nan.extxyz")
    (tmp_path / "junk.xyz").write_text("not a structure\n")
    with pytest.raises(ValueError, match="cannot read .*junk.xyz with ase.io"):
        read_labelled(tmp_path / "junk.xyz")


def test_logs_csv_learning_curve_and_no_carriage_returns_in_redirected_output(tmp_path):
    quartz_db(tmp_path / "q.db")
    config = write_config(tmp_path, "q.db", output={"tensorboard": True})
    env = mlipbias_env()
    # Progress bars left on, output redirected to files as in a batch job.
    with open(tmp_path / "out.log", "w") as out, open(tmp_path / "err.log", "w") as err:
        code = subprocess.call(
            [sys.executable, "-m", "mlipbias", "train", str(config)], stdout=out, stderr=err, env=env
        )
    stderr = (tmp_path / "err.log").read_text()
    assert code == 0, stderr
    assert "\r" not in stderr and "\r" not in (tmp_path / "out.log").read_text()
    # Without a bar the log still has the epochs' lines.
    assert "epoch 2/2: train loss" in (tmp_path / "out.log").read_text()
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) == 2
    for row, record in zip(rows, records, strict=True):
        assert float(row["validation_force_rmse_meV_per_A"]) == pytest.approx(
            1000 * np.mean(record["validation_force_rmse"]), rel=1e-12
        )
        assert float(row["validation_stress_rmse_meV_per_A3"]) == pytest.approx(
            1000 * np.mean(record["validation_stress_rmse"]), rel=1e-12
        )
    assert (run / "learning_curve.png").stat().st_size > 5000
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert "TensorBoard logging is off" in (tmp_path / "out.log").read_text()
    else:
        assert any((run / "tensorboard").iterdir())
