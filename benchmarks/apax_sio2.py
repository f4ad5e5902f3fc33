"""apax's GM-NN trained on the data of ``examples/sio2_gmnn``, against our GM-NN of that example.

The same 200 BKS structures (``examples/sio2_gmnn/work/sio2.db``, from its ``data.yaml``) and the same
split as ``mlipbias train`` makes of them (``split_dataset`` with the config's fractions and seed: 160
training, 20 validation, 20 test); apax's model with our settings: Gaussian basis (7 functions from
0.5 A, 6 A cosine cutoff), 5 radial functions, 8 contraction groups, network 64-64 with the
neural-tangent parameterization, loss energy 1 : forces 4, seed 002's learning rates (network 0.03,
species-pair coefficients 0.02, shifts 0.05, scales 0.001) decayed linearly to 1/30 over the run (ours:
exponentially, the same end point), batch 8, 30 epochs by default (ours: 60; the recorded run used 30
to finish on the shared cores). apax keeps its own defaults elsewhere (float32 descriptor and network,
per-element shift by regression, force-RMS scale). The test errors of both
models come from one function (energy RMSE per atom, force RMSE per component) on the same 20 structures.

    OMP_NUM_THREADS=1 PYTHONPATH=python:benchmarks .venv/bin/python benchmarks/apax_sio2.py   # under nice

Results: ``benchmarks/results/apax_sio2.json``; apax's run folder ``benchmarks/results/quick/apax_sio2``
(ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from machine_info import machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "apax_sio2.json"
WORK = ROOT / "benchmarks" / "results" / "quick" / "apax_sio2"


def split(db: Path):
    """Train, validation and test structures as ``examples/sio2_gmnn/train.yaml`` splits them."""
    from mlipbias.datasets import read_labelled, split_dataset

    structures = read_labelled(str(db), None, require_forces=True)
    parts = split_dataset(len(structures), [0.8, 0.1, 0.1], seed=0)
    return [[structures[i] for i in part] for part in parts]


def labelled_copy(atoms):
    """Energy and forces only (apax's loss here has no stress)."""
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    return out


def errors(structures, calculator) -> dict:
    """Energy RMSE per atom (meV/atom) and force RMSE per component (eV/A)."""
    de, df = [], []
    for atoms in structures:
        a = atoms.copy()
        a.calc = calculator
        de.append((a.get_potential_energy() - atoms.get_potential_energy()) / len(a))
        df.append((a.get_forces() - atoms.get_forces()).ravel())
    return {
        "energy_rmse_mev_per_atom": 1e3 * float(np.sqrt(np.mean(np.square(de)))),
        "force_rmse_ev_per_a": float(np.sqrt(np.mean(np.square(np.concatenate(df))))),
        "n_structures": len(structures),
    }


def apax_config(epochs: int, n_train: int, n_valid: int) -> dict:
    return {
        "n_epochs": epochs,
        "seed": 0,
        "data": {
            "directory": str(WORK),
            "experiment": "gmnn_64",
            "train_data_path": str(WORK / "train.extxyz"),
            "val_data_path": str(WORK / "valid.extxyz"),
            "n_train": n_train,
            "n_valid": n_valid,
            "batch_size": 8,
            "valid_batch_size": n_valid,
        },
        "model": {
            "name": "gmnn",
            "basis": {"name": "gaussian", "n_basis": 7, "r_min": 0.5, "r_max": 6.0},
            "n_radial": 5,
            "n_contr": 8,
            "nn": [64, 64],
            "use_ntk": True,
            "calc_stress": False,
        },
        "loss": [
            {"name": "energy", "loss_type": "mse", "weight": 1.0},
            {"name": "forces", "loss_type": "mse", "weight": 4.0},
        ],
        "metrics": [{"name": "energy", "reductions": ["mae"]}, {"name": "forces", "reductions": ["mae"]}],
        "optimizer": {
            "name": "adam",
            "nn_lr": 0.03,
            "emb_lr": 0.02,
            "shift_lr": 0.05,
            "scale_lr": 0.001,
            "schedule": {"name": "linear", "end_value": 0.001},
        },
        "callbacks": [{"name": "csv"}],
        "progress_bar": {"disable_epoch_pbar": True, "disable_batch_pbar": True},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=str(ROOT / "examples/sio2_gmnn/work/sio2.db"))
    parser.add_argument("--ours", default=str(ROOT / "examples/sio2_gmnn/sio2_gmnn.mlip"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--evaluate-only", action="store_true", help="test the best checkpoint of an earlier (or running) run"
    )
    args = parser.parse_args(argv)
    if not Path(args.db).is_file():
        raise SystemExit(
            f"{args.db} is missing: run `mlipbias data generate -c examples/sio2_gmnn/data.yaml`"
        )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from apax.md import ASECalculator
    from apax.train.run import run

    from mlipbias.calculators import MLIPCalculator

    train, valid, test = split(Path(args.db))
    WORK.mkdir(parents=True, exist_ok=True)
    write(WORK / "train.extxyz", [labelled_copy(a) for a in train])
    write(WORK / "valid.extxyz", [labelled_copy(a) for a in valid])
    config = apax_config(args.epochs, len(train), len(valid))
    start, cpu = time.perf_counter(), time.process_time()
    if not args.evaluate_only:
        run(config)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    log = (WORK / "gmnn_64" / "log.csv").read_text().splitlines()
    apax_model = ASECalculator(WORK / "gmnn_64")
    results = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": machine(),
            "command": " ".join(sys.argv),
            "split": {"train": len(train), "validation": len(valid), "test": len(test)},
            "apax_config": config,
        },
        "apax": {
            **errors(test, apax_model),
            "epochs_done": len(log) - 1,
            "training_wall_s": wall,
            "training_cpu_s": cpu,
        },
        "ours": errors(test, MLIPCalculator(args.ours)),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results[k] for k in ("apax", "ours")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
