"""Where the bias time goes: the C++ evaluator on the models of ``gmnn_inference.py``, for ``perf``.

Writes the three models of ``benchmarks/gmnn_inference.py`` (cases 0-2: GM-NN 360 x 512 x 512, GM-NN 360 x
64 x 64, BP-NN 52 x 64 x 64; random weights, posterior data with k = 16) and a GM-NN 360 x 512 x 512
ensemble of 4 (case 3) into a folder once, then evaluates one of them (or the shipped SiO2 BP-NN files of
``examples/lammps``: cases 4, ensemble of 4, and 5, gradient features) with one set of options in a loop, so
that a sampling profiler attributes the time to functions:

    OMP_NUM_THREADS=1 PYTHONPATH=python:tests:benchmarks python benchmarks/bias_profile.py --make DIR
    OMP_NUM_THREADS=1 PYTHONPATH=python:tests:benchmarks perf record -e cpu-clock -g -o P.data -- \\
        python benchmarks/bias_profile.py --folder DIR --case 0 --options bias --seconds 20
    perf report -i P.data --no-children --sort symbol

It also prints the least process CPU time per atom-step of the calls (the stages' shares come from perf).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before the C++ core (OpenMP) is loaded

import argparse
import time
from pathlib import Path

OPTIONS = {
    "plain": {},
    "features": {"uncertainty": "posterior"},  # U without its gradient: the sketch, no tangent
    "bias": {"uncertainty": "posterior", "gradient": True},
    "ensemble": {"uncertainty": "ensemble", "gradient": True},
}


def _simd(*names: str) -> tuple[str, ...]:
    """perf's symbols of the symmetry-function kernels ``names`` at every vector width."""
    return tuple(f"mlipbias::(anonymous namespace)::simd{w}::{n}" for w in (2, 4, 8) for n in names)


# Stages of the evaluator by the symbols perf attributes samples to (the first matching prefix wins).
STAGES = (
    ("network products", ("mlipbias::(anonymous namespace)::gemm",)),
    (
        "GM moments, contractions",
        ("mlipbias::GaussianMoments::moments", "mlipbias::GaussianMoments::compute"),
    ),
    ("GM vjp", ("mlipbias::GaussianMoments::vjp",)),
    # The SIMD kernels (cpp/symmetry_functions_simd.inc) in namespaces simd2/4/8; the recording values
    # pass of the gradient-feature backward has the same symbols as the forward's.
    ("SF values (triplets)", ("mlipbias::SymmetryFunctions::centre_values", *_simd("values"))),
    (
        "SF pairs, G2, slots",
        (
            "mlipbias::SymmetryFunctions::prepare_centre",
            *_simd("pair_cutoffs", "radial_values", "slot_radial"),
        ),
    ),
    (
        "SF contraction",
        (
            "mlipbias::SymmetryFunctions::centre_vjp",
            "mlipbias::SymmetryFunctions::centre_jvp",
            *_simd("vjp<", "jvp<", "radial_vjp", "radial_jvp"),
        ),
    ),
    ("libm (exp, sincos, pow, tanh)", ("__ieee754", "__sincos", "__expm1", "__tanh", "exp@", "__exp")),
    ("evaluator forward (elementwise, sketch)", ("mlipbias::Evaluator::Impl::forward_atoms_in",)),
    ("tangent (elementwise, activations)", ("mlipbias::Evaluator::Impl::tangents_in",)),
    ("copies, zeroing", ("__memmove", "__memset", "__memcpy", "std::vector")),
    ("scatter, sums", ("mlipbias::Evaluator::backward", "mlipbias::Evaluator::Impl")),
)


def perf_stages(data: str, calls: int, atoms: int, hz: float = 4000.0) -> dict:
    """us per atom-step of each stage: perf's samples of data over `calls` evaluations (cpu-clock at hz)."""
    import subprocess

    report = subprocess.run(
        ["perf", "report", "-i", data, "-n", "--no-children", "--sort", "symbol", "--stdio"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stages = dict.fromkeys([name for name, _ in STAGES] + ["other (Python, setup)"], 0.0)
    for line in report.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or line.startswith("#") or not parts[0].endswith("%"):
            continue
        samples, symbol = int(parts[1]), parts[3].strip()
        name = next((n for n, prefixes in STAGES if symbol.startswith(prefixes)), "other (Python, setup)")
        stages[name] += samples / hz / calls / atoms * 1e6
    return stages


def network_macs(widths: list[int], k: int) -> dict:
    """Multiply-adds per atom of one network (widths: input, hidden..., 1) and of its tangent pass.

    plain: forward and backward (down to dE/dG), one product per layer each way. tangent (the
    gradient-feature dU/dG after the primal passes are kept): the forward tangent through the hidden
    layers' weights (hdot_0 = 0, so not layer 0), the backward tangent through every layer's but the
    output's (its delta has no tangent), and the rank-k direction B: 2 k (n_in + n_out) per layer.
    """
    layers = list(zip(widths[:-1], widths[1:], strict=True))
    dense = [a * b for a, b in layers]
    low_rank = sum(2 * k * (a + b) for a, b in layers)
    plain = 2 * sum(dense)
    tangent = sum(dense[1:]) + sum(dense[:-1]) + low_rank
    return {"plain": plain, "tangent": tangent, "tangent / plain": tangent / plain, "before": tangent + plain}


def sf_rows(seconds: float) -> dict:
    """us per atom of the shipped SiO2 functions (``structure()``): the values pass (no record kept) and
    the vjp of 1, 2 and 4 random rows (a recording values pass, then the contraction); least of the calls."""
    import numpy as np
    from gmnn_inference import structure

    from mlipbias.descriptors import SymmetryFunctions

    sf = SymmetryFunctions.defaults("SiO2")
    atoms = structure()
    nb = sf.neighbours(atoms)
    w = np.random.default_rng(0).normal(size=(4, nb.n_atoms, sf.n_sf))
    calls = {"values": lambda: sf.compute_neighbours(nb)}
    calls.update({f"vjp {r}": (lambda r=r: sf.vjp(nb, w[:r])) for r in (1, 2, 4)})
    best = dict.fromkeys(calls, float("inf"))
    spent = 0.0
    while spent < seconds:  # the calls take turns
        for name, call in calls.items():
            start = time.process_time()
            call()
            t = time.process_time() - start
            best[name], spent = min(best[name], t), spent + t
    return {name: 1e6 * t / len(atoms) for name, t in best.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make", help="write the models into this folder and stop")
    parser.add_argument("--folder", help="the folder written by --make")
    parser.add_argument("--case", type=int, default=0, help="0-5 (above)")
    parser.add_argument("--options", choices=sorted(OPTIONS), default="bias")
    parser.add_argument("--seconds", type=float, default=10.0, help="CPU seconds of calls")
    parser.add_argument("--single", action="store_true", help="float32 networks")
    parser.add_argument("--flops", action="store_true", help="print the networks' multiply-adds and stop")
    parser.add_argument("--stages", nargs=2, metavar=("PERF_DATA", "CALLS"), help="us per atom-step by stage")
    parser.add_argument("--rows", action="store_true", help="time the SiO2 functions' values and vjps")
    args = parser.parse_args(argv)
    if args.rows:
        print(" | ".join(f"{name} {us:.1f}" for name, us in sf_rows(args.seconds).items()))
        return
    if args.stages:
        from gmnn_inference import structure

        stages = perf_stages(args.stages[0], int(args.stages[1]), len(structure()))
        print(" | ".join(f"{name} {us:.1f}" for name, us in stages.items() if us >= 0.05))
        return
    if args.flops:
        sizes = {
            "GM-NN 360 x 512 x 512, k = 16": ([360, 512, 512, 1], 16),
            "GM-NN 360 x 64 x 64, k = 16": ([360, 64, 64, 1], 16),
            "BP-NN 52 x 64 x 64, k = 16": ([52, 64, 64, 1], 16),
            "BP-NN 52 x 30 x 30, k = 32 (shipped)": ([52, 30, 30, 1], 32),
        }
        for name, (widths, k) in sizes.items():
            print(name, {key: round(value, 3) for key, value in network_macs(widths, k).items()})
        return
    if args.make:
        from gmnn_inference import make_models

        from mlipbias.descriptors.gaussian_moments import GaussianMoments
        from mlipbias.models import MLIPModel, save_model
        from mlipbias.models.gmnn import GMNN

        Path(args.make).mkdir(parents=True, exist_ok=True)
        make_models(Path(args.make))
        ensemble = GMNN(GaussianMoments(["O", "Si"], 6.0), (512, 512), n_members=4)
        save_model(MLIPModel(ensemble), Path(args.make) / "case3.mlip")
        return
    if not args.folder:
        parser.error("give --make DIR or --folder DIR")
    from gmnn_inference import structure

    from mlipbias.inference import CppModel

    atoms = structure()
    shipped = Path(__file__).resolve().parents[1] / "examples" / "lammps"
    files = {4: shipped / "sio2_ensemble.mlip", 5: shipped / "sio2_gradient.mlip"}
    model = CppModel(str(files.get(args.case, Path(args.folder) / f"case{args.case}.mlip")))
    nb = model.neighbours(atoms)
    options = dict(OPTIONS[args.options], single_precision=args.single)
    best, spent, calls = float("inf"), 0.0, 0
    while spent < args.seconds:
        start = time.process_time()
        model.evaluate_neighbours(*nb, **options)
        t = time.process_time() - start
        best, spent, calls = min(best, t), spent + t, calls + 1
    us = 1e6 * best / len(atoms)
    print(f"case {args.case} {args.options}: {us:.1f} us per atom-step (least of {calls})")


if __name__ == "__main__":
    main()
