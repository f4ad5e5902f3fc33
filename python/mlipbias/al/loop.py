"""The active-learning loop of seed 002: train -> calibrate -> explore -> select -> label -> append.

Generation 0 labels the initial structures (random perturbations of the start structures, seed
002 Eqs. 32-34, and/or the rows of an existing dataset). Every generation g >= 1 then

1. trains a model on the dataset (90/10 split; warm start from generation g - 1's weights) and
   calibrates its uncertainties on the validation split (conformal prediction, in training);
2. evaluates it on the test set, if any, and stops when the dataset has ``stop.max_size``
   structures, the force RMSE reaches ``stop.force_rmse`` or after ``stop.max_generations``;
3. runs K walkers as Dask tasks from start structures drawn among the initial ones and those
   selected so far; each stops at the calibrated per-atom uncertainty threshold;
4. selects a batch from all walkers' candidates (max-det, max-dist, max-unc or random);
5. labels the batch with the oracle as Dask tasks, each writing its row the moment it exists,
   dropping failed labels and those with a reference force above ``select.max_force`` (the
   reason goes to ``rejects.db``).

Everything is written as it is produced, and each step is skipped when its output exists: the
model file (train), one file per walker (explore), ``selection.json`` (select), one row per
sample key ``al/gen=G/cand=I`` in ``dataset.db`` or ``rejects.db`` (label). ``kill -9`` at any
point and the same command resumes without losing or repeating a label.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms

from mlipbias.al.config import ALConfig
from mlipbias.al.tasks import LABELLED, REJECTED, label_candidate, run_walker
from mlipbias.dynamics.explorer import rng_for

STATE_VERSION = 1
# Keys that may change between a run and its resume (they do not change what was computed).
RESUMABLE_KEYS = ("stop", "dask", "test")


def log_line(message: str) -> None:
    print(message, flush=True)


def write_json(path: Path, payload) -> None:
    """Write JSON atomically: a killed run leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_plain) + "\n")
    os.replace(tmp, path)


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_start_structures(config: ALConfig) -> list[Atoms]:
    """The start structures: every frame of ``start.structures`` (a file or a shipped name)."""
    from mlipbias.structures import default_structure, default_structure_names

    source = config.start.structures
    if Path(source).exists():
        import ase.io

        frames = ase.io.read(source, index=config.start.index)
        frames = frames if isinstance(frames, list) else [frames]
    elif source in default_structure_names():
        frames = [default_structure(source)]
    else:
        raise FileNotFoundError(
            f"config key start.structures = {source!r}: no such file and no shipped structure of that name "
            f"({', '.join(default_structure_names())})"
        )
    if not frames:
        raise ValueError(
            f"config key start.structures = {source!r}: no frames selected by index {config.start.index!r}"
        )
    return [Atoms(a.get_chemical_symbols(), positions=a.positions, cell=a.cell, pbc=a.pbc) for a in frames]


class ActiveLearning:
    """One run of the loop in ``config.output.directory``; :meth:`run` does or resumes it."""

    def __init__(self, config: ALConfig, client, *, progress: bool = True, log=log_line):
        self.config = config
        self.client = client
        self.progress = progress
        self.log = log
        self.directory = config.directory
        self.dataset_path = config.dataset_path
        self.rejects_path = self.directory / "rejects.db"
        self.starts = read_start_structures(config)
        from mlipbias.oracles import make_oracle

        # A misconfigured oracle is the user's error, not a rejected label: fail before any work.
        try:
            make_oracle(config.oracle.name, **config.oracle.options)
        except ValueError as error:
            raise ValueError(f"config section oracle: {error}") from None

    # ---------------------------------------------------------------- state

    def _check_state(self) -> None:
        """A resumed run must have the configuration of the run it continues (except RESUMABLE_KEYS)."""
        path = self.directory / "state.json"
        current = {k: v for k, v in self.config.to_dict().items() if k not in RESUMABLE_KEYS}
        if path.exists():
            stored = json.loads(path.read_text()).get("config", {})
            explore = stored.get("explore")
            if isinstance(explore, dict) and "species_tau" in explore:  # the key's former name
                explore["tau_species"] = explore.pop("species_tau")
            # A key added to the configuration after the run started reads as its default there.
            default = ALConfig().to_dict()
            for section, values in current.items():
                if isinstance(stored.get(section), dict) and isinstance(values, dict):
                    for key in set(values) - set(stored[section]):
                        if values[key] == default.get(section, {}).get(key):
                            stored[section][key] = values[key]
            changed = sorted(
                f"{section}.{key}"
                for section in set(stored) | set(current)
                for key in _keys(stored.get(section)) | _keys(current.get(section))
                if _get(stored.get(section), key) != _get(current.get(section), key)
            )
            if changed:
                raise ValueError(
                    f"{self.directory} holds a run with another configuration "
                    f"(changed: {', '.join(changed)}); use another output.directory, or restore the "
                    "configuration to resume"
                )
        self._state = {"version": STATE_VERSION, "config": current, "generation": 0, "phase": "initial"}
        write_json(path, self._state)

    def _phase(self, generation: int, phase: str) -> None:
        self._state.update(generation=generation, phase=phase)
        write_json(self.directory / "state.json", self._state)
        self.log(f"== generation {generation}: {phase} ==")

    def generation_dir(self, generation: int) -> Path:
        path = self.directory / f"gen_{generation:03d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def dataset_size(self, before_generation: int | None = None) -> int:
        """Labelled structures, or those of generations before ``before_generation`` (what that
        generation's model is trained on, also when a resumed run has labelled more since)."""
        from mlipbias.datasets import open_dataset

        if not self.dataset_path.exists():
            return 0
        db = open_dataset(self.dataset_path)
        if before_generation is None:
            return db.count()
        return db.count(f"al_generation<{int(before_generation)}")

    def done_keys(self) -> set[str]:
        from mlipbias import sample_claims
        from mlipbias.datasets import open_dataset

        done: set[str] = set()
        for path in (self.dataset_path, self.rejects_path):
            if path.exists():
                done |= set(sample_claims.done_keys(open_dataset(path)))
        return done

    # ---------------------------------------------------------------- the loop

    def run(self) -> list[dict]:
        """Run (or resume) until a stop criterion; returns the per-generation summary rows."""
        from mlipbias.al.report import read_summary

        self.directory.mkdir(parents=True, exist_ok=True)
        for path in (self.dataset_path, self.rejects_path):
            create_database(path)
        self._check_state()
        self.initial_generation()
        generation = 1
        while True:
            timings = {}
            started = time.perf_counter()
            self._phase(generation, "train")
            model_path = self.train(generation)
            errors = self.test_errors(generation, model_path)
            timings["train"] = time.perf_counter() - started
            size = self.dataset_size(before_generation=generation)
            reason = self.stop_reason(generation, size, errors)
            if reason:
                self.record(generation, size, errors, timings, {}, {}, final=True, stop=reason)
                self._phase(generation, "finished")
                self.log(f"stopping: {reason}; final model {model_path}")
                break
            started = time.perf_counter()
            self._phase(generation, "explore")
            explorations = self.explore(generation, model_path)
            timings["explore"] = time.perf_counter() - started
            started = time.perf_counter()
            self._phase(generation, "select")
            selection = self.select(generation, model_path)
            timings["select"] = time.perf_counter() - started
            if not selection["keys"]:
                self.record(
                    generation, size, errors, timings, explorations, {}, final=True, stop="no candidates"
                )
                self.log("stopping: the walkers produced no candidates (see the walker files for why)")
                break
            started = time.perf_counter()
            self._phase(generation, "label")
            labels = self.label(generation, selection)
            timings["label"] = time.perf_counter() - started
            self.record(generation, size, errors, timings, explorations, labels)
            generation += 1
        return read_summary(self.directory)

    def stop_reason(self, generation: int, size: int, errors: dict) -> str:
        st = self.config.stop
        if size >= st.max_size:
            return f"the dataset has {size} structures (stop.max_size = {st.max_size})"
        if st.force_rmse is not None and errors.get("force_rmse", np.inf) <= st.force_rmse:
            return f"test force RMSE {errors['force_rmse']:.4g} eV/A <= stop.force_rmse = {st.force_rmse:g}"
        if st.max_generations is not None and generation > st.max_generations:
            return f"{st.max_generations} generations run (stop.max_generations)"
        return ""

    # ---------------------------------------------------------------- generation 0

    def initial_generation(self) -> None:
        """Copy ``initial.dataset`` and label ``initial.n_structures`` perturbed start structures."""
        from mlipbias import sample_claims
        from mlipbias.datasets import load_dataset, open_dataset
        from mlipbias.dynamics.perturb import perturbed

        i = self.config.initial
        done = self.done_keys()
        if i.dataset:
            target = open_dataset(self.dataset_path, create=True)
            for atoms in load_dataset(i.dataset):
                key = f"al/initial/row={atoms.info['db_id']}"
                if key not in done:
                    pairs = {k: v for k, v in atoms.info.items() if k not in ("db_id", "sample_key")}
                    sample_claims.write_once(target, key, atoms, {**pairs, "al_generation": 0})
        tasks = []
        for index in range(i.n_structures):
            key = f"al/gen=0/cand={index}"
            if key in done:
                continue
            start = self.starts[index % len(self.starts)]
            atoms = perturbed(
                start, i.position_amplitude, i.strain_amplitude, rng_for(self.config.seed, 0, index)
            )
            tasks.append((key, atoms, {"al_generation": 0, "al_candidate": index}))
        if tasks:
            self._phase(0, "label")
            self._label_tasks(tasks)
        if self.dataset_size() < 2:
            raise ValueError(
                f"{self.dataset_path}: generation 0 left {self.dataset_size()} labelled structure(s), "
                f"training needs at least 2 (see {self.rejects_path} for rejected ones)"
            )

    # ---------------------------------------------------------------- train

    def train(self, generation: int) -> Path:
        """Train (or resume training) generation ``generation``'s model; returns its path."""
        from mlipbias.cli.train import run_training

        directory = self.generation_dir(generation) / "train"
        config = self.config.train_config(self.dataset_path, directory, self.config.seed + generation)
        if config.model_path.exists():
            self.log(f"{config.model_path} exists")
            return config.model_path
        previous = self.directory / f"gen_{generation - 1:03d}" / "train" / "model.mlip"
        init = previous if self.config.train.warm_start and previous.exists() else None
        self.log(f"training on {self.dataset_size()} structures")
        # save_model writes atomically, so the model file marks a finished training.
        run_training(config, resume=True, progress=self.progress, log=self.log, init_model=init)
        return config.model_path

    def test_errors(self, generation: int, model_path: Path) -> dict:
        """Energy (eV/atom) and force (eV/A) RMSE on ``test.path`` (empty without a test set)."""
        path = self.generation_dir(generation) / "test_errors.json"
        if path.exists():
            return json.loads(path.read_text())
        if not self.config.test.path:
            return {}
        errors = model_errors(model_path, self.config.test.path, self.config.test.selection)
        write_json(path, errors)
        self.log(
            f"test set: energy RMSE {1000 * errors['energy_rmse']:.3g} meV/atom, force RMSE "
            f"{errors['force_rmse']:.4g} eV/A"
            + (f", stress RMSE {1000 * errors['stress_rmse']:.3g} meV/A^3" if "stress_rmse" in errors else "")
        )
        return errors

    # ---------------------------------------------------------------- explore

    def walker_starts(self, generation: int) -> list[Atoms]:
        """Start of each walker: drawn among the start structures and the structures selected and
        labelled in earlier generations (seed 002: "initialized from the initial configuration or
        configurations selected in later iterations")."""
        from mlipbias.datasets import load_dataset

        pool = list(self.starts)
        if self.dataset_path.exists():
            pool += [a for a in load_dataset(self.dataset_path) if int(a.info.get("al_generation", 0)) >= 1]
        starts = []
        for k in range(self.config.explore.walkers):
            atoms = pool[int(rng_for(self.config.seed, generation, k, 1).integers(len(pool)))]
            starts.append(
                Atoms(atoms.get_chemical_symbols(), positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            )
        return starts

    def explore(self, generation: int, model_path: Path) -> dict:
        """Run the walkers that have no output yet as Dask tasks; write each one's candidates
        (``walkers/walker_KK.extxyz``) and summary (``.json``) as it arrives."""
        import ase.io
        from dask.distributed import as_completed
        from tqdm import tqdm

        from mlipbias.dynamics.explorer import TrainingData

        e = self.config.explore
        folder = self.generation_dir(generation) / "walkers"
        folder.mkdir(exist_ok=True)
        starts = self.walker_starts(generation)
        # The rows this generation's model was trained on (adversarial sampling's reference).
        training = TrainingData(str(self.dataset_path), f"al_generation<{int(generation)}")
        futures = {}
        for k in range(e.walkers):
            if (folder / f"walker_{k:02d}.json").exists():
                continue
            seed = int(rng_for(self.config.seed, generation, k, 2).integers(2**31))
            future = self.client.submit(
                run_walker,
                e.explorer,
                str(model_path),
                starts[k],
                e.walker_settings(k),
                seed,
                training,
                pure=False,
                retries=self.config.dask.retries,
            )
            futures[future] = k
        bar = tqdm(
            total=e.walkers,
            initial=e.walkers - len(futures),
            desc=f"walkers (gen {generation})",
            unit="walker",
            file=sys.stderr,
            disable=None if self.progress else True,
        )
        for future in as_completed(futures):
            k = futures[future]
            exploration = future.result()
            path = folder / f"walker_{k:02d}.extxyz"
            tmp = path.with_name(path.name + ".tmp")
            ase.io.write(tmp, exploration.candidates, format="extxyz")
            os.replace(tmp, path)
            if exploration.trajectory is not None:
                write_trajectory(folder / f"walker_{k:02d}.traj.npz", exploration.trajectory)
            summary = {**exploration.summary(), "pressure": e.walker_settings(k).pressure}
            write_json(folder / f"walker_{k:02d}.json", summary)  # marks the walker done
            bar.update(1)
        bar.close()
        summaries = [json.loads((folder / f"walker_{k:02d}.json").read_text()) for k in range(e.walkers)]
        reasons: dict[str, int] = {}
        for s in summaries:
            reasons[s["stop_reason"]] = reasons.get(s["stop_reason"], 0) + 1
        return {
            "walkers": len(summaries),
            "candidates": int(sum(s["n_candidates"] for s in summaries)),
            "md_steps": int(sum(s["steps"] for s in summaries)),
            "stop_reasons": reasons,
            "max_atom_uncertainty": float(max(s["max_atom_uncertainty"] for s in summaries)),
        }

    def candidates(self, generation: int) -> tuple[list[Atoms], list[int]]:
        """The pool: every walker's candidates in walker order, and each one's walker."""
        import ase.io

        folder = self.generation_dir(generation) / "walkers"
        pool, walker = [], []
        for k in range(self.config.explore.walkers):
            path = folder / f"walker_{k:02d}.extxyz"
            frames = ase.io.read(path, index=":") if path.stat().st_size else []
            pool += frames
            walker += [k] * len(frames)
        return pool, walker

    # ---------------------------------------------------------------- select

    def select(self, generation: int, model_path: Path) -> dict:
        """Select the batch (``selection.json``, written before any label of it)."""
        path = self.generation_dir(generation) / "selection.json"
        if path.exists():
            return json.loads(path.read_text())
        s = self.config.select
        pool, walker = self.candidates(generation)
        room = self.config.stop.max_size - self.dataset_size()
        size = min(s.batch_size, room, len(pool))
        indices = (
            select_candidates(
                pool,
                s.method,
                size,
                model_path,
                noise=s.max_det_noise,
                log=self.log,
                rng=rng_for(self.config.seed, generation, 3),
            )
            if size > 0
            else np.zeros(0, dtype=int)
        )
        selection = {
            "method": s.method,
            "pool": len(pool),
            "indices": [int(i) for i in indices],
            "walkers": [int(walker[i]) for i in indices],
            "keys": [f"al/gen={generation}/cand={int(i)}" for i in indices],
        }
        write_json(path, selection)
        self.log(f"selected {len(indices)} of {len(pool)} candidates by {s.method}")
        return selection

    # ---------------------------------------------------------------- label

    def label(self, generation: int, selection: dict) -> dict:
        pool, _ = self.candidates(generation)
        done = self.done_keys()
        tasks = []
        chosen = zip(selection["indices"], selection["walkers"], selection["keys"], strict=True)
        for index, walker, key in chosen:
            if key in done:
                continue
            atoms = pool[index]
            provenance = {
                "al_generation": generation,
                "al_candidate": index,
                "al_walker": walker,
                "al_step": int(atoms.info.get("step", 0)),
                "model_uncertainty": float(atoms.info.get("uncertainty", np.nan)),
            }
            tasks.append((key, atoms, provenance))
        self._label_tasks(tasks)
        return self.label_counts(selection["keys"])

    def label_counts(self, keys) -> dict:
        from mlipbias import sample_claims
        from mlipbias.datasets import open_dataset

        counts = {"selected": len(keys), LABELLED: 0, REJECTED: 0}
        for name, path in ((LABELLED, self.dataset_path), (REJECTED, self.rejects_path)):
            if path.exists():
                done = sample_claims.done_keys(open_dataset(path))
                counts[name] = sum(key in done for key in keys)
        return counts

    def _label_tasks(self, tasks) -> None:
        """Submit one label task per (key, atoms, provenance) and wait for all; each writes its row."""
        from dask.distributed import as_completed
        from tqdm import tqdm

        o = self.config.oracle
        futures = [
            self.client.submit(
                label_candidate,
                str(self.dataset_path),
                str(self.rejects_path),
                key,
                atoms,
                o.name,
                dict(o.options),
                self.config.select.max_force,
                o.min_distance,
                provenance,
                pure=False,
                retries=self.config.dask.retries,
            )
            for key, atoms, provenance in tasks
        ]
        bar = tqdm(
            total=len(futures),
            desc="labels",
            unit="label",
            file=sys.stderr,
            disable=None if self.progress else True,
        )
        for future in as_completed(futures):
            result = future.result()
            if result["status"] == REJECTED:
                self.log(f"{result['key']}: rejected: {result['reason']}")
            bar.update(1)
        bar.close()

    # ---------------------------------------------------------------- summary

    def record(
        self, generation, size, errors, timings, explorations, labels, *, final=False, stop=""
    ) -> None:
        from mlipbias.al.report import append_summary

        row = {
            "generation": generation,
            "dataset_size": size,
            **{f"test_{k}": v for k, v in errors.items()},
            **{f"explore_{k}": v for k, v in explorations.items()},
            **{f"labels_{k}": v for k, v in labels.items()},
            **{f"seconds_{k}": round(v, 3) for k, v in timings.items()},
            "final": final,
            "stop": stop,
        }
        append_summary(self.directory, row, log=self.log)


def write_trajectory(path: Path, trajectory: dict) -> None:
    """A walker's trajectory (``explore.trajectory_interval``) as .npz, atomically."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **trajectory)
    os.replace(tmp, path)


def read_trajectories(directory, generation: int) -> list[dict]:
    """The trajectories of generation ``generation``'s walkers in walker order (those written):
    the arrays of :attr:`Exploration.trajectory`, ``walker`` (its number) and ``steps`` (the MD
    steps it ran, from its summary)."""
    folder = Path(directory) / f"gen_{generation:03d}" / "walkers"
    out = []
    for path in sorted(folder.glob("walker_*.traj.npz")):
        summary = json.loads(path.with_name(path.name.replace(".traj.npz", ".json")).read_text())
        with np.load(path) as data:
            out.append(
                {**{k: data[k] for k in data.files}, "walker": int(path.name[7:9]), "steps": summary["steps"]}
            )
    return out


def create_database(path: Path) -> None:
    """Create an empty ase.db (with the sample-key table) at ``path`` unless it exists, atomically:
    ase creates its tables in several commits, and a run killed among them would leave a file that
    is not an ase.db. It is built under a temporary name and renamed."""
    import ase.db

    from mlipbias import sample_claims

    if path.exists():
        return
    tmp = path.with_name(path.name + ".creating")
    tmp.unlink(missing_ok=True)
    sample_claims.done_keys(ase.db.connect(str(tmp), type="db", use_lock_file=False, append=True))
    os.replace(tmp, path)


def _keys(section) -> set:
    return set(section) if isinstance(section, dict) else {""}


def _get(section, key):
    return section.get(key) if isinstance(section, dict) else section


def select_candidates(
    pool: list[Atoms], method: str, size: int, model_path, *, noise: float = 0.0, rng=None, log=log_line
) -> np.ndarray:
    """Indices of ``size`` candidates of ``pool`` by ``method`` (:mod:`mlipbias.uq.selection`).

    max_unc ranks by the calibrated U each walker recorded; max_det and max_dist use the model's
    sketched gradient features of each structure (the mean of its atoms' features, seed 002 Eq. 2)
    with the posterior precision (max_det) or the training features (max_dist) of the model."""
    from mlipbias.uq.selection import select_batch

    if method == "random":
        return np.sort(rng.choice(len(pool), size=size, replace=False))
    if method == "max_unc":
        return select_batch("max_unc", size, uncertainty=[a.info["uncertainty"] for a in pool])
    from mlipbias.models import AtomsData, load_model
    from mlipbias.models.model import one_torch_thread
    from mlipbias.models.training import network_features

    model = load_model(model_path)
    if model.gradient is None:
        raise ValueError(f"select.method = {method} needs gradient features, and {model_path} has none")
    data = AtomsData(pool, model.descriptor, keep_neighbours=False, labels=False, progress=False)
    net = model.network
    with one_torch_thread():
        phi = network_features(net, data, sketch=model.gradient.sketch(net.energy_scale))
    structure = np.repeat(np.arange(len(pool)), data.n_atoms)
    features = np.zeros((len(pool), phi.shape[1]))
    np.add.at(features, structure, phi)
    features /= data.n_atoms[:, None]
    if method == "max_det":
        precision = model.gradient.precision_energy
        try:
            return select_batch("max_det", size, features=features, precision=precision, noise=noise)
        except ValueError as error:
            # Near-duplicate candidates leave no posterior variance for a full batch: regularise, and say so.
            variance = np.einsum("ij,jk,ik->i", features, precision, features)
            noise = max(noise, 1e-6 * float(variance.max()))
            log(f"max_det: {error}; selecting again with max_det_noise = {noise:.3g}")
            return select_batch("max_det", size, features=features, precision=precision, noise=noise)
    return select_batch("max_dist", size, features=features, train_features=model.gradient.train_energy)


def model_errors(model_path, test_path, selection=None) -> dict:
    """Energy RMSE per atom (eV/atom), force RMSE per component (eV/A) and, where the test set has
    stresses, stress RMSE per Voigt component (eV/A^3) of a model on a labelled ase.db."""
    from mlipbias.datasets import load_dataset
    from mlipbias.models import AtomsData, load_model
    from mlipbias.models.evaluation import stress_accuracy

    model = load_model(model_path)
    test = load_dataset(test_path, selection)
    if not test:
        raise ValueError(f"config key test.path: {test_path} has no structures matching {selection!r}")
    data = AtomsData(test, model.descriptor, progress=False)
    p = model.predict(data, None, forces=data.has_forces)
    errors = {
        "n_test": len(test),
        "energy_rmse": float(np.sqrt(np.mean(((p.energy - data.energy) / data.n_atoms) ** 2))),
    }
    if data.has_forces:
        errors["force_rmse"] = float(np.sqrt(np.mean((p.forces - data.forces) ** 2)))
    stress = stress_accuracy(p, data)
    if stress is not None:
        errors["stress_rmse"] = stress["rmse"]
    return errors
