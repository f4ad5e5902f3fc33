"""Labelled datasets: generation, storage in ase.db (SQLite), loading, splitting, summaries.

Generation (:func:`generate`) follows Cubuk & Schoenholz (2020):

* ``displacements``: relax the structure to a local minimum with the oracle, then for sample
  ``i`` draw a Gaussian direction (independent in every Cartesian component of every atom) and
  scale it to a total L2 norm ``|R_i - R_min|`` drawn uniformly in [``min_norm``, ``max_norm``] A.
* ``md``: Langevin NVT molecular dynamics at each temperature: equilibrate, then keep a
  snapshot every ``sample_interval`` steps. The oracle drives the dynamics, or, with
  ``md_driver``, a cheaper calculator does (e.g. a classical potential) and the oracle only
  labels the snapshots.

Every sample is a pure function of (seed, its index): displacement ``i`` uses the random
stream ``SeedSequence(seed, spawn_key=(i,))``, MD snapshot ``j`` at temperature ``T`` the
stream ``(seed, T in mK, j + 1)`` for the ``sample_interval`` steps that lead to it from
snapshot ``j - 1`` (whose positions and momenta are stored in its row). So an interrupted
run resumes by rerunning the same call: done samples are skipped, the rest come out exactly
as in an uninterrupted run, and nothing written is lost, because each row is committed to
SQLite as soon as it is labelled.

Several processes may write one file at once (e.g. two jobs started with the same command): each
row has a sample key (``displacements/seed=0/index=17``, ``md/seed=0/T=300000mK/index=4``) that
is claimed before its oracle call and written once (:mod:`mlipbias.sample_claims`), so no sample
is computed twice or lost. An MD temperature is one chain (snapshot j continues from j - 1): a
process claims the whole chain, and a second one takes another temperature or waits. A run that
finds samples held by another live process says so and waits until they are written; a claim
whose process died is taken over.

Rows carry energy (eV), forces (eV/A), stress (eV/A^3, periodic structures) and the
provenance keys ``mode``, ``index``, ``seed``, ``oracle``, ``structure``, ``mlipbias_version``
and ``norm``/``energy_above_minimum`` (displacements) or ``temperature``/``md_step``/
``kinetic_temperature`` (md). The run's settings, oracle, input structure and (for
displacements) the relaxed minimum are stored in the database metadata under ``"mlipbias"``
and checked when a run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import sys
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms, units

from mlipbias import __version__, sample_claims
from mlipbias.oracles import OracleError, attach_results, describe_oracle, label, make_oracle
from mlipbias.structures import check_structure, fingerprint, maxwell_boltzmann_momenta

MODES = ("displacements", "md")
FORMAT = "mlipbias-dataset"
FORMAT_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"
_ZIP_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive of .npy files
LOCK_TIMEOUT = 20.0  # s an open waits for another process's write lock before it says "locked"
WAIT_POLL = 0.5  # s between looks at samples that another live process is computing


# --------------------------------------------------------------------------------------------
# settings


def _setting(default, help: str, modes: tuple[str, ...] = MODES, resumable: bool = False):
    """A settings field; ``resumable`` ones may change between runs into the same database."""
    return field(default=default, metadata={"help": help, "modes": modes, "resumable": resumable})


@dataclass(frozen=True)
class GenerationSettings:
    """How :func:`generate` makes a dataset. Units: A, eV/A, K, fs, 1/fs."""

    mode: str = _setting("displacements", "generation mode: displacements or md")
    n_samples: int = _setting(
        100,
        "number of structures (displacements) or of snapshots per temperature (md); may grow between runs",
        resumable=True,
    )
    seed: int = _setting(0, "random seed; every sample is a pure function of (seed, index)")
    max_norm: float = _setting(
        1.0,
        "largest total L2 norm of a displacement, A; norms are uniform in [min_norm, max_norm]",
        ("displacements",),
    )
    min_norm: float = _setting(
        0.0,
        "smallest total L2 norm of a displacement, A; min_norm = max_norm gives one fixed norm",
        ("displacements",),
    )
    relax: bool = _setting(
        True, "relax to a local minimum with the oracle before displacing", ("displacements",)
    )
    relax_fmax: float = _setting(
        0.01, "relaxation converged when max |F| is below this, eV/A", ("displacements",)
    )
    relax_steps: int = _setting(1000, "maximum BFGS steps of the relaxation", ("displacements",))
    temperatures: tuple[float, ...] = _setting(
        (300.0,), "thermostat temperatures, K; more may be added between runs", ("md",), resumable=True
    )
    timestep: float = _setting(1.0, "MD time step, fs", ("md",))
    friction: float = _setting(0.01, "Langevin friction, 1/fs", ("md",))
    equilibration_steps: int = _setting(
        1000, "MD steps before the first snapshot at each temperature", ("md",)
    )
    sample_interval: int = _setting(20, "MD steps between snapshots", ("md",))
    min_distance: float = _setting(
        0.5, "reject structures with two atoms closer than this, A (0 disables)", resumable=True
    )

    def __post_init__(self):
        def fail(key, why):
            raise ValueError(f"setting {key}: {why}, got {getattr(self, key)!r}")

        if self.mode not in MODES:
            fail("mode", f"must be one of {', '.join(MODES)}")
        for key in ("n_samples", "seed", "relax_steps", "equilibration_steps", "sample_interval"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                fail(key, "must be an integer")
            object.__setattr__(self, key, int(value))
        for key in ("n_samples", "seed", "relax_steps", "equilibration_steps"):
            if getattr(self, key) < 0:
                fail(key, "must be >= 0")
        if self.sample_interval < 1:
            fail("sample_interval", "must be >= 1")
        for key in ("max_norm", "min_norm", "relax_fmax", "timestep", "friction", "min_distance"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                fail(key, "must be a number")
            if not math.isfinite(value) or value < 0:
                fail(key, "must be finite and >= 0")
            object.__setattr__(self, key, float(value))
        for key in ("relax_fmax", "timestep"):
            if getattr(self, key) <= 0:
                fail(key, "must be > 0")
        if self.min_norm > self.max_norm:
            fail("min_norm", f"must not exceed max_norm ({self.max_norm})")
        if not isinstance(self.relax, bool):
            fail("relax", "must be true or false")
        temps = self.temperatures
        if isinstance(temps, (int, float)):
            temps = (temps,)
        try:
            temps = tuple(float(t) for t in temps)
        except (TypeError, ValueError):
            fail("temperatures", "must be a list of numbers (K)")
        if not temps or any(not math.isfinite(t) or t <= 0 for t in temps):
            fail("temperatures", "must be a non-empty list of positive temperatures (K)")
        if len(set(temps)) != len(temps):
            fail("temperatures", "must not repeat a temperature")
        object.__setattr__(self, "temperatures", temps)

    @classmethod
    def from_dict(cls, values: dict) -> GenerationSettings:
        """Settings from a mapping (e.g. YAML); unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def for_mode(self) -> dict:
        """The settings that apply to this mode."""
        return {
            f.name: _jsonable(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if self.mode in f.metadata["modes"]
        }

    def identity(self) -> dict:
        """The settings of this mode that must be equal for a run to resume another one."""
        return {
            f.name: _jsonable(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if self.mode in f.metadata["modes"] and not f.metadata["resumable"]
        }


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


@dataclass
class GenerationResult:
    """What :func:`generate` did: rows found from earlier runs, rows written now, the total asked for."""

    path: Path
    mode: str
    n_requested: int
    n_existing: int
    n_written: int


# --------------------------------------------------------------------------------------------
# the database


def open_dataset(path: str | Path, create: bool = False):
    """An ``ase.db`` SQLite connection to ``path``, after checking the file is one.

    With ``create`` a missing file (and its folder) is created; otherwise it is a
    FileNotFoundError. A file that is not SQLite, an SQLite file that is not an ase.db, or a
    damaged database is a ValueError naming the file and the problem.
    """
    import ase.db

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, expected an ase.db SQLite file")
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as handle:
            header = handle.read(len(_SQLITE_MAGIC))
        if header != _SQLITE_MAGIC:
            raise ValueError(
                f"{path} is not an SQLite database (ase.db); it may be another format or damaged"
            )
        try:
            # A writer killed mid-transaction leaves a hot journal, which SQLite rolls back on the
            # next read: that needs write access, so the check opens read-write then.
            journal = path.with_name(path.name + "-journal")
            mode = "rw" if journal.exists() and journal.stat().st_size > 0 else "ro"
            con = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=LOCK_TIMEOUT)
            try:
                check = con.execute("PRAGMA quick_check").fetchone()[0]
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            finally:
                con.close()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise ValueError(
                    f"{path} is locked by another process (still locked after {LOCK_TIMEOUT:g} s): "
                    "wait for it to finish and retry; the file is not damaged"
                ) from exc
            raise ValueError(f"{path} is a damaged SQLite database: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path} is a damaged SQLite database: {exc}") from exc
        if check != "ok":
            raise ValueError(f"{path} is a damaged SQLite database: integrity check says {check!r}")
        if not {"systems", "information"} <= tables:
            names = ", ".join(sorted(tables)) or "none"
            raise ValueError(f"{path} is an SQLite database but not an ase.db (tables: {names})")
    elif not path.exists():
        if not create:
            raise FileNotFoundError(f"dataset {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
    # No ase lock file: SQLite locks itself, and a stale lock left by a killed run would make
    # the next one wait forever.
    db = ase.db.connect(str(path), type="db", use_lock_file=False, append=True)
    if create:
        # ase creates its tables in autocommit statements: two processes creating one new file at
        # once would both try. Holding the write lock makes the second find them made.
        with sample_claims.transaction(db):
            pass
    return db


def _mlipbias_metadata(db) -> dict:
    meta = db.metadata.get("mlipbias", {})
    if meta and meta.get("format") != FORMAT:
        raise ValueError(f"{db.filename}: metadata 'mlipbias' is not an {FORMAT} record")
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(
            f"{db.filename}: dataset format version {meta['format_version']} is newer than this mlipbias "
            f"({FORMAT_VERSION}); upgrade mlipbias"
        )
    return meta


def _fresh_metadata(con) -> dict:
    """The metadata as stored now (``db.metadata`` is cached when the connection opens, and
    another process may have written since)."""
    row = con.execute("SELECT value FROM information WHERE name='metadata'").fetchone()
    return json.loads(row[0]) if row else {}


def _store_run(db, mode: str, run: dict) -> dict:
    """Store the record of a run; a relaxed minimum already stored (by another process) is kept.
    Read, merge and write are one transaction. Returns the record as stored."""
    with sample_claims.transaction(db) as con:
        metadata = _fresh_metadata(con)
        meta = metadata.get("mlipbias") or {"format": FORMAT, "format_version": FORMAT_VERSION, "runs": {}}
        stored = meta.setdefault("runs", {}).get(mode) or {}
        if "minimum" in stored and "minimum" not in run:
            run = {**run, "minimum": stored["minimum"]}
        meta["runs"][mode] = run
        _write_metadata(db, metadata, meta)
    return run


def _write_metadata(db, metadata: dict, meta: dict) -> None:
    metadata["mlipbias"] = meta
    metadata.setdefault("title", "mlipbias dataset")
    metadata.setdefault("key_descriptions", {})
    metadata["key_descriptions"].update(
        {
            "mode": ("Mode", "generation mode", ""),
            "index": ("Index", "sample index within its mode (and temperature)", ""),
            "norm": ("Norm", "total L2 norm of the displacement", "Ang"),
            "energy_above_minimum": ("dE", "energy above the relaxed minimum", "eV"),
            "e_min": ("E_min", "energy of the relaxed minimum the structure was displaced from", "eV"),
            "temperature": ("T", "thermostat temperature", "K"),
            "kinetic_temperature": ("T_kin", "instantaneous kinetic temperature", "K"),
            "md_step": ("Step", "MD steps after equilibration", ""),
            "md_driver": ("Driver", "calculator that integrated the MD (the oracle labelled it)", ""),
            "sample_key": ("Key", "names the sample; a key is written once (mlipbias.sample_claims)", ""),
        }
    )
    metadata.setdefault("default_columns", ["id", "formula", "mode", "index", "energy", "fmax", "oracle"])
    db.metadata = metadata


def stored_run(path: str | Path, mode: str) -> dict | None:
    """The stored record (settings, oracle, structure, minimum) of a generation mode, or None."""
    return _mlipbias_metadata(open_dataset(path)).get("runs", {}).get(mode)


def reference_minimum(path: str | Path) -> Atoms | None:
    """The relaxed minimum that the displacements of ``path`` start from (with its energy and
    forces in a SinglePointCalculator), or None for a dataset without displacements."""
    run = stored_run(path, "displacements")
    if run is None:
        return None
    return _minimum_atoms(run["minimum"])


def _minimum_atoms(record: dict) -> Atoms:
    atoms = Atoms(
        numbers=record["numbers"],
        positions=np.array(record["positions"]),
        cell=record["cell"],
        pbc=record["pbc"],
    )
    return attach_results(atoms, {"energy": record["energy"], "forces": np.array(record["forces"])})


# --------------------------------------------------------------------------------------------
# generation


def generate(
    path: str | Path,
    structure: Atoms,
    oracle="bks",
    settings: GenerationSettings | None = None,
    *,
    oracle_options: dict | None = None,
    md_driver=None,
    md_driver_options: dict | None = None,
    structure_name: str | None = None,
    progress: bool = True,
    **overrides,
) -> GenerationResult:
    """Label ``settings.n_samples`` structures made from ``structure`` and write them to ``path``.

    ``oracle`` is a name for :func:`mlipbias.oracles.make_oracle` (with ``oracle_options``) or
    any ASE calculator. ``overrides`` replace fields of ``settings`` (e.g. ``mode="md"``).
    ``md_driver`` (mode ``md`` only; a name or calculator like ``oracle``, with
    ``md_driver_options``) integrates the trajectories instead of the oracle, which then labels
    only the snapshots: the cheap way to sample MD of an expensive reference.
    Rerunning with the same arguments resumes: finished samples are not recomputed. Settings that
    differ from the stored ones (other than ``n_samples``, ``temperatures``, ``min_distance``) are a
    ValueError. Oracle failures raise :class:`mlipbias.oracles.OracleError` after the rows done
    so far have been kept.
    """
    base = settings.to_dict() if settings is not None else {}
    settings = GenerationSettings.from_dict({**base, **overrides})
    oracle_label, oracle_params = describe_oracle(oracle, oracle_options)
    calc = make_oracle(oracle, **(oracle_options or {}))
    driver_label, driver_params = None, {}
    if md_driver is not None:
        if settings.mode != "md":
            raise ValueError(f"md_driver drives MD and applies to mode md only, not {settings.mode}")
        driver_label, driver_params = describe_oracle(md_driver, md_driver_options)
        driver = make_oracle(md_driver, **(md_driver_options or {}))
    elif md_driver_options:
        raise ValueError("md_driver_options given without md_driver")
    else:
        driver = calc
    check_structure(structure, settings.min_distance, "input structure")
    name = structure_name or structure.info.get("name") or structure.get_chemical_formula()
    run = {
        "settings": settings.to_dict(),
        "oracle": oracle_label,
        "oracle_options": _jsonable(oracle_params),
        "md_driver": driver_label,
        "md_driver_options": _jsonable(driver_params),
        "structure": {
            "name": name,
            "formula": structure.get_chemical_formula(),
            "fingerprint": fingerprint(structure),
        },
        "mlipbias_version": __version__,
    }
    db = open_dataset(path, create=True)
    stored = _mlipbias_metadata(db).get("runs", {}).get(settings.mode)
    if stored is not None:
        _check_resume(path, settings, run, stored)
        run = {**stored, "settings": settings.to_dict()}
    common = {
        "mode": settings.mode,
        "seed": settings.seed,
        "oracle": oracle_label,
        "structure": name,
        "mlipbias_version": __version__,
    }
    if settings.mode == "displacements":
        return _generate_displacements(db, Path(path), structure, calc, settings, run, common, progress)
    if driver_label is not None:
        common["md_driver"] = driver_label
    return _generate_md(db, Path(path), structure, calc, driver, settings, run, common, progress)


def _check_resume(path, settings: GenerationSettings, run: dict, stored: dict) -> None:
    old = GenerationSettings.from_dict(stored["settings"]).identity()
    differences = [
        f"{k}: stored {old[k]!r}, requested {v!r}" for k, v in settings.identity().items() if old[k] != v
    ]
    for key in ("oracle", "oracle_options"):
        if stored[key] != run[key]:
            differences.append(f"{key}: stored {stored[key]!r}, requested {run[key]!r}")
    # Runs written before md_driver existed were driven by their oracle.
    for key, absent in (("md_driver", None), ("md_driver_options", {})):
        if stored.get(key, absent) != run[key]:
            differences.append(f"{key}: stored {stored.get(key, absent)!r}, requested {run[key]!r}")
    if stored["structure"]["fingerprint"] != run["structure"]["fingerprint"]:
        differences.append(
            f"structure: stored {stored['structure']['name']} ({stored['structure']['formula']}, "
            f"fingerprint {stored['structure']['fingerprint']}), requested {run['structure']['name']} "
            f"({run['structure']['formula']}, fingerprint {run['structure']['fingerprint']})"
        )
    if differences:
        raise ValueError(
            f"{path} holds a {settings.mode} run with other settings, so it cannot be resumed: "
            + "; ".join(differences)
            + ". Rerun with the stored settings, or write to a new file."
        )


def _done(db, mode: str) -> list[dict]:
    return [
        row.key_value_pairs
        for row in db.select(mode=mode, columns=["id", "key_value_pairs"], include_data=False)
    ]


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def displacement(
    n_atoms: int, seed: int, index: int, max_norm: float, min_norm: float = 0.0
) -> tuple[np.ndarray, float]:
    """The displacement (n_atoms x 3, A) and its total L2 norm for sample ``index``.

    Gaussian direction, normalised, times a norm uniform in [min_norm, max_norm]; a pure function
    of (seed, index). ``min_norm`` = 0 draws exactly what earlier versions drew."""
    rng = _rng(seed, index)
    norm = float(rng.uniform(min_norm, max_norm))
    direction = rng.standard_normal((n_atoms, 3))
    return direction * (norm / np.linalg.norm(direction)), norm


def _sample_key(mode: str, seed: int, index: int, temperature: float | None = None) -> str:
    """The sample key of a row (see :mod:`mlipbias.sample_claims`): what it is, completely."""
    chain = "" if temperature is None else f"/T={_millikelvin(temperature)}mK"
    return f"{mode}/seed={seed}{chain}/index={index}"


def _millikelvin(temperature: float) -> int:
    return int(round(temperature * 1000))


def _tell(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _claimed(db, path, keys, compute, what: str) -> None:
    """Compute every key of ``keys`` exactly once across the processes that write ``path``.

    A key this process claims is computed by ``compute(key)`` (which writes its row with
    :func:`sample_claims.write_once`); a key another live process holds is waited for, so that
    every run returns with all keys done. A claim whose owner died is taken over. A failure gives
    the claim back before it propagates."""
    pending, told = list(keys), False
    while pending:
        held = []
        for key in pending:
            if sample_claims.claim(db, key):
                try:
                    compute(key)
                finally:
                    sample_claims.release(db, key)  # a no-op once the row is written
                continue
            state = sample_claims.state(db, key)
            if not state.done:
                held.append(state)
        if held:
            if not told:
                owners = ", ".join(sorted({s.owner or "?" for s in held}))
                _tell(
                    f"{path}: {len(held)} {what} are being computed by another process ({owners}); "
                    "waiting for them (a claim whose process ends is taken over)"
                )
                told = True
            time.sleep(WAIT_POLL)
        pending = [s.key for s in held]


def _relaxed_minimum(db, path, structure, calc, settings, run, progress) -> dict:
    """The run record with its relaxed minimum: relaxed here, or by the process that claimed it."""
    from mlipbias.structures import relax

    def stored_minimum(run: dict) -> dict:
        with db.managed_connection() as con:
            stored = _fresh_metadata(con).get("mlipbias", {}).get("runs", {}).get("displacements", {})
        return {**run, "minimum": stored["minimum"]} if "minimum" in stored else run

    key = f"displacements/seed={settings.seed}/minimum"
    told = False
    while "minimum" not in run:
        if not sample_claims.claim(db, key):
            if not told:
                _tell(f"{path}: another process is relaxing the input structure; waiting for its minimum")
                told = True
            time.sleep(WAIT_POLL)
            run = stored_minimum(run)
            continue
        run = stored_minimum(run)  # stored by a process that held the claim until just now
        if "minimum" in run:
            sample_claims.release(db, key)
            break
        try:
            minimum = structure.copy()
            minimum.calc = None
            converged = True
            if settings.relax:
                try:
                    fmax = relax(
                        minimum, calc, fmax=settings.relax_fmax, steps=settings.relax_steps, progress=progress
                    )
                except Exception as exc:
                    raise OracleError(
                        f"oracle failed while relaxing the input structure: {type(exc).__name__}: {exc}"
                    ) from exc
                converged = fmax <= settings.relax_fmax
                if not converged:
                    warnings.warn(
                        f"relaxation stopped after {settings.relax_steps} steps at max |F| = {fmax:.3g} "
                        f"eV/A (> relax_fmax {settings.relax_fmax}); displacing about this structure anyway",
                        stacklevel=4,
                    )
            results = label(minimum, calc, name="relaxed minimum", min_distance=settings.min_distance)
            run = _store_run(
                db,
                "displacements",
                {
                    **run,
                    "minimum": {
                        "numbers": minimum.numbers.tolist(),
                        "positions": minimum.positions.tolist(),
                        "cell": minimum.cell.array.tolist(),
                        "pbc": minimum.pbc.tolist(),
                        "energy": results["energy"],
                        "forces": results["forces"].tolist(),
                        "converged": converged,
                    },
                },
            )
        finally:
            sample_claims.release(db, key)
    return run


def _generate_displacements(db, path, structure, calc, settings, run, common, progress) -> GenerationResult:
    from tqdm.auto import tqdm

    run = _store_run(db, "displacements", run)
    run = _relaxed_minimum(db, path, structure, calc, settings, run, progress)
    minimum = _minimum_atoms(run["minimum"])
    e_min = run["minimum"]["energy"]
    # Rows of files written before sample keys existed are found by their index.
    done = {kv["index"] for kv in _done(db, "displacements")}
    todo = {
        _sample_key("displacements", settings.seed, i): i for i in range(settings.n_samples) if i not in done
    }
    n_existing = settings.n_samples - len(todo)
    written = 0
    with tqdm(
        total=settings.n_samples,
        initial=n_existing,
        desc="displacements",
        unit="structure",
        disable=None if progress else True,
    ) as bar:

        def compute(key: str) -> None:
            nonlocal written
            i = todo[key]
            delta, norm = displacement(len(minimum), settings.seed, i, settings.max_norm, settings.min_norm)
            atoms = Atoms(
                minimum.numbers, positions=minimum.positions + delta, cell=minimum.cell, pbc=minimum.pbc
            )
            results = label(
                atoms, calc, name=f"displacement {i} (norm {norm:.4f} A)", min_distance=settings.min_distance
            )
            row = sample_claims.write_once(
                db,
                key,
                attach_results(atoms, results, common["oracle"]),
                key_value_pairs={
                    **common,
                    "index": i,
                    "norm": norm,
                    "energy_above_minimum": results["energy"] - e_min,
                    # total energy of the relaxed minimum, read by `mlipbias adversarial` (Fig. 1c)
                    "e_min": e_min,
                },
            )
            written += row is not None
            bar.update(1)

        _claimed(db, path, todo, compute, "displacements")
        bar.update(settings.n_samples - bar.n)  # those that another process wrote
    return GenerationResult(path, "displacements", settings.n_samples, n_existing, written)


def _md_done(db, temperature: float) -> set[int]:
    """Indices of the stored snapshots at ``temperature``."""
    return {int(kv["index"]) for kv in _done(db, "md") if float(kv["temperature"]) == temperature}


def _generate_md(db, path, structure, calc, driver, settings, run, common, progress) -> GenerationResult:
    """Each temperature's snapshots form a chain (snapshot j continues from j - 1), so a process
    claims a whole chain; a second process takes another temperature or waits for the chain."""
    from ase.md.langevin import Langevin
    from tqdm.auto import tqdm

    _store_run(db, "md", run)
    n_total = settings.n_samples * len(settings.temperatures)
    n_existing = sum(len(_md_done(db, t) & set(range(settings.n_samples))) for t in settings.temperatures)
    dt = settings.timestep * units.fs

    def run_md(atoms: Atoms, temperature: float, steps: int, rng, what: str) -> None:
        atoms.calc = driver
        dyn = Langevin(
            atoms, dt, temperature_K=temperature, friction=settings.friction / units.fs, fixcm=False, rng=rng
        )
        try:
            dyn.run(steps)
        except Exception as exc:
            who = "MD driver" if driver is not calc else "oracle"
            raise OracleError(f"{who} failed during {what}: {type(exc).__name__}: {exc}") from exc

    written = 0
    chains = {
        f"md/seed={settings.seed}/T={_millikelvin(t)}mK/chain": t
        for t in settings.temperatures
        if len(_md_done(db, t) & set(range(settings.n_samples))) < settings.n_samples
    }
    with tqdm(
        total=n_total,
        initial=n_existing,
        desc="md snapshots",
        unit="snapshot",
        disable=None if progress else True,
    ) as bar:

        def run_chain(chain_key: str) -> None:
            nonlocal written
            temperature = chains[chain_key]
            key = _millikelvin(temperature)  # the random stream of this temperature
            done = _md_done(db, temperature)  # read after the claim: another process may have added
            state, state_index = None, None
            for j in range(settings.n_samples):
                if j in done:
                    continue
                if state_index == j - 1:
                    pass  # continue the trajectory held in memory
                elif j == 0:
                    state = structure.copy()
                    state.calc = None
                    rng = _rng(settings.seed, key, 0)
                    state.set_momenta(maxwell_boltzmann_momenta(state.get_masses(), temperature, rng))
                    bar.set_postfix_str(f"equilibrating at {temperature:g} K", refresh=True)
                    run_md(
                        state,
                        temperature,
                        settings.equilibration_steps,
                        rng,
                        f"equilibration at {temperature:g} K",
                    )
                else:
                    state = _row_state(db, temperature, j - 1)
                bar.set_postfix_str(f"T = {temperature:g} K", refresh=False)
                run_md(
                    state,
                    temperature,
                    settings.sample_interval,
                    _rng(settings.seed, key, j + 1),
                    f"MD at {temperature:g} K towards snapshot {j}",
                )
                state_index = j
                snapshot = state.copy()
                results = label(
                    snapshot,
                    calc,
                    name=f"MD snapshot {j} at {temperature:g} K",
                    min_distance=settings.min_distance,
                )
                row = sample_claims.write_once(
                    db,
                    _sample_key("md", settings.seed, j, temperature),
                    attach_results(snapshot, results, common["oracle"]),
                    key_value_pairs={
                        **common,
                        "index": j,
                        "temperature": temperature,
                        "md_step": (j + 1) * settings.sample_interval,
                        "kinetic_temperature": float(snapshot.get_temperature()),
                    },
                )
                written += row is not None
                bar.update(1)
                sample_claims.claim(db, chain_key)  # renews this process's lease on the chain

        _claimed(db, path, chains, run_chain, "MD temperature chains")
        bar.update(n_total - bar.n)  # chains that another process finished
    return GenerationResult(path, "md", n_total, n_existing, written)


def _row_state(db, temperature: float, index: int) -> Atoms:
    """Positions and momenta of a stored MD snapshot, to continue its trajectory."""
    for row in db.select(mode="md", index=index):
        if float(row.temperature) == temperature:
            atoms = row.toatoms()
            atoms.calc = None
            if atoms.get_momenta().any():
                return atoms
            raise ValueError(
                f"{db.filename}: MD snapshot {index} at {temperature:g} K has no momenta to continue from"
            )
    raise ValueError(f"{db.filename}: MD snapshot {index} at {temperature:g} K is missing")


def append_labelled(
    path: str | Path,
    atoms: Atoms,
    oracle,
    *,
    name: str = "structure",
    min_distance: float = 0.5,
    oracle_options: dict | None = None,
    key: str | None = None,
    **provenance,
) -> int | None:
    """Label ``atoms`` with ``oracle`` and append it to ``path`` as one committed row.

    For code that labels structures one at a time (active learning): the row carries energy,
    forces, stress (periodic), the keys ``oracle`` and ``mlipbias_version``, and ``provenance``
    (ase.db key-value pairs: str, int, float or bool values, e.g. ``mode="al", generation=3``).
    ``oracle`` is a name or a calculator, as for :func:`generate`. Returns the new row id.
    With a sample ``key`` (see :mod:`mlipbias.sample_claims`) the row is written only if that key
    has none yet, checked in the transaction that writes it: the oracle is not called for a done
    key, and None is returned when the key is (or meanwhile became) done.
    Raises ValueError for an invalid structure and OracleError for a failed label; nothing is
    written then.
    """
    db = open_dataset(path, create=True)
    if key is not None and sample_claims.state(db, key).done:
        return None
    calc = make_oracle(oracle, **(oracle_options or {}))
    results = label(atoms, calc, name=name, min_distance=min_distance)
    oracle_label = describe_oracle(oracle, oracle_options)[0]
    pairs = {"oracle": oracle_label, "mlipbias_version": __version__, **provenance}
    labelled = attach_results(atoms, results, oracle_label)
    if key is not None:
        return sample_claims.write_once(db, key, labelled, key_value_pairs=pairs)
    return db.write(labelled, key_value_pairs=pairs)


# --------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class LabelKeys:
    """Where a structure file keeps its reference labels, as MACE and apax name them.

    ``energy_key`` (eV) and ``stress_key`` (eV/A^3, ASE sign and Voigt order, or 3x3) are looked
    up in ``atoms.info`` (extxyz comment line; key-value pairs of an ase.db row), ``forces_key``
    (eV/A) in ``atoms.arrays`` (extxyz columns; the data of an ase.db row). A key named
    ``energy``, ``forces`` or ``stress`` also finds the results that ASE stores in the frame's
    calculator (what ``ase.io`` makes of those names, and of an ase.db row's labels).
    """

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"


def read_labelled(
    path: str | Path,
    selection=None,
    *,
    keys: LabelKeys | None = None,
    require_forces: bool = True,
    require_energy: bool = True,
) -> list[Atoms]:
    """Labelled structures from an ase.db file, a revised-MD17 ``.npz`` (:func:`read_rmd17`) or any
    file ``ase.io.read`` reads (extxyz, ...).

    Each Atoms carries its labels (mapped by ``keys``) in a SinglePointCalculator, its provenance
    in ``info`` and the file's other per-atom arrays (e.g. momenta), and where it came from:
    ``info["db_id"]`` (ase.db row id) or ``info["frame"]`` (0-based frame of a structure file).
    Every structure needs an energy (with ``require_energy``) and forces (with ``require_forces``);
    a missing label names the frame and the keys it has; non-finite positions, cells or labels are
    a ValueError naming the file and the row or frame. ``selection`` (an ase.db query) applies to
    ase.db files only.
    """
    path = Path(path)
    keys = keys or LabelKeys()
    if path.is_dir():
        raise ValueError(f"{path} is a folder, expected an ase.db file or a structure file (extxyz, ...)")
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    with open(path, "rb") as handle:
        magic = handle.read(len(_SQLITE_MAGIC))
    if magic == _SQLITE_MAGIC:
        return load_dataset(
            path, selection, keys=keys, require_forces=require_forces, require_energy=require_energy
        )
    if selection is not None:
        raise ValueError(f"{path}: a selection ({selection!r}) applies to ase.db files only")
    if path.suffix.lower() == ".npz" or magic.startswith(_ZIP_MAGIC):
        return read_rmd17(path, keys=keys, require_forces=require_forces, require_energy=require_energy)
    import ase.io

    try:
        frames = ase.io.read(path, index=":")
    except Exception as exc:  # ase.io raises many kinds for unknown or broken formats
        raise ValueError(
            f"cannot read {path} with ase.io ({type(exc).__name__}: {exc}); give an ase.db file, a "
            "revised-MD17 .npz or a format ase.io reads (extxyz, ...)"
        ) from exc
    structures = []
    for k, atoms in enumerate(frames):
        where = f"{path}: frame {k} ({atoms.get_chemical_formula()})"
        labels = _labels(atoms, atoms.info, atoms.arrays, keys, where, require_forces, require_energy)
        structure = atoms.copy()  # keeps info and arrays (momenta, ...) but not the labels
        structure.calc = None
        for key in (keys.energy, keys.stress):
            structure.info.pop(key, None)
        if keys.forces in structure.arrays:
            del structure.arrays[keys.forces]
        _check_finite(structure, where)
        structure.info["frame"] = k
        structures.append(attach_results(structure, labels) if labels else structure)
    return structures


# The revised MD17 archive (Christensen & von Lilienfeld 2020, figshare 12672038), one
# rmd17_MOLECULE.npz per molecule: key -> (shape, unit). M structures of N atoms. Optional:
# old_indices (M,), the structure's index in the original MD17 trajectory, and old_energies,
# old_forces, the original MD17 labels (same shapes and units).
RMD17_KEYS = {
    "nuclear_charges": ("(N,)", "atomic numbers"),
    "coords": ("(M, N, 3)", "A"),
    "energies": ("(M,)", "kcal/mol"),
    "forces": ("(M, N, 3)", "kcal/mol/A"),
}
KCAL_PER_MOL = units.kcal / units.mol  # eV (0.0433641...)


def read_rmd17(
    path: str | Path,
    *,
    keys: LabelKeys | None = None,
    require_forces: bool = True,
    require_energy: bool = True,
) -> list[Atoms]:
    """The structures of a revised-MD17 ``.npz`` (layout in :data:`RMD17_KEYS`), labels in eV and eV/A.

    Energies and forces are read from ``energies`` and ``forces`` (kcal/mol, kcal/mol/A) and
    converted with 1 kcal/mol = ``units.kcal / units.mol`` eV. ``keys`` may name other arrays of
    the file for the labels (``LabelKeys(energy="old_energies", forces="old_forces")``: the
    original MD17 labels, same units). Each Atoms records ``info["frame"]`` (0-based, the index
    that the published ``index_train_0N.csv`` / ``index_test_0N.csv`` splits use) and, when the
    file has ``old_indices``, ``info["old_index"]``. The file is read with
    ``np.load(allow_pickle=False)``; another layout is a ValueError naming the keys found and
    expected, non-finite numbers a ValueError naming the frame.
    """
    path = Path(path)
    keys = keys or LabelKeys()
    with open(path, "rb") as handle:
        if handle.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            raise ValueError(f"{path}: not an .npz archive (a zip file of .npy arrays, as rMD17's)")
    names = {"energy": "energies", "forces": "forces"}  # what the default label names mean here
    energy_key = names.get(keys.energy, keys.energy)
    forces_key = names.get(keys.forces, keys.forces)
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = sorted(archive.files)
            missing = [k for k in ("nuclear_charges", "coords") if k not in archive.files]
            missing += [
                k for k, wanted in ((energy_key, require_energy), (forces_key, require_forces)) if wanted
            ]
            missing = [k for k in dict.fromkeys(missing) if k not in archive.files]
            if missing:
                expected = ", ".join(f"{k} {shape} [{unit}]" for k, (shape, unit) in RMD17_KEYS.items())
                raise ValueError(
                    f"{path} is not a revised-MD17 .npz: it lacks {', '.join(missing)} "
                    f"(it has: {', '.join(found) or 'nothing'}; expected: {expected})"
                )
            arrays = {
                k: archive[k]
                for k in ("nuclear_charges", "coords", energy_key, forces_key, "old_indices")
                if k in archive.files
            }
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ValueError(
                f"{path}: holds Python objects (pickle), which are not read; rMD17 holds none"
            ) from None
        raise
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: cannot read it as an .npz archive ({type(exc).__name__}: {exc})") from exc

    numbers, coords = arrays["nuclear_charges"], arrays["coords"]
    if numbers.ndim != 1 or not np.issubdtype(numbers.dtype, np.integer):
        raise ValueError(
            f"{path}: nuclear_charges must be a 1-d integer array, got shape {numbers.shape} {numbers.dtype}"
        )
    if numbers.size == 0 or numbers.min() < 1 or numbers.max() > 118:
        raise ValueError(f"{path}: nuclear_charges must be atomic numbers 1 to 118, got {numbers.tolist()}")
    n_atoms = numbers.size
    if coords.ndim != 3 or coords.shape[1:] != (n_atoms, 3):
        raise ValueError(f"{path}: coords has shape {coords.shape}, expected (M, {n_atoms}, 3)")
    n_frames = coords.shape[0]
    shapes = {energy_key: [(n_frames,), (n_frames, 1)], forces_key: [(n_frames, n_atoms, 3)]}
    shapes["old_indices"] = [(n_frames,)]
    for key, allowed in shapes.items():
        if key in arrays and arrays[key].shape not in allowed:
            raise ValueError(
                f"{path}: {key} has shape {arrays[key].shape}, expected {' or '.join(map(str, allowed))}"
            )
    for key in ("coords", energy_key, forces_key):
        if key not in arrays:
            continue
        try:
            values = arrays[key].astype(float, casting="same_kind").reshape(n_frames, -1)
        except TypeError:
            raise ValueError(f"{path}: {key} is not numeric ({arrays[key].dtype})") from None
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            raise ValueError(
                f"{path}: frame {bad[0]}: non-finite (NaN or inf) {key} ({bad.size} frame(s) in all)"
            )
    energies = arrays[energy_key].reshape(n_frames) * KCAL_PER_MOL if energy_key in arrays else None
    forces = arrays[forces_key] * KCAL_PER_MOL if forces_key in arrays else None
    structures = []
    for k in range(n_frames):
        atoms = Atoms(numbers=numbers, positions=coords[k])
        atoms.info["frame"] = k
        if "old_indices" in arrays:
            atoms.info["old_index"] = int(arrays["old_indices"][k])
        results = {}
        if energies is not None:
            results["energy"] = float(energies[k])
        if forces is not None:
            results["forces"] = forces[k].astype(float)
        structures.append(attach_results(atoms, results) if results else atoms)
    return structures


def _labels(
    atoms: Atoms, info, arrays, keys: LabelKeys, where: str, require_forces: bool, require_energy: bool = True
) -> dict:
    """The labels of one structure (energy, forces, stress in ASE's Voigt order), checked."""
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    n = len(atoms)
    shapes = {"energy": ((),), "forces": ((n, 3),), "stress": ((6,), (3, 3), (9,))}
    labels = {}
    for quantity, key, source in (
        ("energy", keys.energy, info),
        ("forces", keys.forces, arrays),
        ("stress", keys.stress, info),
    ):
        if key in source:
            value = source[key]
        elif key == quantity and quantity in results:
            value = results[quantity]
        else:
            continue
        try:
            value = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {quantity} (key {key!r}) is not numeric: {value!r}") from None
        if value.shape not in shapes[quantity]:
            raise ValueError(
                f"{where}: {quantity} (key {key!r}) has shape {value.shape}, expected "
                + " or ".join(str(s) for s in shapes[quantity])
            )
        if not np.isfinite(value).all():
            raise ValueError(f"{where}: non-finite (NaN or inf) {quantity} (key {key!r})")
        if quantity == "stress":
            if not atoms.pbc.all():
                continue  # a stress needs a volume
            if value.shape != (6,):
                value = value.reshape(3, 3)[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        labels[quantity] = float(value) if quantity == "energy" else value
    wanted = [("energy", keys.energy, "info")] if require_energy else []
    if require_forces:
        wanted.append(("forces", keys.forces, "arrays"))
    for quantity, key, place in wanted:
        if quantity not in labels:
            found = sorted(info if place == "info" else set(arrays) - {"numbers", "positions"})
            found += sorted(results)
            without = (
                "; energy-only data: training.force_weight: 0 (train) or --no-forces (evaluate)"
                if quantity == "forces"
                else ""
            )
            raise ValueError(
                f"{where} has no {quantity} under the key {key!r} (it has: {', '.join(found) or 'nothing'}); "
                f"name the key with data.{quantity}_key (train) or --{quantity}-key (evaluate, "
                f"adversarial){without}"
            )
    return labels


def _check_finite(atoms: Atoms, where: str) -> None:
    for name, value in (("positions", atoms.positions), ("cell", atoms.cell.array)):
        if not np.isfinite(value).all():
            raise ValueError(f"{where}: non-finite (NaN or inf) {name}")


def load_dataset(
    path: str | Path,
    selection=None,
    require_labels: bool = True,
    *,
    keys: LabelKeys | None = None,
    require_forces: bool = True,
    require_energy: bool = True,
) -> list[Atoms]:
    """All structures of the ase.db ``path`` (in row order) matching the ase.db ``selection``.

    Each Atoms carries its labels in a SinglePointCalculator (``get_potential_energy()``,
    ``get_forces()``, ``get_stress()``) and its provenance key-value pairs in ``info`` (plus
    ``info["db_id"]``). With ``require_labels`` a row without energy (or, with ``require_forces``,
    forces) is a ValueError; ``keys`` maps labels stored under other names (see :class:`LabelKeys`).
    """
    db = open_dataset(path)
    keys = keys or LabelKeys()
    structures = []
    try:
        rows = list(db.select(selection))
    except (ValueError, KeyError, sqlite3.DatabaseError) as exc:
        raise ValueError(f"{path}: bad selection {selection!r}: {exc}") from exc
    for row in rows:
        atoms = row.toatoms()
        where = f"{path}: row {row.id} ({row.formula})"
        # SQLite has no checksums over the stored arrays: refuse silent NaN from a damaged file.
        _check_finite(atoms, where)
        if require_labels:
            labels = _labels(
                atoms, row.key_value_pairs, row.data, keys, where, require_forces, require_energy
            )
            atoms = attach_results(atoms, labels, row.get("calculator"))
        elif atoms.calc is not None:
            _labels(atoms, {}, {}, LabelKeys(), where, require_forces=False)
        atoms.info.update(row.key_value_pairs)
        atoms.info["db_id"] = row.id
        structures.append(atoms)
    return structures


def split_dataset(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> list[np.ndarray]:
    """Deterministic random split of ``range(n)`` into parts of the given fractions (sum 1).

    Part sizes are rounded by largest remainder so they add up to ``n``; each part is sorted.
    """
    fractions = np.asarray(fractions, dtype=float)
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"split_dataset: n must be a non-negative integer, got {n!r}")
    if (
        fractions.ndim != 1
        or fractions.size == 0
        or not np.isfinite(fractions).all()
        or (fractions < 0).any()
    ):
        raise ValueError(f"split_dataset: fractions must be non-negative numbers, got {fractions.tolist()}")
    if abs(fractions.sum() - 1.0) > 1e-9:
        raise ValueError(
            f"split_dataset: fractions must add up to 1, got {fractions.tolist()} (sum {fractions.sum()})"
        )
    exact = fractions * int(n)
    sizes = np.floor(exact).astype(int)
    remainder = int(n) - sizes.sum()
    sizes[np.argsort(-(exact - sizes), kind="stable")[:remainder]] += 1
    order = np.random.default_rng(seed).permutation(int(n))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def summarize(path: str | Path, selection=None) -> dict:
    """Counts, composition, energy per atom, force statistics and provenance of a dataset.

    Energies in eV/atom, forces in eV/A (statistics over all Cartesian components).
    """
    db = open_dataset(path)
    count, n_stress = 0, 0
    formulas, elements, atoms_per_structure = Counter(), Counter(), Counter()
    provenance = {key: Counter() for key in ("mode", "oracle", "temperature", "structure")}
    energies, force_sq, force_max, n_components = [], 0.0, 0.0, 0
    samples = {}  # sample key -> row ids; more than one only in files of older versions
    for row in db.select(selection):
        count += 1
        kv = row.key_value_pairs
        if "sample_key" in kv:
            samples.setdefault(kv["sample_key"], []).append(row.id)
        elif kv.get("mode") in MODES and "index" in kv:
            key = _sample_key(kv["mode"], kv.get("seed", 0), kv["index"], kv.get("temperature"))
            samples.setdefault(key, []).append(row.id)
        formulas[row.formula] += 1
        atoms_per_structure[row.natoms] += 1
        for symbol, n in Counter(row.symbols).items():
            elements[symbol] += n
        if row.get("energy") is not None:
            energies.append(row.energy / row.natoms)
        if row.get("forces") is not None:
            force_sq += float((row.forces**2).sum())
            force_max = max(force_max, float(np.abs(row.forces).max()))
            n_components += row.forces.size
        if row.get("stress") is not None:
            n_stress += 1
        for key, counter in provenance.items():
            if key in row.key_value_pairs:
                counter[str(row.key_value_pairs[key])] += 1
    energies = np.array(energies)
    meta = _mlipbias_metadata(db)
    return {
        "path": str(path),
        "count": count,
        "formulas": dict(formulas),
        "elements": dict(elements),
        "atoms_per_structure": {int(k): v for k, v in sorted(atoms_per_structure.items())},
        "energy_per_atom": _stats(energies),
        "force_component_rms": math.sqrt(force_sq / n_components) if n_components else None,
        "force_component_max_abs": force_max if n_components else None,
        "n_with_energy": int(energies.size),
        "n_with_stress": n_stress,
        "duplicates": {key: ids for key, ids in sorted(samples.items()) if len(ids) > 1},
        "provenance": {key: dict(counter) for key, counter in provenance.items() if counter},
        "runs": {
            mode: {
                **{k: run[k] for k in ("settings", "oracle", "oracle_options", "structure")},
                "md_driver": run.get("md_driver"),
            }
            for mode, run in meta.get("runs", {}).items()
        },
    }


def _stats(values: np.ndarray) -> dict | None:
    if values.size == 0:
        return None
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def format_summary(summary: dict) -> str:
    """The summary as readable text."""
    lines = [f"dataset {summary['path']}: {summary['count']} structures"]
    if summary["count"] == 0:
        return lines[0]
    formulas = ", ".join(f"{f} x{n}" for f, n in sorted(summary["formulas"].items(), key=lambda x: -x[1])[:6])
    lines.append(f"  formulas        {formulas}")
    elements = ", ".join(f"{e} {n}" for e, n in sorted(summary["elements"].items()))
    lines.append(
        f"  atoms           {elements} (per structure: "
        + ", ".join(f"{k}" for k in summary["atoms_per_structure"])
        + ")"
    )
    e = summary["energy_per_atom"]
    if e:
        lines.append(
            f"  energy/atom     mean {e['mean']:.6f}  std {e['std']:.6f}  min {e['min']:.6f}  "
            f"max {e['max']:.6f} eV  ({summary['n_with_energy']} labelled)"
        )
    if summary["force_component_rms"] is not None:
        lines.append(
            f"  forces          rms {summary['force_component_rms']:.4f}  "
            f"max |F_a| {summary['force_component_max_abs']:.4f} eV/A"
        )
    lines.append(f"  stress          {summary['n_with_stress']} structures")
    duplicates = summary.get("duplicates") or {}
    if duplicates:
        extra = [i for ids in duplicates.values() for i in ids[1:]]
        shown = ", ".join(f"{k} (rows {', '.join(map(str, ids))})" for k, ids in list(duplicates.items())[:3])
        more = f" and {len(duplicates) - 3} more" if len(duplicates) > 3 else ""
        lines.append(
            f"  DUPLICATES      {len(duplicates)} samples are stored more than once, {len(extra)} extra rows "
            f"(written by concurrent runs of an older mlipbias): {shown}{more}. Remove the extra rows, "
            f"e.g. `ase db FILE id={extra[0]} --delete`, before training"
        )
    for key, counts in summary["provenance"].items():
        shown = ", ".join(f"{v}: {n}" for v, n in sorted(counts.items(), key=lambda x: _sort_key(x[0])))
        lines.append(f"  {key:15s} {shown}")
    for mode, run in summary["runs"].items():
        settings = GenerationSettings.from_dict(run["settings"]).for_mode()
        driver = f" (MD driven by {run['md_driver']})" if run.get("md_driver") else ""
        lines.append(
            f"  run {mode:11s} oracle {run['oracle']}{driver} on {run['structure']['name']}: "
            f"{json.dumps(settings)}"
        )
    return "\n".join(lines)


def _sort_key(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)
