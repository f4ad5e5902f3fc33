"""Train the Cubuk & Schoenholz (2020) graph network (mlipbias.models.gnn) from a YAML config.

    python train_gnn.py gnn_energy.yaml        # energies only
    python train_gnn.py gnn_forces.yaml        # energies and forces

The config names the dataset, the validation fraction (split by mlipbias.datasets.split_dataset),
the output model file, and the `model` (GNNSettings) and `training` (GNNTrainingSettings) keys.
The best model so far is written to the output after every epoch that improves the validation
loss; the validation errors are printed at the end and stored in the file.
"""

from __future__ import annotations

import sys
import time

import yaml

from mlipbias.datasets import load_dataset, split_dataset
from mlipbias.models.gnn import GNNSettings, GNNTrainingSettings, evaluate, train_gnn

KEYS = {"data", "valid_fraction", "split_seed", "output", "model", "training"}


def main(config_path: str) -> None:
    with open(config_path) as handle:
        config = yaml.safe_load(handle)
    unknown = sorted(set(config) - KEYS)
    if unknown:
        known = ", ".join(sorted(KEYS))
        raise SystemExit(f"{config_path}: unknown key(s) {', '.join(unknown)}; known: {known}")
    rows = load_dataset(config["data"])
    fraction = float(config.get("valid_fraction", 0.15))
    train, valid = split_dataset(len(rows), (1 - fraction, fraction), seed=int(config.get("split_seed", 0)))
    settings = GNNSettings.from_dict(config.get("model", {}))
    training = GNNTrainingSettings.from_dict(config.get("training", {}))
    start = time.time()
    model, history = train_gnn(
        [rows[i] for i in train],
        [rows[i] for i in valid],
        settings=settings,
        training=training,
        out=config["output"],
        description=f"Cubuk & Schoenholz (2020) GNN, {config_path}, data {config['data']}",
    )
    metrics = evaluate(model, [rows[i] for i in valid])
    print(
        f"{config['output']}: {len(train)} training, {len(valid)} validation structures, "
        f"{time.time() - start:.0f} s; validation RMSE {1000 * metrics['energy_rmse']:.2f} meV/atom, "
        f"forces {metrics['force_rmse']:.3f} eV/A"
    )


if __name__ == "__main__":
    main(sys.argv[1])
