"""Calling the two models, once per geometry, with every result kept on disk.

Every experiment of Cubuk & Schoenholz (2020) evaluates the approximate and the accurate model at
geometries that follow
deterministically from the dataset (distortions, Newton steps, gradient-descent steps). ``Evaluator``
keys each evaluation by the model's role and a hash of the geometry and appends it to a JSON-lines file as
soon as it is computed. A rerun after an interruption therefore recomputes nothing, and the experiments
share evaluations (the undistorted configuration is the eps = 0 row, the Newton start and the first
gradient-descent step).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
from ase import Atoms

ROLES = ("approx", "accurate")
CACHE_FORMAT = "mlipbias-adversarial-evaluations"
CACHE_VERSION = 1
# A cached energy that a fresh evaluation misses by more than this (eV/atom) means the model has changed.
PROBE_TOLERANCE = 1e-5


class CalculationError(RuntimeError):
    """A model evaluation failed or returned a non-finite number; the message names the model and where."""


def geometry_key(atoms: Atoms) -> str:
    """SHA-1 of what a potential sees: atomic numbers, positions, cell, pbc, initial charges and moments."""
    h = hashlib.sha1()
    for array in (
        atoms.numbers.astype(np.int64),
        atoms.positions.astype(np.float64),
        atoms.cell.array.astype(np.float64),
        atoms.pbc.astype(np.int8),
        atoms.get_initial_charges().astype(np.float64),
        atoms.get_initial_magnetic_moments().astype(np.float64),
    ):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def calculator_label(calc) -> str:
    """A readable identity of a calculator for the cache header: its class and parameters."""
    name = type(calc).__name__
    try:
        params = calc.todict()
    except Exception:  # todict is optional for ASE calculators; the class name still identifies it
        params = {}
    return f"{name}({json.dumps(params, sort_keys=True, default=str)})" if params else name


class Evaluator:
    """Energies and forces of an approximate and an accurate ASE calculator, memoised per geometry.

    Parameters
    ----------
    approx, accurate:
        ASE calculators (any object speaking the Calculator contract). ``accurate`` may be None when every
        accurate evaluation needed is already known (cached, or supplied with ``add_known``).
    cache:
        Path of the JSON-lines file holding the evaluations (created if missing, appended to otherwise), or
        None to keep them in memory only.
    labels:
        Names of the two models written to the cache header; a cache made with other names is refused.
        Defaults to ``calculator_label`` of each calculator.

    ``energy_offset`` (per atomic number, eV/atom) is added to every approximate energy returned; the cache
    keeps the raw values, so an offset fitted later does not invalidate it. Energies in eV, forces in eV/A.
    """

    def __init__(self, approx, accurate, cache: str | Path | None = None, labels: dict | None = None):
        self.calculators = {"approx": approx, "accurate": accurate}
        self.labels = labels or {role: calculator_label(calc) for role, calc in self.calculators.items()}
        self.energy_offset: dict[int, float] = {}
        self.n_calls = {role: 0 for role in ROLES}  # calculator evaluations made here (cache misses)
        self.n_relaxations = 0
        self._memo: dict[tuple[str, str], dict] = {}
        self._supplied: set[tuple[str, str]] = set()  # entries given with add_known (dataset labels)
        self._file = None
        self.cache = Path(cache) if cache is not None else None
        if self.cache is not None:
            self._open_cache()

    # -- cache file ------------------------------------------------------------------------------
    def _open_cache(self) -> None:
        header = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "models": self.labels}
        if not self.cache.exists() or self.cache.stat().st_size == 0:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.cache.open("w")
            self._lock()
            self._write(header)
            return
        text = self.cache.read_text()
        # Every record is written with its newline in one flush: a last piece without one was cut short by an
        # interruption and is dropped (that evaluation is simply recomputed).
        complete, torn = text.rsplit("\n", 1) if "\n" in text else ("", text)
        lines = complete.split("\n") if complete else []
        if not lines:
            raise ValueError(f"{self.cache} is not an mlipbias adversarial evaluation cache (no header line)")
        old = self._parse(lines[0], 1)
        if old.get("format") != CACHE_FORMAT:
            raise ValueError(f"{self.cache} is not an mlipbias adversarial evaluation cache")
        if old.get("version", 0) > CACHE_VERSION:
            raise ValueError(f"{self.cache} has format version {old['version']}, newer than {CACHE_VERSION}")
        if old.get("models") != self.labels:
            raise ValueError(
                f"{self.cache} holds evaluations of other models ({old.get('models')}), not {self.labels}; "
                "use another output directory or delete that file to start afresh"
            )
        for number, line in enumerate(lines[1:], start=2):
            record = self._parse(line, number)
            self._remember(record)
        if torn:
            self.cache.write_text(complete + "\n")
        self._file = self.cache.open("a")
        self._lock()

    def _lock(self) -> None:
        """Two runs appending to one cache would interleave their lines: the second one is refused."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, one run per directory is then the user's job
            return
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            self._file = None
            raise ValueError(f"{self.cache} is in use by another running diagnosis") from None

    def _parse(self, line: str, number: int) -> dict:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.cache}, line {number}: not valid JSON ({exc.msg})") from None
        if number > 1 and not {"role", "key", "energy"} <= record.keys():
            raise ValueError(f"{self.cache}, line {number}: not an evaluation record")
        return record

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def _remember(self, record: dict) -> None:
        entry = {"energy": float(record["energy"])}
        if "converged" in record:
            entry["converged"] = bool(record["converged"])
        if record.get("forces") is not None:
            entry["forces"] = np.asarray(record["forces"], dtype=float).reshape(-1, 3)
        old = self._memo.get((record["role"], record["key"]), {})
        self._memo[(record["role"], record["key"])] = {**old, **entry}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- evaluations -----------------------------------------------------------------------------
    def add_known(self, role: str, atoms: Atoms, energy: float, forces: np.ndarray | None = None) -> None:
        """Supply a known result (e.g. labels stored with a dataset); it is not written to the cache."""
        self._check_role(role)
        record = {"role": role, "key": geometry_key(atoms), "energy": energy, "forces": forces}
        self._remember(record)
        self._supplied.add((role, record["key"]))

    def energy(self, role: str, atoms: Atoms, where: str = "") -> float:
        """Energy (eV) of the model ``role`` ("approx" or "accurate") at the geometry of atoms."""
        return self._evaluate(role, atoms, False, where)[0]

    def energy_forces(self, role: str, atoms: Atoms, where: str = "") -> tuple[float, np.ndarray]:
        """Energy (eV) and forces (eV/A, shape (N, 3)) of the model ``role`` at the geometry of atoms."""
        return self._evaluate(role, atoms, True, where)

    def _evaluate(self, role: str, atoms: Atoms, forces: bool, where: str):
        self._check_role(role)
        key = geometry_key(atoms)
        entry = self._memo.get((role, key))
        if entry is None or (forces and "forces" not in entry):
            energy, f = self.compute(role, atoms, forces, where)
            record = {"role": role, "key": key, "energy": energy}
            if f is not None:
                record["forces"] = f.ravel().tolist()
            if self._file is not None:
                self._write(record)
            self._remember(record)
            entry = self._memo[(role, key)]
        energy = entry["energy"]
        if role == "approx" and self.energy_offset:
            energy += sum(self.energy_offset.get(int(z), 0.0) for z in atoms.numbers)
        return energy, (entry["forces"].copy() if forces else None)

    def compute(
        self, role: str, atoms: Atoms, forces: bool = True, where: str = ""
    ) -> tuple[float, np.ndarray]:
        """Call the calculator of ``role`` directly (no cache): raw energy and, if asked, forces.

        Constraints are dropped so the forces are the plain negative gradient for every atom. A failing
        calculator or a non-finite result raises ``CalculationError`` naming the model and ``where``.
        """
        calc = self.calculators[role]
        where = where or "a configuration"
        if calc is None:
            raise ValueError(f"{where} needs the {role} model, but none was given")
        work = atoms.copy()
        work.constraints = []
        work.calc = calc
        try:
            energy = float(work.get_potential_energy())
            f = np.array(work.get_forces(), dtype=float) if forces else None
        except Exception as exc:  # any calculator failure, named with the model and geometry
            raise CalculationError(
                f"the {role} model ({self.labels[role]}) failed at {where}: {exc}"
            ) from exc
        self.n_calls[role] += 1
        if not math.isfinite(energy) or (f is not None and not np.all(np.isfinite(f))):
            raise CalculationError(
                f"the {role} model ({self.labels[role]}) returned a non-finite energy or force at {where} "
                f"(E = {energy})"
            )
        return energy, f

    def relaxed_energy(self, atoms: Atoms, fmax: float, steps: int, where: str = "") -> tuple[float, bool]:
        """Energy (eV) of the accurate model at the local minimum reached from atoms, and if it converged.

        FIRE with fixed cell until every force is below fmax (eV/A) or after steps steps; the result is cached
        like an evaluation, so a resumed run does not relax again.
        """
        key = f"relaxed/fmax={fmax!r}/steps={steps}/{geometry_key(atoms)}"
        entry = self._memo.get(("accurate", key))
        if entry is None:
            from ase.optimize import FIRE

            calc = self.calculators["accurate"]
            where = where or "a configuration"
            if calc is None:
                raise ValueError(f"relaxing {where} needs the accurate model, but none was given")
            work = atoms.copy()
            work.constraints = []
            work.calc = calc
            try:
                converged = bool(FIRE(work, logfile=None).run(fmax=fmax, steps=steps))
                energy = float(work.get_potential_energy())
            except Exception as exc:  # any calculator failure, named with the geometry
                raise CalculationError(f"relaxing {where} with the accurate model failed: {exc}") from exc
            self.n_relaxations += 1
            if not math.isfinite(energy):
                raise CalculationError(f"relaxing {where} with the accurate model gave E = {energy}")
            record = {"role": "accurate", "key": key, "energy": energy, "converged": converged}
            if self._file is not None:
                self._write(record)
            self._memo[("accurate", key)] = entry = {"energy": energy, "converged": converged}
        return entry["energy"], entry["converged"]

    def verify(self, atoms: Atoms, where: str = "") -> None:
        """Recompute the energies that an earlier run (or the dataset) supplied for atoms, and compare.

        Catches a model file replaced under the same name, or dataset labels made with other settings than the
        accurate calculator. Costs one evaluation per role that has such an entry.
        """
        key = geometry_key(atoms)
        for role in ROLES:
            entry = self._memo.get((role, key))
            if entry is None or self.calculators[role] is None:
                continue
            energy, _ = self.compute(role, atoms, False, where)
            if abs(energy - entry["energy"]) <= PROBE_TOLERANCE * len(atoms):
                continue
            where = where or "the first configuration"
            if (role, key) in self._supplied:
                raise ValueError(
                    f"the {role} model ({self.labels[role]}) gives E = {energy:.8f} eV at {where}, but the "
                    f"energy stored in the dataset is {entry['energy']:.8f} eV: the labels were made with "
                    "other settings (or another model) than this calculator"
                )
            raise ValueError(
                f"the {role} model ({self.labels[role]}) gives E = {energy:.8f} eV at {where}, but "
                f"{self.cache} holds {entry['energy']:.8f} eV: the model or its settings changed since "
                "that run; use another output directory"
            )

    def _check_role(self, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
