"""GM-NN inference cost per atom-step, C++ (what pair_style mlip/bias runs) and torch, against the BP-NN.

Same run, same structure (the shipped 96-atom amorphous SiO2 cell repeated to 768 atoms, 6 A cutoff), random
weights of the published sizes:

* GM-NN at seed 002's size: 7 Gaussians, 5 radial functions, 8 contraction groups (360 features), two hidden
  layers of 512, SiLU; and a small one (64-64) like ``examples/sio2_gmnn``;
* BP-NN: the default SiO2 symmetry functions (52 per atom), two hidden layers of 64, tanh.

Each is timed plain (energy, forces, virial) and with the posterior uncertainty and its gradient (the bias),
in float64 and with the networks in float32 (``single_precision``; its force and dU/dx errors against float64
are recorded), least process CPU time of repeated calls of ``CppModel.evaluate_neighbours`` (neighbour lists
built once, not timed; CPU time because other work shares the cores). The torch column is
:class:`mlipbias.models.MLIPModel.evaluate` of the GM-NN (Gaussian moments and all derivatives by autograd).
With ``--before DIR`` (a copy of ``python/`` holding an earlier build of ``mlipbias._core``) the same files
are also timed with that build, in a subprocess, interleaved with this build's rounds.

    OMP_NUM_THREADS=1 PYTHONPATH=python:tests .venv/bin/python benchmarks/gmnn_inference.py [--before DIR]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before the C++ core (OpenMP) is loaded

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.io import read

RESULTS = Path(__file__).resolve().parent / "results" / "gmnn_inference.json"
DATA = Path(__file__).resolve().parents[1] / "python" / "mlipbias" / "data_files" / "sio2-amorphous-96.extxyz"
CASES = ("GM-NN 360 x 512 x 512", "GM-NN 360 x 64 x 64", "BP-NN 52 x 64 x 64")
BIAS = {"uncertainty": "posterior", "gradient": True}


def least_cpu(repeats: int, f, *args, **kwargs) -> float:
    """Least process CPU time (s) of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        f(*args, **kwargs)
        times.append(time.process_time() - start)
    return min(times)


def structure():
    return read(DATA).repeat((2, 2, 2))


def with_gradient_features(net, data):
    from mlipbias.models import MLIPModel
    from mlipbias.models.gmnn import GMNN
    from mlipbias.models.training import network_features
    from mlipbias.uq.gradient_features import GradientFeatures

    model = MLIPModel(net)
    gradient = GradientFeatures.random(net, 16, seed=0, lam=0.1)
    if isinstance(net, GMNN):
        net.scale_sketch(gradient)
    phi = network_features(net, data, sketch=gradient.sketch(net.energy_scale))
    model.gradient = gradient.fit(phi, np.zeros(len(phi), dtype=int), data.n_atoms, 200)
    model.methods = ("posterior",)
    return model


def time_cpp(folder: Path, repeats: int, single: bool) -> dict:
    """us per atom-step of every case's file in folder with the mlipbias this process imports."""
    from mlipbias.inference import CppModel

    atoms = structure()
    out = {}
    for k, name in enumerate(CASES):
        cpp = CppModel(str(folder / f"case{k}.mlip"))
        nb = cpp.neighbours(atoms)
        row = {}
        for label, options in (("plain", {}), ("bias", BIAS)):
            row[label] = 1e6 * least_cpu(repeats, cpp.evaluate_neighbours, *nb, **options) / len(atoms)
            if single:
                options = dict(options, single_precision=True)
                row[f"{label} float32"] = (
                    1e6 * least_cpu(repeats, cpp.evaluate_neighbours, *nb, **options) / len(atoms)
                )
        if single:  # float32 errors against float64, relative to the largest component
            double = cpp.evaluate_neighbours(*nb, **BIAS)
            single_r = cpp.evaluate_neighbours(*nb, single_precision=True, **BIAS)
            for q in ("forces", "uncertainty_gradient"):
                a, b = getattr(double, q), getattr(single_r, q)
                row[f"float32 {q} max error / max |value|"] = float(np.abs(a - b).max() / np.abs(a).max())
                row[f"float32 {q} max error (eV/A)"] = float(np.abs(a - b).max())
            row["float32 energy error (eV/atom)"] = float(abs(double.energy - single_r.energy) / len(atoms))
        out[name] = row
    return out


def make_models(folder: Path) -> None:
    from mlipbias.descriptors import SymmetryFunctions
    from mlipbias.descriptors.gaussian_moments import GaussianMoments
    from mlipbias.models import AtomsData, save_model
    from mlipbias.models.gmnn import GMNN
    from mlipbias.models.network import BPNN

    atoms = structure()
    nets = (
        GMNN(GaussianMoments(["O", "Si"], 6.0), (512, 512)),
        GMNN(GaussianMoments(["O", "Si"], 6.0), (64, 64)),
        BPNN(SymmetryFunctions.defaults("SiO2"), (64, 64), "tanh"),
    )
    for k, net in enumerate(nets):
        data = AtomsData([atoms], net.descriptor, labels=False)
        if isinstance(net, BPNN):
            net.fit_scaling(data.G, data.species)
        save_model(with_gradient_features(net, data), folder / f"case{k}.mlip")


def time_torch(folder: Path, repeats: int) -> dict:
    from mlipbias.models import AtomsData, load_model

    atoms = structure()
    out = {}
    for k, name in enumerate(CASES[:2]):
        model = load_model(folder / f"case{k}.mlip")
        batch = AtomsData([atoms], model.descriptor, labels=False).batch([0])
        out[name] = 1e6 * least_cpu(repeats, model.evaluate, batch) / len(atoms)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="a python/ folder holding an earlier build of mlipbias._core")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(RESULTS), help="the JSON file of the results")
    parser.add_argument("--time-cpp", help=argparse.SUPPRESS)  # child: time the files in this folder
    args = parser.parse_args(argv)
    if args.time_cpp:
        print(json.dumps(time_cpp(Path(args.time_cpp), args.repeats, single=False)))
        return

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_models(folder)
        after, before, torch_us = [], [], []
        for _ in range(args.rounds):
            after.append(time_cpp(folder, args.repeats, single=True))
            torch_us.append(time_torch(folder, max(1, args.repeats - 1)))
            if args.before:
                env = dict(os.environ, PYTHONPATH=os.pathsep.join([args.before, str(Path(__file__).parent)]))
                command = [
                    sys.executable,
                    __file__,
                    "--time-cpp",
                    str(folder),
                    "--repeats",
                    str(args.repeats),
                ]
                result = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
                before.append(json.loads(result.stdout.strip().splitlines()[-1]))
    rows = []
    for name in CASES:
        row = {"model": name, "atoms": len(structure())}
        for key in after[0][name]:
            values = [r[name][key] for r in after]
            row[f"cpp {key}"] = min(values) if "error" not in key else values[0]
        if args.before:
            for key in before[0][name]:
                row[f"before: cpp {key}"] = min(r[name][key] for r in before)
        if name in torch_us[0]:
            row["torch plain"] = min(r[name] for r in torch_us)
        rows.append(row)
        print(json.dumps(row), flush=True)
    from machine_info import machine

    output = Path(args.output)
    output.parent.mkdir(exist_ok=True)
    payload = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "unit": "process CPU microseconds per atom-step (least of rounds x repeats)",
        "machine": machine(),
        "rows": rows,
    }
    output.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
