"""Sample keys (mlipbias.sample_claims): two processes never write one key twice or lose one."""

import multiprocessing
import os
import sqlite3

import ase.db
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlipbias import sample_claims

N_KEYS = 40


def _labelled(i: int) -> Atoms:
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 0.01 * i]])
    atoms.calc = SinglePointCalculator(atoms, energy=float(i), forces=np.zeros((2, 3)))
    return atoms


def _connect(path):
    return ase.db.connect(str(path), type="db", use_lock_file=False, append=True)


def _worker(path, order):
    db = _connect(path)
    for i in order:
        key = f"test/index={i}"
        if sample_claims.claim(db, key):
            sample_claims.write_once(db, key, _labelled(i), {"index": i, "pid": os.getpid()})


def test_two_processes_write_every_key_once(tmp_path):
    path = tmp_path / "data.db"
    ctx = multiprocessing.get_context("spawn")
    # Opposite orders make the two meet in the middle and race on the same keys.
    procs = [
        ctx.Process(target=_worker, args=(path, list(range(N_KEYS)))),
        ctx.Process(target=_worker, args=(path, list(reversed(range(N_KEYS))))),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    db = _connect(path)
    indices = sorted(row.index for row in db.select())
    assert indices == list(range(N_KEYS))
    assert len(sample_claims.done_keys(db)) == N_KEYS


def test_write_once_refuses_a_done_key(tmp_path):
    db = _connect(tmp_path / "data.db")
    first = sample_claims.write_once(db, "k", _labelled(1), {"index": 1})
    assert first is not None
    assert sample_claims.write_once(db, "k", _labelled(2), {"index": 2}) is None
    assert db.count() == 1
    assert db.get(id=first).sample_key == "k"
    assert not sample_claims.claim(db, "k")  # done keys cannot be claimed
    assert sample_claims.state(db, "k").done


def test_claim_of_a_dead_process_is_taken_over(tmp_path):
    db = _connect(tmp_path / "data.db")
    assert sample_claims.claim(db, "k")
    # A live other owner holds it: a claim with an unexpired lease by a running process (pid 1).
    con = sqlite3.connect(tmp_path / "data.db")
    host = sample_claims._owner().rsplit(":", 2)[0]
    table = sample_claims.TABLE
    con.execute(f"UPDATE {table} SET owner = ?, expires = 1e12 WHERE key = 'k'", (f"{host}:1:0",))
    con.commit()
    assert not sample_claims.claim(db, "k")
    # Its owner died (a pid that cannot exist): the claim is free again at once.
    con.execute(f"UPDATE {sample_claims.TABLE} SET owner = ? WHERE key = 'k'", (f"{host}:999999999:0",))
    con.commit()
    assert sample_claims.claim(db, "k")
    # An expired lease of a process on another host is free too.
    con.execute(f"UPDATE {sample_claims.TABLE} SET owner = 'elsewhere:5:0', expires = 1 WHERE key = 'k'")
    con.commit()
    con.close()
    assert sample_claims.claim(db, "k")


def test_release_frees_a_claim(tmp_path):
    db = _connect(tmp_path / "data.db")
    assert sample_claims.claim(db, "k")
    sample_claims.release(db, "k")
    assert sample_claims.state(db, "k").owner is None
    assert not sample_claims.state(db, "k").done
