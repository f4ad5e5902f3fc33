"""Cost of the default force (and stress) training: epoch time with forces against energies only.

``mlipbias train``'s defaults fit energies, forces and stresses (``force_weight: 1``,
``stress_weight: 1``); energy-only training (``force_weight: 0, stress_weight: 0``) is the peer. Both
train the template's default model (2 x 30 tanh, the SiO2 symmetry functions, a 3-member ensemble,
batch 16) with :func:`mlipbias.models.train` on the same BKS SiO2 96-atom cells (80/20 training /
validation) for ``--epochs`` epochs, in one process; the epoch time is the mean of
``metrics.jsonl``'s ``seconds`` (training steps and the validation pass, after descriptors were
computed once). Writes ``benchmarks/results/force_training_cost.json``.

    OMP_NUM_THREADS=1 PYTHONPATH=python .venv/bin/python benchmarks/force_training_cost.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from machine_info import machine

from mlipbias.datasets import generate, load_dataset
from mlipbias.descriptors import SymmetryFunctions
from mlipbias.models import AtomsData, TrainingSettings, UncertaintySettings, train

RESULTS = Path(__file__).parent / "results" / "force_training_cost.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="ase.db of BKS SiO2 cells (made if missing)")
    parser.add_argument("--structures", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.data or Path(tmp) / "sio2.db"
        if not path.exists():
            from mlipbias.structures import default_structure

            generate(
                path, default_structure("sio2-amorphous-96"), "bks", n_samples=args.structures, progress=False
            )
        structures = load_dataset(path, f"id<={args.structures}")
        descriptor = SymmetryFunctions.defaults("SiO2")
        n_train = int(0.8 * len(structures))
        train_data = AtomsData(structures[:n_train], descriptor)
        val_data = AtomsData(structures[n_train:], descriptor)
        defaults = TrainingSettings()
        cases = {
            "energies only": TrainingSettings(
                epochs=args.epochs, force_weight=0.0, stress_weight=0.0, device="cpu"
            ),
            "defaults (energies, forces, stress)": TrainingSettings(epochs=args.epochs, device="cpu"),
        }
        results = {}
        for name, settings in cases.items():
            out = Path(tmp) / name.split()[0]
            history = train(
                train_data,
                val_data,
                uncertainty=UncertaintySettings(methods=("ensemble",)),
                training=settings,
                output_dir=out,
                progress=False,
                log=lambda message: None,
            ).history
            seconds = [r["seconds"] for r in history]
            results[name] = {"epoch_seconds": float(np.mean(seconds)), "all": seconds}
            print(f"{name}: {np.mean(seconds):.3f} s per epoch of {n_train} structures", flush=True)
    ratio = (
        results["defaults (energies, forces, stress)"]["epoch_seconds"]
        / results["energies only"]["epoch_seconds"]
    )
    print(f"ratio (defaults / energies only): {ratio:.0f}x")
    payload = {
        "machine": machine(),
        "n_train": n_train,
        "n_validation": len(structures) - n_train,
        "epochs": args.epochs,
        "weights": {
            "energy": defaults.energy_weight,
            "force": defaults.force_weight,
            "stress": defaults.stress_weight,
        },
        "results": results,
        "ratio": ratio,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
