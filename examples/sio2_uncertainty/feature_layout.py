"""Layouts of sketched gradient features and the size of the distance reference set, measured.

Seed 002 (Methods, Eqs. 20-21) sketches the gradient of each dense layer and *sums* the per-layer
sketches into one k-vector (one network shared by all species). mlipbias *concatenates* them per
element network and layer (K = elements x layers x k, ``docs/model_file.md``). This script compares,
at the same total feature count K, on one energies-only BP-NN for BKS SiO2:

* ``concat``  - ours: k per element and layer, concatenated (K = E L k);
* ``layer-sum`` - seed 002's sum over layers, kept separate per element network (k' = L k, K = E k');
* ``all-sum`` - the sum over layers and element networks, one k'' = E L k vector per atom.

For each layout: Spearman's rho between the per-atom posterior and distance uncertainties and the
norm of each atom's force error, on held-out in-domain displacements and on larger (OOD) ones,
for three sketch seeds. It also measures the distance uncertainty against all training atoms vs
a greedy max-dist subset of 512 (the former default of ``uncertainty.atom_subset``).

    nice python examples/sio2_uncertainty/feature_layout.py   # writes feature_layout.md
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from mlipbias.datasets import generate, load_dataset
from mlipbias.models import AtomsData, load_model, save_model
from mlipbias.models.config import DescriptorSettings, make_descriptor
from mlipbias.models.training import (
    ModelSettings,
    TrainingSettings,
    UncertaintySettings,
    network_features,
    train,
)
from mlipbias.structures import default_structure
from mlipbias.uq.gradient_features import GradientFeatures
from mlipbias.uq.selection import select_max_dist

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "feature_layout"
K_PER_LAYER = 32
SEEDS = (0, 1, 2)
LAMBDA = 1e-6


def data() -> dict[str, list]:
    WORK.mkdir(parents=True, exist_ok=True)
    structure = default_structure("sio2-amorphous-96")
    # total displacement norms U[0, 1] A (in domain, as the study above) and U[1, 2] A (OOD)
    sets = {"in_domain": (640, 0, 0.0, 1.0), "ood": (120, 1, 1.0, 2.0)}
    out = {}
    for name, (n, seed, min_norm, max_norm) in sets.items():
        path = WORK / f"{name}.db"
        generate(path, structure, "bks", mode="displacements", n_samples=n, seed=seed, min_norm=min_norm,
                 max_norm=max_norm, progress=False)  # fmt: skip
        out[name] = load_dataset(path)
    rows = out.pop("in_domain")
    out["train"], out["validation"], out["test"] = rows[:240], rows[480:540], rows[540:]
    return out


def layout(features: np.ndarray, n_elements: int, n_layers: int, kind: str) -> np.ndarray:
    """(n, E L k) concatenated features in another layout (same K)."""
    blocks = features.reshape(len(features), n_elements, n_layers, -1)
    if kind == "concat":
        return features
    if kind == "layer-sum":
        return blocks.sum(axis=2).reshape(len(features), -1)
    return blocks.sum(axis=(1, 2))  # all-sum


def nearest_distance(x: np.ndarray, reference: np.ndarray, rows: int = 2000) -> np.ndarray:
    """Distance of each row of x to its nearest row of reference (BLAS, in blocks of rows)."""
    ref2 = np.einsum("ij,ij->i", reference, reference)
    out = np.empty(len(x))
    for start in range(0, len(x), rows):
        block = x[start : start + rows]
        d2 = np.einsum("ij,ij->i", block, block)[:, None] + ref2[None, :] - 2.0 * block @ reference.T
        out[start : start + rows] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def atom_force_error(model, data: AtomsData) -> np.ndarray:
    p = model.predict(data, None, forces=True)
    return np.linalg.norm(p.forces - data.forces, axis=1)


def main() -> None:
    start = time.time()
    sets = data()
    descriptor = make_descriptor(DescriptorSettings(preset="SiO2"), ["Si", "O"])
    prepared = {name: AtomsData(rows, descriptor, progress=False) for name, rows in sets.items()}
    model_path = WORK / "model.mlip"
    if model_path.is_file():
        model = load_model(model_path)
    else:
        model = train(
            prepared["train"],
            prepared["validation"],
            model=ModelSettings(hidden=(30, 30), activation="tanh"),
            uncertainty=UncertaintySettings(methods=("posterior",), sketch_size=K_PER_LAYER),
            training=TrainingSettings(epochs=100, batch_size=16, early_stopping_patience=20, device="cpu"),
            progress=False,
            log=lambda message: None,
        ).model
        save_model(model, model_path)
    net = model.network
    n_elements, n_layers = net.n_elements, len(net.sizes) - 1
    errors = {name: atom_force_error(model, prepared[name]) for name in ("test", "ood")}
    table: dict[str, dict[str, list[float]]] = {}
    for seed in SEEDS:
        for kind, k in (("concat", K_PER_LAYER), ("layer-sum", n_layers * K_PER_LAYER),
                        ("all-sum", n_elements * n_layers * K_PER_LAYER)):  # fmt: skip
            sketch = GradientFeatures.random(net, k=k, seed=seed).sketch(net.energy_scale)
            with torch.no_grad():
                phi = {
                    name: layout(
                        network_features(net, prepared[name], sketch=sketch), n_elements, n_layers, kind
                    )
                    for name in ("train", "test", "ood")
                }
            precision = np.linalg.inv(phi["train"].T @ phi["train"] + LAMBDA * np.eye(phi["train"].shape[1]))
            subset = phi["train"][select_max_dist(phi["train"], 512)]
            for name in ("test", "ood"):
                x = phi[name]
                posterior = np.sqrt(np.einsum("ik,kl,il->i", x, precision, x))
                distance_all = nearest_distance(x, phi["train"])
                distance_512 = nearest_distance(x, subset)
                for method, u in (("posterior", posterior), ("distance, all atoms", distance_all),
                                  ("distance, 512 atoms", distance_512)):  # fmt: skip
                    rho = float(spearmanr(u, errors[name]).statistic)
                    table.setdefault(f"{kind} | {method} | {name}", {}).setdefault("rho", []).append(rho)
    summary = {
        "K": n_elements * n_layers * K_PER_LAYER,
        "train_atoms": int(prepared["train"].n_atoms.sum()),
        "test_force_rmse": float(np.sqrt(np.mean(errors["test"] ** 2 / 3))),
        "ood_force_rmse": float(np.sqrt(np.mean(errors["ood"] ** 2 / 3))),
        "seconds": round(time.time() - start),
        "rho": {key: value["rho"] for key, value in table.items()},
    }
    (WORK / "feature_layout.json").write_text(json.dumps(summary, indent=1))
    lines = [
        f"K = {summary['K']} features per atom in every layout; {summary['train_atoms']} training atoms; "
        f"force RMSE {summary['test_force_rmse']:.3f} eV/A (test), "
        f"{summary['ood_force_rmse']:.3f} eV/A (OOD); "
        f"Spearman rho of per-atom U against |F error|, mean ± std over sketch seeds {SEEDS}; "
        f"{summary['seconds']} s.",
        "",
        "| layout | uncertainty | rho in-domain test | rho OOD |",
        "|---|---|---:|---:|",
    ]
    for kind in ("concat", "layer-sum", "all-sum"):
        for method in ("posterior", "distance, all atoms", "distance, 512 atoms"):
            cells = []
            for name in ("test", "ood"):
                rho = np.array(table[f"{kind} | {method} | {name}"]["rho"])
                cells.append(f"{rho.mean():.3f} ± {rho.std():.3f}")
            lines.append(f"| {kind} | {method} | {cells[0]} | {cells[1]} |")
    (HERE / "feature_layout.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
