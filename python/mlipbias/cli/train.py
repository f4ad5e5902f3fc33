"""``mlipbias train CONFIG.yaml``: train a BP-NN with uncertainties from a YAML configuration.

``mlipbias train --template`` prints a commented configuration with every default; ``--check``
validates a configuration without training; ``--resume`` continues an interrupted run from the
checkpoint in its output folder. The run writes into ``output.directory``: ``split.json`` (database
ids of the training, validation and test structures), ``metrics.jsonl`` (one line per epoch),
``checkpoint.pt``, ``best.mlip``, the final model, and ``test_metrics.json`` with the metrics table
of the test split, which is also printed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a BP-NN with uncertainties (ensemble, MVE, evidential, GMM, gradient features)",
        description=(
            "Train a Behler-Parrinello network with the uncertainty methods of the configuration, calibrate "
            "them on the validation split, save the .mlip model and print the metrics of the test split. "
            "Start from `mlipbias train --template > train.yaml`."
        ),
    )
    p.add_argument("config", nargs="?", help="the YAML configuration")
    p.add_argument("--template", action="store_true", help="print a commented default configuration and exit")
    p.add_argument("--check", action="store_true", help="validate the configuration and exit")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in the output folder")
    p.add_argument(
        "--threads", type=int, default=None, help="torch and OpenMP threads (default: torch's choice)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from mlipbias.models.config import TEMPLATE, load_config

    if args.template:
        sys.stdout.write(TEMPLATE)
        return 0
    if not args.config:
        raise ValueError("give a configuration file (or --template to print one)")
    config = load_config(args.config)
    if args.check:
        print(f"{args.config}: configuration is valid")
        return 0
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    run_training(config, resume=args.resume, progress=args.progress)
    return 0


def _split(config, progress: bool):
    """(train, validation, test) lists of Atoms and the database ids of each."""
    from mlipbias.datasets import load_dataset, split_dataset

    d = config.data
    structures = load_dataset(d.path, d.selection)
    if not structures:
        raise ValueError(f"{d.path}: no structures match the selection {d.selection!r}")
    fractions = [0.0 if d.validation_path else d.validation_fraction, 0.0 if d.test_path else d.test_fraction]
    parts = split_dataset(len(structures), [1.0 - sum(fractions), *fractions], seed=d.seed)
    train, validation, test = ([structures[i] for i in part] for part in parts)
    if d.validation_path:
        validation = load_dataset(d.validation_path, d.selection)
    if d.test_path:
        test = load_dataset(d.test_path, d.selection)
    for name, part in (("training", train), ("validation", validation)):
        if not part:
            raise ValueError(f"the {name} split is empty: use more data or other fractions in data")
    return train, validation, test


def run_training(config, *, resume: bool = False, progress: bool = True, log=None):
    """Train, save and evaluate as the configuration says; returns (model, evaluation or None)."""
    from mlipbias.models import AtomsData, save_model, train
    from mlipbias.models.training import log_line

    log = log or log_line
    from mlipbias.models.config import make_descriptor
    from mlipbias.models.evaluation import evaluate_methods, format_evaluation, json_table

    out = Path(config.output.directory)
    out.mkdir(parents=True, exist_ok=True)
    train_atoms, val_atoms, test_atoms = _split(config, progress)
    ids = {
        name: [a.info.get("db_id") for a in part]
        for name, part in (("train", train_atoms), ("validation", val_atoms), ("test", test_atoms))
    }
    (out / "split.json").write_text(json.dumps({"data": config.data.path, **ids}) + "\n")
    elements = {s for atoms in train_atoms for s in atoms.get_chemical_symbols()}
    periodic = all(atoms.pbc.all() for atoms in train_atoms)
    descriptor = make_descriptor(config.descriptor, elements, config.model, periodic)
    log(
        f"{len(train_atoms)} training, {len(val_atoms)} validation, {len(test_atoms)} test structures; "
        f"{descriptor}"
    )
    t = config.training
    pairs_for_training = (
        t.force_weight > 0
        or t.stress_weight > 0
        or any(m in config.uncertainty.methods for m in ("mve", "evidential"))
    )
    log("computing descriptors")
    train_data = AtomsData(train_atoms, descriptor, keep_neighbours=pairs_for_training, progress=progress)
    # Validation and test keep their pairs when they have forces: force metrics and per-atom calibration.
    val_data = AtomsData(val_atoms, descriptor, progress=progress)
    test_data = AtomsData(test_atoms, descriptor, progress=progress) if test_atoms else None
    description = json.dumps({"trained_with": config.to_dict()}, default=list)
    result = train(
        train_data,
        val_data,
        model=config.model,
        uncertainty=config.uncertainty,
        training=config.training,
        output_dir=out,
        resume=resume,
        progress=progress,
        log=log,
        description=description,
    )
    path = save_model(result.model, config.model_path)
    log(f"model written to {path} (uncertainty methods: {' '.join(result.model.methods) or 'none'})")
    evaluation = None
    if test_data is not None:
        evaluation = evaluate_methods(result.model, test_data, calibration=val_data, progress=progress)
        log(f"test split ({len(test_data)} structures):")
        log(format_evaluation(evaluation))
        payload = {
            "model": str(path),
            "n_structures": len(test_data),
            "metrics": json_table(evaluation.table),
            "coverage": evaluation.coverage,
        }
        (out / "test_metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    return result.model, evaluation
