"""The two kinds of Dask task of the loop: a walker, and the label of one candidate.

Both are plain functions of picklable arguments, so they run on any dask.distributed worker
(a LocalCluster, or a SLURM/PBS cluster through dask-jobqueue) and can be retried. A label task
writes its own row: it claims the candidate's sample key in the dataset
(:mod:`mlipbias.sample_claims`), calls the oracle and writes the labelled structure with
``write_once``, or, when the oracle failed or a reference force exceeds ``max_force``, writes the
structure and the reason to the rejects database under the same key. A worker that dies after
``write_once`` loses nothing; one that dies before leaves a claim whose owner is gone, which the
retried task takes over. The database must be on a file system every worker sees.
"""

from __future__ import annotations

import json
import time

import numpy as np
from ase import Atoms

# Oracles are built once per worker process (an xTB or LAMMPS instance is expensive to start).
_ORACLES: dict[str, object] = {}

LABELLED = "labelled"
REJECTED = "rejected"
SKIPPED = "skipped"  # done already, or claimed by a live process


def run_walker(explorer: str, model_path: str, start: Atoms, settings, seed: int, training=None):
    """One walker: the explorer ``explorer`` of :data:`mlipbias.dynamics.EXPLORERS` (``training``:
    the :class:`mlipbias.dynamics.TrainingData` of the model)."""
    from mlipbias.dynamics import get_explorer
    from mlipbias.models.model import one_torch_thread

    started = time.perf_counter()
    with one_torch_thread():
        exploration = get_explorer(explorer)(model_path, start, settings, seed, training)
    exploration.seconds = time.perf_counter() - started
    return exploration


def _oracle(name: str, options: dict):
    from mlipbias.oracles import make_oracle

    key = json.dumps([name, options], sort_keys=True)
    if key not in _ORACLES:
        _ORACLES[key] = make_oracle(name, **options)
    return _ORACLES[key]


def label_candidate(
    dataset_path: str,
    rejects_path: str,
    key: str,
    atoms: Atoms,
    oracle_name: str,
    oracle_options: dict,
    max_force: float,
    min_distance: float = 0.5,
    provenance: dict | None = None,
) -> dict:
    """Label ``atoms`` under sample key ``key`` and write it (see the module docstring).

    Returns ``{"key", "status": labelled | rejected | skipped, "reason", "seconds"}``. Oracle
    failures and invalid structures are recorded, never raised."""
    from mlipbias import sample_claims
    from mlipbias.datasets import open_dataset
    from mlipbias.oracles import OracleError, attach_results, label

    started = time.perf_counter()
    dataset = open_dataset(dataset_path, create=True)
    rejects = open_dataset(rejects_path, create=True)
    if sample_claims.state(rejects, key).done or not sample_claims.claim(dataset, key):
        return {"key": key, "status": SKIPPED, "reason": "", "seconds": 0.0}
    pairs = {"oracle": oracle_name.lower(), **(provenance or {})}
    bare = Atoms(atoms.get_chemical_symbols(), positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    reason = ""
    try:
        results = label(bare, _oracle(oracle_name, oracle_options), name=key, min_distance=min_distance)
        largest = float(np.max(np.linalg.norm(results["forces"], axis=1)))
        if largest > max_force:
            reason = f"largest reference force {largest:.4g} eV/A > select.max_force = {max_force:g}"
    except (OracleError, ValueError) as error:
        reason = str(error)
    if reason:
        pairs["reason"] = reason[:500]
        sample_claims.write_once(
            rejects,
            key,
            bare,
            pairs,
            data={"atom_uncertainty": atoms.arrays.get("atom_uncertainty", np.zeros(len(atoms)))},
        )
        sample_claims.release(dataset, key)
        return {"key": key, "status": REJECTED, "reason": reason, "seconds": time.perf_counter() - started}
    sample_claims.write_once(dataset, key, attach_results(bare, results, oracle_name), pairs)
    return {"key": key, "status": LABELLED, "reason": "", "seconds": time.perf_counter() - started}
