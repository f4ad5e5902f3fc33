"""Study 2 of Tan et al. (2023), silica, scaled to a shared 2-core machine: data, 3 generations, report.

    PYTHONPATH=python python examples/seed003_silica/run_study.py              # all steps, resumes
    PYTHONPATH=python python examples/seed003_silica/run_study.py --only report

Steps (each skipped when its output exists; labels are committed to ase.db files as they come):

1. ``cost``: one PaiNN training step, Tan et al.'s architecture and ours, 96 and 768 atoms (work/cost.json).
2. ``data``: BKS-driven MD of a 96-atom SiO2 cell under the conditions of Tan et al.'s Table S1
   (equilibration at 8 temperatures, cooling, uniaxial, biaxial tension, compression and shear), each
   frame labelled with BKS (work/initial.db), split 80/20 into training and validation.
3. ``testset``: adversarial samples of a separate trial PaiNN (GMM uncertainty), labelled with BKS,
   binned by energy, the 2 structures with the largest force of each bin kept (work/test.db).
4. per generation 1..3 and method (ensemble of 3, MVE, evidential, GMM): ``train`` (initial data plus the
   method's labelled adversarial samples of earlier generations), ``evaluate`` (test, training,
   validation and own adversarial sets), ``md`` (stability at 2500 K), and, for generations 1 and 2,
   ``sample`` (adversarial samples, each labelled with BKS when found).
5. ``report``: results.md and the figures.

All sizes are in SCALE below; README.md says why each differs from the paper.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
METHODS = ("ensemble", "mve", "evidential", "gmm")
GENERATIONS = (1, 2, 3)
KCAL = units.kcal / units.mol  # eV
PAPER_ATOMS = 699  # 233 Si + 466 O

#: Every size of the study (Tan et al.'s value in the comment).
SCALE = {
    "painn": {"features": 16, "layers": 2, "radial_basis": 20, "cutoff": 5.0, "readout": [64, 64]},  # 128, 3
    "epochs": 10,  # 1000 (generation 1, from scratch)
    "finetune_epochs": 4,  # generations 2 and 3 start from the previous generation's model
    "batch_size": 3,  # 3
    "learning_rate": 2e-3,  # 1e-4
    "head_learning_rate": 2e-3,  # MVE and evidential, same as the others (Tan et al.: 1e-4 for all)
    "decay_patience": 3,  # 30
    "n_members": 3,  # 3
    "gmm_max_components": 4,  # chosen by BIC and silhouette by hand
    "md_timestep_fs": 1.0,  # data MD; Tan et al.: LAMMPS, ns-long runs
    "adv_iterations": 30,  # 80
    "adv_learning_rate": 2e-3,  # 3e-5
    "adv_samples": 3,  # 100 per generation
    "adv_kT": 0.7 * KCAL,  # 0.7 kcal/mol/atom
    "adv_cutoff_per_atom": {1: 5000.0 / PAPER_ATOMS * KCAL, 2: 10000.0 / PAPER_ATOMS * KCAL},  # x N
    "test_candidates": 16,  # 402 kept from trial runs
    "test_bins": 6,
    "test_learning_rates": [2e-3, 5e-3, 1e-2, 2e-2],
    "stab_trajectories": 2,  # 10
    "stab_steps": 300,  # 1 ns / 0.25 fs = 4e6
    "stab_timestep_fs": 0.5,  # 0.25
    "stab_temperature": 2500.0,  # 2500
    "stab_ke_max_per_atom": 10000.0 / PAPER_ATOMS * KCAL,  # 10000 kcal/mol for 699 atoms
    "stab_min_distance": 1.0,  # 1.0 A
}

#: Tan et al.'s Table S1 (name, kind, temperature K, rate x, rate y in 1e-4/ps, frames in the paper) and
#: the frames we keep of each. Rates here are 3000 x faster (see README.md).
TABLE_S1 = [
    *[
        (f"{t} K", "equilibrate", t, 0, 0, n, 2)
        for t, n in [
            (300, 100),
            (500, 100),
            (1000, 100),
            (1500, 100),
            (2000, 100),
            (2500, 99),
            (3000, 98),
            (3500, 92),
        ]
    ],
    ("cooling", "cool", 2300, 0, 0, 410, 6),
    ("uniaxial_compress", "deform", 300, -1.0, 0.0, 30, 2),
    ("uniaxial_stretch", "deform", 300, 1.0, 0.0, 30, 2),
    *[
        (f"biaxial_m1-m{r}", "deform", 300, -1.0, -float(r), n, 1)
        for r, n in [("0.25", 30), ("0.5", 30), ("0.75", 30), ("1", 30)]
    ],
    *[
        (f"biaxial_1-{r}", "deform", 300, 1.0, float(r), n, 1)
        for r, n in [("0.25", 23), ("0.5", 26), ("0.75", 23), ("1", 22)]
    ],
    *[
        (f"biaxial_1-m{r}", "deform", 300, 1.0, -float(r), n, 1)
        for r, n in [("0.25", 28), ("0.5", 29), ("0.75", 30), ("1", 30)]
    ],
]
FINAL_STRAIN = 0.3  # Tan et al.: +-0.3 in x
STRAIN_STEPS = 1000  # 1 ps at 1 fs: 0.3 / ps, 3000 x Tan et al.'s 1e-4 / ps
POISSON = 0.17  # silica glass; contracts the free directions in place of Tan et al.'s barostat


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def record_time(name: str, wall: float, cpu: float) -> None:
    """One line per step in work/timings.jsonl (appends: two processes may run different methods)."""
    with open(WORK / "timings.jsonl", "a") as f:
        f.write(json.dumps({"step": name, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}) + "\n")


def timed(name: str, function, *args):
    log(f"{name} ...")
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    record_time(name, wall, cpu)
    log(f"{name} done: {wall:.0f} s wall, {cpu:.0f} s CPU")
    return result


def rows(path: Path) -> list[Atoms]:
    from mlipbias.datasets import load_dataset

    return load_dataset(path) if path.exists() else []


def done_keys(path: Path) -> set[str]:
    import ase.db

    if not path.exists():
        return set()
    with ase.db.connect(path) as db:
        return {row.get("sample_key") for row in db.select()}


# ------------------------------------------------------------------------------------------ cost


def step_cost() -> None:
    """Seconds (CPU) of one training step on one structure: forces by the double backward, then Adam."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from mlipbias.models.painn import PaiNNModel, PaiNNSettings
    from mlipbias.models.painn_training import _labelled, painn_batch_loss
    from mlipbias.models.training import TrainingSettings, UncertaintySettings
    from mlipbias.potentials import BKS
    from mlipbias.structures import default_structure

    base = default_structure("sio2-amorphous-96")
    cells = {"96": base, "768": base.repeat(2)}
    t = TrainingSettings(loss="mae", energy_weight=0.1, force_weight=1.0, stress_weight=0.0)
    uq = UncertaintySettings(methods=("gmm",))
    result = {}
    for arch, painn in (("paper", {}), ("study", SCALE["painn"])):
        settings = PaiNNSettings(**painn)
        for size, atoms in cells.items():
            atoms = atoms.copy()
            atoms.rattle(0.05, seed=1)
            atoms.calc = BKS()
            atoms.calc = SinglePointCalculator(
                atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces()
            )
            model = PaiNNModel(["O", "Si"], settings, n_members=1, methods=["gmm"])
            items = _labelled([atoms], model.elements, settings.cutoff, True, "cost")
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
            times = []
            for _ in range(2 if size == "96" else 1):
                started = time.process_time()
                optimizer.zero_grad()
                loss, _, _ = painn_batch_loss(model, items, t, uq, "cpu", train=True)
                loss.backward()
                optimizer.step()
                times.append(time.process_time() - started)
            result[f"{arch}/{size}"] = min(times)
            log(f"  training step, {arch} architecture, {size} atoms: {min(times):.3f} s CPU")
    per_atom = result["paper/768"] / 768
    result["paper_protocol_core_days"] = per_atom * PAPER_ATOMS * 1272 * 1000 * 3 / 86400
    (WORK / "cost.json").write_text(json.dumps(result, indent=1) + "\n")


# ------------------------------------------------------------------------------------------ data


def _condition_frames(condition, seed: int) -> list[Atoms]:
    """Frames of one Table S1 condition, BKS-driven Langevin MD of the shipped 96-atom cell."""
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from mlipbias.potentials import BKS
    from mlipbias.structures import default_structure

    name, kind, temperature, rate_x, rate_y, _, n_frames = condition
    atoms = default_structure("sio2-amorphous-96")
    atoms.calc = BKS()
    atoms.set_constraint(FixCom())
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)  # as generated
    Stationary(atoms)
    dt = SCALE["md_timestep_fs"] * units.fs
    dyn = Langevin(atoms, dt, temperature_K=temperature, friction=0.02 / units.fs, fixcm=False, rng=rng)
    dyn.run(300)  # equilibration
    frames = []
    if kind == "equilibrate":
        for _ in range(n_frames):
            dyn.run(100)
            frames.append(atoms.copy())
    elif kind == "cool":
        steps, end = 2000, 300.0  # 2300 K -> 300 K in 2 ps: 1000 K/ps (Tan et al.: 1 K/ps)
        every = steps // n_frames
        for step in range(1, steps + 1):
            dyn.set_temperature(temperature_K=temperature + (end - temperature) * step / steps)
            dyn.run(1)
            if step % every == 0:
                frames.append(atoms.copy())
    else:
        cell0 = atoms.cell.array.copy()
        every = STRAIN_STEPS // n_frames
        for step in range(1, STRAIN_STEPS + 1):
            dyn.run(1)
            if step % 10 == 0 or step % every == 0:
                ex = FINAL_STRAIN * rate_x * step / STRAIN_STEPS
                ey = FINAL_STRAIN * rate_y * step / STRAIN_STEPS
                # Free directions contract by Poisson's ratio, in place of Tan et al.'s barostat.
                if rate_y == 0:
                    ey, ez = -POISSON * ex, -POISSON * ex
                else:
                    ez = -POISSON / (1 - POISSON) * (ex + ey)
                atoms.set_cell(cell0 * np.array([1 + ex, 1 + ey, 1 + ez])[:, None], scale_atoms=True)
            if step % every == 0:
                frames.append(atoms.copy())
    for frame in frames:
        frame.set_constraint()
        frame.info["condition"] = name
    return frames[:n_frames]


def step_data() -> None:
    from mlipbias.datasets import append_labelled

    path = WORK / "initial.db"
    have = done_keys(path)
    for index, condition in enumerate(TABLE_S1):
        name, n_frames = condition[0], condition[6]
        keys = [f"table_s1/{name}/{j}" for j in range(n_frames)]
        if all(k in have for k in keys):
            continue
        frames = _condition_frames(condition, seed=index)
        for j, frame in enumerate(frames):
            append_labelled(path, frame, "bks", name="SiO2", key=keys[j], condition=name, frame_index=j)
        log(f"  {name}: {len(frames)} frames")
    _split()


def _split() -> None:
    """80/20 training/validation split of the initial data (seeded), as Tan et al."""
    data = rows(WORK / "initial.db")
    order = np.random.default_rng(0).permutation(len(data))
    n_val = round(0.2 * len(data))
    split = {"validation": sorted(order[:n_val].tolist()), "training": sorted(order[n_val:].tolist())}
    (WORK / "split.json").write_text(json.dumps(split) + "\n")


def initial_sets() -> tuple[list[Atoms], list[Atoms]]:
    data = rows(WORK / "initial.db")
    split = json.loads((WORK / "split.json").read_text())
    return [data[i] for i in split["training"]], [data[i] for i in split["validation"]]


# ------------------------------------------------------------------------------------------ training


def _settings(method: str, seed: int, epochs: int | None = None):
    from mlipbias.models.painn import PaiNNSettings
    from mlipbias.models.training import TrainingSettings, UncertaintySettings

    head = method in ("mve", "evidential")
    uq = UncertaintySettings(
        methods=(method,),
        n_members=SCALE["n_members"],
        gmm_max_components=SCALE["gmm_max_components"],
        head_training="joint",
        head_energy_nll=not head,  # MVE, evidential: the NLL on forces alone, as Tan et al.
        nll_beta=0.0,  # MVE: Tan et al.'s plain Gaussian NLL (SI Eq. 3), not the beta-NLL default
    )
    training = TrainingSettings(
        epochs=epochs or SCALE["epochs"],
        batch_size=SCALE["batch_size"],
        learning_rate=SCALE["head_learning_rate"] if head else SCALE["learning_rate"],
        schedule="plateau",
        decay_factor=0.5,
        decay_patience=SCALE["decay_patience"],
        early_stopping_patience=10_000,
        loss="mae",
        energy_weight=0.1,
        force_weight=0.0 if head else 1.0,  # MVE / evidential: the force term is the NLL (Tan et al. SI)
        nll_weight=1.0,
        stress_weight=0.0,
        seed=seed,
        device="cpu",
    )
    return PaiNNSettings(**SCALE["painn"]), uq, training


def train_model(
    directory: Path,
    method: str,
    train: list[Atoms],
    validation: list[Atoms],
    seed: int,
    epochs=None,
    init_model=None,
):
    from mlipbias.models.painn import load_painn, save_painn
    from mlipbias.models.painn_training import train_painn

    path = directory / "model.pt"
    if path.exists():
        return load_painn(path)
    settings, uq, training = _settings(method, seed, epochs)
    result = train_painn(
        train,
        validation,
        settings=settings,
        uncertainty=uq,
        training=training,
        output_dir=directory,
        resume=True,
        progress=False,
        log=lambda s: log("  " + s),
        init_model=init_model,
    )
    save_painn(result.model, path, json.dumps({"method": method, "seed": seed, "n_train": len(train)}))
    return result.model


def adversarial_set(generation: int, method: str) -> list[Atoms]:
    """Labelled adversarial samples a method's models found up to (not including) ``generation``."""
    found = []
    for g in range(1, generation):
        found += rows(WORK / f"gen{g}" / method / "adversarial.db")
    return found


# ------------------------------------------------------------------------------------------ test set


def step_testset() -> None:
    """Tan et al.: 402 adversarial samples of trial runs, binned by energy, 2 of largest force per bin."""
    from mlipbias.datasets import append_labelled
    from mlipbias.sampling import AdversarialSamplingSettings, adversarial_samples

    train, validation = initial_sets()
    model = train_model(WORK / "trial", "gmm", train, validation, seed=99)
    path = WORK / "test_candidates.db"
    have = done_keys(path)
    lrs = SCALE["test_learning_rates"]
    for k in range(SCALE["test_candidates"]):
        key = f"test/{k}"
        if key in have:
            continue
        settings = AdversarialSamplingSettings(
            iterations=SCALE["adv_iterations"],
            kT=SCALE["adv_kT"],
            learning_rate=lrs[k % len(lrs)],
            n_samples=1,
            energy_cutoff=None,
            max_attempts=3,
            seed=1000 + k,
        )
        result = adversarial_samples(model, train, method="gmm", settings=settings, progress=False)
        for sample in result.samples:
            try:
                append_labelled(
                    path, sample.atoms, "bks", name="SiO2", key=key, learning_rate=lrs[k % len(lrs)]
                )
            except ValueError as exc:  # e.g. two atoms closer than 0.5 A: no label, as Tan et al.'s dedup
                log(f"  test candidate {k} not labelled: {exc}")
    candidates = rows(path)
    e_min = min(a.get_potential_energy() / len(a) for a in train)
    excess = np.array([a.get_potential_energy() / len(a) - e_min for a in candidates])
    fmax = np.array([np.linalg.norm(a.get_forces(), axis=1).max() for a in candidates])
    edges = np.linspace(excess.min(), excess.max() + 1e-9, SCALE["test_bins"] + 1)
    chosen = []
    for b in range(SCALE["test_bins"]):
        inside = np.flatnonzero((excess >= edges[b]) & (excess < edges[b + 1]))
        chosen += inside[np.argsort(-fmax[inside])][:2].tolist()
    (WORK / "test.json").write_text(json.dumps({"indices": sorted(chosen)}) + "\n")


def test_set() -> list[Atoms]:
    candidates = rows(WORK / "test_candidates.db")
    return [candidates[i] for i in json.loads((WORK / "test.json").read_text())["indices"]]


# ------------------------------------------------------------------------------------------ sampling


def step_sample(generation: int, method: str, model) -> None:
    from mlipbias.datasets import append_labelled
    from mlipbias.sampling import AdversarialSamplingSettings, adversarial_samples

    train, _ = initial_sets()  # Tan et al.: starts and Eq. 16 over the initial training data
    path = WORK / f"gen{generation}" / method / "adversarial.db"
    have = done_keys(path)
    log_path = WORK / f"gen{generation}" / method / "adversarial.jsonl"
    for k in range(SCALE["adv_samples"]):
        key = f"adversarial/gen={generation}/{method}/{k}"
        if key in have:
            continue
        settings = AdversarialSamplingSettings(
            iterations=SCALE["adv_iterations"],
            kT=SCALE["adv_kT"],
            learning_rate=SCALE["adv_learning_rate"],
            n_samples=1,
            energy_cutoff=SCALE["adv_cutoff_per_atom"][generation] * len(train[0]),
            max_attempts=6,
            seed=10_000 * generation + 100 * METHODS.index(method) + k,
        )
        result = adversarial_samples(model, train, method=method, settings=settings, progress=False)
        entry = {"sample": k, "rejected": {str(a): r for a, r in result.rejected.items()}}
        for sample in result.samples:
            entry.update(uncertainty=sample.uncertainty, predicted_energy=sample.energy)
            try:
                append_labelled(
                    path, sample.atoms, "bks", name="SiO2", key=key, generation=generation, method=method
                )
            except ValueError as exc:
                entry["not_labelled"] = str(exc)
        with open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")


# ------------------------------------------------------------------------------------------ evaluation


def predictions(model, method: str, structures: list[Atoms]) -> dict:
    """Per structure energies and per atom U_i and squared force errors |dF_i|^2 / 3 (for the plots)."""
    out = {"energy": [], "energy_ref": [], "n_atoms": [], "U_i": [], "sq_err": []}
    for atoms in structures:
        ev = model.evaluate(model.graph(atoms), method, forces=True, calibrated=False)  # seed 003's raw U_i
        out["energy"].append(float(ev.energy[0]))
        out["energy_ref"].append(float(atoms.get_potential_energy()))
        out["n_atoms"].append(len(atoms))
        out["U_i"] += ev.atom_uncertainty.numpy().tolist()
        out["sq_err"] += (((ev.forces.numpy() - atoms.get_forces()) ** 2).sum(axis=1) / 3).tolist()
    return out


def step_evaluate(generation: int, method: str, model) -> None:
    from mlipbias.models.painn_training import evaluate_painn, jsonable_tables

    train, validation = initial_sets()
    sets = {"test": test_set(), "training": train, "validation": validation}
    own = rows(WORK / f"gen{generation}" / method / "adversarial.db")
    result = {"tables": {}, "points": {}}
    for name, structures in sets.items():
        result["tables"][name] = jsonable_tables(evaluate_painn(model, structures, validation))[method]
        result["points"][name] = predictions(model, method, structures)
    result["own_adversarial_points"] = predictions(model, method, own) if own else None
    (WORK / f"gen{generation}" / method / "evaluation.json").write_text(json.dumps(result) + "\n")


# ------------------------------------------------------------------------------------------ MD stability


def stable_time(model, start: Atoms, seed: int) -> dict:
    """Tan et al.'s stability test: NVT Nose-Hoover at 2500 K until the kinetic energy is 0, not finite or
    over 10000 kcal/mol (per 699 atoms), or two atoms are closer than 1.0 A."""
    from ase.md.nose_hoover_chain import NoseHooverChainNVT
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from mlipbias.models.painn import PaiNNCalculator
    from mlipbias.neighbors import neighbor_list

    s = SCALE
    atoms = start.copy()
    atoms.calc = PaiNNCalculator(model, uncertainty="none")
    MaxwellBoltzmannDistribution(atoms, temperature_K=s["stab_temperature"], rng=np.random.default_rng(seed))
    Stationary(atoms)
    dt = s["stab_timestep_fs"]
    dyn = NoseHooverChainNVT(
        atoms, dt * units.fs, temperature_K=s["stab_temperature"], tdamp=100 * dt * units.fs
    )
    ke_max = s["stab_ke_max_per_atom"] * len(atoms)
    for step in range(1, s["stab_steps"] + 1):
        try:
            dyn.run(1)
        except Exception as exc:  # noqa: BLE001 - a model that blows up fails the test
            return {"fs": (step - 1) * dt, "reason": f"error: {exc}"}
        ke = atoms.get_kinetic_energy()
        if not math.isfinite(ke) or ke <= 0 or ke > ke_max:
            return {"fs": (step - 1) * dt, "reason": f"kinetic energy {ke:.4g} eV"}
        if not np.isfinite(atoms.positions).all() or len(neighbor_list("i", atoms, s["stab_min_distance"])):
            return {"fs": (step - 1) * dt, "reason": "two atoms closer than 1.0 A"}
    return {"fs": s["stab_steps"] * dt, "reason": "stable"}


def step_md(generation: int, method: str, model) -> None:
    data = rows(WORK / "initial.db")
    starts = [a for a in data if a.info.get("condition") == "2500 K"]
    rng = np.random.default_rng(generation)
    runs = []
    for k in range(SCALE["stab_trajectories"]):
        start = starts[int(rng.integers(len(starts)))]
        runs.append(stable_time(model, start, seed=100 * generation + k))
        log(f"  MD {method} gen {generation} #{k}: {runs[-1]}")
    (WORK / f"gen{generation}" / method / "md.json").write_text(json.dumps(runs) + "\n")


# ------------------------------------------------------------------------------------------ driver


def run_generation(generation: int, method: str, post: bool = False) -> None:
    from mlipbias.models.painn import load_painn

    directory = WORK / f"gen{generation}" / method
    train, validation = initial_sets()
    extra = adversarial_set(generation, method)
    seed = 10 * generation + METHODS.index(method)
    name = f"gen{generation}/{method}"
    if not (directory / "model.pt").exists():
        log(f"{name}: training on {len(train)} initial + {len(extra)} adversarial structures")
    previous, epochs = None, SCALE["epochs"]
    if generation > 1:  # fine-tuned from the previous generation's model (README: scaling)
        previous = load_painn(WORK / f"gen{generation - 1}" / method / "model.pt")
        epochs = SCALE["finetune_epochs"]
    model = timed(
        f"{name}/train", train_model, directory, method, train + extra, validation, seed, epochs, previous
    )
    if generation < GENERATIONS[-1] and not (directory / "sampled").exists():
        timed(f"{name}/sample", step_sample, generation, method, model)
        (directory / "sampled").touch()
    if not post:
        post_process(generation, method)


def post_process(generation: int, method: str) -> bool:
    """Evaluation and MD of a trained model (after its sampling); False when it is not ready."""
    from mlipbias.models.painn import load_painn

    directory = WORK / f"gen{generation}" / method
    name = f"gen{generation}/{method}"
    ready = (directory / "model.pt").exists() and (
        generation == GENERATIONS[-1] or (directory / "sampled").exists()
    )
    if not ready:
        return False
    model = load_painn(directory / "model.pt")
    if not (directory / "evaluation.json").exists():
        timed(f"{name}/evaluate", step_evaluate, generation, method, model)
    if not (directory / "md.json").exists():
        timed(f"{name}/md", step_md, generation, method, model)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["cost", "data", "testset", "generations", "report"])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="generations of these methods only (e.g. two processes, one per core)",
    )
    parser.add_argument(
        "--post",
        choices=["separate", "only"],
        help="separate: leave evaluation and MD to another process; only: be that process",
    )
    parser.add_argument(
        "--generations",
        nargs="+",
        type=int,
        choices=GENERATIONS,
        default=list(GENERATIONS),
        help="with --post only: evaluate and run MD of these generations only",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    WORK.mkdir(exist_ok=True)
    steps = [args.only] if args.only else ["cost", "data", "testset", "generations", "report"]
    if "cost" in steps and not (WORK / "cost.json").exists():
        timed("cost", step_cost)
    if "data" in steps and not (WORK / "split.json").exists():
        timed("data", step_data)
    if "testset" in steps and not (WORK / "test.json").exists():
        timed("testset", step_testset)
    if "generations" in steps:
        for generation in GENERATIONS:
            for method in args.methods:
                if args.post != "only":
                    run_generation(generation, method, post=args.post == "separate")
    if args.post == "only":
        pending = [(g, m) for g in args.generations for m in args.methods]
        while pending:
            pending = [(g, m) for g, m in pending if not post_process(g, m)]
            if pending:
                time.sleep(20)
    if "report" in steps:
        from report import write_report  # noqa: PLC0415 - the sibling module of this script

        write_report(WORK, HERE, SCALE, TABLE_S1)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    main()
