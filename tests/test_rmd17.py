"""Revised-MD17 ``.npz`` files as training data: the layout of Christensen & von Lilienfeld's archive
(``nuclear_charges``, ``coords``, ``energies``, ``forces`` in kcal/mol and kcal/mol/A, ``old_*``),
written here with known numbers and read back in eV and eV/A; the unit factor is computed from
scipy's CODATA constants, independently of ASE's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from ase.build import molecule
from scipy import constants

from mlipbias.cli import main
from mlipbias.datasets import LabelKeys, read_labelled

# 1 kcal/mol in eV: 4184 J per mole of particles, per elementary charge.
KCAL_PER_MOL_IN_EV = 4184.0 / (constants.Avogadro * constants.elementary_charge)


def rmd17_arrays(n_frames: int = 12, seed: int = 0) -> dict:
    """What an rmd17_MOLECULE.npz holds, for methanol: thermal-like coordinates, arbitrary labels."""
    rng = np.random.default_rng(seed)
    base = molecule("CH3OH")
    n = len(base)
    return {
        "nuclear_charges": base.numbers.astype(np.int64),
        "coords": base.positions[None] + rng.normal(scale=0.05, size=(n_frames, n, 3)),
        "energies": -72000.0 + rng.normal(scale=3.0, size=n_frames),
        "forces": rng.normal(scale=20.0, size=(n_frames, n, 3)),
        "old_indices": rng.permutation(10 * n_frames)[:n_frames],
        "old_energies": -72000.0 + rng.normal(scale=3.0, size=n_frames),
        "old_forces": rng.normal(scale=20.0, size=(n_frames, n, 3)),
    }


def test_rmd17_npz_reads_in_ev_with_frames_and_old_indices(tmp_path):
    arrays = rmd17_arrays()
    np.savez(tmp_path / "rmd17_methanol.npz", **arrays)
    frames = read_labelled(tmp_path / "rmd17_methanol.npz")
    assert len(frames) == 12
    for k, atoms in enumerate(frames):
        assert atoms.info["frame"] == k and atoms.info["old_index"] == arrays["old_indices"][k]
        assert atoms.get_chemical_formula() == "CH4O" and not atoms.pbc.any()
        np.testing.assert_array_equal(atoms.numbers, arrays["nuclear_charges"])
        np.testing.assert_array_equal(atoms.positions, arrays["coords"][k])
        assert atoms.get_potential_energy() == pytest.approx(
            arrays["energies"][k] * KCAL_PER_MOL_IN_EV, rel=1e-7
        )
        np.testing.assert_allclose(atoms.get_forces(), arrays["forces"][k] * KCAL_PER_MOL_IN_EV, rtol=1e-7)
    # The original MD17 labels of the same file, chosen with the label keys.
    old = read_labelled(tmp_path / "rmd17_methanol.npz", keys=LabelKeys("old_energies", "old_forces"))
    np.testing.assert_allclose(
        [a.get_potential_energy() for a in old], arrays["old_energies"] * KCAL_PER_MOL_IN_EV, rtol=1e-7
    )
    np.testing.assert_allclose(old[3].get_forces(), arrays["old_forces"][3] * KCAL_PER_MOL_IN_EV, rtol=1e-7)
    # Energies only: forces are not required, and a file without them still reads.
    del arrays["forces"]
    np.savez(tmp_path / "no_forces.npz", **arrays)
    (only_energy,) = read_labelled(tmp_path / "no_forces.npz", require_forces=False)[:1]
    assert "forces" not in only_energy.calc.results


def test_bad_npz_files_are_named(tmp_path):
    arrays = rmd17_arrays(4)
    arrays["forces"][2, 1, 0] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(ValueError, match=r"nan.npz: frame 2: non-finite \(NaN or inf\) forces"):
        read_labelled(tmp_path / "nan.npz")
    arrays = rmd17_arrays(4)
    arrays["coords"][3, 0, 2] = np.inf
    np.savez(tmp_path / "inf.npz", **arrays)
    with pytest.raises(ValueError, match=r"inf.npz: frame 3: non-finite \(NaN or inf\) coords"):
        read_labelled(tmp_path / "inf.npz")
    # The original MD17 (sGDML) layout: another file, named with the keys found and those expected.
    arrays = rmd17_arrays(4)
    np.savez(tmp_path / "md17.npz", R=arrays["coords"], z=arrays["nuclear_charges"], E=arrays["energies"])
    with pytest.raises(
        ValueError,
        match=r"md17.npz is not a revised-MD17 .npz: it lacks nuclear_charges, coords, energies, forces "
        r"\(it has: E, R, z; expected: nuclear_charges \(N,\) \[atomic numbers\], coords \(M, N, 3\) \[A\], "
        r"energies \(M,\) \[kcal/mol\], forces \(M, N, 3\) \[kcal/mol/A\]\)",
    ):
        read_labelled(tmp_path / "md17.npz")
    arrays["forces"] = arrays["forces"][:, :3]
    np.savez(tmp_path / "shape.npz", **arrays)
    with pytest.raises(ValueError, match=r"shape.npz: forces has shape \(4, 3, 3\), expected \(4, 6, 3\)"):
        read_labelled(tmp_path / "shape.npz")
    # Python objects are never unpickled.
    np.savez(
        tmp_path / "pickle.npz", **{**rmd17_arrays(4), "energies": np.array([{"x": 1}] * 4, dtype=object)}
    )
    with pytest.raises(ValueError, match=r"pickle.npz: holds Python objects \(pickle\), which are not read"):
        read_labelled(tmp_path / "pickle.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 and then nothing")
    with pytest.raises(ValueError, match="broken.npz: cannot read it as an .npz archive"):
        read_labelled(tmp_path / "broken.npz")
    (tmp_path / "text.npz").write_text("energies forces\n")
    with pytest.raises(ValueError, match=r"text.npz: not an .npz archive \(a zip file"):
        read_labelled(tmp_path / "text.npz")
    with pytest.raises(ValueError, match="a selection .* applies to ase.db files only"):
        read_labelled(tmp_path / "nan.npz", "id>2")


def test_train_on_an_rmd17_npz_fits_the_labels_in_ev(tmp_path, capsys, monkeypatch):
    arrays = rmd17_arrays(16, seed=1)
    np.savez(tmp_path / "rmd17_methanol.npz", **arrays)
    config = {
        "data": {"path": "rmd17_methanol.npz", "validation_fraction": 0.25, "test_fraction": 0.25, "seed": 1},
        "descriptor": {"preset": "auto"},
        "model": {"hidden": [4]},
        "uncertainty": {"methods": ["ensemble"], "n_members": 2},
        "training": {"epochs": 2, "batch_size": 4, "learning_rate": 0.01, "device": "cpu"},
        "output": {"directory": "run"},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "train.yaml", "--no-progress"]) == 0
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["ids"]["test"] == "0-based frames"
    assert sorted(split["train"] + split["validation"] + split["test"]) == list(range(16))
    # The test table compares the model with the labels converted to eV.
    from mlipbias.models import load_model

    model = load_model(tmp_path / "run" / "model.mlip")
    frames = read_labelled("rmd17_methanol.npz")
    test = [frames[i] for i in split["test"]]
    predicted = model.predict(model.prepare(test), forces=True)
    reference = np.array([f * KCAL_PER_MOL_IN_EV for f in arrays["forces"][split["test"]]])
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())["metrics"]
    assert metrics["forces ensemble"]["mae"] == pytest.approx(
        np.mean(np.abs(predicted.forces - reference.reshape(-1, 3))), rel=1e-6
    )


def _make_splits_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "seed003_md17like" / "make_splits.py"
    spec = importlib.util.spec_from_file_location("make_splits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_splits_takes_rmd17_index_files_and_smaller_sizes(tmp_path):
    """examples/seed003_md17like/make_splits.py on an rMD17 file with its index files: the training and
    validation structures are disjoint and drawn from index_train_0K.csv, the test ones are the first of
    index_test_0K.csv, each with its frame and its labels in eV; sizes beyond the index files are errors."""
    from ase.io import read

    make_splits = _make_splits_module()
    arrays = rmd17_arrays(n_frames=30, seed=4)
    np.savez(tmp_path / "rmd17_methanol.npz", **arrays)
    index_dir = tmp_path / "splits"
    index_dir.mkdir()
    rng = np.random.default_rng(1)
    for k in (1, 2):
        order = rng.permutation(30)
        np.savetxt(index_dir / f"index_train_{k:02d}.csv", order[:12], fmt="%d")
        np.savetxt(index_dir / f"index_test_{k:02d}.csv", order[12:], fmt="%d")
    out = tmp_path / "out"
    sizes = ["--n-splits", "2", "--n-train", "7", "--n-validation", "3", "--n-test", "8"]
    make_splits.main(
        [str(tmp_path / "rmd17_methanol.npz"), "--index-dir", str(index_dir), "--out", str(out), *sizes]
    )
    for k in (1, 2):
        train_pool = set(np.loadtxt(index_dir / f"index_train_{k:02d}.csv", dtype=int).tolist())
        test_indices = np.loadtxt(index_dir / f"index_test_{k:02d}.csv", dtype=int)
        parts = {
            name: read(out / f"split_{k:02d}" / f"{name}.extxyz", ":")
            for name in ("train", "validation", "test")
        }
        frames = {name: [a.info["source_frame"] for a in atoms] for name, atoms in parts.items()}
        assert [len(frames[n]) for n in ("train", "validation", "test")] == [7, 3, 8]
        assert set(frames["train"]) | set(frames["validation"]) <= train_pool
        assert not set(frames["train"]) & set(frames["validation"])
        assert sorted(frames["test"]) == sorted(test_indices[:8].tolist())
        atoms = parts["test"][0]
        frame = atoms.info["source_frame"]
        np.testing.assert_allclose(atoms.positions, arrays["coords"][frame], atol=1e-6)  # extxyz digits
        assert atoms.get_potential_energy() == pytest.approx(arrays["energies"][frame] * KCAL_PER_MOL_IN_EV)
        np.testing.assert_allclose(
            atoms.get_forces(), arrays["forces"][frame] * KCAL_PER_MOL_IN_EV, rtol=1e-7
        )
    too_many = ["--n-train", "11", "--n-validation", "3"]
    with pytest.raises(SystemExit, match="index_train_01.csv holds 12 indices, expected at least 14"):
        make_splits.main(
            [
                str(tmp_path / "rmd17_methanol.npz"),
                "--index-dir",
                str(index_dir),
                "--out",
                str(out),
                *too_many,
            ]
        )
    with pytest.raises(SystemExit, match="--n-test = 0: expected a positive number"):
        make_splits.main([str(tmp_path / "rmd17_methanol.npz"), "--out", str(out), "--n-test", "0"])
