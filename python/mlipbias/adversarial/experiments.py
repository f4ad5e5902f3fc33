"""The experiments of Cubuk & Schoenholz (2020) over a dataset, and ``run_diagnosis`` that runs them all.

Each experiment takes an ``Evaluator`` (the two models behind a per-geometry cache) and a list of ASE Atoms,
and returns a dict of plain numbers (lists, floats) ready for JSON. Conventions, the same everywhere:

- error of a configuration = (E_acc - E_app) / N in meV/atom, signed; "RMSE per atom" = the root mean
  square of that over configurations (the "per-atom RMSE" of Cubuk & Schoenholz 2020, Table 1);
- A = 2 (E_acc - E_app) (F_app - F_acc) in eV^2/A (Eq. 3), cos(theta) = A.F_app / (|A| |F_app|) (Eq. 5);
- configurations are named by their position in the dataset file (``atoms.info["dataset_index"]`` when read
  with ``read_configurations``, else their position in the list);
- ``failures``: when a list is passed, a configuration whose model evaluation fails (``CalculationError``: an
  SCF that does not converge, a NaN) is left out of that experiment and recorded there as
  {"stage", "index", "error"}; when None (the default) the error propagates.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from ase import Atoms
from tqdm.auto import tqdm

from .core import (
    MEV,
    adversarial_direction,
    bin_by_energy,
    cos_theta,
    distort,
    fit_element_offsets,
    newton_step,
    random_baseline,
    random_direction,
    rmse,
    unit_vector,
)
from .evaluator import CalculationError, Evaluator
from .settings import ENERGY_OFFSETS, ENERGY_REFERENCES, NEWTON_VELOCITIES, AdversarialSettings

RESULTS_FORMAT = "mlipbias-adversarial-results"


def read_configurations(path: str | Path, max_configs: int | None = None, keys=None) -> list[Atoms]:
    """The configurations of an ase.db file (``*.db``) or of any file ``ase.io.read`` understands.

    Key-value pairs of db rows are merged into ``atoms.info`` (extxyz files put theirs there already), stored
    energies and forces stay attached as a SinglePointCalculator, and ``atoms.info["dataset_index"]`` records
    the position in the file (0-based) so results can be traced back to rows. Labels of other files are read
    by :func:`mlipbias.datasets.read_labelled` under the names of ``keys`` (a ``LabelKeys``; default
    ``energy``, ``forces``), which also refuses non-finite numbers naming the frame; labels are optional.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {path} does not exist")
    if path.suffix == ".db":
        import ase.db

        try:
            with ase.db.connect(path) as db:
                rows = list(db.select(limit=max_configs))
        except Exception as exc:  # sqlite and ase raise many kinds; the user needs the file name
            raise ValueError(f"cannot read {path} as an ase.db database: {exc}") from exc
        configs = []
        for row in rows:
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            configs.append(atoms)
    else:
        from mlipbias.datasets import read_labelled

        configs = read_labelled(path, keys=keys, require_energy=False, require_forces=False)
        configs = configs[:max_configs] if max_configs else configs
    if not configs:
        raise ValueError(f"dataset {path} holds no configurations")
    for i, atoms in enumerate(configs):
        atoms.info["dataset_index"] = i
    return configs


# -- per-configuration quantities --------------------------------------------------------------------------


def _index(atoms: Atoms, position: int) -> int:
    return int(atoms.info.get("dataset_index", position))


def _where(atoms: Atoms, position: int) -> str:
    return f"configuration {_index(atoms, position)}"


def _each(configs: Sequence[Atoms], desc: str, progress: bool):
    """(position, atoms, name for messages) over configs, with a progress bar."""
    bar = tqdm(configs, desc=desc, unit="config", disable=None if progress else True, leave=False)
    return ((i, atoms, _where(atoms, i)) for i, atoms in enumerate(bar))


def _attempt(failures: list | None, stage: str, atoms: Atoms, position: int, work, *args):
    """work(*args), or None with the failure recorded when failures is a list and a model fails."""
    try:
        return work(*args)
    except CalculationError as exc:
        if failures is None:
            raise
        failures.append({"stage": stage, "index": _index(atoms, position), "error": str(exc)})
        return None


def _moved(atoms: Atoms, positions: np.ndarray) -> Atoms:
    moved = atoms.copy()
    moved.constraints = []
    moved.positions = positions
    return moved


def configuration_quantities(ev: Evaluator, atoms: Atoms, where: str = "") -> dict:
    """E_app, E_acc (eV), F_app, F_acc (eV/A), A (eV^2/A) and cos(theta) of one configuration."""
    e_app, f_app = ev.energy_forces("approx", atoms, where)
    e_acc, f_acc = ev.energy_forces("accurate", atoms, where)
    a = adversarial_direction(e_acc, e_app, f_acc, f_app)
    return {
        "e_app": e_app,
        "e_acc": e_acc,
        "f_app": f_app,
        "f_acc": f_acc,
        "a": a,
        "cos": cos_theta(a, f_app),
    }


def _error(ev: Evaluator, atoms: Atoms, where: str) -> float:
    """(E_acc - E_app) / N in meV/atom at the geometry of atoms."""
    return (ev.energy("accurate", atoms, where) - ev.energy("approx", atoms, where)) / len(atoms) * MEV


def _mean_or_nan(values: np.ndarray) -> float:
    return float(np.mean(values)) if np.size(values) else float("nan")


def evaluate_dataset(
    ev: Evaluator,
    configs: Sequence[Atoms],
    energy_offset: str = "none",
    progress: bool = True,
    failures: list | None = None,
) -> dict:
    """Energies, errors and cos(theta) of every configuration (the data of Fig. 1a and 1b).

    With ``energy_offset="per-element"`` the per-element energies aligning E_app to E_acc are fitted on these
    configurations first and set on the evaluator, so every later experiment uses the aligned E_app.
    Returns per-configuration lists (index, n_atoms, e_app, e_acc in eV, error in meV/atom, cos_theta, the
    norms of A, F_app and F_acc, the random baseline 1/sqrt(3N)), a summary and the offset used.
    Configurations that failed (see ``failures``) are absent from the lists.
    """
    if energy_offset not in ENERGY_OFFSETS:
        raise ValueError(f"energy_offset must be one of {ENERGY_OFFSETS}, got {energy_offset!r}")
    ev.energy_offset = {}
    raw = {}
    for i, atoms, where in _each(configs, "E, F of both models", progress):
        q = _attempt(failures, "dataset", atoms, i, configuration_quantities, ev, atoms, where)
        if q is not None:
            raw[i] = q
    if not raw:
        raise ValueError("no configuration could be evaluated by both models")
    offset = {}
    if energy_offset == "per-element":
        offset = fit_element_offsets(
            [configs[i].numbers for i in raw],
            [q["e_acc"] for q in raw.values()],
            [q["e_app"] for q in raw.values()],
        )
        ev.energy_offset = offset
    out = {key: [] for key in ("index", "n_atoms", "e_app", "e_acc", "error", "cos_theta")}
    out.update({key: [] for key in ("norm_a", "norm_f_app", "norm_f_acc", "random_baseline")})
    for i in raw:
        atoms = configs[i]
        q = configuration_quantities(ev, atoms, _where(atoms, i))  # from the cache, with the offset
        out["index"].append(_index(atoms, i))
        out["n_atoms"].append(len(atoms))
        out["e_app"].append(q["e_app"])
        out["e_acc"].append(q["e_acc"])
        out["error"].append((q["e_acc"] - q["e_app"]) / len(atoms) * MEV)
        out["cos_theta"].append(q["cos"])
        out["norm_a"].append(float(np.linalg.norm(q["a"])))
        out["norm_f_app"].append(float(np.linalg.norm(q["f_app"])))
        out["norm_f_acc"].append(float(np.linalg.norm(q["f_acc"])))
        out["random_baseline"].append(random_baseline(len(atoms)))
    cos = np.array(out["cos_theta"])
    error = np.array(out["error"])
    finite = cos[np.isfinite(cos)]
    summary = {
        "n_configs": len(raw),
        "rmse": rmse(error),
        "mae": float(np.mean(np.abs(error))),
        "mean_error": float(np.mean(error)),
        "mean_abs_cos": _mean_or_nan(np.abs(finite)),
        "median_abs_cos": float(np.median(np.abs(finite))) if finite.size else float("nan"),
        "fraction_abs_cos_above_0.5": _mean_or_nan(np.abs(finite) > 0.5),
        "fraction_positive_cos": _mean_or_nan(finite > 0),
        "n_undefined_cos": int(cos.size - finite.size),
        "random_baseline": float(np.mean(out["random_baseline"])),
        "random_mean_abs_cos": float(np.mean(np.sqrt(2.0 / np.pi) * np.array(out["random_baseline"]))),
    }
    return {
        "configs": out,
        "summary": summary,
        "energy_offset": {"mode": energy_offset, "per_element_ev": {str(z): c for z, c in offset.items()}},
    }


# -- Fig. 1c: |cos| against the energy above the local minimum ---------------------------------------------


def energy_above_minimum(
    ev: Evaluator,
    configs: Sequence[Atoms],
    reference: str = "auto",
    e_min_key: str = "e_min",
    minimum_key: str = "minimum_id",
    relax_fmax: float = 0.01,
    relax_steps: int = 1000,
    progress: bool = True,
    failures: list | None = None,
) -> dict:
    """Delta E = E_acc(R) - E_min for every configuration, with E_min found as ``reference`` says
    (see ``AdversarialSettings``). Returns delta_e (eV), delta_e_per_atom (meV/atom), e_min (eV), the
    reference used and, for "relax", how many relaxations did not converge. A failed relaxation gives NaN
    for the configurations of its group."""
    if reference not in ENERGY_REFERENCES:
        raise ValueError(f"energy_reference must be one of {ENERGY_REFERENCES}, got {reference!r}")
    if reference == "auto":
        reference = "key" if all(e_min_key in atoms.info for atoms in configs) else "relax"
    e_acc = np.array([ev.energy("accurate", atoms, _where(atoms, i)) for i, atoms in enumerate(configs)])
    not_converged = 0
    if reference == "key":
        missing = [_index(atoms, i) for i, atoms in enumerate(configs) if e_min_key not in atoms.info]
        if missing:
            raise ValueError(
                f"energy_reference 'key' needs info key {e_min_key!r} in every configuration; missing in "
                f"{len(missing)} (first: configuration {missing[0]})"
            )
        e_min = np.array([float(atoms.info[e_min_key]) for atoms in configs])
        described = f"key {e_min_key!r} of the dataset"
    elif reference == "lowest":
        groups = [tuple(sorted(atoms.numbers)) for atoms in configs]
        lowest = {}
        for group, e in zip(groups, e_acc, strict=True):
            lowest[group] = min(e, lowest.get(group, np.inf))
        e_min = np.array([lowest[group] for group in groups])
        described = "lowest accurate energy of the same composition in the dataset"
    else:
        grouped = all(minimum_key in atoms.info for atoms in configs)
        e_of_group: dict = {}
        e_min = np.empty(len(configs))
        for i, atoms, where in _each(configs, "relax to the minima", progress):
            group = atoms.info[minimum_key] if grouped else ("config", i)
            if group not in e_of_group:
                relaxed = _attempt(
                    failures, "energy", atoms, i, ev.relaxed_energy, atoms, relax_fmax, relax_steps, where
                )
                e_of_group[group] = relaxed[0] if relaxed else float("nan")
                not_converged += bool(relaxed) and not relaxed[1]
            e_min[i] = e_of_group[group]
        how = f"accurate model relaxed (FIRE, fixed cell, fmax {relax_fmax} eV/A) from"
        described = (
            f"{how} the first configuration of each {minimum_key!r}"
            if grouped
            else f"{how} every configuration"
        )
    n_atoms = np.array([len(atoms) for atoms in configs])
    return {
        "reference": reference,
        "description": described,
        "e_min": e_min.tolist(),
        "delta_e": (e_acc - e_min).tolist(),
        "delta_e_per_atom": ((e_acc - e_min) / n_atoms * MEV).tolist(),
        "n_relaxations_not_converged": int(not_converged),
    }


def cos_vs_energy(cos: Sequence[float], delta_e_per_atom: Sequence[float], bin_size: int = 50) -> dict:
    """Mean |cos(theta)| in bins of bin_size samples sorted by the energy above the minimum (meV/atom)."""
    bins = bin_by_energy(np.asarray(delta_e_per_atom, float), np.abs(np.asarray(cos, float)), bin_size)
    return {"bin_size": bin_size, "bins": bins}


# -- Table 1: distortions along A and along a random direction ---------------------------------------------


def distortion_table(
    ev: Evaluator,
    configs: Sequence[Atoms],
    eps: Sequence[float] = (0.0, 0.1, 0.3, 0.5),
    seed: int = 0,
    direction_sign: int = 1,
    progress: bool = True,
    failures: list | None = None,
) -> dict:
    """RMSE per atom (meV/atom) after moving every configuration by total L2 norm eps (A) along
    direction_sign * A / |A| and along a random unit direction (one per configuration, seeded by
    ``[seed, dataset_index]``, the same for every eps).

    A configuration with A = 0 (the models agree exactly in energy or in forces) has no adversarial direction:
    it is left out of both rows and listed in ``excluded``; configurations whose evaluation failed are left
    out and listed in ``failed`` (and in ``failures``).
    """
    eps = [float(e) for e in eps]
    kinds = ("adversarial", "random")
    errors = {kind: [[] for _ in eps] for kind in kinds}
    excluded, failed = [], []
    no_direction = "A = 0"

    def one(atoms: Atoms, i: int, where: str):
        a = configuration_quantities(ev, atoms, where)["a"]
        if not np.any(a):
            return no_direction
        rng = np.random.default_rng(np.random.SeedSequence([seed, _index(atoms, i)]))
        directions = {
            "adversarial": direction_sign * unit_vector(a),
            "random": random_direction(len(atoms), rng),
        }
        found = {kind: [] for kind in kinds}
        for kind in kinds:
            for e in eps:
                moved = _moved(atoms, distort(atoms.positions, directions[kind], e))
                found[kind].append(_error(ev, moved, f"{where} moved by {e} A along the {kind} direction"))
        return found

    for i, atoms, where in _each(configs, "distortions", progress):
        found = _attempt(failures, "distortion", atoms, i, one, atoms, i, where)
        if found is None:
            failed.append(_index(atoms, i))
            continue
        if found is no_direction:
            excluded.append(_index(atoms, i))
            continue
        for kind in kinds:
            for k in range(len(eps)):
                errors[kind][k].append(found[kind][k])
    return {
        "eps": eps,
        "direction_sign": direction_sign,
        "seed": seed,
        "n_configs": len(configs) - len(excluded) - len(failed),
        "n_excluded": len(excluded),
        "excluded": excluded,
        "failed": failed,
        "adversarial_rmse": [rmse(e) for e in errors["adversarial"]],
        "random_rmse": [rmse(e) for e in errors["random"]],
        "adversarial_errors": errors["adversarial"],
        "random_errors": errors["random"],
    }


# -- Fig. 2a: one Newton step under F_app -------------------------------------------------------------------


def newton_step_experiment(
    ev: Evaluator,
    configs: Sequence[Atoms],
    dt: float = 1.0,
    velocities: str = "rest",
    progress: bool = True,
    failures: list | None = None,
) -> dict:
    """Relative change of |E_acc - E_app| after one time step dt (fs) under F_app, against cos(theta).

    The step is x + v dt + F_app dt^2 / (2 m) with v = 0 ("rest") or the dataset's velocities ("dataset").
    Returns per-configuration cos_theta, errors before and after (meV/atom), relative_change (percent,
    100 (|after| - |before|) / |before|, NaN when before is 0), the largest atomic displacement (A), and a
    summary for cos > 0 and cos < 0: count, fraction whose error grew, median relative change.
    """
    if velocities not in NEWTON_VELOCITIES:
        raise ValueError(f"velocities must be one of {NEWTON_VELOCITIES}, got {velocities!r}")
    out = {key: [] for key in ("index", "cos_theta", "error_before", "error_after")}
    out.update(relative_change=[], max_displacement=[])

    def one(atoms: Atoms, where: str):
        q = configuration_quantities(ev, atoms, where)
        v = None
        if velocities == "dataset":
            if "momenta" not in atoms.arrays:
                raise ValueError(f"{where} has no velocities in the dataset; use newton_velocities 'rest'")
            v = atoms.get_velocities()
        moved = _moved(atoms, newton_step(atoms.positions, q["f_app"], atoms.get_masses(), dt, v))
        before = (q["e_acc"] - q["e_app"]) / len(atoms) * MEV
        after = _error(ev, moved, f"{where} after one Newton step")
        displacement = float(np.linalg.norm(moved.positions - atoms.positions, axis=1).max())
        return q["cos"], before, after, displacement

    for i, atoms, where in _each(configs, "Newton steps", progress):
        found = _attempt(failures, "newton", atoms, i, one, atoms, where)
        if found is None:
            continue
        cos, before, after, displacement = found
        out["index"].append(_index(atoms, i))
        out["cos_theta"].append(cos)
        out["error_before"].append(before)
        out["error_after"].append(after)
        out["relative_change"].append(
            100.0 * (abs(after) - abs(before)) / abs(before) if before != 0 else float("nan")
        )
        out["max_displacement"].append(displacement)
    cos, change = np.array(out["cos_theta"], float), np.array(out["relative_change"], float)
    summary = {}
    for name, mask in (("cos_positive", cos > 0), ("cos_negative", cos < 0)):
        values = change[mask & np.isfinite(change)]
        summary[name] = {
            "n": int(values.size),
            "fraction_error_increased": _mean_or_nan(values > 0),
            "median_relative_change": float(np.median(values)) if values.size else float("nan"),
        }
    return {"dt_fs": dt, "velocities": velocities, **out, "summary": summary}


# -- Fig. 2b: gradient descent on E_app ---------------------------------------------------------------------


def gradient_descent_rollout(
    ev: Evaluator,
    configs: Sequence[Atoms],
    n_steps: int = 30,
    step_size: float = 0.01,
    progress: bool = True,
    failures: list | None = None,
) -> dict:
    """Error along n_steps of gradient descent on E_app, x_{k+1} = x_k + step_size F_app(x_k).

    step_size in A^2/eV. Returns the per-configuration errors (meV/atom) and E_app (eV) at steps 0..n_steps,
    their RMSE per step, the largest atomic displacement from the start (A), and how many roll-outs saw E_app
    rise at some step (a sign that the step size is too large for gradient descent to be stable).
    """

    def one(atoms: Atoms, where: str):
        current = _moved(atoms, atoms.positions)
        errors, energies = [], []
        for step in range(n_steps + 1):
            here = f"{where}, gradient-descent step {step}"
            if step < n_steps:
                e_app, f_app = ev.energy_forces("approx", current, here)
            else:
                e_app = ev.energy("approx", current, here)
            energies.append(e_app)
            errors.append((ev.energy("accurate", current, here) - e_app) / len(atoms) * MEV)
            if step < n_steps:
                current = _moved(current, current.positions + step_size * f_app)
        return errors, energies, float(np.linalg.norm(current.positions - atoms.positions, axis=1).max())

    out = {"index": [], "errors": [], "e_app": [], "max_displacement": []}
    for i, atoms, where in _each(configs, "gradient descent", progress):
        found = _attempt(failures, "gd", atoms, i, one, atoms, where)
        if found is None:
            continue
        out["index"].append(_index(atoms, i))
        for key, value in zip(("errors", "e_app", "max_displacement"), found, strict=True):
            out[key].append(value)
    per_step = np.array(out["errors"], dtype=float).reshape(-1, n_steps + 1)
    return {
        "n_steps": n_steps,
        "step_size": step_size,
        **out,
        "rmse": [rmse(per_step[:, k]) for k in range(n_steps + 1)],
        "mean_abs_error": [_mean_or_nan(np.abs(per_step[:, k])) for k in range(n_steps + 1)],
        "n_e_app_increased": sum(bool(np.any(np.diff(e) > 0)) for e in out["e_app"]),
    }


# -- everything ---------------------------------------------------------------------------------------------


def _first(configs: Sequence[Atoms], n: int | None) -> Sequence[Atoms]:
    return configs if n is None else configs[:n]


def write_json(results: dict, path: Path) -> None:
    """Write atomically (a crash never leaves half a results file)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_jsonable(results), indent=1) + "\n")
    os.replace(tmp, path)


def to_jsonable(value):
    """Plain JSON types, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def run_diagnosis(
    approx,
    accurate,
    configs: Sequence[Atoms] | str | Path,
    out_dir: str | Path | None = None,
    settings: AdversarialSettings | None = None,
    labels: dict | None = None,
    progress: bool = True,
    label_keys=None,
    **overrides,
) -> dict:
    """Run the diagnosis of Cubuk & Schoenholz (2020), an approximate model against an accurate one.

    approx, accurate: ASE calculators (e.g. ``MLIPCalculator``, ``BKS``, tblite, EMT).
    configs: a list of Atoms, or the path of a dataset (see ``read_configurations``).
    out_dir: where to keep ``evaluations.jsonl`` (every model evaluation, appended as computed, so a rerun
        with the same out_dir resumes without recomputing) and ``results.json`` (rewritten after each
        experiment). None keeps everything in memory. ``write_report(results, out_dir)`` adds the markdown
        report and the figures.
    settings / overrides: an ``AdversarialSettings``, and/or its fields as keywords (``gd_steps=10``).
    labels: names of the two models for the cache ({"approx": ..., "accurate": ...}); a rerun must give
        the same.
    label_keys: a ``mlipbias.datasets.LabelKeys``: where a dataset file that is not an ase.db keeps its
        reference energies and forces (for ``use_dataset_labels``).

    Returns the results dict (all numbers, units in ``results["units"]``).
    """
    from mlipbias import __version__

    settings = replace(settings or AdversarialSettings(), **overrides)
    data_path = None
    if isinstance(configs, str | Path):
        data_path = str(configs)
        configs = read_configurations(configs, settings.max_configs, label_keys)
    configs = [_numbered(atoms, i) for i, atoms in enumerate(_first(configs, settings.max_configs))]
    if not configs:
        raise ValueError("the dataset holds no configurations")
    out = Path(out_dir) if out_dir is not None else None
    failures = [] if settings.skip_failed else None
    ev = Evaluator(approx, accurate, out / "evaluations.jsonl" if out else None, labels)
    results = {
        "format": RESULTS_FORMAT,
        "version": 1,
        "mlipbias_version": __version__,
        "units": {
            "energies": "eV",
            "errors": "meV/atom, (E_acc - E_app) / N",
            "delta_e_per_atom": "meV/atom",
            "eps": "A (total L2 norm over 3N components)",
            "A": "eV^2/A",
            "forces": "eV/A",
            "relative_change": "percent",
            "gd_step_size": "A^2/eV",
            "dt": "fs",
        },
        "settings": asdict(settings),
        "models": ev.labels,
        "dataset": {"path": data_path, "n_configs": len(configs)},
        "failures": [] if failures is None else failures,  # the list the experiments append to
        "complete": False,
    }

    def save(stage: str):
        results["calls"] = {**ev.n_calls, "relaxations": ev.n_relaxations}
        results["last_stage"] = stage
        if out is not None:
            write_json(results, out / "results.json")

    with ev:
        if settings.use_dataset_labels:
            _add_dataset_labels(ev, configs)
        ev.verify(configs[0], _where(configs[0], 0))
        results.update(evaluate_dataset(ev, configs, settings.energy_offset, progress, failures))
        evaluated = set(results["configs"]["index"])
        configs = [atoms for atoms in configs if atoms.info["dataset_index"] in evaluated]
        save("dataset")
        if "energy" in settings.experiments:
            above = energy_above_minimum(
                ev,
                configs,
                settings.energy_reference,
                settings.e_min_key,
                settings.minimum_key,
                settings.relax_fmax,
                settings.relax_steps,
                progress,
                failures,
            )
            results["energy_above_minimum"] = above
            results["cos_vs_energy"] = cos_vs_energy(
                results["configs"]["cos_theta"], above["delta_e_per_atom"], settings.bin_size
            )
            save("energy")
        if "distortion" in settings.experiments:
            results["distortion"] = distortion_table(
                ev,
                _first(configs, settings.distortion_configs),
                settings.eps,
                settings.seed,
                settings.direction_sign,
                progress,
                failures,
            )
            save("distortion")
        if "newton" in settings.experiments:
            subset = _first(configs, settings.newton_configs)
            results["newton"] = newton_step_experiment(
                ev, subset, settings.newton_dt, settings.newton_velocities, progress, failures
            )
            save("newton")
        if "gd" in settings.experiments:
            subset = _first(configs, settings.gd_configs)
            results["gd"] = gradient_descent_rollout(
                ev, subset, settings.gd_steps, settings.gd_step_size, progress, failures
            )
            save("gd")
        results["complete"] = True
        save("complete")
    return results


def _numbered(atoms: Atoms, position: int) -> Atoms:
    """A copy that knows its dataset index (and keeps the stored labels), so filtering keeps the names."""
    copy = atoms.copy()
    copy.info.setdefault("dataset_index", position)
    copy.calc = atoms.calc
    return copy


def _add_dataset_labels(ev: Evaluator, configs: Sequence[Atoms]) -> None:
    for i, atoms in enumerate(configs):
        stored = atoms.calc.results if atoms.calc is not None else {}
        if "energy" not in stored or "forces" not in stored:
            raise ValueError(
                f"{_where(atoms, i)} has no stored energy and forces; "
                "use_dataset_labels needs both in the dataset"
            )
        ev.add_known("accurate", atoms, float(stored["energy"]), np.asarray(stored["forces"], float))
