"""``mlipbias demo``: the main job on the shipped BKS silica, as a sequence of steps.

Each step is a function ``step_NAME(context)`` listed in ``STEPS``; it reads what earlier
steps left in ``context`` and adds its own results. Everything is written under the output
folder, and rerunning resumes: finished work is not redone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DemoContext:
    """What the steps share: the output folder, the options, and the results so far."""

    output_dir: Path
    n_samples: int
    seed: int
    progress: bool
    results: dict = field(default_factory=dict)


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help=(
            "the main job on the shipped BKS silica: dataset, ensemble, metrics, adversarial diagnosis, "
            "active learning"
        ),
        description=(
            "Step 1 (dataset): relax the shipped 96-atom amorphous SiO2 cell with BKS and label "
            "N random displacements (total L2 norm uniform in [0, 1] A, as in Cubuk & Schoenholz 2020) into "
            "OUTPUT_DIR/dataset.db, then print its summary. Step 2 (model): train a 3-member BP-NN "
            "ensemble with sketched gradient features on it (80/10/10 split), calibrate the "
            "uncertainties on the validation split and print the metrics table of the test split "
            "(OUTPUT_DIR/model/). Step 3 (adversarial): the diagnosis of Cubuk & Schoenholz (2020) of "
            "that model against BKS "
            "on test structures: how well its forces align with the direction in which its error grows, "
            "and the error after distortions along that direction and along random ones "
            "(OUTPUT_DIR/adversarial/). Step 4 (active learning): one generation of Zaverkin et al.'s "
            "loop from that model: biased MD walkers in LAMMPS, max-det selection, BKS labels, retraining, "
            "and the error on a held-out set of larger displacements before and after "
            "(OUTPUT_DIR/active_learning/). Rerunning resumes."
        ),
    )
    p.add_argument(
        "-o",
        "--out",
        "--output",
        "--output-dir",
        dest="output_dir",
        default="demo_output",
        help="folder for all outputs (default: demo_output)",
    )
    p.add_argument("--n-samples", type=int, default=200, help="number of labelled structures (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run_demo)


def step_dataset(context: DemoContext) -> None:
    """Label displaced copies of the shipped amorphous SiO2 cell with BKS into dataset.db."""
    from mlipbias.datasets import format_summary, generate, summarize
    from mlipbias.structures import default_structure

    path = context.output_dir / "dataset.db"
    structure = default_structure("sio2-amorphous-96")
    generate(
        path,
        structure,
        "bks",
        mode="displacements",
        n_samples=context.n_samples,
        seed=context.seed,
        max_norm=1.0,
        structure_name="sio2-amorphous-96",
        progress=context.progress,
    )
    context.results["dataset"] = path
    print(format_summary(summarize(path)))


# Smallest dataset the model step trains on: 80/10/10 splits need 10 structures for one of each.
MIN_STRUCTURES_FOR_MODEL = 10


def step_model(context: DemoContext) -> None:
    """Train a 3-member ensemble (2 x 30 tanh, energies only, as Cubuk & Schoenholz 2020) with sketched
    gradient features on dataset.db, calibrate it on the validation split and print the test-split
    metrics."""
    from mlipbias.cli.train import run_training
    from mlipbias.datasets import open_dataset
    from mlipbias.models import load_model
    from mlipbias.models.config import config_from_dict

    db = open_dataset(context.results["dataset"])
    n = db.count()
    if n < MIN_STRUCTURES_FOR_MODEL:
        print(f"skipped: training needs at least {MIN_STRUCTURES_FOR_MODEL} structures, the dataset has {n}")
        return
    directory = context.output_dir / "model"
    config = config_from_dict(
        {
            "data": {"path": str(context.results["dataset"]), "seed": context.seed},
            "descriptor": {"preset": "SiO2"},
            "model": {"hidden": [30, 30], "activation": "tanh"},
            "uncertainty": {"methods": ["ensemble", "posterior", "distance"], "n_members": 3},
            # Energies only, unlike `mlipbias train`'s defaults: Cubuk & Schoenholz (2020) diagnose
            # BP-NNs fitted to energies (their Section 4), and an epoch costs ~100x less
            # (benchmarks/RESULTS.md, "Cost of force training"), so the demo ends in minutes. The model
            # is for that diagnosis, not for MD.
            "training": {
                "epochs": 300,
                "batch_size": 16,
                "seed": context.seed,
                "device": "cpu",
                "force_weight": 0.0,
                "stress_weight": 0.0,
            },
            "output": {"directory": str(directory), "model": "model.mlip"},
        }
    )
    if config.model_path.exists():
        print(f"{config.model_path} exists; delete it to train again")
        context.results["model"] = load_model(config.model_path)
        context.results["model_path"] = config.model_path
        return
    model, _ = run_training(config, resume=True, progress=context.progress)
    context.results["model"] = model
    context.results["model_path"] = config.model_path
    dataset = context.results["dataset"]
    print(f"evaluate again with: mlipbias evaluate --model {config.model_path} --data {dataset}")


# Test-split structures the demo diagnoses (each costs ~40 evaluations of both models).
ADVERSARIAL_CONFIGS = 20


def step_adversarial(context: DemoContext) -> None:
    """The diagnosis of Cubuk & Schoenholz (2020) of the trained model against BKS on test-split
    structures: alignment of the model's forces with the direction of growing error, and Table 1 (error
    after a distortion along it)."""
    import json

    import ase.db

    from mlipbias.adversarial.experiments import run_diagnosis
    from mlipbias.adversarial.report import write_report
    from mlipbias.calculators import MLIPCalculator
    from mlipbias.cli.adversarial import print_summary
    from mlipbias.potentials import BKS

    model_path = context.results.get("model_path")
    if model_path is None:
        print("skipped: no model was trained")
        return
    split = json.loads((model_path.parent / "split.json").read_text())
    with ase.db.connect(context.results["dataset"]) as db:
        rows = [db.get(id=i) for i in split["test"][:ADVERSARIAL_CONFIGS]]
    configs = []
    for row in rows:
        atoms = row.toatoms()
        atoms.info.update(row.key_value_pairs)  # e_min: the BKS minimum the structure was displaced from
        atoms.info["dataset_index"] = row.id - 1
        configs.append(atoms)
    out = context.output_dir / "adversarial"
    results = run_diagnosis(
        MLIPCalculator(model_path, uncertainty="none"),
        BKS(),
        configs,
        out_dir=out,
        labels={"approx": str(model_path), "accurate": "bks"},
        progress=context.progress,
        # A 0.5 A push along the adversarial direction can bring two atoms under BKS's 1 A minimum
        # distance; such configurations are left out and counted rather than stopping the demo.
        skip_failed=True,
    )
    write_report(results, out)
    print_summary(results)
    print(f"report and figures: {out}/report.md, {out}/fig1_alignment.png, {out}/fig2_rollout.png")


# Held-out structures displaced twice as far as the training data (total L2 norm 1-2 A instead of 0-1 A).
HARD_SAMPLES = 40


def demo_al_config(context: DemoContext, start: Path, hard: Path):
    """Zaverkin et al.'s loop, one generation at demo scale: 4 walkers of biased NVT MD at 1200 K in LAMMPS
    (posterior uncertainty, stop at 3 eV/A or 1,000 steps: the demo model is trained on energies only,
    so its calibrated force uncertainty is near Zaverkin et al.'s 1.5 eV/A already at equilibrium), a max-det
    batch of 16, BKS labels, and a warm-started energy-only retraining with the demo model's settings."""
    from mlipbias.al.config import al_config_from_dict

    return al_config_from_dict(
        {
            "start": {"structures": str(start)},
            "oracle": {"name": "bks"},
            "initial": {"n_structures": 0, "dataset": str(context.results["dataset"])},
            "train": {
                "descriptor": {"preset": "SiO2"},
                "model": {"hidden": [30, 30], "activation": "tanh"},
                "uncertainty": {"methods": ["ensemble", "posterior", "distance"], "n_members": 3},
                "training": {
                    "epochs": 100,
                    "batch_size": 16,
                    "energy_weight": 1.0,
                    "force_weight": 0.0,
                    "stress_weight": 0.0,  # energy-only as step 2 (stress terms cost ~10x a generation)
                    "device": "cpu",
                },
            },
            "explore": {
                "engine": "lammps",
                "walkers": 4,
                "temperature": 1200.0,
                "tau": 0.5,
                # Walkers reach the threshold within ~20 steps here, inside the 100-step burn-in of
                # Eq. 8's window form: a fixed tau biases them from the first step.
                "rescale": False,
                "uncertainty": "posterior",
                "threshold": 3.0,
                "max_steps": 1000,
                "record_interval": 5,
            },
            "select": {"method": "max_det", "batch_size": 16},
            "stop": {"max_size": 100000, "max_generations": 1},
            "test": {"path": str(hard)},
            "dask": {"workers": 2, "processes": True},
            "output": {"directory": str(context.output_dir / "active_learning")},
            "seed": context.seed,
        }
    )


def step_active_learning(context: DemoContext) -> None:
    """Active learning (Zaverkin et al. 2024) from the demo model: biased MD walkers, max-det selection,
    BKS labels and retraining; the error on a hard held-out set (larger displacements) before and after."""
    import os
    import shutil

    from ase.io import write

    from mlipbias.al import run_active_learning
    from mlipbias.datasets import generate, reference_minimum
    from mlipbias.structures import default_structure

    model_path = context.results.get("model_path")
    if model_path is None:
        print("skipped: no model was trained")
        return
    print("active learning: one generation of uncertainty-biased MD, selection, labelling and retraining")
    hard = context.output_dir / "hard_test.db"
    generate(
        hard,
        default_structure("sio2-amorphous-96"),
        "bks",
        mode="displacements",
        n_samples=HARD_SAMPLES,
        seed=context.seed + 1,
        min_norm=1.0,
        max_norm=2.0,
        structure_name="sio2-amorphous-96",
        progress=context.progress,
    )
    directory = context.output_dir / "active_learning"
    (directory / "gen_001" / "train").mkdir(parents=True, exist_ok=True)
    start = directory / "start.extxyz"
    if not start.exists():
        write(start, reference_minimum(context.results["dataset"]), format="extxyz")
    # Generation 1's model is the demo model (trained by the model step), so the loop starts at exploring.
    first = directory / "gen_001" / "train" / "model.mlip"
    if not first.exists():
        shutil.copyfile(model_path, first.with_suffix(".tmp"))
        os.replace(first.with_suffix(".tmp"), first)
    config = demo_al_config(context, start, hard)
    rows = run_active_learning(config, progress=context.progress)
    before, after = rows[0], rows[-1]
    print(
        f"active learning: hard held-out set ({HARD_SAMPLES} structures, displacements of 1-2 A): "
        f"energy RMSE {1000 * before['test_energy_rmse']:.3g} -> "
        f"{1000 * after['test_energy_rmse']:.3g} meV/atom, "
        f"force RMSE {before['test_force_rmse']:.3g} -> {after['test_force_rmse']:.3g} eV/A "
        f"with {after['dataset_size'] - before['dataset_size']} labelled structures added"
    )
    print(f"summary and plots: {directory}/summary.csv, {directory}/al_summary.png")


STEPS = [
    ("dataset", step_dataset),
    ("model", step_model),
    ("adversarial", step_adversarial),
    ("active learning", step_active_learning),
]


def run_demo(args) -> int:
    if args.n_samples < 1:
        raise ValueError(f"--n-samples must be at least 1, got {args.n_samples}")
    context = DemoContext(Path(args.output_dir), args.n_samples, args.seed, args.progress)
    context.output_dir.mkdir(parents=True, exist_ok=True)
    for number, (name, step) in enumerate(STEPS, start=1):
        print(f"== step {number}/{len(STEPS)}: {name} ==", flush=True)
        start = time.perf_counter()
        step(context)
        print(f"== {name} done in {time.perf_counter() - start:.1f} s ==", flush=True)
    return 0
