"""Sample keys that two processes can never both write: claims and write-once rows in an ase.db.

Every row that a resumable job writes (a generated sample, an active-learning label) has a
*sample key*, a string that names it completely (e.g. ``"displacements/seed=0/index=17"``).
The key lives in a table of its own, ``mlipbias_sample_keys``, inside the same SQLite file, with
the key as PRIMARY KEY. Two operations use it:

* :func:`claim` marks a key as being worked on by this process, so that a second process
  running the same job skips it instead of paying for the same oracle call. A claim is a lease:
  it belongs to an owner (host, process id, start time) and expires; a claim whose owner
  process is gone (same host) or whose lease has run out can be taken over, so a killed job
  loses nothing: the rerun claims and labels what the dead one had claimed.
* :func:`write_once` writes the row and marks the key done in one SQLite transaction that
  holds the write lock (``BEGIN IMMEDIATE``). A key that is already done is never written again,
  whoever claimed it, so two processes, a repeated run or a retried Dask task never duplicate
  a row, and a row is never lost once ``write_once`` has returned.

The row itself is an ordinary ase.db row that carries the key as ``sample_key``.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from dataclasses import dataclass

from ase import Atoms

TABLE = "mlipbias_sample_keys"
DEFAULT_LEASE = 3600.0  # s; a live owner renews its claim when it writes, a dead one is detected by pid


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_PROCESS_START}"


_PROCESS_START = f"{time.time():.6f}"


def _owner_alive(owner: str) -> bool:
    """False when ``owner`` ran on this host and its process is gone (or was replaced)."""
    try:
        host, pid, _start = owner.rsplit(":", 2)
        pid_number = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True  # cannot tell from here: the lease decides
    if owner == _owner():
        return True
    try:
        os.kill(pid_number, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class KeyState:
    """What the table says of a key: ``done`` (row id set), ``claimed`` by someone, or ``free``."""

    key: str
    row_id: int | None
    owner: str | None
    expires: float | None

    @property
    def done(self) -> bool:
        return self.row_id is not None


def _ensure_table(con: sqlite3.Connection) -> None:
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, row_id INTEGER, owner TEXT, expires REAL)"
    )


def _initialized(db) -> None:
    """Let ase create its tables first (its initialisation commits, which must not happen inside
    our transactions), holding the write lock: ase checks for its tables and then creates them in
    separate statements, so two processes opening one new file at once would both create them.
    With the lock the second finds them made."""
    if getattr(db, "initialized", False):
        return
    db.__enter__()
    try:
        db.connection.execute("BEGIN IMMEDIATE")
        db._initialize(db.connection)  # ase's own table creation, now inside the lock
    except BaseException as exc:
        db.__exit__(type(exc), exc, exc.__traceback__)
        raise
    db.__exit__(None, None, None)


def _immediate(db):
    """``with db:`` (one ase transaction, committed on exit, rolled back on error) that holds
    SQLite's write lock from its first statement."""
    _initialized(db)

    class _Transaction:
        def __enter__(self):
            db.__enter__()
            con = db.connection
            con.execute("BEGIN IMMEDIATE")
            _ensure_table(con)
            return con

        def __exit__(self, *exc):
            db.__exit__(*exc)
            return False

    return _Transaction()


def transaction(db):
    """``with transaction(db) as con:`` one SQLite transaction holding the write lock, committed on
    exit and rolled back on error; ase calls on ``db`` inside it (``db.write``, ``db.metadata = ...``)
    join it. For read-modify-write of shared state (e.g. the dataset's metadata)."""
    return _immediate(db)


def state(db, key: str) -> KeyState:
    """The state of ``key`` in ``db`` (an ase.db SQLite connection)."""
    _initialized(db)
    with db.managed_connection() as con:
        _ensure_table(con)
        row = con.execute(f"SELECT row_id, owner, expires FROM {TABLE} WHERE key = ?", (key,)).fetchone()
    if row is None:
        return KeyState(key, None, None, None)
    return KeyState(key, row[0], row[1], row[2])


def done_keys(db) -> dict[str, int]:
    """Every key that has its row, with the row id."""
    _initialized(db)
    with db.managed_connection() as con:
        _ensure_table(con)
        rows = con.execute(f"SELECT key, row_id FROM {TABLE} WHERE row_id IS NOT NULL").fetchall()
    return dict(rows)


def claim(db, key: str, lease: float = DEFAULT_LEASE) -> bool:
    """Claim ``key`` for this process for ``lease`` seconds. True when this process may now
    compute it; False when it is done or another live owner holds an unexpired claim."""
    now = time.time()
    me = _owner()
    with _immediate(db) as con:
        row = con.execute(f"SELECT row_id, owner, expires FROM {TABLE} WHERE key = ?", (key,)).fetchone()
        if row is not None:
            row_id, owner, expires = row
            if row_id is not None:
                return False
            held = owner != me and expires is not None and expires > now and _owner_alive(owner)
            if held:
                return False
        con.execute(
            f"INSERT INTO {TABLE} (key, row_id, owner, expires) VALUES (?, NULL, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, expires = excluded.expires",
            (key, me, now + lease),
        )
    return True


def release(db, key: str) -> None:
    """Give a claim back without writing (e.g. the oracle failed and the caller recorded why)."""
    with _immediate(db) as con:
        con.execute(f"DELETE FROM {TABLE} WHERE key = ? AND row_id IS NULL AND owner = ?", (key, _owner()))


def write_once(db, key: str, atoms: Atoms, key_value_pairs: dict | None = None, data: dict | None = None):
    """Write ``atoms`` (with its calculator results) as the row of ``key`` unless that key
    already has a row. Returns the new row id, or None when the key was done already. The check
    and the write are one transaction: two processes never both write a key."""
    pairs = {**(key_value_pairs or {}), "sample_key": key}
    with _immediate(db) as con:
        row = con.execute(f"SELECT row_id FROM {TABLE} WHERE key = ?", (key,)).fetchone()
        if row is not None and row[0] is not None:
            return None
        row_id = db.write(atoms, key_value_pairs=pairs, data=data or {})
        con.execute(
            f"INSERT INTO {TABLE} (key, row_id, owner, expires) VALUES (?, ?, NULL, NULL) "
            "ON CONFLICT(key) DO UPDATE SET row_id = excluded.row_id, owner = NULL, expires = NULL",
            (key, row_id),
        )
    return row_id
