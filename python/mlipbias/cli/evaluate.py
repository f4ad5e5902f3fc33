"""``mlipbias evaluate``: accuracy and uncertainty metrics of a model on labelled data, with plots.

Prints the table of Tan et al. (2023) (energy and force RMSE/MAE, Spearman, ROC-AUC at the 20th error
percentile, miscalibration area, calibrated NLL with ``--calibration-data``) for every uncertainty
method of the model, and writes ``metrics.json``, ``predictions.npz``, ``parity.png``,
``uncertainty_vs_error.png`` and ``calibration.png`` into ``--out``.

``--model`` is a .mlip file or the output folder of ``mlipbias train``; given the folder and no
``--data``, the run's held-out test split (``split.json``) is scored, calibrated on the run's
validation split, and the output says so.
"""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics table (accuracy, Spearman, ROC-AUC, miscalibration, cNLL) and plots of a model",
        description=(
            "Evaluate a .mlip model on labelled structures (an ase.db or any file ase.io reads): energies, "
            "forces, stresses and the uncertainty of every method, the metrics table of Tan et al. (2023), "
            "JSON and PNG plots. Given a training run's folder as --model, scores the run's held-out test "
            "split."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="the .mlip model (or a PaiNN model file of mlipbias train), or the output folder of "
        "`mlipbias train` (its model and, by default, its test split)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="labelled structures to evaluate on: an ase.db, a revised-MD17 .npz or any file ase.io reads "
        "(extxyz, ...); required unless --model is a run folder",
    )
    p.add_argument(
        "--split",
        choices=("test", "validation", "train"),
        default="test",
        help="with a run folder and no --data: which part of the run's split.json to score (default: test)",
    )
    p.add_argument("--selection", default=None, help="ase.db selection of --data (and of --calibration-data)")
    for quantity, where in (("energy", "atoms.info"), ("forces", "atoms.arrays"), ("stress", "atoms.info")):
        p.add_argument(
            f"--{quantity}-key",
            default=None,
            help=f"name of the reference {quantity} in the file ({where}; default: {quantity}, or the run's)",
        )
    p.add_argument(
        "--uncertainty",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="uncertainty methods to evaluate (default: all the model has); 'none' for accuracy only",
    )
    p.add_argument(
        "--calibration-data",
        default=None,
        help="labelled structures (e.g. the validation split) to fit the cNLL variance a U^2 + b "
        "(default with a run folder and no --data: the run's validation split)",
    )
    p.add_argument("--no-forces", dest="forces", action="store_false", help="energies only (much faster)")
    p.add_argument(
        "-o",
        "--out",
        "--output",
        dest="out",
        default="evaluation",
        help="output folder (default: evaluation)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run_evaluate)


def run_split(run: Path, part: str, key_names: dict | None = None, require_forces: bool = True):
    """The structures of ``part`` (train, validation or test) of the training run in folder ``run``,
    in the order of its ``split.json``, and a sentence saying what they are. Labels are read under the
    run's label keys, except those named in ``key_names`` (e.g. ``{"energy": "REF_energy"}``)."""
    from mlipbias.datasets import LabelKeys, read_labelled

    split_path = run / "split.json"
    if not split_path.is_file():
        raise FileNotFoundError(
            f"{run} is a folder without split.json: not the output folder of `mlipbias train`"
        )
    split = json.loads(split_path.read_text())
    path = split.get("data") if part == "train" else split.get(f"{part}_data", split.get("data"))
    ids = split.get(part)
    if not path or ids is None:
        raise ValueError(f"{split_path} names no file or ids for the {part} split")
    if not ids:
        raise ValueError(f"the {part} split of {run} is empty (see {split_path})")
    keys = LabelKeys(**{**split.get("label_keys", {}), **(key_names or {})})
    structures = read_labelled(path, split.get("selection"), keys=keys, require_forces=require_forces)
    kinds = split.get("ids", {})  # absent in runs of older versions: ase.db row ids
    id_key = "frame" if isinstance(kinds, dict) and kinds.get(part, "").startswith("0-based") else "db_id"
    by_id = {a.info[id_key]: a for a in structures}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(
            f"{path} no longer holds {len(missing)} structures of the run's {part} split (e.g. {id_key} "
            f"{missing[0]}); it changed since the run"
        )
    what = f"the run's {part} split: {len(ids)} structures of {path} ({id_key} listed in {split_path})"
    return [by_id[i] for i in ids], what


def check_elements(structures, model, model_path, source) -> None:
    """ValueError naming the file, the structure and the model for an element the model lacks."""
    for k, atoms in enumerate(structures):
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(model.elements))
        if unknown:
            raise ValueError(
                f"{source}: structure {k} ({atoms.get_chemical_formula()}) contains {', '.join(unknown)}, "
                f"which model {model_path} does not handle (its elements: {' '.join(model.elements)})"
            )


def run_evaluate(args) -> int:
    import numpy as np

    from mlipbias.datasets import LabelKeys, read_labelled
    from mlipbias.models import load_model
    from mlipbias.models.evaluation import evaluate_methods, format_evaluation, json_table, write_plots

    methods = args.uncertainty
    if methods is not None and "none" in methods:
        if len(methods) > 1:
            raise ValueError(f"--uncertainty none cannot be combined with methods, got {methods}")
        methods = []
    model_path = Path(args.model)
    if model_path.is_file() and _is_torch_file(model_path):
        if args.data is None:
            raise ValueError("give --data to evaluate a PaiNN model file")
        return _evaluate_painn(args, methods)
    run = model_path if model_path.is_dir() else None
    if run is not None:
        split_path = run / "split.json"
        name = (
            json.loads(split_path.read_text()).get("model", "model.mlip")
            if split_path.is_file()
            else "model.mlip"
        )
        model_path = run / name
        if not model_path.is_file():
            raise FileNotFoundError(f"{run} holds no {name}: not a finished `mlipbias train` run")
        if _is_torch_file(model_path):
            raise ValueError(
                f"{run} is a PaiNN run: give its model file and the data, --model {model_path} --data D"
            )
    model = load_model(model_path)
    given = {q: getattr(args, f"{q}_key") for q in ("energy", "forces", "stress")}
    given = {q: k for q, k in given.items() if k}
    read = {"keys": LabelKeys(**given), "require_forces": args.forces}
    calibration_structures = None
    if args.data is None:
        if run is None:
            raise ValueError("give --data, or a training run's folder as --model to score its test split")
        if args.selection is not None:
            raise ValueError("--selection applies to --data; the run's split has its own selection")
        structures, what = run_split(run, args.split, given, args.forces)
        if args.calibration_data is None:
            calibration_structures, _ = run_split(run, "validation", given, args.forces)
            what += "; calibrated on the run's validation split"
        data_name = str(run / "split.json")
    else:
        structures = read_labelled(args.data, args.selection, **read)
        if not structures:
            raise ValueError(f"{args.data}: no structures match the selection {args.selection!r}")
        what = f"all {len(structures)} structures of {args.data}" + (
            f" matching {args.selection!r}" if args.selection else ""
        )
        data_name = args.data
    print(f"scoring {what}")
    check_elements(structures, model, model_path, data_name)

    data = model.prepare(structures, progress=args.progress, neighbours=args.forces)
    calibration = None
    if args.calibration_data:
        calibration_structures = read_labelled(args.calibration_data, args.selection, **read)
        check_elements(calibration_structures, model, model_path, args.calibration_data)
    if calibration_structures is not None:
        calibration = model.prepare(calibration_structures, progress=args.progress, neighbours=args.forces)
    evaluation = evaluate_methods(
        model,
        data,
        methods,
        calibration=calibration,
        forces=None if args.forces else False,
        progress=args.progress,
    )
    print(f"{model_path} on {what} ({int(data.n_atoms.sum())} atoms):")
    print(format_evaluation(evaluation))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": str(model_path),
        "data": str(data_name),
        "scored": what,
        "selection": args.selection,
        "calibration_data": args.calibration_data,
        "n_structures": len(data),
        "units": {
            "energy": "eV/atom",
            "forces": "eV/A per component",
            "stress": "eV/A^3 per component",
            "uncertainty": "eV, eV/A",
        },
        "metrics": json_table(evaluation.table),
        "coverage": evaluation.coverage,
    }
    (out / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    arrays = {"energy_ref": data.energy, "n_atoms": data.n_atoms}
    if data.forces is not None:
        arrays["forces_ref"] = data.forces
    if data.stress is not None:
        arrays["stress_ref"], arrays["stress_mask"] = data.stress, data.stress_mask
    for method, p in evaluation.predictions.items():
        prefix = f"{method}_" if method else ""
        arrays[f"{prefix}energy"] = p.energy
        for name in ("forces", "stress", "uncertainty", "atom_uncertainty"):
            value = getattr(p, name)
            if value is not None:
                arrays[f"{prefix}{name}"] = value
    np.savez_compressed(out / "predictions.npz", **arrays)
    plots = write_plots(evaluation, data, out)
    print(f"wrote {out / 'metrics.json'}, {out / 'predictions.npz'}, " + ", ".join(str(p) for p in plots))
    return 0


def _is_torch_file(path) -> bool:
    """PaiNN model files are torch (zip) files; .mlip files start with their own magic string."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _evaluate_painn(args, methods) -> int:
    """The seed-003 table of a PaiNN model (docs/painn.md); writes metrics.json, predictions.npz and plots."""
    import numpy as np

    from mlipbias.datasets import load_dataset
    from mlipbias.models.painn import load_painn
    from mlipbias.models.painn_training import evaluate_painn, jsonable_tables, write_painn_plots
    from mlipbias.uq.metrics import format_table

    if not args.forces:
        raise ValueError("--no-forces: PaiNN uncertainties are force uncertainties, evaluate with forces")
    model = load_painn(args.model)
    structures = load_dataset(args.data, args.selection)
    if not structures:
        raise ValueError(f"{args.data}: no structures match the selection {args.selection!r}")
    calibration = load_dataset(args.calibration_data, args.selection) if args.calibration_data else None
    kept: dict = {}
    tables = evaluate_painn(model, structures, calibration, methods=methods, keep=kept)
    print(f"{args.model} (PaiNN) on {args.data} ({len(structures)} structures):")
    for method, table in tables.items():
        print(f"{method}:\n{format_table(table)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": str(args.model),
        "data": str(args.data),
        "selection": args.selection,
        "calibration_data": args.calibration_data,
        "n_structures": len(structures),
        "units": {"energy": "eV/atom", "forces": "eV/A per component", "uncertainty": "docs/painn.md"},
        "metrics": jsonable_tables(tables),
    }
    (out / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    first = next(iter(kept.values()))[0]
    arrays = {"energy_ref": first.energy_ref, "n_atoms": first.n_atoms, "forces_ref": first.forces_ref}
    for method, (p, _) in kept.items():
        prefix = "" if method == "none" else f"{method}_"
        arrays[f"{prefix}energy"], arrays[f"{prefix}forces"] = p.energy, p.forces
        if p.atom_uncertainty is not None:
            arrays[f"{prefix}atom_uncertainty"] = p.atom_uncertainty
    np.savez_compressed(out / "predictions.npz", **arrays)
    plots = write_painn_plots(kept, out)
    print(f"wrote {out / 'metrics.json'}, {out / 'predictions.npz'}, " + ", ".join(str(p) for p in plots))
    return 0
