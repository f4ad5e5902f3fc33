"""Cost of the default force (and stress) training: epoch time with forces against energies only.

``mlipbias train``'s defaults fit energies, forces and stresses (``force_weight: 1``,
``stress_weight: 1``); energy-only training (``force_weight: 0, stress_weight: 0``) is the peer. Both
train the template's default model (2 x 30 tanh, the SiO2 symmetry functions, a 3-member ensemble,
batch 16) with :func:`mlipbias.models.train` on the same BKS SiO2 96-atom cells (80/20 training /
validation), in one process. The epoch cost is the CPU time per epoch (training steps and the
validation pass; descriptors are computed once before), from the difference of a run of
``epochs + 1`` epochs and one of 1 epoch (after a warm-up run), and the median wall time of an epoch
(``metrics.jsonl``).
Writes ``benchmarks/results/force_training_cost.json`` (``--output``). For a before/after pair, run it
again with ``PYTHONPATH`` pointing to a copy of ``python/`` that holds the earlier ``_core``.

    OMP_NUM_THREADS=1 PYTHONPATH=python .venv/bin/python benchmarks/force_training_cost.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
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
    parser.add_argument("--epochs", type=int, default=4, help="epochs timed with forces")
    parser.add_argument("--energy-epochs", type=int, default=60, help="epochs timed with energies only")
    parser.add_argument("--output", type=Path, default=RESULTS)
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
            "energies only": TrainingSettings(force_weight=0.0, stress_weight=0.0, device="cpu"),
            "defaults (energies, forces, stress)": TrainingSettings(device="cpu"),
        }
        results = {}
        for name, settings in cases.items():

            def run(settings: TrainingSettings, epochs: int, folder: str):
                started = time.process_time()
                history = train(
                    train_data,
                    val_data,
                    uncertainty=UncertaintySettings(methods=("ensemble",)),
                    training=replace(settings, epochs=epochs),
                    output_dir=Path(tmp) / folder,
                    progress=False,
                    log=lambda message: None,
                ).history
                return time.process_time() - started, [r["seconds"] for r in history]

            # CPU time per epoch: the difference of a 1-epoch and an (epochs + 1)-epoch run removes the fixed
            # costs (network set-up, calibration) and is steadier than wall time on a shared machine.
            epochs = args.epochs if settings.force_weight > 0 else args.energy_epochs
            run(settings, 1, f"{name} warm-up")  # first calls of torch and the C++ core
            cpu_one, _ = run(settings, 1, f"{name} 1")
            cpu_more, wall = run(settings, epochs + 1, f"{name} n")
            cpu = (cpu_more - cpu_one) / epochs
            results[name] = {
                "epoch_cpu_seconds": cpu,
                "epoch_wall_seconds": float(np.median(wall)),
                "wall": wall,
            }
            print(
                f"{name}: {cpu:.3f} s CPU, {np.median(wall):.3f} s wall per epoch of {n_train} structures",
                flush=True,
            )
    ratio = {
        kind: results["defaults (energies, forces, stress)"][f"epoch_{kind}_seconds"]
        / results["energies only"][f"epoch_{kind}_seconds"]
        for kind in ("cpu", "wall")
    }
    print(f"ratio (defaults / energies only): {ratio['cpu']:.0f}x CPU time, {ratio['wall']:.0f}x wall time")
    import mlipbias

    payload = {
        "machine": machine(),
        "mlipbias": str(Path(mlipbias.__file__).parent),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "n_train": n_train,
        "n_validation": len(structures) - n_train,
        "epochs": {"forces": args.epochs, "energies only": args.energy_epochs},
        "weights": {
            "energy": defaults.energy_weight,
            "force": defaults.force_weight,
            "stress": defaults.stress_weight,
        },
        "results": results,
        "ratio": ratio,
    }
    args.output.parent.mkdir(exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
