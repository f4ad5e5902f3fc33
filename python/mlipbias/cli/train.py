"""``mlipbias train CONFIG.yaml``: train a BP-NN with uncertainties from a YAML configuration.

``mlipbias train --template`` prints a commented configuration with every default; ``--check``
validates a configuration and that its data files exist, without training; ``--resume`` continues an
interrupted run from the checkpoint in its output folder; a folder that holds a run is refused
unless ``--resume`` or ``--overwrite`` is given. The data are an ase.db or any file ase.io reads,
labels found under ``data.energy_key``, ``forces_key``, ``stress_key``. The run writes into
``output.directory``: ``split.json`` (the files and the row ids or frames of the training,
validation and test structures), ``metrics.jsonl`` and ``metrics.csv`` (one line per epoch),
``learning_curve.png``, ``checkpoint.pt``, ``best.mlip``, the final model, and
``test_metrics.json`` with the metrics table of the test split, which is also printed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a BP-NN or PaiNN with uncertainties (ensemble, MVE, evidential, GMM, gradient features)",
        description=(
            "Train a Behler-Parrinello network (or GM-NN or PaiNN: model.kind) on energies, forces and "
            "stresses (an ase.db or any file ase.io reads) with the uncertainty methods of the "
            "configuration, calibrate them on the validation split, save the model and print the metrics "
            "of the test split. "
            "Start from `mlipbias train --template > train.yaml`."
        ),
    )
    p.add_argument("config", nargs="?", help="the YAML configuration")
    p.add_argument("--template", action="store_true", help="print a commented default configuration and exit")
    p.add_argument("--check", action="store_true", help="validate the configuration and exit")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in the output folder")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in the output folder (without it, a folder holding a run is refused)",
    )
    p.add_argument(
        "--init-model",
        metavar="M.mlip",
        default=None,
        help="warm start: begin from the weights of this model (same descriptor and architecture)",
    )
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
    check_data_paths(config)
    if args.check:
        print(f"{args.config}: configuration is valid")
        return 0
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in the output folder, --overwrite replaces it: give one")
    existing = run_files(config)
    if existing and not args.resume:
        if not args.overwrite:
            raise ValueError(
                f"{config.output.directory} holds a training run ({', '.join(p.name for p in existing)}): "
                "continue it with --resume, replace it with --overwrite, or set output.directory to a new "
                "folder"
            )
        for path in existing:
            path.unlink()
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.init_model and not Path(args.init_model).is_file():
        raise FileNotFoundError(f"--init-model {args.init_model}: no such model file")
    run_training(config, resume=args.resume, progress=args.progress, init_model=args.init_model)
    return 0


# What a run writes into output.directory (besides the model file of output.model).
RUN_OUTPUTS = (
    "checkpoint.pt",
    "best.mlip",
    "metrics.jsonl",
    "metrics.csv",
    "learning_curve.png",
    "split.json",
    "test_metrics.json",
)


def run_files(config) -> list[Path]:
    """The files of a run that ``config`` would write and that exist already."""
    out = Path(config.output.directory)
    return [p for p in (config.model_path, *(out / name for name in RUN_OUTPUTS)) if p.is_file()]


def check_data_paths(config) -> None:
    """FileNotFoundError naming the config key of a data file that does not exist."""
    for key in ("path", "validation_path", "test_path"):
        value = getattr(config.data, key)
        if value and not Path(value).is_file():
            raise FileNotFoundError(f"config key data.{key}: {value} does not exist (or is not a file)")


def _split(config, progress: bool):
    """(train, validation, test) lists of Atoms; each carries its row id or frame in ``info``."""
    from mlipbias.datasets import read_labelled, split_dataset

    d = config.data
    # Forces are needed by the force loss and by the heads' force variances.
    heads = any(m in ("mve", "evidential") for m in config.uncertainty.methods)
    options = {"keys": d.label_keys, "require_forces": config.training.force_weight > 0 or heads}
    structures = read_labelled(d.path, d.selection, **options)
    if not structures:
        raise ValueError(f"{d.path}: no structures match the selection {d.selection!r}")
    fractions = [0.0 if d.validation_path else d.validation_fraction, 0.0 if d.test_path else d.test_fraction]
    parts = split_dataset(len(structures), [1.0 - sum(fractions), *fractions], seed=d.seed)
    train, validation, test = ([structures[i] for i in part] for part in parts)
    if d.validation_path:
        validation = read_labelled(d.validation_path, d.selection, **options)
    if d.test_path:
        test = read_labelled(d.test_path, d.selection, **options)
    for name, part in (("training", train), ("validation", validation)):
        if not part:
            raise ValueError(f"the {name} split is empty: use more data or other fractions in data")
    return train, validation, test


def split_record(config, train_atoms, val_atoms, test_atoms) -> dict:
    """``split.json``: the file of each part and the ase.db row ids (or 0-based frames) in it."""
    d = config.data

    def ids(part):
        return [a.info["db_id"] if "db_id" in a.info else a.info["frame"] for a in part]

    def kind(part):
        return "ase.db row ids" if not part or "db_id" in part[0].info else "0-based frames"

    return {
        "data": d.path,
        "validation_data": d.validation_path or d.path,
        "test_data": d.test_path or d.path,
        "selection": d.selection,
        "ids": {"train": kind(train_atoms), "validation": kind(val_atoms), "test": kind(test_atoms)},
        "label_keys": {"energy": d.energy_key, "forces": d.forces_key, "stress": d.stress_key},
        "model": config.output.model,
        "train": ids(train_atoms),
        "validation": ids(val_atoms),
        "test": ids(test_atoms),
    }


def run_training(config, *, resume: bool = False, progress: bool = True, log=None, init_model=None):
    """Train, save and evaluate as the configuration says; returns (model, evaluation or None).
    ``init_model``: warm start from this model's weights (:func:`mlipbias.models.train`)."""
    from mlipbias.models import AtomsData, save_model, train
    from mlipbias.models.training import log_line

    log = log or log_line
    from mlipbias.models.config import make_descriptor
    from mlipbias.models.evaluation import evaluate_methods, format_evaluation, json_table

    out = Path(config.output.directory)
    out.mkdir(parents=True, exist_ok=True)
    train_atoms, val_atoms, test_atoms = _split(config, progress)
    split = split_record(config, train_atoms, val_atoms, test_atoms)
    split_path = out / "split.json"
    if resume and split_path.is_file() and json.loads(split_path.read_text()) != split:
        raise ValueError(
            f"{split_path} differs from the split of the data now: the data or its selection changed since "
            "the run started, so it cannot be resumed; start a new output folder"
        )
    split_path.write_text(json.dumps(split) + "\n")
    if config.model.kind == "painn":
        from mlipbias.models.painn_training import run_painn_training

        return run_painn_training(
            config, train_atoms, val_atoms, test_atoms, resume=resume, progress=progress, log=log
        )
    elements = {s for atoms in train_atoms for s in atoms.get_chemical_symbols()}
    choice: list[str] = []  # what the auto preset chose, logged and stored with the model

    def log_choice(message: str) -> None:
        log(message)
        choice.append(message)

    descriptor = make_descriptor(config.descriptor, elements, train_atoms, log_choice, config.model)
    log(
        f"{len(train_atoms)} training, {len(val_atoms)} validation, {len(test_atoms)} test structures; "
        f"{descriptor}"
    )
    t = config.training
    pairs_for_training = (
        t.force_weight > 0
        or (t.stress_weight > 0 and any(a.pbc.all() and "stress" in a.calc.results for a in train_atoms))
        or any(m in config.uncertainty.methods for m in ("mve", "evidential"))
    )
    log("computing descriptors")
    train_data = AtomsData(train_atoms, descriptor, keep_neighbours=pairs_for_training, progress=progress)
    # Validation and test keep their pairs when they have forces: force metrics and per-atom calibration.
    val_data = AtomsData(val_atoms, descriptor, progress=progress)
    test_data = AtomsData(test_atoms, descriptor, progress=progress) if test_atoms else None
    from mlipbias.cli.inspect import training_data_summary

    summary = training_data_summary({"train": train_atoms, "validation": val_atoms, "test": test_atoms})
    stored = {"trained_with": config.to_dict(), "training_data": summary, "descriptor_choice": choice}
    description = json.dumps(stored, default=list)
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
        tensorboard=config.output.tensorboard,
        init_model=init_model,
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
