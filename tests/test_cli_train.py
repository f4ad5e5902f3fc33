"""``mlipbias train`` and ``mlipbias evaluate``: configuration checks and an end-to-end run on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
import yaml
from ase.db import connect
from model_fixtures import labelled_quartz

from mlipbias.cli import main
from mlipbias.models.config import TEMPLATE, TrainConfig, config_from_dict


def test_template_loads_to_the_defaults():
    values = yaml.safe_load(TEMPLATE)
    config = config_from_dict(values)
    expected = TrainConfig()
    expected.data.path = "dataset.db"
    assert config == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"training": {"lerning_rate": 0.1}},
            r"config key training.lerning_rate is unknown \(did you mean "
            r"learning_rate\?\); allowed keys in training: epochs, batch_size",
        ),
        ({"trainng": {}}, r"config section trainng is unknown \(did you mean training\?\)"),
        ({"model": {"activation": "relu"}}, r"setting model.activation = 'relu': expected one of tanh, silu"),
        ({"model": {"hidden": [30, 0]}}, r"setting model.hidden = \[30, 0\]: expected a list of positive"),
        ({"training": {"epochs": "many"}}, r"config key training.epochs: expected an integer, got 'many'"),
        ({"training": {"learning_rate": "fast"}}, r"config key training.learning_rate: expected a number"),
        (
            {"training": {"schedule": "cosine"}},
            r"training.schedule = 'cosine': expected one of plateau, "
            r"exponential, none",
        ),
        (
            {"uncertainty": {"methods": ["ensemble", "mve"]}},
            r"mve, evidential and ensemble exclude each other",
        ),
        (
            {"uncertainty": {"methods": ["dropout"]}},
            r"unknown \['dropout'\]; choose from ensemble, mve, evidential, "
            r"gmm, posterior, distance",
        ),
        (
            {"uncertainty": {"n_members": 1}},
            r"uncertainty.n_members = 1: an ensemble needs at least 2 members",
        ),
        ({"data": {"validation_fraction": 0.6, "test_fraction": 0.5}}, r"must leave training data"),
        (
            {"descriptor": {"preset": "water"}},
            r"descriptor.preset = 'water': expected one of auto, SiO2, SiO2-fast, Si, "
            r"molecules",
        ),
        ({"descriptor": {"angular_cutoff": -3.5}}, r"descriptor.angular_cutoff = -3.5: expected a positive"),
        (
            {
                "descriptor": {
                    "preset": None,
                    "elements": ["Si"],
                    "g4": [[0.1, 1, 1, 4.0]],
                    "angular_cutoff": 3.5,
                }
            },
            r"descriptor.angular_cutoff applies to a preset: with explicit g4/g5 rows give rc in each row",
        ),
        (
            {"descriptor": {"preset": None, "elements": ["Si"], "g2": [[1.0, 2.0]]}},
            r"descriptor.g2: every row "
            r"needs 3 numbers",
        ),
    ],
)
def test_bad_configurations_name_the_key_and_the_allowed_values(values, message):
    values = {
        "data": {"path": "x.db", **values.get("data", {})},
        **{k: v for k, v in values.items() if k != "data"},
    }
    with pytest.raises(ValueError, match=message):
        config_from_dict(values)


def test_missing_data_path_and_cli_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="config key data.path is required"):
        config_from_dict({})
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  path: x.db\nmodel:\n  activaton: tanh\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "mlipbias train: error:" in err and "model.activaton is unknown (did you mean activation?)" in err
    assert main(["train", str(tmp_path / "none.yaml")]) == 2
    assert "no such configuration file" in capsys.readouterr().err
    assert main(["train", "--template"]) == 0
    assert capsys.readouterr().out == TEMPLATE
    (tmp_path / "ok.yaml").write_text("data:\n  path: x.db\ntraining:\n  posterior_lambda: 1e-6\n")
    assert main(["train", str(tmp_path / "ok.yaml"), "--check"]) == 2  # a key of another section
    assert "training.posterior_lambda is unknown" in capsys.readouterr().err


def test_train_and_evaluate_end_to_end(tmp_path, capsys):
    db_path = tmp_path / "quartz.db"
    with connect(db_path) as db:
        for atoms in labelled_quartz(24, seed=7):
            db.write(atoms)
    config = {
        "data": {"path": "quartz.db", "validation_fraction": 0.3, "test_fraction": 0.3, "seed": 1},
        "descriptor": {
            "preset": None,
            "elements": ["Si", "O"],
            "g2": [[0.5, 1.6, 4.5], [0.5, 2.6, 4.5], [0.5, 3.6, 4.5]],
            "g5": [[0.05, 2.0, -1.0, 4.5]],
        },
        "model": {"hidden": [6]},
        "uncertainty": {
            "methods": ["ensemble", "gmm", "posterior", "distance"],
            "n_members": 2,
            "gmm_max_components": 2,
            "sketch_size": 4,
            "atom_subset": 30,
        },
        "training": {"epochs": 15, "batch_size": 4, "learning_rate": 0.01, "device": "cpu"},
        "output": {"directory": "run"},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "train.yaml"), "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "uncertainty: ensemble" in out and "spearman" in out
    run = tmp_path / "run"
    split = json.loads((run / "split.json").read_text())
    ids = split["train"] + split["validation"] + split["test"]
    assert sorted(ids) == list(range(1, 25)) and len(split["test"]) == 7
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 15
    test_metrics = json.loads((run / "test_metrics.json").read_text())

    from mlipbias.datasets import load_dataset
    from mlipbias.models import load_model

    model = load_model(run / "model.mlip")
    assert model.methods == ("ensemble", "gmm", "posterior", "distance")
    test_atoms = [a for a in load_dataset(db_path) if a.info["db_id"] in split["test"]]
    data = model.prepare(test_atoms)
    p = model.predict(data, forces=False)
    rmse = np.sqrt(np.mean(((p.energy - data.energy) / data.n_atoms) ** 2))
    assert test_metrics["metrics"]["energy ensemble"]["rmse"] == pytest.approx(rmse, rel=1e-10)

    evaluation = tmp_path / "evaluation"
    args = [
        "evaluate",
        "--model",
        str(run / "model.mlip"),
        "--data",
        str(db_path),
        "--out",
        str(evaluation),
        "--calibration-data",
        str(db_path),
        "--uncertainty",
        "ensemble",
        "posterior",
        "--no-progress",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "uncertainty: posterior" in printed and "miscalibration_area" in printed
    metrics = json.loads((evaluation / "metrics.json").read_text())["metrics"]
    arrays = np.load(evaluation / "predictions.npz")
    per_atom = (arrays["ensemble_energy"] - arrays["energy_ref"]) / arrays["n_atoms"]
    assert metrics["energy ensemble"]["rmse"] == pytest.approx(np.sqrt(np.mean(per_atom**2)), rel=1e-10)
    errors = np.abs(arrays["posterior_energy"] - arrays["energy_ref"])
    rho = scipy.stats.spearmanr(errors, arrays["posterior_uncertainty"]).statistic
    assert metrics["energy posterior"]["spearman"] == pytest.approx(rho, rel=1e-10)
    force_errors = np.abs(arrays["ensemble_forces"] - arrays["forces_ref"]).ravel()
    assert metrics["forces ensemble"]["mae"] == pytest.approx(force_errors.mean(), rel=1e-10)
    assert metrics["forces ensemble"]["cnll"] is not None
    for name in ("parity.png", "uncertainty_vs_error.png", "calibration.png"):
        assert (evaluation / name).stat().st_size > 10000
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(run / "model.mlip"),
                "--data",
                str(db_path),
                "--uncertainty",
                "mve",
                "--out",
                str(evaluation),
            ]
        )
        == 2
    )
    assert "uncertainty 'mve' is not in this model" in capsys.readouterr().err


def test_demo_trains_evaluates_and_diagnoses_an_ensemble(tmp_path, capsys):
    from mlipbias.models import load_model

    args = ["demo", "--output-dir", str(tmp_path), "--n-samples", "12", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "== step 2/4: model ==" in out and "== step 3/4: adversarial ==" in out
    assert "== step 4/4: active learning ==" in out and "active learning: hard held-out set" in out
    al_rows = json.loads((tmp_path / "active_learning" / "summary.json").read_text())
    assert [r["generation"] for r in al_rows] == [1, 2] and al_rows[1]["dataset_size"] > 12
    for method in ("ensemble", "posterior", "distance"):
        assert f"uncertainty: {method}" in out
    model = load_model(tmp_path / "model" / "model.mlip")
    assert model.methods == ("ensemble", "posterior", "distance") and model.network.n_members == 3
    # The diagnosis of the model against BKS covered the test split (random 80/10/10 of 12: 1 structure).
    results = json.loads((tmp_path / "adversarial" / "results.json").read_text())
    test_ids = json.loads((tmp_path / "model" / "split.json").read_text())["test"]
    assert results["complete"] and results["summary"]["n_configs"] == len(test_ids) >= 1
    assert "configurations: RMSE" in out and (tmp_path / "adversarial" / "fig1_alignment.png").is_file()
    # A rerun keeps the trained model and reuses the diagnosis' evaluations (only the check that the
    # cached models are the same ones evaluates each once).
    assert main(args) == 0
    assert "model.mlip exists" in capsys.readouterr().out
    calls = json.loads((tmp_path / "adversarial" / "results.json").read_text())["calls"]
    assert calls == {"approx": 1, "accurate": 1, "relaxations": 0}
