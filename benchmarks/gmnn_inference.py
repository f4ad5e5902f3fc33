"""GM-NN inference cost per atom-step, C++ (what pair_style mlip/bias runs) and torch, against the BP-NN.

Same run, same structure (the shipped 96-atom amorphous SiO2 cell repeated to 768 atoms, 6 A cutoff), random
weights of the published sizes:

* GM-NN at seed 002's size: 7 Gaussians, 5 radial functions, 8 contraction groups (360 features), two hidden
  layers of 512, SiLU; and a small one (64-64) like ``examples/sio2_gmnn``;
* BP-NN: the default SiO2 symmetry functions (52 per atom), two hidden layers of 64, tanh.

Each is timed plain (energy, forces, virial) and with the posterior uncertainty and its gradient (the bias),
best of repeated calls of ``CppModel.evaluate_neighbours`` (neighbour lists built once, not timed). The torch
column is :class:`mlipbias.models.MLIPModel.evaluate` of the GM-NN (Gaussian moments and all derivatives by
autograd).

    OMP_NUM_THREADS=1 PYTHONPATH=python:tests .venv/bin/python benchmarks/gmnn_inference.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before the C++ core (OpenMP) is loaded

import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase.io import read
from machine_info import machine

from mlipbias.descriptors import SymmetryFunctions
from mlipbias.descriptors.gaussian_moments import GaussianMoments
from mlipbias.inference import CppModel
from mlipbias.models import AtomsData, MLIPModel, save_model
from mlipbias.models.gmnn import GMNN
from mlipbias.models.network import BPNN
from mlipbias.models.training import network_features
from mlipbias.uq.gradient_features import GradientFeatures

RESULTS = Path(__file__).resolve().parent / "results" / "gmnn_inference.json"
DATA = Path(__file__).resolve().parents[1] / "python" / "mlipbias" / "data_files" / "sio2-amorphous-96.extxyz"


def best_of(repeats: int, f, *args, **kwargs) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def with_gradient_features(net, data) -> MLIPModel:
    model = MLIPModel(net)
    gradient = GradientFeatures.random(net, 16, seed=0, lam=0.1)
    if isinstance(net, GMNN):
        net.scale_sketch(gradient)
    phi = network_features(net, data, sketch=gradient.sketch(net.energy_scale))
    model.gradient = gradient.fit(phi, np.zeros(len(phi), dtype=int), data.n_atoms, 200)
    model.methods = ("posterior",)
    return model


def main() -> None:
    torch.set_num_threads(1)
    atoms = read(DATA).repeat((2, 2, 2))
    cases = {
        "GM-NN 360 x 512 x 512": GMNN(GaussianMoments(["O", "Si"], 6.0), (512, 512)),
        "GM-NN 360 x 64 x 64": GMNN(GaussianMoments(["O", "Si"], 6.0), (64, 64)),
        "BP-NN 52 x 64 x 64": BPNN(SymmetryFunctions.defaults("SiO2"), (64, 64), "tanh"),
    }
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, net in cases.items():
            data = AtomsData([atoms], net.descriptor, labels=False)
            if isinstance(net, BPNN):
                net.fit_scaling(data.G, data.species)
            model = with_gradient_features(net, data)
            path = save_model(model, Path(folder) / "model.mlip")
            cpp = CppModel(path)
            nb = cpp.neighbours(atoms)
            n = len(atoms)
            row = {"model": name, "atoms": n, "pairs": int(len(nb[2]))}
            for label, options in (
                ("plain", {}),
                ("posterior + gradient", {"uncertainty": "posterior", "gradient": True}),
            ):
                seconds = best_of(5, cpp.evaluate_neighbours, *nb, **options)
                row[f"cpp {label} (us/atom-step)"] = 1e6 * seconds / n
            if isinstance(net, GMNN):
                batch = data.batch([0])
                seconds = best_of(2, model.evaluate, batch)
                row["torch plain (us/atom-step)"] = 1e6 * seconds / n
            rows.append(row)
            print(json.dumps(row), flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    payload = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": machine(),
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
