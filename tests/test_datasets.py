"""Dataset generation, storage, resume, validation and the `mlipbias data` CLI.

References: fresh ASE calculators (EMT, tblite) on the stored positions, scipy's KS test for
the displacement norms and directions, the kinetic energy of the stored momenta for the MD
temperature, and an uninterrupted run for every resumed one.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import yaml
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.io import write
from scipy import stats

from mlipbias.cli import main
from mlipbias.datasets import (
    GenerationSettings,
    append_labelled,
    displacement,
    format_summary,
    generate,
    load_dataset,
    open_dataset,
    reference_minimum,
    split_dataset,
    summarize,
)
from mlipbias.oracles import OracleError, label, make_oracle


class CountingEMT(Calculator):
    """EMT that records the positions of every calculation and can fail at call number ``fail_at``."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, fail_at=None, error=RuntimeError, nan=False):
        super().__init__()
        self.calls = []
        self.fail_at = fail_at
        self.error = error
        self.nan = nan

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls.append(self.atoms.positions.copy())
        if len(self.calls) == self.fail_at:
            raise self.error("simulated oracle failure")
        inner = EMT()
        inner.calculate(self.atoms, ["energy", "forces", "stress"], all_changes)
        self.results = {k: inner.results[k] for k in ("energy", "free_energy", "forces", "stress")}
        if self.nan:
            self.results["energy"] = np.nan


def copper(repeat=1, rattle=0.05):
    atoms = bulk("Cu", cubic=True).repeat(repeat)
    atoms.rattle(rattle, seed=1)
    return atoms


def rows_by_key(path, mode):
    key = (
        (lambda a: a.info["index"])
        if mode == "displacements"
        else (lambda a: (a.info["temperature"], a.info["index"]))
    )
    return {key(a): a for a in load_dataset(path, f"mode={mode}")}


def assert_same_rows(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].positions, b[k].positions)
        assert np.array_equal(a[k].get_momenta(), b[k].get_momenta())
        assert a[k].get_potential_energy() == b[k].get_potential_energy()
        assert np.array_equal(a[k].get_forces(), b[k].get_forces())


def test_displacements_have_uniform_norms_and_isotropic_directions():
    max_norm = 0.7
    draws = [displacement(1, seed=5, index=i, max_norm=max_norm) for i in range(3000)]
    norms = np.array([n for _, n in draws])
    lengths = np.array([np.linalg.norm(d) for d, _ in draws])
    np.testing.assert_allclose(lengths, norms, rtol=1e-12)
    assert stats.kstest(norms, stats.uniform(0, max_norm).cdf).pvalue > 1e-3
    # A normalised 3D Gaussian is uniform on the sphere: its z component is uniform in [-1, 1].
    cos_z = np.array([d[0, 2] / np.linalg.norm(d) for d, _ in draws])
    assert stats.kstest(cos_z, stats.uniform(-1, 2).cdf).pvalue > 1e-3
    again, norm = displacement(1, seed=5, index=7, max_norm=max_norm)
    assert np.array_equal(again, draws[7][0]) and norm == norms[7]
    assert not np.array_equal(displacement(1, seed=6, index=7, max_norm=max_norm)[0], again)


def test_displacement_rows_match_a_direct_emt_calculation(tmp_path):
    path = tmp_path / "cu.db"
    result = generate(path, copper(), "emt", n_samples=12, max_norm=0.5, relax_fmax=0.005, progress=False)
    assert (result.n_written, result.n_existing) == (12, 0)
    minimum = reference_minimum(path)
    reference = EMT()
    minimum_check = minimum.copy()
    minimum_check.calc = reference
    assert np.abs(minimum_check.get_forces()).max() <= 0.005
    assert minimum_check.get_potential_energy() == pytest.approx(minimum.get_potential_energy(), abs=1e-12)
    rows = load_dataset(path)
    assert [a.info["index"] for a in rows] == list(range(12))
    for atoms in rows:
        assert np.linalg.norm(atoms.positions - minimum.positions) == pytest.approx(
            atoms.info["norm"], rel=1e-12
        )
        assert 0 <= atoms.info["norm"] <= 0.5
        fresh = atoms.copy()
        fresh.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(fresh.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-10)
        np.testing.assert_allclose(atoms.get_stress(), fresh.get_stress(), atol=1e-12)
        assert atoms.info["energy_above_minimum"] == pytest.approx(
            fresh.get_potential_energy() - minimum.get_potential_energy(), abs=1e-10
        )
        assert atoms.info["oracle"] == "emt" and atoms.info["mode"] == "displacements"
        assert atoms.info["seed"] == 0 and atoms.info["mlipbias_version"]


def test_xtb_rows_match_tblite_with_stress_only_when_periodic(tmp_path):
    from tblite.ase import TBLite

    silicon = bulk("Si", "diamond", a=5.43)
    path = tmp_path / "si.db"
    generate(path, silicon, "gfn1-xtb", n_samples=2, relax=False, max_norm=0.2, progress=False)
    for atoms in load_dataset(path):
        fresh = atoms.copy()
        fresh.calc = TBLite(method="GFN1-xTB", verbosity=0)
        assert atoms.get_potential_energy() == pytest.approx(fresh.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-8)
        np.testing.assert_allclose(atoms.get_stress(), fresh.get_stress(), atol=1e-10)

    water = tmp_path / "water.db"
    from mlipbias.structures import molecule

    generate(water, molecule("H2O"), "gfn2-xtb", n_samples=2, max_norm=0.1, progress=False)
    for atoms in load_dataset(water):
        assert "stress" not in atoms.calc.results
        fresh = atoms.copy()
        fresh.calc = TBLite(method="GFN2-xTB", verbosity=0)
        np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-8)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_resume_after_an_interruption_recomputes_and_loses_nothing(tmp_path, error):
    structure = copper()
    uninterrupted = tmp_path / "full.db"
    generate(uninterrupted, structure, CountingEMT(), n_samples=10, relax=False, progress=False)

    path = tmp_path / "resumed.db"
    # Call 1 labels the minimum, calls 2-6 the first five samples, call 7 fails on sample 5.
    failing = CountingEMT(fail_at=7, error=error)
    expected = OracleError if error is RuntimeError else KeyboardInterrupt
    with pytest.raises(expected, match="displacement 5" if error is RuntimeError else None):
        generate(path, structure, failing, n_samples=10, relax=False, progress=False)
    kept = load_dataset(path)
    assert [a.info["index"] for a in kept] == [0, 1, 2, 3, 4]

    resumed = CountingEMT()
    result = generate(path, structure, resumed, n_samples=10, relax=False, progress=False)
    assert (result.n_existing, result.n_written) == (5, 5)
    assert len(resumed.calls) == 5  # the stored minimum and rows are not recomputed
    assert not any(np.array_equal(call, a.positions) for call in resumed.calls for a in kept)
    assert_same_rows(rows_by_key(path, "displacements"), rows_by_key(uninterrupted, "displacements"))
    # Growing the dataset later adds only the new indices.
    more = CountingEMT()
    assert generate(path, structure, more, n_samples=12, relax=False, progress=False).n_written == 2
    assert len(more.calls) == 2


def test_md_resume_continues_the_trajectory_exactly(tmp_path):
    structure = copper()
    options = dict(
        mode="md", n_samples=4, temperatures=[300.0, 800.0], equilibration_steps=10, sample_interval=5
    )
    uninterrupted = tmp_path / "full.db"
    generate(uninterrupted, structure, CountingEMT(), progress=False, **options)

    path = tmp_path / "resumed.db"
    # Per temperature: 1 + 10 force calls to equilibrate, then 5 per snapshot; 31 per temperature.
    # Call 31 + 11 + 10 + 3 fails in the third snapshot at 800 K, after snapshots 0 and 1 are written.
    with pytest.raises(OracleError, match="800 K"):
        generate(path, structure, CountingEMT(fail_at=55), progress=False, **options)
    stored = load_dataset(path)
    assert sorted((a.info["temperature"], a.info["index"]) for a in stored) == [
        (300.0, 0), (300.0, 1), (300.0, 2), (300.0, 3), (800.0, 0), (800.0, 1)
    ]  # fmt: skip
    resumed = CountingEMT()
    result = generate(path, structure, resumed, progress=False, **options)
    assert (result.n_existing, result.n_written) == (6, 2)
    # One force call restarts the trajectory from the stored snapshot (800 K, 1); none of the
    # other stored structures is recomputed.
    repeated = [a for a in stored if any(np.array_equal(call, a.positions) for call in resumed.calls)]
    assert [(a.info["temperature"], a.info["index"]) for a in repeated] == [(800.0, 1)]
    assert len(resumed.calls) == 1 + 2 * 5
    assert_same_rows(rows_by_key(path, "md"), rows_by_key(uninterrupted, "md"))


def test_md_snapshots_sample_the_thermostat_temperature(tmp_path):
    path = tmp_path / "md.db"
    structure = bulk("Cu", cubic=True).repeat((2, 1, 1))
    n = 50
    generate(
        path,
        structure,
        "emt",
        mode="md",
        temperatures=[600.0],
        n_samples=n,
        equilibration_steps=50,
        sample_interval=5,
        friction=0.1,
        progress=False,
    )
    rows = load_dataset(path)
    assert len(rows) == n and {a.info["temperature"] for a in rows} == {600.0}
    assert [a.info["md_step"] for a in rows] == [5 * (j + 1) for j in range(n)]
    kinetic = []
    for atoms in rows:
        p, m = atoms.get_momenta(), atoms.get_masses()
        t_kin = (p**2 / m[:, None]).sum() / (3 * len(atoms) * units.kB)
        assert t_kin == pytest.approx(atoms.info["kinetic_temperature"], rel=1e-12)
        kinetic.append(t_kin)
    # One snapshot of 8 atoms fluctuates by sqrt(2 / 3N) = 29 %; 50 snapshots 5 fs apart (momenta
    # decorrelate in 1 / friction = 10 fs) average to about 5 %.
    assert np.mean(kinetic) == pytest.approx(600.0, rel=0.15)
    positions = np.array([a.positions for a in rows])
    assert np.abs(np.diff(positions, axis=0)).max() > 0.01  # snapshots move


def test_settings_that_differ_from_the_stored_run_are_an_error(tmp_path):
    path = tmp_path / "cu.db"
    structure = copper()
    generate(path, structure, "emt", n_samples=2, relax=False, progress=False)
    with pytest.raises(ValueError, match="seed: stored 0, requested 1"):
        generate(path, structure, "emt", n_samples=2, relax=False, seed=1, progress=False)
    with pytest.raises(ValueError, match="max_norm: stored 1.0, requested 0.5"):
        generate(path, structure, "emt", n_samples=2, relax=False, max_norm=0.5, progress=False)
    with pytest.raises(ValueError, match="oracle: stored 'emt'"):
        generate(path, structure, CountingEMT(), n_samples=2, relax=False, progress=False)
    with pytest.raises(ValueError, match="structure: stored"):
        generate(path, copper(rattle=0.06), "emt", n_samples=2, relax=False, progress=False)
    # n_samples and min_distance may change; an md run can share the file.
    assert (
        generate(path, structure, "emt", n_samples=3, relax=False, min_distance=0.4, progress=False).n_written
        == 1
    )
    generate(
        path,
        structure,
        "emt",
        mode="md",
        n_samples=1,
        equilibration_steps=2,
        sample_interval=2,
        progress=False,
    )
    assert summarize(path)["provenance"]["mode"] == {"displacements": 3, "md": 1}
    with pytest.raises(ValueError, match="unknown setting.*n_sample\\b"):
        GenerationSettings.from_dict({"n_sample": 3})
    with pytest.raises(ValueError, match="setting temperatures"):
        GenerationSettings(temperatures=[300, -5])


def test_corrupt_and_foreign_files_are_clear_errors(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    plain = tmp_path / "plain.db"
    con = sqlite3.connect(plain)
    con.execute("CREATE TABLE measurements (x REAL)")
    con.commit()
    con.close()
    good = tmp_path / "good.db"
    generate(good, copper(), "emt", n_samples=4, relax=False, progress=False)
    truncated = tmp_path / "truncated.db"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    cases = [(text, "not an SQLite database"), (plain, "not an ase.db"), (truncated, "damaged")]
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            load_dataset(path)
        with pytest.raises(ValueError, match=message):
            summarize(path)
        with pytest.raises(ValueError, match=message):
            generate(path, copper(), "emt", n_samples=1, relax=False, progress=False)
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing.db")
    with pytest.raises(ValueError, match="is a folder"):
        open_dataset(tmp_path)
    assert len(load_dataset(good)) == 4  # the good file is untouched


def test_bad_structures_are_rejected_before_the_oracle_is_called(tmp_path):
    calc = CountingEMT()
    nan = copper()
    nan.positions[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite \(NaN or inf\) position of atom 2 \(Cu\)"):
        generate(tmp_path / "a.db", nan, calc, n_samples=1, progress=False)
    close = copper()
    close.positions[3] = close.positions[0] + [0.3, 0.0, 0.0]
    with pytest.raises(
        ValueError, match=r"atoms 0 \(Cu\) and 3 \(Cu\) are 0.3000 A apart.*min_distance = 0.5"
    ):
        label(close, calc, name="close pair")
    with pytest.raises(ValueError, match="own periodic image"):
        label(Atoms("Cu", cell=[0.4, 3, 3], pbc=True), calc)
    assert calc.calls == []
    label(close, calc, min_distance=0.2)  # the threshold is configurable
    assert len(calc.calls) == 1
    with pytest.raises(OracleError, match="non-finite energy for sample 3"):
        label(copper(), CountingEMT(nan=True), name="sample 3")
    with pytest.raises(OracleError, match="failed on sample 4.*simulated oracle failure"):
        label(copper(), CountingEMT(fail_at=1), name="sample 4")
    with pytest.raises(ValueError, match="unknown oracle 'dft'"):
        make_oracle("dft")
    with pytest.raises(ValueError, match="unknown option.*cutof"):
        make_oracle("emt", cutof=3.0)


def test_split_dataset_is_deterministic_disjoint_and_complete():
    parts = split_dataset(103, (0.8, 0.1, 0.1), seed=4)
    # Largest remainder: 82.4, 10.3, 10.3 round down to 82, 10, 10 and the one left goes to the
    # largest remainder (0.4, the training part).
    assert [len(p) for p in parts] == [83, 10, 10]
    # 84, 10.5, 10.5: of tied remainders the first part (validation) gets the one left.
    assert [len(p) for p in split_dataset(105, (0.8, 0.1, 0.1))] == [84, 11, 10]
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    again = split_dataset(103, (0.8, 0.1, 0.1), seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not np.array_equal(parts[0], split_dataset(103, (0.8, 0.1, 0.1), seed=5)[0])
    assert [len(p) for p in split_dataset(7, (0.8, 0.1, 0.1))] == [5, 1, 1]
    with pytest.raises(ValueError, match="add up to 1"):
        split_dataset(10, (0.5, 0.2))
    with pytest.raises(ValueError, match="non-negative"):
        split_dataset(10, (1.2, -0.2))


def test_load_and_summarize_agree_with_the_rows(tmp_path):
    path = tmp_path / "cu.db"
    generate(path, copper(), "emt", n_samples=6, relax=False, progress=False)
    rows = load_dataset(path)
    summary = summarize(path)
    energies = np.array([a.get_potential_energy() / len(a) for a in rows])
    forces = np.concatenate([a.get_forces().ravel() for a in rows])
    assert summary["count"] == 6 and summary["elements"] == {"Cu": 24} and summary["n_with_stress"] == 6
    assert summary["energy_per_atom"]["mean"] == pytest.approx(energies.mean(), rel=1e-12)
    assert summary["energy_per_atom"]["std"] == pytest.approx(energies.std(), rel=1e-12)
    assert summary["force_component_rms"] == pytest.approx(np.sqrt((forces**2).mean()), rel=1e-12)
    assert summary["provenance"]["oracle"] == {"emt": 6}
    assert "6 structures" in format_summary(summary)
    assert len(load_dataset(path, "index<2")) == 2
    db = open_dataset(path)
    db.write(copper())  # a row without labels
    with pytest.raises(ValueError, match=r"row 7 \(Cu4\) has no energy under the key 'energy'"):
        load_dataset(path)
    assert len(load_dataset(path, require_labels=False)) == 7


def test_cli_generate_resume_summary_and_errors(tmp_path, capsys):
    structure = tmp_path / "cu.extxyz"
    write(structure, copper())
    output = tmp_path / "cli.db"
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump({"output": str(output), "structure": str(structure), "oracle": "emt", "n_samples": 3})
    )
    assert main(["data", "generate", "--config", str(config), "--no-relax", "--no-progress"]) == 0
    assert "3 new displacements structures" in capsys.readouterr().out
    assert (
        main(["data", "generate", "-c", str(config), "--no-relax", "--n-samples", "5", "--no-progress"]) == 0
    )
    assert "2 new displacements structures labelled, 3 already present" in capsys.readouterr().out
    assert main(["data", "summary", str(output), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 5 and summary["runs"]["displacements"]["settings"]["relax"] is False

    assert main(["data", "generate", "-c", str(config), "--no-relax", "--seed", "1", "--no-progress"]) == 2
    assert "seed: stored 0, requested 1" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("output: x.db\nn_sampels: 3\n")
    assert main(["data", "generate", "-c", str(bad)]) == 2
    assert "unknown key(s) n_sampels" in capsys.readouterr().err
    assert main(["data", "summary", str(config)]) == 2
    assert "not an SQLite database" in capsys.readouterr().err

    assert main(["data", "template"]) == 0
    template = yaml.safe_load(capsys.readouterr().out)
    assert {k: template[k] for k in GenerationSettings().to_dict()} == GenerationSettings().to_dict()


def test_append_labelled_writes_one_committed_row_with_provenance(tmp_path):
    path = tmp_path / "al.db"
    atoms = copper()
    row_id = append_labelled(path, atoms, "emt", name="candidate 0", mode="al", generation=2)
    (stored,) = load_dataset(path)
    assert (
        stored.info["db_id"] == row_id and stored.info["generation"] == 2 and stored.info["oracle"] == "emt"
    )
    fresh = atoms.copy()
    fresh.calc = EMT()
    np.testing.assert_allclose(stored.get_forces(), fresh.get_forces(), atol=1e-10)
    close = copper()
    close.positions[1] = close.positions[0] + [0.1, 0, 0]
    with pytest.raises(ValueError, match="candidate 1: atoms 0 .* and 1"):
        append_labelled(path, close, "emt", name="candidate 1", mode="al")
    assert len(load_dataset(path)) == 1
    # With a sample key a repeated labelling writes nothing and does not call the oracle again.
    calc = CountingEMT()
    key = "al/generation=2/candidate=5"
    first = append_labelled(path, copper(rattle=0.07), calc, name="candidate 5", key=key, mode="al")
    assert append_labelled(path, copper(rattle=0.07), calc, name="candidate 5", key=key, mode="al") is None
    assert len(calc.calls) == 1 and len(load_dataset(path)) == 2
    assert load_dataset(path, f"id={first}")[0].info["sample_key"] == key


def test_demo_labels_the_shipped_silica_with_bks(tmp_path, capsys):
    from mlipbias.potentials import BKS

    assert main(["demo", "--output-dir", str(tmp_path), "--n-samples", "3", "--no-progress"]) == 0
    assert "3 structures" in capsys.readouterr().out
    rows = load_dataset(tmp_path / "dataset.db")
    assert [a.info["oracle"] for a in rows] == ["bks"] * 3
    for atoms in rows:
        fresh = atoms.copy()
        fresh.calc = BKS()
        assert atoms.get_potential_energy() == pytest.approx(fresh.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-8)
        np.testing.assert_allclose(atoms.get_stress(), fresh.get_stress(), atol=1e-10)
