"""``mlipbias inspect``: the description of a model file against the model it was written from."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from model_fixtures import labelled_quartz, model_with_all_methods

from mlipbias.cli import main
from mlipbias.cli.inspect import describe, training_data_summary
from mlipbias.models import save_model
from mlipbias.models.config import TrainConfig


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """The all-methods fixture model, with a training description as `mlipbias train` stores it."""
    model, _ = model_with_all_methods()
    config = TrainConfig()
    config.data.path = "quartz.db"
    config.training.force_weight = 0.1
    splits = {"train": labelled_quartz(3), "validation": labelled_quartz(2, seed=1), "test": []}
    model.description = json.dumps(
        {"trained_with": config.to_dict(), "training_data": training_data_summary(splits)}, default=list
    )
    path = tmp_path_factory.mktemp("inspect") / "model.mlip"
    save_model(model, path)
    return model, splits, path


def test_json_description_matches_the_model(saved_model, capsys):
    model, splits, path = saved_model
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    sf = model.descriptor
    assert info["format_version"] == 1
    assert info["kind"] == "bpnn"
    assert info["elements"] == ["Si", "O"]
    assert info["cutoff"] == sf.cutoff == 4.5
    d = info["descriptor"]
    assert d["size"] == sf.n_sf == 12
    assert (
        d["functions"]
        == {f"G{k}": int(np.sum(sf.table[:, 0] == k)) for k in (2, 4, 5)}
        == {"G2": 6, "G4": 3, "G5": 3}
    )
    # G2 per neighbour element, G4 and G5 per unordered element pair (the fixture: 3 G2, 1 G4, 1 G5).
    assert d["functions_per_channel"] == {"Si": 3, "O": 3, "Si-Si": 2, "Si-O": 2, "O-O": 2}
    assert d["radial_shells"] == [1.6, 3.6]
    n = info["network"]
    assert n["layers"] == {"Si": [12, 8, 6, 1], "O": [12, 8, 6, 1]}
    assert n["parameters_per_member"] == 2 * (12 * 8 + 8 + 8 * 6 + 6 + 6 + 1)
    assert n["parameters_per_member"] * model.network.n_members == sum(
        p.numel() for name, p in model.network.weights.items() if "head" not in name
    )
    assert n["ensemble_members"] == 3 and n["activation"] == "silu" and n["head"] == "none"
    u = info["uncertainty"]
    assert u["methods"] == list(model.methods)
    assert u["gradient_features"]["sketch_size_k"] == 4
    assert u["gradient_features"]["features"] == 2 * 3 * 4  # elements x layers x k
    assert u["gradient_features"]["distance_structures"] == 6
    assert u["gmm_components"] == {"Si": 2, "O": 2}
    c = info["calibration"]
    assert c["conformal_factors"]["ensemble"] == {"energy": 2.0, "force": 1.5}
    assert c["conformal_factors"]["posterior"] == {"energy": 0.7, "force": None}
    assert c["alpha"] == 0.1
    t = info["training"]
    assert t["settings"]["data.path"] == "quartz.db"
    assert t["settings"]["training.force_weight"] == 0.1
    assert t["data"]["train"]["structures"] == 3
    assert t["data"]["train"]["elements"] == {"O": 18, "Si": 9}
    energies = [a.get_potential_energy() / len(a) for a in splits["train"]]
    assert t["data"]["train"]["energy_per_atom_range"] == pytest.approx([min(energies), max(energies)])
    assert t["data"]["train"]["with_forces"] == 3
    assert t["data"]["test"]["structures"] == 0 and t["data"]["test"]["energy_per_atom_range"] is None


def test_text_description_names_every_section(saved_model, capsys):
    _, _, path = saved_model
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "format version 1" in text
    assert "kind          bpnn: atom-centred symmetry functions" in text
    assert "elements      Si O" in text
    for section in ("descriptor", "network", "uncertainty", "calibration", "training"):
        assert f"\n{section}\n" in text
    assert "Si                         12-8-6-1" in text
    assert "ensemble                   energy 2, force 1.5" in text
    assert "posterior                  energy 0.7, force 1 (none stored)" in text
    assert "methods                    ensemble gmm posterior distance" in text
    assert "radial shells              1.6, 3.6 A (first and last rs)" in text
    assert "training.force_weight      0.1" in text


def test_a_model_without_description_or_uncertainty(tmp_path):
    model, _ = model_with_all_methods()
    model.methods, model.gmm, model.gradient, model.calibration = (), None, None, {}
    model.description = "hand-made"
    path = save_model(model, tmp_path / "plain.mlip")
    info = describe(path)
    assert info["uncertainty"] == {"methods": []}
    assert info["calibration"] == {"conformal_factors": {}}
    assert info["training"] == {"description": "hand-made"}


def test_missing_corrupt_and_wrong_files_are_clear_errors(saved_model, tmp_path, capsys):
    _, _, path = saved_model
    data = path.read_bytes()
    cases = {
        "missing.mlip": (None, "no such model file"),
        "truncated.mlip": (data[: len(data) // 2], "truncated|corrupt"),
        "flipped.mlip": (data[:100] + bytes([data[100] ^ 0xFF]) + data[101:], "checksum|corrupt"),
        "text.mlip": (b"Si O\n1 2 3\n", "not an mlipbias model file"),
    }
    for name, (content, message) in cases.items():
        target = tmp_path / name
        if content is not None:
            target.write_bytes(content)
        assert main(["inspect", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mlipbias inspect: error:"), err
        assert str(target) in err and re.search(message, err), err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_a_trained_run_describes_its_data_and_its_auto_descriptor(tmp_path, capsys):
    """`mlipbias train` with the auto preset on EMT copper, then `mlipbias inspect` of its model."""
    import yaml
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.db import connect

    rng = np.random.default_rng(3)
    with connect(tmp_path / "cu.db") as db:
        for _ in range(10):
            atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
            atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
            atoms.calc = EMT()
            atoms.calc = SinglePointCalculator(
                atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces()
            )
            db.write(atoms)
    config = {
        "data": {"path": "cu.db", "validation_fraction": 0.2, "test_fraction": 0.2},
        "model": {"hidden": [4]},
        "uncertainty": {"methods": []},
        "training": {"epochs": 2, "batch_size": 4, "device": "cpu"},
        "output": {"directory": "run"},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "train.yaml"), "--no-progress", "--threads", "1"]) == 0
    log = capsys.readouterr().out
    assert "auto symmetry functions from 6 structures (48 atoms)" in log
    assert main(["inspect", str(tmp_path / "run" / "model.mlip"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["elements"] == ["Cu"] and 5.0 < info["cutoff"] < 6.5
    assert info["descriptor"]["radial_cutoffs"] == [info["cutoff"]]
    assert info["descriptor"]["radial_shells"][0] < 2.3  # below the shortest Cu-Cu distance
    data = info["training"]["data"]
    assert {name: part["structures"] for name, part in data.items()} == {
        "train": 6,
        "validation": 2,
        "test": 2,
    }
    assert data["train"]["elements"] == {"Cu": 48} and data["train"]["with_forces"] == 6
    assert info["training"]["settings"]["descriptor.preset"] == "auto"
    assert info["training"]["descriptor_choice"].startswith("auto symmetry functions from 6 structures")
    assert info["uncertainty"]["methods"] == [] and info["network"]["ensemble_members"] == 1


def test_a_single_network_with_an_mve_head(tmp_path):
    from model_fixtures import random_network, small_descriptor

    from mlipbias.models import AtomsData, MLIPModel

    descriptor = small_descriptor()
    data = AtomsData(labelled_quartz(2), descriptor, labels=False)
    net = random_network(descriptor, data, n_members=1, head="mve", hidden=(5,))
    path = save_model(MLIPModel(net, methods=("mve",)), tmp_path / "mve.mlip")
    info = describe(path)
    n = info["network"]
    assert n["head"] == "mve" and n["ensemble_members"] == 1
    assert n["layers"] == {"Si": [12, 5, 1], "O": [12, 5, 1]}
    assert n["parameters_per_member"] == 2 * (12 * 5 + 5 + 5 + 1)  # the layers, the head apart
    assert n["head_parameters_per_member"] == 2 * (2 * 5 + 2)  # 2 outputs on the 5 hidden units
    assert info["uncertainty"] == {"methods": ["mve"]}
    assert info["calibration"]["conformal_factors"] == {"mve": {"energy": None, "force": None}}


def test_a_gmnn_file_reports_its_kind_and_settings(tmp_path, capsys):
    """A GM-NN file: its kind, the Gaussian-moment settings and the shared network, against the
    torch model it was written from; the training settings name model.kind."""
    from gmnn_fixtures import write_gm_model

    from mlipbias.models import load_model

    path = write_gm_model(tmp_path / "gm.mlip", n_members=3, methods=("ensemble", "posterior"))
    model = load_model(path)
    config = TrainConfig()
    config.data.path = "quartz.db"
    config.model.kind, config.model.hidden, config.model.n_radial = "gmnn", [10, 7], 3
    model.description = json.dumps({"trained_with": config.to_dict()}, default=list)
    save_model(model, path)

    info = describe(path)
    gm, net = model.descriptor, model.network
    assert info["kind"] == "gmnn" and info["elements"] == ["Si", "O"]
    assert info["cutoff"] == gm.cutoff == 4.5
    d = info["descriptor"]
    assert d["size"] == gm.n_features == 94
    assert (d["gaussians"], d["radial_functions"], d["contraction_groups"]) == (4, 3, 8)
    assert d["r_min"] == gm.r_min
    assert d["beta_per_member"] == net.weights["beta"][0].numel() == 2 * 2 * 3 * 4
    n = info["network"]
    assert n["layers"] == {"Si": [94, 10, 7, 1], "O": [94, 10, 7, 1]}
    mlp = [w for name, w in net.weights.items() if name[0] in "Wb" and name[1:].isdigit()]
    assert n["parameters_per_member"] == sum(w[0].numel() for w in mlp) == 94 * 10 + 10 + 10 * 7 + 7 + 7 + 1
    assert n["ensemble_members"] == 3 and n["activation"] == "silu" and n["head"] == "none"
    assert info["uncertainty"]["methods"] == ["ensemble", "posterior"]
    settings = info["training"]["settings"]
    assert settings["model.kind"] == "gmnn" and settings["model.n_radial"] == 3
    assert settings["model.hidden"] == [10, 7]

    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "kind          gmnn: Gaussian moments" in text
    assert re.search(r"r min\s+0\.5 A", text) and re.search(r"O\s+94-10-7-1", text)
