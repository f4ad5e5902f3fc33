"""Two ``mlipbias data generate`` processes writing one file at once: every sample exactly once.

Real subprocesses run the real CLI. They import everything first and then start together on a
signal file, so that both are labelling while samples are missing (the case that duplicated rows).
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write
from subprocess_env import MLIPBIAS_PARENT, mlipbias_env

from mlipbias import sample_claims
from mlipbias.cli import main
from mlipbias.datasets import format_summary, generate, load_dataset, open_dataset, summarize

# Imports outside the timed start, then wait for the signal and run the CLI.
LAUNCH = """
import sys, time, pathlib
import ase.calculators.emt, ase.db, ase.md.langevin, tqdm.auto
import mlipbias.datasets
from mlipbias.cli import main
go = pathlib.Path(sys.argv[1])
while not go.exists():
    time.sleep(0.005)
sys.exit(main(sys.argv[2:]))
"""


def copper():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=3)
    return atoms


def run_twice_at_once(tmp_path, args):
    go = tmp_path / "go"
    env = mlipbias_env()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(go), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    time.sleep(3.0)  # both have imported and wait for the signal
    go.touch()
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    return [out for out, _ in outputs]


def written(outputs, mode):
    """The 'N new MODE structures labelled' counts the two processes printed."""
    counts = []
    for out in outputs:
        line = next(line for line in out.splitlines() if f"new {mode} structures labelled" in line)
        counts.append(int(line.split(": ")[1].split()[0]))
    return counts


def test_two_concurrent_displacement_runs_write_every_sample_once(tmp_path):
    structure = tmp_path / "cu.extxyz"
    write(structure, copper())
    n = 40
    db_path = tmp_path / "same.db"
    args = ["data", "generate", "-o", str(db_path), "--structure", str(structure), "--oracle", "emt"]
    args += ["--n-samples", str(n), "--max-norm", "0.3", "--relax-fmax", "0.05", "--no-progress"]
    outputs = run_twice_at_once(tmp_path, args)
    rows = load_dataset(db_path)
    assert sorted(a.info["index"] for a in rows) == list(range(n))
    assert sum(written(outputs, "displacements")) == n
    assert summarize(db_path)["duplicates"] == {}
    # Every row is the one a single process would have written (same minimum, same displacement).
    alone = tmp_path / "alone.db"
    generate(alone, read(structure), "emt", n_samples=n, max_norm=0.3, relax_fmax=0.05, progress=False)
    reference = {a.info["index"]: a for a in load_dataset(alone)}
    for atoms in rows:
        ref = reference[atoms.info["index"]]
        np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-12)
        assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-10)


def test_two_concurrent_md_runs_share_the_temperature_chains(tmp_path):
    structure = tmp_path / "cu.extxyz"
    write(structure, copper())
    db_path = tmp_path / "md.db"
    options = {
        "temperatures": (300.0, 600.0),
        "n_samples": 6,
        "equilibration_steps": 40,
        "sample_interval": 5,
    }
    args = ["data", "generate", "-o", str(db_path), "--structure", str(structure), "--oracle", "emt"]
    args += ["--mode", "md", "--temperatures", "300", "600", "--n-samples", "6"]
    args += ["--equilibration-steps", "40", "--sample-interval", "5", "--no-progress"]
    outputs = run_twice_at_once(tmp_path, args)
    rows = load_dataset(db_path)
    keys = sorted((a.info["temperature"], a.info["index"]) for a in rows)
    assert keys == [(t, j) for t in (300.0, 600.0) for j in range(6)]
    assert sum(written(outputs, "md")) == 12
    # The trajectories are those of one uninterrupted process: nothing was continued from a wrong state.
    alone = tmp_path / "alone.db"
    generate(alone, read(structure), "emt", mode="md", progress=False, **options)
    reference = {(a.info["temperature"], a.info["index"]): a for a in load_dataset(alone)}
    for atoms in rows:
        ref = reference[(atoms.info["temperature"], atoms.info["index"])]
        np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-9)


def test_a_claim_left_by_a_killed_run_is_taken_over_and_a_live_one_waited_for(tmp_path, capsys):
    db_path = tmp_path / "d.db"
    generate(db_path, copper(), "emt", n_samples=3, relax=False, progress=False)
    db = open_dataset(db_path)
    # A claim of sample 3 by a process that no longer exists: the rerun computes it.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = sample_claims._owner().rsplit(":", 2)[0]
    key = "displacements/seed=0/index=3"
    with sample_claims.transaction(db) as con:
        con.execute(
            f"INSERT INTO {sample_claims.TABLE} VALUES (?, NULL, ?, 1e12)", (key, f"{host}:{dead.pid}:0")
        )
    result = generate(db_path, copper(), "emt", n_samples=4, relax=False, progress=False)
    assert result.n_written == 1 and sample_claims.state(db, key).done
    # A live other process holds sample 4 and writes it 1.5 s later: the run says so, waits, and returns
    # once the row is there. (Were the writer to die instead, its claim would be taken over: no hang.)
    key = "displacements/seed=0/index=4"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; sys.path.insert(0, sys.argv[1]); time.sleep(1.5)\n"
            "from ase.build import bulk\nfrom ase.calculators.singlepoint import SinglePointCalculator\n"
            "from mlipbias import sample_claims\nfrom mlipbias.datasets import open_dataset\n"
            "a = bulk('Cu', 'fcc', a=3.6, cubic=True)\n"
            "a.calc = SinglePointCalculator(a, energy=0.0, forces=a.positions * 0)\n"
            "sample_claims.write_once(open_dataset(sys.argv[2]), sys.argv[3], a, {'mode': 'other'})",
            MLIPBIAS_PARENT,
            str(db_path),
            key,
        ]
    )
    with sample_claims.transaction(db) as con:
        con.execute(
            f"INSERT INTO {sample_claims.TABLE} VALUES (?, NULL, ?, 1e12)", (key, f"{host}:{writer.pid}:0")
        )
    started = time.perf_counter()
    result = generate(db_path, copper(), "emt", n_samples=5, relax=False, progress=False)
    assert writer.wait(60) == 0
    assert result.n_written == 0 and time.perf_counter() - started > 1.0
    assert "1 displacements are being computed by another process" in capsys.readouterr().err


def test_summary_reports_duplicate_samples_of_older_files(tmp_path, capsys):
    db_path = tmp_path / "old.db"
    generate(db_path, copper(), "emt", n_samples=3, relax=False, progress=False)
    db = open_dataset(db_path)
    # What two concurrent runs of an older version left: the same sample twice, without keys.
    row = db.get(index=1)
    kv = {k: v for k, v in row.key_value_pairs.items() if k != "sample_key"}
    new_id = db.write(row.toatoms(), key_value_pairs=kv)
    summary = summarize(db_path)
    assert summary["duplicates"] == {"displacements/seed=0/index=1": [row.id, new_id]}
    assert "DUPLICATES      1 samples are stored more than once, 1 extra rows" in format_summary(summary)
    assert main(["data", "summary", str(db_path)]) == 0
    assert f"id={new_id} --delete" in capsys.readouterr().out
