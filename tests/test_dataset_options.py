"""Dataset options added for the seed-001 studies: a fixed displacement norm (``min_norm``), MD
driven by one calculator and labelled by another (``md_driver``), and the ``lammps`` oracle.

References: scipy's KS test for the norms, an MD run driven by the driver alone (same random
streams, so the same trajectory), fresh calculators on the stored positions, finite differences
and the published Stillinger-Weber cohesive energy of diamond silicon.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones
from ase.io import write
from scipy import stats

from mlipbias.cli import main
from mlipbias.datasets import GenerationSettings, displacement, generate, load_dataset, reference_minimum
from mlipbias.oracles import make_oracle


class CountingLJ(Calculator):
    """Lennard-Jones that counts its calls: the 'oracle' of the driver tests."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self):
        super().__init__()
        self.n_calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.n_calls += 1
        inner = LennardJones(sigma=2.3, epsilon=0.4, rc=5.0)
        inner.calculate(self.atoms, ["energy", "forces", "stress"], all_changes)
        self.results = {k: inner.results[k] for k in ("energy", "free_energy", "forces", "stress")}


def copper():
    atoms = bulk("Cu", cubic=True)
    atoms.rattle(0.05, seed=1)
    return atoms


def test_min_norm_draws_uniform_norms_in_the_interval_and_zero_keeps_old_draws():
    draws = [displacement(2, seed=3, index=i, max_norm=0.7, min_norm=0.2) for i in range(2000)]
    norms = np.array([n for _, n in draws])
    np.testing.assert_allclose([np.linalg.norm(d) for d, _ in draws], norms, rtol=1e-12)
    assert stats.kstest(norms, stats.uniform(0.2, 0.5).cdf).pvalue > 1e-3
    # min_norm 0 is the generator's original draw: uniform(0, max) followed by the direction.
    rng = np.random.default_rng(np.random.SeedSequence(3, spawn_key=(11,)))
    norm = rng.uniform(0.0, 0.7)
    direction = rng.standard_normal((2, 3))
    old, old_norm = displacement(2, seed=3, index=11, max_norm=0.7)
    assert old_norm == norm
    np.testing.assert_array_equal(old, direction * (norm / np.linalg.norm(direction)))
    with pytest.raises(ValueError, match="setting min_norm: must not exceed max_norm"):
        GenerationSettings(min_norm=0.5, max_norm=0.3)


def test_fixed_norm_dataset_and_resume_check(tmp_path):
    path = tmp_path / "fixed.db"
    generate(path, copper(), "emt", n_samples=4, min_norm=0.3, max_norm=0.3, progress=False)
    minimum = reference_minimum(path)
    for atoms in load_dataset(path):
        assert atoms.info["norm"] == 0.3
        assert np.linalg.norm(atoms.positions - minimum.positions) == pytest.approx(0.3, rel=1e-12)
    with pytest.raises(ValueError, match="min_norm: stored 0.3, requested 0.0"):
        generate(path, copper(), "emt", n_samples=4, max_norm=0.3, progress=False)


def test_md_driver_integrates_and_the_oracle_only_labels(tmp_path):
    options = dict(mode="md", n_samples=3, temperatures=[500.0], equilibration_steps=6, sample_interval=4)
    driven_by_emt = tmp_path / "emt.db"
    generate(driven_by_emt, copper(), "emt", progress=False, **options)

    path = tmp_path / "driven.db"
    oracle = CountingLJ()
    generate(path, copper(), oracle, md_driver="emt", progress=False, **options)
    assert oracle.n_calls == 3  # one label per snapshot, no MD step
    reference = {a.info["index"]: a for a in load_dataset(driven_by_emt)}
    for atoms in load_dataset(path):
        # The same random streams and the same integrator: the trajectory of the EMT-driven run.
        np.testing.assert_array_equal(atoms.positions, reference[atoms.info["index"]].positions)
        np.testing.assert_array_equal(atoms.get_momenta(), reference[atoms.info["index"]].get_momenta())
        fresh = atoms.copy()
        fresh.calc = LennardJones(sigma=2.3, epsilon=0.4, rc=5.0)
        assert atoms.get_potential_energy() == pytest.approx(fresh.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-12)
        assert atoms.info["md_driver"] == "emt"

    # Growing the run continues the driven trajectory; another driver cannot resume it.
    generate(path, copper(), CountingLJ(), md_driver="emt", progress=False, **{**options, "n_samples": 4})
    generate(driven_by_emt, copper(), "emt", progress=False, **{**options, "n_samples": 4})
    grown = {a.info["index"]: a.positions for a in load_dataset(path)}
    np.testing.assert_array_equal(grown[3], load_dataset(driven_by_emt)[3].positions)
    with pytest.raises(ValueError, match="md_driver: stored 'emt', requested None"):
        generate(path, copper(), CountingLJ(), progress=False, **options)
    with pytest.raises(ValueError, match="md_driver: stored None, requested 'emt'"):
        generate(driven_by_emt, copper(), "emt", md_driver="emt", progress=False, **options)
    with pytest.raises(ValueError, match="mode md only"):
        generate(tmp_path / "d.db", copper(), "emt", md_driver="emt", progress=False)
    with pytest.raises(ValueError, match="md_driver_options given without md_driver"):
        generate(tmp_path / "d.db", copper(), "emt", md_driver_options={"x": 1}, progress=False, **options)


def test_lammps_oracle_stillinger_weber_against_literature_and_finite_differences():
    sw = dict(pair_style="sw", pair_coeff="* * Si.sw Si", elements=["Si"])
    atoms = bulk("Si", "diamond", a=5.431, cubic=True)
    atoms.calc = make_oracle("lammps", **sw)
    # Stillinger & Weber (1985): diamond cohesive energy 2 epsilon = 4.3366 eV/atom at a = 5.431 A.
    assert atoms.get_potential_energy() / len(atoms) == pytest.approx(-4.3366, abs=2e-4)

    atoms.rattle(0.05, seed=2)
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=False)
    h = 1e-4
    probe = atoms.copy()
    probe.calc = make_oracle("lammps", **sw)
    for i, k in [(0, 0), (3, 1), (6, 2)]:
        energies = []
        for sign in (1, -1):
            probe.positions = atoms.positions
            probe.positions[i, k] += sign * h
            energies.append(probe.get_potential_energy())
        assert forces[i, k] == pytest.approx(-(energies[0] - energies[1]) / (2 * h), abs=1e-5)
    # ASE's sign: stress = (1/V) dE/dstrain.
    for a, b in [(0, 0), (1, 2)]:
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * h
            probe.set_cell(atoms.cell.array @ strain, scale_atoms=False)
            probe.positions = atoms.positions @ strain
            energies.append(probe.get_potential_energy())
        derivative = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
        assert (stress[a, b] + stress[b, a]) / 2 == pytest.approx(derivative, abs=1e-6)

    with pytest.raises(ValueError, match="oracle lammps: give pair_coeff"):
        make_oracle("lammps", pair_style="sw")
    with pytest.raises(ValueError, match="unknown option.*pair_coef"):
        make_oracle("lammps", pair_style="sw", pair_coef="* * Si.sw Si", elements=["Si"])


def test_cli_sw_driven_md_labelled_by_xtb_and_fixed_norm(tmp_path, capsys):
    from tblite.ase import TBLite

    structure = tmp_path / "si8.extxyz"
    write(structure, bulk("Si", "diamond", a=5.431, cubic=True))
    output = tmp_path / "si.db"
    args = ["data", "generate", "-o", str(output), "--structure", str(structure), "--no-progress"]
    args += ["--mode", "md", "--temperatures", "600", "--n-samples", "2", "--equilibration-steps", "4"]
    args += ["--sample-interval", "3", "--oracle", "gfn1-xtb", "--md-driver", "lammps"]
    args += ["--md-driver-option", "pair_style=sw", "--md-driver-option", "pair_coeff=* * Si.sw Si"]
    assert main(args) == 2
    assert "oracle lammps: give elements" in capsys.readouterr().err
    assert main([*args, "--md-driver-option", "elements=[Si]"]) == 0
    rows = load_dataset(output)
    assert len(rows) == 2
    for atoms in rows:
        assert atoms.info["oracle"] == "gfn1-xtb" and atoms.info["md_driver"] == "lammps"
        fresh = atoms.copy()
        fresh.calc = TBLite(method="GFN1-xTB", verbosity=0)
        np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-8)

    fixed = tmp_path / "cu.db"
    write(tmp_path / "cu.extxyz", copper())
    common = ["data", "generate", "-o", str(fixed), "--structure", str(tmp_path / "cu.extxyz")]
    assert main([*common, "--oracle", "emt", "--min-norm", "0.2", "--max-norm", "0.2", "--no-progress"]) == 0
    assert {a.info["norm"] for a in load_dataset(fixed)} == {0.2}
    assert main([*common, "--md-driver-option", "x"]) == 2
    assert "--md-driver-option expects KEY=VALUE" in capsys.readouterr().err
