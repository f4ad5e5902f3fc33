"""``mlipbias evaluate``: accuracy and uncertainty metrics of a model on labelled data, with plots.

Prints the seed-003 table (energy and force RMSE/MAE, Spearman, ROC-AUC at the 20th error
percentile, miscalibration area, calibrated NLL with ``--calibration-data``) for every uncertainty
method of the model, and writes ``metrics.json``, ``predictions.npz``, ``parity.png``,
``uncertainty_vs_error.png`` and ``calibration.png`` into ``--out``.
"""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics table (accuracy, Spearman, ROC-AUC, miscalibration, cNLL) and plots of a model",
        description=(
            "Evaluate a .mlip model on an ase.db of labelled structures: energies, forces and the "
            "uncertainty of every method, the metrics table of seed 003, JSON and PNG plots."
        ),
    )
    p.add_argument("--model", required=True, help="the .mlip model (or a PaiNN model file of mlipbias train)")
    p.add_argument("--data", required=True, help="ase.db of labelled structures to evaluate on")
    p.add_argument("--selection", default=None, help="ase.db selection of --data (and of --calibration-data)")
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
        help="ase.db of labelled structures (e.g. the validation split) to fit the cNLL variance a U^2 + b",
    )
    p.add_argument("--no-forces", dest="forces", action="store_false", help="energies only (much faster)")
    p.add_argument("--out", default="evaluation", help="output folder (default: evaluation)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:
    import numpy as np

    from mlipbias.datasets import load_dataset
    from mlipbias.models import load_model
    from mlipbias.models.evaluation import evaluate_methods, format_evaluation, json_table, write_plots

    methods = args.uncertainty
    if methods is not None and "none" in methods:
        if len(methods) > 1:
            raise ValueError(f"--uncertainty none cannot be combined with methods, got {methods}")
        methods = []
    if _is_torch_file(args.model):
        return _evaluate_painn(args, methods)
    model = load_model(args.model)
    structures = load_dataset(args.data, args.selection)
    if not structures:
        raise ValueError(f"{args.data}: no structures match the selection {args.selection!r}")
    data = model.prepare(structures, progress=args.progress, neighbours=args.forces)
    calibration = None
    if args.calibration_data:
        calibration = model.prepare(
            load_dataset(args.calibration_data, args.selection),
            progress=args.progress,
            neighbours=args.forces,
        )
    evaluation = evaluate_methods(
        model,
        data,
        methods,
        calibration=calibration,
        forces=None if args.forces else False,
        progress=args.progress,
    )
    print(f"{args.model} on {args.data} ({len(data)} structures, {int(data.n_atoms.sum())} atoms):")
    print(format_evaluation(evaluation))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": str(args.model),
        "data": str(args.data),
        "selection": args.selection,
        "calibration_data": args.calibration_data,
        "n_structures": len(data),
        "units": {"energy": "eV/atom", "forces": "eV/A per component", "uncertainty": "eV, eV/A"},
        "metrics": json_table(evaluation.table),
        "coverage": evaluation.coverage,
    }
    (out / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    arrays = {"energy_ref": data.energy, "n_atoms": data.n_atoms}
    if data.forces is not None:
        arrays["forces_ref"] = data.forces
    for method, p in evaluation.predictions.items():
        prefix = f"{method}_" if method else ""
        arrays[f"{prefix}energy"] = p.energy
        for name in ("forces", "uncertainty", "atom_uncertainty"):
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
    """The seed-003 table of a PaiNN model (docs/painn.md); writes metrics.json (no plots)."""
    from mlipbias.datasets import load_dataset
    from mlipbias.models.painn import load_painn
    from mlipbias.models.painn_training import evaluate_painn, jsonable_tables
    from mlipbias.uq.metrics import format_table

    if not args.forces:
        raise ValueError("--no-forces: PaiNN uncertainties are force uncertainties, evaluate with forces")
    model = load_painn(args.model)
    structures = load_dataset(args.data, args.selection)
    if not structures:
        raise ValueError(f"{args.data}: no structures match the selection {args.selection!r}")
    calibration = load_dataset(args.calibration_data, args.selection) if args.calibration_data else None
    tables = evaluate_painn(model, structures, calibration, methods=methods)
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
    print(f"wrote {out / 'metrics.json'}")
    return 0
